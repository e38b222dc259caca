"""The fenced blocks of README.md and docs/*.md, run as a user would run them.

    .venv/bin/python tools/regen_transcripts.py            # rewrite the ```console transcripts that differ
    .venv/bin/python tools/regen_transcripts.py --all      # rewrite all, refreshing samples/s and times
    .venv/bin/python tools/regen_transcripts.py --check    # only say which ones differ (exit 1 if any)

tests/test_docs.py runs the same blocks and compares them through this module, so a transcript
in the docs is what the code prints, not what someone typed. Kinds of block:

- ```console: `$ dslc ...` lines, each followed by its expected output. A line `...` stands
  for any number of lines. Volatile figures (samples/s, seconds, kernel-compile report lines,
  which depend on the Numba cache) are masked before comparing, and decimals such as losses
  compare within a small tolerance.
- ```bash: every line a command (a trailing `# comment` is dropped); each must exit 0.
- ```python: run as a script; it must not raise.
- ```dslc: a complete program (tests/compiler/test_language.py compiles those).
- any other fence: a fragment, which must hold no command (`$ ...` or a line starting `dslc`).

An HTML comment on the line right before a fence directs the test:
  <!-- not-run: REASON -->                      the block cannot run in a test (listed as such)
  <!-- setup: bad.net = models/x.net without "TEXT" -->
                                                 make bad.net in the working directory first
Every block runs in a fresh directory where `models` is the repository's zoo, so paths print
as in the docs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*(not-run|setup):\s*(.*?)\s*-->\s*$")
_SETUP = re.compile(r'^(\S+) = (\S+) without "(.*)"$')
_COMMAND_PREFIXES = ("dslc ", ".venv/bin/dslc ")
ELLIPSIS = "..."


@dataclass
class Block:
    path: str           # relative to the repository root
    line: int           # 1-based line of the opening fence
    lang: str
    body: list[str]
    not_run: str | None = None
    setup: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def mentions_commands(self) -> bool:
        return any(ln.startswith("$ ") or ln.startswith(_COMMAND_PREFIXES) for ln in self.body)


def blocks(path: str) -> list[Block]:
    """Every fenced block of one markdown file, with the directive before it."""
    lines = (ROOT / path).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        block = Block(path, start + 1, m.group(1), lines[start + 1:i])
        d = _DIRECTIVE.match(lines[start - 1]) if start else None
        if d and d.group(1) == "not-run":
            block.not_run = d.group(2)
        elif d:
            block.setup.append(d.group(2))
        out.append(block)
        i += 1
    return out


def all_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in blocks(path)]


# ---------------------------------------------------------------------------------------------
# Running

def console_steps(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of each `$ ` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for ln in block.body:
        if ln.startswith("$ "):
            steps.append((ln[2:], []))
        elif steps:
            steps[-1][1].append(ln)
        else:
            raise ValueError(f"{block.where}: a console block starts with its first `$ ` command")
    return steps


def bash_commands(block: Block) -> list[str]:
    cmds = []
    for ln in block.body:
        cmd = re.sub(r"\s+#.*$", "", ln).strip()
        if cmd and not cmd.startswith("#"):
            cmds.append(cmd)
    return cmds


def dslc_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if not argv or argv[0] not in ("dslc", ".venv/bin/dslc"):
        raise ValueError(f"not a dslc command: {command!r}")
    return argv[1:]


@contextlib.contextmanager
def workdir(block: Block):
    """A fresh directory holding `models` (the zoo), `docs` (its example images) and what the
    block's setup makes."""
    with tempfile.TemporaryDirectory(prefix="dslc-doc-") as tmp:
        os.symlink(ROOT / "models", Path(tmp) / "models")
        os.symlink(ROOT / "docs", Path(tmp) / "docs")
        for setup in block.setup:
            m = _SETUP.match(setup)
            if not m:
                raise ValueError(f"{block.where}: setup must read `NAME = SOURCE without \"TEXT\"`")
            name, source, cut = m.groups()
            text = (ROOT / source).read_text()
            if cut not in text:
                raise ValueError(f"{block.where}: {source} holds no {cut!r}")
            (Path(tmp) / name).write_text(text.replace(cut, "", 1))
        old = os.getcwd()
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def run_dslc(command: str) -> tuple[int, list[str]]:
    """Run one `dslc ...` command in this process; its exit code and its stdout and stderr
    interleaved as a terminal would show them."""
    from dslc.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(dslc_argv(command))
    return code, buf.getvalue().rstrip("\n").splitlines()


def run_python(block: Block) -> None:
    code = compile("\n".join(block.body) + "\n", block.where, "exec")
    exec(code, {"__name__": "__doc_snippet__"})


# ---------------------------------------------------------------------------------------------
# Comparing

_COMPILE_REPORT = re.compile(r"^\w[\w ]*: compiled \d+ kernel functions? in [\d.]+ s")
_VOLATILE = [
    (re.compile(r"\b\d+ samples/s\b"), "<N> samples/s"),
    (re.compile(r"\bin \d+(\.\d+)? s\b"), "in <T> s"),
]


def mask(lines: list[str]) -> list[str]:
    """Lines with their volatile figures replaced and kernel-compile reports dropped."""
    out = []
    for ln in lines:
        if _COMPILE_REPORT.match(ln):
            continue
        for pattern, repl in _VOLATILE:
            ln = pattern.sub(repl, ln)
        out.append(ln.rstrip())
    return out


_DECIMAL = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def same_line(expected: str, actual: str) -> bool:
    """Equal, but for decimals (losses, accuracies), which may differ in the last digits: the
    evaluation kernels' summation order follows the machine's thread count."""
    if expected == actual:
        return True
    if _DECIMAL.sub("#", expected) != _DECIMAL.sub("#", actual):
        return False
    return all(abs(float(e) - float(a)) <= 0.005 + 0.02 * abs(float(e))
               for e, a in zip(_DECIMAL.findall(expected), _DECIMAL.findall(actual)))


def same_lines(expected: list[str], actual: list[str]) -> bool:
    return len(expected) == len(actual) and all(map(same_line, expected, actual))


def _trimmed(lines: list[str]) -> list[str]:
    """Without trailing blank lines (a transcript's fence may end after one or not)."""
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def segments(expected: list[str]) -> list[list[str]]:
    segs: list[list[str]] = [[]]
    for ln in expected:
        if ln.strip() == ELLIPSIS:
            segs.append([])
        else:
            segs[-1].append(ln)
    return segs


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether actual output fits the expected lines, `...` standing for any lines between."""
    segs = [mask(s) for s in segments(_trimmed(expected))]
    actual = mask(_trimmed(actual))
    if len(segs) == 1:
        return same_lines(segs[0], actual)
    head, *middle, tail = segs
    if len(actual) < len(head) + len(tail) or not same_lines(head, actual[:len(head)]):
        return False
    if tail and not same_lines(tail, actual[len(actual) - len(tail):]):
        return False
    pos, end = len(head), len(actual) - len(tail)
    for seg in middle:
        found = next((i for i in range(pos, end - len(seg) + 1) if same_lines(seg, actual[i:i + len(seg)])),
                     None)
        if found is None:
            return False
        pos = found + len(seg)
    return True


def elide(expected: list[str], actual: list[str]) -> list[str]:
    """The new transcript: the actual output cut like the old one (as many head and tail lines
    around one `...`), compile reports left out."""
    actual = _trimmed([ln for ln in actual if not _COMPILE_REPORT.match(ln)])
    segs = segments(expected)
    if len(segs) == 1:
        return actual
    head, tail = len(segs[0]), len(segs[-1])
    if len(actual) <= head + tail:
        return actual
    return actual[:head] + [ELLIPSIS] + (actual[len(actual) - tail:] if tail else [])


def run_console(block: Block) -> list[tuple[str, list[str], int, list[str]]]:
    """Run a console block: (command, expected output, exit code, actual output) per command."""
    steps = []
    with workdir(block):
        for command, expected in console_steps(block):
            code, actual = run_dslc(command)
            steps.append((command, expected, code, actual))
    return steps


def regenerate(everything: bool = False, check_only: bool = False) -> list[str]:
    """Rewrite the console blocks whose commands no longer print what they show (every one with
    `everything`, which also refreshes the volatile figures); returns the blocks that differed."""
    changed = []
    for path in DOC_FILES:
        lines = (ROOT / path).read_text().splitlines()
        for block in reversed(blocks(path)):
            if block.lang != "console" or block.not_run is not None:
                continue
            steps = run_console(block)
            if all(matches(expected, actual) for _, expected, _, actual in steps):
                if not everything:
                    continue
            else:
                changed.append(block.where)
            new = []
            for command, expected, _, actual in steps:
                new += [f"$ {command}", *elide(expected, actual)]
            lines[block.line:block.line + len(block.body)] = new
        if not check_only:
            (ROOT / path).write_text("\n".join(lines) + "\n")
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a transcript differs")
    parser.add_argument("--all", action="store_true",
                        help="rewrite every transcript, refreshing samples/s and times, not only those that differ")
    args = parser.parse_args(argv)
    changed = regenerate(everything=args.all, check_only=args.check)
    for where in changed:
        print(f"{'differs' if args.check else 'rewritten'}: {where}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
