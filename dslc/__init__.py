"""dslc: a declarative model compiler for neural networks.

    net = dslc.compile("models/lenet5.net", classes=10)   # parse, check, lower
    out = net.forward(image=x)
"""
from .compiler import compile_file, compile_source  # noqa: F401
from .diagnostics import CompileError  # noqa: F401

__version__ = "0.1.0"


def compile(path: str, device: str = "cpu", **params):
    """Compile a .net file into a trainable model (see dslc.runtime.model.Model)."""
    from dslc.runtime.model import Model
    return Model.from_file(path, overrides=params, device=device)


def load(path: str, device: str = "cpu"):
    """Load a model saved with `Model.save`."""
    from dslc.runtime.model import Model
    return Model.load(path, device=device)
