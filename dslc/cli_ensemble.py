"""`dslc eval FILE --weights A B C`: an ensemble of checkpoints scored as one model."""
from __future__ import annotations

import numpy as np

from .cli_inputs import _log, load_trained
from .compiler import UsageError
from .runtime.errors import CheckpointError, RuntimeUserError


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
