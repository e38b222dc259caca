"""The compiled artifact (`dslc compile FILE -o net.json`): it round-trips every zoo network,
everything that takes a .net file takes it (`dslc compile`, `dslc run`, `dslc.load`), a file
that is not one (or was edited) is refused with a message, and `-o` never overwrites an input."""
import json
import os
import shutil
from pathlib import Path

import pytest

import dslc
from dslc import summary
from dslc.artifact import ArtifactError, from_dict, load_artifact, save_artifact, to_dict
from dslc.cli import main
from dslc.compiler import compile_file

ROOT = Path(__file__).resolve().parents[2]
ZOO = sorted((ROOT / "models").glob("*.net"))
LENET = ROOT / "models" / "lenet5.net"


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Runs `dslc ARGS` in a fresh working directory; returns (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        rc = main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and "internal error" not in out + err, err
        return rc, out, err
    return run


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_every_zoo_network_round_trips(path, tmp_path):
    net, _ = compile_file(str(path))
    save_artifact(net, str(tmp_path / "net.json"))
    back = load_artifact(str(tmp_path / "net.json"))
    assert to_dict(back) == to_dict(net)
    assert summary.to_text(back) == summary.to_text(net)
    assert list(back.graph) == list(net.graph)      # the order parameters are initialised in


def test_compile_reads_the_artifact(cli):
    rc, source_summary, _ = cli("compile", str(LENET), "-o", "net.json")
    assert rc == 0
    rc, out, err = cli("compile", "net.json")
    assert (rc, out, err) == (0, source_summary, "")
    net, warnings = compile_file("net.json")
    assert warnings == [] and net.source_files == ["net.json"] and net.name == "lenet5"


def test_dslc_load_builds_the_model_dslc_compile_builds(cli):
    assert cli("compile", str(LENET), "-o", "net.json")[0] == 0
    loaded, compiled = dslc.load("net.json"), dslc.compile(str(LENET))
    assert list(loaded.params) == list(compiled.params)
    for k, v in compiled.params.items():
        assert (loaded.params[k] == v).all(), k


@pytest.mark.slow
def test_run_trains_from_the_artifact(cli):
    assert cli("compile", str(ROOT / "models" / "digits_cnn.net"), "-o", "net.json")[0] == 0
    rc, _, err = cli("run", "net.json", "--data", "digits", "--epochs", "1", "--limit", "128", "--quiet")
    assert rc == 0, err
    assert "training digits_cnn" in err and "epoch 1/1" in err


def test_set_cannot_change_an_artifact(cli):
    assert cli("compile", str(LENET), "-o", "net.json")[0] == 0
    rc, _, err = cli("compile", "net.json", "--set", "classes=3")
    assert rc == 2
    assert "a compiled network's parameters and dimensions were fixed when it was compiled" in err


def _lenet_dict():
    net, _ = compile_file(str(LENET))
    return json.loads(json.dumps(to_dict(net)))


def _c1(d):
    return next(n for n in d["nodes"] if n["name"] == "c1")


@pytest.mark.parametrize("text, message", [
    ('{"a": 1}', 'not a dslc compiled network (JSON without the "format": "dslc-network" marker)'),
    ("[1, 2]", "not a dslc compiled network"),
    ("garbage", "not JSON: Expecting value at line 1, column 1"),
    ("[" * 100_000, "not a compiled network: JSON nested too deeply"),
    ('{"format": "dslc-network", "version": 99}', "made by a newer dslc (format version 99; this dslc reads 1)"),
    ('{"format": "dslc-network", "version": 1}', "a damaged compiled network (missing field 'nodes')"),
])
def test_not_an_artifact_is_refused(cli, text, message):
    Path("x.json").write_text(text)
    rc, out, err = cli("compile", "x.json")
    assert rc == 1 and out == ""
    assert err.startswith(f"error: x.json: {message}")
    assert err.endswith("1 error\n")


@pytest.mark.parametrize("edit, message", [
    (lambda d: _c1(d)["attrs"].update(channels=7), "node `c1` (conv) does not match what its op gives"),
    (lambda d: _c1(d)["params"]["weight"].update(shape=[6, 1, 5, 4]), "node `c1` (conv) does not match"),
    (lambda d: _c1(d).update(shape=["N", 6, 27, 28]), "node `c1` (conv) does not match"),
    (lambda d: _c1(d).update(macs=1), "node `c1` (conv) does not match"),
    (lambda d: _c1(d).update(op="nope"), "node `c1` has op 'nope', which this dslc does not know"),
    (lambda d: _c1(d)["attrs"].pop("kernel"), "node `c1` (conv) has attributes its op does not accept"),
    (lambda d: _c1(d)["attrs"].update(channels=1 << 40), "node `c1` (conv)"),
    (lambda d: _c1(d).update(inputs=["zz"]), "node `c1` reads `zz`, which is not defined before it"),
    (lambda d: d["nodes"][0].update(shape=["N", 1, 10**9, 10**9]), "input `image` is malformed"),
    (lambda d: d.update(outputs=["zz"]), "its outputs name nodes it does not hold"),
    (lambda d: d.update(loss="zz"), "its loss `zz` is not one of its nodes"),
    (lambda d: d.update(symbols={"T": -1}), "`symbols` holds a name or a size that is not one"),
    (lambda d: d.update(nodes=5), "`nodes` is not a list"),
    (lambda d: _c1(d).update(span=[1, 2]), "node `c1` has a malformed source span"),
])
def test_an_edited_artifact_is_refused(cli, edit, message):
    d = _lenet_dict()
    edit(d)
    Path("x.json").write_text(json.dumps(d))
    rc, _, err = cli("compile", "x.json")
    assert rc == 1 and message in err.splitlines()[0], err
    with pytest.raises(ArtifactError):
        from_dict(d)


def test_an_artifact_is_recognised_by_its_content(cli):
    assert cli("compile", str(LENET), "-o", "compiled.net")[0] == 0     # a misleading name
    rc, out, _ = cli("compile", "compiled.net")
    assert rc == 0 and out.startswith("network lenet5")


# ---- -o never overwrites an input --------------------------------------------------------------

def test_output_onto_the_source_is_refused(cli):
    shutil.copy(LENET, "lenet5.net")
    before = Path("lenet5.net").read_bytes()
    rc, out, err = cli("compile", "lenet5.net", "-o", "lenet5.net")
    assert (rc, out) == (2, "")
    assert err == ("error: -o lenet5.net would overwrite lenet5.net, the program's source\n"
                   "  = help: write the compiled network to a new file, e.g. -o net.json\n")
    assert Path("lenet5.net").read_bytes() == before


def test_output_onto_the_source_by_another_path_is_refused(cli):
    shutil.copy(LENET, "lenet5.net")
    os.symlink("lenet5.net", "link.net")
    os.mkdir("sub")
    assert cli("compile", "lenet5.net", "-o", "link.net")[0] == 2
    assert cli("compile", "lenet5.net", "-o", "sub/../lenet5.net")[0] == 2
    assert Path("lenet5.net").read_bytes() == LENET.read_bytes()


def test_output_onto_an_import_is_refused(cli):
    Path("lib.net").write_text("block cr(c) {\n  conv(c, 3x3, pad = 1) -> relu\n}\n")
    Path("prog.net").write_text('import "lib.net"\ninput image: [1, 8, 8]\ny = image -> cr(4)\n')
    rc, _, err = cli("compile", "prog.net", "-o", "lib.net")
    assert rc == 2 and "error: -o lib.net would overwrite lib.net, imported by prog.net" in err
    assert Path("lib.net").read_text().startswith("block cr")


def test_output_onto_the_artifact_read_is_refused(cli):
    assert cli("compile", str(LENET), "-o", "net.json")[0] == 0
    assert cli("compile", "net.json", "-o", "net.json")[0] == 2
    assert cli("compile", "net.json", "-o", "copy.json")[0] == 0
    assert Path("copy.json").read_text() == Path("net.json").read_text()
