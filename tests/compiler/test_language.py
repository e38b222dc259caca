"""The language front end: every construct of docs/LANGUAGE.md, and the diagnostics it promises.

Programs are written to tmp_path and compiled through the public front end
(dslc.compiler.compile_file); the CLI is run for `--set`.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dslc.compiler import compile_file
from dslc.diagnostics import CompileError
from dslc.summary import totals

HEADER = """\
network t(classes = 10)
input image: [3, 8, 8]
input label: int
"""


def with_header(body: str) -> str:
    """A program: the network `t` with inputs `image` and `label`, then `body`."""
    return HEADER + textwrap.dedent(body)


def write(tmp_path, text, name="t.net") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def build(tmp_path, text, overrides=None, name="t.net"):
    net, warnings = compile_file(str(write(tmp_path, text, name)), overrides)
    return net, warnings


def errors(tmp_path, text, overrides=None):
    with pytest.raises(CompileError) as info:
        build(tmp_path, text, overrides)
    return info.value.diagnostics


def shape(net, node):
    return net.node(node).type.shape


# ---- blocks, imports ------------------------------------------------------------------

def test_blocks_are_imported_from_another_file(tmp_path):
    (tmp_path / "lib").mkdir()
    write(tmp_path, """\
        block conv_bn(c, stride = 1) {
          conv: conv(c, 3x3, stride = stride, pad = 1, bias = false) -> bn: batchnorm -> relu
        }
        """, "lib/blocks.net")
    net, warnings = build(tmp_path, with_header("""\
        import "lib/blocks.net"
        logits = image -> stem: conv_bn(16) -> down: conv_bn(32, stride = 2) -> avgpool(global) -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert warnings == []
    assert shape(net, "down.conv") == ("N", 32, 4, 4)
    assert net.node("stem.bn").scope == (("stem", "conv_bn"),)


def test_imports_nest_relative_to_the_importing_file(tmp_path):
    (tmp_path / "lib").mkdir()
    write(tmp_path, 'block act() {\n  relu\n}\n', "lib/act.net")
    write(tmp_path, 'import "act.net"\nblock unit(c) {\n  conv(c, 1x1) -> act\n}\n', "lib/unit.net")
    net, _ = build(tmp_path, with_header("""\
        import "lib/unit.net"
        logits = image -> unit(4) -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert net.node("unit1.act1.relu1").op == "relu"


def test_a_missing_import_points_at_the_import_line(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        import "nowhere.net"
        logits = image -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert diag.message.startswith("cannot import `nowhere.net`")
    assert (diag.span.line, diag.span.col) == (4, 1)


def test_a_block_defined_in_two_files_is_reported(tmp_path):
    write(tmp_path, 'block unit() {\n  relu\n}\n', "other.net")
    (diag,) = errors(tmp_path, with_header("""\
        import "other.net"
        block unit() {
          tanh
        }
        logits = image -> unit -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert diag.message == "block `unit` is defined twice"


def test_block_bodies_see_network_parameters_but_not_their_callers(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        block head() {
          dense(classes)
        }
        logits = image -> head
        loss cross_entropy(logits, label)
        """))
    assert shape(net, "head1.dense1") == ("N", 10)
    (diag,) = errors(tmp_path, with_header("""\
        block outer(c) {
          inner
        }
        block inner() {
          conv(c, 1x1)
        }
        logits = image -> outer(4) -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert diag.message == "`conv` argument `channels` expects a whole number, found the name `c`"
    assert diag.span.line == 8


# ---- DAG-shaped blocks: `in` ---------------------------------------------------------------

def test_in_names_the_block_input_and_a_statement_naming_tensors_reads_only_those(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        block dense_layer(growth) {
          new = in -> batchnorm -> relu -> conv(growth, 3x3, pad = 1, bias = false)
          concat(in, new)
        }
        logits = image -> dense_layer(5) -> dense_layer(5) -> avgpool(global) -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert shape(net, "dense_layer1.concat1") == ("N", 3 + 5, 8, 8)
    assert shape(net, "dense_layer2.concat1") == ("N", 3 + 5 + 5, 8, 8)
    assert net.node("dense_layer1.concat1").inputs == ("image", "dense_layer1.conv1")


def test_two_branch_block_adds_with_add(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        block two_paths(c) {
          a = in -> conv(c, 1x1)
          b = in -> conv(c, 3x3, pad = 1)
          add(a, b) -> relu
        }
        logits = image -> two_paths(6) -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert net.node("two_paths1.add1").inputs == ("two_paths1.conv1", "two_paths1.conv2")


def test_in_outside_a_block_is_explained(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        logits = in -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert diag.message == "unknown tensor, op or block `in`"
    assert "exists only inside `block` bodies" in diag.help


# ---- naming ------------------------------------------------------------------------------

def test_labelled_groups_number_their_steps_like_a_sequential(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        block unit(c) {
          conv1: conv(c, 1x1) -> relu
        }
        logits = image
          -> features: (conv(4, 3x3, pad = 1) -> relu -> pool: maxpool(2x2) -> unit(4) * 2 -> unit(8))
          -> layer: unit(8) * 2
          -> flatten -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    names = set(net.graph.nodes)
    assert {"features.0", "features.1", "features.pool", "features.3.conv1", "features.4.conv1",
            "features.5.conv1", "layer.0.conv1", "layer.1.conv1"} <= names
    assert net.node("features.0").op == "conv"
    assert shape(net, "features.5.conv1") == ("N", 8, 4, 4)


def test_unlabelled_steps_are_counted_per_kind(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        logits = image -> conv(4, 1x1) -> relu -> conv(4, 1x1) -> relu -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert ["conv1", "relu1", "conv2", "relu2", "dense1"] == [n for n in net.graph.nodes
                                                               if n not in ("image", "label")][:5]


def test_a_label_used_twice_is_an_error(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        logits = image -> a: conv(4, 1x1) -> a: relu -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert diag.message == "label `a` is used twice in this scope"


# ---- residual, concat, shape functions ------------------------------------------------------

def test_shortcut_auto_projects_odd_sizes_like_a_strided_1x1_conv(tmp_path):
    net, _ = build(tmp_path, """\
        network t(classes = 10)
        input image: [8, 7, 7]
        input label: int
        logits = image
          -> b: residual { conv(16, 3x3, stride = 2, pad = 1) -> batchnorm } shortcut auto
          -> dense(classes)
        loss cross_entropy(logits, label)
        """)
    projection = net.node("b.downsample.0")
    assert projection.attrs["stride"] == (2, 2)
    assert projection.type.shape == ("N", 16, 4, 4)
    assert net.node("b.downsample.1").op == "batchnorm"


def test_explicit_shortcut_body(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        logits = image
          -> residual { conv(6, 3x3, pad = 1) } shortcut { conv(6, 1x1) }
          -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert net.node("shortcut.conv1").type.shape == ("N", 6, 8, 8)


def test_residual_mismatch_renders_like_a_compiler_diagnostic(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        block basic(c, stride = 1) {
          residual {
            conv(c, 3x3, stride = stride, pad = 1) -> relu
            -> conv(c, 3x3, pad = 1)
          }
        }
        logits = image -> basic(16, stride = 2) -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    path = tmp_path / "t.net"
    assert diag.render() == textwrap.dedent(f"""\
        error: residual branch and shortcut disagree
          --> {path}:7:8
           |
         7 |     -> conv(c, 3x3, pad = 1)
           |        ^^^^^^^^^^^^^^^^^^^^^ gives [N, 16, 4, 4]
           = shortcut carries [N, 3, 8, 8]
           = help: add `shortcut auto` for a 1x1 projection""")


def test_concat_branches_join_on_channels(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        logits = image
          -> mix: concat { identity | conv(4, 1x1) -> relu | maxpool(3x3, stride = 1, pad = 1) -> conv(2, 1x1) }
          -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert shape(net, "mix.concat1") == ("N", 3 + 4 + 2, 8, 8)
    assert net.node("mix.branch2.conv1").scope[-1] == ("mix.branch2", "branch")


def test_shape_functions_read_the_input_size(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        block halve(c = channels(in) / 2) {
          conv(c, 1x1) -> conv(channels(in) * 2, 1x1) -> avgpool(height(in) / 4)
        }
        logits = image -> conv(8, 1x1) -> halve -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert shape(net, "halve1.conv1") == ("N", 4, 8, 8)
    assert shape(net, "halve1.conv2") == ("N", 16, 8, 8)
    assert shape(net, "halve1.avgpool1") == ("N", 16, 4, 4)


def test_shape_function_errors_point_at_the_expression(tmp_path):
    diags = errors(tmp_path, with_header("""\
        x = image -> conv(channels(label), 1x1)
        y = image -> conv(dim(image, 7), 1x1)
        z = image -> conv(channels(4), 1x1)
        loss cross_entropy(x, label) + mse(y, z)
        """))
    assert [d.message for d in diags] == [
        "`channels` reads axis 1, but `label` is int[N]",
        "`dim` axis must be a whole number from 1 to 3 for [N, 3, 8, 8], found `7`",
        "`channels(x)` needs a tensor name, found `4`",
    ]
    assert [(d.span.line, d.span.col) for d in diags] == [(4, 19), (5, 30), (6, 28)]


def test_a_bad_argument_does_not_shift_the_next_ones(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        logits = image -> conv(2 * true, 3x3) -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert diag.message == "`*` needs numbers, found `true`"


# ---- parameters, --set, symbolic dimensions --------------------------------------------------

def test_set_overrides_network_parameters_and_symbolic_dimensions(tmp_path):
    text = """\
        network seq(vocab = 20, hidden = 8)
        input text: int[T]
        input next: int[T]
        logits = text -> embed(vocab, 4) -> gru(hidden) -> dense(vocab)
        loss cross_entropy(logits, next)
        """
    net, _ = build(tmp_path, text)
    assert net.symbols == {"T": None}
    assert shape(net, "dense1") == ("N", "T", 20)
    assert net.node("loss.cross_entropy1").attrs["class_axis"] == 2
    net, _ = build(tmp_path, text, {"vocab": 30, "T": 12})
    assert net.params == {"vocab": 30, "hidden": 8}
    assert net.symbols == {"T": 12}
    assert shape(net, "dense1") == ("N", 12, 30)


@pytest.mark.slow
def test_set_from_the_command_line(tmp_path):
    path = write(tmp_path, with_header("""\
        logits = image -> flatten -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    script = Path(sys.executable).parent / "dslc"
    ok = subprocess.run([str(script), "compile", str(path), "--set", "classes=4"], capture_output=True, text=True)
    assert ok.returncode == 0
    assert f"trainable parameters:   {3 * 8 * 8 * 4 + 4:,}" in ok.stdout
    bad = subprocess.run([str(script), "compile", str(path), "--set", "clases=4"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "`--set clases=...` names no network parameter" in bad.stderr
    assert "did you mean `classes`?" in bad.stderr
    wrong = subprocess.run([str(script), "compile", str(path), "--set", "classes=many"], capture_output=True, text=True)
    assert wrong.returncode == 1
    assert "`dense` argument `units` expects a whole number, found the name `many`" in wrong.stderr
    assert "`classes` was set on the command line: `--set classes=many`" in wrong.stderr


def test_a_parameter_without_default_must_be_set_and_is_reported_once(tmp_path):
    text = """\
        network t(classes, features = 2 * classes)
        input image: [features]
        input label: int
        logits = image -> dense(classes)
        loss cross_entropy(logits, label)
        train {
          epochs classes
        }
        """
    (diag,) = errors(tmp_path, text)     # not again where `classes` and `image` are used
    assert diag.message == "network parameter `classes` has no default and was not set"
    net, _ = build(tmp_path, text, {"classes": 3})
    assert shape(net, "image") == ("N", 6)
    assert shape(net, "dense1") == ("N", 3)


def test_parameters_may_shape_inputs(tmp_path):
    net, _ = build(tmp_path, """\
        network t(size = 16, classes = 2)
        input image: [1, size, size]
        input mask: int[size, size]
        logits = image -> conv(classes, 3x3, pad = same)
        loss cross_entropy(logits, mask)
        """, {"size": 12})
    assert shape(net, "conv1") == ("N", 2, 12, 12)


# ---- outputs, losses, statements ----------------------------------------------------------

def test_several_outputs_and_a_weighted_loss(tmp_path):
    net, warnings = build(tmp_path, with_header("""\
        feat = image -> conv(4, 3x3, pad = 1) -> relu
        logits = feat -> avgpool(global) -> dense(classes)
        aux = feat -> flatten -> dense(classes)
        probs = logits -> softmax
        output probs, feat
        loss cross_entropy(logits, label) + 0.4 * cross_entropy(aux, label) + 2 * hinge(logits, label)
        """))
    assert warnings == []
    assert [net.tensor_name(o) for o in net.outputs] == ["probs", "feat"]
    total = net.node(net.loss)
    assert total.op == "loss_sum"
    assert total.attrs["weights"] == (1.0, 0.4, 2.0)
    assert [net.node(t).op for t in total.inputs] == ["cross_entropy", "cross_entropy", "hinge"]


def test_without_output_the_loss_inputs_are_the_outputs(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        logits = image -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert [net.tensor_name(o) for o in net.outputs] == ["logits"]


def test_statements_may_come_in_any_order(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        loss cross_entropy(logits, label)
        logits = feat -> dense(classes)
        feat = image -> conv(4, 1x1)
        """))
    assert net.node("dense1").inputs == ("conv1",)


def test_size_functions_order_statements_too(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        logits = image -> conv(channels(wide) / 2, 1x1) -> flatten -> dense(classes)
        wide = image -> conv(12, 1x1)
        loss cross_entropy(logits, label) + mse(wide, wide)
        """))
    assert shape(net, "conv1") == ("N", 12, 8, 8)
    assert shape(net, "conv2") == ("N", 6, 8, 8)


def test_a_named_tensor_cannot_follow_an_arrow_even_in_a_group(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        feat = image -> relu
        logits = image -> (feat -> dense(classes))
        loss cross_entropy(logits, label)
        """))
    assert diag.message == "tensor `feat` cannot follow `->`"
    assert diag.help == "combine tensors with `add(feat)` or `concat(feat)`"


def test_a_cycle_is_reported(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        a = b -> relu
        b = a -> relu
        loss cross_entropy(a, label)
        """))
    assert diag.message == "tensors depend on each other in a cycle"


def test_an_unused_tensor_is_a_warning(tmp_path):
    _, warnings = build(tmp_path, with_header("""\
        spare = image -> relu
        logits = image -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert [w.message for w in warnings] == ["tensor `spare` is computed but never used"]


def test_not_a_loss_in_the_loss_statement(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        logits = image -> dense(classes)
        loss cros_entropy(logits, label)
        """))
    assert diag.message == "`cros_entropy` is not a loss"
    assert diag.help == "did you mean `cross_entropy`?"


# ---- train section --------------------------------------------------------------------------

def test_train_section_values(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        logits = image -> dense(classes)
        loss cross_entropy(logits, label)
        train {
          optimizer adam(lr = 3e-3, weight_decay = 1e-4)
          epochs 2 * 10
          batch 32
          schedule step(step_size = 5, gamma = 0.5)
          clip_grad_norm 5
          augment(crop = 2, flip = true, brightness = 0.1)
          init xavier
          seed 7
          val_fraction 0.1
        }
        """))
    assert net.train == {
        "optimizer": ("call", "adam", (), {"lr": 3e-3, "weight_decay": 1e-4}),
        "epochs": 20, "batch": 32,
        "schedule": ("call", "step", (), {"step_size": 5, "gamma": 0.5}),
        "clip_grad_norm": 5,
        "augment": ("call", "augment", (), {"crop": 2, "flip": True, "brightness": 0.1}),
        "init": "xavier", "seed": 7, "val_fraction": 0.1,
    }


def test_train_section_mistakes_are_reported_at_their_lines(tmp_path):
    diags = errors(tmp_path, with_header("""\
        logits = image -> dense(classes)
        loss cross_entropy(logits, label)
        train {
          optimizer adamm(lr = 1e-3)
          epochs 0
          schedule step(gama = 0.1)
          augment(crop = 4, flip = 1)
          batch 32
          batch 64
          momentom 0.9
        }
        """))
    assert [(d.span.line, d.message) for d in diags] == [
        (7, "training setting `optimizer` takes one of sgd, momentum, nesterov, adagrad, rmsprop, adam, "
            "adamw, found `adamm`"),
        (8, "training setting `epochs` takes a whole number >= 1, found `0`"),
        (9, "`step` has no argument `gama`"),
        (10, "`augment` argument `flip` takes `true` or `false`, found `1`"),
        (12, "training setting `batch` is given twice"),
        (13, "unknown training setting `momentom`"),
    ]
    assert [d.help for d in diags][0] == "did you mean `adam`?"


# ---- pooling ----------------------------------------------------------------------------------

def test_pools_round_up_with_ceil(tmp_path):
    net, _ = build(tmp_path, """\
        input image: [3, 54, 54]
        a = image -> maxpool(3x3, stride = 2)
        b = image -> maxpool(3x3, stride = 2, ceil = true)
        c = image -> avgpool(3x3, 2, 1, true)
        output a, b, c
        """)
    assert [shape(net, net.tensors[t]) for t in "abc"] == [("N", 3, 26, 26), ("N", 3, 27, 27), ("N", 3, 28, 28)]
    assert net.node(net.tensors["b"]).attrs["ceil"] is True
    assert net.node(net.tensors["a"]).attrs["ceil"] is False


def test_maxunpool_undoes_a_ceil_mode_pool(tmp_path):
    net, _ = build(tmp_path, """\
        input image: [3, 7, 7]
        p = image -> maxpool(2x2, ceil = true)
        up = p -> conv(3, 3x3, pad = 1) -> maxunpool(p)
        """)
    assert shape(net, net.tensors["p"]) == ("N", 3, 4, 4)
    assert shape(net, net.tensors["up"]) == ("N", 3, 7, 7)
    assert net.node(net.tensors["up"]).attrs["ceil"] is True


def test_ceil_is_refused_for_the_global_average(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        logits = image -> avgpool(global, ceil = true) -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert diag.message == "`avgpool(global)` takes no ceil: it pools each whole map to one value"


# ---- syntax -----------------------------------------------------------------------------------

def test_syntax_errors_name_what_was_expected(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        logits = image -> conv(4, 3x3 -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    assert diag.message.startswith("expected ")
    assert diag.message.endswith("found `->`")
    assert (diag.span.line, diag.span.col) == (4, 31)


def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path):
    (diag,) = errors(tmp_path, with_header("""\
        logits = image -> flatten -> dense(100000) -> relu -> dense(classes)
        loss cross_entropy(logits, label)
        """), {"classes": 100000})
    assert diag.message == "`dense` would hold 10,000,100,000 parameters"
    assert (diag.span.line, diag.span.col) == (4, 55)      # the second dense


def test_every_parameter_and_flop_is_counted(tmp_path):
    net, _ = build(tmp_path, with_header("""\
        logits = image -> conv(4, 3x3, pad = 1) -> batchnorm -> relu -> flatten -> dense(classes)
        loss cross_entropy(logits, label)
        """))
    t = totals(net)
    conv, bn, fc = 4 * 3 * 9 + 4, 2 * 4, 4 * 8 * 8 * 10 + 10
    assert t["trainable_parameters"] == conv + bn + fc
    assert t["macs"] == 4 * 8 * 8 * 3 * 9 + 4 * 8 * 8 * 10
    assert t["flops"] == 2 * t["macs"]


# ---- the reference --------------------------------------------------------------------------

def _documented_programs():
    text = (Path(__file__).resolve().parents[2] / "docs" / "LANGUAGE.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```dslc\n")[1:]]


@pytest.mark.parametrize("index", range(len(_documented_programs())))
def test_every_complete_program_in_the_reference_compiles(tmp_path, index):
    net, warnings = build(tmp_path, _documented_programs()[index])
    assert warnings == []
    assert net.loss is not None


def test_the_reference_lists_every_op():
    from dslc.ops import OPS
    text = (Path(__file__).resolve().parents[2] / "docs" / "LANGUAGE.md").read_text()
    table = text[text.index("## Operations"):]
    missing = [name for name in OPS if f"`{name}`" not in table]
    assert missing == [], "add these ops to the table in docs/LANGUAGE.md"
