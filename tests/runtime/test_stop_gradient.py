"""stop_gradient in a plan: nothing upstream gets backward work on its account, and a gradient
asked for through it only is zero."""
import numpy as np

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.model import Model

CUT = """
network probe
input image: [1, 6, 6]
input label: int
feat = image -> conv(4, 3x3) -> relu -> flatten
logits = feat -> stop_gradient -> dense(3)
output logits
loss cross_entropy(logits, label)
"""

BOTH = """
network probe
input image: [1, 6, 6]
input label: int
feat = image -> conv(4, 3x3) -> relu -> flatten
head = feat -> detach -> dense(3)
side = feat -> dense(3)
logits = add(head, side)
output logits
loss cross_entropy(logits, label)
"""


def _model(src):
    net, _ = compile_source(Source("probe.net", src))
    return Model(net, device="cpu", seed=0)


def test_nothing_before_a_stop_gradient_takes_part_in_backward():
    plan = _model(CUT).plan(2, {}, True)
    assert not any(n.startswith(("conv", "relu", "flatten", "stop_gradient")) for n in plan.grad_nodes)
    assert any(n.startswith("dense") for n in plan.grad_nodes)


def test_a_second_path_around_the_stop_still_trains_the_layers_before_it():
    plan = _model(BOTH).plan(2, {}, True)
    assert any(n.startswith("conv") for n in plan.grad_nodes)
    assert not any(n.startswith("detach") or n.startswith("stop_gradient") for n in plan.grad_nodes)


def test_the_gradient_with_respect_to_an_input_behind_the_stop_is_zero():
    model = _model(CUT)
    image = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    model.forward(image=image)
    got = model.backward(wrt=["image"], output="logits", index=1)["image"]
    assert got.shape == image.shape and not np.any(got)
