"""Golden tests of every kind of diagnostic, through the command line.

Each test writes a tiny program, runs `dslc compile` on it (in-process with `dslc.cli.main`,
a few as a real `python -m dslc` subprocess) and checks the message as the user reads it:
the `error:` line, `--> file:line:col`, the source line, the carets under the exact columns,
the label, the `=` notes and help, the closing error count and the exit code.

Tests marked xfail(strict=True) describe the message the compiler should print but does not
yet: they fail the suite the day the fix lands, so the marker is removed with the fix.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dslc.cli import main
from dslc.diagnostics import Diagnostic, Source, Span, did_you_mean, edit_distance
from tests.compiler.helpers import golden

REPO = Path(__file__).resolve().parents[2]




def run_module(tmp_path, *args):
    """`python -m dslc ARGS` as the user runs it, in tmp_path."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "dslc", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


IMAGE = "input image: [1, 8, 8]\n"


# ---- syntax ------------------------------------------------------------------------------------

def test_missing_close_paren_points_at_the_token_after_the_open_call(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3 -> relu\n")
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("error: expected ") and lines[0].endswith(", found `->`")
    assert lines[1:5] == ["  --> prog.net:2:26",
                          "   |",
                          " 2 | y = image -> conv(4, 3x3 -> relu",
                          "   |                          ^^ unexpected here"]
    assert lines[-1] == "1 error"


def test_missing_close_paren_names_the_closing_paren(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3 -> relu\n")
    lines = err.splitlines()
    assert lines[0] == "error: expected `,` or `)`, found `->`"
    assert "   = help: a `(` may be missing its `)`" in lines


def test_missing_close_brace_at_end_of_file(dslc):
    rc, out, err = dslc(IMAGE + "block b(c) {\n  conv(c, 3x3) -> relu\ny = image -> b(4)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: expected `(`, `concat`, `if`, `mean`, `residual`, `sum`, `}` or a name, found end of file"
    assert lines[1] == "  --> prog.net:4:17"
    assert lines[3] == " 4 | y = image -> b(4)"
    assert lines[5] == "   = help: a `{` is never closed"
    assert lines[-1] == "1 error"


def test_end_of_file_caret_sits_past_the_last_character(dslc):
    rc, out, err = dslc(IMAGE + "block b(c) {\n  conv(c, 3x3) -> relu\ny = image -> b(4)\n")
    assert err.splitlines()[4] == "   |                  ^ the file ends here"


def test_stray_arrow(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> -> relu\n")
    assert rc == 1
    assert err == golden("""
        error: expected `(` or a name, found `->`
          --> prog.net:2:14
           |
         2 | y = image -> -> relu
           |              ^^ unexpected here
           = help: see the language reference in docs/LANGUAGE.md

        1 error
        """)


def test_unmatched_close_paren(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3) ) -> relu\n")
    lines = err.splitlines()
    assert lines[0] == "error: unmatched `)`"
    assert lines[1] == "  --> prog.net:2:27"
    assert lines[4] == "   |                           ^ no `(` before it"


def test_bracket_closed_by_the_wrong_kind(dslc):
    rc, out, err = dslc("input image: [1, 8, 8)\n")
    assert rc == 1
    assert err == golden("""
        error: expected `,` or `]`, found `)`
          --> prog.net:1:22
           |
         1 | input image: [1, 8, 8)
           |                      ^ unexpected here
           = help: a `[` may be missing its `]`

        1 error
        """)


def test_missing_comma_between_arguments(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4 3x3)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: expected `,` or `)`, found `3x3`"
    assert "   = help: a `,` may be missing before it" in err.splitlines()


def test_syntax_help_names_an_existing_document():
    assert (REPO / "docs" / "LANGUAGE.md").is_file()


def test_unexpected_character(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3) -> relu $\n")
    assert rc == 1
    assert err == golden("""
        error: unexpected character `$`
          --> prog.net:2:35
           |
         2 | y = image -> conv(4, 3x3) -> relu $
           |                                   ^ not part of the language
           = help: names are letters, digits and `_`; comments start with `#`

        1 error
        """)


def test_unexpected_control_character_is_not_printed_raw(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> relu \x07\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: unexpected character `\\x07`"
    assert lines[3:5] == [" 2 | y = image -> relu \ufffd",
                          "   |                   ^ not part of the language"]
    assert "\x07" not in err


def test_unterminated_string(dslc):
    rc, out, err = dslc('import "blocks.net\n' + IMAGE)
    assert rc == 1
    assert err.splitlines()[0] == "error: unexpected character `\"`"
    assert "   = help: strings use double quotes and end on the same line" in err.splitlines()


def test_unexpected_end_of_file_after_an_arrow(dslc):
    rc, out, err = dslc(IMAGE + "y = image ->")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: expected `(`, `concat`, `if`, `mean`, `residual`, `sum` or a name, found end of file"
    assert lines[1:4] == ["  --> prog.net:2:12", "   |", " 2 | y = image ->"]
    assert lines[-1] == "1 error"


def test_unexpected_end_of_file_after_network(dslc):
    rc, out, err = dslc("network")
    assert rc == 1
    assert err.splitlines()[:2] == ["error: expected a name, found end of file", "  --> prog.net:1:7"]


def test_number_where_a_name_is_expected(dslc):
    rc, out, err = dslc(IMAGE + "y = 3 -> relu\n")
    assert rc == 1
    assert err == golden("""
        error: expected `(` or a name, found `3`
          --> prog.net:2:5
           |
         2 | y = 3 -> relu
           |     ^ unexpected here
           = help: a chain starts from a tensor name; numbers go inside an op's parentheses

        1 error
        """)


def test_wide_characters_keep_the_caret_under_the_character(dslc):
    rc, out, err = dslc(IMAGE + "z = \u65e5 -> relu\n")
    assert rc == 1
    assert err.splitlines()[3:5] == [" 2 | z = \u65e5 -> relu", "   |     ^^ not part of the language"]


def test_line_numbers_count_newlines_only(dslc):
    # A form feed in a comment is no line break for the parser, so none for the source line shown.
    rc, out, err = dslc("# a\x0cb\n" + IMAGE + "y = image -> rleu\n")
    assert err.splitlines()[1:4] == ["  --> prog.net:3:14", "   |", " 3 | y = image -> rleu"]


def test_windows_line_endings(dslc):
    rc, out, err = dslc((IMAGE + "y = image -> rleu\n").replace("\n", "\r\n"))
    assert err.splitlines()[3:5] == [" 2 | y = image -> rleu", "   |              ^^^^ not defined"]


def test_byte_order_mark_is_accepted(dslc):
    rc, out, err = dslc(b"\xef\xbb\xbf" + IMAGE.encode())
    assert rc == 0, err


def test_deep_nesting_is_a_diagnostic(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> " + "(" * 3000 + "relu" + ")" * 3000 + "\n")
    assert rc == 1
    assert err == golden("""
        error: the program nests too deeply to compile
          = help: flatten deeply nested parentheses, groups or blocks

        1 error
        """)


def test_huge_integer_literal(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(" + "9" * 5000 + ", 3x3)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "error: number too large"
    assert lines[1] == "  --> prog.net:2:19"


def test_integer_literal_over_64_bits(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3, stride = 9223372036854775808)\n")
    assert rc == 1
    assert err == golden("""
        error: number too large
          --> prog.net:2:36
           |
         2 | y = image -> conv(4, 3x3, stride = 9223372036854775808)
           |                                    ^^^^^^^^^^^^^^^^^^^ more than 64 bits
           = limit: 9,223,372,036,854,775,807
           = help: whole numbers are sizes, counts and seeds; check for a typo

        1 error
        """)


def test_float_literal_beyond_float_range(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> dropout(1e999)\n")
    assert rc == 1
    assert err.splitlines()[:5] == ["error: number too large",
                                    "  --> prog.net:2:22",
                                    "   |",
                                    " 2 | y = image -> dropout(1e999)",
                                    "   |                      ^^^^^ beyond float range"]


def test_empty_file_is_an_error(dslc):
    rc, out, err = dslc("# nothing yet\n")
    assert rc == 1 and out == ""
    assert err.splitlines() == [
        "error: no network in this file",
        "  = help: declare an input and a chain from it, e.g. `input image: [3, 32, 32]` and "
        "`logits = image -> flatten -> dense(10)`; see docs/LANGUAGE.md",
        "",
        "1 error"]


def test_file_of_blocks_only_is_no_network(dslc):
    rc, out, err = dslc("block b(c) { conv(c, 3x3) }\nblock d() { relu }\n")
    assert rc == 1
    assert err.splitlines()[:2] == [
        "error: no network in this file",
        "  = it defines only blocks (`b`, `d`): a file of blocks is for `import` into a network's file"]


# ---- names -------------------------------------------------------------------------------------

def test_unknown_op_with_did_you_mean(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3) -> rleu\n")
    assert rc == 1
    assert err == golden("""
        error: unknown tensor, op or block `rleu`
          --> prog.net:2:30
           |
         2 | y = image -> conv(4, 3x3) -> rleu
           |                              ^^^^ not defined
           = help: did you mean `relu`?

        1 error
        """)


def test_unknown_op_without_a_close_name(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> frobnicate(3)\n")
    assert rc == 1
    assert err.splitlines()[4:6] == [
        "   |              ^^^^^^^^^^ not defined",
        "   = help: see `dslc ops` for the list of ops; blocks must be defined or imported"]


def test_unknown_tensor(dslc):
    rc, out, err = dslc(IMAGE + "y = imag -> relu\n")
    assert rc == 1
    assert err == golden("""
        error: unknown tensor, op or block `imag`
          --> prog.net:2:5
           |
         2 | y = imag -> relu
           |     ^^^^ not defined
           = help: did you mean `image`?

        1 error
        """)


def test_unknown_tensor_as_an_argument(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> relu\nz = add(y, w)\n")
    assert rc == 1
    assert err == golden("""
        error: unknown tensor `w`
          --> prog.net:3:12
           |
         3 | z = add(y, w)
           |            ^ not defined
           = help: define it with `name = ...` first

        1 error
        """)


def test_unknown_tensor_where_an_attribute_could_stand(dslc):
    # `concat`'s first attribute is its axis, which takes no bare name: `w` is a missing tensor
    rc, out, err = dslc(IMAGE + "y = image -> relu\nz = concat(y, yy)\n")
    assert rc == 1
    assert err.splitlines()[:6] == ["error: unknown tensor `yy`",
                                    "  --> prog.net:3:15",
                                    "   |",
                                    " 3 | z = concat(y, yy)",
                                    "   |               ^^ not defined",
                                    "   = help: did you mean `y`?"]


def test_unknown_tensor_in_a_loss(dslc):
    rc, out, err = dslc(IMAGE + "input label: int\nlogits = image -> flatten -> dense(3)\n"
                        "loss cross_entropy(logits, lable)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: unknown tensor `lable`"
    assert "   = help: did you mean `label`?" in err.splitlines()
    assert err.splitlines()[-1] == "1 error"


def test_unknown_output(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> relu\noutput y, nope\n")
    assert rc == 1
    assert err == golden("""
        error: unknown tensor `nope`
          --> prog.net:3:11
           |
         3 | output y, nope
           |           ^^^^ not defined
           = help: outputs name tensors assigned with `=`

        1 error
        """)


def test_unknown_block(dslc):
    rc, out, err = dslc(IMAGE + "block basic(c) { conv(c, 3x3) }\ny = image -> basc(4)\n")
    assert rc == 1
    assert err == golden("""
        error: unknown tensor, op or block `basc`
          --> prog.net:3:14
           |
         3 | y = image -> basc(4)
           |              ^^^^ not defined
           = help: did you mean `basic`?

        1 error
        """)


def test_tensor_after_an_arrow(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> relu -> image\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: tensor `image` cannot follow `->`"
    assert err.splitlines()[4:6] == ["   |                      ^^^^^ a tensor, not an op",
                                     "   = help: combine tensors with `add(image)` or `concat(image)`"]


def test_assigned_twice_and_declared_twice(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> relu\n" + IMAGE + "y = image -> tanh\n")
    assert rc == 1
    assert err == golden("""
        error: input `image` is declared twice
          --> prog.net:3:7
           |
         3 | input image: [1, 8, 8]
           |       ^^^^^ again here

        error: tensor `y` is assigned twice
          --> prog.net:4:1
           |
         4 | y = image -> tanh
           | ^ again here
           = first assigned at prog.net:2:1
           = help: give each tensor its own name

        2 errors
        """)


def test_unused_tensor_is_a_warning(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> relu\nz = image -> tanh\noutput y\n")
    assert rc == 0
    assert err == golden("""
        warning: tensor `z` is computed but never used
          --> prog.net:3:1
           |
         3 | z = image -> tanh
           | ^ unused
           = help: use it, list it in `output`, or remove it

        """)
    assert out.startswith("network prog  (prog.net)")


# ---- arguments ---------------------------------------------------------------------------------

CONV_SIGNATURE = "   = signature: conv(channels, kernel, stride = 1, pad = 0, dilation = 1, groups = 1, bias = true)"


def test_missing_argument(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(kernel = 3x3)\n")
    assert rc == 1
    assert err == golden("""
        error: `conv` is missing its argument `channels`
          --> prog.net:2:14
           |
         2 | y = image -> conv(kernel = 3x3)
           |              ^^^^^^^^^^^^^^^^^^ needs more
        """) + CONV_SIGNATURE + "\n" + golden("""
           = help: output channels

        1 error
        """)


def test_unknown_argument_with_did_you_mean(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3, strid = 2)\n")
    assert rc == 1
    assert err.splitlines() == [
        "error: `conv` has no argument `strid`",
        "  --> prog.net:2:27",
        "   |",
        " 2 | y = image -> conv(4, 3x3, strid = 2)",
        "   |                           ^^^^^^^^^ unknown argument",
        CONV_SIGNATURE,
        "   = help: did you mean `stride`?",
        "",
        "1 error"]


def test_duplicate_argument(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3, stride = 1, stride = 2)\n")
    assert rc == 1
    assert err.splitlines()[:7] == [
        "error: argument `stride` is given twice",
        "  --> prog.net:2:39",
        "   |",
        " 2 | y = image -> conv(4, 3x3, stride = 1, stride = 2)",
        "   |                                       ^^^^^^^^^^ again here",
        CONV_SIGNATURE,
        "   = help: keep one"]


def test_duplicate_positional_and_keyword_argument(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3, channels = 8)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: argument `channels` is given twice"
    assert err.splitlines()[4] == "   |                           ^^^^^^^^^^^^ again here"


def test_mistyped_argument(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3, bias = 2.5)\n")
    assert rc == 1
    assert err.splitlines()[:7] == [
        "error: `conv` argument `bias` expects `true` or `false`, found `2.5`",
        "  --> prog.net:2:27",
        "   |",
        " 2 | y = image -> conv(4, 3x3, bias = 2.5)",
        "   |                           ^^^^^^^^^^ wrong type",
        CONV_SIGNATURE,
        "   = help: see `dslc ops conv`"]


def test_name_where_a_number_is_expected(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(four, 3x3)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: `conv` argument `channels` expects a whole number, found the name `four`"
    assert err.splitlines()[4] == "   |                   ^^^^ wrong type"


def test_block_argument_errors_all_reported(dslc):
    rc, out, err = dslc(IMAGE + "block b(c, d = 2) { conv(c, 3x3) }\n"
                        "y = image -> b()\nz = image -> b(1, 2, 3)\nw = image -> b(1, e = 3)\nv = image -> b(1, c = 3)\n")
    assert rc == 1
    assert err == golden("""
        error: block `b` is missing its argument `c`
          --> prog.net:3:14
           |
         3 | y = image -> b()
           |              ^^^ needs more
           = signature: block b(c, d = 2)

        error: block `b` takes 2 arguments, found 3
          --> prog.net:4:22
           |
         4 | z = image -> b(1, 2, 3)
           |                      ^ extra argument
           = signature: block b(c, d = 2)
           = help: remove it

        error: block `b` has no parameter `e`
          --> prog.net:5:19
           |
         5 | w = image -> b(1, e = 3)
           |                   ^^^^^ unknown argument
           = signature: block b(c, d = 2)
           = help: remove it

        error: argument `c` is given twice
          --> prog.net:6:19
           |
         6 | v = image -> b(1, c = 3)
           |                   ^^^^^ again here
           = signature: block b(c, d = 2)

        4 errors
        """)


def test_block_with_several_extra_arguments(dslc):
    rc, out, err = dslc(IMAGE + "block b(c, d = 2 * c) { conv(c, 3x3) }\ny = image -> b(1, 2, 3, 4)\n")
    assert rc == 1
    assert err == golden("""
        error: block `b` takes 2 arguments, found 4
          --> prog.net:3:22
           |
         3 | y = image -> b(1, 2, 3, 4)
           |                      ^^^^ extra arguments
           = signature: block b(c, d = 2 * c)
           = help: remove them

        1 error
        """)


def test_unknown_loss_with_did_you_mean(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3)\nloss cross_entrpy(y, image)\n")
    assert rc == 1
    assert err.splitlines()[:7] == [
        "error: `cross_entrpy` is not a loss",
        "  --> prog.net:3:6",
        "   |",
        " 3 | loss cross_entrpy(y, image)",
        "   |      ^^^^^^^^^^^^ here",
        "   = losses: cross_entropy, hinge, mse, bce, smooth_l1, kl_gaussian",
        "   = help: did you mean `cross_entropy`?"]


# ---- graph structure ---------------------------------------------------------------------------

def test_cycle_between_tensors(dslc):
    rc, out, err = dslc(IMAGE + "a = b -> relu\nb = a -> tanh\nc = image -> relu\n")
    assert rc == 1
    assert err == golden("""
        error: tensors depend on each other in a cycle
          --> prog.net:2:1
           |
         2 | a = b -> relu
           | ^ part of the cycle
           = cycle: `a` -> `b` -> `a`
           = help: a network is acyclic: break the cycle (recurrence goes in `lstm`/`gru`/`rnn`)

        1 error
        """)


def test_tensor_defined_from_itself(dslc):
    rc, out, err = dslc(IMAGE + "a = a -> relu\n")
    assert rc == 1
    assert "   = cycle: `a` -> `a`" in err.splitlines()


def test_block_recursion(dslc):
    rc, out, err = dslc(IMAGE + "block a(c) { b(c) }\nblock b(c) { a(c) }\ny = image -> a(4)\n")
    assert rc == 1
    assert err == golden("""
        error: block `a` uses itself
          --> prog.net:3:14
           |
         3 | block b(c) { a(c) }
           |              ^^^^ recursive use
           = expansion: a -> b -> a
           = help: blocks expand at compile time; use repetition (`* n`) instead

        1 error
        """)


def test_block_calling_itself(dslc):
    rc, out, err = dslc(IMAGE + "block b(c) { conv(c, 3x3) -> b(c) }\ny = image -> b(4)\n")
    assert rc == 1
    assert err.splitlines()[4:6] == ["   |                              ^^^^ recursive use", "   = expansion: b -> b"]


# ---- shapes ------------------------------------------------------------------------------------

def test_add_mismatch(dslc):
    rc, out, err = dslc(IMAGE + "a = image -> conv(4, 3x3)\nb = image -> conv(8, 3x3)\nc = a -> add(b)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[1:9] == [
        "  --> prog.net:4:10",
        "   |",
        " 4 | c = a -> add(b)",
        "   |          ^^^^^^ here",
        "   = expected [N, 4, 6, 6], as input 1",
        "   = found    [N, 8, 6, 6]",
        "   = input `a` is [N, 4, 6, 6]",
        "   = input `b` is [N, 8, 6, 6]"]
    assert lines[9] == "   = help: a projection (1x1 conv, or dense) makes the shapes agree"
    assert lines[-1] == "1 error"


@pytest.mark.parametrize("program", [
    "a = image -> conv(4, 3x3)\nb = image -> conv(8, 3x3)\nc = a -> add(b)\n",
    "y = image -> concat { conv(4, 3x3) | conv(4, 3x3, pad = 1) }\n",
])
def test_shape_error_names_the_op_once(dslc, program):
    rc, out, err = dslc(IMAGE + program)
    first = err.splitlines()[0]
    assert not first.startswith(("error: add: add", "error: concat: concat")), first


def test_add_mismatch_names_the_users_tensors(dslc):
    rc, out, err = dslc(IMAGE + "a = image -> conv(4, 3x3)\nb = image -> conv(8, 3x3)\nc = a -> add(b)\n")
    lines = err.splitlines()
    assert "   = input `a` is [N, 4, 6, 6]" in lines and "   = input `b` is [N, 8, 6, 6]" in lines


def test_residual_mismatch(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> residual { conv(4, 3x3, pad = 1) }\n")
    assert rc == 1
    assert err == golden("""
        error: residual branch and shortcut disagree
          --> prog.net:2:25
           |
         2 | y = image -> residual { conv(4, 3x3, pad = 1) }
           |                         ^^^^^^^^^^^^^^^^^^^^^ gives [N, 4, 8, 8]
           = shortcut carries [N, 1, 8, 8]
           = help: add `shortcut auto` for a 1x1 projection

        1 error
        """)


def test_concat_mismatch(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> concat { conv(4, 3x3) | conv(4, 3x3, pad = 1) }\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0].endswith("differs from input 1 in dimension 2 (8 vs 6); only the join axis 1 may differ")
    assert lines[1:8] == [
        "  --> prog.net:2:14",
        "   |",
        " 2 | y = image -> concat { conv(4, 3x3) | conv(4, 3x3, pad = 1) }",
        "   |              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ here",
        "   = expected dimension 2 = 6, as in input 1 [N, 4, 6, 6]",
        "   = found    input 2 [N, 4, 8, 8]",
        "   = input `branch1.conv1` is [N, 4, 6, 6]"]
    assert lines[9] == "   = help: resize the branches (pooling, stride or padding) so they agree"


def test_sizes_shrink_below_the_kernel(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 3x3) -> conv(4, 3x3) -> conv(4, 3x3) -> conv(4, 3x3)\n")
    assert rc == 1
    assert err == golden("""
        error: conv: kernel larger than the padded input: height 2 + 2x0 padding < kernel extent 3
          --> prog.net:2:70
           |
         2 | y = image -> conv(4, 3x3) -> conv(4, 3x3) -> conv(4, 3x3) -> conv(4, 3x3)
           |                                                                      ^^^ here
           = expected height + 2*pad >= 3
           = found    2 (padded 2)
           = input `conv3` is [N, 4, 2, 2]
           = help: use a smaller kernel, more padding, or remove a downsampling step before this

        1 error
        """)


def test_pooling_shrinks_the_map_away(dslc):
    rc, out, err = dslc("input image: [1, 4, 4]\ny = image -> maxpool(2x2) -> maxpool(2x2) -> maxpool(2x2)\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == ("error: maxpool: kernel larger than the padded input: "
                        "height 1 + 2x0 padding < kernel extent 2")
    assert lines[1] == "  --> prog.net:2:54"
    assert lines[6] == "   = found    1 (padded 1)"


def test_zero_units(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> flatten -> dense(0)\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: dense: `units` must be at least 1, found 0"
    assert err.splitlines()[4] == "   |                               ^ here"


def test_kernel_larger_than_padded_input(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> conv(4, 11x11, pad = 1)\n")
    assert rc == 1
    assert err.splitlines()[:9] == [
        "error: conv: kernel larger than the padded input: height 8 + 2x1 padding < kernel extent 11",
        "  --> prog.net:2:22",
        "   |",
        " 2 | y = image -> conv(4, 11x11, pad = 1)",
        "   |                      ^^^^^ here",
        "   = expected height + 2*pad >= 11",
        "   = found    8 (padded 10)",
        "   = input `image` is [N, 1, 8, 8]",
        "   = help: use a smaller kernel, more padding, or remove a downsampling step before this"]


def test_huge_layer_is_refused(dslc):
    rc, out, err = dslc("input image: [3, 8, 8]\ny = image -> conv(100000000, 3x3)\n")
    assert rc == 1
    assert err == golden("""
        error: tensor [N, 100000000, 6, 6] is too large: 13.4 GiB per sample
          --> prog.net:2:14
           |
         2 | y = image -> conv(100000000, 3x3)
           |              ^^^^^^^^^^^^^^^^^^^^ output of this step
           = limit: 8 GiB per sample
           = help: check the input size and the channel counts

        1 error
        """)


def test_huge_input_is_refused(dslc):
    rc, out, err = dslc("input image: [100000, 100000, 100000]\ny = image -> relu\n")
    assert rc == 1
    assert err.splitlines()[:7] == [
        "error: tensor [N, 100000, 100000, 100000] is too large: 3725290.3 GiB per sample",
        "  --> prog.net:1:1",
        "   |",
        " 1 | input image: [100000, 100000, 100000]",
        "   | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ output of this step",
        "   = limit: 8 GiB per sample",
        "   = help: check the input size and the channel counts"]


@pytest.mark.parametrize("declaration", ["input image: [100000, 100000, 100000]", "input image: [0, 4, 4]"])
def test_refused_input_is_reported_once(dslc, declaration):
    rc, out, err = dslc(declaration + "\ny = image -> relu\n")
    assert err.splitlines()[-1] == "1 error", err


def test_symbolic_length_compiles(dslc):
    rc, out, err = dslc("input text: int[T]\ny = text -> embed(10, 4) -> lstm(8)\n")
    assert rc == 0, err
    assert "[N, T, 8]" in out


def test_symbolic_length_bound_with_set(dslc):
    rc, out, err = dslc("input text: int[T]\ny = text -> embed(10, 4) -> lstm(8)\n", "--set", "T=5")
    assert rc == 0, err
    assert "[N, 5, 8]" in out


def test_several_independent_errors_in_one_run(dslc):
    rc, out, err = dslc(IMAGE + "a = image -> conv(4, 3x3) -> rleu\nb = image -> conv(4, 3x3, strid = 2)\n"
                        "c = imag -> relu\n")
    assert rc == 1
    assert err == golden("""
        error: unknown tensor, op or block `rleu`
          --> prog.net:2:30
           |
         2 | a = image -> conv(4, 3x3) -> rleu
           |                              ^^^^ not defined
           = help: did you mean `relu`?

        error: `conv` has no argument `strid`
          --> prog.net:3:27
           |
         3 | b = image -> conv(4, 3x3, strid = 2)
           |                           ^^^^^^^^^ unknown argument
        """) + CONV_SIGNATURE + "\n" + golden("""
           = help: did you mean `stride`?

        error: unknown tensor, op or block `imag`
          --> prog.net:4:5
           |
         4 | c = imag -> relu
           |     ^^^^ not defined
           = help: did you mean `image`?

        3 errors
        """)


def test_downstream_of_an_error_is_not_reported(dslc):
    rc, out, err = dslc(IMAGE + "a = image -> rleu\nb = a -> conv(4, 3x3)\nc = b -> dense(3)\n")
    assert rc == 1
    assert err.splitlines()[-1] == "1 error"


def test_later_steps_of_a_failed_chain_are_still_checked(dslc):
    # After `rleu` the chain has no shapes, but the arguments further down need none.
    rc, out, err = dslc("network t(classes = 10)\n" + IMAGE +
                        "y = image -> rleu -> flatten -> dense(clases) -> conv(4, 3x3, strid = 2)\n")
    assert rc == 1
    assert err == golden("""
        error: unknown tensor, op or block `rleu`
          --> prog.net:3:14
           |
         3 | y = image -> rleu -> flatten -> dense(clases) -> conv(4, 3x3, strid = 2)
           |              ^^^^ not defined
           = help: did you mean `relu`?

        error: `dense` argument `units` expects a whole number, found the name `clases`
          --> prog.net:3:39
           |
         3 | y = image -> rleu -> flatten -> dense(clases) -> conv(4, 3x3, strid = 2)
           |                                       ^^^^^^ wrong type
           = signature: dense(units, bias = true)
           = help: did you mean `classes`?

        error: `conv` has no argument `strid`
          --> prog.net:3:63
           |
         3 | y = image -> rleu -> flatten -> dense(clases) -> conv(4, 3x3, strid = 2)
           |                                                               ^^^^^^^^^ unknown argument
        """) + CONV_SIGNATURE + "\n" + golden("""
           = help: did you mean `stride`?

        3 errors
        """)


def test_failed_chain_checks_blocks_repeats_and_branches(dslc):
    program = IMAGE + ("block b(c) { conv(c, 3x3, pad = 1) -> tanh }\n"
                       "y = image -> rleu -> b(4) * 3 -> b(5, 6) -> concat { conv(4, 1x1) | maxpool(3x3, strid = 1) }\n"
                       "  -> residual { conv(4, 3x3, pad = 1) } shortcut { conv(4, 1x1, bais = false) }\n")
    rc, out, err = dslc(program)
    assert rc == 1
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: unknown tensor, op or block `rleu`",
        "error: block `b` takes 1 argument, found 2",
        "error: `maxpool` has no argument `strid`",
        "error: `conv` has no argument `bais`"]


def test_a_mistake_in_a_block_is_reported_once_for_all_its_uses(dslc):
    rc, out, err = dslc(IMAGE + "block b(c) { conv(c, 3x3, strid = 2) }\n"
                        "y = image -> b(4) -> b(4)\nz = image -> b(8)\noutput y, z\n")
    assert rc == 1
    assert err.count("error: `conv` has no argument `strid`") == 1
    assert err.splitlines()[-1] == "1 error"


def test_graph_size_limit(dslc, monkeypatch):
    monkeypatch.setattr("dslc.elaborate.MAX_NODES", 10)
    rc, out, err = dslc(IMAGE + "y = image -> (relu -> tanh) * 20 -> rleu\n")
    assert rc == 1
    assert err == golden("""
        error: the network has more than 10 operations
          --> prog.net:2:23
           |
         2 | y = image -> (relu -> tanh) * 20 -> rleu
           |                       ^^^^ the limit is reached here
           = limit: 10 graph nodes
           = help: check the repeat counts (`* n`), nested repetitions and blocks repeated inside blocks

        1 error
        """)


@pytest.mark.slow
def test_nested_repetition_stops_at_the_graph_size_limit(dslc):
    rc, out, err = dslc("input x: [4]\ny = x -> ((relu * 1000) * 1000) * 1000\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: the network has more than 100,000 operations"
    assert err.splitlines()[-1] == "1 error"


# ---- the command line and files ------------------------------------------------------------------

def test_set_of_an_unknown_parameter(dslc):
    rc, out, err = dslc("network t(classes = 10)\n" + IMAGE + "y = image -> flatten -> dense(classes)\n",
                        "--set", "clases=3")
    assert rc == 1
    assert err == golden("""
        error: `--set clases=...` names no network parameter or symbolic dimension
          = parameters: classes
          = help: did you mean `classes`?

        1 error
        """)


def test_set_without_a_value(dslc):
    rc, out, err = dslc("network t(classes = 10)\n" + IMAGE, "--set", "classes")
    assert rc == 2
    assert err == "error: `--set classes` is not of the form name=value\n  = help: e.g. --set classes=10\n"


def test_set_changes_a_parameter(dslc):
    rc, out, err = dslc("network t(classes = 10)\n" + IMAGE + "y = image -> flatten -> dense(classes)\n",
                        "--set", "classes=3")
    assert rc == 0
    assert "[N, 3]" in out


def test_network_parameter_without_default(dslc):
    rc, out, err = dslc("network t(classes)\n" + IMAGE + "y = image -> flatten -> dense(classes)\n")
    assert rc == 1
    assert err.splitlines()[:6] == [
        "error: network parameter `classes` has no default and was not set",
        "  --> prog.net:1:11",
        "   |",
        " 1 | network t(classes)",
        "   |           ^^^^^^^ needs a value",
        "   = help: give a default (`classes = ...`) or pass `--set classes=...`"]


def test_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "nope.net"]) == 2
    assert capsys.readouterr().err == golden("""
        error: no such file: nope.net
          = help: check the path; the model zoo is in models/
        """)


def test_directory_instead_of_a_file(tmp_path, capsys):
    assert main(["compile", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path} is a directory, not a .net file\n"


def test_bad_flag(dslc, capsys):
    rc = main(["compile", "prog.net", "--frobnicate"])
    assert rc == 2
    assert capsys.readouterr().err == golden("""
        error: unrecognized arguments: --frobnicate
          = help: run `dslc compile --help`
        """)


def test_binary_file(dslc):
    rc, out, err = dslc(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert rc == 1
    assert err == golden("""
        error: prog.net is not UTF-8 text: byte 0x89 at line 1, column 1
          = help: a .net file is plain text; save it as UTF-8

        1 error
        """)


def test_latin1_file_names_the_line_and_column(dslc):
    rc, out, err = dslc(IMAGE.encode() + b"y = image -> relu # caf\xe9\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: prog.net is not UTF-8 text: byte 0xe9 at line 2, column 24"


def test_nul_byte(dslc):
    rc, out, err = dslc(IMAGE.encode() + b"y = image\x00 -> relu\n")
    assert rc == 1
    assert err.splitlines()[0] == "error: prog.net is not UTF-8 text: byte 0x00 at line 2, column 10"


def test_nul_byte_after_multibyte_characters(dslc):
    rc, out, err = dslc((IMAGE.rstrip("\n") + " # \u00e9\u00e9\u00e9\ny\x00\n").encode("utf-8"))
    assert err.splitlines()[0] == "error: prog.net is not UTF-8 text: byte 0x00 at line 2, column 2"


def test_import_of_a_missing_file(dslc):
    rc, out, err = dslc('import "blocks.net"\n' + IMAGE + "y = image -> relu\n")
    assert rc == 1
    lines = err.splitlines()
    assert lines[0].startswith("error: cannot import `blocks.net`: ")
    assert lines[1:6] == ["  --> prog.net:1:1",
                          "   |",
                          ' 1 | import "blocks.net"',
                          "   | ^^^^^^^^^^^^^^^^^^^ imported here",
                          "   = help: paths are relative to ."]


def test_syntax_error_in_an_imported_file_points_into_it(dslc, tmp_path):
    (tmp_path / "blocks.net").write_text("block b(c) {\n  conv(c 3x3)\n}\n")
    rc, out, err = dslc('import "blocks.net"\n' + IMAGE + "y = image -> b(4)\n")
    assert rc == 1
    assert err.splitlines()[1:4] == ["  --> blocks.net:2:10", "   |", " 2 |   conv(c 3x3)"]


def test_block_from_an_import_is_usable(dslc, tmp_path):
    (tmp_path / "blocks.net").write_text("block b(c) { conv(c, 3x3, pad = 1) -> relu }\n")
    rc, out, err = dslc('import "blocks.net"\n' + IMAGE + "y = image -> b(4)\n")
    assert rc == 0, err
    assert "[N, 4, 8, 8]" in out


# ---- the same through a real process -------------------------------------------------------------

def test_subprocess_syntax_error(tmp_path):
    (tmp_path / "prog.net").write_text(IMAGE + "y = image -> conv(4, 3x3) -> relu $\n")
    proc = run_module(tmp_path, "compile", "prog.net")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[:5] == [
        "error: unexpected character `$`",
        "  --> prog.net:2:35",
        "   |",
        " 2 | y = image -> conv(4, 3x3) -> relu $",
        "   |                                   ^ not part of the language"]


def test_subprocess_shape_error(tmp_path):
    (tmp_path / "prog.net").write_text(IMAGE + "y = image -> residual { conv(4, 3x3, pad = 1) }\n")
    proc = run_module(tmp_path, "compile", "prog.net")
    assert proc.returncode == 1
    assert "   = help: add `shortcut auto` for a 1x1 projection" in proc.stderr.splitlines()
    assert proc.stderr.endswith("\n1 error\n")


def test_subprocess_binary_file_has_no_traceback(tmp_path):
    (tmp_path / "prog.net").write_bytes(bytes(range(256)))
    proc = run_module(tmp_path, "compile", "prog.net")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    # byte 10 ends line 1, so byte 128 is the 118th character of line 2
    assert proc.stderr.startswith("error: prog.net is not UTF-8 text: byte 0x80 at line 2, column 118")


@pytest.mark.slow
def test_subprocess_missing_file_and_bad_flag(tmp_path):
    assert run_module(tmp_path, "compile", "nope.net").returncode == 2
    proc = run_module(tmp_path, "compile", "nope.net", "--frobnicate")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unrecognized arguments: --frobnicate")


# ---- the renderer and suggestions ---------------------------------------------------------------

def test_span_over_several_lines_underlines_to_the_end_of_its_first():
    source = Source("f.net", "x = a ->\n  relu\n")
    d = Diagnostic("message", Span(source, 1, 5, 2, 7), label="label")
    assert d.render().splitlines()[3:5] == [" 1 | x = a ->", "   |     ^^^^ label"]


def test_diagnostic_without_location_renders_notes_and_help():
    d = Diagnostic("message", notes=["a note"], help="a hint")
    assert d.render() == "error: message\n  = a note\n  = help: a hint"


def test_edit_distance_counts_a_swap_as_one_edit():
    assert edit_distance("rleu", "relu") == 1
    assert edit_distance("conv", "conv") == 0
    assert edit_distance("", "abc") == 3
    assert edit_distance("kitten", "sitting") == 3


@pytest.mark.parametrize("name, candidates, hint", [
    ("rleu", ["relu", "elu"], "did you mean `relu`?"),
    ("strid", ["stride", "pad"], "did you mean `stride`?"),
    ("Conv", ["conv"], "did you mean `conv`?"),
    ("e", ["c", "d"], ""),                       # one letter for another is no likeness
    ("x", ["xy"], "did you mean `xy`?"),
    ("frobnicate", ["conv", "relu"], ""),
])
def test_did_you_mean(name, candidates, hint):
    assert did_you_mean(name, candidates) == hint
