"""A loss that goes non-finite stops training with a diagnostic that names the step and the
first layer whose output went non-finite."""
import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.model import Model

TINY = """network tiny(classes = 3)

input x: [4]
input label: int

logits = x -> fc: dense(classes)

loss cross_entropy(logits, label)
"""


def test_nan_data_stops_at_the_first_step_naming_the_layer():
    net, _ = compile_source(Source("tiny.net", TINY))
    m = Model(net)
    x = np.full((16, 4), np.nan, np.float32)
    y = np.zeros(16, np.int64)
    with pytest.raises(RuntimeUserError) as e:
        m.fit(x, y, epochs=1, batch=8, lr=0.1, optimizer="sgd", progress=False)
    msg = str(e.value)
    assert "training diverged at epoch 1, step 1: the loss is nan" in msg
    assert "first non-finite output: `fc` (dense)" in msg
    assert "--lr" in e.value.hint
