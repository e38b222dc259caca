"""Diagnostics: every user-facing mistake becomes one of these, rendered like rustc/Elm.

    error: residual branch and shortcut disagree
      --> models/resnet18.net:11:5
       |
    11 |     -> conv(c, 3x3, pad = 1, bias = false) -> batchnorm
       |        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ gives [N, 128, 28, 28]
       = shortcut carries [N, 64, 56, 56]
       = help: add `shortcut auto` for a 1x1 projection

Passes collect diagnostics instead of stopping at the first, so independent mistakes are
all reported in one run; `CompileError` carries the whole list out of the pipeline.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """A source text and the name it is reported under."""
    path: str
    text: str

    def line(self, lineno: int) -> str:
        # Lines end at "\n" only, as the parser counts them: str.splitlines() would also split
        # at form feeds and U+2028 in comments and show the wrong line under a right number.
        lines = self.text.split("\n")
        return lines[lineno - 1].removesuffix("\r") if 0 < lineno <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A region of a source: 1-based line/column of the first character, end exclusive."""
    source: Source
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def where(self) -> str:
        return f"{self.source.path}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    message: str                       # one line: what is wrong
    span: Span | None = None           # where; None for errors about the command line or a whole file
    label: str = ""                    # printed after the carets: what was found there
    notes: list[str] = field(default_factory=list)   # "= ..." lines: expected values, other shapes
    help: str = ""                     # how to fix it
    severity: str = "error"

    def render(self) -> str:
        out = [f"{self.severity}: {self.message}"]
        if self.span is not None:
            s = self.span
            out.append(f"  --> {s.where}")
            text = s.source.line(s.line)
            num = str(s.line)
            pad = " " * len(num)
            end = s.end_col if s.end_line == s.line else len(text) + 1
            # Columns count characters; the carets are placed by the width each takes on screen.
            before = _display_width(text[:s.col - 1]) + max(0, s.col - 1 - len(text))
            width = max(1, _display_width(text[s.col - 1:end - 1]))
            out.append(f" {pad} |")
            out.append(f" {num} | {_printable(text)}")
            caret = " " * before + "^" * width
            out.append(f" {pad} | {caret}" + (f" {self.label}" if self.label else ""))
            for n in self.notes:
                out.append(f" {pad} = {n}")
            if self.help:
                out.append(f" {pad} = help: {self.help}")
        else:
            for n in self.notes:
                out.append(f"  = {n}")
            if self.help:
                out.append(f"  = help: {self.help}")
        return "\n".join(out)

    def to_json(self) -> dict:
        d = {"severity": self.severity, "message": self.message, "label": self.label,
             "notes": list(self.notes), "help": self.help}
        if self.span is not None:
            d.update(file=self.span.source.path, line=self.span.line, col=self.span.col,
                     end_line=self.span.end_line, end_col=self.span.end_col)
        return d


def _printable(text: str) -> str:
    """A source line made safe to print: a tab shows as one space, other control characters as
    U+FFFD, so that no raw escape reaches the terminal and every character keeps its column."""
    return "".join(" " if c == "\t" else "\ufffd" if not c.isprintable() and c != " " else c for c in text)


def _display_width(text: str) -> int:
    """Terminal columns of `text` as _printable shows it: wide (CJK) characters take two, combining marks none."""
    width = 0
    for c in text:
        if unicodedata.combining(c):
            continue
        width += 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
    return width


class CompileError(Exception):
    """Raised out of the pipeline carrying every diagnostic found so far."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n\n".join(d.render() for d in self.diagnostics))


class Diagnostics:
    """A collector passed through a pass; `raise_if_any` ends the pass when something was wrong."""

    def __init__(self):
        self.items: list[Diagnostic] = []       # errors
        self.warnings: list[Diagnostic] = []    # reported, but compilation goes on

    def error(self, message, span=None, *, label="", notes=(), help="") -> Diagnostic:
        d = Diagnostic(message, span, label, list(notes), help)
        self.items.append(d)
        return d

    def warn(self, message, span=None, *, label="", notes=(), help="") -> Diagnostic:
        d = Diagnostic(message, span, label, list(notes), help, severity="warning")
        self.warnings.append(d)
        return d

    def raise_if_any(self):
        if self.items:
            raise CompileError(self.items)


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`.

    Swapping neighbours counts one edit, so the commonest typo, `rleu` for `relu`, is close."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            d = min(rows[-1][j] + 1, cur[j - 1] + 1, rows[-1][j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                d = min(d, rows[-2][j - 2] + 1)
            cur.append(d)
        rows.append(cur)
    return rows[-1][-1]


# Names longer than this get no suggestion: no typo makes one, and the edit distance costs
# the product of the two lengths.
MAX_SUGGESTED_NAME = 100


def did_you_mean(name: str, candidates) -> str:
    """`did you mean `x`?` for the closest candidate within a third of the name's length, else ''.

    A candidate as far from the name as rewriting it whole (`c` for `e`) is no suggestion.
    Candidates whose length alone differs by more than that bound are skipped unmeasured."""
    if len(name) > MAX_SUGGESTED_NAME:
        return ""
    bound = max(1, len(name) // 3)
    best, best_d = None, None
    for c in sorted(set(candidates)):
        if abs(len(c) - len(name)) > bound:
            continue
        d = edit_distance(name.lower(), c.lower())
        if best_d is None or d < best_d:
            best, best_d = c, d
    if best is not None and best_d <= max(1, len(name) // 3) and best_d < max(len(name), len(best)):
        return f"did you mean `{best}`?"
    return ""
