"""Text -> syntax tree. Lark (LALR) parses with positions kept; a Transformer builds the AST.

Syntax errors become diagnostics that name the expected tokens in words, never Lark internals.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from . import ast
from .diagnostics import CompileError, Diagnostic, Source, Span

# What a terminal is called in an error message.
_TERMINAL_WORDS = {
    "NAME": "a name", "INT": "a number", "FLOAT": "a number", "KERNEL": "a size like 3x3",
    "STRING": "a quoted path", "DTYPE": "`int` or `float`", "$END": "end of file",
}


def _grammar_text() -> str:
    try:   # installed: the grammar ships inside the package as dslc/grammar/dslc.lark
        return resources.files("dslc.grammar").joinpath("dslc.lark").read_text()
    except (ModuleNotFoundError, FileNotFoundError):   # a source checkout run without installing
        return (Path(__file__).resolve().parent.parent / "grammar" / "dslc.lark").read_text()


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(_grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=False)


def _span(source, meta_or_token) -> Span:
    m = meta_or_token
    return Span(source, m.line, m.column, m.end_line, m.end_column)


def _describe_terminal(lark: Lark, name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        term = lark.get_terminal(name)
    except KeyError:
        return name.lower()
    if term.pattern.type == "str":
        return f"`{term.pattern.value}`"
    return name.lower()


def _expected_words(lark, names) -> str:
    words = sorted({_describe_terminal(lark, n) for n in names if not n.startswith("__IGNORE")})
    # Keep the message short: names and punctuation first.
    if len(words) > 8:
        words = words[:8] + ["..."]
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _found(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    v = str(tok)
    return f"`{v}`" if len(v) <= 30 else f"`{v[:27]}...`"


def syntax_diagnostic(source: Source, err: UnexpectedInput) -> Diagnostic:
    lark = _lark()
    if isinstance(err, UnexpectedCharacters):
        line = source.line(err.line)
        ch = line[err.column - 1] if 0 < err.column <= len(line) else "?"
        span = Span(source, err.line, err.column, err.line, err.column + 1)
        shown = repr(ch)[1:-1] if not ch.isprintable() else ch
        return Diagnostic(f"unexpected character `{shown}`", span, label="not part of the language",
                          help=("names are letters, digits and `_`; comments start with `#`"
                                if ch not in "\"'" else "strings use double quotes and end on the same line"))
    if isinstance(err, UnexpectedEOF):
        lines = source.text.splitlines() or [""]
        ln = len(lines)
        col = len(lines[-1]) + 1
        span = Span(source, ln, max(1, col - 1), ln, col)
        return Diagnostic("unexpected end of file", span, label="the file ends here",
                          notes=[f"expected {_expected_words(lark, err.expected)}"],
                          help="a `{` or `(` may be missing its closing partner")
    tok = err.token
    if tok.type == "$END":
        lines = source.text.splitlines() or [""]
        ln = len(lines)
        col = len(lines[-1]) + 1
        span = Span(source, ln, max(1, col - 1), ln, max(2, col))
    else:
        span = Span(source, tok.line, tok.column, tok.end_line or tok.line,
                    tok.end_column or tok.column + len(str(tok)))
    expected = _expected_words(lark, err.expected)
    hint = _syntax_hint(tok, err.expected)
    return Diagnostic(f"expected {expected}, found {_found(tok)}", span, label="unexpected here", help=hint)


def _syntax_hint(tok: Token, expected) -> str:
    exp = set(expected)
    if tok.type == "$END" and "RBRACE" in exp:
        return "a `{` is never closed"
    if tok.type == "$END" and "RPAR" in exp:
        return "a `(` is never closed"
    if tok.type == "NAME" and "__ANON_0" in exp or (tok.type == "NAME" and "EQUAL" in exp):
        return "statements are `name = chain`; a chain joins steps with `->`"
    if tok.type in ("EQUAL",):
        return "only a name can be assigned: `name = input -> op -> ...`"
    if tok.type == "COLON":
        return "labels name a step inside a chain: `-> layer1: basic(64) * 2`"
    if tok.type in ("INT", "FLOAT") and "NAME" in exp:
        return "a chain starts from a tensor name; numbers go inside an op's parentheses"
    return "see the language reference in docs/LANGUAGE.md"


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def sp(self, meta):
        return _span(self.source, meta)

    def tsp(self, tok):
        return _span(self.source, tok)

    # expressions
    def int(self, meta, c):
        return ast.Num(int(c[0]), self.tsp(c[0]))

    def float(self, meta, c):
        return ast.Num(float(c[0]), self.tsp(c[0]))

    def pair(self, meta, c):
        a, b = str(c[0]).split("x")
        return ast.Pair((int(a), int(b)), self.tsp(c[0]))

    def string(self, meta, c):
        return ast.Str(str(c[0])[1:-1], self.tsp(c[0]))

    def name(self, meta, c):
        return ast.Name(str(c[0]), self.tsp(c[0]))

    def call_expr(self, meta, c):
        return ast.CallExpr(str(c[0]), c[1], self.sp(meta))

    def _bin(op):
        def f(self, meta, c):
            return ast.BinOp(op, c[0], c[1], self.sp(meta))
        return f
    add, sub, mul, div, floordiv, mod = _bin("+"), _bin("-"), _bin("*"), _bin("/"), _bin("//"), _bin("%")
    del _bin

    def neg(self, meta, c):
        return ast.Neg(c[0], self.sp(meta))

    def tuple(self, meta, c):
        return ast.TupleExpr(list(c), self.sp(meta))

    # chains
    def args(self, meta, c):
        return list(c)

    def kwarg(self, meta, c):
        return ast.Arg(str(c[0]), c[1], self.sp(meta))

    def posarg(self, meta, c):
        return ast.Arg(None, c[0], self.sp(meta))

    def call(self, meta, c):
        return ast.Call(str(c[0]), c[1] if len(c) > 1 else [], self.sp(meta), self.tsp(c[0]))

    def _kw_call(kind):
        def f(self, meta, c):
            s = self.sp(meta)
            return ast.Call(kind, c[0], s, Span(s.source, s.line, s.col, s.line, s.col + len(kind)))
        return f
    concat_call, sum_call = _kw_call("concat"), _kw_call("sum")
    del _kw_call

    def chain(self, meta, c):
        return ast.Chain(list(c), self.sp(meta))

    def repeat(self, meta, c):
        return ast.Repeat(c[0], c[1], self.sp(meta))

    def labelled(self, meta, c):
        return ast.Labelled(str(c[0]), c[1], self.sp(meta))

    def group(self, meta, c):
        return ast.Group(c[0], self.sp(meta))

    def body(self, meta, c):
        return list(c)

    def shortcut_auto(self, meta, c):
        return ("auto", self.sp(meta))

    def shortcut_body(self, meta, c):
        return (c[0], self.sp(meta))

    def residual(self, meta, c):
        shortcut, ssp = (c[1] if len(c) > 1 else (None, None))
        return ast.Residual(c[0], shortcut, self.sp(meta), ssp)

    def branches(self, meta, c):
        return list(c)

    def concat_block(self, meta, c):
        return ast.Branches("concat", c[0], self.sp(meta))

    def sum_block(self, meta, c):
        return ast.Branches("sum", c[0], self.sp(meta))

    # statements
    def param_list(self, meta, c):
        return list(c)

    def param(self, meta, c):
        return ast.Param(str(c[0]), c[1] if len(c) > 1 else None, self.sp(meta))

    def assign(self, meta, c):
        return ast.Assign(str(c[0]), c[1], self.sp(meta), self.tsp(c[0]))

    def import_stmt(self, meta, c):
        return ast.Import(str(c[0])[1:-1], self.sp(meta))

    def network_decl(self, meta, c):
        return ast.NetworkDecl(str(c[0]), c[1] if len(c) > 1 else [], self.sp(meta))

    def shape(self, meta, c):
        return list(c)

    def typed_input(self, meta, c):
        return (str(c[0]), c[1] if len(c) > 1 else [])

    def float_input(self, meta, c):
        return ("float", c[0])

    def input_decl(self, meta, c):
        dtype, shape = c[1]
        return ast.InputDecl(str(c[0]), dtype, shape, self.sp(meta), self.tsp(c[0]))

    def block_def(self, meta, c):
        return ast.BlockDef(str(c[0]), c[1], c[2], self.sp(meta), self.tsp(c[0]))

    def output_decl(self, meta, c):
        return ast.OutputDecl([(str(t), self.tsp(t)) for t in c], self.sp(meta))

    def loss_weight(self, meta, c):
        return float(c[0])

    def loss_term(self, meta, c):
        if len(c) == 2:
            return ast.LossTerm(c[0], c[1], self.sp(meta))
        return ast.LossTerm(1.0, c[0], self.sp(meta))

    def loss_decl(self, meta, c):
        return ast.LossDecl(list(c), self.sp(meta))

    def train_item(self, meta, c):
        return ast.TrainItem(str(c[0]), c[1], self.sp(meta))

    def train_call(self, meta, c):
        return ast.TrainItem(str(c[0]), ast.CallExpr(str(c[0]), c[1], self.sp(meta)), self.sp(meta))

    def train_section(self, meta, c):
        return ast.TrainSection(list(c), self.sp(meta))

    def start(self, meta, c):
        return ast.Program(self.source, list(c))


def parse(source: Source) -> ast.Program:
    """Parse one source; raises CompileError with a syntax diagnostic on bad input."""
    try:
        tree = _lark().parse(source.text)
    except UnexpectedInput as err:
        raise CompileError([syntax_diagnostic(source, err)]) from None
    try:
        return _ToAst(source).transform(tree)
    except VisitError as err:  # a literal the grammar accepts but Python cannot hold (e.g. 1e999999 is fine; huge ints are)
        raise CompileError([Diagnostic(f"cannot read this program: {err.orig_exc}", None)]) from None


def read_source(path: str) -> Source:
    """Read a .net file as UTF-8 text; OSError / UnicodeDecodeError are the caller's to report."""
    data = Path(path).read_bytes()
    text = data.decode("utf-8")
    if "\x00" in text:
        raise UnicodeDecodeError("utf-8", data, text.index("\x00"), text.index("\x00") + 1, "NUL byte in text")
    return Source(path, text)
