"""`dslc predict`, `dslc sample`, `dslc inspect` and `dslc plot`: using trained weights, and looking inside them.

    dslc predict FILE --weights CKPT INPUT...        top-k classes per sample (or -o out.npz)
    dslc predict FILE --weights A B C INPUT...       an ensemble: class probabilities averaged
    dslc inspect FILE --weights CKPT saliency --input IMG -o out.png [--class K]
    dslc inspect FILE --weights CKPT filters -o out.png
    dslc inspect FILE --weights CKPT activations --input IMG --layer NAME -o out.png
    dslc inspect FILE --weights CKPT occlusion --input IMG -o out.png [--class K] [--patch 2 --stride 1]
    dslc inspect FILE --weights CKPT tsne --data digits --layer NAME -o out.png [--limit 300]
    dslc inspect FILE --weights CKPT patches --data digits --layer NAME -o out.png [--channel C --top 9]
    dslc inspect FILE --weights CKPT class --class K -o out.png [--steps 200 --lr 0.1 --l2 0.01]
    dslc inspect FILE --weights CKPT dream --input IMG --layer NAME -o out.png [--steps 20 --lr 0.02]
    dslc sample FILE --weights CKPT --prime TEXT --length N --temperature T [--seed S]
    dslc plot METRICS.jsonl -o curves.png

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
from .diagnostics import CompileError, did_you_mean
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


# ---- predict ------------------------------------------------------------------------------------
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


def _is_checkpoint(path: str) -> bool:
    """Whether `path` is a checkpoint archive (a zip holding dslc's metadata member), cheaply."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as zf:
            return "__meta__.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _split_weights_and_inputs(args):
    """`--weights a.ckpt b.ckpt img.png` takes every path after the flag as weights: those from the
    first that is no checkpoint on are the inputs."""
    if args.inputs:
        return
    for i, w in enumerate(args.weights):
        if i and not w.lower().endswith(".ckpt") and not _is_checkpoint(w):
            args.weights, args.inputs = args.weights[:i], args.weights[i:]
            return
    raise UsageError("no inputs to predict", "give images, .npy or .npz files after the weights: "
                                             "dslc predict FILE --weights CKPT [CKPT...] INPUT...")


def predict_command(args) -> int:
    from .cli_train import recorded_class_names
    _split_weights_and_inputs(args)
    if args.output:
        _check_output_path(args.output, ".npz", list(args.inputs) + [args.file, *args.weights])
    if args.top is not None and args.top < 1:
        raise UsageError(f"--top {args.top}: give 1 or more", "e.g. --top 3")
    models = [load_trained(args, w) for w in dict.fromkeys(args.weights)]
    model, meta = models[0]
    net = model.net
    feeds, labels = read_inputs(net, args.inputs, args.invert, light_note=recorded_class_names(meta) is None)
    outs = []
    for m, _ in models:
        outs.append(m.forward(**feeds))
        if set(outs[-1]) != set(outs[0]) or any(outs[-1][k].shape != v.shape for k, v in outs[0].items()):
            raise CheckpointError(f"the ensemble's networks give different outputs: "
                                  f"{', '.join(f'{k} {v.shape}' for k, v in outs[0].items())} and "
                                  f"{', '.join(f'{k} {v.shape}' for k, v in outs[-1].items())}",
                                  "ensemble weights of one network, trained with the same --set values")
    out = outs[0]
    if len(models) > 1:
        _log(f"an ensemble of {len(models)} models: class probabilities averaged")
    if getattr(args, "masks", None):
        return write_masks(args, net, outs, labels, meta)
    if args.output:
        arrays = {k: v for k, v in out.items() if k != "loss"}
        if len(models) > 1:
            # Each output averaged over the models; a class score's averaged probabilities beside it.
            arrays = {k: np.mean([o[k] for o in outs], axis=0) for k in arrays}
            for k in list(arrays):
                probs = [probabilities(net, o, k) for o in outs]
                if probs[0] is not None:
                    arrays[f"{k}_probabilities"] = np.mean(probs, axis=0)
        np.savez(args.output, **arrays)
        print(f"wrote {args.output}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
              + f" for {len(labels)} sample{'s' * (len(labels) != 1)}"
              + (f" (the mean over {len(models)} models)" if len(models) > 1 else ""))
        return 0
    outputs = [net.tensor_name(o) for o in net.outputs]
    shown = False
    for output in outputs:
        probs = probabilities(net, out, output)
        if probs is None:
            continue
        probs = np.mean([probabilities(net, o, output) for o in outs], axis=0)
        shown = True
        classes = probs.shape[1]
        top = min(args.top or 5, classes)
        vocab = meta.get("vocab") if isinstance(meta.get("vocab"), str) else None
        names = recorded_class_names(meta)      # an image folder's or a CSV's classes, beside each number
        vocab = vocab or (names if names is not None and len(names) == classes else None)
        for label, p in zip(labels, probs):
            order = np.argsort(-p, kind="stable")[:top]
            head = f"{label}: class {order[0]}" + (f" {vocab[order[0]]!r}" if vocab else "")
            print(f"{head} ({p[order[0]]:.1%})" + (f"  [{output}]" if len(outputs) > 1 else ""))
            for k in order:
                name = f"{k:>4}" + (f" {vocab[k]!r}" if vocab else "")
                print(f"  {name}  {p[k]:.4f}")
    if not shown:
        per_pixel = [k for k in outputs if out[k].ndim == 4]
        raise UsageError(f"{net.name}'s outputs ({', '.join(f'{k} {out[k].shape}' for k in outputs)}) are not "
                         "class scores to rank",
                         "write a PNG mask per image of the per-pixel classes: --masks DIR; or every output to "
                         "a file: -o out.npz" if per_pixel else "write them to a file: -o out.npz")
    return 0


# A palette for class masks: class 0 black (the background, by convention), then distinct colours
# (matplotlib's tab10 and tab20 colours), repeating past 30 classes.
_PALETTE = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232),
            (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210),
            (199, 199, 199), (219, 219, 141), (158, 218, 229), (57, 59, 121), (82, 84, 163), (107, 110, 207),
            (156, 158, 222), (99, 121, 57), (140, 162, 82), (181, 207, 107), (206, 219, 156), (140, 109, 49)]


def pixel_classes(net, outs: list[dict], output: str) -> np.ndarray:
    """(N, H, W) class ids: the argmax over axis 1 of the (N, classes, H, W) output's class
    probabilities, averaged over the models of an ensemble (a softmax output as it is)."""
    is_softmax = net.node(net.tensors.get(output, output)).op == "softmax"
    probs = []
    for o in outs:
        a = o[output].astype(np.float64)
        if not is_softmax:
            a = np.exp(a - a.max(axis=1, keepdims=True))
            a /= a.sum(axis=1, keepdims=True)
        probs.append(a)
    return np.argmax(np.mean(probs, axis=0), axis=1)


def write_masks(args, net, outs: list[dict], labels: list[str], meta: dict) -> int:
    """`dslc predict ... --masks DIR`: a palette PNG per sample of a per-pixel classifier (each
    pixel's value is its class id; the palette colours them), named after its input."""
    from PIL import Image

    from .cli_train import recorded_class_names
    if args.output:
        raise UsageError("--masks and -o both say where predictions go", "give one of them")
    outputs = [net.tensor_name(o) for o in net.outputs]
    output = args.output_name if getattr(args, "output_name", None) else \
        next((k for k in outputs if outs[0][k].ndim == 4), None)
    if output is None or output not in outs[0] or outs[0][output].ndim != 4:
        shown = ", ".join(f"{k} {outs[0][k].shape}" for k in outputs)
        raise UsageError(f"--masks needs per-pixel class scores (N, classes, H, W); {net.name}'s outputs are {shown}",
                         "predict with a segmentation network such as models/unet.net, or -o out.npz")
    classes = outs[0][output].shape[1]
    if classes > 256:
        raise UsageError(f"`{output}` has {classes} classes; a palette PNG holds at most 256",
                         "write the scores with -o out.npz")
    masks = pixel_classes(net, outs, output)
    directory = args.masks
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UsageError(f"--masks {directory} is a file", "give a directory (it is created if missing)")
    os.makedirs(directory, exist_ok=True)
    palette = [c for i in range(256) for c in _PALETTE[i % len(_PALETTE)]]
    names = recorded_class_names(meta)
    used = set()
    for label, mask in zip(labels, masks):
        stem = os.path.splitext(os.path.basename(label.split("[")[0]))[0]
        if "[" in label:
            stem += "_" + label[label.rindex("[") + 1:-1]
        base, k = stem, 1
        while stem in used:
            k += 1
            stem = f"{base}_{k}"
        used.add(stem)
        path = os.path.join(directory, stem + ".png")
        img = Image.fromarray(mask.astype(np.uint8), mode="P")
        img.putpalette(palette)
        img.save(path)
        counts = np.bincount(mask.ravel(), minlength=classes)
        share = ", ".join(f"{c}{f' {names[c]!r}' if names and len(names) == classes else ''} {n / mask.size:.1%}"
                          for c, n in enumerate(counts) if n)
        print(f"wrote {path}: {mask.shape[1]}x{mask.shape[0]} mask of {label} (class per pixel: {share})")
    _log(f"masks from `{output}` (argmax over its {classes} classes per pixel"
         + (f", probabilities averaged over {len(outs)} models" if len(outs) > 1 else "")
         + "); each PNG's pixel values are class ids, coloured by a palette (class 0 black)")
    return 0


# ---- inspect ------------------------------------------------------------------------------------
def _pyplot(command: str = "inspect"):
    try:
        import matplotlib
    except ImportError:
        raise RuntimeUserError(f"dslc {command} draws with matplotlib, which is not installed",
                               "pip install 'dslc[viz]' (or pip install .[viz] in a checkout)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def saliency_map(model, feeds: dict, output: str, cls: int | None) -> tuple[np.ndarray, int, float]:
    """(map (H, W), class, its probability): |d score_cls / d input|, the maximum over channels
    (Simonyan, Vedaldi & Zisserman, 2014), for the first sample; cls None: the predicted class."""
    net = model.net
    name = data_inputs(net)[0]
    out = model.forward(**feeds)
    probs = probabilities(net, out, output)
    if probs is None:
        raise UsageError(f"output `{output}` of shape {out[output].shape} holds no class scores",
                         "saliency needs a classifier's (N, classes) output")
    classes = probs.shape[1]
    if cls is None:
        cls = int(np.argmax(probs[0]))
    elif not 0 <= cls < classes:
        raise UsageError(f"--class {cls}: {net.name} has classes 0 to {classes - 1}", f"give 0 to {classes - 1}")
    grad = model.backward(wrt=[name], output=output, index=cls)[name][0]
    grad = np.abs(grad)
    if grad.ndim == 3:
        grad = grad.max(axis=0)
    elif grad.ndim == 1:
        side = int(round(np.sqrt(grad.size)))
        grad = grad.reshape(side, side) if side * side == grad.size else grad[None]
    return grad, cls, float(probs[0, cls])


def _as_picture(x: np.ndarray) -> np.ndarray:
    """A (C, H, W) / (H, W) / (F,) sample as something imshow draws."""
    if x.ndim == 3:
        return x[0] if x.shape[0] != 3 else np.clip(x.transpose(1, 2, 0), 0, 1)
    if x.ndim == 1:
        side = int(round(np.sqrt(x.size)))
        return x.reshape(side, side) if side * side == x.size else x[None]
    return x


def _first_conv(net):
    for node in net.nodes():
        if node.op == "conv":
            return node
    return None


def _layer(net, name: str | None, kind: str, usage: str):
    """The node `name` names (a node or a tensor name), or a diagnostic with the candidates."""
    names = [n.name for n in net.nodes() if n.op != "input" and n.type.dtype == "float32" and n.type.shape
             and n.name != net.loss and not n.op.startswith("loss")]
    if not name:
        raise UsageError(f"{kind} needs a layer: --layer NAME", f"e.g. {usage}; layers of {net.name}: "
                         + ", ".join(names))
    node_name = net.tensors.get(name, name)
    if node_name not in net or net.node(node_name).op == "input":
        raise UsageError(f"{net.name} has no layer `{name}`",
                         did_you_mean(name, names + list(net.tensors)) or f"layers: {', '.join(names)}")
    if node_name not in names:
        raise UsageError(f"`{name}` ({net.node(node_name).op}) holds no float features to show",
                         f"layers that do: {', '.join(names)}")
    return net.node(node_name)


def layer_outputs(model, feeds: dict, layers: list[str]) -> dict:
    """{layer: its output (host array)} for the inputs `feeds`, in eval mode. The layers are made
    outputs of a copy of the network for this plan: an output is stored unfused and kept to the
    end of the pass, whereas an inference plan fuses conv -> batchnorm -> relu into one call
    (the conv's own output is never stored) and reuses dead activations' memory."""
    import dataclasses

    from .runtime.plan import Plan
    net = dataclasses.replace(model.net, outputs=list(dict.fromkeys(list(model.net.outputs) + list(layers))))
    feeds = model._feeds(feeds)
    batch, symbols = model._bindings(feeds)
    plan = Plan(net, model._dev, model.device, batch, symbols, False, None, with_loss=False)
    plan.set_inputs(feeds)
    model.ctx.training = False
    plan.forward(model.ctx)
    return {n: model.device.to_host(plan.out[n]).copy() for n in layers}


def _grid(n: int) -> tuple[int, int]:
    cols = int(np.ceil(np.sqrt(n)))
    return int(np.ceil(n / cols)), cols


def _one_image_input(net, kind: str) -> str:
    names = data_inputs(net)
    if len(names) != 1 or net.node(names[0]).type.dtype != "float32":
        raise UsageError(f"{kind} needs a network with one float input; {net.name} has {', '.join(names)}",
                         "inspect an image classifier")
    return names[0]


def _input_sample(net, args, kind: str) -> tuple[str, dict]:
    name = _one_image_input(net, kind)
    if not args.input:
        raise UsageError(f"{kind} needs an image: --input IMG", "e.g. --input digit.png")
    feeds, _ = read_inputs(net, [args.input], args.invert)
    return name, {k: v[:1] for k, v in feeds.items()}


def _save(plt, fig, path):
    fig.savefig(path, dpi=100)
    plt.close(fig)


def activations_command(args, model, plt) -> int:
    net = model.net
    node = _layer(net, args.layer, "activations", "--layer conv1")
    name, feeds = _input_sample(net, args, "activations")
    if len(node.type.shape) != 4:
        maps = [n.name for n in net.nodes() if len(n.type.shape) == 4 and n.op != "input"]
        raise UsageError(f"`{node.name}` ({node.op}) gives {tuple(node.type.shape)}, no (channels, height, width) "
                         "maps to draw as a grid",
                         f"layers with maps: {', '.join(maps) or 'none'}; `dslc inspect ... tsne --layer "
                         f"{node.name}` shows such features over a dataset")
    a = layer_outputs(model, feeds, [node.name])[node.name][0]
    rows, cols = _grid(a.shape[0] + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9 + 0.4, rows * 0.9 + 0.5), squeeze=False)
    flat = axes.ravel()
    for ax in flat:
        ax.axis("off")
    flat[0].imshow(_as_picture(feeds[name][0]), cmap="gray")
    flat[0].set_title("input", fontsize=6)
    lo, hi = float(a.min()), float(a.max())
    for c in range(a.shape[0]):     # one scale for every map: a dead channel looks dead
        flat[c + 1].imshow(a[c], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
        flat[c + 1].set_title(str(c), fontsize=6)
    fig.suptitle(f"{node.name} ({node.op}) on {os.path.basename(args.input)}", fontsize=8)
    _save(plt, fig, args.output)
    active = int((a.reshape(a.shape[0], -1).max(axis=1) > 0).sum())
    strongest = int(np.argmax(a.reshape(a.shape[0], -1).mean(axis=1)))
    print(f"wrote {args.output}: the {a.shape[0]} maps of {node.name} ({a.shape[1]}x{a.shape[2]}) for "
          f"{args.input}, on one scale {lo:.3g} to {hi:.3g}; {active} active, strongest on average: map {strongest}")
    return 0


def occlusion_map(model, feeds: dict, output: str, cls: int | None, patch: int, stride: int,
                  fill: float = 0.0) -> tuple[np.ndarray, int, float]:
    """(map (H, W), class, its probability on the whole image): the drop in the class's
    probability when a patch x patch square of the image is set to `fill` (Zeiler & Fergus,
    2014), each pixel the mean over the patches covering it; cls None: the predicted class."""
    net = model.net
    name = data_inputs(net)[0]
    x = feeds[name][:1]
    if x.ndim < 3:
        raise UsageError(f"occlusion needs an image input; `{name}` is {tuple(x.shape[1:])}",
                         "inspect a network whose input is (channels, height, width) or (height, width)")
    h, w = x.shape[-2:]
    if not (1 <= patch <= min(h, w)) or stride < 1:
        raise UsageError(f"--patch {patch} --stride {stride} for a {h}x{w} image",
                         f"give a patch of 1 to {min(h, w)} pixels and a stride of at least 1")
    probs = probabilities(net, model.forward(**{name: x}), output)
    if probs is None:
        raise UsageError(f"output `{output}` holds no class scores", "occlusion needs a classifier's (N, classes) "
                         "output")
    classes = probs.shape[1]
    if cls is None:
        cls = int(np.argmax(probs[0]))
    elif not 0 <= cls < classes:
        raise UsageError(f"--class {cls}: {net.name} has classes 0 to {classes - 1}", f"give 0 to {classes - 1}")
    base = float(probs[0, cls])
    spots = [(r, c) for r in range(0, h - patch + 1, stride) for c in range(0, w - patch + 1, stride)]
    batch = np.repeat(x, len(spots), axis=0)
    for k, (r, c) in enumerate(spots):
        batch[k, ..., r:r + patch, c:c + patch] = fill
    p = np.concatenate([probabilities(net, model.forward(**{name: batch[i:i + 256]}), output)[:, cls]
                        for i in range(0, len(batch), 256)])
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for k, (r, c) in enumerate(spots):
        total[r:r + patch, c:c + patch] += base - p[k]
        count[r:r + patch, c:c + patch] += 1
    return total / np.maximum(count, 1), cls, base


def occlusion_command(args, model, plt) -> int:
    net = model.net
    name, feeds = _input_sample(net, args, "occlusion")
    output = args.output_name or net.tensor_name(net.outputs[0])
    drop, cls, p = occlusion_map(model, feeds, output, args.cls, args.patch, args.stride, args.fill)
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    axes[0].imshow(_as_picture(feeds[name][0]), cmap="gray")
    axes[0].set_title(os.path.basename(args.input))
    lim = float(np.abs(drop).max()) or 1.0
    im = axes[1].imshow(drop, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1].set_title(f"probability drop, class {cls} ({p:.0%})", fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    _save(plt, fig, args.output)
    r, c = np.unravel_index(int(np.argmax(drop)), drop.shape)
    print(f"wrote {args.output}: occlusion of {args.input} by a {args.patch}x{args.patch} patch of {args.fill:g} "
          f"(stride {args.stride}), class {cls} at {p:.1%}; the largest drop, {float(drop[r, c]):.1%}, "
          f"at row {r}, column {c}")
    return 0


def tsne_command(args, model, plt) -> int:
    from .cli_train import _DataSpec
    net = model.net
    node = _layer(net, args.layer, "tsne", "--layer fc1")
    name = _one_image_input(net, "tsne")
    if not args.data:
        raise UsageError("tsne needs a dataset: --data SOURCE", "e.g. --data digits")
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise RuntimeUserError("dslc inspect tsne needs scikit-learn, which is not installed",
                               "pip install scikit-learn") from None
    if args.limit is not None and args.limit < 5:
        raise UsageError(f"--limit {args.limit}: t-SNE needs at least 5 points", "give --limit 300 or so")
    spec = _DataSpec(net)
    ds, _ = spec.load(args.data, val_fraction=0, seed=0, limit=args.limit or 300)
    x = ds.arrays.get(name, ds.x)
    labels = ds.arrays.get(spec.label) if spec.label is not None else None
    labels = ds.y if labels is None else labels
    feats = np.concatenate([layer_outputs(model, {name: x[i:i + 256]}, [node.name])[node.name]
                            for i in range(0, len(x), 256)])
    feats = feats.reshape(len(feats), -1).astype(np.float64)
    n = len(feats)
    perplexity = min(30.0, (n - 1) / 3)
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(feats)
    fig, ax = plt.subplots(figsize=(6, 5))
    colour = labels if labels is not None and labels.ndim == 1 and labels.dtype.kind in "iu" else None
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=colour, cmap="tab10" if colour is not None else None, s=8)
    if colour is not None:
        fig.colorbar(sc, ax=ax, ticks=sorted(set(colour.tolist()))[:20])
    ax.set_title(f"t-SNE of {node.name} ({feats.shape[1]} features), {n} samples of {ds.name}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    _save(plt, fig, args.output)
    by = f", coloured by {spec.label or 'label'}" if colour is not None else ""
    print(f"wrote {args.output}: t-SNE of {node.name}'s {feats.shape[1]} features over {n} points of {ds.name}{by} "
          f"(perplexity {perplexity:g})")
    return 0


# ---- patches, class, dream ----------------------------------------------------------------------
def exposing(model, layers: list[str]):
    """The model with `layers` made outputs too, sharing its parameters (on the device) and its
    random state: forward() then returns them, and backward(output=layer, ...) differentiates them."""
    import copy
    import dataclasses
    m = copy.copy(model)
    m.net = dataclasses.replace(model.net, outputs=list(dict.fromkeys(list(model.net.outputs) + list(layers))))
    m._plans, m._last = {}, None
    return m


def receptive_fields(net, input_name: str) -> dict:
    """{node: (start, size, jump) per spatial axis (rows, columns)}: the input pixels position p of
    the node's output sees are start + p * jump ... start + p * jump + size - 1 (before clipping
    to the image), for the nodes reached from `input_name` through convolutions, pools and
    shape-keeping ops. A node behind an op that resizes otherwise (upsampling, global pooling,
    flatten) gets no entry: its units see the whole image."""
    rf = {input_name: ((0, 1, 1), (0, 1, 1))}
    for node in net.nodes():
        if node.name in rf or not node.inputs:
            continue
        known = [rf[i] for i in node.inputs if i in rf]
        if not known or len(node.type.shape) < 3:
            continue
        if len(known) != len([i for i in node.inputs if len(net.node(i).type.shape) >= 3]):
            continue
        src = max(known, key=lambda f: f[0][1])
        if "kernel" in node.attrs and "stride" in node.attrs:
            k, s = node.attrs["kernel"], node.attrs["stride"]
            p = node.attrs.get("pad", (0, 0))
            d = node.attrs.get("dilation", (1, 1))
            rf[node.name] = tuple((st - p[a] * jp, size + d[a] * (k[a] - 1) * jp, jp * s[a])
                                  for a, (st, size, jp) in enumerate(src))
        elif all(tuple(net.node(i).type.shape[-2:]) == tuple(node.type.shape[-2:]) for i in node.inputs
                 if len(net.node(i).type.shape) >= 3) and tuple(node.type.shape[-2:]) != ():
            rf[node.name] = src
    rf.pop(input_name)
    return rf


def top_patches(model, x: np.ndarray, layer: str, channel: int, k: int) -> list[tuple]:
    """The k samples of `x` whose strongest unit of `layer`'s map `channel` is strongest (one per
    sample, as Zeiler & Fergus show them): [(sample, row, column, activation, patch)], best first;
    the patch is the input region the unit sees (its receptive field, clipped to the image; the
    whole image for a layer behind a resizing op)."""
    net = model.net
    name = data_inputs(net)[0]
    acts = np.concatenate([layer_outputs(model, {name: x[i:i + 256]}, [layer])[layer][:, channel]
                           for i in range(0, len(x), 256)])
    flat = acts.reshape(len(acts), -1)
    best = flat.argmax(axis=1)
    order = np.argsort(-flat[np.arange(len(flat)), best], kind="stable")[:k]
    field = receptive_fields(net, name).get(layer)
    h, w = x.shape[-2:]
    out = []
    for s in order:
        r, c = np.unravel_index(int(best[s]), acts.shape[1:])
        if field is None:
            patch = x[s]
        else:
            (r0, rs, rj), (c0, cs, cj) = field
            top, left = r0 + r * rj, c0 + c * cj
            patch = x[s][..., max(top, 0):min(top + rs, h), max(left, 0):min(left + cs, w)]
        out.append((int(s), int(r), int(c), float(acts[s, r, c]), patch))
    return out


def patches_command(args, model, plt) -> int:
    from .cli_train import _DataSpec
    net = model.net
    node = _layer(net, args.layer, "patches", "--layer conv2")
    name = _one_image_input(net, "patches")
    if len(node.type.shape) != 4:
        maps = [n.name for n in net.nodes() if len(n.type.shape) == 4 and n.op != "input"]
        raise UsageError(f"`{node.name}` ({node.op}) gives {tuple(node.type.shape)}, no (channels, height, width) "
                         "maps whose units see patches", f"layers with maps: {', '.join(maps) or 'none'}")
    if not args.data:
        raise UsageError("patches needs a dataset to search: --data SOURCE", "e.g. --data digits")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give 1 or more samples", "e.g. --limit 500")
    k = 9 if args.top is None else args.top
    if k < 1:
        raise UsageError(f"--top {k}: give 1 or more patches", "e.g. --top 9")
    channels = node.type.shape[1]
    if args.channel is not None and not 0 <= args.channel < channels:
        raise UsageError(f"--channel {args.channel}: {node.name} has channels 0 to {channels - 1}",
                         f"give 0 to {channels - 1}")
    spec = _DataSpec(net)
    ds, _ = spec.load(args.data, val_fraction=0, seed=0, limit=args.limit or 1000)
    x = ds.arrays.get(name, ds.x)
    shown = [args.channel] if args.channel is not None else list(range(min(channels, 8)))
    rows = [(c, top_patches(model, x, node.name, c, k)) for c in shown]
    fig, axes = plt.subplots(len(rows), k, figsize=(k * 0.8 + 0.6, len(rows) * 0.85 + 0.5), squeeze=False)
    for (c, found), line in zip(rows, axes):
        for a in line:
            a.axis("off")
        for a, (_, _, _, v, patch) in zip(line, found):
            a.imshow(_as_picture(patch), cmap="gray", vmin=0, vmax=max(1.0, float(x.max())), interpolation="nearest")
            a.set_title(f"{v:.2g}", fontsize=5)
        line[0].text(-0.3, 0.5, str(c), transform=line[0].transAxes, fontsize=7, ha="right", va="center")
    field = receptive_fields(net, name).get(node.name)
    seen = f"{field[0][1]}x{field[1][1]}-pixel receptive fields" if field else "whole images"
    fig.suptitle(f"{node.name}: the top {k} of {len(x)} {ds.name} samples per channel ({seen})", fontsize=8)
    _save(plt, fig, args.output)
    c, found = rows[0]
    s, r, col, v, _ = found[0]
    print(f"wrote {args.output}: the {k} {ds.name} samples (of {len(x)}) that most activate "
          + (f"channel {c}" if len(rows) == 1 else f"channels {shown[0]} to {shown[-1]}")
          + f" of {node.name}, each cut to the {seen.replace('fields', 'field')} of its strongest unit; "
          f"channel {c}'s strongest: sample {s} at row {r}, column {col} ({v:.4g})")
    return 0


def class_model(model, output: str, cls: int, steps: int, lr: float, l2: float) -> tuple[np.ndarray, list]:
    """The image I maximising score_cls(I) - l2 * ||I||^2 by gradient ascent from zero (Simonyan,
    Vedaldi & Zisserman, 2014: class-model visualisation), and the objective before each step
    and after the last. The score is `output`'s (unnormalised: pass the logits)."""
    net = model.net
    name = data_inputs(net)[0]
    x = np.zeros((1, *net.node(name).type.shape[1:]), np.float32)
    history = []
    for step in range(steps + 1):
        score = float(model.forward(**{name: x})[output][0, cls])
        history.append(score - l2 * float((x.astype(np.float64) ** 2).sum()))
        if step == steps:
            break
        g = model.backward(wrt=[name], output=output, index=cls)[name]
        x = (x + lr * (g - 2 * l2 * x)).astype(np.float32)
    return x[0], history


def class_command(args, model, plt) -> int:
    net = model.net
    name = _one_image_input(net, "class")
    if not all(isinstance(d, int) for d in net.node(name).type.shape[1:]):
        raise UsageError(f"class needs an input of fixed shape; `{name}` is {net.node(name).type}",
                         "compile with --set values fixing it")
    output = args.output_name or net.tensor_name(net.outputs[0])
    out = model.forward(**{name: np.zeros((1, *net.node(name).type.shape[1:]), np.float32)})
    if output not in out or out[output].ndim != 2:
        raise UsageError(f"output `{output}` holds no class scores", "class needs a classifier's (N, classes) "
                         "output: name it with --output-name")
    classes = out[output].shape[1]
    cls = 0 if args.cls is None else args.cls
    if not 0 <= cls < classes:
        raise UsageError(f"--class {cls}: {net.name} has classes 0 to {classes - 1}", f"give 0 to {classes - 1}")
    steps, lr = _ascent_settings(args, 200, 0.1)
    l2 = 0.01 if args.l2 is None else args.l2
    if not l2 >= 0:
        raise UsageError(f"--l2 {l2}: give 0 or more", "e.g. --l2 0.01")
    if net.node(net.tensors.get(output, output)).op == "softmax":
        _log(f"note: `{output}` is a softmax; the class-model objective is meant for unnormalised scores")
    img, history = class_model(model, output, cls, steps, lr, l2)
    probs = probabilities(net, model.forward(**{name: img[None]}), output)
    fig, ax = plt.subplots(figsize=(3, 3.2))
    ax.imshow(_as_picture(img) if img.ndim != 3 or img.shape[0] != 3 else
              (img.transpose(1, 2, 0) - img.min()) / (np.ptp(img) + 1e-12), cmap="gray")
    ax.set_title(f"class {cls} ({probs[0, cls]:.0%})", fontsize=8)
    ax.axis("off")
    _save(plt, fig, args.output)
    print(f"wrote {args.output}: the input maximising {output}[{cls}] - {l2:g} ||input||^2, {steps} steps of "
          f"gradient ascent at rate {lr:g} from zero; objective {history[0]:.4g} -> {history[-1]:.4g}, "
          f"class {cls}'s probability {probs[0, cls]:.1%}")
    return 0


def _ascent_settings(args, steps: int, lr: float) -> tuple[int, float]:
    steps = steps if args.steps is None else args.steps
    lr = lr if args.lr is None else args.lr
    if steps < 1:
        raise UsageError(f"--steps {steps}: give 1 or more", f"e.g. --steps {steps}")
    if not (lr > 0 and np.isfinite(lr)):
        raise UsageError(f"--lr {lr}: give a rate above 0", "e.g. --lr 0.1")
    return steps, lr


def dream(model, x: np.ndarray, layer: str, steps: int, lr: float) -> tuple[np.ndarray, list]:
    """DeepDream (Mordvintsev, Olah & Tyka, 2015): from the image x (1, ...), ascend
    0.5 * ||layer's activations||^2, whose gradient with respect to the layer is the activations
    themselves; each step moves by lr / mean |gradient| (so lr is about the change per pixel)
    and keeps the image in the data's [0, 1]. Returns the image and the norm before each step
    and after the last."""
    name = data_inputs(model.net)[0]
    m = exposing(model, [layer])
    norms = []
    for step in range(steps + 1):
        a = m.forward(**{name: x})[layer]
        norms.append(float(np.sqrt((a.astype(np.float64) ** 2).sum())))
        if step == steps:
            break
        g = m.backward(wrt=[name], output=layer, grad=a)[name]
        x = np.clip(x + lr * g / (np.abs(g).mean() + 1e-12), 0.0, 1.0).astype(np.float32)
    return x, norms


def dream_command(args, model, plt) -> int:
    net = model.net
    node = _layer(net, args.layer, "dream", "--layer conv2")
    name, feeds = _input_sample(net, args, "dream")
    steps, lr = _ascent_settings(args, 20, 0.02)
    x0 = feeds[name]
    x, norms = dream(model, x0, node.name, steps, lr)
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    axes[0].imshow(_as_picture(x0[0]), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(os.path.basename(args.input), fontsize=8)
    axes[1].imshow(_as_picture(x[0]), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title(f"dreamt by {node.name}", fontsize=8)
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    _save(plt, fig, args.output)
    print(f"wrote {args.output}: {args.input} changed by {steps} steps of gradient ascent on ||{node.name}|| "
          f"(rate {lr:g} per pixel, kept in [0, 1]); the norm {norms[0]:.4g} -> {norms[-1]:.4g}, "
          f"the image moved {float(np.abs(x - x0).mean()):.3g} per pixel on average")
    return 0


def inspect_command(args) -> int:
    _check_output_path(args.output, ".png", ([args.input] if args.input else []) + [args.file, args.weights])
    plt = _pyplot()
    model, _ = load_trained(args)
    net = model.net
    kinds = {"activations": activations_command, "occlusion": occlusion_command, "tsne": tsne_command,
             "patches": patches_command, "class": class_command, "dream": dream_command}
    if args.kind in kinds:
        return kinds[args.kind](args, model, plt)
    if args.kind == "saliency":
        if not args.input:
            raise UsageError("saliency needs an image: --input IMG", "e.g. --input digit.png")
        names = data_inputs(net)
        if len(names) != 1 or net.node(names[0]).type.dtype != "float32":
            raise UsageError(f"saliency needs a network with one float input; {net.name} has "
                             f"{', '.join(names)}", "inspect an image classifier")
        feeds, _ = read_inputs(net, [args.input], args.invert)
        feeds = {k: v[:1] for k, v in feeds.items()}
        output = args.output_name or net.tensor_name(net.outputs[0])
        grad, cls, p = saliency_map(model, feeds, output, args.cls)
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        axes[0].imshow(_as_picture(feeds[names[0]][0]), cmap="gray")
        axes[0].set_title(os.path.basename(args.input))
        axes[1].imshow(grad, cmap="hot")
        axes[1].set_title(f"saliency, class {cls} ({p:.0%})")
        for a in axes:
            a.axis("off")
        fig.tight_layout()
        fig.savefig(args.output, dpi=100)
        plt.close(fig)
        r, c = np.unravel_index(int(np.argmax(grad)), grad.shape)
        print(f"wrote {args.output}: saliency |d {output}[{cls}] / d {names[0]}| (max over channels) of "
              f"{args.input}, class {cls} at {p:.1%}; strongest at row {r}, column {c}")
        return 0
    # filters
    node = _first_conv(net)
    if node is None:
        raise UsageError(f"{net.name} has no conv layer whose filters to draw", "inspect a convolutional network")
    w = model.params[f"{node.name}.weight"]
    n_out, n_in = w.shape[:2]
    cols = int(np.ceil(np.sqrt(n_out)))
    rows = int(np.ceil(n_out / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8 + 0.4, rows * 0.8 + 0.4), squeeze=False)
    for i, a in enumerate(axes.ravel()):
        a.axis("off")
        if i >= n_out:
            continue
        f = w[i] if n_in == 3 else w[i].mean(axis=0, keepdims=True)
        f = (f - f.min()) / (f.max() - f.min() + 1e-12)      # each filter stretched to the full range
        a.imshow(f.transpose(1, 2, 0) if n_in == 3 else f[0], cmap=None if n_in == 3 else "gray",
                 interpolation="nearest")
    fig.suptitle(f"{node.name}: {n_out} filters {w.shape[2]}x{w.shape[3]}"
                 + ("" if n_in in (1, 3) else f" (mean over {n_in} input channels)"), fontsize=8)
    fig.savefig(args.output, dpi=100)
    plt.close(fig)
    print(f"wrote {args.output}: the {n_out} filters of {node.name} ({w.shape[2]}x{w.shape[3]}, "
          f"{n_in} input channel{'s' * (n_in != 1)}), each scaled to its own range")
    return 0


# ---- plot ---------------------------------------------------------------------------------------
def read_metrics(path: str) -> tuple[list[dict], int]:
    """(the last run's records, number of runs in the file) from a `dslc run --metrics` file.

    The file is appended to, so it may hold several runs: a record whose epoch is not above the
    one before starts a new run (a resumed run continues its epochs and stays one run)."""
    import json
    if not os.path.exists(path):
        raise UsageError(f"{path} does not exist", "give the file `dslc run --metrics FILE.jsonl` wrote")
    if not os.path.isfile(path):
        raise UsageError(f"{path} is not a file", "give the file `dslc run --metrics FILE.jsonl` wrote")
    runs: list[list[dict]] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} could not be read as text ({err})",
                        "give the JSON-lines file `dslc run --metrics FILE.jsonl` wrote") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}:{number}: not a JSON object ({err.args[0] if err.args else err})",
                            "each line is one epoch's JSON object, as `dslc run --metrics` writes it") from None
        epoch = rec.get("epoch") if isinstance(rec, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not isinstance(rec.get("train_loss"), (int, float)):
            raise DataError(f"{path}:{number}: an epoch record needs a whole `epoch` and a numeric `train_loss`",
                            "give the JSON-lines file `dslc run --metrics FILE.jsonl` wrote")
        if not runs or epoch <= runs[-1][-1]["epoch"]:
            runs.append([])
        runs[-1].append(rec)
    if not runs:
        raise DataError(f"{path} holds no epochs", "train with `dslc run ... --metrics FILE.jsonl` first")
    return runs[-1], len(runs)


def plot_command(args) -> int:
    _check_output_path(args.output, ".png", [args.metrics])
    records, runs = read_metrics(args.metrics)
    plt = _pyplot("plot")
    from matplotlib.ticker import MaxNLocator
    epochs = [r["epoch"] for r in records]

    def series(key):
        vals = [r.get(key) for r in records]
        pts = [(e, v) for e, v in zip(epochs, vals) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return ([e for e, _ in pts], [v for _, v in pts]) if pts else None

    has_acc = series("train_accuracy") or series("val_accuracy")
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4), squeeze=False)
    drawn = []
    panels = [(axes[0, 0], "loss", "loss")] + ([(axes[0, 1], "accuracy", "accuracy")] if has_acc else [])
    for ax, key, title in panels:
        for split, style in (("train", "-o"), ("val", "--s")):
            pts = series(f"{split}_{key}")
            if pts:
                ax.plot(*pts, style, markersize=3, label="validation" if split == "val" else "train")
                drawn.append(f"{split}_{key}")
        if key == "loss":
            # A run with several loss terms (a GAN's, a VAE's) draws each term's training curve too.
            terms = sorted({t for r in records for t in (r.get("train_terms") or {})})
            for t in terms:
                pts = [(r["epoch"], r["train_terms"][t]) for r in records if t in (r.get("train_terms") or {})]
                ax.plot([e for e, _ in pts], [v for _, v in pts], ":", linewidth=1, label=f"train {t}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(args.metrics), fontsize=9)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    plt.close(fig)
    if runs > 1:
        _log(f"note: {args.metrics} holds {runs} runs (their epochs restart); plotted the last")
    last = records[-1]
    summary = [f"{k} {last[k]:.4g}" for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
               if isinstance(last.get(k), (int, float)) and not isinstance(last.get(k), bool)]
    print(f"wrote {args.output}: {', '.join(drawn)} over {len(records)} epoch{'s' * (len(records) != 1)} "
          f"(epoch {last['epoch']}: {', '.join(summary)})")
    return 0


# ---- sample -------------------------------------------------------------------------------------
def _text_model(net, vocab: str, weights: str) -> tuple[str, str]:
    """(the input of character ids, the output of next-character scores) of a character model."""
    names = data_inputs(net)
    if len(names) != 1 or net.node(names[0]).type.dtype != "int64" or len(net.node(names[0]).type.shape) != 2:
        shown = ", ".join(f"{n} {net.node(n).type}" for n in names)
        raise UsageError(f"dslc sample needs a character model (one int64 input of shape [N, T]); "
                         f"{net.name} has {shown}", "sample from a model like models/charlstm.net")
    outputs = [net.tensor_name(o) for o in net.outputs]
    for o in outputs:
        shape = net.node(net.tensors.get(o, o)).type.shape
        if len(shape) == 3 and (not isinstance(shape[2], int) or shape[2] >= len(vocab)):
            return names[0], o
    raise UsageError(f"{net.name} has no output of next-character scores [N, T, vocabulary] for the "
                     f"{len(vocab)} characters {weights} records "
                     f"(outputs: {', '.join(f'{o} {net.node(net.tensors.get(o, o)).type}' for o in outputs)})",
                     "sample from a character model trained with `dslc run --data chars` or a .txt file")


def _draw(scores: np.ndarray, temperature: float, rng) -> int:
    """A character id from the softmax of scores / temperature (0: the likeliest)."""
    scores = np.asarray(scores, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(scores))
    z = scores / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def sample_command(args) -> int:
    """Characters from a trained character model, one at a time: each is drawn from the softmax
    of the scores for the last position (divided by the temperature) and appended to the text.

    A model that is a chain of embed, recurrent, dense and elementwise layers is stepped one
    character at a time with its recurrent state carried (runtime/stepper.py): the prime, then
    each new character, moves the state on by one step, so the text continues from all of it.
    Other models (bidirectional layers, attention, ...), or any with --window W given, re-run the
    model over the last W characters (default: the T it was trained on) from the zero state per
    character: the compiled kernels take a whole sequence and give no final state back."""
    if args.length < 0:
        raise UsageError(f"--length {args.length}: give 0 or more characters", "e.g. --length 200")
    if not args.temperature >= 0 or not np.isfinite(args.temperature):
        raise UsageError(f"--temperature {args.temperature}: give a number >= 0 (0: always the likeliest)",
                         "e.g. --temperature 0.8")
    if args.window is not None and args.window < 1:
        raise UsageError(f"--window {args.window}: give 1 or more characters", "e.g. --window 64")
    trained_length = {}

    def variable_length(net, overrides):
        """The overrides without the one fixing the text input's length, so any window compiles."""
        names = data_inputs(net)
        if len(names) != 1 or len(net.node(names[0]).type.shape) != 2:
            return overrides
        length = net.node(names[0]).type.shape[1]
        trained_length["T"] = length if isinstance(length, int) else None
        for k, v in overrides.items():
            if v == length:
                rest = {j: w for j, w in overrides.items() if j != k}
                try:
                    free, _ = compile_file(args.file, rest)
                except (CompileError, UsageError):    # that value was needed: keep it
                    continue
                if not isinstance(free.node(names[0]).type.shape[1], int):
                    return rest
        return overrides

    model, meta = load_trained(args, adjust=variable_length)
    weights = _weights_list(args)[0]
    vocab = meta.get("vocab")
    if not isinstance(vocab, str) or not vocab:
        raise CheckpointError(f"{weights} records no vocabulary: it was not trained on text by `dslc run`",
                              "train the model with `dslc run FILE --data chars` (or a .txt file) and sample "
                              "from its last.ckpt")
    net = model.net
    name, output = _text_model(net, vocab, weights)
    prime = args.prime if args.prime is not None else ("\n" if "\n" in vocab else vocab[0])
    if not prime:
        raise UsageError("--prime is empty: the model needs at least one character to continue",
                         f"e.g. --prime {vocab[len(vocab) // 2]!r}")
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted({c for c in prime if c not in index})
    if unknown:
        raise DataError(f"--prime has character{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                        f"that the training text did not: the model has no id for them",
                        f"use characters of the training text ({len(vocab)} distinct)")
    fixed = isinstance(net.node(name).type.shape[1], int)
    window = args.window or trained_length.get("T") or 100
    if fixed:
        window = net.node(name).type.shape[1]
    ids = [index[c] for c in prime]
    rng = np.random.default_rng(args.seed)
    out_chars = []
    from .runtime.stepper import Stepper, unsupported
    why = "--window was given" if args.window is not None else unsupported(net, name, output)
    stepper = Stepper(model, name, output) if why is None else None
    scores = None
    if stepper is not None:
        for i in ids:
            scores = stepper.step(i)
    for _ in range(args.length):
        if stepper is not None:
            nxt = _draw(scores[:len(vocab)], args.temperature, rng)
            ids.append(nxt)
            out_chars.append(vocab[nxt])
            scores = stepper.step(nxt)
            continue
        if fixed and len(ids) < window:
            raise UsageError(f"{net.name} takes exactly {window} characters at a time, and --prime has {len(ids)}",
                             f"give a --prime of at least {window} characters")
        context = np.array(ids[-window:], dtype=np.int64)[None]
        scores = model.forward(**{name: context})[output][0, -1, :len(vocab)].astype(np.float64)
        nxt = _draw(scores, args.temperature, rng)
        ids.append(nxt)
        out_chars.append(vocab[nxt])
    how = "the recurrent state carried from character to character" if stepper is not None else \
        f"window {window} (the model re-run over the last {window} characters per character: {why})"
    _log(f"sampled {args.length} character{'s' * (args.length != 1)} after a {len(prime)}-character prime, "
         f"temperature {args.temperature:g}, seed {args.seed}, {how}")
    sys.stdout.write(prime + "".join(out_chars) + "\n")
    return 0


# ---- run --lr-find ------------------------------------------------------------------------------
def lr_find_command(args, overrides) -> int:
    """`dslc run FILE --lr-find [PLOT.png]`: the learning-rate range test (runtime/lr_find.py) on
    the run's data and optimizer; prints loss against rate and the suggested rate, draws them
    with a path, and writes no checkpoint."""
    from .cli_train import _datasets
    from .runtime.lr_find import lr_range_test
    from .runtime.model import Model
    from .runtime.train import TrainConfig
    net, warnings = compile_file(args.file, overrides)
    for w in warnings:
        print(w.render(), file=sys.stderr)
    cfg = TrainConfig.from_network(net, epochs=args.epochs, batch=args.batch, lr=args.lr, optimizer=args.optimizer,
                                   seed=args.seed, ema=args.ema)
    plot = args.lr_find if isinstance(args.lr_find, str) else None
    if plot:
        _check_output_path(plot, ".png", [args.file])
    for flag, given in (("--resume", args.resume), ("--checkpoint", args.checkpoint), ("--metrics", args.metrics),
                        ("--early-stopping", args.early_stopping), ("--overwrite", args.overwrite)):
        if given:
            raise UsageError(f"--lr-find trains nothing to keep: {flag} does not go with it",
                             f"drop {flag}, or drop --lr-find to train")
    steps = args.lr_find_steps
    if steps < 5:
        flag = "--steps" if args.command == "lr-find" else "--lr-find-steps"
        raise UsageError(f"{flag} {steps}: give 5 or more", f"e.g. {flag} 100")
    model = Model(net, device=args.device, seed=cfg.seed)
    if args.weights:
        _log(str(model.load_params(args.weights)))
    freeze = list(args.freeze or [])
    if getattr(args, "freeze_all_but", None):
        from .cli_train import _all_but
        freeze += _all_but(net, args.freeze_all_but)
    if freeze:
        model.freeze(*freeze)
    train, _, _, _ = _datasets(net, args.data, cfg, args.limit, _log, args.val, getattr(args, "label_column", None))
    _log(f"learning-rate range test: {net.name} on {train.name} ({len(train)} samples), {cfg.optimizer} "
         f"with the rate rising from 1e-07 to 10 over {steps} batches of {cfg.batch}; nothing is saved")
    r = lr_range_test(model, cfg, train, 1e-7, 10.0, steps)
    print(f"{'lr':>10}  {'loss':>8}  {'smoothed':>8}")
    every = max(1, len(r["lr"]) // 20)
    for i in range(0, len(r["lr"]), every):
        print(f"{r['lr'][i]:10.3g}  {r['loss'][i]:8.4f}  {r['smoothed'][i]:8.4f}")
    if r["stopped"]:
        print(f"stopped after {len(r['lr'])} steps: {r['stopped']}")
    print(f"suggested lr {r['suggested']:.3g} (steepest fall of the smoothed loss); lowest loss at "
          f"{r['lowest']:.3g} (a tenth of it: {r['lowest'] / 10:.3g})")
    if plot:
        plt = _pyplot("run --lr-find")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(r["lr"], r["loss"], alpha=0.3, label="loss")
        ax.plot(r["lr"], r["smoothed"], label="smoothed")
        ax.axvline(r["suggested"], color="red", linestyle="--", linewidth=1, label=f"suggested {r['suggested']:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"{net.name}: learning-rate range test", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save(plt, fig, plot)
        print(f"wrote {plot}")
    return 0


# ---- eval --weights A B C -----------------------------------------------------------------------
def eval_ensemble_command(args) -> int:
    """`dslc eval FILE --weights A B C`: the models' class probabilities averaged per sample,
    scored as `dslc eval` scores one model (the data: --data, or what the first checkpoint's
    run validated on). The loss is the negative log of the averaged probability of the true
    class, which is the cross-entropy a single model's eval reports."""
    import json

    from .cli_train import _confusion_text, _eval_data
    from .runtime.data import named_batches
    from .runtime.train import TrainConfig, Trainer
    weights = list(dict.fromkeys(args.weights))
    models = [load_trained(args, w) for w in weights]
    model, meta = models[0]
    net = model.net
    saved_cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    split = {k: saved_cfg[k] for k in ("seed", "val_fraction") if k in saved_cfg}
    cfg = TrainConfig.from_network(net, batch=args.batch, **split)
    ds, source, what = _eval_data(args, meta, net, cfg, weights[0])
    if not len(ds):
        raise RuntimeUserError(f"{source} gives no samples to evaluate on", "give --data a larger dataset")
    trainer = Trainer(model, cfg, ds, ds, log=_log)
    if not trainer.classify:
        raise UsageError(f"an ensemble averages class probabilities, and {net.name}'s loss is no classification",
                         "evaluate its checkpoints one at a time")
    pred_name = net.tensor_name(trainer.pred_node)
    is_softmax = net.node(trainer.pred_node).op == "softmax"
    axis = trainer.class_axis
    total, n, count, top1, top5, matrix = 0.0, 0, 0, 0, 0, None
    for batch in named_batches(ds, cfg.batch, shuffle=False, rng=np.random.default_rng(0)):
        feeds = trainer._feeds(batch)
        probs = []
        for m, _ in models:
            scores = m.forward(**feeds)[pred_name].astype(np.float64)
            if not is_softmax:
                scores = np.exp(scores - scores.max(axis=axis, keepdims=True))
                scores /= scores.sum(axis=axis, keepdims=True)
            probs.append(scores)
        if any(p.shape != probs[0].shape for p in probs):
            raise CheckpointError("the ensemble's networks give different outputs: "
                                  + ", ".join(str(p.shape) for p in probs),
                                  "ensemble weights of one network, trained with the same --set values")
        p = np.moveaxis(np.mean(probs, axis=0), axis, -1)
        classes = p.shape[-1]
        p = p.reshape(-1, classes)
        y = feeds[trainer.label_name].reshape(-1).astype(np.int64)
        keep = (y >= 0) & (y < classes)
        p, y = p[keep], y[keep]
        total += float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).sum())
        n += len(y)
        order = np.argsort(-p, axis=1, kind="stable")
        top1 += int((order[:, 0] == y).sum())
        top5 += int((order[:, :5] == y[:, None]).any(axis=1).sum())
        cells = np.bincount(y * classes + order[:, 0], minlength=classes ** 2).reshape(classes, classes)
        matrix = cells if matrix is None else matrix + cells
        count += len(y)
    loss, acc = total / max(n, 1), top1 / max(count, 1)
    top5_acc = top5 / max(count, 1) if classes > 5 else None
    per_class = [int(matrix[i, i]) / int(row) if row else None for i, row in enumerate(matrix.sum(axis=1))]
    _log(f"an ensemble of {len(models)} models: class probabilities averaged")
    if args.format == "json":
        print(json.dumps({"network": net.name, "weights": weights, "data": source,
                          "split": "validation" if what.startswith("validation") else "all",
                          "samples": len(ds), "ensemble": len(models), "loss": loss, "accuracy": acc,
                          "top5": top5_acc, "per_class": per_class, "confusion": matrix.tolist()}))
        return 0
    line = f"{net.name} on {source} ({what}), an ensemble of {len(models)}: loss {loss:.4f}, top-1 accuracy {acc:.4f}"
    if top5_acc is not None:
        line += f", top-5 accuracy {top5_acc:.4f}"
    print(line)
    print(_confusion_text(matrix.tolist(), per_class))
    return 0
