"""The benchmark networks in torch.nn, layer for layer the architectures of bench/models/*.net
and, for the ImageNet rows, of the zoo's models/resnet50.net and models/densenet121.net
(torchvision's resnet50 and densenet121, which cannot be installed beside torch+cpu here).

Each class mirrors its .net file (same layers, same order, same bias choices), so the two
have the same parameter count (tests/test_bench.py checks it). Initialisation is torch's
default: the timings do not depend on the values.
"""
from __future__ import annotations

import torch
from torch import nn


class LeNet5Relu(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block; the shortcut is a 1x1 conv + batchnorm where the shape changes (`shortcut auto`)."""

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet18Cifar(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, c_in = [], 64
        for c, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(c_in, c, stride), BasicBlock(c, c)]
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


class VGG11BnCifar(nn.Module):
    CONFIG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, classes: int = 10):
        super().__init__()
        layers, c_in = [], 3
        for v in self.CONFIG_A:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Inception(nn.Module):
    """Four branches joined on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1."""

    def __init__(self, c_in, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.branch1 = nn.Sequential(nn.Conv2d(c_in, c1, 1), nn.ReLU())
        self.branch2 = nn.Sequential(nn.Conv2d(c_in, c3r, 1), nn.ReLU(), nn.Conv2d(c3r, c3, 3, padding=1), nn.ReLU())
        self.branch3 = nn.Sequential(nn.Conv2d(c_in, c5r, 1), nn.ReLU(), nn.Conv2d(c5r, c5, 5, padding=2), nn.ReLU())
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c_in, pool_proj, 1), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetCifar(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 192, 3, padding=1), nn.ReLU())
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.fc = nn.Linear(480, classes)

    def forward(self, x):
        return self.fc(self.inception3b(self.inception3a(self.stem(x))).mean(dim=(2, 3)))


class Bottleneck(nn.Module):
    """DenseNet-B layer: BN-ReLU-conv1x1 (4 x growth) - BN-ReLU-conv3x3 (growth), concatenated onto the input."""

    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.layers(x)], 1)


class DenseNetCifar(nn.Module):
    def __init__(self, classes: int = 10, growth: int = 12, layers: int = 6):
        super().__init__()
        c = 2 * growth
        blocks = [nn.Conv2d(3, c, 3, padding=1, bias=False)]
        for _ in range(layers):
            blocks.append(Bottleneck(c, growth))
            c += growth
        blocks += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2),
                   nn.BatchNorm2d(c // 2), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(c // 2, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class LstmLM(nn.Module):
    def __init__(self, vocab: int = 65, embedding: int = 64, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, text):
        out, _ = self.lstm(self.embed(text))
        return self.decoder(out)          # [N, T, vocab]: a prediction per step


class BottleneckV15(nn.Module):
    """ResNet-50's bottleneck (v1.5: the stride on the 3x3 conv); a 1x1 conv + batchnorm shortcut where the
    shape changes."""

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = 4 * width
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, c_in = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(BottleneckV15(c_in, width, stride if i == 0 else 1))
                c_in = 4 * width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


class DenseNet121(nn.Module):
    """DenseNet-BC-121: growth 32, blocks of 6, 12, 24, 16 layers (Bottleneck above), halving transitions."""

    def __init__(self, classes: int = 1000, growth: int = 32):
        super().__init__()
        c = 64
        blocks = [nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        for i, layers in enumerate((6, 12, 24, 16)):
            for _ in range(layers):
                blocks.append(Bottleneck(c, growth))
                c += growth
            if i < 3:
                blocks += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        blocks += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


TORCH_MODELS = {
    "lenet5_relu": LeNet5Relu,
    "resnet18_cifar": ResNet18Cifar,
    "vgg11_bn_cifar": VGG11BnCifar,
    "googlenet_cifar": GoogLeNetCifar,
    "densenet_cifar": DenseNetCifar,
    "lstm_lm": LstmLM,
    "resnet50_224": ResNet50,
    "densenet121_224": DenseNet121,
}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
