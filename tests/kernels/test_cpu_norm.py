"""CPU norm kernels (batchnorm, lrn, dropout): numerics, fusion and dropout's statistics. Their
checks against torch and finite differences are rows of the shared table (tests/ops_cases.py,
run by test_op_cases.py)."""
import numpy as np
import pytest

from tests.kernels.harness import check_against_torch, check_nan_propagates, run_kernel
from tests.ops_cases import batchnorm_case, dropout_case

# --- batchnorm -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 3, 4, 4), (40, 3)], ids=str)
def test_batchnorm_statistics_of_offset_data(shape):
    """A mean far from zero against a small spread: neither the one-pass moments nor the
    normalisation may cancel. The running variance is held to a tighter tolerance than the rest."""
    def offset_inputs(rng):
        x = 300.0 + 0.01 * rng.standard_normal(shape)
        x[0, :] += 0.05      # the first values, which the sums are centred on, off the mean
        return [x.astype(np.float32)]
    torch_stats = {}
    case = batchnorm_case(shape, True, make_inputs=offset_inputs, rtol=1e-3, atol=1e-3)
    reference = case.torch_fn

    def torch_fn(xs, ps, a):
        out = reference(xs, ps, a)
        torch_stats["running_var"] = ps["running_var"].numpy().copy()
        return out
    case.torch_fn = torch_fn
    _, params_after = check_against_torch(case)
    np.testing.assert_allclose(params_after["running_var"], torch_stats["running_var"], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_fused_relu_keeps_nan(training):
    check_nan_propagates(batchnorm_case((4, 3, 5), training, fuse="relu"))


def test_batchnorm_on_rows_does_not_fuse():
    """(N, C) inputs run the row loops, which have no mask: the plan keeps the relu apart."""
    from dslc.runtime.kernel_api import NodeSpec, kernel_class
    spec = NodeSpec(name="bn", op="batchnorm", attrs={"eps": 1e-5, "momentum": 0.1}, in_shapes=((8, 3),),
                    in_dtypes=("float32",), out_shape=(8, 3),
                    param_shapes={n: (3,) for n in ("weight", "bias", "running_mean", "running_var")})
    kernel = kernel_class("cpu", "batchnorm")(spec)
    assert not kernel.fuse_activation("relu", {})
    assert not kernel.backward_reads_out


# --- dropout ---------------------------------------------------------------------------------
# torch's random stream cannot be matched, so dropout is checked against its definition.

def _run_dropout(shape, p, training, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    gout = rng.standard_normal(shape).astype(np.float32)
    out, gxs, _, _ = run_kernel(dropout_case(shape, p, training), [x], {}, shape, gout, np.float32, seed)
    return x, gout, out, gxs[0]


def test_dropout_eval_is_identity():
    x, gout, out, gx = _run_dropout((4, 3, 5, 5), 0.5, training=False)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(gx, gout)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
@pytest.mark.parametrize("shape", [(40, 250), (8, 5, 10, 25)], ids=str)
def test_dropout_training(shape, p):
    """About p of the entries are zeroed, the rest scaled by 1/(1-p); backward uses the same mask."""
    x, gout, out, gx = _run_dropout(shape, p, training=True)
    dropped = out == 0
    # 10,000 entries: the dropped fraction's standard deviation is at most 0.005.
    assert abs(dropped.mean() - p) < 0.03
    np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - p), rtol=1e-6)
    np.testing.assert_array_equal(gx[dropped], 0)
    np.testing.assert_allclose(gx[~dropped], gout[~dropped] / (1 - p), rtol=1e-6)


def test_dropout_mask_comes_from_ctx_rng():
    """Differently seeded generators draw different masks."""
    _, _, first, _ = _run_dropout((20, 50), 0.5, training=True, seed=1)
    _, _, second, _ = _run_dropout((20, 50), 0.5, training=True, seed=2)
    assert ((first == 0) != (second == 0)).any()
