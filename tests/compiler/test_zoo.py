"""The model zoo (models/*.net): every model compiles, and its parameter count is the published one.

Counts are trainable parameters (batchnorm running statistics are buffers, as in torch's
`parameters()`). The ImageNet counts are torchvision's, to the unit; GoogLeNet, NIN and the
character models, which torchvision does not publish in this form, are checked against an
independent computation (a torch.nn model built here, or arithmetic), never the compiler's
own output.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dslc.compiler import compile_file
from dslc.summary import totals

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"

# torchvision's published parameter counts (weights' meta "num_params"), and the CIFAR ones of
# the usual 32x32 variants (kuangliu/pytorch-cifar ResNet18 and VGG('VGG11')).
PUBLISHED = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "vgg16": 138_357_544,
    "alexnet": 61_100_840,
    "densenet121": 7_978_856,
    "squeezenet": 1_248_424,
    "mobilenet_v2": 3_504_872,
    "googlenet_bn": 6_624_904,           # torchvision's googlenet without its auxiliary heads
    "lenet5": 61_706,
    "resnet_cifar": 11_173_962,
    "vgg11_cifar": 9_231_114,
}
ALL_MODELS = sorted(p.stem for p in MODELS.glob("*.net"))


def trainable(model: str, **overrides) -> int:
    net, _ = compile_file(str(MODELS / f"{model}.net"), overrides)
    return totals(net)["trainable_parameters"]


def torch_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_zoo_holds_every_model_of_the_design():
    expected = {"lenet5", "alexnet", "vgg16", "nin", "googlenet", "resnet18", "resnet34", "resnet50",
                "densenet121", "squeezenet", "fcn", "charlstm", "chargru", "digits_cnn", "resnet_cifar",
                "vgg11_cifar"}
    assert expected <= set(ALL_MODELS)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_model_compiles_cleanly_and_cites_its_source(model):
    net, warnings = compile_file(str(MODELS / f"{model}.net"))
    assert warnings == []
    assert net.loss is not None and net.outputs
    first_line = (MODELS / f"{model}.net").read_text().splitlines()[0]
    assert first_line.startswith("# ") and " -- " in first_line, "a zoo file starts with `# Name -- source`"


@pytest.mark.parametrize("model, count", sorted(PUBLISHED.items()))
def test_parameter_count_matches_the_published_one(model, count):
    assert trainable(model) == count


def test_cli_json_reports_the_published_count():
    """The installed `dslc` script (pip install -e .), not just the Python API."""
    script = Path(sys.executable).parent / "dslc"
    assert script.exists(), "install the package into the venv: .venv/bin/pip install -e ."
    out = subprocess.run([str(script), "compile", str(MODELS / "resnet50.net"), "--format", "json"],
                         capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout)
    assert summary["network"] == "resnet50"
    assert summary["trainable_parameters"] == 25_557_032
    assert summary["flops"] == 2 * summary["macs"]


def test_cli_set_changes_the_class_count():
    script = Path(sys.executable).parent / "dslc"
    out = subprocess.run([str(script), "compile", str(MODELS / "resnet18.net"), "--format", "json",
                          "--set", "classes=10"], capture_output=True, text=True, check=True)
    # the fc layer shrinks from 512 x 1000 + 1000 to 512 x 10 + 10
    assert json.loads(out.stdout)["trainable_parameters"] == 11_689_512 - (513 * 1000 - 513 * 10)


def test_hierarchical_names_read_like_torchvision():
    resnet, _ = compile_file(str(MODELS / "resnet34.net"))
    names = set(resnet.graph.nodes)
    assert {"conv1", "bn1", "layer1.2.conv2", "layer2.0.downsample.0", "layer2.0.downsample.1", "layer2.3.bn2",
            "layer3.5.conv1", "layer4.2.conv2", "fc"} <= names
    vgg, _ = compile_file(str(MODELS / "vgg16.net"))
    assert vgg.node("features.28").op == "conv"
    assert vgg.node("features.30").op == "maxpool"
    assert vgg.node("classifier.6").op == "dense"
    dense, _ = compile_file(str(MODELS / "densenet121.net"))
    assert dense.node("features.denseblock3.23.conv2").type.shape == ("N", 32, 14, 14)
    assert dense.node("features.transition2.conv").type.shape == ("N", 256, 28, 28)


class _Inception(nn.Module):
    def __init__(self, c_in, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.branches = nn.ModuleList([
            nn.Conv2d(c_in, c1, 1),
            nn.Sequential(nn.Conv2d(c_in, c3r, 1), nn.Conv2d(c3r, c3, 3, padding=1)),
            nn.Sequential(nn.Conv2d(c_in, c5r, 1), nn.Conv2d(c5r, c5, 5, padding=2)),
            nn.Conv2d(c_in, pool_proj, 1),
        ])
        self.c_out = c1 + c3 + c5 + pool_proj


def _googlenet_paper(classes: int) -> nn.Module:
    """Szegedy et al. 2015, Table 1 and Section 5 (auxiliary heads), as plain torch layers."""
    table = [  # (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), Table 1
        (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64),
        (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128),
        (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
    ]
    layers = [nn.Conv2d(3, 64, 7), nn.Conv2d(64, 64, 1), nn.Conv2d(64, 192, 3)]
    c = 192
    for row in table:
        module = _Inception(c, *row)
        layers.append(module)
        c = module.c_out
    layers.append(nn.Linear(c, classes))
    auxiliary_inputs = (512, 528)          # outputs of inception 4a and 4d
    for c_aux in auxiliary_inputs:
        layers += [nn.Conv2d(c_aux, 128, 1), nn.Linear(128 * 4 * 4, 1024), nn.Linear(1024, classes)]
    return nn.ModuleList(layers)


@pytest.mark.parametrize("classes", [1000, 10])
def test_googlenet_count_matches_the_paper_built_in_torch(classes):
    assert trainable("googlenet", classes=classes) == torch_count(_googlenet_paper(classes))


def test_googlenet_loss_weighs_the_auxiliary_heads():
    net, _ = compile_file(str(MODELS / "googlenet.net"))
    total = net.node(net.loss)
    assert total.attrs["weights"] == (1.0, 0.3, 0.3)
    heads = [net.node(term).inputs[0] for term in total.inputs]
    assert heads == ["fc", "aux1.fc2", "aux2.fc2"]
    assert [net.tensor_name(o) for o in net.outputs] == ["logits"]


def test_googlenet_pools_round_up_to_the_papers_sizes():
    """Table 1's 56, 28, 14, 7, from 3x3/2 max-pools in ceil mode without padding (Caffe's and torchvision's)."""
    net, _ = compile_file(str(MODELS / "googlenet.net"))
    pools = [d.name for d in net.nodes() if d.op == "maxpool" and d.attrs["stride"] == (2, 2)]
    assert [net.node(p).type.shape[2:] for p in pools] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert all(net.node(p).attrs["ceil"] and net.node(p).attrs["pad"] == (0, 0) for p in pools)


class _Fire(nn.Module):
    def __init__(self, c_in, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(c_in, squeeze, 1), nn.ReLU())
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, expand1x1, 1), nn.ReLU())
        self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, expand3x3, 3, padding=1), nn.ReLU())

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


def _squeezenet1_0_features() -> nn.Sequential:
    """torchvision's squeezenet1_0 `features` (torchvision/models/squeezenet.py) as plain torch layers."""
    return nn.Sequential(
        nn.Conv2d(3, 96, 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, stride=2, ceil_mode=True),
        _Fire(96, 16, 64, 64), _Fire(128, 16, 64, 64), _Fire(128, 32, 128, 128),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        _Fire(256, 32, 128, 128), _Fire(256, 48, 192, 192), _Fire(384, 48, 192, 192), _Fire(384, 64, 256, 256),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        _Fire(512, 64, 256, 256))


def test_squeezenet_feature_maps_match_torchvision():
    """Every step of `features` has torchvision's output shape: 13x13 maps reach the classifier."""
    net, _ = compile_file(str(MODELS / "squeezenet.net"))
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        for i, layer in enumerate(_squeezenet1_0_features()):
            x = layer(x)
            node = f"features.{i}" if net.graph.has_node(f"features.{i}") else f"features.{i}.concat1"
            assert net.node(node).type.shape[1:] == tuple(x.shape[1:]), node
    assert tuple(x.shape[2:]) == (13, 13)


def test_nin_count_by_arithmetic():
    def mlpconv(c_in, c, k, c_out):   # k x k conv, then two 1x1 convs, all biased
        return (c_in * k * k + 1) * c + (c + 1) * c + (c + 1) * c_out
    expected = mlpconv(3, 96, 11, 96) + mlpconv(96, 256, 5, 256) + mlpconv(256, 384, 3, 384) \
        + mlpconv(384, 1024, 3, 1000)
    assert trainable("nin") == expected


@pytest.mark.parametrize("model, recurrent", [("charlstm", nn.LSTM), ("chargru", nn.GRU)])
def test_character_models_match_torch(model, recurrent):
    reference = nn.ModuleList([nn.Embedding(96, 64), recurrent(64, 256, num_layers=2), nn.Linear(256, 96)])
    assert trainable(model, T=100) == torch_count(reference)


@pytest.mark.parametrize("model", ["charlstm", "chargru"])
def test_summary_of_a_symbolic_length_model(model):
    """With T unbound the MAC count is unknown, but the summary must still be printed."""
    script = Path(sys.executable).parent / "dslc"
    out = subprocess.run([str(script), "compile", str(MODELS / f"{model}.net"), "--format", "json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["symbols"] == {"T": None}


@pytest.mark.parametrize("model", ["charlstm", "chargru"])
def test_character_models_keep_the_sequence_length_symbolic(model):
    net, _ = compile_file(str(MODELS / f"{model}.net"))
    assert net.symbols == {"T": None}
    assert net.node("decoder").type.shape == ("N", "T", 96)
    assert net.train["clip_grad_norm"] == 5
    fixed, _ = compile_file(str(MODELS / f"{model}.net"), {"T": 100})
    assert fixed.node("decoder").type.shape == ("N", 100, 96)
    assert totals(fixed)["macs"] > 100 * 256 * 96


@pytest.mark.parametrize("size", [64, 96])
def test_fcn_upsamples_back_to_the_input_size(size):
    net, _ = compile_file(str(MODELS / "fcn.net"), {"size": size})
    assert net.node("upscore").op == "deconv"
    assert net.node("upscore").type.shape == ("N", 21, size, size)
    assert net.node("mask").type.shape == ("N", size, size)
    assert net.node("mask").type.dtype == "int64"


def test_small_models_fit_their_datasets():
    digits, _ = compile_file(str(MODELS / "digits_cnn.net"))
    assert digits.node("image").type.shape == ("N", 1, 16, 16)
    assert trainable("digits_cnn") < 100_000
    cifar, _ = compile_file(str(MODELS / "resnet_cifar.net"))
    assert cifar.node("layer1.1.conv2").type.shape == ("N", 64, 32, 32)   # no stem max-pool
    assert cifar.node("layer4.1.conv2").type.shape == ("N", 512, 4, 4)
    assert cifar.train["augment"] == ("call", "augment", (), {"crop": 4, "flip": True})


def _fast_rcnn_head_torch(classes: int) -> nn.Module:
    """models/fast_rcnn_head.net's layers in torch (RoI pooling has no parameters)."""
    return nn.ModuleList([nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1),
                          nn.Linear(32 * 4 * 4, 128), nn.Linear(128, 128),
                          nn.Linear(128, classes), nn.Linear(128, 4)])


def _yolo_v1_tiny_torch(s: int, b: int, classes: int) -> nn.Module:
    """models/yolo_v1_tiny.net's layers in torch: six convs (4x4 maps of a 64x64 image whatever
    S is), then fc to S x S x (B*5 + C)."""
    return nn.ModuleList([nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3), nn.Conv2d(32, 64, 3),
                          nn.Conv2d(64, 128, 3), nn.Conv2d(128, 64, 1), nn.Conv2d(64, 128, 3),
                          nn.Linear(128 * 4 * 4, 256), nn.Linear(256, s * s * (b * 5 + classes))])


@pytest.mark.parametrize("classes", [5, 21])
def test_fast_rcnn_head_count_matches_torch(classes):
    assert trainable("fast_rcnn_head", classes=classes) == torch_count(_fast_rcnn_head_torch(classes))
    assert trainable("fast_rcnn_head") == 88_425
    net, _ = compile_file(str(MODELS / "fast_rcnn_head.net"))
    assert net.node("cls_score").type.shape == ("R", 5)     # one row per box, not per image
    assert net.node("bbox_pred").type.shape == ("R", 4)


@pytest.mark.parametrize("s, b, classes", [(4, 2, 3), (7, 2, 20)])
def test_yolo_v1_tiny_count_and_grid_match_torch(s, b, classes):
    assert trainable("yolo_v1_tiny", S=s, B=b, classes=classes) == torch_count(_yolo_v1_tiny_torch(s, b, classes))
    net, _ = compile_file(str(MODELS / "yolo_v1_tiny.net"), {"S": s, "B": b, "classes": classes})
    assert net.node("reshape1").type.shape == ("N", s, s, b * 5 + classes)
    assert [net.node(t).op for t in net.node("loss").inputs] == ["mse"] * 5
    assert trainable("yolo_v1_tiny") == 757_552


def _dcgan_torch(nz: int, ngf: int, ndf: int) -> nn.Module:
    """models/dcgan.net's generator and (once: it is shared) discriminator in torch."""
    gen = nn.Sequential(nn.ConvTranspose2d(nz, ngf * 2, 2, 2), nn.BatchNorm2d(ngf * 2), nn.ReLU(),
                        nn.ConvTranspose2d(ngf * 2, ngf, 2, 2), nn.BatchNorm2d(ngf), nn.ReLU(),
                        nn.ConvTranspose2d(ngf, 1, 2, 2), nn.Sigmoid())
    disc = nn.Sequential(nn.Conv2d(1, ndf, 3, 2, 1), nn.LeakyReLU(0.2),
                         nn.Conv2d(ndf, ndf * 2, 3, 2, 1), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.Linear(ndf * 2 * 2 * 2, 1))
    return nn.ModuleDict({"gen": gen, "disc": disc})


def test_dcgan_counts_the_shared_discriminator_once_and_matches_torch():
    assert trainable("dcgan") == torch_count(_dcgan_torch(16, 32, 32)) == 31_906
    net, _ = compile_file(str(MODELS / "dcgan.net"))
    assert net.node("gen.sigmoid1").type.shape == ("N", 1, 8, 8)
    assert [o.name for o in net.objectives] == ["d", "g"] and net.alternate == ("d", "g")


def test_conv_vae_counts_match_torch():
    enc = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1))
    heads = nn.Sequential(nn.Linear(128, 8), nn.Linear(128, 8))
    dec = nn.Sequential(nn.Linear(8, 128), nn.ConvTranspose2d(32, 16, 2, 2), nn.ConvTranspose2d(16, 1, 2, 2))
    assert trainable("conv_vae") == torch_count(nn.ModuleList([enc, heads, dec])) == 10_145
