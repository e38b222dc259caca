"""Text -> syntax tree. Lark (LALR) parses with positions kept; a Transformer builds the AST.

Syntax errors become diagnostics that name the expected tokens in words, never Lark internals.

Building the LALR tables from the grammar takes ~0.1 s, a visible share of a warm `dslc run`,
so the built parser is cached on disk (Lark's `cache` option) under the user's cache directory
($XDG_CACHE_HOME/dslc, else ~/.cache/dslc), never in the source tree. Lark stores a hash of
the grammar, the options and its own and Python's versions in the file and rebuilds (and
rewrites) the parser when they differ or the file cannot be read; the file name also carries a
digest of the grammar, so checkouts with different grammars keep separate files. Where the
directory cannot be created, the parser is built every time.

The cache file is a pickle, and Lark unpickles part of it before comparing its hash, so a file
someone else wrote there would run their code as the user. Hence the cache is used only from a
directory that is the user's own and closed to everyone else (mode 0700, checked before every
use), from a file the user owns that nobody else can write, and only when the file's SHA-256
matches the one dslc recorded beside it (`.sha256`) after Lark wrote it: a file changed since,
or left half-written, is deleted and rebuilt without being read.
"""
from __future__ import annotations

import codecs
import errno
import functools
import hashlib
import math
import os
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast
from .diagnostics import CompileError, Diagnostic, Source, Span

# What a terminal is called in an error message.
_TERMINAL_WORDS = {
    "NAME": "a name", "INT": "a number", "FLOAT": "a number", "KERNEL": "a size like 3x3",
    "STRING": "a quoted path", "DTYPE": "`int` or `float`", "$END": "end of file",
    "COMPARE": "a comparison (`==`, `<`, ...)",
}
# Binary operators may follow any complete expression; listing them in "expected ..." buries
# the tokens that would actually end it (`,`, `)`), so they are named only when nothing else fits.
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "PERCENT", "__ANON_1",   # __ANON_1 is `//`
              "COMPARE", "AND", "OR"}
# Brackets: each opening terminal's closing one and back, and the characters of both.
_CLOSERS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_OPENERS = {closer: opener for opener, closer in _CLOSERS.items()}
_BRACKET_TEXT = {"LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]", "LBRACE": "{", "RBRACE": "}"}
# Whole-number literals are sizes, counts and seeds: they must fit in 64 bits.
MAX_INT_LITERAL = 2**63 - 1


def _grammar_text() -> str:
    try:   # installed: the grammar ships inside the package as dslc/grammar/dslc.lark
        return resources.files("dslc.grammar").joinpath("dslc.lark").read_text()
    except (ModuleNotFoundError, FileNotFoundError):   # a source checkout run without installing
        return (Path(__file__).resolve().parent.parent / "grammar" / "dslc.lark").read_text()


def grammar_cache_path(grammar: str) -> str | None:
    """Where the parser built from `grammar` is cached, its directory created (mode 0700); None
    when it cannot be, or when the directory is not the user's own and private."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(cache_home, "dslc")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _private_directory(directory):
            return None
    except OSError:
        return None
    digest = hashlib.sha256(grammar.encode("utf-8")).hexdigest()[:16]
    return os.path.join(directory, f"grammar-{digest}.lark")


def _private_directory(directory: str) -> bool:
    """Whether `directory` is a real directory (not a link) owned by this user and closed to
    others. One of ours that others could enter (made by an older dslc under a loose umask) is
    closed, and the cache files in it, which anyone could have planted meanwhile, are deleted."""
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)
        for entry in os.listdir(directory):
            if entry.startswith("grammar-"):
                os.unlink(os.path.join(directory, entry))
    return True


def _trusted_cache_file(path: str) -> bool:
    """Whether the file at `path` may be handed to Lark (which unpickles it): a regular file
    this user owns, writable by no one else, whose SHA-256 is the one recorded beside it."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return False
        with open(path + ".sha256", "rb") as f:
            recorded = f.read(64).decode("ascii", "replace")
        return _file_sha256(path) == recorded
    except OSError:
        return False


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build_lark(grammar: str) -> Lark:
    """The LALR parser for `grammar`, loaded from the disk cache when that holds it for this
    grammar and passes the checks above; otherwise built (and the cache rewritten)."""
    path = grammar_cache_path(grammar)
    if path is not None and os.path.lexists(path) and not _trusted_cache_file(path):
        try:
            os.unlink(path)
        except OSError:
            path = None        # cannot be replaced: build without the cache
    lark = Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False, cache=path or False)
    if path is not None:
        try:
            digest = _file_sha256(path)
            if not _trusted_cache_file(path):
                tmp = f"{path}.sha256.{os.getpid()}"
                with open(tmp, "w", encoding="ascii") as f:
                    f.write(digest)
                os.replace(tmp, path + ".sha256")
        except OSError:
            pass              # the cache is an optimisation: a failed record only means a rebuild next time
    return lark


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return build_lark(_grammar_text())


def _span(source, meta_or_token) -> Span:
    m = meta_or_token
    return Span(source, m.line, m.column, m.end_line, m.end_column)


@dataclass(frozen=True)
class EndOfFileSpan(Span):
    """The end of a file's text, just past its last token: the caret sits there, while the
    `file:line:col` location names the last character, since a location names a character."""

    @property
    def where(self) -> str:
        return f"{self.source.path}:{self.line}:{max(1, self.col - 1)}"


def _end_of_file_span(source: Source, last_token: Token | None) -> EndOfFileSpan:
    """Just past `last_token` (Lark's end-of-input token borrows the last real token's
    position), or past the last character of the text when there is none."""
    if last_token is not None and last_token.end_line is not None:
        line, col = last_token.end_line, last_token.end_column
    else:
        lines = source.text.rstrip().split("\n")
        line, col = len(lines), len(lines[-1].removesuffix("\r")) + 1
    return EndOfFileSpan(source, line, col, line, col + 1)


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
    # Tokens in backquotes first, closing brackets last among them (`,` or `)` reads in the
    # order they are written), then the classes of tokens (a name, a number).
    closing = {f"`{_BRACKET_TEXT[c]}`" for c in _CLOSERS.values()}
    words = sorted({_describe_terminal(lark, n) for n in names if not n.startswith("__IGNORE")},
                   key=lambda w: (not w.startswith("`"), w in closing, w))
    # Keep the message short.
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


def _open_brackets(source: Source, before: int) -> list[str]:
    """The brackets still open at character offset `before`, innermost last, as terminal
    names (`LPAR`, ...). A closing bracket with no partner is skipped."""
    stack = []
    for tok in _lark().lex(source.text[:before]):
        if tok.type in _CLOSERS:
            stack.append(tok.type)
        elif tok.type in _OPENERS and _OPENERS[tok.type] in stack:   # closes it and all opened since
            del stack[len(stack) - 1 - stack[::-1].index(_OPENERS[tok.type]):]
    return stack


def _acceptable(err: UnexpectedToken) -> set[str]:
    """The terminals to name in "expected ...". LALR merges the lookaheads of similar states,
    so `err.expected` may list terminals that would fail a step later (a `}` inside
    parentheses), which the interactive parser's trial of each one rules out; taking only
    terminals in both sets also keeps "`(` or a name" where a step starts, without the
    keywords that may start one too."""
    precise = set(err.expected) & err.interactive_parser.accepts()
    names = precise or set(err.expected)
    without_operators = names - _OPERATORS
    return without_operators or names


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
        return Diagnostic("unexpected end of file", _end_of_file_span(source, None), label="the file ends here",
                          notes=[f"expected {_expected_words(lark, err.expected)}"],
                          help="a `{` or `(` may be missing its closing partner")
    tok = err.token
    expected = _acceptable(err)
    if tok.type == "$END":
        span = _end_of_file_span(source, tok)
        label = "the file ends here"
        open_brackets = _open_brackets(source, len(source.text))
    else:
        span = Span(source, tok.line, tok.column, tok.end_line or tok.line,
                    tok.end_column or tok.column + len(str(tok)))
        label = "unexpected here"
        open_brackets = _open_brackets(source, tok.start_pos)
        # `)` with no `(` open; but `[3, 4)` reads better as a `]` expected
        other_closes_here = open_brackets and _CLOSERS[open_brackets[-1]] in expected
        if tok.type in _OPENERS and _OPENERS[tok.type] not in open_brackets and not other_closes_here:
            opener = _BRACKET_TEXT[_OPENERS[tok.type]]
            return Diagnostic(f"unmatched `{tok}`", span, label=f"no `{opener}` before it",
                              help=f"remove it, or add the `{opener}` it closes")
    hint = _syntax_hint(tok, expected, open_brackets[-1] if open_brackets else None)
    return Diagnostic(f"expected {_expected_words(lark, expected)}, found {_found(tok)}", span, label=label,
                      help=hint)


_VALUE_TOKENS = {"NAME", "INT", "FLOAT", "KERNEL", "STRING"}


def _syntax_hint(tok: Token, exp: set, innermost_open: str | None) -> str:
    if tok.type == "$END" and "RBRACE" in exp:
        return "a `{` is never closed"
    if tok.type == "$END" and "RPAR" in exp:
        return "a `(` is never closed"
    if tok.type in _VALUE_TOKENS and "COMMA" in exp:
        return "a `,` may be missing before it"
    if innermost_open is not None and _CLOSERS[innermost_open] in exp and tok.type not in exp:
        opener, closer = _BRACKET_TEXT[innermost_open], _BRACKET_TEXT[_CLOSERS[innermost_open]]
        return f"a `{opener}` may be missing its `{closer}`"
    if tok.type == "NAME" and "__ANON_0" in exp or (tok.type == "NAME" and "EQUAL" in exp):
        return "statements are `name = chain`; a chain joins steps with `->`"
    if tok.type in ("EQUAL",):
        return "only a name can be assigned: `name = input -> op -> ...`"
    if tok.type == "COMPARE":
        return "comparisons do not chain: write `a < b and b < c`"
    if tok.type == "COLON":
        return "labels name a step inside a chain: `-> layer1: basic(64) * 2`"
    if tok.type in ("INT", "FLOAT") and "NAME" in exp:
        return "a chain starts from a tensor name; numbers go inside an op's parentheses"
    return "see the language reference in docs/LANGUAGE.md"


class _NumberTooLarge(Exception):
    """A literal the grammar accepts whose value no program can use; carries its diagnostic."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


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
    def _whole(self, text: str, tok: Token) -> int:
        # Checked by length first: Python refuses to convert over 4300 digits at all.
        if len(text.lstrip("0")) > len(str(MAX_INT_LITERAL)) or int(text) > MAX_INT_LITERAL:
            raise _NumberTooLarge(Diagnostic("number too large", self.tsp(tok), label="more than 64 bits",
                                             notes=[f"limit: {MAX_INT_LITERAL:,}"],
                                             help="whole numbers are sizes, counts and seeds; check for a typo"))
        return int(text)

    def int(self, meta, c):
        return ast.Num(self._whole(str(c[0]), c[0]), self.tsp(c[0]))

    def float(self, meta, c):
        value = float(c[0])
        if math.isinf(value):
            raise _NumberTooLarge(Diagnostic("number too large", self.tsp(c[0]), label="beyond float range",
                                             help="numbers are sizes, counts and rates; check the exponent"))
        return ast.Num(value, self.tsp(c[0]))

    def pair(self, meta, c):
        a, b = str(c[0]).split("x")
        return ast.Pair((self._whole(a, c[0]), self._whole(b, c[0])), self.tsp(c[0]))

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

    def compare(self, meta, c):
        return ast.Compare(str(c[1]), c[0], c[2], self.sp(meta))

    def or_expr(self, meta, c):
        return ast.BoolOp("or", c[0], c[1], self.sp(meta))

    def and_expr(self, meta, c):
        return ast.BoolOp("and", c[0], c[1], self.sp(meta))

    def not_expr(self, meta, c):
        return ast.Not(c[0], self.sp(meta))

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
            return ast.Call(kind, c[0] if c else [], s, Span(s.source, s.line, s.col, s.line, s.col + len(kind)))
        return f
    concat_call, sum_call, mean_call = _kw_call("concat"), _kw_call("sum"), _kw_call("mean")
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

    def if_stage(self, meta, c):
        return ast.If(c[0], c[1], c[2] if len(c) > 2 else None, self.sp(meta))

    def else_body(self, meta, c):
        return c[0]

    def else_if(self, meta, c):
        return [ast.Chain([c[0]], c[0].span)]

    def concat_block(self, meta, c):
        return ast.Branches("concat", c[0], self.sp(meta))

    def sum_block(self, meta, c):
        return ast.Branches("sum", c[0], self.sp(meta))

    def mean_block(self, meta, c):
        return ast.Branches("mean", c[0], self.sp(meta))

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

    def unbatched(self, meta, c):
        return self.sp(meta)

    def input_decl(self, meta, c):
        dtype, shape = c[-1]
        unbatched = c[1] if len(c) > 2 else None
        return ast.InputDecl(str(c[0]), dtype, shape, self.sp(meta), self.tsp(c[0]), unbatched)

    def block_def(self, meta, c):
        return ast.BlockDef(str(c[0]), c[1], c[2], self.sp(meta), self.tsp(c[0]))

    def output_decl(self, meta, c):
        return ast.OutputDecl([(str(t), self.tsp(t)) for t in c], self.sp(meta))

    def loss_weight(self, meta, c):
        literal = self.int(meta, c) if c[0].type == "INT" else self.float(meta, c)
        return float(literal.value)

    def loss_term(self, meta, c):
        if len(c) == 2:
            return ast.LossTerm(c[0], c[1], self.sp(meta))
        return ast.LossTerm(1.0, c[0], self.sp(meta))

    def loss_sign(self, meta, c):
        return -1.0 if str(c[0]) == "-" else 1.0

    def loss_decl(self, meta, c):
        """Terms with the sign before each folded into its weight (`- 0.1 * c` weighs c by -0.1)."""
        terms, sign = [], 1.0
        name = name_span = None
        trains = []
        for child in c:
            if isinstance(child, float):
                sign = child
            elif isinstance(child, tuple) and child[0] == "objective":
                name, name_span = child[1], child[2]
            elif isinstance(child, tuple) and child[0] == "trains":
                trains = child[1]
            else:
                terms.append(ast.LossTerm(sign * child.weight, child.call, child.span))
                sign = 1.0
        return ast.LossDecl(terms, self.sp(meta), name, name_span, trains)

    def objective_name(self, meta, c):
        return ("objective", str(c[0]), self.tsp(c[0]))

    def trains_clause(self, meta, c):
        return ("trains", [(str(t), self.tsp(t)) for t in c])

    def train_alternate(self, meta, c):
        return ast.TrainItem("alternate", [(str(t), self.tsp(t)) for t in c], self.sp(meta))

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
    except VisitError as err:
        if isinstance(err.orig_exc, _NumberTooLarge):
            raise CompileError([err.orig_exc.diagnostic]) from None
        raise


# A .net file is a page or two of text; anything near this is not a program.
MAX_SOURCE_BYTES = 16 << 20


def read_source(path: str) -> Source:
    """Read a .net file as UTF-8 text; OSError / UnicodeDecodeError are the caller's to report.

    Only a regular file is read (a FIFO would block, /dev/zero never ends), and at most
    MAX_SOURCE_BYTES of it. A byte order mark (Windows editors write one) is dropped before
    decoding, so positions in errors count from the text after it. A NUL byte is refused as no
    text, reported at its offset in the bytes, as a decoding error would be."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a .net file", path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a pipe, device or socket)",
                      path)
    with open(path, "rb") as f:
        data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_SOURCE_BYTES >> 20} MiB, too large for a .net source", path)
    data = data.removeprefix(codecs.BOM_UTF8)
    text = data.decode("utf-8")
    if b"\x00" in data:
        at = data.index(b"\x00")
        raise UnicodeDecodeError("utf-8", data, at, at + 1, "NUL byte in text")
    return Source(path, text)
