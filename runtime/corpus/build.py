"""Assemble corpus.txt, the character corpus behind the built-in "chars" dataset.

The text is the documentation that ships inside Python's standard library: the docstrings
of a fixed list of modules and of the classes, functions and methods they define, under
the PSF License (see README.md and LICENSE.txt, copied here from the interpreter's own
LICENSE.txt). Nothing is downloaded. Run it with the interpreter whose docs should be used:

    .venv/bin/python runtime/corpus/build.py

The output depends on the Python version (docstrings change between releases), which is why
the result is committed rather than rebuilt at install time; README.md records the version.
"""
from __future__ import annotations

import importlib
import inspect
import os
import shutil
import sys
import sysconfig
import warnings

# Pure-Python and core modules whose text is the PSF's own. Modules that CPython's LICENSE
# lists as incorporating software under other licenses (asyncio, random's Mersenne Twister,
# decimal's libmpdec, trace, xmlrpc, http.cookies, ...) are left out.
MODULES = (
    "abc", "argparse", "ast", "bisect", "calendar", "cmd", "codecs", "collections", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "difflib", "enum", "fnmatch", "fractions",
    "functools", "glob", "heapq", "inspect", "io", "itertools", "logging", "math", "numbers",
    "operator", "os", "pathlib", "pprint", "queue", "re", "sched", "shlex", "shutil",
    "statistics", "string", "struct", "tempfile", "textwrap", "threading", "time", "typing",
    "unittest", "warnings", "weakref", "zipfile",
)
# The corpus must stay small enough to ship in the repository.
MAX_CHARS = 1_000_000

HERE = os.path.dirname(os.path.abspath(__file__))


def clean(doc: str) -> str | None:
    """The docstring with tabs expanded, or None when it is too short or not plain ASCII
    (a small character set keeps the language model's vocabulary small)."""
    doc = inspect.cleandoc(doc).expandtabs(4).strip()
    if len(doc) < 40 or not doc.isascii() or any(not ch.isprintable() for ch in doc.replace("\n", "")):
        return None
    return doc


def documented_objects(module):
    """(qualified name, object) for the module and what it defines, in a stable order."""
    yield module.__name__, module
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if not attr.startswith("_") and inspect.isroutine(member):
                    yield f"{module.__name__}.{name}.{attr}", member


def build() -> str:
    """Every kept docstring under its qualified name, each distinct text once."""
    sections: list[str] = []
    seen: set[str] = set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for qualname, obj in documented_objects(module):
            doc = obj.__doc__
            doc = clean(doc) if isinstance(doc, str) else None
            if doc is None or doc in seen:
                continue
            seen.add(doc)
            sections.append(f"{qualname}\n\n{doc}\n\n\n")
    return "".join(sections)


def main() -> None:
    with warnings.catch_warnings():
        # typing's deprecated io/re namespaces warn when merely looked at.
        warnings.simplefilter("ignore", DeprecationWarning)
        text = build()
    if len(text) > MAX_CHARS:
        raise SystemExit(f"corpus would be {len(text)} characters, over the {MAX_CHARS} limit")
    with open(os.path.join(HERE, "corpus.txt"), "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    license_path = os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt")
    shutil.copyfile(license_path, os.path.join(HERE, "LICENSE.txt"))
    print(f"wrote {len(text)} characters, {len(set(text))} distinct, "
          f"from Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
