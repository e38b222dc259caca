"""The package's shape: one import name, and imports that run one way.

Layers, top to bottom: the CLI and the public API (dslc/__init__.py, dslc/cli*.py) ->
the front end (dslc/*.py: parse, elaborate, summary, viz, ...) and the runtime (runtime/,
installed as dslc.runtime) -> the graph contract (dslc/graph.py) -> the op registry
(dslc/ops/). Imports are read with `ast`, function-level ones included, so a lazy import
cannot hide an arrow that runs back up.
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
# repository folder -> the package it installs as (pyproject's package-dir)
SOURCES = {"dslc": "dslc", "runtime": "dslc.runtime"}
CLI = {"dslc", "dslc.__main__", "dslc.cli", "dslc.cli_train", "dslc.cli_inputs", "dslc.cli_predict",
       "dslc.cli_inspect", "dslc.cli_plot", "dslc.cli_sample", "dslc.cli_lr_find", "dslc.cli_ensemble",
       "dslc.cli_export"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    parts[0] = SOURCES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "corpus" in path.parts:    # a build script for the shipped text, not part of the import graph
                continue
            out[_module_name(path)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every dslc module `name` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            targets = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in known else pkg for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:     # `import dslc.runtime.cpu.conv` names the module itself
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] == "dslc" and t != name:
                found.add(t)
    return found


def _graph() -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        for t in _imports(name, path, set(mods)):
            g.add_edge(name, t)
    return g


def _layer(mod: str) -> str:
    if mod in CLI:
        return "cli"
    if mod == "dslc.runtime" or mod.startswith("dslc.runtime."):
        return "runtime"
    if mod == "dslc.ops" or mod.startswith("dslc.ops."):
        return "ops"
    if mod == "dslc.graph":
        return "graph"
    return "front end"


# which layers each layer may import (besides itself)
ALLOWED = {
    "cli": {"front end", "runtime", "graph", "ops"},
    "runtime": {"front end", "graph", "ops"},   # it reads the compiler's products (graph, artifact, diagnostics)
    "front end": {"graph", "ops"},
    "graph": {"ops"},
    "ops": set(),
}
# front-end modules the runtime may use: the contract and its helpers, never parsing or drawing
RUNTIME_MAY_USE = {"dslc.graph", "dslc.artifact", "dslc.diagnostics", "dslc.summary", "dslc.compiler",
                   "dslc.train_section"}
# leaf utilities every layer may use (messages and their source spans)
SHARED = {"dslc.diagnostics"}


def test_no_import_cycles():
    g = _graph()
    cycles = [c for c in nx.simple_cycles(g) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def test_imports_run_one_way():
    wrong = []
    for a, b in _graph().edges:
        la, lb = _layer(a), _layer(b)
        if la == lb or b in SHARED:
            continue
        if lb not in ALLOWED[la]:
            wrong.append(f"{a} ({la}) imports {b} ({lb})")
        elif la == "runtime" and lb == "front end" and b not in RUNTIME_MAY_USE:
            wrong.append(f"{a} (runtime) imports {b}, a front-end module outside the contract")
    assert not wrong, "\n".join(wrong)


def test_front_end_never_imports_numba():
    """`dslc compile` and `dslc viz` stay quick: nothing they load imports Numba."""
    code = ("import sys, dslc.cli, dslc.summary, dslc.viz\n"
            "dslc.cli.main(['compile', 'models/lenet5.net'])\n"
            "sys.exit(1 if 'numba' in sys.modules or 'dslc.runtime.model' in sys.modules else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_wheel_holds_only_dslc(tmp_path):
    """Nothing but `dslc` lands in site-packages (a top-level `runtime` would clash with PyPI's)."""
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(5, "--no-build-isolation")     # build with the installed setuptools, no download
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("dslc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"dslc"}
    assert "dslc/runtime/model.py" in names and "dslc/grammar/dslc.lark" in names
    assert any(n.startswith("dslc/runtime/corpus/") for n in names)
