"""What the commands that use trained weights share: the network compiled and its weights
loaded (`load_trained`), inputs read from images and arrays (`read_inputs`), class
probabilities, output paths checked and figures drawn (`dslc predict`, `inspect`, `sample`,
`plot`, `export`, `run --lr-find` and an ensemble's `eval` use them).

Inputs are images (PNG, JPEG, anything Pillow reads), .npy arrays or .npz archives. An image
is made what training fed the network: grayscale or RGB by the input's channel count, scaled
to [0, 1] (as runtime/data.py scales digits and MNIST; no further normalisation) and resized
bilinearly to the input's H x W exactly as the data loader resizes (a note says so). The
built-in image datasets are light strokes on a dark background: `--invert` turns dark ink on
white paper into that.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .compiler import UsageError, compile_file
from .runtime.checkpoint import load_checkpoint
from .runtime.errors import CheckpointError, DataError, RuntimeUserError

IMAGE_HINT = "give a PNG or JPEG image, a .npy array or a .npz archive"


def _log(msg: str):
    print(msg, file=sys.stderr)


# ---- the model ---------------------------------------------------------------------------------
def load_trained(args, weights: str | None = None, adjust=None):
    """(model, checkpoint meta) for FILE with --weights: the network compiled with the --set values
    the checkpoint records (and those given), the parameters loaded whole. `weights`: one of
    several checkpoints (an ensemble); `adjust(net, overrides)`: the overrides to compile with
    instead, given the network compiled with them."""
    from .cli_train import recorded_overrides
    from .runtime.model import Model
    from .runtime.weights import is_foreign
    weights = weights or _weights_list(args)[0]
    foreign = is_foreign(weights)           # PyTorch's formats: no training record, names mapped on load
    arrays, meta = ({}, {"kind": "dslc-model"}) if foreign else load_checkpoint(weights)
    if meta.get("kind") not in ("dslc-training", "dslc-model"):
        raise CheckpointError(f"{weights} is not a dslc checkpoint (no training or model record in it)",
                              "give last.ckpt or best.ckpt from a `dslc run` directory, or a file net.save() wrote")
    overrides, applied = recorded_overrides(meta, args.set, weights)
    if applied:
        _log(f"using the --set values recorded in {weights}: {' '.join(applied)}")
    net, _ = compile_file(args.file, overrides)
    if adjust is not None:
        changed = adjust(net, overrides)
        if changed != overrides:
            net, _ = compile_file(args.file, changed)
    model = Model(net, device=args.device)
    if foreign:
        report = model.load_params(weights)
        _log(str(report))
    else:
        from .cli_train import averaged_params
        report = model.load_params(averaged_params(arrays, weights, _log)
                                   or {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")})
    if report.missing or report.mismatched:
        raise CheckpointError(f"{weights} does not hold {net.name}'s parameters:\n{report}",
                              f"give the weights trained with {args.file} (and the same --set values)")
    return model, meta


def _weights_list(args) -> list[str]:
    return args.weights if isinstance(args.weights, list) else [args.weights]


def data_inputs(net) -> list[str]:
    """The inputs the outputs are computed from (labels and targets excluded)."""
    import networkx as nx
    needed = set().union(*(nx.ancestors(net.graph, o) | {o} for o in net.outputs))
    return [i for i in net.inputs if i in needed]


# ---- reading inputs ----------------------------------------------------------------------------
def read_image(path: str, shape: tuple, invert: bool = False, light_note: bool = True) -> np.ndarray:
    """One sample for a float input of per-sample `shape` ((C, H, W), (H, W) or (F,) with F a
    square) from an image file: grayscale or RGB by C, scaled to [0, 1], resized to H x W, decoded
    as `--data` decodes an image folder (runtime/image_folder.py). `light_note`: say when a
    greyscale image is mostly light (not for a model trained on an image folder's own pictures)."""
    from .runtime.data import _resize_bilinear
    from .runtime.image_folder import decode_image
    channels = shape[0] if len(shape) == 3 else 1
    if channels not in (1, 3):
        raise DataError(f"{path} is an image, but the network input has {channels} channels {shape}",
                        "images give 1 (grayscale) or 3 (RGB) channels: feed a .npy array instead")
    if len(shape) == 1:
        side = int(round(np.sqrt(shape[0])))
        if side * side != shape[0]:
            raise DataError(f"{path} is an image, but the network input is a vector of {shape[0]} values",
                            "feed a .npy array of that shape instead")
        size = (side, side)
    else:
        size = tuple(shape[-2:])
    planes = decode_image(path, channels, IMAGE_HINT)
    if invert:
        planes = 1.0 - planes
    elif light_note and channels == 1 and float(planes.mean()) > 0.5:
        _log(f"note: {path} is mostly light; the built-in datasets are light strokes on a dark background "
             "(pass --invert for dark ink on white)")
    if planes.shape[1:] != size:
        _log(f"note: {path} is {planes.shape[2]}x{planes.shape[1]} pixels, resized to {size[1]}x{size[0]} "
             "for the network's input")
        planes = _resize_bilinear(np.ascontiguousarray(planes), *size)
    if len(shape) == 3:
        return planes
    return planes[0] if len(shape) == 2 else planes[0].reshape(-1)


def _checked_samples(arr: np.ndarray, where: str, name: str, node) -> np.ndarray:
    """`arr` as a batch for input `name`: one sample of the input's shape, or a batch of them."""
    shape = tuple(node.type.shape[1:])
    fixed = all(isinstance(d, int) for d in shape)
    if fixed and tuple(arr.shape) == shape:
        arr = arr[None]
    if arr.ndim != len(shape) + 1 or (fixed and tuple(arr.shape[1:]) != shape):
        raise DataError(f"{where} has shape {arr.shape}, but input `{name}` takes samples of shape {shape}",
                        f"save one sample {shape} or a batch (N, {', '.join(map(str, shape))})")
    kinds = "f" if node.type.dtype == "float32" else "iu"
    if arr.dtype.kind not in kinds and not (kinds == "f" and arr.dtype.kind in "iub"):
        raise DataError(f"{where} has dtype {arr.dtype}, but input `{name}` is {node.type.dtype}",
                        f"save it as {node.type.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32 if node.type.dtype == "float32" else np.int64)


def read_inputs(net, paths: list[str], invert: bool = False, light_note: bool = True) -> tuple[dict, list[str]]:
    """(feeds: input name -> batch, one label per sample: "FILE" or "FILE[i]") from the files."""
    names = data_inputs(net)
    batches = {n: [] for n in names}
    labels = []
    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"input {path} does not exist", "check the path")
        if not os.path.isfile(path):
            raise DataError(f"input {path} is not a file", IMAGE_HINT)
        ext = os.path.splitext(path)[1].lower()
        if ext in (".npy", ".npz"):
            arrays = _read_arrays(path, ext, names)
        else:
            if len(names) != 1:
                raise DataError(f"{net.name} has inputs {', '.join(names)}: one image cannot feed them all",
                                "give a .npz archive holding an array per input")
            node = net.node(names[0])
            if node.type.dtype != "float32":
                raise DataError(f"{path} looks like an image, but input `{names[0]}` takes {node.type.dtype} ids",
                                "give a .npy or .npz array of ids")
            if not all(isinstance(d, int) for d in node.type.shape[1:]):
                raise DataError(f"input `{names[0]}` has a symbolic shape {node.type}: an image cannot fill it",
                                "give a .npy or .npz array")
            arrays = {names[0]: read_image(path, tuple(node.type.shape[1:]), invert, light_note)}
        counts = set()
        for n in names:
            a = _checked_samples(np.asarray(arrays[n]), path, n, net.node(n))
            batches[n].append(a)
            counts.add(len(a))
        if len(counts) != 1:
            raise DataError(f"{path} holds different numbers of samples per input", "give each input one per sample")
        count = counts.pop()
        labels += [path] if count == 1 else [f"{path}[{i}]" for i in range(count)]
    feeds = {}
    for n, parts in batches.items():
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) > 1:
            raise DataError(f"the inputs give `{n}` samples of different shapes {sorted(shapes)}",
                            "predict files of one shape at a time")
        feeds[n] = np.concatenate(parts)
    return feeds, labels


def _read_arrays(path: str, ext: str, names: list[str]) -> dict:
    import zipfile
    try:
        loaded = np.load(path, allow_pickle=False)
        if ext == ".npy" or not isinstance(loaded, np.lib.npyio.NpzFile):
            if isinstance(loaded, np.lib.npyio.NpzFile):
                loaded.close()
            if len(names) != 1:
                raise DataError(f"{path} is one array, but the network has inputs {', '.join(names)}",
                                "give a .npz archive with an array per input: numpy.savez(path, "
                                + ", ".join(f"{n}=..." for n in names) + ")")
            return {names[0]: loaded}
        with loaded as archive:
            out = {}
            for n in names:
                key = n if n in archive.files else "x" if len(names) == 1 and "x" in archive.files else None
                if key is None:
                    raise DataError(f"{path} has no array `{n}` (it holds: {', '.join(archive.files) or 'nothing'})",
                                    f"save the input as {n} (or x): numpy.savez(path, {n}=inputs)")
                out[n] = archive[key]
            return out
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} could not be read as a numpy {ext} file ({err})",
                        "save it with numpy.save / numpy.savez from numeric arrays") from None


# ---- outputs: class probabilities, paths, figures ----------------------------------------------
def probabilities(net, out: dict, output: str) -> np.ndarray | None:
    """(N, classes) class probabilities from output `output`, or None when it is no class score:
    a softmax output is used as it is, scores get a softmax."""
    a = out[output]
    if a.ndim != 2:
        return None
    node = net.node(net.tensors.get(output, output))
    if node.op == "softmax":
        return a
    z = a - a.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_output_path(path: str, suffix: str, inputs: list[str]):
    if not path.lower().endswith(suffix):
        raise UsageError(f"-o {path}: the output is written as {suffix}", f"name the file something{suffix}")
    if any(os.path.exists(i) and os.path.exists(path) and os.path.samefile(path, i) for i in inputs):
        raise UsageError(f"-o {path} is one of the inputs", "write the output to another file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"-o {path}: directory {parent} does not exist", "create it first, or write elsewhere")


def _pyplot(command: str = "inspect"):
    try:
        import matplotlib
    except ImportError:
        raise RuntimeUserError(f"dslc {command} draws with matplotlib, which is not installed",
                               "pip install 'dslc[viz]' (or pip install .[viz] in a checkout)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path):
    fig.savefig(path, dpi=100)
    plt.close(fig)
