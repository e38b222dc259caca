"""Data-parallel overhead: K MPI processes x (cores / K) threads against 1 process x all cores.

    .venv/bin/python -m bench.ranks                      # the six CIFAR-sized networks, K = 2
    .venv/bin/python -m bench.ranks --ranks 2 --models lenet5_relu --steps 10

On one machine the cores are the same either way, so the ratio of samples/s is the cost of
splitting the batch (smaller per-rank kernels) plus the gradient allreduce. Each network's
training step is the trainer's (Trainer._step, with the gradient average of
runtime/distributed.py), on the bench's synthetic batch (bench/suite.py) at its global batch.
Printed per network: samples/s of both, their ratio, the allreduce's exposed time per step
(the wait after the backward pass for the buckets it started as their gradients became
final), the gradient bytes per step, the peak resident memory of one process and of the
largest rank; and the measured allreduce bandwidth on a 64 MiB buffer. Then a projection to N nodes with ring allreduce:
    t_allreduce(N) = 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency
    efficiency(N)  = t_step / (t_step + t_allreduce(N))
with t_step the measured one-process step time (each node keeps the per-node batch: weak
scaling), no overlap of communication with compute, and a latency of 5 us per message.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

LINKS = {"10 Gbit/s": 10e9 / 8, "100 Gbit/s": 100e9 / 8}
NODES = (8, 32, 128)
LATENCY_S = 5e-6


def worker(name: str, steps: int, warmup: int) -> None:
    from dslc.compiler import compile_file
    from dslc.runtime.data import Dataset
    from dslc.runtime.distributed import world
    from dslc.runtime.model import Model
    from dslc.runtime.train import TrainConfig, Trainer

    from .suite import LEARNING_RATE, MODELS, MOMENTUM

    comm = world()
    spec = MODELS[name]
    x, y = spec.make_batch(spec.batch, 0)
    net, _ = compile_file(spec.net_file, dict(spec.overrides))
    model = Model(net, seed=0)
    cfg = TrainConfig.from_network(net, optimizer="momentum", lr=LEARNING_RATE, momentum=MOMENTUM,
                                   weight_decay=0.0, batch=spec.batch, seed=0)
    trainer = Trainer(model, cfg, Dataset(x, y, name, spec.classes), None, progress=False, comm=comm)
    part = slice(trainer.share_start, trainer.share_start + trainer.local_batch)
    feeds = trainer._feeds({"x": x[part], "y": y[part]})
    comm.bcast_params(model)
    for _ in range(warmup):             # compiles, first-touch of buffers
        trainer._step(feeds, LEARNING_RATE)
    comm.sum([0.0])                     # a barrier
    comm.exposed_s = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._step(feeds, LEARNING_RATE)
    comm.sum([0.0])
    elapsed = time.perf_counter() - t0
    # peak resident memory of the training (Linux: KiB), the largest over the ranks: before the
    # bandwidth test's 64 MiB buffers
    peak = max(comm.allgather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    grad_bytes = 4 * sum(int(np.prod(model._dev[k].shape)) for k in model.trainable_names())
    bandwidth = None
    if comm.size > 1:
        buf = np.ones(16 << 20, np.float32)     # 64 MiB
        comm.comm.Allreduce(comm.MPI.IN_PLACE, buf)
        t = time.perf_counter()
        for _ in range(3):
            comm.comm.Allreduce(comm.MPI.IN_PLACE, buf)
        bandwidth = buf.nbytes / ((time.perf_counter() - t) / 3)
    if comm.rank == 0:
        print(json.dumps({"network": name, "ranks": comm.size, "peak_rss": peak,
                          "samples_per_s": spec.batch * steps / elapsed,
                          "step_s": elapsed / steps, "allreduce_s": comm.exposed_s / steps,
                          "grad_bytes": grad_bytes,
                          "allreduce_bytes_per_s": bandwidth}), flush=True)


def _measure(cmd, threads):
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    from .suite import CIFAR_MODELS
    p = argparse.ArgumentParser(prog="python -m bench.ranks", description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--models", default=",".join(CIFAR_MODELS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.steps, args.warmup)
        return 0
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("mpiexec not found: pip install '.[mpi]'")
    cores, k = os.cpu_count() or 1, args.ranks
    base = [sys.executable, "-m", "bench.ranks", "--steps", str(args.steps), "--warmup", str(args.warmup)]
    rows = []
    for name in args.models.split(","):
        one = _measure([*base, "--worker", name], cores)
        many = _measure([mpiexec, "-n", str(k), *base, "--worker", name], max(1, cores // k))
        rows.append((name, one, many))
    t1 = f"1 x {cores} threads"
    tk = f"{k} x {max(1, cores // k)} thread{'s' * (cores // k != 1)}"
    print(f"| network | gradient MiB | {t1} samples/s | {tk} samples/s | ratio | allreduce ms/step (exposed) "
          f"| peak RSS MiB: 1 process / largest rank |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, one, many in rows:
        print(f"| {name} | {one['grad_bytes'] / 2**20:.1f} | {one['samples_per_s']:.0f} | "
              f"{many['samples_per_s']:.0f} | {many['samples_per_s'] / one['samples_per_s']:.2f} | "
              f"{many['allreduce_s'] * 1e3:.1f} | {one['peak_rss'] / 2**20:.0f} / {many['peak_rss'] / 2**20:.0f} |")
    bw = [m["allreduce_bytes_per_s"] for _, _, m in rows if m.get("allreduce_bytes_per_s")]
    if bw:
        print(f"\nallreduce of 64 MiB across {k} local processes: {max(bw) / 2**30:.2f} GiB/s (best of the runs)")
    print("\nprojected efficiency, ring allreduce after backward, per-node batch kept "
          "(t_step / (t_step + 2(N-1)/N bytes/bw + 2(N-1) 5us)):")
    head = " | ".join(f"{n} nodes {link}" for link in LINKS for n in NODES)
    print(f"| network | step ms | {head} |")
    print("|---|---:|" + "---:|" * (len(LINKS) * len(NODES)))
    for name, one, _ in rows:
        cells = []
        for bytes_per_s in LINKS.values():
            for n in NODES:
                comm_s = 2 * (n - 1) / n * one["grad_bytes"] / bytes_per_s + 2 * (n - 1) * LATENCY_S
                cells.append(f"{one['step_s'] / (one['step_s'] + comm_s):.2f}")
        print(f"| {name} | {one['step_s'] * 1e3:.0f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
