"""`dslc viz`: what the drawn SVG holds (layers, clusters, shapes), --depth, the formats, and
the fallback when Graphviz's `dot` is missing."""
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dslc.cli import main
from dslc.compiler import UsageError, compile_file
from dslc.diagnostics import CompileError
from dslc.viz import render

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "models").glob("*.net"))
SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

# Two residual blocks (the second with a projection shortcut) in a group, then an
# inception-like block whose branches join on channels.
TINY = """
network tiny(classes = 10)

input image: [3, 16, 16]
input label: int

block resblock(c, stride = 1) {
  residual {
    conv1: conv(c, 3x3, stride = stride, pad = 1) -> bn1: batchnorm -> relu
  } shortcut auto
  -> relu
}

block mixed(c) {
  concat {
      conv(c, 1)
    | conv(c, 1) -> conv(c, 3, pad = 1)
    | maxpool(3x3, stride = 1, pad = 1)
  }
}

logits = image
  -> stem: conv(8, 3x3, stride = 2, pad = 1)
  -> stage: (res1: resblock(8) -> res2: resblock(16, stride = 2))
  -> mix: mixed(4)
  -> avgpool(global)
  -> fc: dense(classes)

loss cross_entropy(logits, label)
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.net"
    path.write_text(TINY)
    net, _ = compile_file(str(path))
    return net


def _text(g):
    return " ".join(" ".join(t.text or "" for t in g.iter(f"{SVG}text")).split())


def _groups(svg_path, kind):
    """{title: visible text} of the SVG groups of one class: node, cluster or edge."""
    root = ET.parse(svg_path).getroot()
    return {g.find(f"{SVG}title").text: _text(g) for g in root.iter(f"{SVG}g") if g.get("class") == kind}


@needs_dot
def test_svg_draws_every_layer_with_its_op_and_shapes_on_edges(tiny, tmp_path):
    out = tmp_path / "tiny.svg"
    msg = render(tiny, str(out))
    nodes = _groups(out, "node")
    assert msg == f"wrote {out} ({len(nodes)} nodes)"
    assert set(nodes) == set(tiny.graph.nodes) | {"output/logits"}
    assert nodes["stem"] == "stem conv 3x3 /2, 8"
    assert nodes["stage.res2.conv1"] == "conv1 conv 3x3 /2, 16"
    assert nodes["fc"] == "fc dense 10"
    assert nodes["stage.res1.relu1"] == "relu"                 # a made-up counter is not shown
    assert nodes["mix.branch3.maxpool1"] == "maxpool 3x3"
    assert nodes["image"] == "image input"
    assert nodes["output/logits"] == "logits output"
    edges = _groups(out, "edge")
    assert edges["image->stem"] == "3×16×16"
    assert edges["stem->stage.res1.conv1"] == "8×8×8"
    assert edges["stage.res2.relu2->mix.branch1.conv1"] == "16×4×4"
    assert edges["mix.concat1->avgpool1"] == "24×4×4"
    assert edges["fc->output/logits"] == "10"
    assert edges["label->loss.cross_entropy1"] == "int"


@needs_dot
def test_blocks_are_nested_clusters_labelled_with_instance_and_kind(tiny, tmp_path):
    out = tmp_path / "tiny.svg"
    render(tiny, str(out))
    clusters = _groups(out, "cluster")
    assert clusters == {
        "cluster_stage": "stage · group",
        "cluster_stage.res1": "res1 · resblock",
        "cluster_stage.res2": "res2 · resblock",
        "cluster_stage.res2.downsample": "downsample · shortcut",
        "cluster_mix": "mix · mixed",
        "cluster_mix.branch1": "branch1",
        "cluster_mix.branch2": "branch2",
        "cluster_mix.branch3": "branch3",
        "cluster_loss": "loss",
    }
    # The SVG lists clusters flat, so nesting shows in the layout: an inner box lies inside.
    root = ET.parse(out).getroot()
    boxes = {g.find(f"{SVG}title").text: _bounds(g) for g in root.iter(f"{SVG}g") if g.get("class") == "cluster"}
    assert _inside(boxes["cluster_stage.res1"], boxes["cluster_stage"])
    assert _inside(boxes["cluster_stage.res2.downsample"], boxes["cluster_stage.res2"])
    assert _inside(boxes["cluster_mix.branch2"], boxes["cluster_mix"])


def _bounds(g):
    numbers = [float(v) for v in g.find(f"{SVG}path").get("d").replace("M", " ").replace("C", " ")
               .replace(",", " ").split()]
    xs, ys = numbers[0::2], numbers[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _inside(inner, outer):
    return outer[0] < inner[0] and outer[1] < inner[1] and inner[2] < outer[2] and inner[3] < outer[3]


@needs_dot
def test_depth_collapses_deeper_blocks_into_one_node_with_edges_rerouted(tiny, tmp_path):
    full, shallow, top = tmp_path / "full.svg", tmp_path / "d1.svg", tmp_path / "d0.svg"
    render(tiny, str(full))
    render(tiny, str(shallow), depth=1)
    msg = render(tiny, str(top), depth=0)
    nodes_full, nodes_d1, nodes_d0 = (_groups(p, "node") for p in (full, shallow, top))
    assert len(nodes_d0) < len(nodes_d1) < len(nodes_full)
    assert msg == f"wrote {top} ({len(nodes_d0)} nodes)"

    # depth 1: the group `stage` stays a cluster, its blocks become one node each.
    assert "block/stage.res1" in nodes_d1 and "block/stage.res2" in nodes_d1
    assert not any(n.startswith("stage.") for n in nodes_d1)
    assert "cluster_stage" in _groups(shallow, "cluster")
    assert "cluster_stage.res1" not in _groups(shallow, "cluster")
    assert nodes_d1["block/stage.res2"] == "stage.res2 resblock 16×4×4 1,424 params"
    assert _groups(shallow, "edge")["block/stage.res1->block/stage.res2"] == "8×8×8"

    # depth 0: every top-level block is one node, and no cluster is left.
    assert {"block/stage", "block/mix", "block/loss"} <= set(nodes_d0)
    assert not _groups(top, "cluster")
    assert nodes_d0["block/mix"] == "mix mixed 24×4×4 284 params"
    assert nodes_d0["block/loss"] == "loss loss scalar"
    assert nodes_d0["loss"] == "loss loss_sum"               # the sum of the terms is its own node
    edges = _groups(top, "edge")
    assert edges["stem->block/stage"] == "8×8×8"
    assert edges["block/stage->block/mix"] == "16×4×4"
    assert edges["block/mix->avgpool1"] == "24×4×4"
    assert edges["label->block/loss"] == "int"
    assert not any(n.startswith("stage.") or n.startswith("mix.") for e in edges for n in e.split("->"))


def test_dot_output_is_written_without_running_dot(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    out = tmp_path / "tiny.dot"
    msg = render(tiny, str(out), depth=0)
    source = out.read_text()
    assert source.startswith("digraph tiny {")
    assert '"block/stage"' in source and "3×16×16" in source
    assert msg.startswith(f"wrote {out} (")


def test_missing_dot_writes_the_source_and_says_how_to_install(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")                # graphviz finds no `dot` program
    out = tmp_path / "tiny.png"
    msg = render(tiny, str(out))
    assert not out.exists()
    assert (tmp_path / "tiny.dot").read_text().startswith("digraph tiny {")
    assert str(tmp_path / "tiny.dot") in msg
    assert "apt-get install graphviz" in msg and "brew install graphviz" in msg


@pytest.mark.parametrize("name", ["net.jpg", "net", "net.svg.txt"])
def test_unknown_format_is_a_usage_error_listing_the_formats(tiny, tmp_path, name):
    with pytest.raises(UsageError) as e:
        render(tiny, str(tmp_path / name))
    assert ".svg, .png, .pdf, .dot" in e.value.help
    assert not (tmp_path / name).exists()


def test_unwritable_output_is_a_usage_error(tiny, tmp_path):
    with pytest.raises(UsageError) as e:
        render(tiny, str(tmp_path / "no" / "such" / "dir" / "net.dot"))
    assert "cannot write" in e.value.message


def test_negative_depth_is_a_usage_error(tiny, tmp_path):
    with pytest.raises(UsageError):
        render(tiny, str(tmp_path / "net.dot"), depth=-1)


def _compiles(path):
    try:
        return compile_file(str(path))[0]
    except CompileError:
        return None


@needs_dot
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_every_model_in_the_zoo_draws_completely(path, tmp_path):
    net = _compiles(path)
    if net is None:
        pytest.skip(f"{path.name} does not compile")
    out = tmp_path / f"{path.stem}.svg"
    msg = render(net, str(out))
    nodes = _groups(out, "node")
    assert msg == f"wrote {out} ({len(nodes)} nodes)"
    assert set(nodes) == set(net.graph.nodes) | {f"output/{net.tensor_name(o)}" for o in net.outputs}
    scopes = {name for d in net.nodes() for name, _ in d.scope}
    assert set(_groups(out, "cluster")) == {f"cluster_{s}" for s in scopes}
    edges = _groups(out, "edge")
    for src, dst in net.graph.edges:
        shape = net.node(src).type.shape
        if shape and net.node(src).type.dtype == "float32":
            assert edges[f"{src}->{dst}"] == "×".join(str(d) for d in shape[1:])


@needs_dot
def test_cli_draws_a_model(tmp_path):
    out = tmp_path / "resnet18.svg"
    run = subprocess.run([sys.executable, "-m", "dslc", "viz", str(ROOT / "models" / "resnet18.net"),
                          "-o", str(out), "--depth", "1"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}" in run.stderr
    assert "block/layer1.0" in _groups(out, "node")


def test_cli_refuses_an_unknown_format_with_exit_2(tmp_path, capsys):
    path = tmp_path / "tiny.net"
    path.write_text(TINY)
    assert main(["viz", str(path), "-o", str(tmp_path / "tiny.gif")]) == 2
    err = capsys.readouterr().err
    assert "tiny.gif" in err and ".svg, .png, .pdf, .dot" in err


def test_every_op_family_has_its_colour():
    from dslc.ops import OPS
    from dslc.viz import FAMILY_COLOURS
    assert {op.family for op in OPS.values()} <= set(FAMILY_COLOURS)
