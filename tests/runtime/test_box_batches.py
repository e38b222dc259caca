"""Training data for networks with unbatched inputs (runtime/box_batches.py): per-sample images
and rows of boxes with a sample-index column, held per sample, batched with the index renumbered.
"""
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.compiler import compile_file, compile_source
from dslc.diagnostics import Source
from dslc.runtime import box_batches
from dslc.runtime.data import InputSpec, load_inputs
from dslc.runtime.errors import DataError

MODEL = Path(__file__).resolve().parents[2] / "models" / "fast_rcnn_head.net"
INPUTS = {"image": InputSpec((3, 32, 32), "float32"), "rois": InputSpec((5,), "float32"),
          "label": InputSpec((), "int64", 5, True), "target": InputSpec((4,), "float32", None, True)}


def _groups():
    net, _ = compile_file(str(MODEL))
    return box_batches.row_groups(net)


def _npz(path, n=6, counts=None, **change):
    rng = np.random.default_rng(0)
    counts = counts or [1 + i % 3 for i in range(n)]
    rois = np.array([[i, 1 + k, 2, 20 + k, 25] for i in range(n) for k in range(counts[i])], np.float32)
    rois = rois[rng.permutation(len(rois))]         # rows in any order
    r = len(rois)
    arrays = dict(image=rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rois=rois,
                  label=np.arange(r) % 5, target=np.arange(r * 4, dtype=np.float32).reshape(r, 4))
    arrays.update(change)
    np.savez(path, **arrays)
    return arrays


def test_row_groups_find_the_boxes_and_the_image_they_lie_in():
    (g,) = _groups()
    assert g.axis == "R" and g.index == "rois" and set(g.members) == {"rois", "label", "target"}
    assert g.members[0] == "rois"
    assert g.extent == (32.0, 32.0)          # 16x16 maps at scale 0.5


def test_a_network_without_unbatched_inputs_has_no_groups():
    net, _ = compile_source(Source("t.net", "network t\ninput x: [4]\ny = x -> dense(4)\nloss mse(y, x)\n"))
    assert box_batches.row_groups(net) == ()
    feeds = {"x": np.zeros((2, 4), np.float32)}
    assert box_batches.gather(feeds, ()) is feeds


def test_npz_rows_are_held_per_sample_and_gathered_with_renumbered_indices(tmp_path):
    arrays = _npz(tmp_path / "b.npz")
    train, val = load_inputs(str(tmp_path / "b.npz"), INPUTS, val_fraction=0, rows=_groups(), classes_of="label")
    assert len(train) == 6 and train.arrays["rois"].dtype == object
    for j in range(6):      # each (shuffled) sample keeps its image's rows, in the file's order
        k = int(train.arrays["rois"][j][0, 0])
        np.testing.assert_array_equal(train.arrays["image"][j], arrays["image"][k])
        mine = arrays["rois"][:, 0] == k
        np.testing.assert_array_equal(train.arrays["rois"][j], arrays["rois"][mine])
        np.testing.assert_array_equal(train.arrays["target"][j], arrays["target"][mine])
    picked = {k: v[[4, 1]] for k, v in train.arrays.items()}       # a batch: samples 4 then 1
    feeds = box_batches.gather(picked, _groups())
    rows4, rows1 = len(train.arrays["rois"][4]), len(train.arrays["rois"][1])
    assert feeds["rois"].shape == (rows4 + rows1, 5) and feeds["rois"].dtype == np.float32
    np.testing.assert_array_equal(feeds["rois"][:, 0], [0] * rows4 + [1] * rows1)
    np.testing.assert_array_equal(feeds["rois"][:, 1:], np.concatenate([train.arrays["rois"][4],
                                                                         train.arrays["rois"][1]])[:, 1:])
    assert feeds["label"].shape == (rows4 + rows1,) and feeds["image"].shape == (2, 3, 32, 32)


def test_synthetic_rows_are_boxes_inside_the_image():
    train, val = load_inputs("synthetic", INPUTS, val_fraction=0.25, limit=8, rows=_groups(), classes_of="label")
    assert len(train) == 6 and len(val) == 2 and train.classes == 5
    feeds = box_batches.gather({k: v[:3] for k, v in train.arrays.items()}, _groups())
    boxes = feeds["rois"]
    assert boxes.shape == (3 * box_batches.SYNTHETIC_BOXES, 5)
    assert set(boxes[:, 0]) == {0, 1, 2}
    assert (boxes[:, 1:] >= 0).all() and (boxes[:, 1:] < 32).all()
    assert (boxes[:, 3] > boxes[:, 1]).all() and (boxes[:, 4] > boxes[:, 2]).all()
    assert feeds["label"].max() < 5


@pytest.mark.parametrize("change, message", [
    ({"rois": np.array([[9, 1, 2, 3, 4]], np.float32)}, "row 0 in b.npz names sample 9"),
    ({"rois": np.array([[0.5, 1, 2, 3, 4]], np.float32)}, "names sample 0.5"),
])
def test_rows_naming_no_sample_are_refused(tmp_path, change, message):
    _npz(tmp_path / "b.npz", n=1, label=np.zeros(1, np.int64), target=np.zeros((1, 4), np.float32), **change)
    with pytest.raises(DataError, match=message) as err:
        load_inputs(str(tmp_path / "b.npz"), INPUTS, val_fraction=0, rows=_groups())
    assert "first column" in err.value.hint


def test_a_sample_without_boxes_is_refused(tmp_path):
    _npz(tmp_path / "b.npz", n=3, counts=[2, 0, 1])
    with pytest.raises(DataError, match="sample 1 in b.npz has no rows in `rois`"):
        load_inputs(str(tmp_path / "b.npz"), INPUTS, val_fraction=0, rows=_groups())


def test_rows_that_do_not_line_up_are_refused(tmp_path):
    _npz(tmp_path / "b.npz", label=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="`label` in b.npz has 3"):
        load_inputs(str(tmp_path / "b.npz"), INPUTS, val_fraction=0, rows=_groups())


def test_unbatched_rows_no_roi_op_reads_are_refused_for_training():
    src = "network t\ninput x: [4]\ninput w: unbatched [R, 4]\ny = w -> dense(4)\nloss mse(y, w)\n"
    net, _ = compile_source(Source("t.net", src))
    groups = box_batches.row_groups(net)
    assert groups[0].index is None
    with pytest.raises(DataError, match="cannot tell which sample each row belongs to"):
        load_inputs("synthetic", {"x": InputSpec((4,), "float32"), "w": InputSpec((4,), "float32")}, rows=groups)


@pytest.mark.slow
def test_dslc_run_trains_on_an_npz_of_boxes_and_refuses_x_y_sources(tmp_path, capsys):
    _npz(tmp_path / "b.npz", n=10)
    code = main(["run", str(MODEL), "--data", str(tmp_path / "b.npz"), "--epochs", "1", "--batch", "4",
                 "--quiet", "--checkpoint", str(tmp_path / "ck"), "--metrics", str(tmp_path / "m.jsonl")])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert "R is not set" not in err
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 1
    code = main(["run", str(MODEL), "--data", "digits", "--epochs", "1", "--quiet",
                 "--checkpoint", str(tmp_path / "ck2")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "named image, rois, label, target" in err
