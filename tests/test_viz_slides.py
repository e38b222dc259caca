"""`dslc viz` for slides: --rankdir, --dpi, --fit W:H (a long chain wrapped into rows or columns),
branches in source order, repeats named by their block; and the README's pictures are what the
commands beside them draw."""
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from dslc.cli import main
from dslc.compiler import UsageError, compile_file
from dslc.viz import parse_fit, render, to_graphviz

ROOT = Path(__file__).resolve().parents[1]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

# A chain of 24 layers: one long strip unless wrapped.
CHAIN = "network chain()\ninput x: [4]\ny = x" + "".join(f"\n  -> d{i}: dense(4) -> relu" for i in range(12)) + "\n"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    path = tmp_path_factory.mktemp("chain") / "chain.net"
    path.write_text(CHAIN)
    return compile_file(str(path))[0]


@pytest.fixture(scope="module")
def googlenet():
    return compile_file(str(ROOT / "models" / "googlenet.net"))[0]


def _layout(graph):
    return json.loads(graph.pipe(format="json"))


def _aspect(graph):
    x0, y0, x1, y1 = (float(v) for v in _layout(graph)["bb"].split(","))
    return (x1 - x0) / (y1 - y0)


def _positions(graph):
    """Node name -> (x, y) of the laid-out graph, y growing downwards."""
    out = {}
    for obj in _layout(graph)["objects"]:
        if "pos" in obj:
            x, y = (float(v) for v in obj["pos"].split(","))
            out[obj["name"]] = (x, -y)
    return out


# ---- rankdir and dpi ----------------------------------------------------------------------

def test_rankdir_is_written_into_the_source(chain):
    assert "rankdir=TB" in to_graphviz(chain)[0].source
    assert "rankdir=LR" in to_graphviz(chain, rankdir="LR")[0].source


def test_unknown_rankdir_is_a_usage_error(chain):
    with pytest.raises(UsageError) as e:
        to_graphviz(chain, rankdir="BT")
    assert "TB, LR" in e.value.message


@pytest.mark.parametrize("dpi", [0, 5, 5000])
def test_dpi_outside_its_range_is_a_usage_error(chain, tmp_path, dpi):
    with pytest.raises(UsageError) as e:
        render(chain, str(tmp_path / "c.png"), dpi=dpi)
    assert f"--dpi {dpi}" in e.value.message


@needs_dot
def test_dpi_scales_a_png(chain, tmp_path):
    from PIL import Image
    small, large = tmp_path / "60.png", tmp_path / "180.png"
    render(chain, str(small), dpi=60)
    render(chain, str(large), dpi=180)
    (w1, h1), (w3, h3) = Image.open(small).size, Image.open(large).size
    assert abs(w3 / w1 - 3) < 0.1 and abs(h3 / h1 - 3) < 0.1


# ---- --fit ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, ratio", [("16:9", 16 / 9), ("4:3", 4 / 3), ("1:1.4", 1 / 1.4), ("2", 2.0),
                                         ("16/9", 16 / 9), (" 3x2 ", 1.5)])
def test_fit_reads_width_to_height(text, ratio):
    assert parse_fit(text) == pytest.approx(ratio)


@pytest.mark.parametrize("text", ["16-9", "wide", "0:1", "16:0", "", "1:100"])
def test_a_fit_that_is_no_ratio_is_a_usage_error_naming_the_form(text):
    with pytest.raises(UsageError) as e:
        parse_fit(text)
    assert "16:9" in e.value.help


@needs_dot
@pytest.mark.parametrize("rankdir", ["LR", "TB"])
def test_fit_wraps_a_long_chain_towards_the_ratio(chain, rankdir):
    plain, _ = to_graphviz(chain, rankdir=rankdir)
    wrapped, count = to_graphviz(chain, rankdir=rankdir, fit=16 / 9)
    assert count == to_graphviz(chain)[1]
    # the pieces are joined by edges that do not constrain the ranks, one per cut of the chain
    cuts = wrapped.source.count("constraint=false")
    assert cuts >= 2 and "constraint=false" not in plain.source
    before, after = _aspect(plain), _aspect(wrapped)
    assert abs(after / (16 / 9) - 1) < 0.5 < abs(before / (16 / 9) - 1)


@needs_dot
def test_fit_keeps_the_chain_in_reading_order(chain):
    """LR rows: each layer lies right of the one before in its row, and each row below the last."""
    wrapped, _ = to_graphviz(chain, rankdir="LR", fit=16 / 9)
    pos = _positions(wrapped)
    layers = [f"d{i}" for i in range(12)]
    rows = [[layers[0]]]
    for a, b in zip(layers, layers[1:]):
        if pos[b][0] > pos[a][0]:
            rows[-1].append(b)
        else:
            rows.append([b])
    assert len(rows) >= 2
    for upper, lower in zip(rows, rows[1:]):
        assert max(pos[n][1] for n in upper) < min(pos[n][1] for n in lower)


@needs_dot
def test_cli_viz_takes_the_slide_flags(chain, tmp_path, capsys):
    src = tmp_path / "chain.net"
    src.write_text(CHAIN)
    out = tmp_path / "chain.png"
    assert main(["viz", str(src), "-o", str(out), "--rankdir", "lr", "--fit", "16:9", "--dpi", "72"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"wrote .*chain\.png \(\d+ nodes; \d+ rows, width/height [\d.]+\)", err), err
    assert main(["viz", str(src), "-o", str(out), "--fit", "wide"]) == 2
    assert "--fit wide is not an aspect ratio" in capsys.readouterr().err


# ---- branch order and names ----------------------------------------------------------------

def test_branches_are_tied_in_source_order(googlenet):
    source = to_graphviz(googlenet, depth=1)[0].source
    for m in ("3a", "4b", "4e", "5b"):
        for i in (1, 2, 3):
            assert f'"block/inception{m}.branch{i}" -> "block/inception{m}.branch{i + 1}" [minlen=0 style=invis]' \
                in source
    assert "remincross=false" in source and "ordering=out" in source


@needs_dot
@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_googlenets_branches_stand_in_source_order_in_every_module(googlenet, rankdir):
    pos = _positions(to_graphviz(googlenet, depth=1, rankdir=rankdir)[0])
    axis = 0 if rankdir == "TB" else 1              # left to right, or top to bottom
    modules = sorted({m[len("block/inception"):].split(".")[0] for m in pos if m.startswith("block/inception")})
    assert len(modules) == 9
    for m in modules:
        along = [pos[f"block/inception{m}.branch{i}"][axis] for i in range(1, 5)]
        assert along == sorted(along), (m, along)


def test_layers_of_an_unlabelled_repeat_are_named_by_it():
    net = compile_file(str(ROOT / "models" / "vgg16.net"))[0]
    source = to_graphviz(net)[0].source
    assert "<B>features.0</B>" in source and "<B>classifier.6</B>" in source
    assert "<B>0</B>" not in source


# ---- the README's pictures -----------------------------------------------------------------

README_ROW = re.compile(r"^\| `(dslc viz [^`]+)` \| <img src=\"(docs/img/[^\"]+\.png)\"", re.M)


def _readme_pictures():
    return README_ROW.findall((ROOT / "README.md").read_text())


def test_the_readme_shows_three_pictures_each_beside_the_command_that_draws_it():
    rows = _readme_pictures()
    assert len(rows) == 3
    for command, picture in rows:
        args = shlex.split(command)
        assert args[args.index("-o") + 1] == picture
        assert (ROOT / picture).is_file()
        assert (ROOT / picture).stat().st_size < 400_000, f"{picture} is too large for the README"


@needs_dot
@pytest.mark.parametrize("command, picture", _readme_pictures(), ids=[p for _, p in _readme_pictures()])
def test_the_readme_commands_redraw_their_pictures(command, picture, tmp_path, monkeypatch):
    """Re-run each command into a scratch file: the same picture size as the committed one (the
    pixels may differ with Graphviz's version and fonts, the layout's size barely)."""
    from PIL import Image
    args = shlex.split(command)[1:]
    args[args.index("-o") + 1] = str(tmp_path / "out.png")
    monkeypatch.chdir(ROOT)
    assert main(args) == 0
    new, old = Image.open(tmp_path / "out.png").size, Image.open(ROOT / picture).size
    assert abs(new[0] - old[0]) <= 0.02 * old[0] and abs(new[1] - old[1]) <= 0.02 * old[1], \
        f"{picture} is {old}, the command draws {new}: rerun `{command}`"
