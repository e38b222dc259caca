"""The zoo runs as shipped: every models/*.net trains on the data its first comment names.

The small networks train one step on that data, in-process through the CLI (`dslc run FILE
--data X`, no --set): a zoo file whose defaults do not fit its data (the character models'
vocabulary against the shipped corpus, say) fails here. The ImageNet-sized ones would need
minutes per step on two cores, so they are compiled only, and their first comment must say
what data they want.
"""
import re
from pathlib import Path

import pytest

from dslc.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"

# Each small zoo file and the data it trains on as shipped.
TRAINED = {
    "digits_cnn": "digits",
    "lenet5": "digits",
    "resnet_cifar": "digits",
    "vgg11_cifar": "digits",
    "charlstm": "chars",
    "chargru": "chars",
    "fcn": "synthetic",
    "resnet_stochastic_depth": "digits",
    "fractalnet": "digits",
    "vae": "digits",
    "conv_vae": "digits",
    "dcgan": "digits",
    "cls_loc": "synthetic",
    "char_bilstm": "chars",
    "captioning": "synthetic",
    "unet": "synthetic",
    "fast_rcnn_head": "synthetic",
    "yolo_v1_tiny": "synthetic",
}
COMPILED_ONLY = ["alexnet", "densenet121", "googlenet", "googlenet_bn", "mobilenet_v2", "nin", "resnet18",
                 "resnet34", "resnet50", "squeezenet", "vgg16"]


def first_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


def test_every_zoo_file_is_covered():
    assert sorted(p.stem for p in MODELS.glob("*.net")) == sorted([*TRAINED, *COMPILED_ONLY])


@pytest.mark.parametrize("name", sorted([*TRAINED, *COMPILED_ONLY]))
def test_first_comment_names_the_data(name):
    """The first comment says how to get data: the `--data` it runs with, or the file it wants."""
    comment = first_comment(MODELS / f"{name}.net")
    data = TRAINED.get(name)
    if data is not None:
        assert f"--data {data}" in comment, comment
    else:
        assert re.search(r"--data \S+\.npz", comment) and "--data synthetic" in comment, comment


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAINED))
def test_small_zoo_model_trains_a_step_on_its_data(name, tmp_path, capsys):
    # 20 samples hold out 4 for validation, so batch 16 is exactly one training step.
    code = main(["run", str(MODELS / f"{name}.net"), "--data", TRAINED[name], "--epochs", "1",
                 "--limit", "20", "--batch", "16", "--quiet", "--metrics", str(tmp_path / "m.jsonl")])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize("name", COMPILED_ONLY)
def test_imagenet_zoo_model_compiles(name, capsys):
    assert main(["compile", str(MODELS / f"{name}.net")]) == 0
    assert "parameters:" in capsys.readouterr().out
