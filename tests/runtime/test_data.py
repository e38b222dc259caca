"""Dataset loading, splitting and batching, on small files the tests write, and every DataError."""
import gzip
import os

import numpy as np
import pytest
import torch

from dslc.runtime.data import CORPUS_PATH, Dataset, _resize_bilinear, batches, load_dataset
from dslc.runtime.errors import DataError, RuntimeUserError

IMAGE_NET = dict(x_shape=(1, 8, 8), x_dtype="float32", y_shape=(), y_dtype="int64")


def lm_net(length):
    return dict(x_shape=(length,), x_dtype="int64", y_shape=(length,), y_dtype="int64")


def data_error(source, **kwargs) -> DataError:
    with pytest.raises(DataError) as err:
        load_dataset(source, **kwargs)
    assert err.value.hint
    assert str(err.value) == f"{err.value.message}\n  = help: {err.value.hint}"
    assert isinstance(err.value, RuntimeUserError)
    return err.value


def write_idx(path, arr, type_code=0x08):
    header = bytes([0, 0, type_code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(">u1" if type_code == 0x08 else arr.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def mnist_like(n=20, side=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, side, side), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def write_mnist_pair(directory, prefix="train", n=20, side=6, gz=False, seed=0):
    images, labels = mnist_like(n, side, seed)
    suffix = ".gz" if gz else ""
    images_path = directory / f"{prefix}-images-idx3-ubyte{suffix}"
    write_idx(images_path, images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return images_path, images, labels


def sample_rows(x, y):
    """Each sample's inputs and label as one row, rows sorted: the multiset of (x, y) pairs."""
    rows = np.concatenate([x.reshape(len(x), int(np.prod(x.shape[1:]))).astype(np.float64),
                           y.reshape(len(y), -1).astype(np.float64)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def assert_split_of(train, val, x, y):
    """train and validation together hold exactly the samples (x, y), each label with its input."""
    assert len(train) + len(val) == len(x)
    np.testing.assert_array_equal(
        sample_rows(np.concatenate([train.x, val.x]), np.concatenate([train.y, val.y])), sample_rows(x, y))


# --- digits ------------------------------------------------------------------------------------

def test_digits_resized_and_split():
    train, val = load_dataset("digits", x_shape=(2, 12, 12), x_dtype="float32", y_shape=(), y_dtype="int64")
    assert len(train) + len(val) == 1797 and len(val) == round(1797 * 0.2)
    for ds in (train, val):
        assert ds.x.shape[1:] == (2, 12, 12) and ds.x.dtype == np.float32 and ds.x.flags.c_contiguous
        assert ds.y.dtype == np.int64 and ds.classes == 10 and ds.name == "digits"
        np.testing.assert_array_equal(ds.x[:, 0], ds.x[:, 1])          # repeated over channels
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0 and train.x.max() > 0.9
    assert set(np.unique(train.y)) == set(range(10))


def test_digits_flat_input_is_the_original_pixels():
    from sklearn.datasets import load_digits
    digits = load_digits()
    train, val = load_dataset("digits", x_shape=(64,), x_dtype="float32", y_shape=(), y_dtype="int64",
                              val_fraction=0.0)
    assert len(val) == 0 and val.x.shape == (0, 64)
    assert_split_of(train, val, digits.data / 16.0, digits.target)


def test_digits_one_hot_targets_and_seeded_split():
    one_hot = dict(x_shape=(8, 8), x_dtype="float32", y_shape=(10,), y_dtype="float32")
    a_train, a_val = load_dataset("digits", **one_hot, seed=1, limit=50)
    b_train, _ = load_dataset("digits", **one_hot, seed=1, limit=50)
    c_train, _ = load_dataset("digits", **one_hot, seed=2, limit=50)
    assert len(a_train) == 40 and len(a_val) == 10
    assert a_train.y.dtype == np.float32 and np.all(a_train.y.sum(axis=1) == 1)
    np.testing.assert_array_equal(a_train.x, b_train.x)
    assert not np.array_equal(a_train.x, c_train.x)


def test_digits_labels_out_of_range_for_the_network():
    err = data_error("digits", **IMAGE_NET, classes=5)
    assert "'digits'" in err.message and "up to 9" in err.message and "5 classes" in err.message
    assert "10" in err.hint


def test_digits_need_a_float_image_input():
    err = data_error("digits", **lm_net(16))
    assert "images" in err.message and "int64 of shape (16,)" in err.message


def test_digits_need_class_label_targets():
    err = data_error("digits", x_shape=(1, 8, 8), x_dtype="float32", y_shape=(1, 8, 8), y_dtype="float32")
    assert "class label" in err.message and "(1, 8, 8)" in err.message


def test_images_that_cannot_fit_the_input_shape():
    err = data_error("digits", x_shape=(3, 4, 4, 4), x_dtype="float32", y_shape=(), y_dtype="int64")
    assert "8x8" in err.message and "(3, 4, 4, 4)" in err.message
    err = data_error("digits", x_shape=(50,), x_dtype="float32", y_shape=(), y_dtype="int64")
    assert "(50,)" in err.message


@pytest.mark.parametrize("size", [(13, 9), (4, 3), (8, 8)])
def test_bilinear_resize_matches_torch(size):
    images = np.random.default_rng(0).random((3, 8, 6)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.tensor(images)[:, None], size=size, mode="bilinear",
                                               align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(_resize_bilinear(images, *size), expected, rtol=1e-6, atol=1e-6)


# --- synthetic ---------------------------------------------------------------------------------

def test_synthetic_classification():
    train, val = load_dataset("synthetic", **IMAGE_NET, classes=3)
    assert len(train) + len(val) == 512
    assert train.x.dtype == np.float32 and train.x.shape[1:] == (1, 8, 8)
    assert train.y.dtype == np.int64 and set(np.unique(train.y)) == {0, 1, 2} and train.classes == 3
    again, _ = load_dataset("synthetic", **IMAGE_NET, classes=3)
    np.testing.assert_array_equal(train.x, again.x)


def test_synthetic_language_model_and_regression():
    train, val = load_dataset("synthetic", **lm_net(5), classes=7, limit=20)
    assert len(train) == 16 and len(val) == 4
    assert train.x.dtype == np.int64 and train.x.max() < 7 and train.y.shape == (16, 5)
    train, _ = load_dataset("synthetic", x_shape=(4,), x_dtype="float32", y_shape=(2,), y_dtype="float32")
    assert train.y.dtype == np.float32 and 0 <= train.y.min() and train.y.max() < 1 and train.classes is None


# --- text --------------------------------------------------------------------------------------

def test_text_windows_are_shifted_by_one(tmp_path):
    path = tmp_path / "tiny.txt"
    text = "hello world, hello text!\n" * 4
    path.write_text(text, encoding="utf-8")
    train, val = load_dataset(str(path), **lm_net(8), val_fraction=0.25)
    assert train.vocab == "".join(sorted(set(text))) and train.classes == len(train.vocab)
    assert train.name == "tiny.txt" and val.vocab == train.vocab
    windows = np.concatenate([train.x, val.x])
    targets = np.concatenate([train.y, val.y])
    assert windows.shape == ((len(text) - 1) // 8, 8) and windows.dtype == np.int64
    decoded = "".join(train.vocab[i] for i in windows.ravel())
    assert decoded == text[:len(decoded)]                 # in order: validation is the tail
    assert "".join(train.vocab[i] for i in targets.ravel()) == text[1:len(decoded) + 1]
    assert len(val) == round(len(windows) * 0.25)


def test_text_limit_takes_the_first_windows(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    train, val = load_dataset(str(path), **lm_net(3), limit=10)
    assert len(train) == 8 and len(val) == 2
    assert "".join(train.vocab[i] for i in train.x[0]) == "abc"


def test_builtin_chars_corpus():
    size = os.path.getsize(CORPUS_PATH)
    assert 100_000 <= size < 1_000_000
    train, val = load_dataset("chars", **lm_net(32), classes=128)
    assert train.name == "chars" and train.classes == len(train.vocab) <= 128
    assert len(train) + len(val) == (size - 1) // 32


def test_text_needs_a_language_model(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("some text " * 10, encoding="utf-8")
    err = data_error(str(path), **IMAGE_NET)
    assert "t.txt" in err.message and "float32 of shape (1, 8, 8)" in err.message


def test_text_vocabulary_larger_than_the_network(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    err = data_error(str(path), **lm_net(4), classes=6)
    assert "10 distinct characters" in err.message and "6 classes" in err.message and "10" in err.hint


def test_text_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ".encode("latin-1") * 20)
    err = data_error(str(path), **lm_net(4))
    assert "latin1.txt" in err.message and "UTF-8" in err.message


def test_text_too_short_for_a_window(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("abc", encoding="utf-8")
    err = data_error(str(path), **lm_net(8))
    assert "'short.txt' has 0 samples" in err.message


# --- npz ---------------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((30, 1, 8, 8))                          # float64: cast to the network's float32
    y = rng.integers(0, 4, size=30).astype(np.int32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    train, val = load_dataset(str(path), **IMAGE_NET)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64 and train.classes == 4
    assert (len(train), len(val)) == (24, 6)
    assert_split_of(train, val, x.astype(np.float32), y)


def test_npz_missing_array(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    err = data_error(str(path), **IMAGE_NET)
    assert "d.npz" in err.message and "no array 'y'" in err.message and "labels" in err.message


def test_npz_shape_mismatch_names_both_shapes(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 3, 32, 32), np.float32), y=np.zeros(4, np.int64))
    err = data_error(str(path), **IMAGE_NET)
    assert "(3, 32, 32)" in err.message and "(1, 8, 8)" in err.message and "network input" in err.message


def test_npz_target_shape_mismatch(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros((4, 2), np.int64))
    err = data_error(str(path), **IMAGE_NET)
    assert "y in dataset" in err.message and "(2,)" in err.message and "network target" in err.message


def test_npz_wrong_dtype(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.uint8), y=np.zeros(4, np.int64))
    err = data_error(str(path), **IMAGE_NET)
    assert "dtype uint8" in err.message and "float32" in err.message and "astype" in err.hint
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.float32))
    err = data_error(str(path), **IMAGE_NET)
    assert "y in dataset" in err.message and "dtype float32" in err.message and "int64" in err.message


def test_npz_sample_count_mismatch(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(3, np.int64))
    err = data_error(str(path), **IMAGE_NET)
    assert "4 inputs" in err.message and "3 labels" in err.message


def test_npz_labels_out_of_range(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([0, 1, 2, 7]))
    err = data_error(str(path), **IMAGE_NET, classes=5)
    assert "up to 7" in err.message and "5 classes" in err.message
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([0, -1, 2, 3]))
    err = data_error(str(path), **IMAGE_NET)
    assert "negative class label (-1)" in err.message


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, np.int64))
    err = data_error(str(path), **IMAGE_NET)
    assert "d.npz" in err.message and "could not be read" in err.message and "allow_pickle" in err.message


def test_npz_that_is_not_a_zip(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"definitely not a zip archive")
    err = data_error(str(path), **IMAGE_NET)
    assert "d.npz" in err.message and "could not be read" in err.message


# --- MNIST idx ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_pair(tmp_path, gz):
    images_path, images, labels = write_mnist_pair(tmp_path, gz=gz)
    train, val = load_dataset(str(images_path), x_shape=(1, 6, 6), x_dtype="float32", y_shape=(),
                              y_dtype="int64")
    assert train.name == images_path.name and train.classes == 10
    assert_split_of(train, val, images[:, None].astype(np.float32) / 255, labels)


def test_idx_resized_and_found_from_the_labels_file_or_a_directory(tmp_path):
    images_path, images, labels = write_mnist_pair(tmp_path, n=10, side=6)
    write_mnist_pair(tmp_path, prefix="t10k", n=5, side=6, seed=1)
    expected_x = _resize_bilinear(images.astype(np.float32) / 255, 8, 8)[:, None]
    from_dir, empty = load_dataset(str(tmp_path), **IMAGE_NET, val_fraction=0)
    assert from_dir.name == "train-images-idx3-ubyte"               # the training pair, not t10k
    assert_split_of(from_dir, empty, expected_x, labels)
    from_labels = load_dataset(str(tmp_path / "train-labels-idx1-ubyte"), **IMAGE_NET, val_fraction=0)[0]
    np.testing.assert_array_equal(from_labels.x, from_dir.x)


def test_idx_missing_labels_file(tmp_path):
    images, _ = mnist_like()
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    err = data_error(str(tmp_path / "train-images-idx3-ubyte"), **IMAGE_NET)
    assert "train-labels-idx1-ubyte" in err.message and "missing" in err.message


def test_idx_directory_without_images(tmp_path):
    err = data_error(str(tmp_path), **IMAGE_NET)
    assert str(tmp_path) in err.message and "no MNIST idx images file" in err.message


@pytest.mark.parametrize("payload, reason", [
    (b"\x01\x00\x08\x03" + b"\x00" * 40, "magic number"),
    (b"\x00\x00\x42\x03" + b"\x00" * 40, "type code 0x42"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated"),
    (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x00" * 5, "8 bytes"),
])
def test_idx_corrupt_header(tmp_path, payload, reason):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(payload)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    err = data_error(str(tmp_path / "train-images-idx3-ubyte"), **IMAGE_NET)
    assert "train-images-idx3-ubyte" in err.message and "not a valid MNIST idx file" in err.message
    assert reason in err.message


def test_idx_damaged_gzip(tmp_path):
    images_path, _, _ = write_mnist_pair(tmp_path, gz=True)
    images_path.write_bytes(images_path.read_bytes()[:30])
    err = data_error(str(images_path), **IMAGE_NET)
    assert "gzip stream is damaged" in err.message


def test_idx_count_mismatch(tmp_path):
    images, labels = mnist_like(n=6)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:4])
    err = data_error(str(tmp_path / "train-images-idx3-ubyte"), **IMAGE_NET)
    assert "6 images" in err.message and "4 labels" in err.message


def test_idx_name_without_images_or_labels(tmp_path):
    images, _ = mnist_like()
    write_idx(tmp_path / "scans-idx3-ubyte", images)
    err = data_error(str(tmp_path / "scans-idx3-ubyte"), **IMAGE_NET)
    assert "scans-idx3-ubyte" in err.message


# --- sources and splits ------------------------------------------------------------------------

def test_missing_file_names_it_and_lists_builtins(tmp_path):
    err = data_error(str(tmp_path / "nope.npz"), **IMAGE_NET)
    assert "nope.npz" in err.message and "not found" in err.message
    for name in ("digits", "synthetic", "chars"):
        assert name in err.hint


def test_unknown_format(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("1,2,3\n")
    err = data_error(str(path), **IMAGE_NET)
    assert "data.xlsx" in err.message and "unknown format" in err.message and ".npz" in err.hint


def test_too_few_samples_for_the_split():
    err = data_error("synthetic", **IMAGE_NET, limit=1)
    assert "'synthetic' has 1 sample," in err.message and "validation" in err.message
    train, val = load_dataset("synthetic", **IMAGE_NET, limit=2)
    assert (len(train), len(val)) == (1, 1)
    train, val = load_dataset("synthetic", **IMAGE_NET, limit=1, val_fraction=0)
    assert (len(train), len(val)) == (1, 0)


def test_bad_split_settings():
    assert "validation fraction" in data_error("synthetic", **IMAGE_NET, val_fraction=1.0).message
    assert "sample limit" in data_error("synthetic", **IMAGE_NET, limit=0).message


# --- batches -----------------------------------------------------------------------------------

def small_dataset(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return Dataset(x, np.arange(n, dtype=np.int64), "small", n)


def test_batches_in_order_cover_everything():
    ds = small_dataset()
    got = list(batches(ds, 4, shuffle=False, rng=np.random.default_rng(0)))
    assert [len(yb) for _, yb in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in got]), ds.y)
    for xb, yb in got:
        assert xb.flags.c_contiguous and yb.flags.c_contiguous
        assert xb.dtype == np.float32 and yb.dtype == np.int64
        np.testing.assert_array_equal(xb[:, 0], yb * 2)


def test_batches_shuffled_are_a_seeded_permutation():
    ds = small_dataset()
    first = list(batches(ds, 3, shuffle=True, rng=np.random.default_rng(5)))
    again = list(batches(ds, 3, shuffle=True, rng=np.random.default_rng(5)))
    labels = np.concatenate([yb for _, yb in first])
    assert sorted(labels) == list(range(10)) and not np.array_equal(labels, ds.y)
    np.testing.assert_array_equal(labels, np.concatenate([yb for _, yb in again]))
    for xb, yb in first:
        assert xb.flags.c_contiguous
        np.testing.assert_array_equal(xb[:, 0], yb * 2)                  # x and y stay paired


def test_batches_drop_last():
    sizes = [len(yb) for _, yb in batches(small_dataset(), 4, shuffle=True, rng=np.random.default_rng(0),
                                          drop_last=True)]
    assert sizes == [4, 4]
    with pytest.raises(ValueError):
        next(batches(small_dataset(), 0, shuffle=False, rng=np.random.default_rng(0)))
