"""CSV tables as --data: a header, a label column, the other columns the input's values; and
every error a table can hold, named by file, line and column."""
import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.data import load_dataset
from dslc.runtime.errors import DataError

IMAGE = dict(x_shape=(1, 2, 3), x_dtype="float32", y_shape=(), y_dtype="int64", classes=3)


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return str(path)


def table(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6)).round(4), rng.integers(0, 3, size=n)


def error(path, **kwargs) -> DataError:
    with pytest.raises(DataError) as err:
        load_dataset(path, **{**IMAGE, **kwargs})
    assert err.value.hint
    return err.value


def test_values_are_reshaped_to_the_input_and_labels_kept(tmp_path):
    x, y = table()
    # the label column need not come first
    path = write_csv(tmp_path / "t.csv", ["a", "b", "label", "c", "d", "e", "f"],
                     [[*r[:2], lab, *r[2:]] for r, lab in zip(x, y)])
    full, _ = load_dataset(path, val_fraction=0, **IMAGE)
    assert full.x.shape == (12, 1, 2, 3) and full.x.dtype == np.float32 and full.classes == 3
    rows = {tuple(r): lab for r, lab in zip(x.astype(np.float32), y)}
    for sample, label in zip(full.x, full.y):
        assert rows[tuple(sample.reshape(-1))] == label
    assert full.class_names is None


def test_a_split_and_the_label_column_flag(tmp_path):
    x, y = table(20)
    path = write_csv(tmp_path / "t.csv", ["p0", "p1", "p2", "p3", "p4", "p5", "digit"],
                     [[*r, lab] for r, lab in zip(x, y)])
    train, val = load_dataset(path, val_fraction=0.25, label_column="digit", **IMAGE)
    assert (len(train), len(val)) == (15, 5)


def test_class_names_in_the_label_column_are_numbered_in_sorted_order(tmp_path):
    x, y = table()
    names = np.array(["dog", "cat", "emu"])[y]
    path = write_csv(tmp_path / "t.csv", ["label", *"abcdef"], [[n, *r] for n, r in zip(names, x)])
    full, _ = load_dataset(path, val_fraction=0, **IMAGE)
    assert full.class_names == ["cat", "dog", "emu"]
    assert sorted(full.y.tolist()) == sorted(["cat", "dog", "emu"].index(n) for n in names)
    err = error(path, class_names=["cat", "dog", "fox"])
    assert f"{path}:" in err.message and "'emu'" in err.message


def test_float_targets_and_features(tmp_path):
    x, _ = table()
    path = write_csv(tmp_path / "r.csv", ["label", *"abcdef"], [[0.5 * i, *r] for i, r in enumerate(x)])
    full, _ = load_dataset(path, val_fraction=0, x_shape=(6,), x_dtype="float32", y_shape=(), y_dtype="float32")
    assert full.y.dtype == np.float32 and sorted(full.y.tolist()) == [0.5 * i for i in range(12)]


# ---- errors -------------------------------------------------------------------------------------
def test_the_value_count_must_match_the_input(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["label", "a", "b"], [[0, 1, 2]])
    err = error(path)
    assert path in err.message and "2 value columns" in err.message and "takes 6 values" in err.message


def test_a_cell_that_is_not_a_number_is_named_by_line_and_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["label", *"abcdef"], [[0, 1, 2, 3, 4, 5, 6], [1, 1, 2, "x", 4, 5, 6]])
    err = error(path)
    assert err.message.startswith(f"{path}:3:4: 'x' in column 'c' is not a number")
    path = write_csv(tmp_path / "e.csv", ["label", *"abcdef"], [[0, 1, 2, 3, 4, 5, ""]])
    assert error(path).message.startswith(f"{path}:2:7: ''")
    path = write_csv(tmp_path / "n.csv", ["label", *"abcdef"], [[0, 1, 2, 3, 4, "nan", 6]])
    assert error(path).message.startswith(f"{path}:2:6: 'nan'")


def test_missing_label_column_ragged_rows_and_empty_files(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["y", *"abcdef"], [[0, *range(6)]])
    err = error(path)
    assert "no column 'label'" in err.message and "--label-column" in err.hint
    path = write_csv(tmp_path / "r.csv", ["label", *"abcdef"], [[0, *range(6)], [1, 2]])
    assert error(path).message.startswith(f"{path}:3: 2 cells, but the header has 7 columns")
    (tmp_path / "empty.csv").write_text("")
    assert "is empty" in error(str(tmp_path / "empty.csv")).message
    path = write_csv(tmp_path / "h.csv", ["label", *"abcdef"], [])
    assert "no rows" in error(path).message


def test_labels_beyond_the_networks_classes(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["label", *"abcdef"], [[7, *range(6)], [0, *range(6)]])
    assert "up to 7" in error(path).message
    path = write_csv(tmp_path / "n.csv", ["label", *"abcdef"], [["a", *range(6)], ["b", *range(6)]])
    assert "--set classes=2" in error(path).hint


def test_not_utf8(tmp_path):
    (tmp_path / "b.csv").write_bytes(b"label,a\n\xff\xfe,1\n")
    assert "not UTF-8" in error(str(tmp_path / "b.csv")).message


# ---- the command line ---------------------------------------------------------------------------
MLP = """network mlp(classes = 3)
input x: [6]
input label: int
logits = x -> fc: dense(classes)
loss cross_entropy(logits, label)
train {
  optimizer sgd(lr = 0.1)
  epochs 1
  batch 4
}
"""


@pytest.mark.slow
def test_run_and_eval_on_a_csv_with_named_classes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp.net").write_text(MLP)
    x, y = table(30)
    names = np.array(["cat", "dog", "emu"])[y]
    write_csv(tmp_path / "t.csv", ["kind", *"abcdef"], [[n, *r] for n, r in zip(names, x)])
    code = main(["run", "mlp.net", "--data", "t.csv", "--label-column", "kind", "--checkpoint", "ck", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    _, meta = load_checkpoint("ck/last.ckpt")
    assert meta["class_names"] == ["cat", "dog", "emu"] and meta["label_column"] == "kind"
    code = main(["eval", "mlp.net", "--weights", "ck/last.ckpt"])     # the recorded label column
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "validation split, 6 samples" in out
    code = main(["run", "mlp.net", "--data", "t.csv", "--checkpoint", "ck2", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1 and "no column 'label'" in err and "Traceback" not in err
