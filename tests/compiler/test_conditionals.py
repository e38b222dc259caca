"""`if` / `else` in blocks and chains (docs/LANGUAGE.md, "Conditionals"), and MobileNetV2,
the zoo model written with them.

The branch taken is decided while compiling; the other is never elaborated. Misuse is checked
as the user reads it, in the golden style of test_diagnostics.py. MobileNetV2's counts are
checked against a torch.nn model built here as torchvision builds it (torchvision itself is
not a dependency), never against the compiler's own output.
"""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dslc.compiler import compile_file
from dslc.summary import totals
from tests.compiler.helpers import golden

REPO = Path(__file__).resolve().parents[2]




@pytest.fixture
def compiled(tmp_path):
    """Compiles a program text; returns the network's nodes by name (op kinds only)."""
    def run(program, **overrides):
        path = tmp_path / "prog.net"
        path.write_text(program)
        net, warnings = compile_file(str(path), overrides)
        return {n: net.node(n).op for n in net.graph}, net
    return run


IMAGE = "input image: [4, 8, 8]\n"


# ---- semantics ---------------------------------------------------------------------------------

OPTIONAL_RESIDUAL = IMAGE + """
block b(c, stride = 1) {
  if stride == 1 and channels(in) == c {
    residual { conv(c, 3x3, pad = 1) }
  } else {
    conv(c, 3x3, stride = stride, pad = 1)
  }
}
y = image -> first: b(4) -> second: b(8, stride = 2)
"""


def test_only_the_branch_taken_is_elaborated(compiled):
    nodes, _ = compiled(OPTIONAL_RESIDUAL)
    assert nodes["first.add1"] == "add"                 # 4 channels in, 4 out, stride 1: a residual
    assert not any(n.startswith("second.add") for n in nodes)
    assert nodes["second.conv1"] == "conv"


def test_the_branch_not_taken_may_hold_what_would_not_fit(compiled):
    # The residual's shapes could not agree for 4 -> 8 channels; it is never elaborated.
    nodes, net = compiled(IMAGE + """
block b(c) {
  if channels(in) != c { conv(c, 1x1) } else { residual { conv(c * 2, 1x1) } -> no_such_op }
}
y = image -> b(8)
""")
    assert net.node(net.outputs[0]).type.shape == ("N", 8, 8, 8)


def test_if_without_else_passes_the_input_through_when_false(compiled):
    program = IMAGE + """
network n(p = 0.5)
y = image -> conv(4, 1x1) -> if p > 0 { dropout(p) } -> relu
"""
    with_dropout, _ = compiled(program)
    without, _ = compiled(program, p=0)
    assert "dropout1" in with_dropout and "dropout1" not in without
    assert "relu1" in without


def test_else_if_chains_conditions(compiled):
    program = IMAGE + """
network n(kind = small)
y = image -> if kind == large { conv(16, 1x1) } else if kind == "medium" { conv(8, 1x1) } else { conv(2, 1x1) }
"""
    for kind, channels in (("large", 16), ("medium", 8), ("small", 2)):
        _, net = compiled(program, kind=kind)
        assert net.node(net.outputs[0]).type.shape[1] == channels, kind


def test_boolean_operators_and_comparisons(compiled):
    program = IMAGE + """
network n(a = 3, b = 4, flag = true)
y = image -> if not (a >= b) and (a == 2 or b != 5) and flag and a < b and b <= 4 and b > a { relu } else { tanh }
"""
    nodes, _ = compiled(program)
    assert "relu1" in nodes
    nodes, _ = compiled(program, flag=False)
    assert "tanh1" in nodes


def test_a_boolean_parameter_default_can_be_a_comparison(compiled):
    nodes, _ = compiled(IMAGE + """
block b(c, keep = c == 4) {
  if keep { residual { conv(c, 1x1) } } else { conv(c, 1x1) }
}
y = image -> b(4) -> b(6)
""")
    assert "b1.add1" in nodes and not any(n.startswith("b2.add") for n in nodes)


def test_unlabelled_if_opens_no_scope_and_a_labelled_one_does(compiled):
    nodes, _ = compiled(IMAGE + "y = image -> if true { conv(4, 1x1) } -> head: if true { relu }\n")
    assert set(nodes) >= {"conv1", "head.relu1"}


def test_tensors_named_in_a_branch_stay_in_it(dslc):
    rc, out, err = dslc(IMAGE + """
block b() {
  if true { t = in -> relu }
  -> add(t)
}
y = image -> b
""")
    assert rc == 1
    assert err.splitlines()[0] == "error: unknown tensor `t`"


# ---- diagnostics -------------------------------------------------------------------------------

def test_condition_that_is_no_boolean(dslc):
    rc, out, err = dslc(IMAGE + "block b(stride = 1) {\n  if stride { relu }\n}\ny = image -> b\n")
    assert rc == 1 and out == ""
    assert err == golden("""
        error: a condition needs `true` or `false`, found `1`
          --> prog.net:3:6
           |
         3 |   if stride { relu }
           |      ^^^^^^ in this condition
           = help: compare the value to make a condition, e.g. `stride == 1`

        1 error
        """)


def test_unknown_name_in_a_condition_suggests_the_parameter(dslc):
    rc, out, err = dslc(IMAGE + "block b(stride = 1) {\n  if strid == 1 { relu }\n}\ny = image -> b\n")
    assert rc == 1
    assert err == golden("""
        error: unknown name `strid` in a condition
          --> prog.net:3:6
           |
         3 |   if strid == 1 { relu }
           |      ^^^^^ not a parameter
           = help: did you mean `stride`?

        1 error
        """)


def test_unknown_name_without_a_close_parameter_lists_the_parameters(dslc):
    rc, out, err = dslc(IMAGE + "block b(c) {\n  if expansion > 1 { relu }\n}\ny = image -> b(4)\n")
    assert rc == 1
    assert "   = help: conditions read parameters (`c`) and sizes such as `channels(in)`" in err.splitlines()


def test_operand_of_and_that_is_no_boolean(dslc):
    rc, out, err = dslc(IMAGE + "block b(stride = 1) {\n  if stride == 1 and 3 { relu }\n}\ny = image -> b\n")
    assert err == golden("""
        error: `and` needs `true` or `false`, found `3`
          --> prog.net:3:22
           |
         3 |   if stride == 1 and 3 { relu }
           |                      ^ in this condition
           = help: compare the value to make a condition, e.g. `stride == 1`

        1 error
        """)


def test_ordering_a_word(dslc):
    rc, out, err = dslc("network n(mode = nearest)\n" + IMAGE + "y = image -> if mode < 2 { relu }\n")
    assert err == golden("""
        error: `<` needs numbers, found the name `nearest`
          --> prog.net:3:17
           |
         3 | y = image -> if mode < 2 { relu }
           |                 ^^^^ in this condition
           = help: `<`, `<=`, `>`, `>=` order numbers; `==` and `!=` compare any values

        1 error
        """)


def test_comparing_values_of_different_kinds(dslc):
    rc, out, err = dslc(IMAGE + "block b(stride = 1) {\n  if stride == true { relu }\n}\ny = image -> b\n")
    assert err == golden("""
        error: `==` compares values of one kind, found `1` and `true`
          --> prog.net:3:6
           |
         3 |   if stride == true { relu }
           |      ^^^^^^^^^^^^^^ in this condition
           = help: compare numbers with numbers, sizes with sizes, words with words

        1 error
        """)


def test_if_without_else_and_no_input(dslc):
    rc, out, err = dslc(IMAGE + "y = if false { image -> relu }\n")
    assert rc == 1
    assert err == golden("""
        error: `if` without `else` has no input to pass through
          --> prog.net:2:5
           |
         2 | y = if false { image -> relu }
           |     ^^^^^^^^^^^^^^^^^^^^^^^^^^ the condition is false here and nothing flows in
           = help: add `else { ... }`, or continue a chain into the `if`: `x -> if ... { ... }`

        1 error
        """)


def test_chained_comparison_is_a_syntax_error_with_the_fix(dslc):
    rc, out, err = dslc(IMAGE + "block b(s = 1) {\n  if 1 < s < 3 { relu }\n}\ny = image -> b\n")
    assert rc == 1
    assert err == golden("""
        error: expected `{`, found `<`
          --> prog.net:3:12
           |
         3 |   if 1 < s < 3 { relu }
           |            ^ unexpected here
           = help: comparisons do not chain: write `a < b and b < c`

        1 error
        """)


def test_a_mistake_in_the_branch_taken_is_reported_once_per_root_cause(dslc):
    rc, out, err = dslc(IMAGE + "block b(c) {\n  if c > 2 { conv(c, 3x3, strde = 2) }\n}\ny = image -> b(4) -> b(8)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: `conv` has no argument `strde`"
    assert lines[-1] == "1 error"


def test_shape_function_on_an_unknown_tensor_in_a_condition(dslc):
    rc, out, err = dslc(IMAGE + "block b(c) {\n  if channels(x) == c { relu }\n}\ny = image -> b(4)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: `channels(x)` needs a tensor name, found the name `x`"


# ---- MobileNetV2 -------------------------------------------------------------------------------

def _conv_bn_relu6(cin, cout, k=1, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


def torch_mobilenet_v2(classes=1000) -> nn.Module:
    """torchvision.models.mobilenet_v2 (width 1.0), layer for layer."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    layers, cin = [_conv_bn_relu6(3, 32, 3, 2)], 32
    for t, c, n, s in settings:
        for i in range(n):
            hidden = cin * t
            steps = [_conv_bn_relu6(cin, hidden)] if t != 1 else []
            steps += [_conv_bn_relu6(hidden, hidden, 3, s if i == 0 else 1, groups=hidden),
                      nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c)]
            layers.append(nn.Sequential(*steps))
            cin = c
    layers.append(_conv_bn_relu6(cin, 1280))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, classes))


def torch_macs(model: nn.Module, shape) -> int:
    """Multiply-accumulates of the convs and linear layers for one sample (torchinfo's count)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * k
        else:
            total += module.in_features * module.out_features
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def test_mobilenet_v2_matches_torchvision_parameters_and_macs():
    net, warnings = compile_file(str(REPO / "models" / "mobilenet_v2.net"))
    assert warnings == []
    reference = torch_mobilenet_v2()
    counts = totals(net)
    assert counts["trainable_parameters"] == sum(p.numel() for p in reference.parameters()) == 3_504_872
    assert counts["macs"] == torch_macs(reference, (3, 224, 224))


def test_mobilenet_v2_uses_the_conditionals():
    net, _ = compile_file(str(REPO / "models" / "mobilenet_v2.net"))
    ops = {n: net.node(n).op for n in net.graph}
    # features.1: expand ratio 1, no expansion conv; 32 -> 16 channels, no residual.
    assert not any(n.startswith("features.1.conv.expand") for n in ops)
    assert not any(n.startswith("features.1.add") for n in ops)
    # features.2 changes the shape (stride 2); features.3 keeps it and adds its input back.
    assert "features.2.add1" not in ops and ops["features.3.add1"] == "add"
    assert ops["features.3.conv.expand.conv1"] == "conv"
    depthwise = net.node("features.3.conv.depthwise.conv1")
    assert depthwise.attrs["groups"] == 144
    assert sum(op == "add" for op in ops.values()) == 10      # the residual blocks of Table 2
    # relu6 after the stem, every expansion and depthwise conv, and the last 1x1 conv; the
    # projections stay linear.
    assert sum(op == "relu6" for op in ops.values()) == 35 and "relu" not in ops.values()
