"""ONNX export (runtime/onnx_export.py, `dslc export`): every zoo and bench network, with random
weights (and random batchnorm running statistics, so eval-mode batchnorm is exercised), exports,
passes onnx.checker, and runs in onnxruntime to dslc's own inference outputs within 1e-4 of the
output's scale; small networks cover the ops the zoo does not use; an op without an ONNX
equivalent, a missing onnx package and bad flags get diagnostics, not tracebacks."""
import subprocess
import sys
import textwrap
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dslc.cli import main  # noqa: E402
from dslc.compiler import compile_file  # noqa: E402
from dslc.runtime.errors import RuntimeUserError  # noqa: E402
from dslc.runtime.model import Model  # noqa: E402
from dslc.runtime.onnx_export import DEFAULT_OPSET, to_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DSLC = str(Path(sys.executable).with_name("dslc"))
NETS = sorted((REPO / "models").glob("*.net")) + sorted((REPO / "bench" / "models").glob("*.net"))

# Networks that cannot be exported, with the reason; every other one must round-trip.
UNEXPORTABLE: dict[str, str] = {}
# ImageNet-sized inputs: run at batch 1 to keep the CPU time down.
IMAGENET = {"alexnet", "densenet121", "googlenet", "googlenet_bn", "mobilenet_v2", "nin", "resnet18", "resnet34",
            "resnet50", "squeezenet", "vgg16"}
SEQUENCE_LENGTH = 7       # for a symbolic T left unbound

# Ops the zoo does not use (or uses in one form only), each in a small network.
OP_NETS = {
    "conv_pool_layout": """\
        input image: [4, 9, 9]
        p1 = image -> conv(6, 3x3, pad = 2, dilation = 2, groups = 2) -> prelu -> maxpool(2x2, ceil = true)
        a = p1 -> maxunpool(p1) -> deconv(4, 3x3, stride = 2, pad = 1, output_pad = 1, groups = 2) -> elu(0.5)
          -> slice(axis = 2, start = 1, end = 9, step = 2) -> relu6
        b = image -> avgpool(2x2, stride = 2, ceil = true) -> upsample(2, mode = bilinear)
        c = image -> avgpool(3x3, stride = 2, pad = 1) -> upsample(2) -> leaky_relu(0.2)
        u = image -> maxpool(3x3, stride = 3) -> unpool(3) -> lrn(3, k = 2) -> maxout(2)
        v = concat(b, c) -> batchnorm -> transpose(2, 3) -> permute(2, 3, 1) -> reduce_mean(3, keepdims = true)
        w = image -> reduce_sum(axes = (2, 3)) -> dense(5) -> softmax
        output a, u, v, w
        """,
    "elementwise": """\
        input x: [3, 4]
        input y: [1, 4]
        a = x -> abs -> shift(0.5) -> log -> scale(2.0) -> exp -> sqrt -> square -> clamp(min = -1.0, max = 3.0)
        b = mul(x, y) -> sub(x) -> div(y) -> clamp(max = 2.0) -> sigmoid
        c = mean(a, b, x) -> flatten -> dropconnect_dense(6) -> dropout(0.3) -> reshape(shape = (2, 3))
          -> softmax(axis = 2)
        output c
        """,
    "recurrent": """\
        input x: [T, 5]
        input ids: int[T]
        input h: [4, 6]
        input hc: [2, 6]
        s = ids -> embed(11, 5)
        a = x -> gru(h, hidden = 6, layers = 2, bidirectional = true, sequence = false)
        b = s -> lstm(hc, hc, hidden = 6, layers = 2, reverse = true)
        c = x -> rnn(hidden = 6, layers = 2, dropout = 0.2) -> dense(3)
        d = b -> lstm(hidden = 4, bidirectional = true) -> gru(hidden = 3, reverse = true, sequence = false)
        output a, b, c, d
        """,
    "roi": """\
        input image: [3, 16, 16]
        input rois: unbatched [R, 5]
        feat = image -> conv(4, 3x3, pad = 1) -> relu                   # [N, 4, 16, 16]
        p = roi_pool(feat, rois, output = 3x3, scale = 0.5) -> flatten -> dense(5)
        a = roi_align(feat, rois, output = 2x3, scale = 0.5, sampling_ratio = 2)
        b = roi_align(feat, rois, output = 3x3, scale = 0.5, aligned = true)
        output p, a, b
        """,
}


def _model(net) -> Model:
    """Random weights, and running statistics away from (0, 1) so eval-mode batchnorm matters."""
    model = Model(net, seed=0)
    rng = np.random.default_rng(1)
    for name, value in model.params.items():
        if name.endswith("running_mean"):
            model.set_param(name, rng.standard_normal(value.shape) * 0.1)
        elif name.endswith("running_var"):
            model.set_param(name, rng.uniform(0.5, 1.5, value.shape))
    return model


def _feeds(net, session, batch: int) -> dict:
    rng = np.random.default_rng(2)
    vocab = min([n.attrs["vocab"] for n in net.nodes() if n.op == "embed"] or [2])
    feeds = {}
    for i in session.get_inputs():
        t = net.node(i.name).type
        shape = [batch if d == "N" else net.symbols.get(d) or SEQUENCE_LENGTH if isinstance(d, str) else d
                 for d in t.shape]
        if t.shape[0] != "N" and t.shape[1:] == (5,):      # boxes: batch index, x1, y1, x2, y2 inside 32x32
            corner = rng.uniform(0, 20, (shape[0], 2))
            feeds[i.name] = np.concatenate([rng.integers(0, batch, (shape[0], 1)), corner,
                                            corner + rng.uniform(1, 12, (shape[0], 2))], axis=1).astype(np.float32)
        else:
            feeds[i.name] = rng.integers(0, vocab, shape) if t.dtype == "int64" else \
                rng.standard_normal(shape).astype(np.float32)
    return feeds


def _round_trip(net, batch: int, opset: int = DEFAULT_OPSET):
    """Export, check, and compare onnxruntime's outputs with dslc's inference outputs."""
    model = _model(net)
    exported = to_onnx(net, model.params, opset)
    onnx.checker.check_model(exported, full_check=True)
    assert exported.opset_import[0].version == opset
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(net, session, batch)
    expected = model.forward(**feeds)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert set(got) == {net.tensor_name(o) for o in net.outputs}
    # An output drawn from noise in inference too (gaussian_like: ONNX's RandomNormalLike, dcgan's
    # generator) has its own generator's numbers in onnxruntime: its shape is compared, not its values.
    noisy = {d for n in net.nodes() if n.op == "gaussian_like" for d in (n.name, *nx.descendants(net.graph, n.name))}
    for o in net.outputs:
        name = net.tensor_name(o)
        ref, value = expected[name], got[name]
        assert value.shape == ref.shape, name
        if o in noisy:
            assert np.isfinite(value).all(), name
            continue
        scale = float(np.max(np.abs(ref))) or 1.0
        assert np.max(np.abs(value - ref)) <= 1e-4 * scale, f"{net.name}: output {name} differs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_zoo_and_bench_network_round_trips(path):
    if path.stem in UNEXPORTABLE:
        net, _ = compile_file(str(path))
        with pytest.raises(RuntimeUserError):
            to_onnx(net, _model(net).params)
        return
    net, _ = compile_file(str(path))
    _round_trip(net, 1 if path.stem in IMAGENET else 2)


def test_the_unexportable_list_names_real_networks():
    assert set(UNEXPORTABLE) <= {p.stem for p in NETS}


def _compile_text(tmp_path, text, name="net"):
    path = tmp_path / f"{name}.net"
    path.write_text(textwrap.dedent(text))
    net, _ = compile_file(str(path))
    return net, path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OP_NETS))
def test_ops_outside_the_zoo_round_trip(name, tmp_path):
    net, _ = _compile_text(tmp_path, OP_NETS[name], name)
    _round_trip(net, 3)


@pytest.mark.slow
@pytest.mark.parametrize("opset", [13, 18, 21])
def test_other_opsets_round_trip(opset, tmp_path):
    """The reductions take their axes as an input from opset 18; RoiAlign's aligned mode needs 16."""
    net, _ = _compile_text(tmp_path, OP_NETS["conv_pool_layout"])
    _round_trip(net, 2, opset)
    if opset >= 16:
        net, _ = _compile_text(tmp_path, OP_NETS["roi"], "roi")
        _round_trip(net, 2, opset)


def test_aligned_roi_align_needs_opset_16(tmp_path):
    net, _ = _compile_text(tmp_path, OP_NETS["roi"], "roi")
    with pytest.raises(RuntimeUserError, match="opset 16"):
        to_onnx(net, Model(net).params, 15)


def test_names_are_the_networks_and_losses_are_left_out(tmp_path):
    net, _ = compile_file(str(REPO / "models" / "lenet5.net"))
    exported = to_onnx(net, Model(net).params)
    graph = exported.graph
    assert [i.name for i in graph.input] == ["image"]             # the label feeds only the loss
    assert [o.name for o in graph.output] == ["logits"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {"c1.weight", "f6.bias"} <= {t.name for t in graph.initializer}
    assert not any("loss" in n.name or "cross_entropy" in n.name for n in graph.node)


EVEN_LRN = """\
    input image: [4, 8, 8]
    logits = image -> conv(4, 3x3) -> lrn(4) -> flatten -> dense(3)
    output logits
    """


def test_an_op_without_an_onnx_equivalent_is_named_with_its_layer_and_line(tmp_path):
    net, _ = _compile_text(tmp_path, EVEN_LRN)
    with pytest.raises(RuntimeUserError) as err:
        to_onnx(net, Model(net).params)
    assert "`lrn`" in err.value.message and "`lrn1`" in err.value.message and "line 2" in err.value.message


def _error(argv, capsys, code):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err and "help:" in err
    return err


@pytest.fixture
def even_lrn(tmp_path):
    net, path = _compile_text(tmp_path, EVEN_LRN)
    ckpt = tmp_path / "w.ckpt"
    Model(net).save(ckpt)
    return str(path), str(ckpt)


def test_cli_unsupported_op_exits_1_without_a_traceback(even_lrn, tmp_path, capsys):
    path, ckpt = even_lrn
    out = tmp_path / "m.onnx"
    err = _error(["export", path, "--weights", ckpt, "-o", str(out)], capsys, 1)
    assert "`lrn`" in err and "no ONNX equivalent" in err
    assert not out.exists()


def test_cli_without_onnx_names_the_extra(even_lrn, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)        # import fails as when not installed
    path, ckpt = even_lrn
    err = _error(["export", path, "--weights", ckpt, "-o", str(tmp_path / "m.onnx")], capsys, 2)
    assert "pip install 'dslc[onnx]'" in err


def test_cli_usage_errors(even_lrn, tmp_path, capsys):
    path, ckpt = even_lrn
    err = _error(["export", path, "--weights", ckpt, "-o", str(tmp_path / "m.onnx"), "--opset", "7"], capsys, 2)
    assert "opset 7" in err
    err = _error(["export", path, "--weights", ckpt, "-o", str(tmp_path / "m.txt")], capsys, 2)
    assert ".onnx" in err
    err = _error(["export", path, "--weights", ckpt, "-o", str(tmp_path / "m.onnx"), "--format", "tflite"],
                 capsys, 2)
    assert "tflite" in err


@pytest.mark.slow
def test_dslc_export_command_writes_a_model_onnxruntime_runs(tmp_path):
    net_path = str(REPO / "models" / "digits_cnn.net")
    model = _model(compile_file(net_path)[0])
    ckpt, out = tmp_path / "digits.ckpt", tmp_path / "digits.onnx"
    model.save(ckpt)
    r = subprocess.run([DSLC, "export", net_path, "--weights", str(ckpt), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "opset 17" in r.stdout
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    x = np.random.default_rng(0).random((4, 1, 16, 16), dtype=np.float32)
    (logits,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    expected = model.forward(image=x)["logits"]
    assert np.max(np.abs(logits - expected)) <= 1e-4 * np.max(np.abs(expected))
