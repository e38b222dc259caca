"""Weights in from PyTorch and out again: safetensors, .npz and .pt files, torchvision's names for the zoo.

torchvision is not installable beside torch+cpu here, so the reference networks below are written as
torchvision writes them: the same module tree and attribute names (conv1, bn1, layer1.0.downsample.0,
features.N, classifier.N, denseblockB.denselayerJ, ...), so their state_dicts carry torchvision's names.
They are built with random weights and randomised batchnorm statistics, nothing downloaded.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.model import Model
from dslc.runtime.torchvision_names import MAPS
from dslc.runtime.weights import read_weights, save_torch_safetensors

torch = pytest.importorskip("torch")
nn = torch.nn
safetensors_torch = pytest.importorskip("safetensors.torch")

MODELS = Path(__file__).resolve().parents[2] / "models"


# ---- torchvision's module trees --------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, c, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, c, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):
    def __init__(self, block, layers, classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), layers)):
            setattr(self, f"layer{i + 1}", self._layer(block, c, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, classes)

    def _layer(self, block, c, n, stride):
        down = None
        if stride != 1 or self.inplanes != c * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, c * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(c * block.expansion))
        layers = [block(self.inplanes, c, stride, down)]
        self.inplanes = c * block.expansion
        layers += [block(self.inplanes, c) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    def __init__(self, cfg, classes=1000):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNet(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Linear(4096, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class Fire(nn.Module):
    def __init__(self, cin, s, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, s, 1)
        self.squeeze_activation = nn.ReLU(True)
        self.expand1x1 = nn.Conv2d(s, e1, 1)
        self.expand1x1_activation = nn.ReLU(True)
        self.expand3x3 = nn.Conv2d(s, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):       # torchvision's squeezenet1_0
    def __init__(self, classes=1000):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)       # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, 2), nn.ReLU(True), pool(),
            Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), pool(),
            Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
            pool(), Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, classes, 1), nn.ReLU(True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def _conv_bn_relu6(cin, cout, k=3, stride=1, groups=1):      # torchvision's Conv2dNormActivation
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(True))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if t == 1 else [_conv_bn_relu6(cin, hidden, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        feats, cin = [_conv_bn_relu6(3, 32, stride=2)], 32
        for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                           (6, 160, 3, 2), (6, 320, 1, 1)]:
            for i in range(n):
                feats.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth=32, bn_size=4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))], 1)


class DenseNet121(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        f = nn.Sequential()
        f.add_module("conv0", nn.Conv2d(3, 64, 7, 2, 3, bias=False))
        f.add_module("norm0", nn.BatchNorm2d(64))
        f.add_module("relu0", nn.ReLU(True))
        f.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = 64
        for b, n in enumerate((6, 12, 24, 16)):
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"denselayer{j + 1}", DenseLayer(c + 32 * j))
            f.add_module(f"denseblock{b + 1}", block)
            c += 32 * n
            if b != 3:
                f.add_module(f"transition{b + 1}", nn.Sequential())
                t = f[-1]
                t.add_module("norm", nn.BatchNorm2d(c))
                t.add_module("relu", nn.ReLU(True))
                t.add_module("conv", nn.Conv2d(c, c // 2, 1, bias=False))
                t.add_module("pool", nn.AvgPool2d(2, 2))
                c //= 2
        f.add_module("norm5", nn.BatchNorm2d(c))
        self.features = f
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        return self.classifier(torch.relu(self.features(x)).mean((2, 3)))


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, kernel_size=1), BasicConv2d(c3r, c3, kernel_size=3, padding=1))
        # torchvision's 3x3 where the paper has 5x5
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, kernel_size=1), BasicConv2d(c5r, c5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):                   # aux_logits=False, transform_input=False
    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, classes)

    def forward(self, x):
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = getattr(self, f"inception{name}")(x)
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        return self.fc(self.dropout(x.mean((2, 3))))


REFERENCES = {
    "resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": lambda: ResNet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3]),
    "vgg16": lambda: VGG([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]),
    "alexnet": AlexNet,
    "squeezenet": SqueezeNet,
    "mobilenet_v2": MobileNetV2,
    "densenet121": DenseNet121,
    "googlenet_bn": GoogLeNet,
}


def reference(network: str, seed: int = 0):
    """A torchvision-shaped network in eval mode, random weights and batchnorm statistics."""
    torch.manual_seed(seed)
    m = REFERENCES[network]()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.num_batches_tracked.fill_(7)
    return m.eval()


def save_state_dict(module, path: Path) -> Path:
    sd = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    if path.suffix == ".safetensors":
        safetensors_torch.save_file(sd, str(path))
    elif path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})
    else:
        torch.save(sd, path)
    return path


def zoo(network: str) -> Model:
    return Model.from_file(MODELS / f"{network}.net")


def _params_equal(net: Model, module):
    sd = module.state_dict()
    name_map = MAPS[net.net.name]
    for k, v in net.params.items():
        np.testing.assert_array_equal(v, sd[name_map.to_torch(k)].numpy(), err_msg=k)


# ---- names and formats: no kernels compiled ---------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".pt"])
def test_resnet18_from_each_format(tmp_path, suffix):
    ref = reference("resnet18")
    path = save_state_dict(ref, tmp_path / f"resnet18{suffix}")
    net = zoo("resnet18")
    report = net.load_params(path)
    assert sorted(report.loaded) == sorted(net.specs) and not report.missing and not report.mismatched
    assert not report.unexpected
    assert report.name_map is MAPS["resnet18"]
    assert len(report.ignored) == 20 and all(k.endswith("num_batches_tracked") for k in report.ignored)
    text = str(report)
    assert f"loaded {len(net.specs)} tensors from {path}" in text and "torchvision resnet18" in text
    _params_equal(net, ref)


@pytest.mark.parametrize("network", ["squeezenet", "mobilenet_v2", "densenet121", "resnet34", "resnet50",
                                     "googlenet_bn"])
def test_renamed_networks_load_whole(tmp_path, network):
    ref = reference(network)
    path = save_state_dict(ref, tmp_path / f"{network}.safetensors")
    net = zoo(network)
    report = net.load_params(path)
    assert not report.missing and not report.mismatched and not report.unexpected, str(report)
    assert report.name_map is MAPS[network]
    assert f"torchvision {network}" in str(report)
    _params_equal(net, ref)


def test_a_state_dict_loads_directly_and_a_dslc_dict_is_not_renamed():
    ref = reference("squeezenet")
    net = zoo("squeezenet")
    report = net.load_params(ref.state_dict())          # tensors, torchvision's names
    assert not report.missing and report.name_map is MAPS["squeezenet"]
    again = zoo("squeezenet").load_params(net.params)    # the zoo's own names: no map needed
    assert not again.missing and again.name_map is None


def test_nested_state_dict_and_dataparallel_prefix(tmp_path):
    ref = reference("resnet18")
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    report = zoo("resnet18").load_params(path)
    assert not report.missing and not report.unexpected


def test_freeze_after_loading_torch_weights(tmp_path):
    path = save_state_dict(reference("resnet18"), tmp_path / "r.safetensors")
    net = zoo("resnet18")
    net.load_params(path)
    net.freeze("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    assert net.trainable_names() == ["fc.weight", "fc.bias"]


def test_export_round_trips_to_torch(tmp_path):
    ref = reference("mobilenet_v2", seed=1)
    net = zoo("mobilenet_v2")
    net.load_params(save_state_dict(ref, tmp_path / "in.safetensors"))
    count, name_map = save_torch_safetensors(net, tmp_path / "out.safetensors")
    assert name_map is MAPS["mobilenet_v2"] and count == len(ref.state_dict())
    back = safetensors_torch.load_file(str(tmp_path / "out.safetensors"))
    fresh = REFERENCES["mobilenet_v2"]()
    fresh.load_state_dict(back, strict=True)             # every torchvision name present, nothing else
    for k, v in ref.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0, msg=k)
    arrays, meta, kind = read_weights(tmp_path / "out.safetensors")
    assert kind == "safetensors" and set(arrays) == set(back)


# ---- hostile files -----------------------------------------------------------------------------
def test_truncated_safetensors_names_the_file(tmp_path):
    path = save_state_dict(reference("squeezenet"), tmp_path / "a.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(RuntimeUserError, match="a.safetensors") as e:
        zoo("squeezenet").load_params(path)
    assert "truncated" in e.value.hint
    path.write_bytes(b"\x05")
    with pytest.raises(RuntimeUserError, match="cannot be read as safetensors"):
        read_weights(path)


def test_corrupt_pt_and_npz(tmp_path):
    pt = tmp_path / "w.pt"
    pt.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(RuntimeUserError, match="w.pt"):
        read_weights(pt)
    npz = tmp_path / "w.npz"
    np.savez(npz, w=np.array([object()], dtype=object))
    with pytest.raises(RuntimeUserError, match="Python objects"):
        read_weights(npz)


def test_pickled_objects_in_a_pt_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "fn": Path("x")}, path)
    with pytest.raises(RuntimeUserError, match="not unpickle"):
        read_weights(path)


def test_pt_without_torch_says_how_to_convert(tmp_path, monkeypatch):
    path = save_state_dict(reference("squeezenet"), tmp_path / "squeezenet.pt")
    monkeypatch.setitem(sys.modules, "torch", None)       # `import torch` now raises ImportError
    with pytest.raises(RuntimeUserError, match="needs torch") as e:
        read_weights(path)
    assert "safetensors.torch.save_file(torch.load(" in e.value.hint and "squeezenet.safetensors" in e.value.hint


def test_wrong_shapes_are_reported(tmp_path):
    sd = {k: v for k, v in reference("resnet18").state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)   # a 10-class head
    path = tmp_path / "r.safetensors"
    safetensors_torch.save_file(sd, str(path))
    report = zoo("resnet18").load_params(path)
    assert [m[0] for m in report.mismatched] == ["fc.weight", "fc.bias"]
    assert "fc.weight (10, 512)->(1000, 512)" in str(report)
    with pytest.raises(RuntimeUserError, match="do not match"):
        zoo("resnet18").load_params(path, strict=True)


def test_missing_file(tmp_path):
    with pytest.raises(RuntimeUserError, match="does not exist"):
        read_weights(tmp_path / "nope.safetensors")


def test_cli_refuses_a_truncated_file(tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    code = main(["eval", str(MODELS / "digits_cnn.net"), "--weights", str(path), "--data", "synthetic"])
    err = capsys.readouterr().err
    assert code == 1 and "w.safetensors" in err and "help:" in err and "Traceback" not in err


# ---- logits equal torch's ----------------------------------------------------------------------
def _same_logits(network, tmp_path, suffix=".safetensors"):
    ref = reference(network, seed=3)
    net = zoo(network)
    report = net.load_params(save_state_dict(ref, tmp_path / f"{network}{suffix}"))
    assert not report.missing and not report.mismatched, str(report)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    got = net.forward(image=x)["logits"]
    with torch.no_grad():
        want = ref.double()(torch.from_numpy(x).double()).numpy()
    scale = np.abs(want).max()
    assert scale > 1e-3, scale                   # a test of something: the logits are not all ~0
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, scale), (np.abs(got - want).max(), scale)


@pytest.mark.slow
def test_resnet18_logits_equal_torch(tmp_path):
    _same_logits("resnet18", tmp_path)


@pytest.mark.slow
def test_alexnet_logits_equal_torch(tmp_path):
    _same_logits("alexnet", tmp_path, ".pt")


@pytest.mark.slow
@pytest.mark.parametrize("network", ["vgg16", "squeezenet", "mobilenet_v2", "resnet50", "densenet121"])
def test_more_zoo_logits_equal_torch(tmp_path, network):
    _same_logits(network, tmp_path, ".npz")


@pytest.mark.slow
def test_googlenet_bn_logits_equal_torchvisions_googlenet(tmp_path):
    _same_logits("googlenet_bn", tmp_path)


def test_googlenet_bn_count_is_torchvisions():
    assert sum(p.numel() for p in GoogLeNet().parameters()) == 6_624_904


@pytest.mark.slow
def test_cli_predict_with_safetensors_and_export_back(tmp_path, capsys):
    ref = reference("resnet18", seed=5)
    weights = save_state_dict(ref, tmp_path / "resnet18-torchvision.safetensors")
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = main(["predict", str(MODELS / "resnet18.net"), "--weights", str(weights), str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "out.npz")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "names: torchvision resnet18" in err and "loaded 102 tensors" in err
    with torch.no_grad():
        want = ref.double()(torch.from_numpy(x).double()).numpy()
    got = np.load(tmp_path / "out.npz")["logits"]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.slow
def test_cli_export_safetensors_converts_torch_weights_back(tmp_path, capsys):
    ref = reference("densenet121", seed=2)
    src = save_state_dict(ref, tmp_path / "in.pt")
    out = tmp_path / "out.safetensors"
    code = main(["export", str(MODELS / "densenet121.net"), "--weights", str(src), "--format", "safetensors",
                 "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "names: torchvision densenet121" in captured.err
    assert f"wrote {out}: {len(ref.state_dict())} tensors under torchvision densenet121's names" in captured.out
    fresh = REFERENCES["densenet121"]()
    fresh.load_state_dict(safetensors_torch.load_file(str(out)), strict=True)
    for k, v in ref.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_cli_run_starts_from_safetensors_with_freeze(tmp_path, capsys):
    start = zoo("digits_cnn")
    save_torch_safetensors(start, tmp_path / "start.safetensors")
    code = main(["run", str(MODELS / "digits_cnn.net"), "--data", "digits", "--epochs", "1", "--limit", "128",
                 "--weights", str(tmp_path / "start.safetensors"), "--freeze", "conv1", "--quiet",
                 "--checkpoint", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"loaded {len(start.specs)} tensors from {tmp_path / 'start.safetensors'}" in err
    trained, _, kind = read_weights(tmp_path / "ck" / "last.ckpt")
    assert kind == "checkpoint"
    np.testing.assert_array_equal(trained["conv1.weight"], start.params["conv1.weight"])     # frozen
    assert not np.array_equal(trained["fc2.weight"], start.params["fc2.weight"])             # trained
