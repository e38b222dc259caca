"""The layout ops in the language (docs/LANGUAGE.md, "Slices, transposes and stopping gradients"):
programs that use them compile to the shapes torch gives, and each misuse is a diagnostic at its
place, checked as the user reads it through `dslc compile`."""
import textwrap

import pytest

from dslc.cli import main
from dslc.compiler import compile_file


def golden(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.fixture
def dslc(tmp_path, monkeypatch, capsys):
    """`dslc compile prog.net` on a program in a fresh working directory: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(program):
        (tmp_path / "prog.net").write_text(program)
        rc = main(["compile", "prog.net"])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and "internal error" not in out + err, err
        return rc, out, err
    return run


def build(tmp_path, text):
    (tmp_path / "t.net").write_text(text)
    return compile_file(str(tmp_path / "t.net"))


IMAGE = "input image: [4, 8, 8]\n"

YOLO = """
network yolo_head(classes = 20)
input image: [3, 28, 28]
input target: [30, 7, 7]

pred = image -> conv(30, 3x3, stride = 4, pad = 1)
boxes = pred -> slice(axis = 1, start = 0, end = 10)
scores = pred -> slice(axis = 1, start = 10)
box_target = target -> slice(axis = 1, end = 10)
class_target = target -> slice(axis = 1, start = -classes)
xy = boxes -> slice(axis = 1, end = 2)
confidence = boxes -> slice(axis = 1, start = 4, step = 5)

output boxes, scores, xy, confidence
loss mse(boxes, box_target) + mse(scores, class_target)
"""


# ---- slice -------------------------------------------------------------------------------------

def test_a_yolo_output_slices_into_boxes_and_classes(tmp_path):
    net, warnings = build(tmp_path, YOLO)
    assert warnings == []
    shapes = {n: net.node(n).type.shape for n in net.graph.nodes}
    slices = [n for n in shapes if net.node(n).op == "slice"]
    by_attrs = {(net.node(n).attrs["start"], net.node(n).attrs["end"], net.node(n).attrs["step"]): shapes[n]
                for n in slices}
    assert by_attrs == {
        (0, 10, 1): ("N", 10, 7, 7),      # boxes, box_target
        (10, 30, 1): ("N", 20, 7, 7),     # scores, class_target (start = -20 is written as 10)
        (0, 2, 1): ("N", 2, 7, 7),        # the first box's x, y
        (4, 10, 5): ("N", 2, 7, 7),       # each box's confidence: channels 4 and 9
    }
    assert all(net.node(n).attrs["axis"] == 1 for n in slices)


def test_slice_of_a_sequence_with_a_negative_axis(tmp_path):
    net, _ = build(tmp_path, "input seq: [T, 16]\ny = seq -> slice(axis = -1, start = -3) -> dense(2)\n"
                             "output y\n")
    (s,) = [n for n in net.graph.nodes if net.node(n).op == "slice"]
    assert net.node(s).type.shape == ("N", "T", 3) and net.node(s).attrs["axis"] == 2


def test_slice_refuses_the_batch_axis(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> slice(axis = 0, end = 2)\n")
    assert rc == 1
    assert err == golden("""
        error: slice cannot work across samples: axis 0 is the batch axis of [N, 4, 8, 8]
          --> prog.net:2:20
           |
         2 | y = image -> slice(axis = 0, end = 2)
           |                    ^^^^^^^^ here
           = expected an axis from 1 to 3 (or -1 for the last)
           = found    axis = 0
           = input `image` is [N, 4, 8, 8]
           = help: axes count the batch as 0, as in torch: axis 1 is the first axis of a sample

        1 error
        """)


def test_a_negative_axis_can_name_the_batch_too(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> slice(axis = -4)\nz = image -> slice(axis = -5)\n")
    assert rc == 1
    firsts = [line for line in err.splitlines() if line.startswith("error:")]
    assert firsts == ["error: slice cannot work across samples: axis -4 is the batch axis of [N, 4, 8, 8]",
                      "error: slice axis -5 is out of range for [N, 4, 8, 8]"]


def test_slice_refuses_an_axis_out_of_range(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> slice(axis = 4, end = 2)\n")
    assert rc == 1
    assert err == golden("""
        error: slice axis 4 is out of range for [N, 4, 8, 8]
          --> prog.net:2:20
           |
         2 | y = image -> slice(axis = 4, end = 2)
           |                    ^^^^^^^^ here
           = expected 1 to 3 or -3 to -1 (axis 0 is the batch)
           = found    axis = 4
           = input `image` is [N, 4, 8, 8]
           = help: axis 1 is the channel (or feature) axis, -1 the last

        1 error
        """)


def test_an_empty_slice_is_refused_at_its_bounds(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> slice(axis = 1, start = 3, end = 3)\n")
    assert rc == 1
    assert err == golden("""
        error: slice [3:3] of axis 1 (size 4) is empty
          --> prog.net:2:41
           |
         2 | y = image -> slice(axis = 1, start = 3, end = 3)
           |                                         ^^^^^^^ here
           = expected start < end, as indices 0 to 4 of the axis or negative from its end
           = found    start = 3, end = 3 on [N, 4, 8, 8]
           = input `image` is [N, 4, 8, 8]
           = help: a network tensor cannot be empty: check the bounds against the axis size

        1 error
        """)


def test_a_start_past_the_end_is_empty_too(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> slice(axis = 2, start = 8)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: slice [8:] of axis 2 (size 8) is empty"
    assert lines[4] == "   |                              ^^^^^^^^^ here"


def test_slice_step_must_be_positive(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> slice(1, 0, 4, -1)\n")
    assert rc == 1
    assert err == golden("""
        error: slice step must be positive, found -1
          --> prog.net:2:29
           |
         2 | y = image -> slice(1, 0, 4, -1)
           |                             ^^ here
           = expected step >= 1
           = found    step = -1
           = input `image` is [N, 4, 8, 8]
           = help: slices run forwards, as in torch; a step of 1 keeps every index

        1 error
        """)


def test_slice_of_a_symbolic_axis_is_refused(dslc):
    rc, out, err = dslc("input seq: [T, 16]\ny = seq -> slice(axis = 1, end = 2)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: slice: slice's axis 1 must have a fixed size, found symbolic `T`"


# ---- transpose and permute ---------------------------------------------------------------------

def test_transpose_and_permute_give_torch_shapes(tmp_path):
    net, warnings = build(tmp_path, """
input image: [3, 8, 6]
input steps: [T, 16]
nhwc = image -> permute(2, 3, 1)
back = nhwc -> permute(-1, 1, 2) -> conv(4, 3x3)
over_time = steps -> transpose(1, 2)
swapped = image -> transpose(-1, -2)
output back, over_time, swapped
""")
    assert warnings == []
    by_op = {}
    for n in net.graph.nodes:
        by_op.setdefault(net.node(n).op, []).append(net.node(n))
    assert [(p.attrs["order"], p.type.shape) for p in by_op["permute"]] == [
        ((2, 3, 1), ("N", 8, 6, 3)), ((3, 1, 2), ("N", 3, 8, 6))]
    assert sorted(((t.attrs["axis0"], t.attrs["axis1"]), t.type.shape) for t in by_op["transpose"]) == [
        ((1, 2), ("N", 16, "T")), ((3, 2), ("N", 3, 6, 8))]


def test_transpose_of_one_axis_with_itself_is_refused(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> transpose(2, -2)\n")
    assert rc == 1
    assert err == golden("""
        error: transpose names axis 2 twice (2 and -2): it would change nothing
          --> prog.net:2:27
           |
         2 | y = image -> transpose(2, -2)
           |                           ^^ here
           = expected two different axes
           = found    axis 2 of [N, 4, 8, 8] both times
           = input `image` is [N, 4, 8, 8]
           = help: remove the transpose, or name the other axis to swap

        1 error
        """)


def test_transpose_refuses_the_batch_axis(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> transpose(0, 1)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: transpose cannot work across samples: axis 0 is the batch axis of [N, 4, 8, 8]"
    assert lines[4] == "   |                        ^ here"
    assert "   = found    axis0 = 0" in lines


def test_permute_written_with_the_batch_axis_says_to_leave_it_out(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> permute(0, 2, 3, 1)\n")
    assert rc == 1
    assert err == golden("""
        error: permute orders the axes after the batch only: leave out the batch axis 0
          --> prog.net:2:31
           |
         2 | y = image -> permute(0, 2, 3, 1)
           |                               ^ here
           = expected 3 axes, a permutation of 1, 2, 3
           = found    order = (0, 2, 3, 1)
           = input `image` is [N, 4, 8, 8]
           = help: write permute(2, 3, 1): the batch axis always stays first

        1 error
        """)


@pytest.mark.parametrize("order, first, help_line", [
    ("2, 1", "error: permute needs every axis after the batch of [N, 4, 8, 8] once: 3 axes, found 2",
     "   = help: to swap two axes only, write transpose(a, b)"),
    ("2, -2, 1", "error: permute names axis 2 twice", "   = help: name each axis after the batch exactly once"),
    ("3, 4, 1", "error: permute axis 4 is out of range for [N, 4, 8, 8]",
     "   = help: axis 1 is the channel (or feature) axis, -1 the last"),
])
def test_permute_needs_a_permutation(dslc, order, first, help_line):
    rc, out, err = dslc(IMAGE + f"y = image -> permute({order})\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == first
    assert f"   = found    order = ({order})" in lines
    assert help_line in lines


def test_transpose_needs_both_axes(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> transpose(2)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: `transpose` is missing its argument `axis1`"


# ---- stop_gradient -----------------------------------------------------------------------------

def test_detach_is_stop_gradient_in_the_graph(tmp_path):
    net, warnings = build(tmp_path, """
input image: [1, 8, 8]
student = image -> flatten -> dense(4)
teacher = image -> flatten -> dense(4)
frozen = teacher -> detach
output student
loss mse(student, frozen)
""")
    assert warnings == []
    (node,) = [net.node(n) for n in net.graph.nodes if net.node(n).op in ("stop_gradient", "detach")]
    assert node.op == "stop_gradient" and node.type.shape == ("N", 4)


def test_stop_gradient_takes_no_arguments(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> stop_gradient(1)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: `stop_gradient` takes 0 arguments, found an extra one"
