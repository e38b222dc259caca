"""The training loop behind `dslc run`, `dslc eval` and `Model.fit`.

One Trainer owns: the model's parameters (through its plans), the optimizer, three random
streams (data order, dropout, augmentation), progress reporting and checkpoints. Everything
that decides the numbers is saved in a checkpoint, so a run interrupted at any step and
resumed ends with exactly the parameters of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np

from .augment import Augment
from .checkpoint import load_checkpoint, rng_from_arrays, rng_state_to_arrays, save_checkpoint
from .compile_watch import CompileWatch
from .data import Dataset, batches
from .errors import CheckpointError, RuntimeUserError
from .config import TrainConfig  # noqa: F401  (re-exported: the trainer's settings)
from .optim import clip_grad_norm, clip_grad_value, make_optimizer, make_schedule

CHECKPOINT_NAME = "last.ckpt"
_CLASSIFICATION_LOSSES = {"cross_entropy", "hinge"}


def data_roles(net):
    """(x input, y input): the label is what the first loss term compares against."""
    g = net.graph
    if net.loss is None:
        raise RuntimeUserError(f"network `{net.name}` has no `loss` statement, so it cannot be trained",
                               "add e.g. `loss cross_entropy(logits, label)`")
    first_term = g.nodes[net.loss]["inputs"][0]
    label = g.nodes[first_term]["inputs"][1]
    others = [i for i in net.inputs if i != label]
    if g.nodes[label]["op"] != "input" or len(others) != 1:
        raise RuntimeUserError("`dslc run` trains networks with one data input and one label input",
                               f"this network has inputs {', '.join(net.inputs)}; use the Python API for others")
    return others[0], label


class Trainer:
    def __init__(self, model, cfg: TrainConfig, train: Dataset, val: Dataset | None, *, progress=True,
                 metrics_path=None, checkpoint_dir=None, log=print):
        self.model, self.cfg, self.train, self.val = model, cfg, train, val
        self.net = model.net
        self.x_name, self.y_name = data_roles(self.net)
        self.progress, self.metrics_path, self.checkpoint_dir, self.log = progress, metrics_path, checkpoint_dir, log
        g = self.net.graph
        self.loss_term = g.nodes[self.net.loss]["inputs"][0]
        self.pred_node = g.nodes[self.loss_term]["inputs"][0]
        self.classify = g.nodes[self.loss_term]["op"] in _CLASSIFICATION_LOSSES
        self.class_axis = g.nodes[self.loss_term]["attrs"].get("class_axis", 1)
        names = model.trainable_names()
        params = {k: model._dev[k] for k in names}
        if model.device.name == "cuda":
            from .cuda.optim import make_cuda_optimizer as make
        else:
            make = make_optimizer
        try:
            self.opt = make(cfg.optimizer, params, lr=cfg.lr, **cfg.optimizer_args)
            self.schedule = make_schedule(cfg.schedule, cfg.lr, epochs=cfg.epochs, **cfg.schedule_args)
        except (ValueError, TypeError) as e:
            raise RuntimeUserError(f"training setting: {e}", "see docs/LANGUAGE.md, section train") from None
        a = cfg.augment
        self.augment = Augment(int(a.get("crop", 0)), bool(a.get("flip", False)), float(a.get("brightness", 0.0))) \
            if a else None
        self.data_rng = np.random.default_rng([cfg.seed, 1])
        self.aug_rng = np.random.default_rng([cfg.seed, 2])
        model.ctx.rng = np.random.default_rng([cfg.seed, 3])
        self.epoch, self.step_in_epoch = 0, 0
        self.epoch_rng_state = None
        self.partial = {"loss": 0.0, "correct": 0, "count": 0, "samples": 0}
        self.history = []

    # ---- one step ----------------------------------------------------------------------------
    def _step(self, xb, yb, lr):
        m = self.model
        if self.augment is not None and xb.ndim == 4:
            xb = self.augment(xb, self.aug_rng)
        out = m.forward(training=True, **{self.x_name: xb, self.y_name: yb})
        loss = out["loss"]
        if not math.isfinite(loss):
            plan = m._last
            bad = plan.first_nonfinite()
            where = f"first non-finite output: `{bad}` ({self.net.graph.nodes[bad]['op']})" if bad else ""
            raise RuntimeUserError(f"training diverged at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}: "
                                   f"the loss is {loss}; {where}",
                                   "lower the learning rate (--lr), add `clip_grad_norm` to the train section, "
                                   "or check the data for NaN values")
        plan = m._last
        plan.backward(m.ctx)
        grads = plan.param_grads
        if self.cfg.clip_grad_norm and m.device.name == "cpu":
            clip_grad_norm(grads, self.cfg.clip_grad_norm)
        elif self.cfg.clip_grad_norm:
            from .cuda.optim import clip_grad_norm as cuda_clip
            cuda_clip(grads, self.cfg.clip_grad_norm)
        if self.cfg.clip_grad_value:
            clip_grad_value(grads, self.cfg.clip_grad_value)
        self.opt.step(grads, lr)
        return loss, out.get(self.net.tensor_name(self.pred_node))

    def _correct(self, pred, y):
        if not self.classify or pred is None:
            return 0, 0
        p = np.argmax(pred, axis=self.class_axis)
        return int(np.sum(p == y)), int(y.size)

    # ---- epochs ------------------------------------------------------------------------------
    def fit(self):
        cfg = self.cfg
        drop_last = len(self.train) >= cfg.batch
        steps = len(self.train) // cfg.batch if drop_last else 1
        while self.epoch < cfg.epochs:
            lr = self.schedule(self.epoch)
            if self.step_in_epoch == 0:
                self.epoch_rng_state = rng_state_to_arrays(self.data_rng, "data_epoch")
                self.partial = {"loss": 0.0, "correct": 0, "count": 0, "samples": 0}
            else:   # resuming mid-epoch: replay the epoch's shuffle, then skip what was done
                self.data_rng = rng_from_arrays(self.epoch_rng_state, "data_epoch")
            it = batches(self.train, cfg.batch, shuffle=True, rng=self.data_rng, drop_last=drop_last)
            for _ in range(self.step_in_epoch):
                next(it)
            bar = self._bar(steps)
            t0, seen0 = time.perf_counter(), self.partial["samples"]
            try:
                for xb, yb in it:
                    with self.reporting_compiles(bar, "training step"):
                        loss, pred = self._step(xb, yb, lr)
                    c, n = self._correct(pred, yb)
                    p = self.partial
                    p["loss"] += loss * len(xb)
                    p["samples"] += len(xb)
                    p["correct"] += c
                    p["count"] += n
                    self.step_in_epoch += 1
                    if bar is not None:
                        rate = (p["samples"] - seen0) / max(time.perf_counter() - t0, 1e-9)
                        post = {"loss": f"{p['loss'] / p['samples']:.4f}"}
                        if p["count"]:
                            post["acc"] = f"{p['correct'] / p['count']:.3f}"
                        post["samples/s"] = f"{rate:.0f}"
                        bar.set_postfix(post, refresh=False)
                        bar.update(1)
            except KeyboardInterrupt:
                if bar is not None:
                    bar.close()
                if self.checkpoint_dir:
                    path = self.save()
                    self.log(f"interrupted: saved {path}; continue with --resume")
                else:
                    self.log("interrupted (no --checkpoint DIR given, nothing saved)")
                raise
            if bar is not None:
                bar.close()
            elapsed = max(time.perf_counter() - t0, 1e-9)
            p = self.partial
            record = {"epoch": self.epoch + 1, "lr": lr,
                      "train_loss": p["loss"] / max(p["samples"], 1),
                      "train_accuracy": (p["correct"] / p["count"]) if p["count"] else None,
                      "samples_per_s": (p["samples"] - seen0) / elapsed}
            if self.val is not None and len(self.val):
                with self.reporting_compiles(None, "evaluation"):
                    v = self.evaluate(self.val)
                record["val_loss"], record["val_accuracy"] = v["loss"], v["accuracy"]
            else:
                record["val_loss"] = record["val_accuracy"] = None
            self.history.append(record)
            self.log(_epoch_line(record, cfg.epochs))
            if self.metrics_path:
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            self.epoch += 1
            self.step_in_epoch = 0
            if self.checkpoint_dir:
                self.save()
        return self.history

    @contextmanager
    def reporting_compiles(self, bar, what):
        """Say what Numba compiles meanwhile (runtime/compile_watch.py): live on the progress
        bar, then one line with the count and the time, so that a cold first step (tens of
        seconds) neither looks hung nor goes unexplained. Silent when nothing compiles (every
        later step, and every step of a run whose kernels are cached) and without progress."""
        if not self.progress:
            yield
            return
        live = bar is not None and not bar.disable

        def show(name, compiled):
            if live:
                bar.set_postfix_str(f"compiling kernels, once (cached for later runs): {compiled} done, now {name}")

        t0 = time.perf_counter()
        with CompileWatch(show).installed() as watch:
            yield
        if watch.compiled:
            line = (f"{what}: compiled {watch.compiled} kernel functions in {time.perf_counter() - t0:.1f} s; "
                    "later runs load them from the cache")
            if live:
                bar.write(line, file=sys.stderr)
            else:
                self.log(line)

    def _bar(self, steps):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=steps, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                    unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr,
                    disable=None)   # None: only on a terminal, so logs stay readable

    def evaluate(self, ds: Dataset, topk=(1,)):
        m, cfg = self.model, self.cfg
        total, n, correct = 0.0, 0, {k: 0 for k in topk}
        count = 0
        for xb, yb in batches(ds, cfg.batch, shuffle=False, rng=np.random.default_rng(0)):
            out = m.forward(training=False, **{self.x_name: xb, self.y_name: yb})
            total += out["loss"] * len(xb)
            n += len(xb)
            pred = out.get(self.net.tensor_name(self.pred_node))
            if self.classify and pred is not None:
                order = np.argsort(-pred, axis=self.class_axis)
                for k in topk:
                    top = np.take(order, np.arange(k), axis=self.class_axis)
                    hit = np.any(top == np.expand_dims(yb, self.class_axis), axis=self.class_axis)
                    correct[k] += int(np.sum(hit))
                count += yb.size
        res = {"loss": total / max(n, 1), "accuracy": correct[topk[0]] / count if count else None}
        for k in topk[1:]:
            res[f"top{k}"] = correct[k] / count if count else None
        return res

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self):
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME)
        arrays = {f"param/{k}": v for k, v in self.model.params.items()}
        arrays.update({f"opt/{k}": v for k, v in self.opt.state_dict().items()})
        arrays.update(rng_state_to_arrays(self.data_rng, "data"))
        arrays.update(rng_state_to_arrays(self.aug_rng, "aug"))
        arrays.update(rng_state_to_arrays(self.model.ctx.rng, "dropout"))
        if self.epoch_rng_state is not None:
            arrays.update(self.epoch_rng_state)
        meta = {"kind": "dslc-training", "network": self.net.name, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "partial": self.partial, "config": asdict(self.cfg),
                "history": self.history}
        save_checkpoint(path, arrays, meta)
        return path

    def resume(self):
        path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME)
        if not os.path.exists(path):
            raise CheckpointError(f"nothing to resume: {path} does not exist",
                                  "run once with --checkpoint DIR first, or drop --resume")
        arrays, meta = load_checkpoint(path)
        if meta.get("kind") != "dslc-training" or meta.get("network") != self.net.name:
            raise CheckpointError(f"{path} is not a training checkpoint of network `{self.net.name}`",
                                  "point --checkpoint at this network's checkpoint directory")
        self.model.load_params({k[6:]: v for k, v in arrays.items() if k.startswith("param/")}, strict=True)
        self.opt.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("opt/")})
        self.data_rng = rng_from_arrays(arrays, "data")
        self.aug_rng = rng_from_arrays(arrays, "aug")
        self.model.ctx.rng = rng_from_arrays(arrays, "dropout")
        if any(k.startswith("data_epoch") for k in arrays):
            self.epoch_rng_state = {k: v for k, v in arrays.items() if k.startswith("data_epoch")}
        self.epoch, self.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
        self.partial, self.history = meta["partial"], meta["history"]
        return meta


def _epoch_line(r, epochs):
    parts = [f"epoch {r['epoch']}/{epochs}", f"train loss {r['train_loss']:.4f}"]
    if r["train_accuracy"] is not None:
        parts.append(f"acc {r['train_accuracy']:.4f}")
    if r["val_loss"] is not None:
        parts.append(f"val loss {r['val_loss']:.4f}")
    if r.get("val_accuracy") is not None:
        parts.append(f"val acc {r['val_accuracy']:.4f}")
    parts.append(f"{r['samples_per_s']:.0f} samples/s")
    return "  ".join(parts)
