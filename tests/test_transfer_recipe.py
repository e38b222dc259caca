"""The README's "Transfer learning from torchvision weights" recipe, run as written.

Its console block is not run by tests/test_docs.py, which has no image folder or torchvision
weights to give it: the slow test here generates both (shapes drawn with Pillow in class folders,
and a resnet18 weights file written from the torchvision-shaped torch module of
tests/runtime/test_weights_io.py, random weights, nothing downloaded), runs the block's commands
with the dslc executable in that directory and compares their output with the block as
tests/test_docs.py compares transcripts. The fast tests cover --freeze-all-but's prefixes and its
error, and class names in eval's confusion matrix.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.cli_train import _all_but, _confusion_text
from dslc.compiler import compile_file
from tests.runtime.test_image_folder import draw
from tests.runtime.test_weights_io import reference, save_state_dict
from tools import regen_transcripts as docs

ROOT = Path(__file__).resolve().parents[1]
DSLC = Path(sys.executable).with_name("dslc")
SECTION = "### Transfer learning from torchvision weights"
CLASSES = ("circle", "square", "triangle")


def recipe_blocks() -> list[docs.Block]:
    """The console blocks of the README's recipe section."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(SECTION) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return [b for b in docs.blocks("README.md") if start < b.line <= end and b.lang == "console"]


def make_images(root: Path, n: int, seed: int) -> None:
    """`n` images per class folder: light shapes on dark, of mixed sizes, formats and modes."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(n):
            size = (int(rng.integers(24, 90)), int(rng.integers(24, 90)))
            colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
            fmt, mode = (("png", "RGB"), ("jpg", "RGB"), ("png", "L"), ("bmp", "RGB"))[i % 4]
            draw(kind, size, colour, mode).save(root / kind / f"{kind}{i}.{fmt}")


def run(command: str, cwd: Path) -> tuple[int, list[str]]:
    """A `dslc ...` command run by the installed executable; stdout and stderr as a terminal shows them."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")       # keep the two streams in the order printed
    p = subprocess.run([str(DSLC), *docs.dslc_argv(command)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    return p.returncode, p.stdout.rstrip("\n").splitlines()


@pytest.mark.slow
def test_the_readme_recipe_trains_a_new_head_on_torchvision_weights(tmp_path):
    blocks = recipe_blocks()
    assert blocks and all("tests/test_transfer_recipe.py" in (b.not_run or "") for b in blocks)
    make_images(tmp_path / "my_images" / "train", n=6, seed=0)
    make_images(tmp_path / "my_images" / "val", n=2, seed=1)
    weights = save_state_dict(reference("resnet18"), tmp_path / "resnet18-torchvision.safetensors")
    os.symlink(ROOT / "models", tmp_path / "models")
    steps = [step for b in blocks for step in docs.console_steps(b)]
    assert any("--freeze-all-but fc" in command for command, _ in steps)
    for command, expected in steps:
        code, actual = run(command, tmp_path)
        shown = "\n".join(actual)
        assert code == 0 and "Traceback" not in shown, f"`{command}` exited {code}:\n{shown}"
        assert docs.matches(expected, actual), \
            f"README.md ({SECTION}): `{command}` printed:\n{shown}\n\nexpected:\n" + "\n".join(expected)

    # What the run saved: the frozen parameters are the file's, the new head moved from its start.
    from dslc.runtime.checkpoint import load_checkpoint
    from dslc.runtime.model import Model
    from dslc.runtime.weights import read_weights
    arrays, meta = load_checkpoint(str(tmp_path / "runs" / "transfer" / "last.ckpt"))
    assert meta["class_names"] == list(CLASSES)
    torch_weights, _, _ = read_weights(weights)
    start = Model.from_file(str(ROOT / "models" / "resnet18.net"), {"classes": 3})
    trained = [k for k, (_, p) in start.specs.items() if p.trainable]
    assert len(trained) == 62
    for k in trained:
        saved = arrays[f"param/{k}"]
        if k.startswith("fc."):
            assert not np.array_equal(saved, start.params[k]), f"{k} was not trained"
        else:
            np.testing.assert_array_equal(saved, np.asarray(torch_weights[k]), err_msg=f"{k} changed")


def test_freeze_all_but_freezes_the_shortest_names_around_what_it_keeps():
    net, _ = compile_file(str(ROOT / "models" / "resnet18.net"), {})
    assert _all_but(net, ["fc"]) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    assert _all_but(net, ["layer4.1", "fc"]) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4.0"]
    assert _all_but(net, ["layer4.1.bn2.weight"])[-3:] == ["layer4.1.conv2", "layer4.1.bn2.bias", "fc"]


def test_freeze_all_but_a_name_the_network_lacks_is_a_usage_error(capsys):
    code = main(["run", str(ROOT / "models" / "resnet18.net"), "--data", "synthetic", "--freeze-all-but", "fcc"])
    err = capsys.readouterr().err
    assert code == 2 and "--freeze-all-but fcc" in err and "did you mean `fc`?" in err
    assert "Traceback" not in err


def test_confusion_matrix_rows_name_their_classes():
    text = _confusion_text([[2, 0], [1, 1]], [1.0, 0.5], ["circle", "square"]).splitlines()
    assert text[0].split() == ["class", "n", "acc", "predicted", "0", "1"]
    assert text[1].split() == ["0", "circle", "2", "1.000", "2", "0"]
    assert text[2].split() == ["1", "square", "2", "0.500", "1", "1"]
    # Without names, or names that do not fit the matrix, the rows are numbered only.
    assert _confusion_text([[2, 0], [1, 1]], [1.0, 0.5], ["a"]) == _confusion_text([[2, 0], [1, 1]], [1.0, 0.5])
    many = _confusion_text(np.eye(25, dtype=int).tolist(), [1.0] * 24 + [0.0], [f"c{i}" for i in range(25)])
    assert many.startswith("lowest per-class accuracy (class, accuracy, samples): 24 c24 0.000 (1)")
