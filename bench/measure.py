"""The measurements: alternating in-process timings, and the subprocess runs (memory, compile times)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TIMEOUT_S = 1800       # a cold compile of the largest network on a loaded machine stays well below


class BenchError(Exception):
    """A measurement that could not be taken; the message says which and why."""


def split_rounds(steps: int, rounds: int) -> list[int]:
    """`steps` timed steps cut into `rounds` nearly equal blocks (the first ones one longer)."""
    rounds = max(1, min(rounds, steps))
    base, extra = divmod(steps, rounds)
    return [base + (i < extra) for i in range(rounds)]


def time_alternating(runners, method: str, steps: int, warmup: int, rounds: int, tick=None) -> dict:
    """Per-step wall times of runner.<method>() for each runner: `warmup` untimed calls each, then
    `steps` timed calls each, in rounds that alternate the runners, so that a change in machine
    load during the run affects every framework alike. Returns {framework: [seconds, ...]}."""
    for runner in runners:
        for _ in range(warmup):
            getattr(runner, method)()
    times = {runner.framework: [] for runner in runners}
    for block in split_rounds(steps, rounds):
        for runner in runners:
            step = getattr(runner, method)
            for _ in range(block):
                t0 = time.perf_counter()
                step()
                times[runner.framework].append(time.perf_counter() - t0)
                if tick is not None:
                    tick()
    return times


def samples_per_s(batch: int, step_times: list[float]) -> float:
    return batch / statistics.median(step_times)


def run_worker(framework: str, model: str, batch: int, steps: int, numba_cache_dir: str | None = None) -> dict:
    """Run bench/worker.py in a fresh interpreter; returns its report with first_step_s measured
    from just before the launch. numba_cache_dir: the Numba kernel cache to use (empty: cold)."""
    env = dict(os.environ)
    # A user's second run finds Python's bytecode cache (__pycache__) written by the first; an
    # environment that forbids writing it would make every "warm" worker recompile dslc's
    # sources (~0.4 s), which no user's warm start pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if numba_cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache_dir
    cmd = [sys.executable, "-m", "bench.worker", "--framework", framework, "--model", model,
           "--batch", str(batch), "--steps", str(steps)]
    launched_at = time.time()
    try:
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{framework} worker for {model} ran past {WORKER_TIMEOUT_S} s") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise BenchError(f"{framework} worker for {model} failed (exit {done.returncode}):\n{tail}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["first_step_s"] = report["first_step_end"] - launched_at
    return report
