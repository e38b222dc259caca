"""Model.fit takes data by the network's input names: fit(data={...}) or fit(image=..., ...),
and fit(x) alone for a network whose loss compares with its own input (no label input)."""
import numpy as np
import pytest

from dslc.compiler import compile_file, compile_source
from dslc.diagnostics import Source
from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.model import Model

from .test_any_inputs import AUTOENCODER, CLS_LOC, localisation_set


def test_fit_refuses_data_given_twice_or_not_at_all():
    net, _ = compile_file(str(CLS_LOC), {})
    data = localisation_set(8)
    with pytest.raises(RuntimeUserError, match="not both"):
        Model(net).fit(data["image"], data["label"], box=data["box"])
    with pytest.raises(RuntimeUserError, match="no data"):
        Model(net).fit(epochs=1)
    with pytest.raises(RuntimeUserError, match="`box` is missing from the training data"):
        Model(net).fit(image=data["image"], label=data["label"], progress=False)


@pytest.mark.slow
def test_fit_takes_arrays_by_input_name():
    net, _ = compile_file(str(CLS_LOC), {})
    data = localisation_set(96)
    by_dict = Model(net, seed=0).fit(data=data, epochs=2, batch=32, progress=False)
    by_keyword = Model(net, seed=0).fit(**data, epochs=2, batch=32, progress=False)
    assert by_dict[-1]["train_loss"] == by_keyword[-1]["train_loss"]
    assert by_dict[-1]["train_accuracy"] is not None and "smooth_l1" in by_dict[-1]["train_terms"]


@pytest.mark.slow
def test_an_autoencoder_trains_through_fit_without_labels():
    from sklearn.datasets import load_digits
    x = (load_digits().data / 16.0).astype(np.float32)
    net, _ = compile_source(Source("ae.net", AUTOENCODER))
    history = Model(net, seed=0).fit(x[:512], epochs=4, progress=False)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["train_accuracy"] is None
    again = Model(net, seed=0).fit(image=x[:512], epochs=4, progress=False)      # by input name
    assert again[-1]["train_loss"] == history[-1]["train_loss"]
