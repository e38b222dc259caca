"""Datasets: loading them in the shapes a network expects, splitting off validation, batching.

A source is a built-in name or a path:
  "digits"     scikit-learn's bundled 8x8 handwritten digits (no download), 1797 samples;
  "synthetic"  random data for each of the network's inputs (labels and ids below their class
               count or vocabulary), for benchmarks;
  "chars"      the character corpus in runtime/corpus/corpus.txt, for language models;
  *.txt        any UTF-8 text, as a character corpus;
  *.npz        one array per network input, named like the input (load_inputs), used as it
               is; for a network with one data input and a label, `x` and `y` may stand for them;
  MNIST idx    an images file such as train-images-idx3-ubyte (optionally .gz) with its labels
               file next to it, or a directory holding such a pair;
  DIR/         an image folder: one subfolder of images per class, or DIR/train and DIR/val of
               them (runtime/image_folder.py; streamed batch by batch when too large for memory);
  *.csv        a table with a header: a label column (`label`, or label_column) and one column
               per input value, reshaped to the network's input (used as they are, not scaled).
Image sources (digits, idx, image folders) are scaled to [0, 1] and resized to the network's
input; .npz data must already have the network's shapes. Every problem a user can cause raises DataError,
naming the file and saying how to fix it.
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
import math
import os
import re
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from dslc.runtime import box_batches, image_folder
from dslc.runtime.errors import DataError
from dslc.runtime.image_folder import LazyImages, _resize_bilinear

BUILTIN_DATASETS = ("digits", "synthetic", "chars")
# scikit-learn's digits table, relative to its package directory
DIGITS_CSV = ("datasets", "data", "digits.csv.gz")
CORPUS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "corpus.txt")
SYNTHETIC_SAMPLES = 512
# Label range of synthetic data when the caller does not say how many classes the network has.
SYNTHETIC_CLASSES = 10
DTYPES = ("float32", "int64")
# What a data file may hold, in bytes (after decompression): a header or a crafted archive that
# announces more is refused before it is read, rather than running the machine out of memory.
MAX_DATA_BYTES = 16 << 30
_READ_CHUNK = 1 << 24

_SOURCES_HINT = ("give the path of a .npz file (arrays x and y), a .csv file with a header, a .txt file, an "
                 "image folder (one subfolder per class), an MNIST idx images file or a directory holding one, "
                 "or a built-in dataset: " + ", ".join(BUILTIN_DATASETS))
DEFAULT_LABEL_COLUMN = "label"
# idx element types by the header's type code (data is big-endian).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAME = re.compile(r"[.-]idx[1-4]-ubyte(\.gz)?$")
_IDX_IMAGES_NAME = re.compile(r"images[.-]idx3-ubyte(\.gz)?$")


class Dataset:
    """Samples along axis 0 of named arrays, one per network input (`arrays`), or the shorthand
    of a one-input network: `x` (inputs, float32 or int64) and `y` (int64 class labels or
    float32 targets), which the trainer binds to the network's data input and its label.

    A name that is one of the network's inputs binds to that input; `x` and `y` that are not
    input names are the shorthand. classes: number of classes of integer labels (None for float
    targets). vocab: for text datasets, the characters whose ids the samples hold (id i is vocab[i]).
    class_names: the names of the classes label i stands for (an image folder's class folders, a
    CSV's label names), else None. notes: lines the command line shows about how the data was
    read (skipped files, streaming). origin: for a validation set that is not a split of the
    training data (an image folder's val/), where it comes from.

    `x` may be a LazyImages (a streamed image folder): indexing it decodes images.
    """

    def __init__(self, x=None, y=None, name: str = "arrays", classes: int | None = None,
                 vocab: str | None = None, *, arrays: dict | None = None, class_names: list | None = None,
                 notes: list | None = None, origin: str | None = None):
        if arrays is None:
            arrays = {k: v for k, v in (("x", x), ("y", y)) if v is not None}
        elif x is not None or y is not None:
            raise ValueError("give either x and y or arrays, not both")
        self.arrays = dict(arrays)
        self.name, self.classes, self.vocab = name, classes, vocab
        self.class_names, self.notes, self.origin = class_names, list(notes or []), origin

    @property
    def streamed(self) -> bool:
        """Whether some array is decoded batch by batch (LazyImages) rather than held."""
        return any(isinstance(v, LazyImages) for v in self.arrays.values())

    @property
    def x(self):
        return self.arrays.get("x")

    @property
    def y(self):
        return self.arrays.get("y")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.arrays.items())
        return f"Dataset({self.name!r}, {shapes})"


@dataclass(frozen=True)
class InputSpec:
    """One network input as data must give it: the shape of one sample (None: a length any
    data may set, e.g. an unset sequence length T, for .npz data), the dtype, and for an
    integer input the number of ids or classes it may hold (None: not known). `target`: a loss
    compares against it (synthetic float targets are drawn in [0, 1), valid for mse and bce)."""
    shape: tuple
    dtype: str
    classes: int | None = None
    target: bool = False


def load_dataset(source: str, *, x_shape: tuple, x_dtype: str, y_shape: tuple, y_dtype: str,
                 val_fraction: float = 0.2, seed: int = 0, limit: int | None = None,
                 classes: int | None = None, x_classes: int | None = None,
                 vocab: str | None = None, class_names: list | None = None,
                 label_column: str | None = None, stream: bool | None = None) -> tuple[Dataset, Dataset]:
    """(train, validation) from `source`, shaped for a network whose per-sample input is
    `x_shape`/`x_dtype` and whose per-sample label or target is `y_shape`/`y_dtype`.

    `classes` is the number of classes the network predicts (its output size), when known;
    integer labels must lie in [0, classes). `x_classes`, when given, is the vocabulary of an
    integer input (the ids an embedding looks up): input ids must lie in [0, x_classes).
    `limit` caps the number of samples used
    (for "synthetic", it is the number generated). `val_fraction` of the samples (at least
    one, unless it is 0) are held out for validation: a random subset picked with `seed`,
    except for text, where the last windows are held out so that validation text is unseen.
    `vocab`, for text, is the characters ids stand for (another dataset's `vocab`): a validation
    text or a trained model's text must use the ids the model was trained with.
    `class_names`, for image folders and CSV label names, is likewise the classes the labels
    number (a trained model's). `label_column` names a CSV's label column (default `label`).
    `stream`: for image folders, decode batch by batch (True), hold every image (False), or
    decide by the decoded size against image_folder.memory_limit() (None).
    An image folder with train/ and val/ gives those (val_fraction is not used).
    """
    x_shape, y_shape = tuple(x_shape), tuple(y_shape)
    for dtype in (x_dtype, y_dtype):
        if dtype not in DTYPES:
            raise ValueError(f"network dtype must be one of {DTYPES}, got {dtype!r}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}",
                        "give a fraction such as 0.2, or 0 to train on every sample")
    if limit is not None and limit < 1:
        raise DataError(f"sample limit must be at least 1, got {limit}",
                        "give a positive number of samples, or no limit")
    shapes = _NetworkShapes(x_shape, x_dtype, y_shape, y_dtype, classes, x_classes, vocab, class_names)

    if source == "synthetic":
        full = _synthetic(shapes, limit or SYNTHETIC_SAMPLES, seed)
        return _split_random(full, val_fraction, seed, None)
    if source == "chars":
        return _checked_ids(_split_ordered(_text(CORPUS_PATH, "chars", shapes), val_fraction, limit), shapes)
    if source == "digits":
        return _split_random(_digits(shapes), val_fraction, seed, limit)
    if os.path.isdir(source) and image_folder.is_image_folder(source):
        return _image_folder(source, shapes, val_fraction, seed, limit, stream)
    if source.endswith(".csv") and os.path.exists(source):
        _check_regular_file(source)
        ds = _csv(source, shapes, label_column or DEFAULT_LABEL_COLUMN)
        return _checked_ids(_split_random(ds, val_fraction, seed, limit), shapes)
    return _checked_ids(_from_path(source, shapes, val_fraction, seed, limit), shapes)


def load_inputs(source: str, inputs: dict, *, val_fraction: float = 0.2, seed: int = 0,
                limit: int | None = None, shorthand: tuple = (None, None),
                classes_of: str | None = None, rows: tuple = ()) -> tuple[Dataset, Dataset]:
    """(train, validation) for a network with any inputs: `inputs` maps each input's name to
    its InputSpec. `source` is "synthetic" (random data for every input: floats ~ N(0, 1),
    float targets uniform in [0, 1), integer inputs uniform below their class count) or an .npz
    file holding one array per input, named like the input; `shorthand` (data input, label
    input), where the network has them, lets arrays `x` and `y` stand for those two.
    `classes_of`: the label input whose class count the datasets report. Splitting and `limit`
    are load_dataset's. `rows`: the network's row groups (box_batches.row_groups): their
    unbatched inputs are held per sample, as box_batches describes."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}",
                        "give a fraction such as 0.2, or 0 to train on every sample")
    if limit is not None and limit < 1:
        raise DataError(f"sample limit must be at least 1, got {limit}",
                        "give a positive number of samples, or no limit")
    names = ", ".join(inputs)
    if source == "synthetic":
        rng = np.random.default_rng(seed)
        n = limit or SYNTHETIC_SAMPLES
        arrays = {}
        for name, spec in inputs.items():
            if name in box_batches.unbatched_names(rows):
                continue
            shape = (n, *spec.shape)
            if spec.dtype == "int64":
                arrays[name] = rng.integers(0, spec.classes or SYNTHETIC_CLASSES, size=shape, dtype=np.int64)
            elif spec.target:
                arrays[name] = rng.random(shape, dtype=np.float32)
            else:
                arrays[name] = rng.standard_normal(shape, dtype=np.float32)
        classes = _classes(inputs, classes_of, arrays) if classes_of in arrays else None
        if rows:
            arrays.update(box_batches.synthetic_rows(rows, inputs, n, rng, SYNTHETIC_CLASSES))
            classes = inputs[classes_of].classes if classes_of in inputs else None
        ds = Dataset(name="synthetic", arrays=arrays, classes=classes)
        return _split_random(ds, val_fraction, seed, None)
    if not source.endswith(".npz") or source in BUILTIN_DATASETS:
        raise DataError(f"dataset '{source}' gives one input and its labels (x and y), but this network has the "
                        f"inputs {names}",
                        f"give an .npz file holding one array per input, named {names} "
                        f"(numpy.savez(path, {', '.join(f'{k}=...' for k in inputs)})), or --data synthetic")
    if not os.path.exists(source):
        raise DataError(f"dataset '{source}' not found: there is no such file or directory", _SOURCES_HINT)
    _check_regular_file(source)
    if rows:
        return _split_random(_npz_with_rows(source, inputs, shorthand, classes_of, rows), val_fraction, seed, limit)
    arrays = _npz_inputs(source, inputs, shorthand)
    ds = Dataset(name=os.path.basename(source), arrays=arrays, classes=_classes(inputs, classes_of, arrays))
    return _split_random(ds, val_fraction, seed, limit)


def _npz_with_rows(path: str, inputs: dict, shorthand: tuple, classes_of: str | None, rows: tuple) -> Dataset:
    """An .npz for a network with unbatched inputs: per-sample arrays, then each row group's
    arrays (one row each, in step) split by sample (box_batches)."""
    box_batches.check_supported(rows)
    unbatched = box_batches.unbatched_names(rows)
    arrays = _npz_inputs(path, {k: v for k, v in inputs.items() if k not in unbatched}, shorthand)
    n = len(next(iter(arrays.values()))) if arrays else 0
    for g in rows:
        row_arrays = _npz_inputs(path, {m: inputs[m] for m in g.members}, (None, None))
        classes = _classes(inputs, classes_of, {**arrays, **row_arrays})
        arrays.update(box_batches.group_rows((g,), row_arrays, n, os.path.basename(path)))
    return Dataset(name=os.path.basename(path), arrays=arrays,
                   classes=classes if classes_of in unbatched else _classes(inputs, classes_of, arrays))


def _classes(inputs: dict, classes_of: str | None, arrays: dict) -> int | None:
    if classes_of is None or classes_of not in inputs or inputs[classes_of].dtype != "int64":
        return None
    spec = inputs[classes_of]
    return spec.classes if spec.classes is not None else int(arrays[classes_of].max(initial=-1)) + 1


def _npz_inputs(path: str, inputs: dict, shorthand: tuple) -> dict:
    """One checked array per network input from the .npz at `path`."""
    file = os.path.basename(path)
    names = ", ".join(inputs)
    save = f"numpy.savez(path, {', '.join(f'{k}=...' for k in inputs)})"
    x_name, y_name = shorthand
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"dataset '{path}' is a single array (a .npy file), not an .npz archive",
                            f"save one array per input together: {save}")
        with loaded as archive:
            keys = {}
            for name in inputs:
                alias = "x" if name == x_name else "y" if name == y_name else None
                key = name if name in archive.files else alias if alias in archive.files else None
                if key is None:
                    raise DataError(f"`{name}` is missing from {file}: the network's inputs are {names} "
                                    f"({file} holds: {', '.join(archive.files) or 'nothing'})",
                                    f"save an array named `{name}` with the others: {save}")
                keys[name] = key
            for key in keys.values():
                _check_member_size(archive, key, path)
            raw = {name: archive[key] for name, key in keys.items()}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"dataset '{path}' could not be read as an .npz archive ({err})",
                        f"save it with {save} from numeric arrays") from err
    arrays, first = {}, None
    for name, arr in raw.items():
        spec, key = inputs[name], keys[name]
        label = f"`{name}`" if key == name else f"{key} (input `{name}`)"
        if arr.ndim == 0:
            raise DataError(f"{label} in {file} is a single number (a 0-d array), not one entry per sample",
                            f"save an array whose first axis is the samples: {key} of shape (N, ...)")
        if first is not None and len(arr) != len(raw[first]):
            raise DataError(f"{label} in {file} has {len(arr)} samples but `{first}` has {len(raw[first])}",
                            "every input array needs one entry per sample, in the same order")
        first = first or name
        shape = spec.shape
        if None in shape and arr.ndim == len(shape) + 1:     # a length the network leaves open: the data's
            shape = tuple(a if s is None else s for s, a in zip(shape, arr.shape[1:]))
        arrays[name] = _checked_array(arr, key, file, shape, spec.dtype, f"input `{name}`")
        if spec.dtype == "int64" and arr.size:
            low, high = int(arrays[name].min()), int(arrays[name].max())
            if low < 0:
                raise DataError(f"{label} in {file} holds a negative id or class ({low})",
                                f"integer inputs hold class labels or token ids 0, 1, ..., {spec.classes or 'n'} - 1")
            if spec.classes is not None and high >= spec.classes:
                raise DataError(f"{label} in {file} holds values up to {high}, but the network takes values "
                                f"below {spec.classes} there",
                                f"use values below {spec.classes}, or give the network {high + 1} classes "
                                "(or a vocabulary that large)")
    return arrays


def _from_path(source: str, shapes: "_NetworkShapes", val_fraction: float, seed: int,
               limit: int | None) -> tuple[Dataset, Dataset]:

    path = source
    if not os.path.exists(path):
        raise DataError(f"dataset '{path}' not found: there is no such file or directory", _SOURCES_HINT)
    name = os.path.basename(os.path.normpath(path))
    if os.path.isdir(path):
        return _split_random(_idx_pair(_images_file_in(path), shapes), val_fraction, seed, limit)
    _check_regular_file(path)
    if path.endswith(".txt"):
        return _split_ordered(_text(path, name, shapes), val_fraction, limit)
    if path.endswith(".npz"):
        return _split_random(_npz(path, name, shapes), val_fraction, seed, limit)
    if _IDX_NAME.search(name):
        return _split_random(_idx_pair(path, shapes), val_fraction, seed, limit)
    raise DataError(f"dataset '{path}' has an unknown format: its name is not *.npz, *.csv, *.txt or an "
                    "MNIST idx name", _SOURCES_HINT)


def named_batches(ds: Dataset, batch: int, *, shuffle: bool, rng: np.random.Generator,
                  drop_last: bool = False) -> Iterator[dict]:
    """Batches of `batch` samples covering `ds` once, each a dict of its arrays by name, in a
    random order drawn from `rng` when `shuffle` (one permutation per call, whatever the number
    of arrays). The last, smaller batch is dropped when `drop_last`. Arrays are C-contiguous;
    without shuffling they are views of the dataset, so do not modify them.

    A streamed dataset (LazyImages) gives the same batches in the same order: its images are
    decoded when their batch is formed, by one worker thread that decodes the next batch while
    the caller uses the current one (Pillow and numpy release the GIL while they decode and
    resize); at most one batch is decoded ahead."""
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, got {batch}")
    n = len(ds)
    order = rng.permutation(n) if shuffle else None
    stop = n - n % batch if drop_last else n
    indices = [slice(start, start + batch) if order is None else order[start:start + batch]
               for start in range(0, stop, batch)]

    def form(index):
        return {k: np.ascontiguousarray(v[index]) for k, v in ds.arrays.items()}

    if not ds.streamed:
        for index in indices:
            yield form(index)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dslc-decode")
    try:
        pending = pool.submit(form, indices[0]) if indices else None
        for i in range(len(indices)):
            current = pending.result()          # a DataError from the worker (a bad image) is raised here
            pending = pool.submit(form, indices[i + 1]) if i + 1 < len(indices) else None
            yield current
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def batches(ds: Dataset, batch: int, *, shuffle: bool, rng: np.random.Generator,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x, y) batches of an x/y dataset, as named_batches draws them."""
    for b in named_batches(ds, batch, shuffle=shuffle, rng=rng, drop_last=drop_last):
        yield b.get("x"), b.get("y")


@dataclass(frozen=True)
class _NetworkShapes:
    """What the network expects of one sample."""
    x_shape: tuple
    x_dtype: str
    y_shape: tuple
    y_dtype: str
    classes: int | None
    x_classes: int | None = None
    vocab: str | None = None
    class_names: list | None = None

    def describe_x(self) -> str:
        return f"{self.x_dtype} of shape {self.x_shape}"

    def describe_y(self) -> str:
        return f"{self.y_dtype} of shape {self.y_shape}"


def _check_regular_file(path: str) -> None:
    """Data is read from regular files only: a FIFO would block the reader and a device such
    as /dev/zero would never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataError(f"dataset '{path}' cannot be read ({err.strerror or err})", _SOURCES_HINT) from None
    if not stat.S_ISREG(mode):
        raise DataError(f"dataset '{path}' is not a regular file (a pipe, device or socket)",
                        "save the data to a file first and give its path")


def _checked_ids(split: tuple[Dataset, Dataset], shapes: "_NetworkShapes") -> tuple[Dataset, Dataset]:
    """Integer inputs are ids an embedding looks up: each must be in [0, x_classes)."""
    if shapes.x_dtype != "int64":
        return split
    for ds in split:
        if not ds.x.size:
            continue
        low, high = int(ds.x.min()), int(ds.x.max())
        if low < 0:
            raise DataError(f"dataset '{ds.name}' has a negative input id ({low})",
                            "integer inputs are token ids 0, 1, ..., vocabulary - 1")
        if shapes.x_classes is not None and high >= shapes.x_classes:
            raise DataError(
                f"dataset '{ds.name}' has input ids up to {high}, but the network's embedding has a "
                f"vocabulary of {shapes.x_classes}",
                f"give the network a vocabulary of at least {high + 1} (e.g. --set vocab={high + 1}), "
                f"or map the ids below {shapes.x_classes}")
    return split


# ---------------------------------------------------------------------------------------------
# Splitting

def _subset(ds: Dataset, index) -> Dataset:
    return Dataset(name=ds.name, classes=ds.classes, vocab=ds.vocab, class_names=ds.class_names,
                   arrays={k: v.take(index) if isinstance(v, LazyImages) else np.ascontiguousarray(v[index])
                           for k, v in ds.arrays.items()})


def _validation_size(ds: Dataset, n: int, val_fraction: float) -> int:
    """Number of validation samples out of n; raises when either part would be empty."""
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise DataError(
            f"dataset '{ds.name}' has {n} sample{'s' if n != 1 else ''}, too few to train on"
            + (f" after holding out {val_fraction:g} of them for validation" if n_val else ""),
            "use a larger dataset (or a larger sample limit), or a smaller validation fraction")
    return n_val


def _split_random(ds: Dataset, val_fraction: float, seed: int, limit: int | None) -> tuple[Dataset, Dataset]:
    order = np.random.default_rng(seed).permutation(len(ds))[:limit]
    n_val = _validation_size(ds, len(order), val_fraction)
    return _subset(ds, order[n_val:]), _subset(ds, order[:n_val])


def _split_ordered(ds: Dataset, val_fraction: float, limit: int | None) -> tuple[Dataset, Dataset]:
    n = min(len(ds), limit) if limit else len(ds)
    n_val = _validation_size(ds, n, val_fraction)
    return _subset(ds, slice(0, n - n_val)), _subset(ds, slice(n - n_val, n))


# ---------------------------------------------------------------------------------------------
# Fitting images and labels to the network

def _fit_images(images: np.ndarray, what: str, shapes: _NetworkShapes) -> np.ndarray:
    """(N, H, W) images in [0, 1] as the network's input: (C, H', W') repeats the image over
    the channels, (H', W') is one channel, (F,) is the flattened image (resized to
    sqrt(F) x sqrt(F) when F is a square other than H * W)."""
    if shapes.x_dtype != "float32":
        raise DataError(f"{what} holds images, but the network input is {shapes.describe_x()}",
                        "train an image network (float32 input) on this dataset")
    shape = shapes.x_shape
    n, h, w = images.shape
    side = int(round(np.sqrt(shape[0]))) if len(shape) == 1 else 0
    if len(shape) == 3:
        resized = _resize_bilinear(images, shape[1], shape[2])
        return np.ascontiguousarray(np.repeat(resized[:, None], shape[0], axis=1))
    if len(shape) == 2:
        return np.ascontiguousarray(_resize_bilinear(images, *shape))
    if len(shape) == 1 and shape[0] == h * w:
        return images.reshape(n, h * w)
    if len(shape) == 1 and side * side == shape[0]:
        return _resize_bilinear(images, side, side).reshape(n, shape[0])
    raise DataError(
        f"{what} holds {h}x{w} images, which cannot be fitted to the network input's shape {shape}",
        "give the network an image input of shape (C, H, W), (H, W), or (H*W,)")


def _fit_labels(labels: np.ndarray, what: str, shapes: _NetworkShapes) -> tuple[np.ndarray, int]:
    """Integer class labels (N,) as the network's target: int64 labels for a () target, or
    one-hot float32 rows for a (K,) float32 target. Returns (y, number of classes)."""
    top = int(labels.max()) if len(labels) else -1
    if shapes.y_shape == () and shapes.y_dtype == "int64":
        n_classes = shapes.classes if shapes.classes is not None else top + 1
        _check_label_range(labels, what, n_classes, shapes.classes)
        return labels.astype(np.int64), n_classes
    if len(shapes.y_shape) == 1 and shapes.y_dtype == "float32":
        n_classes = shapes.y_shape[0]
        _check_label_range(labels, what, n_classes, n_classes)
        one_hot = np.zeros((len(labels), n_classes), dtype=np.float32)
        one_hot[np.arange(len(labels)), labels] = 1.0
        return one_hot, n_classes
    raise DataError(
        f"{what} has one integer class label per sample, but the network's target is {shapes.describe_y()}",
        "use a network whose loss takes class labels (cross_entropy, hinge), or a one-hot float32 target")


def _check_label_range(labels: np.ndarray, what: str, n_classes: int, network_classes: int | None) -> None:
    if not len(labels):
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataError(f"{what} has a negative class label ({low})",
                        "class labels must be integers 0, 1, ..., classes - 1")
    if network_classes is not None and high >= n_classes:
        raise DataError(
            f"{what} has class labels up to {high}, but the network has {network_classes} classes",
            f"give the network's output at least {high + 1} classes, or use labels below {network_classes}")


# ---------------------------------------------------------------------------------------------
# Sources

def _digits(shapes: _NetworkShapes) -> Dataset:
    pixels, target = _digits_arrays()
    images = (pixels / 16.0).astype(np.float32)
    x = _fit_images(images, "dataset 'digits'", shapes)
    y, n_classes = _fit_labels(target, "dataset 'digits'", shapes)
    return Dataset(x, y, "digits", n_classes)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) of values 0..16 (float64) and their labels.

    Read from the CSV file scikit-learn ships (64 pixels then the label per row), parsed as its
    `load_digits` does: importing sklearn takes ~0.8 s, most of `dslc run`'s start-up on this
    dataset. The file's place is scikit-learn's internal layout, so where it is missing the
    public loader is used."""
    spec = importlib.util.find_spec("sklearn")          # finds the package without importing it
    path = os.path.join(spec.submodule_search_locations[0], *DIGITS_CSV) \
        if spec and spec.submodule_search_locations else None
    if path is None or not os.path.isfile(path):
        from sklearn.datasets import load_digits
        digits = load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rb") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def _synthetic(shapes: _NetworkShapes, n: int, seed: int) -> Dataset:
    """Random data: float inputs ~ N(0, 1), integer inputs and labels uniform over the classes,
    float targets uniform in [0, 1) (valid for both mse and bce)."""
    rng = np.random.default_rng(seed)
    n_classes = shapes.classes if shapes.classes is not None else SYNTHETIC_CLASSES
    if shapes.x_dtype == "float32":
        x = rng.standard_normal((n, *shapes.x_shape), dtype=np.float32)
    else:
        x = rng.integers(0, shapes.x_classes or n_classes, size=(n, *shapes.x_shape), dtype=np.int64)
    if shapes.y_dtype == "int64":
        y = rng.integers(0, n_classes, size=(n, *shapes.y_shape), dtype=np.int64)
        return Dataset(x, y, "synthetic", n_classes)
    y = rng.random((n, *shapes.y_shape), dtype=np.float32)
    return Dataset(x, y, "synthetic", None)


def _text(path: str, name: str, shapes: _NetworkShapes) -> Dataset:
    """Non-overlapping windows of T character ids; y is each window shifted by one character."""
    if not (len(shapes.x_shape) == 1 and shapes.y_shape == shapes.x_shape
            and shapes.x_dtype == shapes.y_dtype == "int64"):
        raise DataError(
            f"text dataset '{name}' gives sequences of character ids (input and target int64 of shape "
            f"(T,)), but the network input is {shapes.describe_x()} and its target {shapes.describe_y()}",
            "train a language model (an int64 input of shape (T,) and a (T,) target) on text")
    try:
        text = _read_bounded(path, gzipped=False).decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"text dataset '{path}' is not UTF-8 text ({err.reason} at byte {err.start})",
                        "convert the file to UTF-8") from err
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    if shapes.vocab is not None:
        vocab = shapes.vocab
        known = np.array(sorted(map(ord, vocab)), dtype=np.uint32)
        order = np.argsort(np.array([ord(c) for c in vocab], dtype=np.uint32), kind="stable")
        pos = np.minimum(np.searchsorted(known, codes), max(len(known) - 1, 0))
        unknown = np.unique(codes[known[pos] != codes]) if len(known) else np.unique(codes)
        if len(unknown):
            shown = ", ".join(repr(chr(c)) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise DataError(
                f"text dataset '{name}' has {len(unknown)} character{'s' if len(unknown) != 1 else ''} that the "
                f"training text does not ({shown}): the model has no id for them",
                "remove them from this text, or train on a text that contains them")
        ids = order[pos]
    else:
        # np.unique sorts by code point, so ids follow the sorted set of characters.
        chars, ids = np.unique(codes, return_inverse=True)
        vocab = "".join(map(chr, chars))
    if shapes.classes is not None and len(vocab) > shapes.classes:
        raise DataError(
            f"text dataset '{name}' has {len(vocab)} distinct characters, but the network has "
            f"{shapes.classes} classes",
            f"give the network's vocabulary and output at least {len(vocab)} classes")
    (length,) = shapes.x_shape
    n_windows = max(len(ids) - 1, 0) // length
    starts = np.arange(n_windows)[:, None] * length + np.arange(length)
    ids = ids.astype(np.int64)
    return Dataset(ids[starts], ids[starts + 1], name, len(vocab), vocab)


def _npz(path: str, name: str, shapes: _NetworkShapes) -> Dataset:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"dataset '{path}' is a single array (a .npy file), not an .npz archive",
                            "save inputs and labels together: numpy.savez(path, x=inputs, y=labels)")
        with loaded as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DataError(
                    f"dataset '{path}' has no array '{missing[0]}' (it holds: "
                    f"{', '.join(archive.files) or 'nothing'})",
                    "save inputs as x and labels or targets as y: numpy.savez(path, x=inputs, y=labels)")
            for key in ("x", "y"):
                _check_member_size(archive, key, path)
            x, y = archive["x"], archive["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"dataset '{path}' could not be read as an .npz archive ({err})",
                        "save it with numpy.savez(path, x=inputs, y=labels) from numeric arrays") from err
    for key, arr in (("x", x), ("y", y)):
        if arr.ndim == 0:
            raise DataError(f"{key} in dataset '{path}' is a single number (a 0-d array), not one entry per sample",
                            f"save an array whose first axis is the samples: {key} of shape (N, ...)")
    if len(x) != len(y):
        raise DataError(f"dataset '{path}' has {len(x)} inputs (x) but {len(y)} labels or targets (y)",
                        "x and y need one entry per sample, in the same order")
    x = _checked_array(x, "x", path, shapes.x_shape, shapes.x_dtype, "input")
    y = _checked_array(y, "y", path, shapes.y_shape, shapes.y_dtype, "target")
    n_classes = None
    if shapes.y_dtype == "int64":
        n_classes = shapes.classes if shapes.classes is not None else int(y.max(initial=-1)) + 1
        _check_label_range(y.ravel(), f"dataset '{path}'", n_classes, shapes.classes)
    return Dataset(x, y, name, n_classes)


def _checked_array(arr: np.ndarray, key: str, path: str, shape: tuple, dtype: str, role: str) -> np.ndarray:
    """`arr` cast to `dtype` when it is of the same kind (float or integer), else DataError."""
    kinds = "f" if dtype == "float32" else "iu"
    if arr.dtype.kind not in kinds:
        raise DataError(f"{key} in dataset '{path}' has dtype {arr.dtype}, but the network {role} is {dtype}",
                        f"convert it before saving: {key}.astype(numpy.{dtype})")
    if arr.shape[1:] != shape and _channels_last(arr.shape[1:], shape):
        h, w, c = arr.shape[1:]
        size = "" if (h, w) == shape[1:] else f", then resize the images to {shape[1]}x{shape[2]}"
        raise DataError(
            f"{key} in dataset '{path}' has samples of shape {arr.shape[1:]}, channels last (H, W, C), but the "
            f"network {role} expects channels first {shape} (C, H, W)",
            f"transpose {key} before saving: {key}.transpose(0, 3, 1, 2){size}")
    if arr.shape[1:] != shape:
        raise DataError(
            f"{key} in dataset '{path}' has samples of shape {arr.shape[1:]}, but the network {role} "
            f"expects {shape}",
            f"reshape {key} to (N, {', '.join(map(str, shape))}{',' if len(shape) == 1 else ''}) "
            f"or change the network's {role} shape")
    return np.ascontiguousarray(arr, dtype=dtype)


def _channels_last(sample_shape: tuple, shape: tuple) -> bool:
    """Whether (H, W, C) samples are meant for a (C, H, W) input: the last axis is the channels
    and the first is not."""
    return (len(sample_shape) == len(shape) == 3 and sample_shape[2] == shape[0]
            and sample_shape[0] != shape[0])


def _check_member_size(archive, key: str, path: str) -> None:
    """Refuse an array whose declared size is beyond MAX_DATA_BYTES before numpy allocates it."""
    info = archive.zip.getinfo(f"{key}.npy") if f"{key}.npy" in archive.zip.namelist() else None
    if info is not None and info.file_size > MAX_DATA_BYTES:
        raise DataError(f"{key} in dataset '{path}' declares {info.file_size:,} bytes, more than dslc "
                        f"loads ({MAX_DATA_BYTES:,})", "use a smaller dataset, or --limit on a smaller file")


def _read_bounded(path: str, gzipped: bool, limit: int = MAX_DATA_BYTES) -> bytes:
    """The bytes of `path` (decompressed when `gzipped`), refusing more than `limit`."""
    _check_regular_file(path)
    opener = gzip.open if gzipped else open
    chunks, total = [], 0
    with opener(path, "rb") as f:
        while True:
            chunk = f.read(_READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise DataError(f"dataset '{path}' holds more than {limit:,} bytes, more than dslc loads",
                                "use a smaller dataset")
            chunks.append(chunk)
    return b"".join(chunks)


def mnist_test_set(source: str) -> str | None:
    """The test images file (t10k-images-idx3-ubyte, optionally .gz) of an MNIST directory that
    also holds the training set, or None: a directory is the usual way MNIST is unpacked, and its
    test pair is the validation set people mean."""
    if not os.path.isdir(source):
        return None
    try:
        names = sorted(os.listdir(source))
    except OSError:
        return None
    images = [f for f in names if _IDX_IMAGES_NAME.search(f)]
    if not any(f.startswith("train") for f in images):
        return None
    test = [f for f in images if f.startswith("t10k")]
    return os.path.join(source, test[0]) if test else None


def _images_file_in(directory: str) -> str:
    """The MNIST images file in `directory`, preferring the training set (train-*)."""
    found = sorted(f for f in os.listdir(directory) if _IDX_IMAGES_NAME.search(f))
    if not found:
        raise DataError(f"dataset directory '{directory}' holds no MNIST idx images file and no class folders "
                        "of images", "give an image folder (one subfolder of images per class, or train/ and val/ "
                        "of them), or MNIST files such as train-images-idx3-ubyte and train-labels-idx1-ubyte "
                        "(optionally .gz)")
    training = [f for f in found if f.startswith("train")]
    return os.path.join(directory, (training or found)[0])


def _idx_pair(path: str, shapes: _NetworkShapes) -> Dataset:
    """An MNIST images file and the labels file named after it (either may be given)."""
    directory, name = os.path.split(path)
    images_name = re.sub(r"labels([.-])idx1", r"images\1idx3", name)
    if not _IDX_IMAGES_NAME.search(images_name):
        raise DataError(f"cannot tell whether '{path}' holds MNIST images or labels from its name",
                        "use the standard MNIST names, e.g. train-images-idx3-ubyte with "
                        "train-labels-idx1-ubyte (optionally .gz)")
    labels_name = re.sub(r"images([.-])idx3", r"labels\1idx1", images_name)
    images_path = _with_or_without_gz(directory, images_name)
    labels_path = _with_or_without_gz(directory, labels_name)
    for found, wanted in ((images_path, images_name), (labels_path, labels_name)):
        if found is None:
            raise DataError(f"MNIST dataset '{path}' needs '{os.path.join(directory, wanted)}', which is missing",
                            "put the images file and its labels file (optionally .gz) in the same directory")
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"MNIST images file '{images_path}' has {images.ndim} dimensions, expected 3 "
                        "(images, rows, columns)", "give an idx3 images file")
    if 0 in images.shape[1:]:
        raise DataError(f"MNIST images file '{images_path}' holds images of {images.shape[1]}x{images.shape[2]} "
                        "pixels; an image needs at least one row and one column",
                        "re-download or re-extract the file")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"MNIST labels file '{labels_path}' does not hold one integer label per image",
                        "give an idx1 labels file of unsigned bytes")
    if len(images) != len(labels):
        raise DataError(f"'{images_path}' has {len(images)} images but '{labels_path}' has {len(labels)} labels",
                        "use the labels file that belongs to these images")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    what = f"dataset '{images_path}'"
    x = _fit_images(images.astype(np.float32, copy=False), what, shapes)
    y, n_classes = _fit_labels(labels.astype(np.int64), what, shapes)
    return Dataset(x, y, os.path.basename(images_path), n_classes)


def _with_or_without_gz(directory: str, name: str) -> str | None:
    """The path of `name` in `directory`, compressed or not, or None when neither exists."""
    stem = name.removesuffix(".gz")
    return next((p for p in (os.path.join(directory, stem), os.path.join(directory, stem + ".gz"))
                 if os.path.exists(p)), None)


def _read_idx(path: str) -> np.ndarray:
    """The array in an idx file (gzip-compressed when the name ends in .gz)."""
    def corrupt(reason: str) -> DataError:
        return DataError(f"'{path}' is not a valid MNIST idx file: {reason}",
                         "re-download or re-extract the file; an idx file starts with two zero bytes, "
                         "a type code, the number of dimensions, and each size as a big-endian uint32")
    try:
        data = _read_bounded(path, gzipped=path.endswith(".gz"))
    except DataError:
        raise
    except (OSError, EOFError) as err:          # gzip reports a damaged stream as OSError/EOFError
        raise corrupt(f"the gzip stream is damaged ({err})") from err
    if len(data) < 4 or data[:2] != b"\0\0":
        raise corrupt("it does not start with the idx magic number")
    dtype = _IDX_TYPES.get(data[2])
    if dtype is None:
        raise corrupt(f"unknown element type code 0x{data[2]:02x}")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_size:
        raise corrupt("the header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * np.dtype(dtype).itemsize        # Python ints: no overflow
    if len(data) - header_size != expected:
        raise corrupt(f"the header announces {'x'.join(map(str, dims))} elements ({expected} bytes), "
                      f"but {len(data) - header_size} bytes follow")
    return np.frombuffer(data, dtype=dtype, offset=header_size).reshape(dims).astype(np.dtype(dtype).newbyteorder("="))


# ---------------------------------------------------------------------------------------------
# Image folders and CSV tables

def _image_folder(root: str, shapes: _NetworkShapes, val_fraction: float, seed: int, limit: int | None,
                  stream: bool | None) -> tuple[Dataset, Dataset]:
    """(train, validation) of an image folder (see runtime/image_folder.py): split as the other
    sources are, or DIR/train and DIR/val; then decoded into memory unless streamed."""
    what = f"image folder '{root}'"
    if shapes.x_dtype != "float32":
        raise DataError(f"{what} holds images, but the network input is {shapes.describe_x()}",
                        "train an image network (float32 input) on this dataset")
    image_folder.image_layout(shapes.x_shape, what)
    train_dir, val_dir = image_folder.split_folders(root)
    names, paths, labels, skipped = image_folder.scan_classes(train_dir, shapes.class_names)
    _check_class_count(what, names, shapes)
    y, n_classes = _fit_labels(labels, what, shapes)
    name = os.path.basename(os.path.normpath(root))
    full = Dataset(LazyImages(paths, shapes.x_shape), y, name, n_classes, class_names=names)
    if val_dir is None:
        train, val = _split_random(full, val_fraction, seed, limit)
    else:
        _, val_paths, val_labels, val_skipped = image_folder.scan_classes(val_dir, names)
        skipped += val_skipped
        val_y, _ = _fit_labels(val_labels, f"image folder '{val_dir}'", shapes)
        train, _ = _split_random(full, 0, seed, limit)
        val, _ = _split_random(Dataset(LazyImages(val_paths, shapes.x_shape), val_y, name, n_classes,
                                       class_names=names), 0, seed, limit)
        val.origin = val_dir
    count = len(train) + len(val)
    decoded = count * math.prod(shapes.x_shape) * 4
    budget = image_folder.memory_limit()
    if stream is None:
        stream = decoded > budget
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    head = f"{what}: {count} images in {len(names)} classes ({shown})"
    size = image_folder.describe_bytes(decoded)
    if stream:
        train.notes.append(f"{head}, streamed from disk (decoded they take {size}; dslc holds up to "
                           f"{image_folder.describe_bytes(budget)} in memory: a quarter of RAM, or "
                           "$DSLC_DATA_MEMORY): a worker thread decodes each batch while the previous one trains")
    else:
        train.notes.append(f"{head}, decoded into memory ({size})")
        for ds in (train, val):
            ds.arrays["x"] = ds.arrays["x"][:]
    if skipped:
        listed = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        many = len(skipped) != 1
        train.notes.append(f"note: skipped {len(skipped)} file{'s' * many} that {'are' if many else 'is'} "
                           f"not PNG, JPEG, BMP or GIF images (by name): {listed}")
    return train, val


def _check_class_count(what: str, names: list, shapes: _NetworkShapes) -> None:
    """The data's classes must be the network's: as many as its output has."""
    network = shapes.y_shape[0] if len(shapes.y_shape) == 1 and shapes.y_dtype == "float32" else shapes.classes
    if network is None or network == len(names):
        return
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise DataError(f"{what} has {len(names)} classes ({shown}), but the network has {network}",
                    f"give the network {len(names)} outputs, e.g. --set classes={len(names)} (the zoo's "
                    f"parameter for the output size), or use data with {network} classes")


def _csv(path: str, shapes: _NetworkShapes, label_column: str) -> Dataset:
    """A CSV table with a header: `label_column` holds each row's label (integers, numbers for a
    float target, or class names, numbered in sorted order), the other columns the input's
    values in order, reshaped to the network's input."""
    if os.path.getsize(path) > MAX_DATA_BYTES:
        raise DataError(f"dataset '{path}' holds more than {MAX_DATA_BYTES:,} bytes, more than dslc loads",
                        "use a smaller dataset")
    file = path
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{file} is empty: a CSV dataset needs a header and one row per sample",
                                f"write a header naming the columns (one of them `{label_column}`) and the rows")
            header = [h.strip() for h in header]
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue                # blank lines
                if len(row) != len(header):
                    raise DataError(f"{file}:{reader.line_num}: {len(row)} cells, but the header has "
                                    f"{len(header)} columns", "give every row one cell per header column")
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as err:
        raise DataError(f"{file} is not UTF-8 text ({err.reason} at byte {err.start})",
                        "save the CSV file as UTF-8") from None
    except csv.Error as err:
        raise DataError(f"{file}:{reader.line_num}: not valid CSV ({err})", "fix the row's quoting") from None
    if label_column not in header:
        shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
        raise DataError(f"{file} has no column '{label_column}' (its header: {shown})",
                        "name the label column with --label-column NAME")
    if not rows:
        raise DataError(f"{file} has a header but no rows", "add one row per sample")
    li = header.index(label_column)
    cols = [i for i in range(len(header)) if i != li]
    expected = math.prod(shapes.x_shape)
    if len(cols) != expected:
        raise DataError(f"{file} has {len(cols)} value column{'s' * (len(cols) != 1)} besides '{label_column}', "
                        f"but the network input {shapes.x_shape} takes {expected} values per sample",
                        f"give {expected} value columns (pixels in C, H, W order), or change the network's input shape")
    try:
        feats = np.array([[r[i] for i in cols] for r in rows], dtype=np.str_).astype(np.float64)
    except ValueError:
        feats = None
    if feats is None or not np.isfinite(feats).all():
        for r, line in zip(rows, lines):
            for i in cols:
                if not _is_number(r[i]):
                    raise DataError(f"{file}:{line}:{i + 1}: {r[i]!r} in column '{header[i]}' is not a number",
                                    "give a finite number in every value column (fix or remove the row)")
    if shapes.x_dtype == "int64" and not (feats == np.round(feats)).all():
        raise DataError(f"{file} has values that are not whole numbers, but the network input is "
                        f"{shapes.describe_x()} (token ids)", "give whole-number ids, or a float32 input")
    x = feats.reshape(len(rows), *shapes.x_shape).astype(shapes.x_dtype)
    raw = [r[li].strip() for r in rows]
    name, what = os.path.basename(path), f"dataset '{path}'"
    if shapes.y_dtype == "float32" and shapes.y_shape == ():
        for cell, line in zip(raw, lines):
            if not _is_number(cell):
                raise DataError(f"{file}:{line}:{li + 1}: {cell!r} in column '{label_column}' is not a number",
                                "the network's target is a number: give one in every row")
        return Dataset(x, np.array(raw, dtype=np.float64).astype(np.float32), name, None)
    names = None
    if all(re.fullmatch(r"[+-]?\d+", c) for c in raw) and shapes.class_names is None:
        labels = np.array(raw, dtype=np.int64)
    else:
        names = shapes.class_names or sorted(set(raw))
        index = {c: i for i, c in enumerate(names)}
        unknown = next((c for c in raw if c not in index), None)
        if unknown is not None:
            line = lines[raw.index(unknown)]
            raise DataError(f"{file}:{line}:{li + 1}: class {unknown!r} is not one the network was trained on "
                            f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})",
                            "use the training data's class names")
        labels = np.array([index[c] for c in raw], dtype=np.int64)
        _check_class_count(what, names, shapes)
    y, n_classes = _fit_labels(labels, what, shapes)
    return Dataset(x, y, name, n_classes, class_names=names)


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False
