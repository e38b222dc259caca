"""The `dslc` command line: help, `compile` in text and JSON, the `-o` artifact, `ops`, exit codes.

Exit codes: 0 ok, 1 errors in the program, 2 bad usage (missing file, bad flag, unknown op).
Diagnostics themselves are tested in tests/compiler/test_diagnostics.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dslc.artifact import load_artifact
from dslc.cli import main
from dslc.ops import OPS

REPO = Path(__file__).resolve().parents[1]

# 1x8x8 image -> conv 4@3x3 (4*9 + 4 = 40 params, 4*6*6*9 = 1296 MACs) -> relu -> flatten (144)
# -> dense 10 (144*10 + 10 = 1450 params, 1440 MACs).
TINY = """network tiny(classes = 10)
input image: [1, 8, 8]
input label: int
logits = image -> conv(4, 3x3) -> relu -> flatten -> dense(classes)
loss cross_entropy(logits, label)
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A small valid program, `tiny.net`, in the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.net").write_text(TINY)
    return "tiny.net"


def run_module(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "dslc", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# ---- help ----------------------------------------------------------------------------------------

def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dslc")
    for command in ("compile", "viz", "ops", "run", "eval"):
        assert f"    {command} " in out


def test_help_of_a_command(capsys):
    assert main(["compile", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dslc compile")
    assert "--format {text,json}" in out and "--set K=V" in out


def test_help_through_python_dash_m():
    proc = run_module("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: dslc") and proc.stderr == ""


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: dslc")


# ---- compile -------------------------------------------------------------------------------------

def test_compile_text_summary(tiny, capsys):
    assert main(["compile", tiny]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "network tiny  (tiny.net)"
    # the layout of the totals is summary.py's; the figures are this file's
    totals = {line.split(":")[0]: line.split(":", 1)[1].split() for line in lines if ":" in line}
    assert totals["parameters"][0] == "1,490"
    assert totals["MACs per sample"][0] == "2,736"
    assert "outputs: logits (dense1): [N, 10]" in lines


def test_compile_json_keys_and_values(tiny, capsys):
    assert main(["compile", tiny, "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"network", "parameters", "trainable_parameters", "macs", "flops",
            "inputs", "outputs", "layers"} <= set(summary)
    assert summary["network"] == "tiny"
    assert summary["parameters"] == summary["trainable_parameters"] == 40 + 1450
    assert summary["macs"] == 1296 + 1440
    assert summary["flops"] == 2 * summary["macs"]
    assert summary["inputs"] == [{"name": "image", "shape": ["N", 1, 8, 8], "dtype": "float32"},
                                 {"name": "label", "shape": ["N"], "dtype": "int64"}]
    assert summary["outputs"] == [{"name": "logits", "node": "dense1", "shape": ["N", 10]}]
    layers = {layer["name"]: layer for layer in summary["layers"]}
    assert layers["conv1"]["op"] == "conv" and layers["conv1"]["shape"] == ["N", 4, 6, 6]
    assert layers["conv1"]["params"] == 40 and layers["conv1"]["macs"] == 1296
    assert layers["dense1"]["params"] == 1450


def test_compile_set_overrides_a_parameter(tiny, capsys):
    assert main(["compile", tiny, "--format", "json", "--set", "classes=3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outputs"][0]["shape"] == ["N", 3]
    assert summary["parameters"] == 40 + 144 * 3 + 3


def test_compile_output_artifact_loads_back(tiny, tmp_path, capsys):
    assert main(["compile", tiny, "-o", "out.json"]) == 0
    assert capsys.readouterr().err == "wrote out.json\n"
    net = load_artifact(str(tmp_path / "out.json"))
    assert net.name == "tiny"
    assert net.inputs == ["image", "label"]
    assert net.outputs == ["dense1"]
    assert net.loss == "loss"
    assert net.node("conv1").type.shape == ("N", 4, 6, 6)
    assert net.node("conv1").attrs["kernel"] == (3, 3)
    dense = net.node("dense1").params
    assert dense["weight"].shape == (10, 144) and dense["bias"].shape == (10,)
    assert list(net.graph.predecessors("relu1")) == ["conv1"]


def test_compile_output_into_a_missing_directory(tiny, capsys):
    assert main(["compile", tiny, "-o", "no/such/dir/out.json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write no/such/dir/out.json: ")


def test_compile_json_through_python_dash_m(tiny, tmp_path):
    proc = run_module("compile", tiny, "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["parameters"] == 1490


@pytest.mark.parametrize("model", sorted(p.name for p in (REPO / "models").glob("*.net")))
def test_every_zoo_model_compiles_cleanly(model, capsys):
    assert main(["compile", str(REPO / "models" / model)]) == 0
    assert capsys.readouterr().err == ""      # not even a warning


# ---- ops -----------------------------------------------------------------------------------------

def test_ops_lists_every_op(capsys):
    assert main(["ops"]) == 0
    listed = [line.split("(")[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == sorted(OPS)


def test_ops_of_one_op(capsys):
    assert main(["ops", "conv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("conv(channels, kernel, stride = 1, pad = 0, dilation = 1, groups = 1, bias = true)")
    assert "[conv]" in out and len(out.splitlines()) == 1


def test_ops_of_an_unknown_op(capsys):
    assert main(["ops", "cnv"]) == 2
    assert capsys.readouterr().err == "error: no op named `cnv`\n  = help: did you mean `conv`?\n"


# ---- exit codes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, code", [
    (["compile", "tiny.net"], 0),
    (["compile", "broken.net"], 1),
    (["compile", "missing.net"], 2),
    (["compile", "tiny.net", "--format", "xml"], 2),
    (["compile", "tiny.net", "--no-such-flag"], 2),
    (["compile", "tiny.net", "--set", "classes"], 2),
    (["compile", "tiny.net", "--set", "nope=1"], 1),
    (["compile"], 2),
    (["frobnicate"], 2),
])
def test_exit_codes(tiny, tmp_path, capsys, argv, code):
    (tmp_path / "broken.net").write_text("input image: [1, 8, 8]\ny = image -> rleu\n")
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    if code:
        assert err.startswith("error: ")
