"""Checks a CUDA kernel against the CPU kernel of the same op, in Numba's CUDA simulator in CI.

The CUDA tests run with NUMBA_ENABLE_CUDASIM=1 (set in tests/conftest.py before numba
is imported) unless a real GPU is present. Shapes must be tiny: the simulator runs every
thread in Python.
"""
from __future__ import annotations

import numpy as np

from dslc.runtime.kernel_api import Context
from tests.kernels.harness import (
    Case,
    _grad_inputs,
    _inputs,
    _params,
    _torch_reference,
    _trainable,
    make_kernel,
    run_kernel,
)


def run_cuda_kernel(case: Case, xs, ps, out_shape, gout, seed=0):
    from numba import cuda
    k = make_kernel(case, xs, ps, out_shape, "float32", device="cuda")
    ws = {n: cuda.to_device(np.zeros(s, dtype=d)) for n, (s, d) in k.workspace().items()}
    ctx = Context(training=case.training, rng=np.random.default_rng(seed))
    dxs = [cuda.to_device(x) for x in xs]
    dps = {n: cuda.to_device(p.copy()) for n, p in ps.items()}
    dout = cuda.to_device(np.full(out_shape, np.nan, dtype=np.float32))
    k.forward(ctx, dxs, dps, dout, ws)
    dgxs = [cuda.to_device(np.full(x.shape, np.nan, dtype=np.float32)) if i in _grad_inputs(case, xs) else None
            for i, x in enumerate(xs)]
    dgps = {n: cuda.to_device(np.full(p.shape, np.nan, dtype=np.float32)) for n, p in ps.items()
            if n in _trainable(case)}
    k.backward(ctx, dxs, dps, dout, cuda.to_device(gout), dgxs, dgps, ws)
    return (dout.copy_to_host(), [g.copy_to_host() if g is not None else None for g in dgxs],
            {n: g.copy_to_host() for n, g in dgps.items()}, {n: p.copy_to_host() for n, p in dps.items()})


def check_cuda_against_cpu(case: Case, out_shape=None, seed: int = 0, rtol=None, atol=None):
    """Forward, backward and updated buffers of the CUDA kernel equal the CPU kernel's.

    out_shape: None takes it from the row's torch reference; the tolerances default to the row's."""
    rtol = case.cuda_rtol if rtol is None else rtol
    atol = case.cuda_atol if atol is None else atol
    rng = np.random.default_rng(seed)
    xs = _inputs(case, rng, np.float32)
    ps = _params(case, rng, np.float32)
    if out_shape is None:
        out_shape = tuple(_torch_reference(case, xs, ps)[2].shape)
    gout = rng.standard_normal(out_shape).astype(np.float32)
    cpu = run_kernel(case, xs, ps, out_shape, gout, np.float32, seed)
    gpu = run_cuda_kernel(case, xs, ps, out_shape, gout, seed)
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=rtol, atol=atol, err_msg=f"{case}: forward")
    for i, (g, c) in enumerate(zip(gpu[1], cpu[1])):
        if c is not None:
            np.testing.assert_allclose(g, c, rtol=rtol, atol=atol, err_msg=f"{case}: grad of input {i}")
    for n in cpu[2]:
        np.testing.assert_allclose(gpu[2][n], cpu[2][n], rtol=rtol, atol=atol, err_msg=f"{case}: grad of {n}")
    for n in cpu[3]:
        np.testing.assert_allclose(gpu[3][n], cpu[3][n], rtol=rtol, atol=atol, err_msg=f"{case}: param {n} after")
