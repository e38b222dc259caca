"""Plan.backward's GradientObserver: the hook a data-parallel run uses to start each bucket's
allreduce while the backward pass goes on. Every parameter gradient is reported exactly once,
and when it is reported it already holds its final value: for shared parameters (summed over
several calls), for sibling convs that one call computes, and with a frozen weight."""
import numpy as np
import pytest

from dslc.runtime.kernel_api import Context
from dslc.runtime.model import Model
from dslc.runtime.plan import GradientObserver, Plan

from . import test_plan, test_sharing

pytestmark = pytest.mark.slow      # Numba compiles the kernels on first use


class Recorder(GradientObserver):
    def __init__(self, grads, to_host):
        self.grads, self.to_host, self.seen, self.calls = grads, to_host, {}, 0

    def after_call(self, final):
        self.calls += 1
        for name in final:
            assert name not in self.seen, f"{name} reported twice"
            self.seen[name] = self.to_host(self.grads[name]).copy()


CASES = {
    "fan-out": (lambda: test_plan._compiled(), lambda: test_plan._feeds(), 4, ()),
    "siblings": (lambda: test_plan._compiled(test_plan.INCEPTION), lambda: test_plan._inception_feeds(), 4,
                 ("branch2.b.weight",)),
    "shared-discriminator": (lambda: test_sharing._model().net, lambda: test_sharing._feeds(np.random.default_rng(0)),
                             5, ()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_gradient_is_reported_once_and_final(case):
    make_net, make_feeds, batch, frozen = CASES[case]
    model = Model(make_net(), seed=3)
    trainable = set(model.trainable_names()) - set(frozen)
    plan = Plan(model.net, model._dev, model.device, batch, {}, True, trainable)
    plan.set_inputs(make_feeds())
    plan.forward(Context(training=True))
    recorder = Recorder(plan.param_grads, model.device.to_host)
    plan.backward(Context(training=True), recorder)
    assert recorder.calls == len(plan.final_after)
    assert set(recorder.seen) == set(plan.param_grads) == trainable
    assert plan.gradient_order == [n for names in plan.final_after for n in names]
    for name, value in recorder.seen.items():
        np.testing.assert_array_equal(value, model.device.to_host(plan.param_grads[name]), err_msg=name)


def test_the_head_is_final_before_the_stem():
    """Gradients become final in reverse network order: the allreduce of the last layers'
    buckets can run while the first layers' gradients are computed."""
    model = Model(test_plan._compiled(), seed=3)
    plan = Plan(model.net, model._dev, model.device, 4, {}, True, set(model.trainable_names()))
    order = plan.gradient_order
    assert order.index("head.weight") < order.index("fc1.weight") < order.index("stem.weight")
