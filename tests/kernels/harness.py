"""One helper that checks any kernel against PyTorch and against finite differences.

Usage (table-driven, one row per case; the shared table is tests/ops_cases.py):

    check_against_torch(Case("relu", {}, [(2, 3, 4, 4)], lambda xs, ps, a: torch.relu(xs[0])))

The kernel is looked up by op name on the given device, given float32 inputs, and its
forward output, every input/param gradient and the buffers after the forward (batchnorm's
running statistics) are compared with torch autograd. The same case can be run in float64
against central finite differences with `check_finite_differences`, and on the CUDA device
against the CPU kernel with tests/cuda/harness.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dslc.ops import OPS, TensorType
from dslc.runtime.kernel_api import Context, NodeSpec, kernel_class


@dataclass
class Case:
    op: str
    attrs: dict
    in_shapes: list                      # shapes of the inputs, batch first
    torch_fn: Callable                   # (xs: list[Tensor], params: dict[str, Tensor], attrs) -> Tensor
    params: dict | None = None           # name -> shape or ndarray (fixed values); None: the op's declared params
    in_dtypes: list | None = None        # default all "float32"; "int64" inputs get values in [0, int_high)
    int_high: int = 5
    trainable: tuple | None = None       # params that get gradients (default: all except running_*)
    training: bool = True
    grad_inputs: tuple | None = None     # indices of inputs that get gradients (default: all float)
    make_inputs: Callable | None = None  # rng -> list of arrays, overrides random inputs
    fuse: str | None = None              # an activation the kernel absorbs (plan's fuse_activation)
    rtol: float = 1e-4
    atol: float = 1e-4
    id: str = ""
    # which checks the shared table (tests/ops_cases.py) runs on this row
    vs_torch: bool = True                # CPU kernel against torch (False: torch's result cannot match, e.g. dropout)
    fd: bool = False                     # float64 finite differences: tiny shapes only
    cuda: bool = False                   # CUDA kernel against the CPU kernel: tiny shapes (the simulator is slow)
    cuda_rtol: float = 1e-4
    cuda_atol: float = 1e-5

    def __post_init__(self):
        if self.params is None:
            self.params = declared_params(self.op, self.attrs, self.in_shapes, self.in_dtypes)

    def __str__(self):
        return self.id or f"{self.op}{self.in_shapes}{self.attrs}"


class Rows(tuple):
    """An input shape whose first axis counts rows other than the batch (roi_pool's boxes [R, 5]):
    `Rows((3, 5))` is seen by the shape rule as [R, 5]."""
    lead = "R"


def in_types(in_shapes, in_dtypes=None):
    """The inputs as the op's shape rules see them: batch dimension "N" (or a Rows shape's own
    leading axis), then the sizes."""
    dts = in_dtypes or ["float32"] * len(in_shapes)
    return [TensorType((getattr(shape, "lead", "N"), *shape[1:]) if shape else (), dt)
            for shape, dt in zip(in_shapes, dts)]


def declared_params(op, attrs, in_shapes, in_dtypes=None):
    """name -> shape of the params the op declares for these attrs and inputs (dslc/ops)."""
    return {n: spec.shape for n, spec in OPS[op].params(attrs, in_types(in_shapes, in_dtypes)).items()}


def _inputs(case, rng, dtype):
    if case.make_inputs is not None:
        return [a.astype(dtype) if a.dtype.kind == "f" else a for a in case.make_inputs(rng)]
    dts = case.in_dtypes or ["float32"] * len(case.in_shapes)
    xs = []
    for shape, dt in zip(case.in_shapes, dts):
        if dt == "int64":
            xs.append(rng.integers(0, case.int_high, size=shape).astype(np.int64))
        else:
            xs.append(rng.standard_normal(shape).astype(dtype))
    return xs


def _params(case, rng, dtype):
    ps = {}
    for name, v in case.params.items():
        if isinstance(v, np.ndarray):
            ps[name] = v.astype(dtype).copy()
        elif name == "running_var":
            ps[name] = (rng.random(v) + 0.5).astype(dtype)
        else:
            ps[name] = (rng.standard_normal(v) * 0.5).astype(dtype)
    return ps


def _trainable(case):
    if case.trainable is not None:
        return set(case.trainable)
    return {n for n in case.params if not n.startswith("running_")}


def _grad_inputs(case, xs):
    if case.grad_inputs is not None:
        return set(case.grad_inputs)
    return {i for i, x in enumerate(xs) if x.dtype.kind == "f"}


def _torch_reference(case, xs, ps):
    import torch
    txs = [torch.tensor(x, requires_grad=(i in _grad_inputs(case, xs))) for i, x in enumerate(xs)]
    tps = {n: torch.tensor(p, requires_grad=(n in _trainable(case))) for n, p in ps.items()}
    out = case.torch_fn(txs, tps, case.attrs)
    return txs, tps, out


def make_kernel(case, xs, ps, out_shape, out_dtype, device="cpu"):
    spec = NodeSpec(
        name=f"test.{case.op}", op=case.op, attrs=case.attrs,
        in_shapes=tuple(tuple(x.shape) for x in xs),
        in_dtypes=tuple("int64" if x.dtype.kind == "i" else "float32" for x in xs),
        out_shape=tuple(out_shape), out_dtype=out_dtype,
        param_shapes={n: tuple(p.shape) for n, p in ps.items()})
    kernel = kernel_class(device, case.op)(spec)
    if case.fuse is not None and not kernel.fuse_activation(case.fuse, {}):
        raise AssertionError(f"{case}: the {device} kernel refused to fuse {case.fuse}")
    return kernel


def run_kernel(case, xs, ps, out_shape, gout, dtype, seed=0, device="cpu"):
    """Forward then backward on `device`; returns (out, gxs, gparams, params after)."""
    k = make_kernel(case, xs, ps, out_shape, "float32", device)
    ws = {n: np.zeros(s, dtype=(dtype if np.dtype(d).kind == "f" else d)) for n, (s, d) in k.workspace().items()}
    ctx = Context(training=case.training, rng=np.random.default_rng(seed))
    ps = {n: p.copy() for n, p in ps.items()}
    out = np.full(out_shape, np.nan, dtype=dtype)
    k.forward(ctx, xs, ps, out, ws)
    gxs = [np.full(x.shape, np.nan, dtype=dtype) if i in _grad_inputs(case, xs) else None
           for i, x in enumerate(xs)]
    gps = {n: np.full(p.shape, np.nan, dtype=dtype) for n, p in ps.items() if n in _trainable(case)}
    k.backward(ctx, xs, ps, out, gout, gxs, gps, ws)
    return out, gxs, gps, ps


def check_against_torch(case: Case, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs = _inputs(case, rng, np.float32)
    ps = _params(case, rng, np.float32)
    txs, tps, tout = _torch_reference(case, xs, ps)
    gout = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    import torch
    tout.backward(torch.tensor(gout))
    out, gxs, gps, ps_after = run_kernel(case, xs, ps, tuple(tout.shape), gout, np.float32, seed)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=case.rtol, atol=case.atol,
                               err_msg=f"{case}: forward")
    for i, g in enumerate(gxs):
        if g is not None:
            np.testing.assert_allclose(g, txs[i].grad.numpy(), rtol=case.rtol, atol=case.atol,
                                       err_msg=f"{case}: grad of input {i}")
    for n, g in gps.items():
        np.testing.assert_allclose(g, tps[n].grad.numpy(), rtol=case.rtol, atol=case.atol,
                                   err_msg=f"{case}: grad of param {n}")
    # torch updates buffers in place (batchnorm's running statistics); params stay as they were
    for n, p in ps_after.items():
        np.testing.assert_allclose(p, tps[n].detach().numpy(), rtol=case.rtol, atol=case.atol,
                                   err_msg=f"{case}: param {n} after the forward")
    return out, ps_after


def check_nan_propagates(case: Case, seed: int = 0, may_spread: bool = False):
    """A NaN in the first input comes out where torch's forward puts one (relu(NaN) is NaN):
    an activation that zeroed it would hide a diverged layer from the trainer's check of the
    loss. The finite values still match. may_spread: the kernel may put NaN in more places
    (Winograd mixes a whole tile, so 0 * NaN reaches outputs whose window misses the NaN)."""
    rng = np.random.default_rng(seed)
    xs = _inputs(case, rng, np.float32)
    flat = xs[0].reshape(-1)
    flat[rng.choice(flat.size, size=max(1, flat.size // 50), replace=False)] = np.nan
    ps = _params(case, rng, np.float32)
    _, _, tout = _torch_reference(case, xs, ps)
    expected = tout.detach().numpy()
    k = make_kernel(case, xs, ps, expected.shape, "float32")
    ws = {n: np.zeros(s, dtype=d) for n, (s, d) in k.workspace().items()}
    out = np.full(expected.shape, 7.0, np.float32)
    k.forward(Context(training=case.training, rng=np.random.default_rng(seed)), xs, ps, out, ws)
    assert np.isnan(expected).any(), f"{case}: the NaN reaches no output of torch's either"
    if may_spread:
        assert np.isnan(out[np.isnan(expected)]).all(), f"{case}: a NaN torch keeps came out a number"
        kept = ~np.isnan(out)
        np.testing.assert_allclose(out[kept], expected[kept], rtol=case.rtol, atol=case.atol, err_msg=str(case))
    else:
        np.testing.assert_allclose(out, expected, rtol=case.rtol, atol=case.atol, equal_nan=True, err_msg=str(case))


def check_finite_differences(case: Case, seed: int = 0, eps: float = 1e-6, max_points: int = 24):
    """float64 central differences of <gout, forward(x)> against the kernel's backward."""
    rng = np.random.default_rng(seed)
    xs = _inputs(case, rng, np.float64)
    ps = _params(case, rng, np.float64)
    # out shape: run the torch reference once (cheap, float64)
    _, _, tout = _torch_reference(case, xs, ps)
    out_shape = tuple(tout.shape)
    gout = rng.standard_normal(out_shape)

    def objective(xs_, ps_):
        k = make_kernel(case, xs_, ps_, out_shape, "float32")
        ws = {n: np.zeros(s, dtype=(np.float64 if np.dtype(d).kind == "f" else d))
              for n, (s, d) in k.workspace().items()}
        out = np.zeros(out_shape)
        k.forward(Context(training=case.training, rng=np.random.default_rng(seed)),
                  xs_, {n: p.copy() for n, p in ps_.items()}, out, ws)
        return float(np.sum(out * gout))

    _, gxs, gps, _ = run_kernel(case, xs, ps, out_shape, gout, np.float64, seed)
    targets = [("x", i, xs[i], gxs[i]) for i in range(len(xs)) if gxs[i] is not None]
    targets += [("p", n, ps[n], gps[n]) for n in gps]
    for kind, key, arr, grad in targets:
        flat = arr.reshape(-1)
        idx = rng.choice(flat.size, size=min(max_points, flat.size), replace=False)
        for j in idx:
            old = flat[j]
            flat[j] = old + eps
            fp = objective(xs, ps)
            flat[j] = old - eps
            fm = objective(xs, ps)
            flat[j] = old
            num = (fp - fm) / (2 * eps)
            ana = grad.reshape(-1)[j]
            assert abs(num - ana) <= 1e-4 + 1e-3 * abs(num), \
                f"{case}: {kind} {key}[{j}] finite difference {num} vs backward {ana}"
