"""The optimizers' scratch memory (runtime/optim.py): shared by all parameters, allocated once."""
import tracemalloc

import numpy as np
import pytest

from dslc.runtime.optim import OPTIMIZERS, make_optimizer

SIZES = {"small": 1_000, "medium": 50_000, "large": 200_000}
# Python objects (views, dict entries) a step creates besides arrays; far below any array here.
SLACK_BYTES = 64 * 1024


def peak_bytes_allocated(step):
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def make(name, weight_decay):
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(n).astype(np.float32) for k, n in SIZES.items()}
    grads = {k: rng.standard_normal(n).astype(np.float32) for k, n in SIZES.items()}
    return make_optimizer(name, params, lr=0.1, weight_decay=weight_decay), grads


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_scratch_is_two_arrays_of_the_largest_parameter(name, weight_decay):
    opt, grads = make(name, weight_decay)
    state_bytes = 4 * sum(SIZES.values()) * (len(opt.slots) - len(opt.scalar_slots))
    scratch_bytes = 2 * 4 * max(SIZES.values())
    first = peak_bytes_allocated(lambda: opt.step(grads, 0.1))
    assert first <= state_bytes + scratch_bytes + SLACK_BYTES
    assert peak_bytes_allocated(lambda: opt.step(grads, 0.1)) <= SLACK_BYTES   # later steps allocate nothing
