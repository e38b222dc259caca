"""The front end's pipeline: read -> parse -> elaborate (with shape inference) -> check."""
from __future__ import annotations

from .artifact import ArtifactError, from_text, is_artifact
from .diagnostics import CompileError, Diagnostic, Diagnostics, Source
from .elaborate import elaborate
from .graph import Network
from .parser import parse, read_source


class UsageError(Exception):
    """Bad command-line use (missing file, bad flag value): exit code 2."""

    def __init__(self, message, help=""):
        super().__init__(message)
        self.message, self.help = message, help


def parse_override(text: str):
    """`--set k=v`: v is a whole number, a number, true/false, or a word."""
    if "=" not in text:
        raise UsageError(f"`--set {text}` is not of the form name=value", help="e.g. --set classes=10")
    k, v = text.split("=", 1)
    k, v = k.strip(), v.strip()
    if not k.isidentifier():
        raise UsageError(f"`--set {text}`: `{k}` is not a parameter name", help="e.g. --set classes=10")
    for conv in (int, float):
        try:
            return k, conv(v)
        except ValueError:
            pass
    if v in ("true", "false"):
        return k, v == "true"
    if v.isidentifier():
        from .values import Word
        return k, Word(v)
    raise UsageError(f"`--set {text}`: `{v}` is not a number, true/false or a name", help="e.g. --set classes=10")


def load_source(path: str) -> Source:
    try:
        return read_source(path)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}", help="check the path; the model zoo is in models/") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a .net file") from None
    except UnicodeDecodeError as e:
        raise CompileError([Diagnostic(f"{path} is not UTF-8 text: {_bad_byte(e)}",
                                       help="a .net file is plain text; save it as UTF-8")]) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}", help="give the path of a .net source file") from None
    except ValueError:      # a path with a NUL character in it, which no file system accepts
        raise UsageError(f"no such file: {path!r}") from None


def _bad_byte(e: UnicodeDecodeError) -> str:
    """Where the first byte that is no UTF-8 text sits, as line and column, for the user's editor."""
    good = e.object[:e.start].decode("utf-8", errors="replace")
    line = good.count("\n") + 1
    col = len(good) - (good.rfind("\n") + 1) + 1
    return f"byte 0x{e.object[e.start]:02x} at line {line}, column {col}"


def compile_source(source: Source, overrides: dict | None = None) -> tuple[Network, list[Diagnostic]]:
    """Everything up to a checked network; raises CompileError with all errors found."""
    diags = Diagnostics()
    try:
        program = parse(source)
        net = elaborate(program, overrides, diags)
    except RecursionError:   # parsing and elaborating recurse once per level of nesting
        diags.error("the program nests too deeply to compile",
                    help="flatten deeply nested parentheses, groups or blocks")
    diags.raise_if_any()
    return net, diags.warnings


def compile_file(path: str, overrides: dict | None = None) -> tuple[Network, list[Diagnostic]]:
    """A .net program compiled, or a compiled network (`dslc compile FILE -o net.json`) loaded and checked."""
    source = load_source(path)
    if is_artifact(path, source.text):
        return load_compiled(source, overrides), []
    return compile_source(source, overrides)


def load_compiled(source: Source, overrides: dict | None = None) -> Network:
    """The network in a compiled artifact's text; its parameters were fixed when it was compiled."""
    if overrides:
        names = " ".join(f"--set {k}=..." for k in overrides)
        raise UsageError(f"`{names}` cannot change {source.path}: a compiled network's parameters and "
                         "dimensions were fixed when it was compiled",
                         help="pass the .net source with --set, or compile it again with --set ... -o")
    try:
        net = from_text(source.text)
    except ArtifactError as e:
        raise CompileError([Diagnostic(f"{source.path}: {e.message}", help=e.help)]) from None
    net.source_files = [source.path]
    return net
