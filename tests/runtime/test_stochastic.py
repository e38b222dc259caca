"""drop_path and dropconnect_dense beyond the case table: how often they drop, that evaluation
is deterministic, and that in a network their draws are the model's seeded stream (the stream
checkpoints save), so a run with the same seed drops exactly the same samples."""
import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.kernel_api import Context, NodeSpec, kernel_class
from dslc.runtime.model import Model


def _kernel(op, attrs, shape, params=None):
    spec = NodeSpec("n", op, attrs, (shape,), ("float32",), shape, param_shapes=params or {})
    k = kernel_class("cpu", op)(spec)
    ws = {name: np.zeros(s, dtype) for name, (s, dtype) in k.workspace().items()}
    return k, ws


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drop_path_drops_whole_samples_at_rate_p_and_keeps_the_mean(p):
    n = 4000
    k, ws = _kernel("drop_path", {"p": p}, (n, 3, 2))
    x = np.ones((n, 3, 2), np.float32)
    out = np.empty_like(x)
    k.forward(Context(training=True, rng=np.random.default_rng(1)), [x], {}, out, ws)
    per_sample = out.reshape(n, -1)
    # a sample is all zero or all 1/(1-p): the branch goes as a whole
    assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / (1 - p)).all(1))
    dropped = (per_sample == 0).all(1).mean()
    assert abs(dropped - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert abs(out.mean() - 1) < 0.1


def test_drop_path_is_the_identity_in_eval_and_passes_the_gradient():
    k, ws = _kernel("drop_path", {"p": 0.5}, (5, 4))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    out, gx = np.empty_like(x), np.empty_like(x)
    ctx = Context(training=False)
    k.forward(ctx, [x], {}, out, ws)
    k.backward(ctx, [x], {}, out, x * 2, [gx], {}, ws)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(gx, x * 2)


def test_dropconnect_drops_weights_at_rate_p_once_per_step():
    k, ws = _kernel("dropconnect_dense", {"units": 50, "p": 0.3, "bias": False}, (8, 40),
                    {"weight": (50, 40)})
    x = np.ones((8, 40), np.float32)
    w = np.ones((50, 40), np.float32)
    out = np.empty((8, 50), np.float32)
    k.forward(Context(training=True, rng=np.random.default_rng(2)), [x], {"weight": w}, out, ws)
    mask = ws["mask"]
    assert set(np.unique(mask)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((mask == 0).mean() - 0.3) < 0.05
    # one mask for the whole batch: every sample sees the same weights
    np.testing.assert_allclose(out, np.broadcast_to(mask.sum(1), (8, 50)), rtol=1e-5)


NET = """network sd(p = 0.5)
input x: [6]
input t: [6]
y = x -> drop_path(p)
output y
loss mse(y, t)
"""


@pytest.mark.slow
def test_drop_path_in_a_network_draws_from_the_models_seeded_stream():
    net, _ = compile_source(Source("sd.net", NET))
    x = np.random.default_rng(3).standard_normal((8, 6)).astype(np.float32)
    outs = []
    for _ in range(2):
        model = Model(net, seed=11)
        outs.append([model.forward(training=True, x=x, t=x)["y"] for _ in range(2)])
    # the same seed: the same drops, step after step (what a resumed run relies on)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    # the first step's factors are the stream's first draw, uniform float32, kept where u >= p
    u = np.random.default_rng(11).random(8, dtype=np.float32)
    expected = x * np.where(u >= 0.5, 2.0, 0.0).astype(np.float32)[:, None]
    np.testing.assert_allclose(outs[0][0], expected, rtol=1e-6)
    assert not np.array_equal(outs[0][0], outs[0][1])          # a fresh draw each step
    np.testing.assert_array_equal(Model(net, seed=11).forward(training=False, x=x, t=x)["y"], x)
