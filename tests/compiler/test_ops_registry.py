"""The op registry (dslc/ops/): shape rules, parameters against torch, MACs, diagnostics, completeness.

Kernels are tested elsewhere (tests/kernels, tests/cuda); this file only checks what the
compiler declares about each op. Attrs are built the way the elaborator hands them over:
every attribute present, defaults filled in, pairs as (h, w) tuples.
"""
import itertools
import math
import re
from pathlib import Path

import networkx as nx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dslc.graph import Node, add_node
from dslc.ops import OPS, REQUIRED, ShapeError, TensorType
from dslc.runtime.kernel_api import FAMILIES

REPO = Path(__file__).resolve().parents[2]
ATTR_KINDS = {"int", "float", "bool", "pair", "pad", "enum", "ints", "axis", "window", "floats"}
# Attrs that `link` copies from another node instead of the user writing them.
LINKED_ATTRS = {"maxunpool": ("kernel", "stride", "pad", "ceil")}


def canon(op, **given):
    """The attrs of a call of `op`: `given` plus defaults, pair-like kinds as (h, w) tuples, linked attrs as given."""
    attrs = {}
    for attr in OPS[op].attrs:
        value = given.pop(attr.name, attr.default)
        assert value is not REQUIRED, f"test case omits the required attr {op}.{attr.name}"
        if attr.kind in ("pair", "pad", "window") and isinstance(value, int):
            value = (value, value)
        attrs[attr.name] = value
    for name in LINKED_ATTRS.get(op, ()):
        attrs[name] = given.pop(name)
    assert not given, f"{op} has no attrs {sorted(given)}"
    return attrs


def t(*dims):
    """A float tensor type with the batch dimension first."""
    return TensorType(("N", *dims))


def ids(*dims):
    """An integer tensor type with the batch dimension first."""
    return TensorType(("N", *dims), "int64")


SCALAR = TensorType(())


# ---- shape rules ----------------------------------------------------------------------------

SHAPE_CASES = [
    # (id, op, attrs, inputs, output)
    ("conv-same", "conv", dict(channels=8, kernel=3, pad="same"), [t(3, 9, 9)], t(8, 9, 9)),
    ("conv-stride-dilation", "conv", dict(channels=4, kernel=3, stride=2, dilation=2), [t(2, 9, 8)], t(4, 3, 2)),
    ("deconv-doubles", "deconv", dict(channels=2, kernel=4, stride=2, pad=1), [t(3, 5, 5)], t(2, 10, 10)),
    ("maxpool-stride-defaults-to-kernel", "maxpool", dict(kernel=2), [t(3, 8, 8)], t(3, 4, 4)),
    ("maxpool-resnet-stem", "maxpool", dict(kernel=3, stride=2, pad=1), [t(64, 112, 112)], t(64, 56, 56)),
    ("maxpool-floor-mode", "maxpool", dict(kernel=3, stride=2), [t(2, 7, 6)], t(2, 3, 2)),
    ("maxpool-symbolic-channels", "maxpool", dict(kernel=2), [t("C", 4, 4)], t("C", 2, 2)),
    ("avgpool-floor-mode", "avgpool", dict(kernel=2), [t(4, 5, 5)], t(4, 2, 2)),
    ("avgpool-rect-stride1", "avgpool", dict(kernel=(2, 3), stride=1), [t(1, 4, 4)], t(1, 3, 2)),
    ("avgpool-global", "avgpool", dict(kernel="global"), [t(512, 7, 7)], t(512)),
    ("global-avgpool", "global_avgpool", {}, [t(8, 3, 3)], t(8)),
    ("maxpool-ceil-mode", "maxpool", dict(kernel=3, stride=2, ceil=True), [t(2, 7, 6)], t(2, 3, 3)),
    ("maxpool-ceil-squeezenet", "maxpool", dict(kernel=3, stride=2, ceil=True), [t(96, 109, 109)], t(96, 54, 54)),
    ("maxpool-ceil-squeezenet-2", "maxpool", dict(kernel=3, stride=2, ceil=True), [t(256, 54, 54)], t(256, 27, 27)),
    # ceil mode would add a window starting at 6 = height 5 + pad 1: padding only, so torch drops it
    ("maxpool-ceil-last-window-in-padding", "maxpool", dict(kernel=2, stride=2, pad=1, ceil=True), [t(1, 5, 5)],
     t(1, 3, 3)),
    ("maxpool-ceil-overhanging-kernel", "maxpool", dict(kernel=2, stride=2, ceil=True), [t(1, 1, 3)], t(1, 1, 2)),
    ("avgpool-ceil-mode", "avgpool", dict(kernel=3, stride=2, pad=1, ceil=True), [t(2, 6, 5)], t(2, 4, 3)),
    ("maxunpool", "maxunpool", dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), ceil=False), [t(3, 4, 4), t(3, 8, 8)],
     t(3, 8, 8)),
    ("maxunpool-odd-source", "maxunpool", dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), ceil=False),
     [t(3, 4, 4), t(3, 9, 9)], t(3, 9, 9)),
    ("maxunpool-ceil", "maxunpool", dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), ceil=True),
     [t(3, 5, 5), t(3, 9, 9)], t(3, 9, 9)),
    ("unpool", "unpool", dict(scale=2), [t(3, 4, 5)], t(3, 8, 10)),
    ("unpool-rect", "unpool", dict(scale=(2, 3)), [t(1, 2, 2)], t(1, 4, 6)),
    ("upsample-bilinear", "upsample", dict(scale=2, mode="bilinear"), [t(3, 4, 4)], t(3, 8, 8)),
    ("dense-2d", "dense", dict(units=5), [t(10)], t(5)),
    ("dense-flattens-4d", "dense", dict(units=7), [t(3, 4, 4)], t(7)),
    ("dense-flattens-5d", "dense", dict(units=3), [t(2, 2, 2, 2)], t(3)),
    ("dense-per-step-symbolic", "dense", dict(units=8), [t("T", 16)], t("T", 8)),
    ("dense-per-step", "dense", dict(units=8, bias=False), [t(6, 16)], t(6, 8)),
    ("batchnorm-2d", "batchnorm", {}, [t(4)], t(4)),
    ("batchnorm-3d", "batchnorm", {}, [t(4, 10)], t(4, 10)),
    ("batchnorm-4d", "batchnorm", dict(eps=1e-3, momentum=0.01), [t(4, 5, 5)], t(4, 5, 5)),
    ("lrn", "lrn", dict(size=3, k=2.0), [t(8, 5, 5)], t(8, 5, 5)),
    ("dropout", "dropout", dict(p=0.3), [t("T", 16)], t("T", 16)),
    ("dropout-p0", "dropout", dict(p=0.0), [t(4)], t(4)),
    ("relu", "relu", {}, [t("T", 5)], t("T", 5)),
    ("sigmoid", "sigmoid", {}, [t(3)], t(3)),
    ("tanh", "tanh", {}, [t(2, 3, 4)], t(2, 3, 4)),
    ("leaky-relu", "leaky_relu", dict(slope=0.2), [t(3)], t(3)),
    ("elu", "elu", {}, [t(3, 2)], t(3, 2)),
    ("prelu-4d", "prelu", {}, [t(6, 4, 4)], t(6, 4, 4)),
    ("prelu-2d", "prelu", {}, [t(6)], t(6)),
    ("softmax", "softmax", {}, [t(10)], t(10)),
    ("softmax-last-axis", "softmax", dict(axis=-1), [t(3, 4)], t(3, 4)),
    ("maxout-4d", "maxout", dict(pieces=2), [t(6, 4, 4)], t(3, 4, 4)),
    ("maxout-2d", "maxout", dict(pieces=4), [t(8)], t(2)),
    ("identity-keeps-ints", "identity", {}, [ids()], ids()),
    ("flatten", "flatten", {}, [t(3, 4, 5)], t(60)),
    ("flatten-2d", "flatten", {}, [t(7)], t(7)),
    ("reshape", "reshape", dict(shape=(16, 5, 5)), [t(400)], t(16, 5, 5)),
    ("reshape-infers", "reshape", dict(shape=(-1, 5, 5)), [t(16, 5, 5)], t(16, 5, 5)),
    ("concat-channels", "concat", {}, [t(2, 4, 4), t(3, 4, 4), t(1, 4, 4)], t(6, 4, 4)),
    ("concat-last-symbolic", "concat", dict(axis=-1), [t("T", 3), t("T", 5)], t("T", 8)),
    ("concat-axis2", "concat", dict(axis=2), [t(2, 4, 4), t(2, 1, 4)], t(2, 5, 4)),
    ("add-three", "add", {}, [t(4, 2, 2)] * 3, t(4, 2, 2)),
    ("slice-yolo-classes", "slice", dict(axis=1, start=10), [t(30, 7, 7)], t(20, 7, 7)),
    ("slice-last-axis-negative", "slice", dict(axis=-1, start=-3), [t("T", 8)], t("T", 3)),
    ("slice-step-clamped", "slice", dict(axis=2, start=1, end=99, step=3), [t(2, 9)], t(2, 3)),
    ("transpose-sequence", "transpose", dict(axis0=1, axis1=2), [t("T", 16)], t(16, "T")),
    ("transpose-last-two", "transpose", dict(axis0=-1, axis1=-2), [t(3, 4, 5)], t(3, 5, 4)),
    ("permute-nchw-to-nhwc", "permute", dict(order=(2, 3, 1)), [t(3, 4, 5)], t(4, 5, 3)),
    ("permute-negative", "permute", dict(order=(-1, 1)), [t(3, 4)], t(4, 3)),
    ("stop-gradient", "stop_gradient", {}, [t(30, 7, 7)], t(30, 7, 7)),
    ("detach", "detach", {}, [t("T", 4)], t("T", 4)),
    ("exp", "exp", {}, [t(3, 4)], t(3, 4)),
    ("log", "log", {}, [t(5)], t(5)),
    ("sqrt", "sqrt", {}, [t("T", 5)], t("T", 5)),
    ("square", "square", {}, [t(2, 3, 3)], t(2, 3, 3)),
    ("abs", "abs", {}, [t(7)], t(7)),
    ("scale", "scale", dict(factor=0.5), [t(4)], t(4)),
    ("shift", "shift", dict(offset=-1.0), [t(4)], t(4)),
    ("clamp-max-only", "clamp", dict(max=1.0), [t(4, 2)], t(4, 2)),
    ("relu6", "relu6", {}, [t(8, 4, 4)], t(8, 4, 4)),
    ("mul-per-channel", "mul", {}, [t(8, 4, 4), t(8, 1, 1)], t(8, 4, 4)),
    ("sub-both-broadcast", "sub", {}, [t(1, 4, 5), t(3, 1, 5)], t(3, 4, 5)),
    ("div-symbolic", "div", {}, [t("T", 6), t("T", 1)], t("T", 6)),
    ("mean-of-three", "mean", {}, [t(3, 4)] * 3, t(3, 4)),
    ("reduce-sum-keepdims", "reduce_sum", dict(axes=(2, 3), keepdims=True), [t(8, 4, 4)], t(8, 1, 1)),
    ("reduce-mean-negative-axis", "reduce_mean", dict(axes=(-1,)), [t(8, 4, 5)], t(8, 4)),
    ("embed", "embed", dict(vocab=65, dim=64), [ids("T")], t("T", 64)),
    ("lstm-sequence", "lstm", dict(hidden=20), [t("T", 10)], t("T", 20)),
    ("lstm-last", "lstm", dict(hidden=20, layers=2, sequence=False), [t("T", 10)], t(20)),
    ("gru", "gru", dict(hidden=8, layers=3), [t(5, 4)], t(5, 8)),
    ("rnn-last", "rnn", dict(hidden=8, sequence=False), [t(5, 4)], t(8)),
    ("cross-entropy", "cross_entropy", {}, [t(10), ids()], SCALAR),
    ("cross-entropy-per-pixel", "cross_entropy", {}, [t(21, 8, 8), ids(8, 8)], SCALAR),
    ("cross-entropy-sequence", "cross_entropy", {}, [t("T", 65), ids("T")], SCALAR),
    ("hinge", "hinge", dict(margin=0.5), [t(10), ids()], SCALAR),
    ("mse", "mse", {}, [t(3), t(3)], SCALAR),
    ("bce", "bce", {}, [t(1, 4, 4), t(1, 4, 4)], SCALAR),
    ("mse-weighted", "mse", {}, [t(3), t(3), t(3)], SCALAR),
    ("smooth_l1", "smooth_l1", {}, [t(2, 5), t(2, 5)], SCALAR),
    ("kl_gaussian", "kl_gaussian", {}, [t(16), t(16)], SCALAR),
    ("sample", "sample", {}, [t(16), t(16)], t(16)),
    ("gaussian_like", "gaussian_like", {}, [t(3, 4, 4)], t(3, 4, 4)),
    ("loss-sum", "loss_sum", dict(weights=(1.0, 0.3, 0.3)), [SCALAR] * 3, SCALAR),
    ("loss-sum-one", "loss_sum", {}, [SCALAR], SCALAR),
    ("drop-path", "drop_path", dict(p=0.2), [t(16, 8, 8)], t(16, 8, 8)),
    ("dropconnect-dense-flattened", "dropconnect_dense", dict(units=10, p=0.5), [t(3, 4, 4)], t(10)),
    ("roi-pool", "roi_pool", dict(output=7, scale=0.0625), [t(64, 14, 14), TensorType(("R", 5))],
     TensorType(("R", 64, 7, 7))),
    ("roi-align", "roi_align", dict(output=(2, 3), sampling_ratio=2, aligned=True), [t(8, 6, 6), TensorType(("R", 5))],
     TensorType(("R", 8, 2, 3))),
]


@pytest.mark.parametrize("op, given, ins, out", [pytest.param(*c[1:], id=c[0]) for c in SHAPE_CASES])
def test_shape_rule(op, given, ins, out):
    assert OPS[op].shape(canon(op, **given), ins) == out


WRITTEN_BACK = [
    # (id, op, attrs, inputs, attr, canonical value): what shape() resolves into the attrs
    ("pool-stride", "maxpool", dict(kernel=(3, 2)), [t(1, 6, 6)], "stride", (3, 2)),
    ("pool-stride-given", "avgpool", dict(kernel=3, stride=1), [t(1, 6, 6)], "stride", (1, 1)),
    ("softmax-negative-axis", "softmax", dict(axis=-1), [t(3, 4)], "axis", 2),
    ("concat-negative-axis", "concat", dict(axis=-3), [t(2, 4, 4), t(2, 4, 4)], "axis", 1),
    ("reshape-inferred", "reshape", dict(shape=(4, -1)), [t(2, 6)], "shape", (4, 3)),
    ("ce-classes-second", "cross_entropy", {}, [t(21, 8, 8), ids(8, 8)], "class_axis", 1),
    ("ce-classes-last", "cross_entropy", {}, [t("T", 65), ids("T")], "class_axis", 2),
    ("ce-2d", "cross_entropy", {}, [t(10), ids()], "class_axis", 1),
    ("ce-ambiguous-prefers-1", "cross_entropy", {}, [t(5, 5), ids(5)], "class_axis", 1),
    ("conv-same-pad", "conv", dict(channels=4, kernel=(3, 5), pad="same"), [t(2, 6, 6)], "pad", (1, 2)),
    ("loss-sum-default-weights", "loss_sum", {}, [SCALAR] * 2, "weights", (1.0, 1.0)),
    ("loss-sum-float-weights", "loss_sum", dict(weights=(1, 0.5)), [SCALAR] * 2, "weights", (1.0, 0.5)),
]


@pytest.mark.parametrize("op, given, ins, attr, value", [pytest.param(*c[1:], id=c[0]) for c in WRITTEN_BACK])
def test_shape_writes_canonical_attrs(op, given, ins, attr, value):
    a = canon(op, **given)
    OPS[op].shape(a, ins)
    assert a[attr] == value
    assert type(a[attr]) is type(value)


# ---- variants and links ---------------------------------------------------------------------

def test_avgpool_global_is_global_avgpool():
    assert OPS["avgpool"].variant(canon("avgpool", kernel="global")) == ("global_avgpool", {})


def test_ops_are_their_own_variant():
    a = canon("avgpool", kernel=2)
    assert OPS["avgpool"].variant(a) == ("avgpool", a)
    a = canon("relu")
    assert OPS["relu"].variant(a) == ("relu", a)


@pytest.mark.parametrize("attr, value", [("stride", 2), ("pad", 1), ("ceil", True)])
def test_avgpool_global_refuses_window_attrs(attr, value):
    with pytest.raises(ShapeError, match=f"takes no {attr}") as e:
        OPS["avgpool"].variant(canon("avgpool", kernel="global", **{attr: value}))
    assert e.value.arg == attr


def _graph_with_pool(**pool_attrs):
    g = nx.DiGraph()
    add_node(g, Node("image", "input", {}, (), t(3, 8, 8), {}, 0, None, ()))
    add_node(g, Node("p1", "maxpool", canon("maxpool", **pool_attrs), ("image",), t(3, 4, 4), {}, 0, None, ()))
    add_node(g, Node("c1", "conv", canon("conv", channels=3, kernel=3, pad=1), ("p1",), t(3, 4, 4), {}, 0, None, ()))
    return g


def test_maxunpool_link_reads_the_pools_window_and_input():
    a, inputs = OPS["maxunpool"].link({}, ["c1", "p1"], _graph_with_pool(kernel=2))
    assert a == {"kernel": (2, 2), "stride": (2, 2), "pad": (0, 0), "ceil": False}
    assert inputs == ["c1", "image"]
    a, _ = OPS["maxunpool"].link({}, ["c1", "p1"], _graph_with_pool(kernel=3, stride=2, pad=1, ceil=True))
    assert a == {"kernel": (3, 3), "stride": (2, 2), "pad": (1, 1), "ceil": True}


def test_maxunpool_link_refuses_other_ops():
    with pytest.raises(ShapeError, match="maxunpool needs the output of a maxpool") as e:
        OPS["maxunpool"].link({}, ["p1", "c1"], _graph_with_pool(kernel=2))
    assert "`conv`" in e.value.found


def test_maxunpool_link_needs_the_pool():
    with pytest.raises(ShapeError, match="needs the max-pool it undoes") as e:
        OPS["maxunpool"].link({}, ["c1"], _graph_with_pool(kernel=2))
    assert "maxunpool(p1)" in e.value.help


def test_default_link_changes_nothing():
    a = canon("relu")
    assert OPS["relu"].link(a, ["c1"], _graph_with_pool(kernel=2)) == (a, ["c1"])


# ---- parameters against torch ---------------------------------------------------------------

PARAM_CASES = [
    # (id, op, attrs, inputs, the torch module holding the same parameters and buffers)
    ("conv", "conv", dict(channels=8, kernel=3), [t(3, 9, 9)], lambda: nn.Conv2d(3, 8, 3)),
    ("conv-groups-nobias", "conv", dict(channels=6, kernel=(3, 1), groups=2, bias=False), [t(4, 9, 9)],
     lambda: nn.Conv2d(4, 6, (3, 1), groups=2, bias=False)),
    ("deconv-groups", "deconv", dict(channels=6, kernel=3, stride=2, groups=2), [t(4, 5, 5)],
     lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)),
    ("dense-flattened", "dense", dict(units=10), [t(3, 4, 4)], lambda: nn.Linear(48, 10)),
    ("dense-per-step-nobias", "dense", dict(units=8, bias=False), [t("T", 16)],
     lambda: nn.Linear(16, 8, bias=False)),
    ("dropconnect-dense", "dropconnect_dense", dict(units=10, p=0.3), [t(3, 4, 4)], lambda: nn.Linear(48, 10)),
    ("batchnorm-4d", "batchnorm", {}, [t(5, 3, 3)], lambda: nn.BatchNorm2d(5)),
    ("batchnorm-2d", "batchnorm", {}, [t(5)], lambda: nn.BatchNorm1d(5)),
    ("prelu", "prelu", {}, [t(6, 4, 4)], lambda: nn.PReLU(num_parameters=6)),
    ("embed", "embed", dict(vocab=65, dim=16), [ids("T")], lambda: nn.Embedding(65, 16)),
    ("lstm-2-layers", "lstm", dict(hidden=20, layers=2), [t("T", 10)],
     lambda: nn.LSTM(10, 20, num_layers=2, batch_first=True)),
    ("gru", "gru", dict(hidden=20), [t(7, 10)], lambda: nn.GRU(10, 20, batch_first=True)),
    ("rnn-3-layers", "rnn", dict(hidden=3, layers=3, sequence=False), [t(7, 7)],
     lambda: nn.RNN(7, 3, num_layers=3, batch_first=True)),
]


def _torch_tensors(module):
    """name -> shape of a module's parameters and buffers, as state_dict names them."""
    return {name: tuple(v.shape) for name, v in module.state_dict().items() if name != "num_batches_tracked"}


@pytest.mark.parametrize("op, given, ins, module", [pytest.param(*c[1:], id=c[0]) for c in PARAM_CASES])
def test_params_match_torch(op, given, ins, module):
    a = canon(op, **given)
    OPS[op].shape(a, ins)
    params = OPS[op].params(a, ins)
    torch_module = module()
    assert {name: p.shape for name, p in params.items()} == _torch_tensors(torch_module)
    assert list(params) == list(_torch_tensors(torch_module))   # the same order as torch's state_dict
    trainable = sum(p.size for p in params.values() if p.trainable)
    assert trainable == sum(p.numel() for p in torch_module.parameters())


@pytest.mark.parametrize("op, given, ins, module", [pytest.param(*c[1:], id=c[0]) for c in PARAM_CASES])
def test_param_initialisation(op, given, ins, module):
    a = canon(op, **given)
    OPS[op].shape(a, ins)
    for name, p in OPS[op].params(a, ins).items():
        if op in ("rnn", "lstm", "gru"):   # torch: every weight and bias U(-1/sqrt(H), 1/sqrt(H))
            assert (p.init, p.fan_in) == ("uniform_fan_in", a["hidden"]), name
        elif op == "batchnorm":
            assert (p.init, p.trainable) == {"weight": ("ones", True), "bias": ("zeros", True),
                                             "running_mean": ("zeros", False),
                                             "running_var": ("ones", False)}[name]
        elif op == "prelu":
            assert p.init == "const:0.25"
        elif op == "embed":
            assert p.init == "normal:1.0"
        elif name == "bias":
            assert p.init == "zeros"
        else:   # weights scaled by fan, counted as torch counts: shape[1] x receptive field
            assert p.init in ("he", "xavier"), name
            assert p.fan_in == p.shape[1] * math.prod(p.shape[2:]), name
            assert p.fan_out > 0, name


def test_ops_without_params():
    with_params = {"conv", "deconv", "dense", "batchnorm", "prelu", "embed", "rnn", "lstm", "gru", "dropconnect_dense"}
    for op, given, ins, _ in [c[1:] for c in SHAPE_CASES]:
        a = canon(op, **given)
        OPS[op].shape(a, ins)
        assert bool(OPS[op].params(a, ins)) == (op in with_params), op


# ---- MACs -----------------------------------------------------------------------------------

MAC_CASES = [
    # (id, op, attrs, inputs, MACs per sample)
    ("conv-resnet-stem", "conv", dict(channels=64, kernel=7, stride=2, pad=3), [t(3, 224, 224)],
     112 * 112 * 64 * 3 * 49),
    ("conv-depthwise", "conv", dict(channels=32, kernel=3, pad=1, groups=32), [t(32, 8, 8)], 32 * 8 * 8 * 9),
    ("deconv", "deconv", dict(channels=2, kernel=2, stride=2), [t(3, 4, 4)], 3 * 4 * 4 * 2 * 2 * 2),
    ("dense-resnet-head", "dense", dict(units=1000), [t(512)], 512_000),
    ("dense-per-step", "dense", dict(units=8), [t(6, 16)], 6 * 16 * 8),
    ("dense-flattened", "dense", dict(units=10), [t(3, 4, 4)], 480),
    ("dense-symbolic-steps", "dense", dict(units=8), [t("T", 16)], None),
    ("lstm-2-layers", "lstm", dict(hidden=20, layers=2), [t(5, 10)], 5 * (80 * (10 + 20) + 80 * (20 + 20))),
    ("gru", "gru", dict(hidden=20, sequence=False), [t(5, 10)], 5 * 60 * (10 + 20)),
    ("rnn", "rnn", dict(hidden=4), [t(3, 2)], 3 * 4 * (2 + 4)),
    ("lstm-symbolic-steps", "lstm", dict(hidden=20), [t("T", 10)], None),
    ("maxpool", "maxpool", dict(kernel=2), [t(3, 8, 8)], 0),
    ("batchnorm", "batchnorm", {}, [t(4, 5, 5)], 0),
    ("embed", "embed", dict(vocab=10, dim=4), [ids(5)], 0),
    ("softmax", "softmax", {}, [t(10)], 0),
    ("cross-entropy", "cross_entropy", {}, [t(10), ids()], 0),
]


@pytest.mark.parametrize("op, given, ins, macs", [pytest.param(*c[1:], id=c[0]) for c in MAC_CASES])
def test_macs(op, given, ins, macs):
    a = canon(op, **given)
    out = OPS[op].shape(a, ins)
    assert OPS[op].macs(a, ins, out) == macs


@pytest.mark.parametrize("op, given, ins", [
    ("dense", dict(units=5), [t(7, 3)]),
    ("dense", dict(units=5), [t(2, 3, 3)]),
    ("lstm", dict(hidden=6, layers=3), [t(4, 5)]),
    ("gru", dict(hidden=3, layers=2), [t(2, 9)]),
])
def test_matmul_macs_are_steps_times_weight_elements(op, given, ins):
    """Each weight element multiplies once per vector: an independent check of the formulas."""
    a = canon(op, **given)
    out = OPS[op].shape(a, ins)
    weights = sum(p.size for name, p in OPS[op].params(a, ins).items() if name.startswith("weight"))
    steps = ins[0].shape[1] if ins[0].rank == 3 else 1
    assert OPS[op].macs(a, ins, out) == steps * weights


# ---- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("op, given, ins, grads", [
    ("cross_entropy", {}, [t(10), ids()], (0,)),
    ("hinge", {}, [t(10), ids()], (0,)),
    ("mse", {}, [t(3), t(3)], (0,)),
    ("bce", {}, [t(3), t(3)], (0,)),
    ("loss_sum", {}, [SCALAR] * 3, (0, 1, 2)),
    ("maxunpool", dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), ceil=False), [t(3, 4, 4), t(3, 8, 8)], (0,)),
    ("embed", dict(vocab=10, dim=4), [ids(5)], ()),
    ("concat", {}, [t(2), t(3)], (0, 1)),
    ("add", {}, [t(2)] * 2, (0, 1)),
])
def test_grad_inputs(op, given, ins, grads):
    assert OPS[op].grad_inputs(canon(op, **given), ins) == grads


# ---- diagnostics ----------------------------------------------------------------------------

ERROR_CASES = [
    # (id, op, attrs, inputs, a fragment of the message, the attr at fault or None)
    ("maxpool-rank", "maxpool", dict(kernel=2), [t(3, 8)], "expected a 4-d input [N, C, H, W], found 3-d", None),
    ("maxpool-int", "maxpool", dict(kernel=2), [ids(3, 8, 8)], "expected a float input", None),
    ("maxpool-too-big", "maxpool", dict(kernel=5), [t(3, 4, 4)], "kernel larger than the padded input", "kernel"),
    ("maxpool-pad", "maxpool", dict(kernel=3, pad=2), [t(3, 8, 8)], "between 0 and half the kernel", "pad"),
    ("maxpool-kernel-0", "maxpool", dict(kernel=0), [t(3, 8, 8)], "`kernel` must be at least 1", "kernel"),
    ("maxpool-stride-0", "maxpool", dict(kernel=2, stride=(1, 0)), [t(3, 8, 8)], "`stride` must be at least 1",
     "stride"),
    ("maxpool-global", "maxpool", dict(kernel="global"), [t(3, 8, 8)], "there is no global max pool", "kernel"),
    ("avgpool-symbolic", "avgpool", dict(kernel=2), [t(3, "H", 8)], "height must have a fixed size", None),
    ("avgpool-global-stride", "avgpool", dict(kernel="global", stride=2), [t(3, 8, 8)], "takes no stride",
     "stride"),
    ("global-avgpool-rank", "global_avgpool", {}, [t(8)], "expected a 4-d input", None),
    ("unpool-scale-0", "unpool", dict(scale=(2, 0)), [t(3, 4, 4)], "`scale` must be at least 1", "scale"),
    ("upsample-symbolic", "upsample", dict(scale=2), [t(3, "H", 4)], "must have a fixed size", None),
    ("maxpool-ceil-too-big", "maxpool", dict(kernel=3, stride=2, ceil=True), [t(3, 1, 4)],
     "height 1 + 2x0 padding + 1 overhang (ceil mode, stride 2) < kernel 3", "kernel"),
    ("maxunpool-size", "maxunpool", dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), ceil=False),
     [t(3, 5, 5), t(3, 8, 8)], "does not match its max-pool's output [N, 3, 4, 4]", None),
    ("maxunpool-ceil-size", "maxunpool", dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), ceil=True),
     [t(3, 4, 4), t(3, 9, 9)], "does not match its max-pool's output [N, 3, 5, 5]", None),
    ("maxunpool-channels", "maxunpool", dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0), ceil=False),
     [t(6, 4, 4), t(3, 8, 8)], "maxunpool's input [N, 6, 4, 4] does not match", None),
    ("dense-no-features", "dense", dict(units=3), [t()], "dense needs features after the batch", None),
    ("dense-units-0", "dense", dict(units=0), [t(4)], "`units` must be at least 1", "units"),
    ("dense-symbolic", "dense", dict(units=3), [t(3, "H", 4)], "dense's input dimension 2 must have a fixed size",
     None),
    ("dense-symbolic-features", "dense", dict(units=3), [t(4, "F")], "must have a fixed size", None),
    ("dense-int", "dense", dict(units=3), [ids(4)], "expected a float input", None),
    ("batchnorm-rank", "batchnorm", {}, [t(2, 2, 2, 2)], "expected a 2-d or 3-d or 4-d input", None),
    ("batchnorm-sequence", "batchnorm", {}, [t("T", 16)], "here the symbolic `T`", None),
    ("batchnorm-eps", "batchnorm", dict(eps=0.0), [t(4)], "eps must be positive", "eps"),
    ("batchnorm-momentum", "batchnorm", dict(momentum=1.5), [t(4)], "momentum must be between 0 and 1",
     "momentum"),
    ("lrn-rank", "lrn", {}, [t(8)], "expected a 4-d input", None),
    ("lrn-size", "lrn", dict(size=0), [t(8, 2, 2)], "`size` must be at least 1", "size"),
    ("lrn-k", "lrn", dict(k=0.0), [t(8, 2, 2)], "k must be positive", "k"),
    ("dropout-1", "dropout", dict(p=1.0), [t(4)], "must be in [0, 1), found 1.0", "p"),
    ("dropout-negative", "dropout", dict(p=-0.1), [t(4)], "must be in [0, 1)", "p"),
    ("relu-int", "relu", {}, [ids(4)], "expected a float input, found integers", None),
    ("prelu-no-channels", "prelu", {}, [t()], "prelu works per channel of axis 1", None),
    ("prelu-sequence", "prelu", {}, [t("T", 5)], "prelu works per channel", None),
    ("softmax-batch-axis", "softmax", dict(axis=0), [t(10)], "softmax axis 0 is out of range for [N, 10]", "axis"),
    ("softmax-axis-too-big", "softmax", dict(axis=3), [t(4, 4)], "axis 3 is out of range", "axis"),
    ("softmax-negative-reaches-batch", "softmax", dict(axis=-3), [t(4, 4)], "axis -3 is out of range", "axis"),
    ("softmax-no-axis", "softmax", {}, [t()], "softmax needs an axis after the batch, found [N]", "axis"),
    ("maxout-divides", "maxout", dict(pieces=4), [t(6, 2, 2)], "maxout's 4 pieces do not divide the 6 channels",
     "pieces"),
    ("maxout-0", "maxout", dict(pieces=0), [t(6)], "`pieces` must be at least 1", "pieces"),
    ("flatten-rank", "flatten", {}, [t()], "flatten needs a dimension after the batch", None),
    ("flatten-symbolic", "flatten", {}, [t("T", 4)], "dimension 1 must have a fixed size", None),
    ("reshape-count", "reshape", dict(shape=(3, 3)), [t(10)], "reshape(3, 3) holds 9 elements per sample, the input 10",
     "shape"),
    ("reshape-infer", "reshape", dict(shape=(-1, 3)), [t(10)], "cannot infer the -1", "shape"),
    ("reshape-two-inferred", "reshape", dict(shape=(-1, -1)), [t(10)], "at most one -1", "shape"),
    ("reshape-zero", "reshape", dict(shape=(0, 5)), [t(10)], "must be positive", "shape"),
    ("reshape-symbolic", "reshape", dict(shape=(4,)), [t("T", 4)], "needs a fixed per-sample size", None),
    ("concat-rank", "concat", {}, [t(2, 4, 4), t(8)], "concat input 2 is 2-d but input 1 is 4-d", None),
    ("concat-dimension", "concat", {}, [t(2, 4, 4), t(3, 4, 4), t(3, 5, 4)],
     "concat input 3 differs from input 1 in dimension 2 (5 vs 4)", None),
    ("concat-axis", "concat", dict(axis=4), [t(2, 4, 4), t(2, 4, 4)], "concat axis 4 is out of range", "axis"),
    ("concat-symbolic-axis", "concat", {}, [t("T", 3), t("T", 3)], "axis 1 must have a fixed size", None),
    ("concat-int", "concat", {}, [t(3), ids(3)], "expected a float input 2", None),
    ("add-dimension", "add", {}, [t(4, 4, 4), t(4, 4, 4), t(8, 4, 4)],
     "add input 3 has shape [N, 8, 4, 4] but input 1 has [N, 4, 4, 4]: dimension 1 is 8 where 4 is expected",
     None),
    ("add-rank", "add", {}, [t(4, 2, 2), t(16)], "input 2 has shape [N, 16] but input 1 has [N, 4, 2, 2]: it is 2-d",
     None),
    ("embed-float", "embed", dict(vocab=10, dim=4), [t("T")], "embed takes integer ids", None),
    ("embed-rank", "embed", dict(vocab=10, dim=4), [ids(3, 4)], "expected a 2-d id sequence [N, T], found 3-d",
     None),
    ("embed-vocab", "embed", dict(vocab=0, dim=4), [ids(3)], "`vocab` must be at least 1", "vocab"),
    ("lstm-rank", "lstm", dict(hidden=4), [t(10)], "expected a 3-d sequence [N, T, F], found 2-d", None),
    ("lstm-ids", "lstm", dict(hidden=4), [ids("T")], "expected a float input, found integers", None),
    ("lstm-features", "lstm", dict(hidden=4), [t(5, "F")], "lstm's input features", None),
    ("gru-hidden", "gru", dict(hidden=0), [t(5, 3)], "`hidden` must be at least 1", "hidden"),
    ("rnn-layers", "rnn", dict(hidden=2, layers=0), [t(5, 3)], "`layers` must be at least 1", "layers"),
    ("ce-float-labels", "cross_entropy", {}, [t(10), t()], "labels must be integer class ids", None),
    ("ce-int-logits", "cross_entropy", {}, [ids(10), ids()], "expected a float logits tensor", None),
    ("ce-swapped", "cross_entropy", {}, [ids(), t(10)], "these look swapped", None),
    ("ce-labels-shape", "cross_entropy", {}, [t(10), ids(5)],
     "cross_entropy's labels int[N, 5] do not fit the logits [N, 10]", None),
    ("ce-no-class-axis", "cross_entropy", {}, [t(), ids()], "needs logits with a class axis", None),
    ("ce-one-class", "cross_entropy", {}, [t(1), ids()], "single class", None),
    ("ce-symbolic-classes", "cross_entropy", {}, [t("T"), ids()], "do not fit", None),
    ("ce-symbolic-class-axis", "cross_entropy", {}, [t("T", 65), ids(65)], "do not fit", None),
    ("hinge-labels", "hinge", {}, [t(10), ids(5)], "hinge takes one label per sample", None),
    ("hinge-rank", "hinge", {}, [t(10, 4), ids()], "expected a 2-d logits tensor [N, C]", None),
    ("hinge-swapped", "hinge", {}, [ids(), t(10)], "hinge takes the logits first", None),
    ("hinge-float-labels", "hinge", {}, [t(10), t()], "hinge's labels must be integer", None),
    ("mse-shape", "mse", {}, [t(3), t(4)], "dimension 1 is 4 where 3 is expected", None),
    ("mse-int-target", "mse", {}, [t(3), ids(3)], "mse's target must be a float tensor", None),
    ("bce-rank", "bce", {}, [t(1, 4, 4), t(16)], "it is 2-d where 4-d is expected", None),
    ("loss-sum-not-scalar", "loss_sum", {}, [SCALAR, t(10)], "loss_sum adds scalar losses, but input 2 is [N, 10]",
     None),
    ("loss-sum-weights", "loss_sum", dict(weights=(1.0, 0.3)), [SCALAR] * 3, "2 weights for 3 losses", "weights"),
    ("drop-path-p", "drop_path", dict(p=1.5), [t(8)], "drop_path probability must be in [0, 1], found 1.5", "p"),
    ("drop-path-int", "drop_path", dict(p=0.2), [ids(8)], "expected a float input", None),
    ("dropconnect-p", "dropconnect_dense", dict(units=4, p=-0.1), [t(8)],
     "dropconnect_dense probability must be in [0, 1], found -0.1", "p"),
    ("roi-batched-boxes", "roi_pool", dict(output=7), [t(8, 6, 6), t(5)], "but [N, 5] counts samples", None),
    ("roi-box-width", "roi_pool", dict(output=7), [t(8, 6, 6), TensorType(("R", 4))], "boxes must be [R, 5]", None),
    ("roi-maps-rank", "roi_align", dict(output=7), [t(8), TensorType(("R", 5))], "reads feature maps", None),
    ("roi-scale", "roi_pool", dict(output=7, scale=0.0), [t(8, 6, 6), TensorType(("R", 5))],
     "scale must be positive", "scale"),
    ("roi-sampling", "roi_align", dict(output=7, sampling_ratio=0), [t(8, 6, 6), TensorType(("R", 5))],
     "sampling_ratio must be positive or -1", "sampling_ratio"),
]


@pytest.mark.parametrize("op, given, ins, message, arg", [pytest.param(*c[1:], id=c[0]) for c in ERROR_CASES])
def test_shape_errors(op, given, ins, message, arg):
    with pytest.raises(ShapeError) as e:
        OPS[op].shape(canon(op, **given), ins)
    assert message in e.value.message
    assert e.value.arg == arg
    # Every refusal says more than "no": what was expected, how to fix it, or which attr is wrong.
    assert e.value.expected or e.value.help or e.value.arg


def test_cross_entropy_error_names_both_layouts():
    with pytest.raises(ShapeError) as e:
        OPS["cross_entropy"].shape({}, [t(4, 10), ids(5)])
    assert e.value.expected == "int[N, 10] (classes on axis 1) or int[N, 4] (classes last)"


@pytest.mark.parametrize("op", ["maxpool", "avgpool"])
@pytest.mark.parametrize("ceil", [False, True])
def test_pooled_sizes_match_torch(op, ceil):
    """Every small size, kernel, stride and padding: the same output size as torch, or an error where torch has one."""
    pool = getattr(F, "max_pool2d" if op == "maxpool" else "avg_pool2d")
    for size, kernel, stride, pad in itertools.product(range(1, 12), range(1, 6), range(1, 5), range(0, 3)):
        if 2 * pad > kernel:
            continue
        try:
            expected = pool(torch.zeros(1, 1, size, 2 * kernel), kernel, stride, pad, ceil_mode=ceil).shape[2]
        except RuntimeError:
            expected = None
        try:
            a = canon(op, kernel=kernel, stride=stride, pad=pad, ceil=ceil)
            found = OPS[op].shape(a, [t(1, size, 2 * kernel)]).shape[2]
        except ShapeError:
            found = None
        assert found == expected, f"{op}(kernel={kernel}, stride={stride}, pad={pad}, ceil={ceil}) of height {size}"


def test_maxpool_global_points_to_avgpool():
    with pytest.raises(ShapeError) as e:
        OPS["maxpool"].shape(canon("maxpool", kernel="global"), [t(3, 8, 8)])
    assert "avgpool(global)" in e.value.help


# ---- completeness ---------------------------------------------------------------------------

def _ops_in_ops_md():
    """Op names in the second column of docs/OPS.md's table."""
    names = set()
    for line in (REPO / "docs" / "OPS.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 2:
            names.update(re.findall(r"`([a-z_0-9]+)`", cells[1]))
    return names


def test_ops_md_table_parses():
    assert {"conv", "relu", "sigmoid", "tanh", "rnn", "lstm", "gru", "loss_sum"} <= _ops_in_ops_md()


def test_every_documented_op_is_registered_and_back():
    assert _ops_in_ops_md() == set(OPS)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_declaration(name):
    op = OPS[name]
    assert op.name == name
    assert op.doc, f"{name} has no doc string"
    assert op.family in FAMILIES
    assert type(op).__module__ == f"dslc.ops.{op.family}"
    assert op.is_loss == (op.family == "loss")
    assert op.min_inputs >= 1 and (op.max_inputs is None or op.max_inputs >= op.min_inputs)
    names = [attr.name for attr in op.attrs]
    assert len(names) == len(set(names)), f"{name} declares an attr twice"
    for attr in op.attrs:
        assert attr.kind in ATTR_KINDS, f"{name}.{attr.name}: unknown kind {attr.kind!r}"
        if attr.kind == "enum":
            assert attr.choices and attr.default in attr.choices


def test_every_family_has_a_file_and_ops():
    for family in FAMILIES:
        assert (REPO / "dslc" / "ops" / f"{family}.py").is_file()
        assert any(op.family == family for op in OPS.values()), family


def test_every_op_has_shape_cases():
    assert {c[1] for c in SHAPE_CASES} == set(OPS)
