"""`dslc inspect`: looking inside trained weights, one picture per kind.

    dslc inspect FILE --weights CKPT saliency --input IMG -o out.png [--class K]
    dslc inspect FILE --weights CKPT filters -o out.png
    dslc inspect FILE --weights CKPT activations --input IMG --layer NAME -o out.png
    dslc inspect FILE --weights CKPT occlusion --input IMG -o out.png [--class K] [--patch 2 --stride 1]
    dslc inspect FILE --weights CKPT tsne --data digits --layer NAME -o out.png [--limit 300]
    dslc inspect FILE --weights CKPT patches --data digits --layer NAME -o out.png [--channel C --top 9]
    dslc inspect FILE --weights CKPT class --class K -o out.png [--steps 200 --lr 0.1 --l2 0.01]
    dslc inspect FILE --weights CKPT dream --input IMG --layer NAME -o out.png [--steps 20 --lr 0.02]

An --input image is read as `dslc predict` reads one (dslc/cli_inputs.py).
"""
from __future__ import annotations

import os

import numpy as np

from .cli_inputs import _check_output_path, _log, _pyplot, _save, data_inputs, load_trained, probabilities, read_inputs
from .compiler import UsageError
from .diagnostics import did_you_mean
from .runtime.errors import RuntimeUserError


def _chosen_class(net, probs: np.ndarray, cls: int | None) -> int:
    """--class, checked against the output's classes; by default the first sample's top class."""
    classes = probs.shape[1]
    if cls is None:
        return int(np.argmax(probs[0]))
    if not 0 <= cls < classes:
        raise UsageError(f"--class {cls}: {net.name} has classes 0 to {classes - 1}", f"give 0 to {classes - 1}")
    return cls


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
    cls = _chosen_class(net, probs, cls)
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
    a = model.layer_outputs([node.name], **feeds)[node.name][0]
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
    cls = _chosen_class(net, probs, cls)
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
    feats = np.concatenate([model.layer_outputs([node.name], **{name: x[i:i + 256]})[node.name]
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
    acts = np.concatenate([model.layer_outputs([layer], **{name: x[i:i + 256]})[layer][:, channel]
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
    m = model.with_outputs([layer])
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
