"""`dslc predict`: trained weights run on images or arrays.

    dslc predict FILE --weights CKPT INPUT...        top-k classes per sample (or -o out.npz)
    dslc predict FILE --weights A B C INPUT...       an ensemble: class probabilities averaged
    dslc predict FILE --weights CKPT --masks DIR INPUT...  a palette PNG per input of its pixels' classes

Inputs are read as dslc/cli_inputs.py says: images (made what training fed the network),
.npy arrays or .npz archives.
"""
from __future__ import annotations

import os

import numpy as np

from .cli_inputs import _check_output_path, _log, load_trained, probabilities, read_inputs
from .compiler import UsageError
from .runtime.errors import CheckpointError


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
