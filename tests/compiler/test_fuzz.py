"""Fuzzing the whole command-line path, `dslc compile FILE`, in-process.

Whatever the file holds, the compiler answers with a summary or with diagnostics and an exit
code of 0, 1 or 2: never a Python traceback, never "internal error" (exit 3). Four sources
of input, from least to most program-like:

  (a) arbitrary text and arbitrary bytes;
  (b) mutations of real programs (the model zoo and a few small embedded programs):
      tokens and characters deleted, inserted, swapped, replaced;
  (c) programs shaped by the grammar: random chains of the registry's ops with random
      arguments, blocks, residuals, branches, repeats, labels and losses.

Every run also checks the shape of the answer: exit 1 ends with the "N errors" count of the
`error:` lines printed, exit 0 prints no error, exit 2 is one usage error.
"""
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dslc.cli import main
from dslc.ops import OPS

REPO = Path(__file__).resolve().parents[2]

# Each strategy runs ~150 examples; a compile takes milliseconds, so the file stays well under a minute.
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


SMALL_PROGRAMS = [
    """network small(classes = 10, width = 8)
input image: [1, 12, 12]
input label: int
block unit(c, stride = 1) {
  residual { conv(c, 3x3, stride = stride, pad = 1) -> batchnorm -> relu } shortcut auto
}
features = image -> stem: conv(width, 3x3, pad = 1) -> unit(width) * 2 -> unit(2 * width, stride = 2)
mixed = features -> concat { identity | maxpool(3x3, stride = 1, pad = 1) -> conv(4, 1x1) }
logits = mixed -> avgpool(global) -> dropout(0.5) -> dense(classes)
loss cross_entropy(logits, label) + 0.5 * hinge(logits, label)
train {
  optimizer sgd(lr = 0.1, momentum = 0.9)
  epochs 2
}
""",
    """network seq(vocab = 20, hidden = 16)
input text: int[T]
input next: int[T]
logits = text -> embed(vocab, 8) -> gru(hidden, layers = 2) -> dense(vocab)
loss cross_entropy(logits, next)
""",
    """input x: [4]
input y: [2]
h = x -> dense(8) -> leaky_relu(0.1) -> dense(8) -> elu
a = h -> sigmoid
b = h -> tanh
out = add(a, b) -> dense(2)
loss mse(out, y)
""",
    """input image: [3, 8, 8]
p1 = image -> conv(4, 3x3, pad = same) -> maxpool(2x2)
up = p1 -> maxunpool(p1) -> deconv(3, 2x2, stride = 2) -> upsample(2, mode = bilinear)
output up
""",
]


def _zoo_programs():
    return [p.read_text() for p in sorted((REPO / "models").glob("*.net"))]


SEED_PROGRAMS = _zoo_programs() + SMALL_PROGRAMS

# Tokens of the language; whitespace and comments are tokens too, so joining gives the text back.
TOKEN = re.compile(r'\s+|#[^\n]*|"[^"\n]*"|\d+x\d+|\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?'
                   r'|[A-Za-z_]\w*|->|//|.', re.S)
# What a mutation may insert. Large numbers are ones the compiler must refuse (a repeat count
# over 1000, a tensor over the size limit), so no mutant takes long to elaborate.
INSERTABLE = ["(", ")", "{", "}", "[", "]", ",", "=", ":", "->", "*", "|", "+", "-", "/", "//", "%", " ", "\n",
              "0", "1", "2", "-1", "3x3", "0x0", "0.5", "1e999", "99999999999", '"x.net"',
              "in", "global", "same", "true", "N", "T", "residual", "shortcut", "auto", "concat", "sum",
              "block", "network", "input", "int", "loss", "output", "train", "import",
              *sorted(OPS)]


def _compile(path: Path, capsys, *flags) -> int:
    rc = main(["compile", str(path), *flags])
    out, err = capsys.readouterr()
    shown = out + err
    assert rc in (0, 1, 2), shown
    assert "Traceback" not in shown and "internal error" not in shown, shown
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if rc == 0:
        assert not errors, err
    elif rc == 1:
        count = len(errors)
        assert err.splitlines()[-1] == f"{count} error{'s' * (count != 1)}", err
    else:
        assert len(errors) == 1, err
    return rc


# ---- (a) arbitrary text and bytes ---------------------------------------------------------------

@pytest.mark.slow
@FUZZ
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_arbitrary_text(text, tmp_path, capsys):
    path = tmp_path / "fuzz.net"
    path.write_bytes(text.encode("utf-8"))
    _compile(path, capsys)


@pytest.mark.slow
@FUZZ
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(data, tmp_path, capsys):
    path = tmp_path / "fuzz.net"
    path.write_bytes(data)
    _compile(path, capsys)


@pytest.mark.slow
@FUZZ
@given(tokens=st.lists(st.sampled_from(INSERTABLE), max_size=60))
def test_token_soup(tokens, tmp_path, capsys):
    path = tmp_path / "fuzz.net"
    path.write_text(" ".join(tokens))
    _compile(path, capsys)


# ---- (b) mutations of real programs -----------------------------------------------------------

@st.composite
def mutants(draw):
    tokens = TOKEN.findall(draw(st.sampled_from(SEED_PROGRAMS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "swap", "duplicate",
                                     "delete_char", "insert_char"]))
        i = draw(st.integers(0, len(tokens) - 1)) if tokens else 0
        if kind == "delete" and tokens:
            del tokens[i]
        elif kind == "insert":
            tokens.insert(i, draw(st.sampled_from(INSERTABLE)))
        elif kind == "replace" and tokens:
            tokens[i] = draw(st.sampled_from(INSERTABLE))
        elif kind == "swap" and tokens:
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "duplicate" and tokens:
            tokens.insert(i, tokens[i])
        elif kind in ("delete_char", "insert_char") and tokens and tokens[i]:
            word = tokens[i]
            k = draw(st.integers(0, len(word) - 1))
            ch = draw(st.characters(codec="utf-8")) if kind == "insert_char" else ""
            tokens[i] = word[:k] + ch + word[k + (kind == "delete_char"):]
    return "".join(tokens)


@pytest.mark.slow
@FUZZ
@given(text=mutants())
def test_mutated_programs(text, tmp_path, capsys):
    path = tmp_path / "fuzz.net"
    path.write_bytes(text.encode("utf-8"))
    _compile(path, capsys)


# ---- (c) programs shaped by the grammar ---------------------------------------------------------

# A value of each attribute kind: mostly one of the first four, plausible ones; now and then
# one of the rest, which the checker must refuse.
KIND_VALUES = {
    "int": ["1", "2", "3", "4", "8", "width", "2 * width", "width // 3", "0", "-1"],
    "float": ["0.5", "0.1", "1e-3", "0.25", "2", "0", "-1.5"],
    "bool": ["true", "false", "true", "false", "1"],
    "pair": ["1x1", "2x2", "3x3", "1", "2", "(1, 2)", "0x3", "(2, 2, 2)"],
    "window": ["2x2", "3x3", "2", "global"],
    "pad": ["0", "1", "same", "(1, 0)", "-1"],
    "ints": ["4", "2, 2", "16", "-1", "(4, 4)"],
    "floats": ["(1.0, 0.5)", "1.0"],
    "axis": ["1", "-1", "0", "2", "5"],
    "enum": ["nearest", "bilinear", "zzz"],
}
ANY_VALUE = sorted({v for values in KIND_VALUES.values() for v in values} | {"in", "x", "c"})
CHAIN_OPS = sorted(n for n, op in OPS.items() if not op.is_loss)
LOSSES = sorted(n for n, op in OPS.items() if op.is_loss and n != "loss_sum")
# Ops that fit each kind of input, so that a good share of the programs compile and reach the
# summary; any other op still turns up now and then.
FITTING_OPS = {
    "image": ["conv", "conv", "conv", "maxpool", "avgpool", "batchnorm", "relu", "lrn", "prelu", "dropout",
              "upsample", "deconv", "maxout", "identity", "tanh"],
    "vector": ["dense", "dense", "relu", "sigmoid", "tanh", "elu", "leaky_relu", "dropout", "batchnorm", "softmax"],
    "sequence": ["lstm", "gru", "rnn", "dense", "relu", "tanh", "dropout"],
}
# The last step before a loss, per kind, so that logits meet integer labels.
HEADS = {"image": "-> flatten -> dense(classes)", "vector": "-> dense(classes)",
         "sequence": "-> dense(classes)"}


@st.composite
def value_for(draw, attr):
    if draw(st.integers(0, 49)) == 0:
        return draw(st.sampled_from(ANY_VALUE))
    values = KIND_VALUES.get(attr.kind, ANY_VALUE)
    return draw(st.sampled_from(values[:4]) if draw(st.integers(0, 9)) else st.sampled_from(values))


@st.composite
def op_call(draw, kind, tensors):
    """`name(args)`: required attributes in order, optional ones by name; rarely a missing or
    unknown argument, a misspelled op or a tensor where none belongs."""
    fitting = draw(st.integers(0, 9)) > 0
    name = draw(st.sampled_from(FITTING_OPS[kind] if fitting else CHAIN_OPS))
    attrs = OPS[name].attrs
    args = [draw(value_for(a)) for a in attrs if a.required]
    if args and draw(st.integers(0, 39)) == 0:
        args.pop()
    for a in attrs:
        if not a.required and draw(st.integers(0, 3)) == 0:
            args.append(f"{a.name} = {draw(value_for(a))}")
    if OPS[name].max_inputs != 1 and tensors or draw(st.integers(0, 59)) == 0:
        args.insert(0, draw(st.sampled_from(tensors)))
    if draw(st.integers(0, 59)) == 0:
        args.append(f"{draw(st.sampled_from(['stride', 'pad', 'foo', 'axis']))} = 1")
    if draw(st.integers(0, 79)) == 0:
        name = name[::-1]
    if args or name in ("concat", "sum") or draw(st.booleans()):
        return f"{name}({', '.join(args)})"
    return name


@st.composite
def chain(draw, kind, tensors, depth=0):
    """A chain of steps: op calls, sometimes labelled, repeated, grouped, a residual or branches."""
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        form = draw(st.integers(0, 15))
        if form == 0 and depth < 2:
            body = draw(chain(kind, tensors, depth + 1))
            shortcut = draw(st.sampled_from(["", " shortcut auto", " shortcut auto", " shortcut { identity }"]))
            step = f"residual {{ {body} }}{shortcut}"
        elif form == 1 and depth < 2:
            branches = [draw(chain(kind, tensors, depth + 1)) for _ in range(draw(st.integers(1, 3)))]
            step = f"{draw(st.sampled_from(['concat', 'sum']))} {{ {' | '.join(branches)} }}"
        elif form == 2 and depth < 2:
            step = f"({draw(chain(kind, tensors, depth + 1))})"
        else:
            step = draw(op_call(kind, tensors))
        if draw(st.integers(0, 6)) == 0:
            step = f"{step} * {draw(st.integers(0, 3) if draw(st.integers(0, 9)) == 0 else st.integers(1, 3))}"
        if draw(st.integers(0, 6)) == 0:
            step = f"l{draw(st.integers(0, 5))}: {step}"
        steps.append(step)
    return " -> ".join(steps)


@st.composite
def programs(draw):
    """A whole program and the flags to compile it with (`--set T=...` may bind a sequence length)."""
    lines, flags = [], []
    header = "network fuzz(width = 4, classes = 3)"
    if draw(st.integers(0, 9)) == 0:
        header = draw(st.sampled_from(["network fuzz(classes = 3)", "network fuzz(width, classes = 3)"]))
    lines.append(header)
    kind = draw(st.sampled_from(list(FITTING_OPS)))
    stem = ""
    if kind == "image":
        c, h = draw(st.integers(1, 4)), draw(st.integers(1, 12))
        lines.append(f"input x: [{c}, {h}, {draw(st.sampled_from([h, h, h + 1, 1]))}]")
    elif kind == "vector":
        lines.append(f"input x: [{draw(st.integers(1, 16))}]")
    else:
        lines.append(f"input x: {'float' if draw(st.integers(0, 9)) == 0 else 'int'}[T]")
        if draw(st.booleans()):     # bound, the length is a number; unbound, it stays symbolic
            flags += ["--set", f"T={draw(st.integers(1, 6))}"]
        stem = "embed(5, 4) -> "
    lines.append("input label: int" + ("[T]" if kind == "sequence" else ""))
    tensors = ["x"]
    if draw(st.booleans()):
        lines.append(f"block b(c, stride = 1) {{ {draw(chain(kind, ['in']))} }}")
        if draw(st.booleans()):
            lines.append(f"y0 = x -> {stem}b({draw(st.sampled_from(['2', '4', 'width', 'c = 3', '']))})")
            tensors.append("y0")
    for k in range(1, draw(st.integers(1, 3)) + 1):
        source = draw(st.sampled_from(tensors))
        lines.append(f"y{k} = {source} -> {stem if source == 'x' else ''}{draw(chain(kind, tensors))}")
        tensors.append(f"y{k}")
    if draw(st.integers(0, 2)):
        lines.append(f"logits = {tensors[-1]} {HEADS[kind]}")
        second = draw(st.sampled_from(["", "", " + 0.5 * hinge(logits, label)", " + mse(logits, logits)"]))
        loss = "cross_entropy" if draw(st.integers(0, 4)) else draw(st.sampled_from(LOSSES))
        lines.append(f"loss {loss}(logits, {draw(st.sampled_from(['label', 'label', 'x']))}){second}")
        tensors.append("logits")
    if draw(st.integers(0, 3)) == 0:
        lines.append(f"output {', '.join(draw(st.lists(st.sampled_from(tensors + ['nope']), min_size=1, max_size=3)))}")
    return "\n".join(lines) + "\n", flags


@pytest.mark.slow
@FUZZ
@given(program=programs())
def test_grammar_shaped_programs(program, tmp_path, capsys):
    text, flags = program
    path = tmp_path / "fuzz.net"
    path.write_text(text)
    _compile(path, capsys, *flags)
