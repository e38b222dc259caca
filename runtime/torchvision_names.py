"""torchvision's state_dict names for the zoo's ImageNet networks, as one table of rules.

The zoo's files name their layers like torchvision's models wherever the language lets them (resnet, vgg16
and alexnet match name for name). Where a zoo file names a module differently (a `concat` branch, a
block's inner layers, a 0-based repeat where torchvision counts from 1), a rule here maps the module
path; the parameter's leaf (weight, bias, running_mean, running_var) is never renamed. torch and dslc
store every tensor in the same layout (conv weights OIHW, dense weights (out, in), flatten in C, H, W
order), so names are the only difference.

A rule is (torchvision prefix, zoo prefix): templates over whole dotted segments, where `{i}` stands for
a number and `{j+1}` for a number one above the zoo's (torchvision's 1-based `denselayer` counts). Rules
are tried in order, the first that matches a name's leading segments wins, and the rest of the name is
kept; both directions use the same table. A name no rule matches is used as it is.
"""
from __future__ import annotations

import re


def _inception_rules(letter: str) -> list[tuple[str, str]]:
    """torchvision googlenet's inception{s}{letter}: its branches are BasicConv2d modules (branch1) or
    Sequentials counting them from 0 (branch4.0 is the max-pool); the zoo's are basic_conv blocks
    counted from 1."""
    m = f"inception{{s}}{letter}"
    return [(f"{m}.branch1", f"{m}.branch1.basic_conv1"),
            (f"{m}.branch4.1", f"{m}.branch4.basic_conv1"),
            (f"{m}.branch{{b}}.{{j}}", f"{m}.branch{{b}}.basic_conv{{j+1}}")]


# network -> rules. The maps with no rules are the networks whose zoo file uses torchvision's names.
# googlenet_bn.net is torchvision's googlenet (batchnorm, no auxiliary heads); googlenet.net, the paper's
# network (biased convolutions, LRN, no batchnorm), has no torchvision weights to load, so no map.
TORCHVISION_MAPS: dict[str, list[tuple[str, str]]] = {
    "resnet18": [],
    "resnet34": [],
    "resnet50": [],
    "vgg16": [],
    "alexnet": [],
    "densenet121": [
        ("features.denseblock{b}.denselayer{j+1}", "features.denseblock{b}.{j}"),
    ],
    "squeezenet": [
        ("features.{i}.expand1x1", "features.{i}.branch1.expand1x1"),
        ("features.{i}.expand3x3", "features.{i}.branch2.expand3x3"),
    ],
    "mobilenet_v2": [
        # features.1 has no expansion (t = 1): its depthwise conv is conv.0, its projection conv.1/conv.2.
        ("features.1.conv.0.0", "features.1.conv.depthwise.conv1"),
        ("features.1.conv.0.1", "features.1.conv.depthwise.batchnorm1"),
        ("features.1.conv.1", "features.1.conv.project"),
        ("features.1.conv.2", "features.1.conv.project_bn"),
        ("features.{i}.conv.0.0", "features.{i}.conv.expand.conv1"),
        ("features.{i}.conv.0.1", "features.{i}.conv.expand.batchnorm1"),
        ("features.{i}.conv.1.0", "features.{i}.conv.depthwise.conv1"),
        ("features.{i}.conv.1.1", "features.{i}.conv.depthwise.batchnorm1"),
        ("features.{i}.conv.2", "features.{i}.conv.project"),
        ("features.{i}.conv.3", "features.{i}.conv.project_bn"),
        # the first and last layers: Conv2dNormActivation's conv and batchnorm
        ("features.{i}.0", "features.{i}.conv1"),
        ("features.{i}.1", "features.{i}.batchnorm1"),
    ],
    "googlenet_bn": [rule for letter in "abcde" for rule in _inception_rules(letter)],
}

# torchvision's batchnorm counts its updates; dslc's momentum is fixed, so the count has no place.
TORCH_ONLY_LEAVES = ("num_batches_tracked",)

_PLACEHOLDER = re.compile(r"\{(\w+)([+-]\d+)?\}")


class _Template:
    """A dotted prefix with numeric placeholders: matches a name's leading segments, or is filled in."""

    def __init__(self, text: str):
        self.text = text
        parts, pos, self.slots = [], 0, []
        for m in _PLACEHOLDER.finditer(text):
            parts.append(re.escape(text[pos:m.start()]))
            parts.append(r"(\d+)")
            self.slots.append((m.group(1), int(m.group(2) or 0)))
            pos = m.end()
        parts.append(re.escape(text[pos:]))
        self.regex = re.compile("".join(parts) + r"(?=\.|$)")

    def match(self, name: str):
        """(values by placeholder, the rest of the name) or None."""
        m = self.regex.match(name)
        if m is None:
            return None
        values = {}
        for (slot, offset), group in zip(self.slots, m.groups()):
            v = int(group) - offset
            if v < 0 or values.setdefault(slot, v) != v:
                return None
        return values, name[m.end():]

    def fill(self, values: dict) -> str:
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)] + int(m.group(2) or 0)), self.text)


class NameMap:
    """One network's rules, both ways."""

    def __init__(self, network: str, rules):
        self.network = network
        self.rules = [(_Template(t), _Template(z)) for t, z in rules]

    @property
    def description(self) -> str:
        return f"torchvision {self.network}" + ("" if self.rules else " (the zoo file uses torchvision's names)")

    def to_zoo(self, name: str) -> str:
        return self._apply(name, 0)

    def to_torch(self, name: str) -> str:
        return self._apply(name, 1)

    def _apply(self, name: str, side: int) -> str:
        for pair in self.rules:
            hit = pair[side].match(name)
            if hit is not None:
                values, rest = hit
                return pair[1 - side].fill(values) + rest
        return name


MAPS = {network: NameMap(network, rules) for network, rules in TORCHVISION_MAPS.items()}
