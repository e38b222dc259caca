"""`dslc run` / `dslc eval`: validation and evaluation that say what they score, and the weights kept.

- `--val PATH` validates on a separate set; an MNIST directory's t10k pair is found beside train;
- `dslc eval --data FILE` scores the whole file, with per-class accuracy and a confusion matrix;
- `dslc run` without --checkpoint writes runs/NETWORK/N, a new N per run;
- best.ckpt follows the validation loss; --early-stopping N stops after N epochs without improvement;
- checkpoints record --set (and a text model's vocabulary), so eval needs no repeated flags.
"""
from __future__ import annotations

import json
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.data import load_dataset, mnist_test_set
from dslc.runtime.errors import DataError
from dslc.runtime.train import Trainer

MLP = """
network mlp(classes = 10, hidden = 16)
input image: [1, 8, 8]
input label: int
logits = image -> flatten -> dense(hidden) -> relu -> dense(classes)
loss cross_entropy(logits, label)
train { optimizer sgd(lr = 0.1) batch 16 epochs 1 }
"""

MODELS = Path(__file__).resolve().parents[1] / "models"
CHARS = "the cat sat on a mat and the dog ran to the cat "


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working directory holding mlp.net and digits as train.npz (120) and val.npz (50)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp.net").write_text(MLP)
    full, _ = load_dataset("digits", x_shape=(1, 8, 8), x_dtype="float32", y_shape=(), y_dtype="int64",
                           val_fraction=0, limit=170, classes=10)
    np.savez(tmp_path / "train.npz", x=full.x[:120], y=full.y[:120])
    np.savez(tmp_path / "val.npz", x=full.x[120:], y=full.y[120:])
    return tmp_path


def dslc(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, out, err


def write_idx(path, array):
    """An MNIST idx file: two zero bytes, the type code (0x08, unsigned bytes), the rank, the sizes."""
    array = np.asarray(array, dtype=np.uint8)
    path.write_bytes(b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.tobytes())


# ---- data (no training) ------------------------------------------------------------------------
def test_mnist_test_set_is_found_beside_train(tmp_path):
    assert mnist_test_set(str(tmp_path)) is None
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4)))
    assert mnist_test_set(str(tmp_path)) is None                 # no t10k pair
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 4, 4)))
    assert mnist_test_set(str(tmp_path)) == str(tmp_path / "t10k-images-idx3-ubyte")
    assert mnist_test_set(str(tmp_path / "t10k-images-idx3-ubyte")) is None     # a file is used as given


def test_a_text_read_with_another_texts_vocabulary(tmp_path):
    (tmp_path / "a.txt").write_text(CHARS)
    (tmp_path / "b.txt").write_text("a cat")
    (tmp_path / "c.txt").write_text("a zebra")
    shapes = dict(x_shape=(4,), x_dtype="int64", y_shape=(4,), y_dtype="int64", val_fraction=0)
    a, _ = load_dataset(str(tmp_path / "a.txt"), **shapes)
    b, _ = load_dataset(str(tmp_path / "b.txt"), vocab=a.vocab, **shapes)
    assert b.vocab == a.vocab and "".join(a.vocab[i] for i in b.x[0]) == "a ca"
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "c.txt"), vocab=a.vocab, **shapes)
    assert "'b'" in str(e.value) and "'z'" in str(e.value)


def test_resume_and_overwrite_need_an_explicit_checkpoint(work, capsys):
    code, _, err = dslc(capsys, "run", "mlp.net", "--resume")
    assert code == 2 and "--checkpoint runs" in err
    code, _, err = dslc(capsys, "run", "mlp.net", "--early-stopping", "0")
    assert code == 2 and "--early-stopping 0" in err
    assert not (work / "runs").exists()


# ---- training --------------------------------------------------------------------------------
@pytest.mark.slow
def test_val_is_the_validation_set(work, capsys):
    code, out, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--val", "val.npz", "--quiet",
                          "--checkpoint", "ck")
    assert code == 0, err
    assert "120 train / 50 validation samples (val.npz)" in err
    _, meta = load_checkpoint(work / "ck" / "last.ckpt")
    assert meta["data"]["val"] == "val.npz" and meta["data"]["val_samples"] == 50
    # without --val: the split, said so
    code, out, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet", "--checkpoint", "ck2")
    assert code == 0 and "96 train / 24 validation samples (20% of train.npz held out, random)" in err


@pytest.mark.slow
def test_an_mnist_directory_validates_and_evaluates_on_t10k(work, capsys):
    rng = np.random.default_rng(0)
    mnist = work / "mnist"
    mnist.mkdir()
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8)))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    code, _, err = dslc(capsys, "run", "mlp.net", "--data", mnist, "--quiet", "--checkpoint", "ck")
    assert code == 0, err
    assert "40 train / 12 validation samples (t10k-images-idx3-ubyte, the test set beside the training set)" in err
    code, out, err = dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt", "--data", mnist)
    assert code == 0, err
    assert f"on {mnist / 't10k-images-idx3-ubyte'} (all 12 samples)" in out


@pytest.mark.slow
def test_eval_scores_the_whole_file_with_per_class_accuracy_and_confusion(work, capsys):
    assert dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet", "--checkpoint", "ck")[0] == 0
    code, out, err = dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt", "--data", "val.npz")
    assert code == 0, err
    first, *table = out.splitlines()
    assert first.startswith("mlp on val.npz (all 50 samples): loss ") and "top-1 accuracy" in first
    assert table[0].split()[:4] == ["class", "n", "acc", "predicted"] and len(table) == 11

    code, out, err = dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt", "--data", "val.npz",
                          "--format", "json")
    assert code == 0, err
    res = json.loads(out)
    assert set(res) >= {"loss", "accuracy", "top5", "per_class", "confusion"}
    assert res["split"] == "all" and res["samples"] == 50
    confusion = np.array(res["confusion"])
    y = np.load(work / "val.npz")["y"]
    assert confusion.shape == (10, 10) and confusion.sum() == 50
    assert list(confusion.sum(axis=1)) == list(np.bincount(y, minlength=10))
    assert res["accuracy"] == pytest.approx(np.trace(confusion) / 50)
    for c, acc in enumerate(res["per_class"]):
        row = confusion[c].sum()
        assert (acc is None) if row == 0 else acc == pytest.approx(confusion[c, c] / row)

    # the training file itself: scored whole, with a note that this includes the training samples
    code, out, err = dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt", "--data", "train.npz")
    assert code == 0 and "(all 120 samples)" in out and "includes its training samples" in err

    # a built-in dataset: its validation split, said so
    code, out, _ = dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt", "--data", "digits", "--limit", "100")
    assert code == 0 and "on digits (validation split, 20 samples)" in out


@pytest.mark.slow
def test_run_without_checkpoint_writes_a_new_run_directory_each_time(work, capsys):
    code, out, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet")
    assert code == 0, err
    assert "checkpoint: runs/mlp/1/last.ckpt" in out and "best: runs/mlp/1/best.ckpt" in out
    first = (work / "runs/mlp/1/last.ckpt").read_bytes()
    code, out, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet", "--seed", "1")
    assert code == 0, err
    assert "checkpoint: runs/mlp/2/last.ckpt" in out
    assert (work / "runs/mlp/1/last.ckpt").read_bytes() == first
    assert (work / "runs/mlp/2/last.ckpt").read_bytes() != first
    # a run that fails before saving leaves no empty directory behind
    code, _, err = dslc(capsys, "run", "mlp.net", "--data", "missing.npz", "--quiet")
    assert code == 1 and sorted(p.name for p in (work / "runs/mlp").iterdir()) == ["1", "2"]
    # the default directory continues like any other
    code, _, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet", "--checkpoint", "runs/mlp/1",
                        "--resume", "--epochs", "2")
    assert code == 0 and "resuming mlp at epoch 2" in err


def _scripted_validation(monkeypatch, losses):
    """Trainer.evaluate reports these validation losses, one per epoch, so which epoch is best is known."""
    it = iter(losses)

    def evaluate(self, ds, topk=(1,), confusion=False):
        return {"loss": next(it), "accuracy": None}
    monkeypatch.setattr(Trainer, "evaluate", evaluate)


@pytest.mark.slow
def test_best_checkpoint_follows_the_validation_loss(work, capsys, monkeypatch):
    _scripted_validation(monkeypatch, [1.0, 0.5, 0.7, 0.6])
    code, out, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet", "--epochs", "4",
                          "--checkpoint", "ck")
    assert code == 0, err
    assert "best: ck/best.ckpt (epoch 2, validation loss 0.5000)" in out
    best, best_meta = load_checkpoint(work / "ck" / "best.ckpt")
    last, last_meta = load_checkpoint(work / "ck" / "last.ckpt")
    assert best_meta["epoch"] == 2 and last_meta["epoch"] == 4
    assert any(not np.array_equal(best[k], last[k]) for k in best if k.startswith("param/"))


@pytest.mark.slow
def test_early_stopping_stops_after_n_epochs_without_improvement(work, capsys, monkeypatch):
    _scripted_validation(monkeypatch, [1.0, 0.5, 0.7, 0.6, 0.55, 0.4])
    code, out, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet", "--epochs", "6",
                          "--early-stopping", "3", "--checkpoint", "ck")
    assert code == 0, err
    assert "early stopping: the validation loss has not improved for 3 epochs (best 0.5000, epoch 2)" in err
    assert out.startswith("done: 5 epochs")
    _, meta = load_checkpoint(work / "ck" / "last.ckpt")
    assert len(meta["history"]) == 5


@pytest.mark.slow
def test_early_stopping_needs_validation_data(work, capsys):
    (work / "noval.net").write_text(MLP.replace("epochs 1", "epochs 1 val_fraction 0").replace("mlp(", "noval("))
    code, _, err = dslc(capsys, "run", "noval.net", "--data", "train.npz", "--quiet", "--early-stopping", "2")
    assert code == 2 and "no validation data" in err and "--val" in err
    assert not (work / "runs" / "noval").exists() or not any((work / "runs" / "noval").iterdir())


@pytest.mark.slow
def test_eval_applies_the_recorded_set_values(work, capsys):
    code, _, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet", "--set", "hidden=8",
                        "--checkpoint", "ck")
    assert code == 0, err
    assert load_checkpoint(work / "ck" / "last.ckpt")[1]["set"] == {"hidden": "8"}
    code, out, err = dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt", "--data", "val.npz")
    assert code == 0, err
    assert "using the --set values recorded in ck/last.ckpt: hidden=8" in err
    assert dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt", "--data", "val.npz",
                "--set", "hidden=8")[0] == 0
    code, _, err = dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt", "--data", "val.npz",
                        "--set", "hidden=12")
    assert code == 2 and "--set hidden=12 does not match ck/last.ckpt, which was trained with --set hidden=8" in err
    # without --data: the split the run validated on (the same samples as the run's last epoch)
    code, out, err = dslc(capsys, "eval", "mlp.net", "--weights", "ck/last.ckpt")
    assert code == 0 and "on train.npz (validation split, 24 samples)" in out
    val_loss = load_checkpoint(work / "ck" / "last.ckpt")[1]["history"][-1]["val_loss"]
    assert f"loss {val_loss:.4f}" in out


@pytest.mark.slow
def test_a_text_model_records_its_vocabulary(work, capsys):
    (work / "t.txt").write_text(CHARS * 8)
    (work / "v.txt").write_text("the dog sat on the mat " * 4)
    vocab = "".join(sorted(set(CHARS)))
    code, _, err = dslc(capsys, "run", MODELS / "charlstm.net", "--data", "t.txt", "--val", "v.txt",
                        "--set", f"vocab={len(vocab)}", "--set", "embedding=4", "--set", "hidden=8", "--set", "T=8",
                        "--quiet", "--checkpoint", "ck")
    assert code == 0, err
    _, meta = load_checkpoint(work / "ck" / "last.ckpt")
    assert meta["vocab"] == vocab
    code, out, err = dslc(capsys, "eval", MODELS / "charlstm.net", "--weights", "ck/last.ckpt")
    assert code == 0, err
    assert "on v.txt (all 11 samples)" in out and f"loss {meta['history'][-1]['val_loss']:.4f}" in out



@pytest.mark.slow
def test_an_interrupted_run_in_the_default_directory_says_how_to_continue(work, capsys, monkeypatch):
    original = Trainer._step

    def step(self, *a, **kw):
        out = original(self, *a, **kw)
        signal.raise_signal(signal.SIGINT)
        return out
    monkeypatch.setattr(Trainer, "_step", step)
    code, _, err = dslc(capsys, "run", "mlp.net", "--data", "train.npz", "--quiet")
    assert code == 130
    assert "saved runs/mlp/1/last.ckpt; continue with --checkpoint runs/mlp/1 --resume" in err
