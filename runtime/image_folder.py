"""Image files as network inputs: decoding one image (shared with `dslc predict`) and image
folders as datasets, held in memory or, when too large, decoded batch by batch.

An image folder has one subfolder per class, named by the class; the class list is the sorted
subfolder names (label i is classes[i]). Optionally DIR/train and DIR/val hold such class folders
each, as the training and validation sets. Images (PNG, JPEG, BMP, GIF by file name, read with
Pillow; a GIF's first frame) are converted to the input's channels (RGB for 3, greyscale for 1),
scaled to [0, 1] as the digits are, and resized bilinearly to the input's H x W (data.py's
_resize_bilinear: torch's interpolate(mode="bilinear", align_corners=False), no antialiasing).
Files with other names are skipped, with a note that names them (hidden files silently); a class
folder without images, an unreadable image or an empty folder is a DataError naming it.

Folders whose decoded size is above the in-memory limit (a quarter of the machine's memory, or
$DSLC_DATA_MEMORY) are streamed: the dataset holds the file list, and named_batches decodes each
batch when it is formed, one worker thread decoding the next batch while the current one trains.
"""
from __future__ import annotations

import math
import os

import numpy as np

from dslc.runtime.errors import DataError, RuntimeUserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_HINT = "give a PNG, JPEG, BMP or GIF image, a .npy array or a .npz archive"
# Held in memory when no limit is set and the machine's memory cannot be read.
DEFAULT_MEMORY_LIMIT = 2 << 30
SPLIT_NAMES = ("train", "val")


def pillow():
    """PIL.Image and its UnidentifiedImageError, or a RuntimeUserError saying how to install it."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise RuntimeUserError("reading images needs Pillow, which is not installed",
                               "pip install 'Pillow>=10' (a dependency of dslc: reinstall it)") from None
    return Image, UnidentifiedImageError


def decode_image(path: str, channels: int, hint: str = IMAGE_HINT) -> np.ndarray:
    """(channels, h, w) float32 pixels in [0, 1] of the image file at `path` at its own size:
    greyscale for 1 channel, RGB for 3 (alpha dropped). DataError naming the file when Pillow
    cannot read it."""
    Image, UnidentifiedImageError = pillow()
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image Pillow can read", hint) from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path} could not be read as an image ({err})", hint) from None
    return pixels[None] if channels == 1 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def image_layout(shape: tuple, what: str) -> tuple[int, tuple[int, int]]:
    """(channels, (H, W)) that images take for a float input of per-sample `shape`: (C, H, W)
    with C 1 or 3, (H, W) greyscale, or (F,) with F a square (a flattened greyscale image)."""
    if len(shape) == 3:
        if shape[0] not in (1, 3):
            raise DataError(f"{what} holds images, but the network input has {shape[0]} channels {shape}",
                            "images give 1 (greyscale) or 3 (RGB) channels: give the network one of those")
        return shape[0], (shape[1], shape[2])
    if len(shape) == 2:
        return 1, (shape[0], shape[1])
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side == shape[0]:
            return 1, (side, side)
    raise DataError(f"{what} holds images, which cannot be fitted to the network input's shape {shape}",
                    "give the network an image input of shape (C, H, W), (H, W), or (H*W,)")


def fit_image(planes: np.ndarray, shape: tuple) -> np.ndarray:
    """(C, h, w) pixels as one sample of per-sample `shape`, resized bilinearly to its H x W."""
    _, size = image_layout(shape, "")
    if planes.shape[1:] != size:
        planes = _resize_bilinear(np.ascontiguousarray(planes), *size)
    if len(shape) == 3:
        return planes
    return planes[0] if len(shape) == 2 else planes[0].reshape(-1)


def _resize_axis(n_in: int, n_out: int):
    """Source indices and weights of bilinear resampling along one axis, as torch's
    interpolate(mode="bilinear", align_corners=False) computes them."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    return lo, hi, frac


def _resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (N, H, W) float32 images to (N, height, width) (every image source and `dslc
    predict` resize with this)."""
    if images.shape[1:] == (height, width):
        return images
    lo, hi, frac = _resize_axis(images.shape[1], height)
    rows = images[:, lo, :] * (1 - frac)[:, None] + images[:, hi, :] * frac[:, None]
    lo, hi, frac = _resize_axis(images.shape[2], width)
    return (rows[:, :, lo] * (1 - frac) + rows[:, :, hi] * frac).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Image folders

def is_image_folder(path: str) -> bool:
    """Whether the directory `path` is laid out as class folders (or train/val of them) rather
    than holding MNIST idx files: it has a subfolder and no idx file."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    if any("idx" in e.name and "ubyte" in e.name for e in entries):
        return False
    return any(e.is_dir() and not e.name.startswith(".") for e in entries)


def _subfolders(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise DataError(f"image folder '{path}' cannot be read ({err.strerror or err})",
                        "give a directory you can read") from None


def split_folders(root: str) -> tuple[str, str | None]:
    """(training folder, validation folder or None): root/train and root/val when root has
    both, else root itself."""
    subs = _subfolders(root)
    if "train" in subs and "val" in subs:
        return os.path.join(root, "train"), os.path.join(root, "val")
    return root, None


def scan_classes(folder: str, class_names: list[str] | None = None) -> tuple[list[str], list[str], np.ndarray, list]:
    """(class names, image paths, int64 labels, skipped files) of a folder of class folders.
    `class_names`: the classes that labels number (another folder's, or a checkpoint's); a class
    folder not among them is a DataError. Each class folder is walked in sorted order, so the
    file list (and what a seed draws from it) is the same on every machine."""
    subs = _subfolders(folder)
    if not subs:
        loose = [n for n in _files(folder) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if loose:
            raise DataError(f"image folder '{folder}' holds images but no class folders",
                            "put each class's images in a subfolder named after the class "
                            f"(e.g. {os.path.join(folder, 'cat', loose[0])})")
        raise DataError(f"image folder '{folder}' is empty: it has no class folders",
                        "give a directory with one subfolder of images per class (or train/ and val/ of them)")
    names = list(class_names) if class_names is not None else subs
    index = {c: i for i, c in enumerate(names)}
    paths, labels, skipped = [], [], []
    for sub in subs:
        if sub not in index:
            raise DataError(f"image folder '{folder}' has a class folder '{sub}' that the training classes "
                            f"do not ({', '.join(names)})",
                            "use the class folders the network was trained on (or retrain with this class)")
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(folder, sub)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                (found if f.lower().endswith(IMAGE_EXTENSIONS) else skipped).append(os.path.join(dirpath, f))
        if not found:
            raise DataError(f"class folder '{os.path.join(folder, sub)}' holds no images (PNG, JPEG, BMP or GIF)",
                            "add its images, or remove the folder if the class is not wanted")
        paths += found
        labels += [index[sub]] * len(found)
    return names, paths, np.array(labels, dtype=np.int64), skipped


def _files(folder: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    except OSError:
        return []


def memory_limit() -> int:
    """Bytes of decoded images held in memory: $DSLC_DATA_MEMORY (bytes, or with K, M, G, T),
    else a quarter of the machine's memory."""
    setting = os.environ.get("DSLC_DATA_MEMORY", "").strip()
    if setting:
        from dslc.runtime.devices import parse_bytes
        return parse_bytes(setting, "DSLC_DATA_MEMORY")
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return DEFAULT_MEMORY_LIMIT


class LazyImages:
    """Image files standing for an (N, *shape) float32 array: indexing with a slice or an
    array of indices decodes those images. What a streamed dataset holds instead of pixels."""

    dtype = np.dtype(np.float32)

    def __init__(self, paths, shape: tuple):
        self.paths = np.asarray(paths, dtype=object)
        self.sample_shape = tuple(shape)
        self.channels, _ = image_layout(self.sample_shape, "")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple:
        return (len(self.paths), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def take(self, index) -> "LazyImages":
        """The images at `index`, still undecoded."""
        return LazyImages(self.paths[index], self.sample_shape)

    def __getitem__(self, index) -> np.ndarray:
        return decode_all(self.paths[index], self.sample_shape)


def decode_all(paths, shape: tuple) -> np.ndarray:
    """(len(paths), *shape) float32: each image decoded and fitted to the input."""
    channels, _ = image_layout(shape, "")
    out = np.empty((len(paths), *shape), dtype=np.float32)
    for i, p in enumerate(paths):
        out[i] = fit_image(decode_image(p, channels, _FOLDER_HINT), shape)
    return out


_FOLDER_HINT = "replace or remove the file (dslc reads PNG, JPEG, BMP and GIF images with Pillow)"


def describe_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.1f} KB"
