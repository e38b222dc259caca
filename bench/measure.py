"""The measurements: alternating in-process timings, and the subprocess runs (memory, compile times)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TIMEOUT_S = 1800       # a cold compile of the largest network on a loaded machine stays well below


class BenchError(Exception):
    """A measurement that could not be taken; the message says which and why."""


def split_rounds(steps: int, rounds: int) -> list[int]:
    """`steps` timed steps cut into `rounds` nearly equal blocks (the first ones one longer)."""
    rounds = max(1, min(rounds, steps))
    base, extra = divmod(steps, rounds)
    return [base + (i < extra) for i in range(rounds)]


@dataclass(frozen=True)
class WarmupRule:
    """When a runner is warm: after at least `min_steps` untimed steps, once the last two step
    times are within `tolerance` of each other and the runner reports nothing still in flight
    (dslc: the compile-ahead helper, see DslcRunner.busy); after `max_steps` in any case.

    The first step carries Numba's compile (or inductor's, for torch.compile) and loading the
    kernel cache; the helper is asked to stop after a plan's first complete step. A minimum of
    two, and the two-step agreement, keep both out of the timed rounds."""
    min_steps: int = 2
    max_steps: int = 20
    tolerance: float = 0.10

    def describe(self) -> str:
        return (f"warm-up: untimed steps per framework and measurement until two consecutive step times agree "
                f"within {self.tolerance:.0%} and dslc's compile-ahead helper has ended, at least {self.min_steps}, "
                f"at most {self.max_steps}")

    def settled(self, times: list[float]) -> bool:
        if len(times) < max(2, self.min_steps):
            return False
        a, b = times[-2:]
        return abs(a - b) <= self.tolerance * min(a, b)


def warm_up(step, rule: WarmupRule, busy=None) -> list[float]:
    """Call step() untimed until `rule` says the runner is warm; returns the warm-up steps' times
    (their sum, less as many settled steps, is the one-off cost: compilation and loading)."""
    times = []
    while len(times) < rule.max_steps:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if rule.settled(times) and not (busy is not None and busy()):
            break
    return times


def time_alternating(runners, method: str, steps: int, rounds: int, tick=None) -> dict:
    """Per-step wall times of runner.<method>() for each (warm) runner: `steps` timed calls each,
    in rounds that alternate the runners, so that a change in machine load during the run
    affects every framework alike. Returns {framework: [seconds, ...]}."""
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


def one_off_cost(warmup_times: list[float], step_times: list[float]) -> float:
    """What the warm-up cost beyond its steps' own work: the warm-up's time less as many timed steps."""
    return max(0.0, sum(warmup_times) - len(warmup_times) * statistics.median(step_times))


def samples_per_s(batch: int, step_times: list[float]) -> float:
    return batch / statistics.median(step_times)


def run_worker(framework: str, model: str, batch: int, steps: int, numba_cache_dir: str | None = None,
               length: int | None = None) -> dict:
    """Run bench/worker.py in a fresh interpreter; returns its report with first_step_s measured
    from just before the launch. numba_cache_dir: the Numba kernel cache to use (empty: cold);
    length: the sequence length T of a sequence network, when not its own."""
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
    if length is not None:
        cmd += ["--length", str(length)]
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
