"""The elementwise algebra in the language (docs/LANGUAGE.md, "Elementwise algebra"): golden
diagnostics for its misuse, the shapes broadcasting and reductions give, and a small network
whose loss and gradients match torch's."""

import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from tests.compiler.helpers import golden


def shapes(program: str) -> dict:
    net, warnings = compile_source(Source("t.net", program))
    return {name: net.node(name).type.shape for name in net.graph.nodes}


HEAD = "input image: [3, 8, 8]\nh = image -> conv(4, 3x3)\n"


# ---- what compiles -----------------------------------------------------------------------------

VAE = """
network vae_head(latent = 8)
input x: [64]
hidden = x -> dense(32) -> relu
mu = hidden -> dense(latent)
logvar = hidden -> dense(latent)
std = logvar -> scale(0.5) -> exp
output mu, std
"""


def test_a_vae_standard_deviation_chain_compiles_with_the_expected_shapes():
    s = shapes(VAE)
    assert s["scale1"] == ("N", 8) and s["exp1"] == ("N", 8)


def test_broadcasting_reductions_and_the_mean_of_tensors_give_torch_shapes():
    s = shapes(HEAD + """
gate = h -> avgpool(global) -> reshape(4, 1, 1)
scaled = h -> mul(gate)
centre = h -> reduce_mean(axes = (2, 3), keepdims = true)
diff = sub(h, centre)
row = h -> reduce_sum(-1, keepdims = true)
col = h -> reduce_sum(-2, keepdims = true)
ratio = row -> div(col)
total = h -> reduce_sum(1, 2, 3)
joined = mean(scaled, diff, h)
six = h -> relu6 -> clamp(max = 1) -> abs -> shift(1) -> log -> sqrt -> square
output scaled, diff, ratio, total, joined, six
""")
    assert s["mul1"] == ("N", 4, 6, 6)
    assert s["reduce_mean1"] == ("N", 4, 1, 1)
    assert s["sub1"] == ("N", 4, 6, 6)
    assert s["reduce_sum1"] == ("N", 4, 6, 1)
    assert s["div1"] == ("N", 4, 6, 6)        # [N, 4, 6, 1] / [N, 4, 1, 6] broadcasts both ways
    assert s["reduce_sum2"] == ("N", 4, 1, 6)
    assert s["reduce_sum3"] == ("N",)
    assert s["mean1"] == ("N", 4, 6, 6)
    assert s["square1"] == ("N", 4, 6, 6)


# ---- golden diagnostics --------------------------------------------------------------------------

def test_a_broadcast_mismatch_names_the_dimension_and_how_sizes_broadcast(dslc):
    rc, out, err = dslc(HEAD + "y = h -> mul(image)\noutput y\n")
    assert rc == 1 and out == ""
    assert err == golden("""
        error: mul cannot broadcast [N, 4, 6, 6] with [N, 3, 8, 8]: dimension 1 is 4 and 3
          --> prog.net:3:10
           |
         3 | y = h -> mul(image)
           |          ^^^^^^^^^^ here
           = expected dimension 1 equal (4) or 1 on one side
           = found    input 2 [N, 3, 8, 8]
           = input `h` is [N, 4, 6, 6]
           = input `image` is [N, 3, 8, 8]
           = help: sizes broadcast only from 1, as in torch; a pooling or `reduce_mean(..., keepdims = true)` makes a dimension 1

        1 error
        """)


def test_different_ranks_are_refused_with_the_reshape_that_adds_size_one_axes(dslc):
    rc, out, err = dslc(HEAD + "g = h -> avgpool(global)\ny = h -> sub(g)\noutput y\n")
    assert rc == 1
    assert err == golden("""
        error: sub needs inputs of equal rank, found [N, 4, 6, 6] and [N, 4]
          --> prog.net:4:10
           |
         4 | y = h -> sub(g)
           |          ^^^^^^ here
           = expected 4-d like input 1 [N, 4, 6, 6], with 1 where it broadcasts
           = found    input 2 [N, 4]
           = input `h` is [N, 4, 6, 6]
           = input `g` is [N, 4]
           = help: both inputs keep the batch axis; `reshape(...)` adds size-1 axes, e.g. [N, C] -> reshape(C, 1, 1) -> [N, C, 1, 1]

        1 error
        """)


def test_a_binary_op_with_one_tensor_says_how_to_pass_the_other(dslc):
    rc, out, err = dslc(HEAD + "y = h -> div\noutput y\n")
    assert rc == 1
    assert "error: `div` takes 2 input tensors, found 1" in err
    assert "help: tensors flow in with `->` or are passed by name" in err


def test_clamp_without_a_bound_and_with_crossed_bounds(dslc):
    rc, out, err = dslc(HEAD + "y = h -> clamp\noutput y\n")
    assert rc == 1
    assert err == golden("""
        error: clamp needs a bound
          --> prog.net:3:10
           |
         3 | y = h -> clamp
           |          ^^^^^ here
           = expected `min = ...`, `max = ...` or both
           = found    neither
           = input `h` is [N, 4, 6, 6]
           = help: e.g. `clamp(min = 0, max = 6)` or `clamp(max = 1)`

        1 error
        """)
    rc, out, err = dslc(HEAD + "y = h -> clamp(min = 2, max = 1)\noutput y\n")
    assert rc == 1
    assert err == golden("""
        error: clamp min 2 is above its max 1
          --> prog.net:3:16
           |
         3 | y = h -> clamp(min = 2, max = 1)
           |                ^^^^^^^ here
           = expected min <= max
           = found    min = 2, max = 1
           = input `h` is [N, 4, 6, 6]
           = help: swap the bounds

        1 error
        """)


def test_reducing_the_batch_axis_is_refused_at_the_argument(dslc):
    rc, out, err = dslc(HEAD + "y = h -> reduce_mean(axes = 0)\noutput y\n")
    assert rc == 1
    assert err == golden("""
        error: reduce_mean axis 0 is out of range for [N, 4, 6, 6]
          --> prog.net:3:22
           |
         3 | y = h -> reduce_mean(axes = 0)
           |                      ^^^^^^^^ here
           = expected 1 to 3 or -3 to -1 (axis 0 is the batch, which is never reduced)
           = found    axis 0
           = input `h` is [N, 4, 6, 6]
           = help: a loss averages over the batch; reduce the axes after it

        1 error
        """)


def test_an_axis_named_twice_and_a_missing_axis(dslc):
    rc, out, err = dslc(HEAD + "y = h -> reduce_sum(1, -3)\noutput y\n")
    assert rc == 1
    assert "error: reduce_sum reduces axis 1 twice" in err and "help: name each axis once" in err
    rc, out, err = dslc(HEAD + "y = h -> reduce_mean\noutput y\n")
    assert rc == 1
    assert "error: `reduce_mean` is missing its argument `axes`" in err
    assert "signature: reduce_mean(axes, keepdims = false)" in err


def test_the_mean_of_tensors_needs_equal_shapes(dslc):
    rc, out, err = dslc(HEAD + "y = mean(h, image)\noutput y\n")
    assert rc == 1
    assert err == golden("""
        error: mean input 2 has shape [N, 3, 8, 8] but input 1 has [N, 4, 6, 6]: dimension 1 is 3 where 4 is expected
          --> prog.net:3:5
           |
         3 | y = mean(h, image)
           |     ^^^^^^^^^^^^^^ here
           = expected [N, 4, 6, 6], as input 1
           = found    [N, 3, 8, 8]
           = input `h` is [N, 4, 6, 6]
           = input `image` is [N, 3, 8, 8]
           = help: a projection (1x1 conv, or dense) makes the shapes agree

        1 error
        """)


def test_scale_needs_its_factor(dslc):
    rc, out, err = dslc(HEAD + "y = h -> scale\noutput y\n")
    assert rc == 1
    assert "error: `scale` is missing its argument `factor`" in err and "signature: scale(factor)" in err


# ---- a whole network against torch ----------------------------------------------------------------

GAUSSIAN = """
network gaussian_fit
input x: [6]
input target: [3]
mu = x -> m: dense(3)
logvar = x -> v: dense(3) -> clamp(min = -4, max = 4)
std = logvar -> scale(0.5) -> exp
gate = x -> g: dense(1) -> relu6                 # [N, 1]: broadcast over the 3 features
z = mul(std, gate) -> add(mu) -> sub(target) -> div(std) -> square
spread = logvar -> reduce_mean(1, keepdims = true) -> shift(1) -> abs -> sqrt -> log
pred = mean(z, mu) -> mul(spread)
loss mse(pred, target)
"""


@pytest.mark.slow
def test_a_network_of_elementwise_ops_matches_torch_loss_and_gradients():
    torch = pytest.importorskip("torch")
    from dslc.runtime.model import Model
    net, _ = compile_source(Source("g.net", GAUSSIAN))
    model = Model(net, device="cpu", seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    target = rng.standard_normal((5, 3)).astype(np.float32)
    loss = model.forward(training=True, x=x, target=target)["loss"]
    grads = model.backward()

    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in model.params.items()}
    tx, tt = torch.tensor(x, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)

    def dense(name, v):
        return v @ p[f"{name}.weight"].T + p[f"{name}.bias"]
    mu = dense("m", tx)
    logvar = torch.clamp(dense("v", tx), -4, 4)
    std = torch.exp(logvar * 0.5)
    gate = torch.nn.functional.relu6(dense("g", tx))
    z = torch.square((std * gate + mu - tt) / std)
    spread = torch.log(torch.sqrt(torch.abs(logvar.mean(1, keepdim=True) + 1)))
    pred = (z + mu) / 2 * spread
    ref = torch.nn.functional.mse_loss(pred, tt)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref.detach()), rel=1e-4)
    assert set(grads) == set(p)
    for k, g in grads.items():
        np.testing.assert_allclose(g, p[k].grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=k)
