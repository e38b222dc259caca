"""Data-parallel training on MPI: the communicator the trainer talks to.

`world()` gives the job's communicator: `SingleProcess` (every operation a no-op) unless the
process was started by an MPI launcher (mpiexec, srun) with more than one rank, in which case
an `MPICommunicator` over mpi4py's COMM_WORLD. mpi4py is imported only then, so a
single-process run never needs it; asking for several processes without it is a
`MissingMPI` error that names the package to install.

What the trainer needs from a communicator, and nothing more:
  - `bcast_params(model)`: every rank starts from rank 0's parameters;
  - `begin_gradient_average(grads, share, device, order)`: each rank's gradient (the mean over
    its samples) times its share of the global batch, summed over ranks in place: the
    single-process mean over the global batch, up to the order of float32 sums. The gradients
    travel in flat, fused buckets of a few MiB (Horovod's tensor fusion), filled in the order
    the backward pass makes gradients final; the object returned is the plan's
    GradientObserver, which starts each bucket's non-blocking Iallreduce as soon as its last
    gradient is final, so communication overlaps the rest of the backward pass, and whose
    finish() waits for the rest;
  - `sum(values)`: float64 sums (losses, counts, a stop flag) over ranks;
  - `allgather(obj)`, `bcast(obj)`: small Python objects (configuration digests, checkpoints);
  - `local_size()`: the ranks on this node (MPI's shared-memory split), for the thread count;
  - `abort(code)`: end the whole job now (one rank failed; the others would wait forever).
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from .errors import RuntimeUserError
from .plan import GradientObserver

# Bytes of float32 gradients per fused allreduce buffer (Horovod's default fusion threshold is
# 64 MiB for GPUs; a few MiB keeps several buffers in flight for the CPU's smaller networks).
BUCKET_BYTES = 4 << 20

# Launcher variables that give the number of processes: MPICH/Hydra and Intel MPI (PMI_SIZE),
# Open MPI, MVAPICH, and Slurm's srun (the step's task count, else the job's).
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
# Set by a PMIx launcher (Open MPI 5, srun --mpi=pmix) without a size beside it.
_RANK_ONLY_VARS = ("PMIX_RANK",)

INSTALL_HINT = "install it with `pip install 'dslc[mpi]'` (mpi4py and MPICH's wheel, which brings mpiexec), " \
               "or run without mpiexec/srun for one process"


class MissingMPI(RuntimeUserError):
    """Several processes were asked for, but mpi4py is not installed (a usage error: exit 2)."""


def launched_processes(environ=None) -> int:
    """How many processes the launcher says this job has: 1 when not under a launcher; 0 when
    under one that does not say (PMIx), for MPI itself to tell."""
    env = os.environ if environ is None else environ
    for var in _SIZE_VARS:
        value = env.get(var, "").strip()
        if value.isdigit():
            return int(value)
    if "SLURM_STEP_NUM_TASKS" not in env and env.get("SLURM_NTASKS", "").strip().isdigit() \
            and "SLURM_PROCID" in env and int(env["SLURM_NTASKS"]) > 1:
        return int(env["SLURM_NTASKS"])
    if any(v in env for v in _RANK_ONLY_VARS):
        return 0
    return 1


def world():
    """The job's communicator: MPI's COMM_WORLD under a launcher with several ranks, else SingleProcess."""
    if launched_processes() == 1:
        return SingleProcess()
    mpi = _import_mpi(f"this process was started by an MPI launcher with {launched_processes() or 'several'} "
                      "processes, but mpi4py is not installed")
    comm = mpi.COMM_WORLD
    return MPICommunicator(comm) if comm.Get_size() > 1 else SingleProcess()


def from_comm(comm):
    """A communicator from what Model.fit(comm=...) was given: None (one process), an mpi4py
    communicator (e.g. MPI.COMM_WORLD), or a communicator of this module."""
    if comm is None:
        return SingleProcess()
    if isinstance(comm, SingleProcess):
        return comm
    if hasattr(comm, "Get_size") and hasattr(comm, "Iallreduce"):
        return MPICommunicator(comm) if comm.Get_size() > 1 else SingleProcess()
    raise RuntimeUserError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got {type(comm).__name__}",
                           "pass comm=MPI.COMM_WORLD (from mpi4py import MPI), or leave comm out for one process")


def _import_mpi(why):
    try:
        from mpi4py import MPI
    except ImportError:
        raise MissingMPI(why, INSTALL_HINT) from None
    return MPI


class SingleProcess:
    """One process: rank 0 of 1; every collective operation returns its input."""
    rank = 0
    size = 1
    exposed_s = 0.0     # seconds spent waiting for gradient averages after backward (none here)

    def bcast(self, obj):
        return obj

    def allgather(self, obj):
        return [obj]

    def sum(self, values):
        return np.asarray(values, dtype=np.float64)

    def bcast_params(self, model, names=None):
        pass

    def begin_gradient_average(self, grads, share, device, order=None):
        return None

    def local_size(self) -> int:
        return 1

    def abort(self, code):
        raise SystemExit(code)

    def describe(self, threads) -> str:
        return f"1 process x {threads} thread{'s' * (threads != 1)}"


class MPICommunicator(SingleProcess):
    def __init__(self, comm):
        self.MPI = _import_mpi("distributed training needs mpi4py")
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._buckets = None
        self.exposed_s = 0.0    # seconds spent waiting for gradient averages after backward

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def sum(self, values):
        values = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty_like(values)
        self.comm.Allreduce(values, out, op=self.MPI.SUM)
        return out

    def bcast_params(self, model, names=None):
        """Rank 0's values of the model's parameters `names` (default: all) on every rank."""
        host = model.params
        for name in names if names is not None else list(host):
            buf = np.ascontiguousarray(host[name])
            self.comm.Bcast(buf, root=0)
            if self.rank != 0:
                model.set_param(name, buf)

    def _plan_buckets(self, grads, order):
        """Parameters grouped, in the order their gradients become final, into flat float32
        buffers of about BUCKET_BYTES each: (members [(name, offset, size, shape)], buffer)."""
        buckets, current, size = [], [], 0
        for name in order:
            g = grads[name]
            n = int(np.prod(g.shape))
            if current and (size + n) * 4 > BUCKET_BYTES:
                buckets.append((current, np.empty(size, np.float32)))
                current, size = [], 0
            current.append((name, size, n, tuple(g.shape)))
            size += n
        if current:
            buckets.append((current, np.empty(size, np.float32)))
        return buckets

    def _buckets_for(self, grads, order):
        key = tuple((k, tuple(grads[k].shape)) for k in order)
        if self._buckets is None or self._buckets[0] != key:
            self._buckets = (key, self._plan_buckets(grads, order))
        return self._buckets[1]

    def begin_gradient_average(self, grads, share, device, order=None):
        """A GradientObserver for Plan.backward that starts each bucket's Iallreduce as soon as
        its gradients are final, overlapping the rest of the backward pass; its finish() waits
        for them and writes the averages back. order: the names in the order they become final
        (the plan's gradient_order; default: grads' own order)."""
        return _OverlappedAverage(self, grads, share, device, list(order if order is not None else grads))

    def local_size(self) -> int:
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def abort(self, code):
        self.comm.Abort(code)

    def describe(self, threads) -> str:
        return f"{self.size} processes x {threads} thread{'s' * (threads != 1)}"


class _OverlappedAverage(GradientObserver):
    """One step's gradient average, bucket by bucket as the backward pass makes them final.

    MPICH and Open MPI move a non-blocking collective forward only inside MPI calls (no progress
    thread by default, and a thread would take a core from the kernels), so every backward
    kernel call ends with a cheap MPI_Testall on the buckets in flight."""

    def __init__(self, comm, grads, share, device, order):
        self.comm, self.grads, self.share, self.device = comm, grads, np.float32(share), device
        self.buckets = comm._buckets_for(grads, order)
        self.waiting = [len(members) for members, _ in self.buckets]
        self.bucket_of = {name: b for b, (members, _) in enumerate(self.buckets) for name, *_ in members}
        self.requests, self.started = [], 0

    def _start(self, b):
        members, flat = self.buckets[b]
        for name, at, n, _ in members:
            np.multiply(self.device.to_host(self.grads[name]).reshape(-1), self.share, out=flat[at:at + n])
        MPI = self.comm.MPI
        self.requests.append(self.comm.comm.Iallreduce(MPI.IN_PLACE, flat, op=MPI.SUM))

    def after_call(self, final):
        for name in final:
            b = self.bucket_of[name]
            self.waiting[b] -= 1
        # buckets start in order, so every rank issues the same collectives in the same order
        while self.started < len(self.buckets) and self.waiting[self.started] == 0:
            self._start(self.started)
            self.started += 1
        if self.requests:
            self.comm.MPI.Request.Testall(self.requests)

    def finish(self):
        """Start what the backward pass did not finalise, wait for every bucket, write the sums
        back into the gradients. The time spent here is the communication left exposed."""
        t = time.perf_counter()
        while self.started < len(self.buckets):
            self._start(self.started)
            self.started += 1
        self.comm.MPI.Request.Waitall(self.requests)
        for members, flat in self.buckets:
            for name, at, n, shape in members:
                self.device.from_host(flat[at:at + n].reshape(shape), out=self.grads[name])
        self.comm.exposed_s += time.perf_counter() - t


class SampleSlice:
    """A stand-in for a numpy Generator that draws for the whole global batch and returns this
    rank's samples: rank r's share of a draw of N*k numbers (N the global batch, batch-major)
    is the k numbers per sample of samples [start, start + count). The generator advances as in
    a single-process run, and each sample gets the numbers it gets there.

    Every random draw of training (dropout masks, augmentation, noise) is batch-major over the
    rank's batch; a draw whose size is not a multiple of the rank's batch is refused rather than
    silently desynchronised. A draw without a size (one number) is the same on every rank."""

    def __init__(self, generator, start, count, total):
        self.generator, self.start, self.count, self.total = generator, start, count, total

    def _draw(self, method, size, out, **kw):
        fn = getattr(self.generator, method)
        if out is None and size is None:
            return fn(**kw)
        shape = out.shape if out is not None else ((size,) if np.ndim(size) == 0 else tuple(size))
        m = math.prod(shape)
        if m % self.count:
            raise RuntimeError(f"a random draw of {m} numbers is not per sample of a batch of {self.count}")
        per = m // self.count
        full = fn(size=per * self.total, **kw)
        part = full[self.start * per:(self.start + self.count) * per].reshape(shape)
        if out is None:
            return part
        out[...] = part
        return out

    def random(self, size=None, dtype=np.float64, out=None):
        return self._draw("random", size, out, dtype=dtype)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return self._draw("standard_normal", size, out, dtype=dtype)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return self._draw("integers", size, None, low=low, high=high, dtype=dtype, endpoint=endpoint)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._draw("uniform", size, None, low=low, high=high)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._draw("normal", size, None, loc=loc, scale=scale)

    @property
    def bit_generator(self):
        return self.generator.bit_generator


def unwrap(rng):
    """The numpy Generator behind a SampleSlice (or the generator itself)."""
    return rng.generator if isinstance(rng, SampleSlice) else rng


# ---- synchronised batchnorm ------------------------------------------------------------------
class _SyncBatchNorm:
    """A training plan's batchnorm call with the batch statistics of the global batch.

    Forward: the per-channel sums, then the squared deviations from the global mean, summed
    over ranks (the CPU kernel's two-pass variance); the running statistics move as the kernel
    moves them, with the global count. Backward: each rank's weight and bias gradients are its
    own samples' sums (averaged later with every gradient); the input gradient needs the
    global sums of g and g * xhat. Rank r's upstream gradient is K times the global loss's on
    its samples (its loss is the mean over its 1/K), so its input gradient is K times the
    global one, which the 1/K of the gradient average undoes. Eval mode is the kernel's own."""

    def __init__(self, kernel, comm):
        self.kernel, self.comm = kernel, comm
        self.forward0, self.backward0 = kernel.forward, kernel.backward
        self.count = None

    def _view(self, a):
        shape = self.kernel.spec.in_shapes[0]
        return a.reshape(shape[0], shape[1], -1)

    def forward(self, ctx, xs, params, out, ws):
        if not ctx.training:
            return self.forward0(ctx, xs, params, out, ws)
        attrs = self.kernel.spec.attrs
        eps, momentum = float(attrs.get("eps", 1e-5)), float(attrs.get("momentum", 0.1))
        x = self._view(xs[0])
        local = np.concatenate([x.sum(axis=(0, 2), dtype=np.float64), [x.shape[0] * x.shape[2]]])
        total = self.comm.sum(local)
        count = self.count = float(total[-1])
        mean = total[:-1] / count
        squares = self.comm.sum(np.square(x - mean[None, :, None]).sum(axis=(0, 2)))
        ws["mean"][...] = mean
        ws["invstd"][...] = 1.0 / np.sqrt(squares / count + eps)
        params["running_mean"][...] = (1 - momentum) * params["running_mean"] + momentum * mean
        params["running_var"][...] = (1 - momentum) * params["running_var"] + momentum * squares / (count - 1)
        scale = params["weight"] * ws["invstd"]
        y = self._view(out)
        np.multiply(x - ws["mean"][None, :, None], scale[None, :, None], out=y)
        y += params["bias"][None, :, None]
        if self.kernel.relu:
            np.maximum(y, 0, out=y)

    def backward(self, ctx, xs, params, out, gout, gxs, gparams, ws):
        if not ctx.training:
            return self.backward0(ctx, xs, params, out, gout, gxs, gparams, ws)
        gx = gxs[0]
        if gx is None and not gparams:
            return
        x, g = self._view(xs[0]), self._view(gout)
        if self.kernel.relu:
            g = np.where(self._view(out) > 0, g, np.float32(0))
        mean, invstd = ws["mean"].astype(np.float64), ws["invstd"].astype(np.float64)
        xhat = (x - mean[None, :, None]) * invstd[None, :, None]
        sum_g = g.sum(axis=(0, 2), dtype=np.float64)
        sum_gx = (g * xhat).sum(axis=(0, 2))
        gparams.get("weight", ws["grad_weight"])[...] = sum_gx
        gparams.get("bias", ws["grad_bias"])[...] = sum_g
        if gx is not None:
            total = self.comm.sum(np.concatenate([sum_g, sum_gx]))
            c = len(sum_g)
            mean_g, mean_gx = total[:c] / self.count, total[c:] / self.count
            factor = params["weight"].astype(np.float64) * invstd
            self._view(gx)[...] = factor[None, :, None] * (g - mean_g[None, :, None] - xhat * mean_gx[None, :, None])


def sync_batchnorm(plan, comm) -> None:
    """Make a CPU training plan's batchnorm calls use the global batch's statistics (once per plan)."""
    if getattr(plan, "_sync_batchnorm", False):
        return
    from .cpu.norm import BatchNorm
    for s in plan.steps:
        if not isinstance(s.kernel, BatchNorm) or not s.runs:
            continue
        if s.followers:
            raise RuntimeUserError(f"--sync-batchnorm: `{s.node}` shares its parameters with another batchnorm, "
                                   "which synchronised statistics do not support",
                                   "train without --sync-batchnorm (each process's own statistics)")
        sync = _SyncBatchNorm(s.kernel, comm)
        plan._forward_calls = [((sync.forward if f == s.kernel.forward else f), a) for f, a in plan._forward_calls]
        plan._backward_calls = [((sync.backward if b == s.kernel.backward else b), a, acc)
                                for b, a, acc in plan._backward_calls]
    plan._sync_batchnorm = True
