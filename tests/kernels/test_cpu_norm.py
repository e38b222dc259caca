"""CPU norm kernels (batchnorm, lrn, dropout) against torch.nn.functional and finite differences."""
import numpy as np
import pytest
import torch.nn.functional as F

from tests.kernels.harness import Case, check_against_torch, check_finite_differences, check_nan_propagates, run_kernel


# --- batchnorm -------------------------------------------------------------------------------

def _batchnorm_case(shape, training, eps=1e-5, momentum=0.1, torch_running_stats=None, fuse=None, **kw):
    """A batchnorm case; torch's running stats after its forward land in `torch_running_stats`.
    fuse="relu": the kernel absorbs a following relu."""
    channels = shape[1]

    def torch_fn(xs, ps, a):
        out = F.batch_norm(xs[0], ps["running_mean"], ps["running_var"], ps["weight"], ps["bias"],
                           training=training, momentum=a["momentum"], eps=a["eps"])
        if torch_running_stats is not None:
            torch_running_stats.update(running_mean=ps["running_mean"].numpy().copy(),
                                       running_var=ps["running_var"].numpy().copy())
        return F.relu(out) if fuse == "relu" else out

    params = {"weight": (channels,), "bias": (channels,), "running_mean": (channels,), "running_var": (channels,)}
    return Case("batchnorm", {"eps": eps, "momentum": momentum}, [shape], torch_fn, params=params,
                training=training, fuse=fuse,
                id=f"batchnorm{shape}{'train' if training else 'eval'}{'+' + fuse if fuse else ''}", **kw)


BATCHNORM_SHAPES = [(8, 3), (4, 3, 1, 1), (4, 3, 5), (2, 3, 4, 4), (3, 2, 1, 5)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BATCHNORM_SHAPES, ids=str)
def test_batchnorm_against_torch(shape, training):
    """Output and gradients match torch, and so do the running statistics after the forward."""
    torch_stats = {}
    _, params_after = check_against_torch(_batchnorm_case(shape, training, torch_running_stats=torch_stats))
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(params_after[name], torch_stats[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_batchnorm_momentum_and_eps():
    torch_stats = {}
    _, params_after = check_against_torch(
        _batchnorm_case((5, 4, 3), True, eps=1e-3, momentum=0.3, torch_running_stats=torch_stats))
    np.testing.assert_allclose(params_after["running_var"], torch_stats["running_var"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_frozen_affine(training):
    """Frozen weight and bias: only the input gradient is written."""
    check_against_torch(_batchnorm_case((4, 3, 2, 2), training, trainable=()))


@pytest.mark.parametrize("shape", [(6, 3, 4, 4), (40, 3)], ids=str)
def test_batchnorm_statistics_of_offset_data(shape):
    """A mean far from zero against a small spread: neither the one-pass moments nor the
    normalisation may cancel."""
    def offset_inputs(rng):
        x = 300.0 + 0.01 * rng.standard_normal(shape)
        x[0, :] += 0.05      # the first values, which the sums are centred on, off the mean
        return [x.astype(np.float32)]
    torch_stats = {}
    case = _batchnorm_case(shape, True, torch_running_stats=torch_stats, make_inputs=offset_inputs)
    case.rtol, case.atol = 1e-3, 1e-3
    _, params_after = check_against_torch(case)
    np.testing.assert_allclose(params_after["running_var"], torch_stats["running_var"], rtol=1e-3, atol=1e-7)


def test_batchnorm_without_input_gradient():
    check_against_torch(_batchnorm_case((4, 3, 2), True, grad_inputs=()))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 2)], ids=str)
def test_batchnorm_finite_differences(shape, training):
    check_finite_differences(_batchnorm_case(shape, training))


# batchnorm + relu as one kernel (the plan fuses them): the output is relu'd, and every
# gradient is masked where it was clipped.
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (4, 3, 5)], ids=str)
def test_batchnorm_fused_relu_against_torch(shape, training):
    check_against_torch(_batchnorm_case(shape, training, fuse="relu"))


def test_batchnorm_fused_relu_frozen_and_without_input_gradient():
    check_against_torch(_batchnorm_case((4, 3, 2, 2), True, fuse="relu", trainable=()))
    check_against_torch(_batchnorm_case((4, 3, 2, 2), True, fuse="relu", grad_inputs=()))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_fused_relu_keeps_nan(training):
    check_nan_propagates(_batchnorm_case((4, 3, 5), training, fuse="relu"))


def test_batchnorm_fused_relu_finite_differences():
    check_finite_differences(_batchnorm_case((3, 2, 2, 2), True, fuse="relu"))


def test_batchnorm_on_rows_does_not_fuse():
    """(N, C) inputs run the row loops, which have no mask: the plan keeps the relu apart."""
    from dslc.runtime.kernel_api import NodeSpec, kernel_class
    spec = NodeSpec(name="bn", op="batchnorm", attrs={"eps": 1e-5, "momentum": 0.1}, in_shapes=((8, 3),),
                    in_dtypes=("float32",), out_shape=(8, 3),
                    param_shapes={n: (3,) for n in ("weight", "bias", "running_mean", "running_var")})
    kernel = kernel_class("cpu", "batchnorm")(spec)
    assert not kernel.fuse_activation("relu", {})
    assert not kernel.backward_reads_out


# --- lrn -------------------------------------------------------------------------------------

def _lrn_case(shape, size=5, alpha=1e-4, beta=0.75, k=1.0):
    return Case("lrn", {"size": size, "alpha": alpha, "beta": beta, "k": k}, [shape],
                lambda xs, ps, a: F.local_response_norm(xs[0], a["size"], a["alpha"], a["beta"], a["k"]))


LRN_CASES = [
    _lrn_case((2, 7, 3, 3)),
    _lrn_case((2, 7, 3, 3), size=3, alpha=0.5, beta=0.75, k=2.0),
    _lrn_case((1, 6, 2, 4), size=4, alpha=0.3, beta=0.6, k=1.0),      # even window: asymmetric padding
    _lrn_case((2, 3, 2, 2), size=5, alpha=0.4, beta=1.2, k=1.5),      # window wider than the channels
]


@pytest.mark.parametrize("case", LRN_CASES, ids=str)
def test_lrn_against_torch(case):
    check_against_torch(case)


@pytest.mark.parametrize("case", [_lrn_case((2, 5, 2, 2), size=4, alpha=0.5, beta=0.75, k=1.0)], ids=str)
def test_lrn_finite_differences(case):
    check_finite_differences(case)


# --- dropout ---------------------------------------------------------------------------------
# torch's random stream cannot be matched, so dropout is checked against its definition.

def _dropout_case(shape, p, training):
    return Case("dropout", {"p": p}, [shape], lambda xs, ps, a: F.dropout(xs[0], a["p"], training),
                training=training)


def _run_dropout(shape, p, training, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    gout = rng.standard_normal(shape).astype(np.float32)
    out, gxs, _, _ = run_kernel(_dropout_case(shape, p, training), [x], {}, shape, gout, np.float32, seed)
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


def test_dropout_finite_differences():
    """With the mask fixed by the seed, dropout is linear and its backward exact."""
    check_finite_differences(_dropout_case((3, 4, 2), 0.4, training=True))
