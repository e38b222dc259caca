"""CPU pool-family kernels: ties, zero gradients, serial and parallel loops. Their checks against
torch and finite differences are rows of the shared table (tests/ops_cases.py, run by
test_op_cases.py)."""
import numpy as np
import pytest
import torch

from dslc.runtime import jit
from dslc.runtime.cpu import pool
from dslc.runtime.kernel_api import Context
from tests.kernels.harness import make_kernel, run_kernel
from tests.ops_cases import avgpool_case, global_avgpool_case, maxpool_case, maxunpool_case, window


def test_maxunpool_fills_src_gradient_with_zeros():
    case = maxunpool_case((2, 2, 4, 6), window((2, 2), (2, 2)))
    rng = np.random.default_rng(0)
    values, src = (rng.standard_normal(s).astype(np.float32) for s in case.in_shapes)
    gout = rng.standard_normal(src.shape).astype(np.float32)
    _, gxs, _, _ = run_kernel(case, [values, src], {}, src.shape, gout, np.float32)
    np.testing.assert_array_equal(gxs[1], 0)        # run_kernel hands in gradients filled with NaN


def test_maxpool_picks_first_maximum_of_ties():
    x = np.zeros((1, 1, 2, 4), dtype=np.float32)    # every window is a tie
    case = maxpool_case(x.shape, window((2, 2), (2, 2)))
    gout = np.array([[[[1.0, 2.0]]]], dtype=np.float32)
    _, gxs, _, _ = run_kernel(case, [x], {}, gout.shape, gout, np.float32)
    np.testing.assert_array_equal(gxs[0], [[[[1, 0, 2, 0], [0, 0, 0, 0]]]])



def test_maxpool_tiles_pick_as_torch_with_nans_and_ties():
    """2x2 tiles (the vectorised _tile_rows_argmax): the first maximum of a tie, a NaN wherever
    one is, the last of several NaNs: the gradient lands where torch's indices say."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (2, 3, 6, 8)).astype(np.float32)     # many ties
    x[0, 0, 0, 1] = np.nan                                      # one NaN in a tile
    x[0, 1, 2, 2] = x[0, 1, 3, 3] = np.nan                      # two in one tile
    x[1, 2, 5, 6] = np.nan                                      # the tile's last place
    case = maxpool_case(x.shape, window((2, 2), (2, 2)))
    values, indices = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    gout = rng.standard_normal(values.shape).astype(np.float32)
    out, gxs, _, _ = run_kernel(case, [x], {}, gout.shape, gout, np.float32)
    np.testing.assert_array_equal(out, values.numpy())         # NaN where torch has NaN
    expected = torch.zeros(x.shape).flatten(2).scatter_add_(2, indices.flatten(2), torch.from_numpy(gout).flatten(2))
    np.testing.assert_array_equal(gxs[0], expected.reshape(x.shape).numpy())


# One case per plane function, each with both of its loops: the serial one and the `prange` one
# that kernels choose from PARALLEL_MIN_ELEMENTS up (the cases above are all below it).
PARALLEL_CASES = [
    maxpool_case((2, 3, 7, 9), window((3, 3), (1, 1), (1, 1))),
    maxpool_case((2, 3, 8, 6), window((2, 2), (2, 2))),
    maxpool_case((2, 3, 7, 9), window((3, 3), (2, 2), (1, 1), ceil=True)),
    avgpool_case((2, 3, 8, 6), window((2, 2), (2, 2))),
    avgpool_case((2, 3, 7, 9), window((3, 3), (2, 2), (1, 1), ceil=True)),
    global_avgpool_case((2, 3, 5, 4)),
    maxunpool_case((2, 3, 6, 4), window((2, 2), (2, 2)), grad_inputs=(0,)),
    maxunpool_case((2, 2, 5, 6), window((3, 3), (1, 1), (1, 1)), grad_inputs=(0,)),
]


@pytest.mark.parametrize("case", PARALLEL_CASES, ids=str)
def test_serial_and_parallel_loops_agree(case):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32) for s in case.in_shapes]
    out_shape = tuple(case.torch_fn([torch.from_numpy(x) for x in xs], {}, case.attrs).shape)
    gout = rng.standard_normal(out_shape).astype(np.float32)
    kernel = make_kernel(case, xs, {}, out_shape, "float32")
    results = []
    for parallel in (False, True):
        kernel.parallel = parallel
        ws = {n: np.zeros(s, d) for n, (s, d) in kernel.workspace().items()}
        out = np.full(out_shape, np.nan, np.float32)
        kernel.forward(Context(), xs, {}, out, ws)
        gx = np.full(xs[0].shape, np.nan, np.float32)
        kernel.backward(Context(), xs, {}, out, gout, [gx] + [None] * (len(xs) - 1), {}, ws)
        results.append((out, gx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_window_pools_go_parallel_from_their_threshold():
    """Window pools split sooner than elementwise loops (pool.WINDOW_POOL_MIN_ELEMENTS)."""
    assert pool.WINDOW_POOL_MIN_ELEMENTS < jit.PARALLEL_MIN_ELEMENTS
    attrs = window((2, 2), (2, 2))
    threshold = pool.WINDOW_POOL_MIN_ELEMENTS
    for width, parallel in ((threshold // 2 - 2, False), (threshold // 2, True)):
        x = np.empty((1, 1, 2, width), np.float32)
        for case in (maxpool_case(x.shape, attrs), avgpool_case(x.shape, attrs)):
            assert make_kernel(case, [x], {}, (1, 1, 1, width // 2), "float32").parallel == parallel
