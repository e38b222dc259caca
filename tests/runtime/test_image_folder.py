"""Image folders as --data: class folders (or train/ and val/ of them) read with Pillow, fitted to
the network's input, held in memory or streamed batch by batch; class names in the checkpoint;
and every error a folder can hold."""
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dslc.cli import main
from dslc.runtime import image_folder
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.data import load_dataset, named_batches
from dslc.runtime.errors import DataError
from dslc.runtime.image_folder import LazyImages

CLASSES = ("circle", "square", "triangle")
FORMATS = ("png", "jpg", "bmp", "gif")
GREY = dict(x_shape=(1, 16, 16), x_dtype="float32", y_shape=(), y_dtype="int64", classes=3)
RGB = dict(GREY, x_shape=(3, 12, 12))


def draw(kind: str, size: tuple, colour: tuple, mode: str) -> Image.Image:
    """A light shape on a dark background, `size` (width, height)."""
    img = Image.new("RGB", size, (10, 10, 30))
    d = ImageDraw.Draw(img)
    w, h = size
    box = (w // 5, h // 5, w - w // 5, h - h // 5)
    if kind == "circle":
        d.ellipse(box, fill=colour)
    elif kind == "square":
        d.rectangle(box, fill=colour)
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    return img.convert(mode)


def make_folder(root, classes=CLASSES, n=12):
    """`n` shapes per class folder, in mixed formats, sizes and modes (greyscale, RGB, RGBA,
    palette)."""
    rng = np.random.default_rng(0)
    for kind in classes:
        os.makedirs(root / kind)
        for i in range(n):
            fmt = FORMATS[i % len(FORMATS)]
            mode = ("L", "RGB", "RGBA", "P")[i % 4] if fmt == "png" else "L" if i % 3 == 0 else "RGB"
            colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
            size = (int(rng.integers(10, 40)), int(rng.integers(10, 40)))
            img = draw(kind, size, colour, mode)
            img.save(root / kind / f"{kind}{i:02d}.{fmt}")
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "shapes")


def error(source, **kwargs) -> DataError:
    with pytest.raises(DataError) as err:
        load_dataset(str(source), **{**GREY, **kwargs})
    assert err.value.hint
    return err.value


# ---- loading ------------------------------------------------------------------------------------
def test_classes_are_the_sorted_folder_names_and_every_image_is_read(folder):
    train, val = load_dataset(str(folder), val_fraction=0, **GREY)
    assert train.class_names == list(CLASSES) and train.classes == 3
    assert len(train) == 36 and len(val) == 0
    assert train.x.shape == (36, 1, 16, 16) and train.x.dtype == np.float32
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0
    assert np.bincount(train.y).tolist() == [12, 12, 12]
    assert not train.streamed
    assert any("36 images in 3 classes (circle, square, triangle), decoded into memory" in n for n in train.notes)


def test_validation_is_a_seeded_split_like_the_other_sources(folder):
    train, val = load_dataset(str(folder), val_fraction=0.25, seed=3, **GREY)
    assert (len(train), len(val)) == (27, 9)
    again, _ = load_dataset(str(folder), val_fraction=0.25, seed=3, **GREY)
    np.testing.assert_array_equal(train.x, again.x)
    assert val.origin is None and val.class_names == list(CLASSES)


def test_an_image_is_converted_to_the_inputs_channels_and_resized_bilinearly(tmp_path):
    root = tmp_path / "one"
    for kind in ("a", "b"):
        os.makedirs(root / kind)
    pixels = np.random.default_rng(1).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "a" / "x.png")
    Image.fromarray(pixels).save(root / "b" / "x.bmp")
    rgb, _ = load_dataset(str(root), val_fraction=0, **{**RGB, "classes": 2})
    grey, _ = load_dataset(str(root), val_fraction=0, **{**GREY, "classes": 2})
    src = torch.from_numpy(pixels.transpose(2, 0, 1)[None].astype(np.float32) / 255)
    want = torch.nn.functional.interpolate(src, size=(12, 12), mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(rgb.x[0], want, atol=1e-6)
    luma = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32)[None, None] / 255
    want = torch.nn.functional.interpolate(torch.from_numpy(luma), size=(16, 16), mode="bilinear",
                                           align_corners=False)[0].numpy()
    np.testing.assert_allclose(grey.x[0], want, atol=1e-6)
    flat, _ = load_dataset(str(root), val_fraction=0, **{**GREY, "x_shape": (256,), "classes": 2})
    np.testing.assert_allclose(flat.x[0], grey.x[0].reshape(-1))


def test_predict_reads_an_image_as_the_folder_does(folder):
    from dslc.cli_inputs import read_image
    lazy, _ = load_dataset(str(folder), val_fraction=0, stream=True, **RGB)
    path = str(folder / "square" / "square01.jpg")
    i = list(lazy.x.paths).index(path)
    np.testing.assert_array_equal(read_image(path, (3, 12, 12), invert=False), lazy.x[[i]][0])


def test_train_and_val_subfolders_are_the_two_sets(tmp_path):
    make_folder(tmp_path / "d" / "train")
    make_folder(tmp_path / "d" / "val", classes=("circle", "triangle"), n=3)
    train, val = load_dataset(str(tmp_path / "d"), val_fraction=0.2, **GREY)
    assert len(train) == 36 and len(val) == 6
    assert val.origin == str(tmp_path / "d" / "val")
    assert sorted(val.y.tolist()) == [0, 0, 0, 2, 2, 2]       # numbered by train's classes


def test_class_names_given_number_the_labels(folder):
    train, _ = load_dataset(str(folder), val_fraction=0, class_names=["circle", "square", "triangle"], **GREY)
    assert np.bincount(train.y).tolist() == [12, 12, 12]
    err = error(folder, val_fraction=0, class_names=["circle", "hexagon", "square"])
    assert "'triangle'" in err.message


# ---- streaming ----------------------------------------------------------------------------------
def test_streamed_batches_equal_those_held_in_memory(folder):
    held, held_val = load_dataset(str(folder), val_fraction=0.2, seed=1, stream=False, **RGB)
    lazy, lazy_val = load_dataset(str(folder), val_fraction=0.2, seed=1, stream=True, **RGB)
    assert lazy.streamed and isinstance(lazy.x, LazyImages) and len(lazy) == len(held)
    assert any("streamed from disk" in n for n in lazy.notes)
    for shuffle in (True, False):
        a = list(named_batches(held, 5, shuffle=shuffle, rng=np.random.default_rng(7), drop_last=True))
        b = list(named_batches(lazy, 5, shuffle=shuffle, rng=np.random.default_rng(7), drop_last=True))
        assert len(a) == len(b) == len(held) // 5
        for p, q in zip(a, b):
            np.testing.assert_array_equal(p["x"], q["x"])
            np.testing.assert_array_equal(p["y"], q["y"])
    np.testing.assert_array_equal(lazy_val.x[:], held_val.x)


def test_the_size_limit_decides_streaming(folder, monkeypatch):
    monkeypatch.setenv("DSLC_DATA_MEMORY", "1K")
    assert load_dataset(str(folder), **GREY)[0].streamed
    monkeypatch.setenv("DSLC_DATA_MEMORY", "1G")
    assert not load_dataset(str(folder), **GREY)[0].streamed


def test_a_worker_thread_decodes_the_next_batch(folder, monkeypatch):
    lazy, _ = load_dataset(str(folder), val_fraction=0, stream=True, **GREY)
    threads, decode = [], image_folder.decode_image

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return decode(*args, **kwargs)

    monkeypatch.setattr(image_folder, "decode_image", recording)
    it = named_batches(lazy, 4, shuffle=True, rng=np.random.default_rng(0))
    next(it)
    assert 4 <= len(threads) <= 8       # the first batch, and at most the next one decoded ahead
    rest = list(it)
    assert len(rest) == 8 and len(threads) == 36        # each image decoded once
    assert all(t.startswith("dslc-decode") for t in threads)


# ---- errors -------------------------------------------------------------------------------------
def test_an_unreadable_image_is_named(folder):
    (folder / "square" / "broken.png").write_bytes(b"not a png")
    err = error(folder)
    assert str(folder / "square" / "broken.png") in err.message
    lazy, _ = load_dataset(str(folder), val_fraction=0, stream=True, **GREY)
    with pytest.raises(DataError, match="broken.png"):
        list(named_batches(lazy, 8, shuffle=False, rng=np.random.default_rng(0)))


def test_a_truncated_image_is_named(folder):
    path = folder / "circle" / "circle00.png"
    path.write_bytes(path.read_bytes()[:60])
    assert "circle00.png" in error(folder).message


def test_other_files_are_skipped_with_a_note(folder):
    (folder / "circle" / "notes.txt").write_text("drawn by hand")
    (folder / "circle" / ".DS_Store").write_bytes(b"\0")
    train, _ = load_dataset(str(folder), val_fraction=0, **GREY)
    assert len(train) == 36
    skipped = [n for n in train.notes if n.startswith("note: skipped")]
    assert len(skipped) == 1 and "1 file" in skipped[0] and "notes.txt" in skipped[0]


def test_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no class folders of images" in error(tmp_path / "empty").message
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    err = error(tmp_path / "empty")
    assert "holds no images" in err.message and "sub" in err.message
    os.rmdir(tmp_path / "empty" / "sub")
    (tmp_path / "empty" / "cat.png").write_bytes(b"")
    (tmp_path / "empty" / "other").mkdir()
    (tmp_path / "empty" / "other" / "x.txt").write_text("")
    assert "holds no images" in error(tmp_path / "empty").message


def test_images_without_class_folders(tmp_path):
    from dslc.runtime.data import _image_folder, _NetworkShapes
    root = tmp_path / "loose"
    root.mkdir()
    Image.new("L", (4, 4)).save(root / "a.png")
    shapes = _NetworkShapes((1, 4, 4), "float32", (), "int64", None)
    with pytest.raises(DataError, match="no class folders"):
        _image_folder(str(root), shapes, 0.2, 0, None, None)


def test_a_class_folder_without_images(folder):
    (folder / "star").mkdir()
    err = error(folder, classes=4)
    assert "star" in err.message and "holds no images" in err.message


def test_class_count_mismatch_suggests_set(folder):
    err = error(folder, classes=10)
    assert "3 classes (circle, square, triangle), but the network has 10" in err.message
    assert "--set classes=3" in err.hint


def test_inputs_images_cannot_fill(folder):
    assert "4 channels" in error(folder, x_shape=(4, 8, 8)).message
    assert "int64" in error(folder, x_dtype="int64").message
    assert "(15,)" in error(folder, x_shape=(15,)).message


# ---- the command line ---------------------------------------------------------------------------
def dslc(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, out, err


@pytest.mark.slow
def test_run_records_class_names_and_predict_shows_them(folder, tmp_path, capsys):
    ck = tmp_path / "ck"
    code, out, err = dslc(capsys, "run", "models/digits_cnn.net", "--data", folder, "--epochs", 1,
                          "--checkpoint", ck, "--set", "classes=3", "--quiet")
    assert code == 0, err
    assert "36 images in 3 classes (circle, square, triangle), decoded into memory" in err
    _, meta = load_checkpoint(str(ck / "last.ckpt"))
    assert meta["class_names"] == list(CLASSES)
    Image.new("L", (8, 8), 230).save(tmp_path / "light.png")
    code, out, err = dslc(capsys, "predict", "models/digits_cnn.net", "--weights", ck / "last.ckpt",
                          folder / "square" / "square01.jpg", tmp_path / "light.png", "--top", 3)
    assert code == 0, err
    assert {"'circle'", "'square'", "'triangle'"} <= set(out.split())
    assert "mostly light" not in err        # that note is about the built-in datasets' light strokes
    code, out, err = dslc(capsys, "eval", "models/digits_cnn.net", "--weights", ck / "last.ckpt")
    assert code == 0 and "validation split, 7 samples" in out


@pytest.mark.slow
def test_a_streamed_run_trains_as_one_held_in_memory(folder, tmp_path, capsys, monkeypatch):
    losses = []
    for memory in ("1G", "1K"):
        monkeypatch.setenv("DSLC_DATA_MEMORY", memory)
        code, out, err = dslc(capsys, "run", "models/digits_cnn.net", "--data", folder, "--epochs", 1,
                              "--checkpoint", tmp_path / memory, "--set", "classes=3", "--quiet", "--batch", 8)
        assert code == 0, err
        losses.append(out.split("validation loss ")[1].split()[0])
    assert "streamed from disk" in err
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_run_errors_exit_1_without_a_traceback(folder, tmp_path, capsys):
    code, _, err = dslc(capsys, "run", "models/digits_cnn.net", "--data", folder, "--epochs", 1,
                        "--checkpoint", tmp_path / "ck")
    assert code == 1 and "--set classes=3" in err
    (folder / "circle" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    code, _, err = dslc(capsys, "run", "models/digits_cnn.net", "--data", folder, "--epochs", 1,
                        "--checkpoint", tmp_path / "ck2", "--set", "classes=3")
    assert code == 1 and "bad.jpg" in err


@pytest.mark.slow
def test_train_and_val_folders_on_the_command_line(tmp_path, capsys):
    make_folder(tmp_path / "d" / "train")
    make_folder(tmp_path / "d" / "val", classes=("circle", "triangle"), n=3)
    code, out, err = dslc(capsys, "run", "models/digits_cnn.net", "--data", tmp_path / "d", "--epochs", 1,
                          "--checkpoint", tmp_path / "ck", "--set", "classes=3", "--quiet")
    assert code == 0, err
    assert f"36 train / 6 validation samples ({tmp_path / 'd' / 'val'}, the val folder beside train)" in err
    code, out, err = dslc(capsys, "eval", "models/digits_cnn.net", "--weights", tmp_path / "ck" / "last.ckpt",
                          "--data", tmp_path / "d")
    assert code == 0, err
    assert f"on {tmp_path / 'd' / 'val'} (all 6 samples)" in out
