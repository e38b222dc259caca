"""The checked graph (dslc/graph.py) as its readers see it: typed nodes with every attribute,
a topological `nodes()`, per-op diagram labels in the op definitions, and the summary and
drawing unchanged by the move to typed nodes (goldens in golden/, made before the move).
Also the warning for a network that defines nothing to run."""
import shutil
import textwrap
from pathlib import Path

import pytest

from dslc.cli import main
from dslc.compiler import compile_file
from dslc.diagnostics import Span
from dslc.graph import Network, Node
from dslc.ops import OPS, ParamSpec, TensorType
from dslc.viz import to_graphviz

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
ZOO = sorted((ROOT / "models").glob("*.net")) + sorted((ROOT / "bench" / "models").glob("*.net"))


@pytest.fixture
def contract(tmp_path, monkeypatch):
    """The golden program, copied to a fresh working directory under its golden name."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(GOLDEN / "contract.net", tmp_path / "contract.net")
    return "contract.net"


@pytest.mark.parametrize("path", ZOO, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_node_of_the_zoo_is_typed(path):
    net, _ = compile_file(str(path))
    assert isinstance(net, Network)
    seen = set()
    # the batch axis N, or the named row axis of an unbatched input (roi boxes: R) and what is counted by it
    rows = {n.type.shape[0] for n in net.nodes() if n.op == "input" and n.type.shape[:1] != ("N",)}
    for node in net.nodes():
        assert isinstance(node, Node) and net.node(node.name) is node
        assert node.op == "input" or node.op in OPS
        assert isinstance(node.attrs, dict) and isinstance(node.inputs, tuple)
        assert all(i in seen for i in node.inputs), f"{node.name} comes before its inputs"
        assert isinstance(node.type, TensorType) and (node.type.shape[:1] in (("N",), ()) or node.type.shape[0] in rows)
        assert all(isinstance(p, ParamSpec) for p in node.params.values())
        assert node.macs is None or (isinstance(node.macs, int) and node.macs >= 0)
        assert isinstance(node.span, Span) and node.line >= 1
        assert all(isinstance(name, str) and isinstance(kind, str) for name, kind in node.scope)
        seen.add(node.name)
    assert seen == set(net.graph) and len(net) == len(seen)
    assert [net.node(i).is_input for i in net.inputs] == [True] * len(net.inputs)
    assert all(o in net for o in net.outputs) and (net.loss is None or net.loss in net)


def test_the_graph_holds_only_typed_nodes():
    """No reader goes around the contract: a node's data is its typed Node and nothing else,
    and the edges are the Node's inputs."""
    net, _ = compile_file(str(ROOT / "models" / "resnet18.net"))
    for node in net.nodes():
        assert net.graph.nodes[node.name] == {"node": node}
        assert sorted(net.graph.predecessors(node.name)) == sorted(set(node.inputs))
        assert net.consumers(node.name) == list(net.graph.successors(node.name))


def test_node_facts(contract):
    net, _ = compile_file(contract)
    conv = net.node("stage.res2.conv1")
    assert (conv.op, conv.inputs, conv.type) == ("conv", ("stage.res1.relu2",), TensorType(("N", 16, 4, 4)))
    assert conv.attrs["kernel"] == (3, 3) and conv.attrs["stride"] == (2, 2)
    assert conv.params_count == 16 * 8 * 9 and conv.buffers_count == 0 and conv.macs == 18_432
    assert conv.scope == (("stage", "group"), ("stage.res2", "resblock"))
    assert conv.line == 7 and conv.span.source.path == contract
    bn = net.node("stage.res2.bn1")
    assert (bn.params_count, bn.buffers_count) == (32, 32)
    assert net.node("image").is_input and not conv.is_input
    with pytest.raises(KeyError):
        net.node("nope")


def test_summary_text_and_json_unchanged(contract, capsys):
    assert main(["compile", contract]) == 0
    assert capsys.readouterr().out == (GOLDEN / "contract.summary.txt").read_text()
    assert main(["compile", contract, "--format", "json"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "contract.summary.json").read_text()


@pytest.mark.parametrize("depth, golden", [(None, "contract.dot"), (1, "contract.depth1.dot")])
def test_drawing_unchanged(contract, depth, golden):
    net, _ = compile_file(contract)
    graph, _ = to_graphviz(net, depth)
    assert graph.source == (GOLDEN / golden).read_text()


@pytest.mark.parametrize("op, attrs, label", [
    ("conv", {"channels": 64, "kernel": (3, 3), "stride": (2, 2), "dilation": (1, 1), "groups": 1}, "3x3 /2, 64"),
    ("conv", {"channels": 8, "kernel": (3, 1), "stride": (1, 2), "dilation": (2, 2), "groups": 4},
     "3x1 /1x2, 8, dilation 2, groups 4"),
    ("deconv", {"channels": 3, "kernel": (4, 4), "stride": (2, 2), "groups": 1}, "4x4 /2, 3"),
    ("maxpool", {"kernel": (2, 2), "stride": (2, 2)}, "2x2 /2"),
    ("dense", {"units": 10}, "10"),
    ("lstm", {"hidden": 128, "layers": 2}, "128, 2 layers"),
    ("embed", {"vocab": 96, "dim": 64}, "96 → 64"),
    ("softmax", {"axis": 1}, ""),
    ("concat", {"axis": -1}, "axis -1"),
    ("relu", {}, ""),
])
def test_diagram_labels_live_in_the_op_definition(op, attrs, label):
    assert OPS[op].key_attrs(attrs) == label


def test_every_op_answers_for_its_label():
    for op in OPS.values():
        assert callable(op.key_attrs)


# ---- a network that defines nothing to run ---------------------------------------------------

def _compile(tmp_path, monkeypatch, capsys, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prog.net").write_text(textwrap.dedent(text))
    rc = main(["compile", "prog.net"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_cut_off_chain_is_warned_about(tmp_path, monkeypatch, capsys):
    rc, out, err = _compile(tmp_path, monkeypatch, capsys, """\
        network cut(classes = 10)
        input image: [1, 28, 28]
        input label: int

        block stem(c) {
          conv(c, 3x3, pad = 1) -> relu
        }
        """)
    assert rc == 0 and "parameters:             0" in out
    assert err == textwrap.dedent("""\
        warning: network `cut` defines no output and no loss
          --> prog.net:1:1
           |
         1 | network cut(classes = 10)
           | ^^^^^^^^^^^^^^^^^^^^^^^^^ no output
           = blocks defined but not used: `stem`
           = help: continue a chain from an input to an output, e.g. `logits = image -> flatten -> dense(10)`, \
and add a loss to train it, e.g. `loss cross_entropy(logits, label)`

        """)


def test_an_output_that_is_an_input_is_warned_about(tmp_path, monkeypatch, capsys):
    rc, _, err = _compile(tmp_path, monkeypatch, capsys, """\
        input image: [1, 28, 28]
        logits = image
          # -> conv(8, 3x3) -> flatten -> dense(10)
        """)
    assert rc == 0
    assert err.splitlines()[:5] == [
        "warning: network `prog` computes nothing: `logits` is the input `image`",
        "  --> prog.net:1:1",
        "   |",
        " 1 | input image: [1, 28, 28]",
        "   | ^^^^^^^^^^^^^^^^^^^^^^^^ computes nothing",
    ]


@pytest.mark.parametrize("text", [
    "input image: [4]\ny = image -> relu\n",                                  # an output, no loss: inference
    "input image: [4]\ninput t: [4]\nloss mse(image, t)\noutput image\n",     # a loss of the inputs
])
def test_a_network_with_something_to_run_is_not_warned_about(tmp_path, monkeypatch, capsys, text):
    rc, _, err = _compile(tmp_path, monkeypatch, capsys, text)
    assert rc == 0 and err == ""
