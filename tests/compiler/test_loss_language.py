"""The loss statement as a signed weighted sum, the new losses (smooth_l1, kl_gaussian, weighted
forms) and the random ops (sample, gaussian_like) in the language: what they compile to, and the
golden diagnostics of their misuse (in the style of test_diagnostics.py)."""


from dslc.compiler import compile_source
from dslc.diagnostics import Source
from tests.compiler.helpers import golden

VAE_HEAD = """network v
input image: [6]
input label: int
input mask: [6]
h = image -> dense(8) -> relu
mu = h -> dense(3)
logvar = h -> dense(3)
z = sample(mu, logvar)
recon = z -> dense(6)
logits = h -> dense(4)
"""


def _compile(text):
    net, warnings = compile_source(Source("prog.net", text))
    return net


def _loss_terms(net):
    total = net.node(net.loss)
    return [(net.node(i).op, w) for i, w in zip(total.inputs, total.attrs["weights"])]


def test_signed_weights_fold_into_the_loss_sum():
    net = _compile(VAE_HEAD + "loss bce(recon, image) + 0.5 * kl_gaussian(mu, logvar) - 0.1 * mse(recon, image)"
                              " - cross_entropy(logits, label)\n")
    assert _loss_terms(net) == [("bce", 1.0), ("kl_gaussian", 0.5), ("mse", -0.1), ("cross_entropy", -1.0)]


def test_a_leading_minus_weighs_the_first_term():
    net = _compile(VAE_HEAD + "loss -2 * mse(recon, image) + kl_gaussian(mu, logvar)\n")
    assert _loss_terms(net) == [("mse", -2.0), ("kl_gaussian", 1.0)]


def test_the_loss_may_continue_on_the_next_line():
    net = _compile(VAE_HEAD + "loss mse(recon, image)\n     - 0.25 * kl_gaussian(mu, logvar)\n")
    assert _loss_terms(net) == [("mse", 1.0), ("kl_gaussian", -0.25)]


def test_weighted_losses_take_a_third_input():
    net = _compile(VAE_HEAD + "input sample_weight: []\n"
                              "loss mse(recon, image, mask) + bce(recon, image, sample_weight)"
                              " + smooth_l1(recon, image, mask, beta = 0.5) + cross_entropy(logits, label, sample_weight)\n")
    terms = [net.node(i) for i in net.node(net.loss).inputs]
    assert [len(t.inputs) for t in terms] == [3, 3, 3, 3]
    assert terms[2].attrs["beta"] == 0.5


def test_sample_keeps_the_mean_shape_and_is_not_a_loss():
    net = _compile(VAE_HEAD + "loss mse(recon, image) + kl_gaussian(mu, logvar)\n")
    z = [n for n in net.graph.nodes if net.node(n).op == "sample"][0]
    assert str(net.node(z).type) == "[N, 3]"


def test_negative_weight_without_a_star_is_a_syntax_error(dslc):
    rc, out, err = dslc(VAE_HEAD + "loss mse(recon, image) - 0.1 kl_gaussian(mu, logvar)\n")
    assert rc == 1
    assert err.splitlines()[:5] == [
        "error: expected `*`, found `kl_gaussian`",
        "  --> prog.net:11:30",
        "    |",
        " 11 | loss mse(recon, image) - 0.1 kl_gaussian(mu, logvar)",
        "    |                              ^^^^^^^^^^^ unexpected here"]


def test_kl_gaussian_with_mismatched_heads(dslc):
    rc, out, err = dslc(VAE_HEAD + "loss kl_gaussian(mu, recon)\n")
    assert rc == 1
    assert err == golden("""
        error: kl_gaussian: logvar [N, 6] does not match the mean [N, 3]: dimension 1 is 6 where 3 is expected
          --> prog.net:11:6
            |
         11 | loss kl_gaussian(mu, recon)
            |      ^^^^^^^^^^^^^^^^^^^^^^ here
            = expected [N, 3]
            = found    [N, 6]
            = input `mu` is [N, 3]
            = input `recon` is [N, 6]
            = help: mu and logvar are two heads of one size

        1 error
        """)


def test_sample_with_mismatched_heads(dslc):
    rc, out, err = dslc(VAE_HEAD.replace("z = sample(mu, logvar)", "z = sample(mu, h)")
                        + "loss mse(recon, image)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: sample: logvar [N, 8] does not match the mean [N, 3]: dimension 1 is 8 where 3 is expected"
    assert lines[1] == "  --> prog.net:8:5"
    assert lines[-1] == "1 error"


def test_a_weight_of_the_wrong_shape(dslc):
    rc, out, err = dslc(VAE_HEAD + "loss mse(recon, image, mu)\n")
    assert rc == 1
    assert err == golden("""
        error: mse: the weight [N, 3] fits neither the terms [N, 6] nor one per sample [N]
          --> prog.net:11:6
            |
         11 | loss mse(recon, image, mu)
            |      ^^^^^^^^^^^^^^^^^^^^^ here
            = expected [N, 6] (one weight per term) or [N] (one per sample)
            = found    [N, 3]
            = input `recon` is [N, 6]
            = input `image` is [N, 6]
            = input `mu` is [N, 3]
            = help: the third input of mse multiplies each term before the mean

        1 error
        """)


def test_an_integer_weight(dslc):
    rc, out, err = dslc(VAE_HEAD + "loss cross_entropy(logits, label, label)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: cross_entropy: the weight must be a float tensor, found integers int[N]"
    assert "    = expected a float [N]" in lines
    assert "    = help: declare the weight (a mask of 0 and 1, say) as a float input" in lines


def test_negative_smooth_l1_beta_points_at_beta(dslc):
    rc, out, err = dslc(VAE_HEAD + "loss smooth_l1(recon, image, beta = -1)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: smooth_l1: beta must be 0 or more, found -1.0"
    assert lines[4] == "    |                              ^^^^^^^^^ here"
    assert "    = help: beta is the width of the quadratic zone around 0 (torch's default 1.0)" in lines


def test_sample_is_not_a_loss(dslc):
    rc, out, err = dslc(VAE_HEAD + "loss sample(mu, logvar)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: `sample` is not a loss"


def test_a_vae_draws_with_the_signed_weights_in_the_loss_box():
    from dslc.viz import to_graphviz
    net = _compile(VAE_HEAD + "loss bce(recon, image) + 0.5 * kl_gaussian(mu, logvar) - 0.1 * mse(recon, image)\n")
    graph, count = to_graphviz(net, None)
    assert "1× + 0.5× - 0.1×" in graph.source
    assert "sample" in graph.source
