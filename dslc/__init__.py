"""dslc: a declarative model compiler for neural networks.

    net = dslc.compile("models/lenet5.net", classes=10)   # parse, check, lower
    out = net.forward(image=x)

    model = dslc.load("net.json")     # a network compiled with `dslc compile FILE -o net.json`
    graph, _ = dslc.compile_file("net.json")    # its checked graph (dslc.graph.Network)
"""
from .compiler import compile_file, compile_source  # noqa: F401
from .diagnostics import CompileError  # noqa: F401
from .graph import Network, Node  # noqa: F401

__version__ = "0.1.0"


def compile(path: str, device: str = "cpu", **params):
    """Compile a .net file into a trainable model (see dslc.runtime.model.Model)."""
    from dslc.runtime.model import Model
    return Model.from_file(path, overrides=params, device=device)


def load(path: str, device: str = "cpu", seed: int = 0):
    """Load a model: one saved with `Model.save` (network and parameters), or a compiled network
    written by `dslc compile FILE -o net.json` (parameters initialised from `seed`, as
    `dslc.compile` does). A file that is neither raises CompileError or the runtime's error."""
    from dslc.runtime.model import Model

    from .artifact import is_artifact
    if is_artifact(path):
        net, _ = compile_file(path)
        return Model(net, device=device, seed=seed)
    return Model.load(path, device=device)
