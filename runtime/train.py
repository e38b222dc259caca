"""The training loop behind `dslc run`, `dslc eval` and `Model.fit`.

One Trainer owns: the model's parameters (through its plans), the optimizer, three random
streams (data order, dropout, augmentation), progress reporting and checkpoints. Everything
that decides the numbers is saved in a checkpoint, so a run interrupted at any step and
resumed ends with exactly the parameters of an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np

from dslc.ops import OPS

from . import box_batches
from .augment import Augment
from .checkpoint import load_checkpoint, rng_from_arrays, rng_state_to_arrays, save_checkpoint
from .compile_watch import CompileWatch
from .config import TrainConfig  # noqa: F401  (re-exported: the trainer's settings)
from .data import Dataset, named_batches
from .distributed import SampleSlice, from_comm, sync_batchnorm, unwrap
from .ema import EMA
from .errors import CheckpointError, RuntimeUserError, divergence
from .objectives import Objectives
from .optim import make_schedule

CHECKPOINT_NAME = "last.ckpt"
# The checkpoint of the epoch with the lowest validation loss so far, kept beside last.ckpt.
BEST_NAME = "best.ckpt"
LOCK_NAME = ".lock"
# The signals a run treats as "stop": Ctrl-C, and what a cluster scheduler sends before it kills a job.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal. A KeyboardInterrupt, so that code catching Ctrl-C catches
    it. `signum`: the signal; `path`: the checkpoint saved at the step boundary, or None
    (no checkpoint directory, or a second signal stopped the run without saving)."""

    def __init__(self, signum, path=None, message=""):
        super().__init__(message)
        self.signum, self.path, self.message = signum, path, message

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def _silent(_line):
    pass


def loss_terms(net) -> list:
    """The nodes of the loss's terms, in the order the `loss` statement writes them."""
    node = net.node(net.loss)
    return list(node.inputs) if node.op == "loss_sum" else [net.loss]


def data_roles(net):
    """(data input, label input) that the x/y shorthand of one-input data stands for: the
    label is what the first loss term compares against when that is an input, the data input
    the one other input. The label is None when the network has none (an autoencoder's loss
    compares with its own input); both are None when the network's inputs are not one data
    input and at most one label (its data must then name every input)."""
    if net.loss is None:
        raise RuntimeUserError(f"network `{net.name}` has no `loss` statement, so it cannot be trained",
                               "add e.g. `loss cross_entropy(logits, label)`")
    first = net.node(loss_terms(net)[0])
    label = first.inputs[1] if len(first.inputs) > 1 else None
    if label is not None and net.node(label).op != "input":
        label = None
    others = [i for i in net.inputs if i != label]
    if len(others) == 1:
        return others[0], label
    if not others:                  # the loss compares with the only input: it is the data
        return label, None
    return None, None


def term_names(net) -> list:
    """A name for each loss term, for metrics: its op (cross_entropy, smooth_l1, ...), numbered
    from the second of the same op on (mse, mse_2)."""
    if getattr(net, "objectives", ()):      # named objectives: the loss sums them (runtime/objectives.py)
        return [o.name for o in net.objectives]
    names, seen = [], {}
    for t in loss_terms(net):
        op = net.node(t).op
        seen[op] = seen.get(op, 0) + 1
        names.append(op if seen[op] == 1 else f"{op}_{seen[op]}")
    return names


class Trainer:
    def __init__(self, model, cfg: TrainConfig, train: Dataset, val: Dataset | None, *, progress=True,
                 metrics_path=None, checkpoint_dir=None, log=None, data_info=None, early_stopping=None,
                 extra_meta=None, resume_hint="--resume", comm=None, config_digest=None, sync_batchnorm=False):
        """`early_stopping` N: stop once N epochs in a row have not lowered the validation loss
        (needs validation data). `extra_meta`: JSON values saved in every checkpoint's metadata
        (the command line records its --set values and a text model's vocabulary there).
        `resume_hint`: the flags that continue an interrupted run, for its message.

        `comm`: data-parallel training over several processes (an mpi4py communicator or one of
        runtime/distributed.py; None: one process). `cfg.batch` is then the global batch: every
        rank shuffles alike and takes its contiguous 1/K of each global batch, gradients are
        averaged over ranks, random draws are those of the one-process run (SampleSlice), and
        only rank 0 logs, writes metrics and checkpoints. `config_digest`: {what: digest} of the
        command (the .net source, --set values, flags), compared across ranks at the start.
        `sync_batchnorm`: batchnorm's batch statistics over the global batch (one process's
        numbers) instead of each rank's own (runtime/distributed.py, _SyncBatchNorm)."""
        self.model, self.cfg, self.train, self.val = model, cfg, train, val
        self.net = model.net
        self.x_name, self.y_name = data_roles(self.net)
        self.row_groups = box_batches.row_groups(self.net)
        self._check_data(train, "training")
        if val is not None:
            self._check_data(val, "validation")
        self.progress, self.metrics_path, self.checkpoint_dir = progress, metrics_path, checkpoint_dir
        # Without progress, nothing is printed unless the caller gives a log (Model.fit(progress=False)).
        self.log = log if log is not None else (print if progress else _silent)
        # Where the data came from ({"data": ..., "limit": ...}): saved in checkpoints, and a resume
        # on other data is refused (the replayed epoch order would not match).
        self.data_info = dict(data_info or {})
        if early_stopping is not None:
            if isinstance(early_stopping, bool) or not isinstance(early_stopping, int) or early_stopping < 1:
                raise RuntimeUserError(f"early stopping needs a whole number of epochs >= 1, got {early_stopping}",
                                       "e.g. --early-stopping 3")
            if val is None or not len(val):
                raise RuntimeUserError("early stopping watches the validation loss, but there is no validation data",
                                       "give a validation set (--val PATH) or keep a validation split "
                                       "(val_fraction above 0)")
        self.early_stopping = early_stopping
        self.extra_meta = dict(extra_meta or {})
        self.resume_hint = resume_hint
        self.stopped_early = False
        self._pending_signal = None
        # Accuracy is that of the first term that classifies, against the labels fed to it.
        terms = loss_terms(self.net)
        self.terms = terms if len(terms) > 1 else []      # one term is the loss itself
        self.term_names = term_names(self.net) if self.terms else []
        classifying = [t for t in terms if OPS[self.net.node(t).op].classifies
                       and self.net.node(self.net.node(t).inputs[1]).op == "input"]
        self.loss_term = classifying[0] if classifying else terms[0]
        self.pred_node = self.net.node(self.loss_term).inputs[0]
        self.classify = bool(classifying)
        self.label_name = self.net.node(self.loss_term).inputs[1] if classifying else None
        self.class_axis = self.net.node(self.loss_term).attrs.get("class_axis", 1)
        names = model.trainable_names()
        params = {k: model._dev[k] for k in names}
        try:
            self.opt = model.device.make_optimizer(cfg.optimizer, params, lr=cfg.lr, **cfg.optimizer_args)
            self.schedule = make_schedule(cfg.schedule, cfg.lr, epochs=cfg.epochs, **cfg.schedule_args)
        except (ValueError, TypeError) as e:
            raise RuntimeUserError(f"training setting: {e}", "see docs/LANGUAGE.md, section train") from None
        self.objectives = None
        a = cfg.augment
        if a and self.x_name is None:
            raise RuntimeUserError(f"`augment` transforms a network's one image input, but `{self.net.name}` has "
                                   f"the inputs {', '.join(self.net.inputs)}",
                                   "remove `augment` from the train section (and augment the data before training)")
        self.augment = Augment(int(a.get("crop", 0)), bool(a.get("flip", False)), float(a.get("brightness", 0.0))) \
            if a else None
        self.comm = from_comm(comm)
        self.ranks, self.rank = self.comm.size, self.comm.rank
        self.local_batch, self.share_start = cfg.batch, 0
        self.sync_batchnorm = bool(sync_batchnorm) and self.ranks > 1
        if self.sync_batchnorm and not model.device.supports_sync_batchnorm:
            raise RuntimeUserError(f"synchronised batchnorm runs on the CPU only; this run uses {model.device.name}",
                                   "drop --sync-batchnorm (each process's own statistics), or train on the CPU")
        if self.ranks > 1:
            self._check_split(cfg, train)
            self.local_batch = cfg.batch // self.ranks
            self.share_start = self.rank * self.local_batch
            if self.rank != 0:          # rank 0 speaks and writes for the job
                self.progress, self.log, self.metrics_path, self.checkpoint_dir = False, _silent, None, None
        self.data_rng = np.random.default_rng([cfg.seed, 1])
        self.aug_rng = np.random.default_rng([cfg.seed, 2])
        model.ctx.rng = self._sliced(np.random.default_rng([cfg.seed, 3]))
        self.epoch, self.step_in_epoch = 0, 0
        self.epoch_rng_state = None
        self.partial = self._new_partial()
        self.history = []
        self._agreed_signal = None
        self.ema = EMA(model, cfg.ema) if cfg.ema else None      # runtime/ema.py
        if self.net.objectives:     # several objectives, each its own optimizer: runtime/objectives.py
            self.objectives = Objectives(self)
            self.opt = self.objectives.opt
        if self.ranks > 1:
            self._check_same_config(config_digest)

    # ---- several processes -------------------------------------------------------------------
    def _check_split(self, cfg, train):
        k = self.ranks
        if cfg.batch % k:
            lower = cfg.batch - cfg.batch % k
            raise RuntimeUserError(f"--batch {cfg.batch} is the global batch, split evenly over {k} processes, "
                                   f"but it is not a multiple of {k}",
                                   f"give a multiple of {k}, e.g. --batch {lower or k} or --batch {lower + k}")
        if len(train) < cfg.batch:
            raise RuntimeUserError(f"the training data has {len(train)} samples, fewer than one global batch of "
                                   f"{cfg.batch} split over {k} processes",
                                   "give more data or a smaller --batch")

    def _sliced(self, rng):
        """What draws random numbers for this rank's samples: the generator itself in one process."""
        rng = unwrap(rng)
        return SampleSlice(rng, self.share_start, self.local_batch, self.cfg.batch) if self.ranks > 1 else rng

    def _check_same_config(self, given):
        """Every rank must run the same command on the same data: compared by digest, refused on all ranks."""
        def digest(value):
            return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        own = dict(given or {})
        own["training settings"] = digest(asdict(self.cfg))
        own["data"] = digest(self._data_signature())
        own["parameters"] = digest([(k, list(np.shape(v))) for k, v in self.model.params.items()]
                                   + sorted(self.model.frozen))
        everyone = self.comm.allgather(own)
        for r, theirs in enumerate(everyone):
            for what in everyone[0]:
                if theirs.get(what) != everyone[0][what]:
                    raise RuntimeUserError(f"rank {r} differs from rank 0 in its {what}: every process of a "
                                           "data-parallel job must run the same command",
                                           "launch one command on every rank (mpiexec -n K dslc run FILE ...) "
                                           "with the same .net file, --set values, flags and data")

    def _rank_batches(self):
        """This rank's part of each global batch, from the one shuffle every rank draws alike
        (named_batches' permutation, so the global batches are those of a one-process run)."""
        ds, b = self.train, self.cfg.batch
        order = self.data_rng.permutation(len(ds))
        for start in range(0, len(ds) - len(ds) % b, b):
            index = order[start + self.share_start:start + self.share_start + self.local_batch]
            yield {k: np.ascontiguousarray(v[index]) for k, v in ds.arrays.items()}

    def _agree_on_stop(self, extra=()):
        """Sum `extra` over ranks with the stop flags: every rank stops at the same step boundary
        if any rank got a signal. Returns (summed extra, agreed signal or None)."""
        mine = self._pending_signal
        flags = [float(mine == signal.SIGINT), float(mine == signal.SIGTERM)]
        out = self.comm.sum(list(extra) + flags)
        sigint, sigterm = out[-2:]
        agreed = signal.SIGINT if sigint else signal.SIGTERM if sigterm else None
        return out[:-2], agreed

    def _new_partial(self):
        return {"loss": 0.0, "correct": 0, "count": 0, "samples": 0, "terms": [0.0] * len(self.terms)}

    # ---- data --------------------------------------------------------------------------------
    def _binding(self, keys):
        """{network input: dataset array name}: an array named like an input feeds it; `x` and
        `y` not so named stand for the data input and the label (data_roles)."""
        bind = {k: k for k in keys if k in self.net.inputs}
        for key, role in (("x", self.x_name), ("y", self.y_name)):
            if key in keys and key not in bind and role is not None and role not in bind:
                bind[role] = key
        return bind

    def _check_data(self, ds, what):
        """Every network input must be given by `ds`, all with one sample count."""
        bind = self._binding(ds.arrays)
        missing = [i for i in self.net.inputs if i not in bind]
        if missing:
            shorthand = ""
            if self.x_name is not None:
                shorthand = f" (or x for `{self.x_name}`" + (f" and y for `{self.y_name}`)" if self.y_name else ")")
            raise RuntimeUserError(
                f"`{missing[0]}` is missing from the {what} data ({ds.name}, which holds "
                f"{', '.join(ds.arrays) or 'nothing'}): the network's inputs are {', '.join(self.net.inputs)}",
                f"give one array per input, named like it{shorthand}")
        sizes = {k: len(ds.arrays[k]) for k in bind.values()}
        if len(set(sizes.values())) > 1:
            raise RuntimeUserError(f"the {what} data's arrays have different numbers of samples: "
                                   + ", ".join(f"{k} {n}" for k, n in sizes.items()),
                                   "give every array one entry per sample, in the same order")

    def _feeds(self, batch):
        # unbatched inputs (boxes) arrive per sample: box_batches joins and renumbers them
        return box_batches.gather({i: batch[k] for i, k in self._binding(batch).items()}, self.row_groups)

    def _term_values(self):
        """The loss terms' values of the last forward pass (read before backward)."""
        plan = self.model.last_plan
        return [self.model.device.scalar(plan.out[t]) for t in self.terms]

    # ---- one step ----------------------------------------------------------------------------
    def _step(self, feeds, lr):
        if self.objectives is not None:
            return self.objectives.step(feeds, lr)
        m = self.model
        if self.sync_batchnorm:     # the training plan's batchnorm calls, before its first forward
            batch, symbols = m._bindings(m._feeds(feeds))
            sync_batchnorm(m.plan(batch, symbols, True, True), self.comm)
        xb = feeds.get(self.x_name)
        if self.augment is not None and xb is not None and xb.ndim == 4:
            feeds = {**feeds, self.x_name: self.augment(xb, self._sliced(self.aug_rng))}
        out = m.forward(training=True, **feeds)
        loss = out["loss"]
        if not math.isfinite(loss):
            raise divergence(self.epoch, self.step_in_epoch, f"the loss is {loss}", m.last_plan, self.net)
        terms = self._term_values()
        plan = m.last_plan
        grads = plan.param_grads
        # each rank's mean over its equal share: the mean of the means, bucket by bucket as
        # the backward pass finishes them (None in one process)
        average = self.comm.begin_gradient_average(grads, 1.0 / self.ranks, m.device, plan.gradient_order)
        plan.backward(m.ctx, average)
        if average is not None:
            average.finish()
        if self.cfg.clip_grad_norm:
            m.device.clip_grad_norm(grads, self.cfg.clip_grad_norm)
        if self.cfg.clip_grad_value:
            m.device.clip_grad_value(grads, self.cfg.clip_grad_value)
        self.opt.step(grads, lr)
        if self.ema is not None:
            self.ema.update()
        return loss, out.get(self.net.tensor_name(self.pred_node)), terms

    def _correct(self, pred, feeds):
        if not self.classify or pred is None:
            return 0, 0
        y = feeds[self.label_name]
        p = np.argmax(pred, axis=self.class_axis)
        return int(np.sum(p == y)), int(y.size)

    # ---- epochs ------------------------------------------------------------------------------
    def fit(self):
        """Train to the configured number of epochs; returns the per-epoch records.

        A SIGINT or SIGTERM takes effect at the next step boundary (after a whole step, or
        after the epoch's validation, metrics line and checkpoint): a step's effects (moved
        batchnorm statistics, drawn dropout masks, half-updated parameters) are never saved
        without the step counter that says they happened. The state is then saved (with a
        checkpoint directory) and Interrupted is raised. A second signal meanwhile stops at
        once without saving; the checkpoint on disk, written atomically, stays as it was."""
        with self._deferred_signals():
            if self.ranks > 1:      # every rank starts from rank 0's parameters
                self.comm.bcast_params(self.model)
            return self._fit()

    def _fit(self):
        cfg = self.cfg
        drop_last = len(self.train) >= cfg.batch
        steps = len(self.train) // cfg.batch if drop_last else 1
        while self.epoch < cfg.epochs:
            if self._patience_exhausted():      # checked here too, so a resumed run that had stopped stays stopped
                break
            lr = self.schedule(self.epoch)
            if self.step_in_epoch == 0:
                self.epoch_rng_state = rng_state_to_arrays(self.data_rng, "data_epoch")
                self.partial = self._new_partial()
            else:   # resuming mid-epoch: replay the epoch's shuffle, then skip what was done
                self.data_rng = rng_from_arrays(self.epoch_rng_state, "data_epoch")
            it = named_batches(self.train, cfg.batch, shuffle=True, rng=self.data_rng, drop_last=drop_last) \
                if self.ranks == 1 else self._rank_batches()
            for _ in range(self.step_in_epoch):
                next(it)
            bar = self._bar(steps)
            t0, seen0 = time.perf_counter(), self.partial["samples"]
            try:
                for batch in it:
                    feeds = self._feeds(batch)
                    size = len(next(iter(feeds.values())))
                    with self.reporting_compiles(bar, "training step"):
                        loss, pred, terms = self._step(feeds, lr)
                    c, n = self._correct(pred, feeds)
                    if self.ranks > 1:      # the global batch's sums, and whether any rank was signalled
                        sums, self._agreed_signal = self._agree_on_stop([loss * size, c, n, *terms])
                        size = cfg.batch
                        loss, c, n = sums[0] / size, int(sums[1]), int(sums[2])
                        terms = [float(v) / self.ranks for v in sums[3:]]
                    p = self.partial
                    p["loss"] += loss * size
                    p["samples"] += size
                    if terms:
                        p["terms"] = [a + v * size for a, v in zip(p.get("terms") or [0.0] * len(terms), terms)]
                    p["correct"] += c
                    p["count"] += n
                    self.step_in_epoch += 1
                    if bar is not None:
                        rate = (p["samples"] - seen0) / max(time.perf_counter() - t0, 1e-9)
                        post = {"loss": f"{p['loss'] / p['samples']:.4f}"}
                        sums = p.get("terms") or []
                        post.update((k, f"{v / p['samples']:.4f}") for k, v in zip(self.term_names, sums))
                        if p["count"]:
                            post["acc"] = f"{p['correct'] / p['count']:.3f}"
                        post["samples/s"] = f"{rate:.0f}"
                        bar.set_postfix(post, refresh=False)
                        bar.update(1)
                    self._stop_if_asked()       # a step boundary: the state is whole
            finally:
                if bar is not None:
                    bar.close()
            elapsed = max(time.perf_counter() - t0, 1e-9)
            p = self.partial
            record = {"epoch": self.epoch + 1, "lr": lr,
                      "train_loss": p["loss"] / max(p["samples"], 1),
                      "train_accuracy": (p["correct"] / p["count"]) if p["count"] else None,
                      "samples_per_s": (p["samples"] - seen0) / elapsed}
            if self.terms:
                sums = p.get("terms") or [0.0] * len(self.terms)    # a checkpoint of an older dslc has none
                record["train_terms"] = {k: v / max(p["samples"], 1) for k, v in zip(self.term_names, sums)}
            if self.ranks > 1 and not self.sync_batchnorm:     # per-rank batchnorm statistics: rank 0's are the job's
                buffers = [k for k, (_, spec) in self.model.specs.items() if not spec.trainable]
                if buffers:
                    self.comm.bcast_params(self.model, buffers)
            if self.val is not None and len(self.val):
                with self.reporting_compiles(None, "evaluation"):
                    v = self.evaluate(self.val)
                if not math.isfinite(v["loss"]):
                    raise RuntimeUserError(
                        f"training diverged: after epoch {self.epoch + 1} the validation loss is {v['loss']} "
                        f"(training loss {record['train_loss']:.4g})",
                        "check the validation data for NaN or infinite values; otherwise lower the learning "
                        "rate (--lr) or add `clip_grad_norm` to the train section")
                record["val_loss"], record["val_accuracy"] = v["loss"], v["accuracy"]
                if self.terms:
                    record["val_terms"] = v["terms"]
            else:
                record["val_loss"] = record["val_accuracy"] = None
            if self.ranks > 1:
                record["processes"], record["threads"] = self.ranks, _threads()
            self.history.append(record)
            self.log(_epoch_line(record, cfg.epochs))
            if self.ema is not None:
                self.ema.end_epoch(self, record)
            if self.metrics_path:
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            self.epoch += 1
            self.step_in_epoch = 0
            saved = None
            if self.checkpoint_dir:
                saved = self.save()
                if self.best_epoch() == record["epoch"]:
                    self.save(BEST_NAME)
            if self.ranks > 1:
                self._agreed_signal = self._agree_on_stop()[1]
            self._stop_if_asked(saved)
        return self.history

    def best_epoch(self):
        """The epoch (1-based) with the lowest validation loss so far (the first, on a tie), or None."""
        losses = [(r["val_loss"], r["epoch"]) for r in self.history if r.get("val_loss") is not None]
        return min(losses, key=lambda t: t[0])[1] if losses else None

    def _patience_exhausted(self):
        if not self.early_stopping or self.stopped_early:
            return self.stopped_early
        best = self.best_epoch()
        if best is None or self.history[-1]["epoch"] - best < self.early_stopping:
            return False
        self.stopped_early = True
        best_loss = next(r["val_loss"] for r in self.history if r["epoch"] == best)
        self.log(f"early stopping: the validation loss has not improved for {self.early_stopping} "
                 f"epoch{'s' if self.early_stopping != 1 else ''} (best {best_loss:.4f}, epoch {best})")
        return True

    # ---- signals -----------------------------------------------------------------------------
    @contextmanager
    def _deferred_signals(self):
        """SIGINT and SIGTERM only set a flag while training (see fit); the handlers that were
        there before are put back afterwards. Python runs signal handlers in the main thread
        only, so elsewhere (fit in a worker thread) nothing is installed. A signal the process
        ignores stays ignored (a job started with nohup)."""
        self._pending_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}
        try:
            for s in STOP_SIGNALS:
                old = signal.getsignal(s)
                if old is signal.SIG_IGN or old is None:    # None: installed outside Python; leave it
                    continue
                previous[s] = old
                signal.signal(s, self._on_signal)
            yield
        finally:
            for s, old in previous.items():
                signal.signal(s, old)
            self._pending_signal = None

    def _on_signal(self, signum, frame):
        if self._pending_signal is not None:
            # The second signal: stop now. The state in memory may be mid-step, so nothing is
            # saved; an atomic write in progress is abandoned, leaving the previous file.
            kept = ""
            if self.checkpoint_dir and os.path.exists(os.path.join(self.checkpoint_dir, CHECKPOINT_NAME)):
                kept = f"; {os.path.join(self.checkpoint_dir, CHECKPOINT_NAME)} holds the last saved state"
            message = f"{signal.Signals(signum).name} again: stopped without saving{kept}"
            self._say(message)
            raise Interrupted(signum, None, message)
        self._pending_signal = signum
        what = "saving a checkpoint" if self.checkpoint_dir else "stopping"
        self._say(f"{signal.Signals(signum).name}: finishing the current step, then {what} "
                  "(send it again to stop at once without saving)")

    def _say(self, line):
        """Log from a signal handler: the handler may run inside a write to the same stream,
        which Python refuses (a reentrant call); the line is then dropped."""
        try:
            self.log(line)
        except RuntimeError:
            pass

    def _stop_if_asked(self, saved=None):
        """At a step boundary: if a stop signal came, save (unless `saved`, the checkpoint just
        written of this same state) and raise Interrupted."""
        # Several processes stop where they agreed to (_agree_on_stop), whoever got the signal.
        signum = self._pending_signal if self.ranks == 1 else self._agreed_signal
        if signum is None or self.epoch >= self.cfg.epochs:     # finished: nothing left to stop
            return
        name = signal.Signals(signum).name
        where = f"epoch {self.epoch + 1}, step {self.step_in_epoch}" if self.step_in_epoch \
            else f"the end of epoch {self.epoch}"
        if self.checkpoint_dir:
            path = saved or self.save()
            message = f"interrupted ({name}) at {where}: saved {path}; continue with {self.resume_hint}"
        else:
            path = None
            message = f"interrupted ({name}) at {where}: no --checkpoint DIR given, nothing saved"
        self.log(message)
        raise Interrupted(signum, path, message)

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

    def evaluate(self, ds: Dataset, topk=(1,), confusion=False):
        """Loss and top-k accuracies over `ds`. With `confusion`, a classifier's result also holds
        `confusion` (rows: true class, columns: predicted class; counts) and `per_class` (each
        class's accuracy, None for a class with no samples)."""
        m, cfg = self.model, self.cfg
        total, n, correct = 0.0, 0, {k: 0 for k in topk}
        count = 0
        matrix = None
        term_sums = [0.0] * len(self.terms)
        shard = self.ranks > 1          # each rank scores its contiguous part; sums reduced
        if shard:
            lo, hi = len(ds) * self.rank // self.ranks, len(ds) * (self.rank + 1) // self.ranks
            step = max(1, cfg.batch // self.ranks)
            source = ({k: np.ascontiguousarray(v[a:min(a + step, hi)]) for k, v in ds.arrays.items()}
                      for a in range(lo, hi, step))
        else:
            source = named_batches(ds, cfg.batch, shuffle=False, rng=np.random.default_rng(0))
        for batch in source:
            feeds = self._feeds(batch)
            size = len(next(iter(feeds.values())))
            out = m.forward(training=False, **feeds)
            total += out["loss"] * size
            n += size
            term_sums = [a + v * size for a, v in zip(term_sums, self._term_values())]
            pred = out.get(self.net.tensor_name(self.pred_node))
            if self.classify and pred is not None:
                yb = feeds[self.label_name]
                order = np.argsort(-pred, axis=self.class_axis)
                for k in topk:
                    top = np.take(order, np.arange(k), axis=self.class_axis)
                    hit = np.any(top == np.expand_dims(yb, self.class_axis), axis=self.class_axis)
                    correct[k] += int(np.sum(hit))
                count += yb.size
                if confusion and yb.dtype.kind in "iu":
                    k_classes = pred.shape[self.class_axis]
                    truth, guess = yb.ravel().astype(np.int64), np.argmax(pred, axis=self.class_axis).ravel()
                    keep = (truth >= 0) & (truth < k_classes)
                    cells = np.bincount(truth[keep] * k_classes + guess[keep], minlength=k_classes ** 2)
                    matrix = cells.reshape(k_classes, k_classes) + (0 if matrix is None else matrix)
        if shard:
            sums = self.comm.sum([total, n, count, *(correct[k] for k in topk), *term_sums])
            total, n, count = float(sums[0]), int(sums[1]), int(sums[2])
            correct = {k: int(v) for k, v in zip(topk, sums[3:3 + len(topk)])}
            term_sums = [float(v) for v in sums[3 + len(topk):]]
            if confusion:       # counts: exact in any order of summation
                parts = [p for p in self.comm.allgather(matrix) if p is not None]
                matrix = sum(parts[1:], parts[0]) if parts else None
        res = {"loss": total / max(n, 1), "accuracy": correct[topk[0]] / count if count else None}
        if self.terms:
            res["terms"] = {k: v / max(n, 1) for k, v in zip(self.term_names, term_sums)}
        for k in topk[1:]:
            res[f"top{k}"] = correct[k] / count if count else None
        if confusion:
            res["confusion"] = matrix.tolist() if matrix is not None else None
            res["per_class"] = ([int(matrix[i, i]) / int(row) if row else None
                                 for i, row in enumerate(matrix.sum(axis=1))] if matrix is not None else None)
        return res

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, name=CHECKPOINT_NAME):
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        path = os.path.join(self.checkpoint_dir, name)
        arrays = {f"param/{k}": v for k, v in self.model.params.items()}
        arrays.update({f"opt/{k}": v for k, v in self.opt.state_dict().items()})
        arrays.update(rng_state_to_arrays(self.data_rng, "data"))
        arrays.update(rng_state_to_arrays(self.aug_rng, "aug"))
        arrays.update(rng_state_to_arrays(unwrap(self.model.ctx.rng), "dropout"))
        if self.epoch_rng_state is not None:
            arrays.update(self.epoch_rng_state)
        if self.ema is not None:
            arrays.update(self.ema.arrays())
        meta = {**self.extra_meta, "kind": "dslc-training", "network": self.net.name, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "partial": self.partial, "config": asdict(self.cfg),
                "history": self.history, "data": self._data_signature(), "ranks": self.ranks,
                "sync_batchnorm": self.sync_batchnorm}
        save_checkpoint(path, arrays, meta)
        return path

    def resume(self):
        if self.ranks == 1:
            arrays, meta = self._read_checkpoint()
        else:       # rank 0 reads (the other nodes need not see its disk) and sends it, or its error
            outcome = None
            if self.rank == 0:
                try:
                    outcome = ("ok", self._read_checkpoint())
                except RuntimeUserError as e:
                    outcome = ("error", e)
            outcome = self.comm.bcast(outcome)
            if outcome[0] == "error":
                raise outcome[1]
            arrays, meta = outcome[1]
        self.model.load_params({k[6:]: v for k, v in arrays.items() if k.startswith("param/")}, strict=True)
        self.opt.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("opt/")})
        if self.ema is not None:
            self.ema.load(arrays)
        self.data_rng = rng_from_arrays(arrays, "data")
        self.aug_rng = rng_from_arrays(arrays, "aug")
        self.model.ctx.rng = self._sliced(rng_from_arrays(arrays, "dropout"))
        if any(k.startswith("data_epoch") for k in arrays):
            self.epoch_rng_state = {k: v for k, v in arrays.items() if k.startswith("data_epoch")}
        self.epoch, self.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
        self.partial, self.history = meta["partial"], meta["history"]
        return meta

    def _read_checkpoint(self):
        path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME)
        if not os.path.exists(path):
            raise CheckpointError(f"nothing to resume: {path} does not exist",
                                  "run once with --checkpoint DIR first, or drop --resume")
        arrays, meta = load_checkpoint(path)
        if meta.get("kind") != "dslc-training" or meta.get("network") != self.net.name:
            raise CheckpointError(f"{path} is not a training checkpoint of network `{self.net.name}`",
                                  "point --checkpoint at this network's checkpoint directory")
        self._check_same_run(path, meta)
        return arrays, meta

    def _data_signature(self):
        sig = dict(self.data_info)
        sig["train_samples"] = len(self.train)
        sig["val_samples"] = len(self.val) if self.val is not None else 0
        return sig

    def _check_same_run(self, path, meta):
        """A resumed run must be the run that was interrupted: the saved position (epoch, step,
        the epoch's shuffle) means nothing with other data, batches or seed. Only `epochs` may
        change (to train longer). Refused with the setting named, before anything is loaded."""
        saved_cfg, saved_data = meta.get("config"), meta.get("data")
        if not isinstance(saved_cfg, dict):
            raise CheckpointError(f"{path} does not record its training settings",
                                  "resume only from checkpoints written by dslc's trainer")
        hint = "resume with the settings the checkpoint was made with, or start afresh with --overwrite"
        saved_ranks = meta.get("ranks", 1)
        if saved_ranks != self.ranks:
            def procs(k):
                return f"{k} process{'es' * (k != 1)}"
            launch = f"mpiexec -n {saved_ranks} dslc run ..." if saved_ranks != 1 else "dslc run ... without mpiexec"
            raise CheckpointError(f"{path} was saved by a run of {procs(saved_ranks)}; this run has "
                                  f"{procs(self.ranks)} (the number of processes is part of a resumable run)",
                                  f"resume with {launch}, or start afresh with --overwrite")
        if self.ranks > 1 and bool(meta.get("sync_batchnorm", False)) != self.sync_batchnorm:
            was = "with" if meta.get("sync_batchnorm") else "without"
            raise CheckpointError(f"{path} was saved by a run {was} --sync-batchnorm; this run differs",
                                  f"resume {was} --sync-batchnorm, or start afresh with --overwrite")
        current = asdict(self.cfg)
        for key in current:
            if key == "epochs" or key not in saved_cfg:
                continue
            if _jsonish(saved_cfg[key]) != _jsonish(current[key]):
                def setting(v, key=key):
                    return f"{_FLAGS[key]} {v}" if key in _FLAGS else f"`{key} {v}` (train section)"
                raise CheckpointError(f"{path} was saved by a run with {setting(saved_cfg[key])}; this run has "
                                      f"{setting(current[key])}", f"{hint} ({setting(saved_cfg[key])})")
        if isinstance(saved_data, dict):
            now = self._data_signature()
            for key, flag in (("data", "--data"), ("limit", "--limit"), ("val", "--val")):
                if key in saved_data and key in now and saved_data[key] != now[key]:
                    raise CheckpointError(f"{path} was saved by a run with {flag} {saved_data[key]}; this run has "
                                          f"{flag} {now[key]}", hint)
            for key in ("train_samples", "val_samples"):
                if key in saved_data and saved_data[key] != now[key]:
                    raise CheckpointError(f"{path} was saved by a run with {saved_data['train_samples']} training / "
                                          f"{saved_data.get('val_samples')} validation samples; this run has "
                                          f"{now['train_samples']} / {now['val_samples']}",
                                          f"{hint} (the same --data, --limit and validation split)")


# Where each TrainConfig field is set from the command line, for messages.
_FLAGS = {"batch": "--batch", "lr": "--lr", "optimizer": "--optimizer", "seed": "--seed"}


def _jsonish(v):
    """A value as it reads back from a checkpoint's JSON metadata (tuples become lists)."""
    return json.loads(json.dumps(v))


# ---- output paths ----------------------------------------------------------------------------
_claimed: set[str] = set()     # directories claimed by this process (a POSIX lock does not see them)


class CheckpointDir:
    """A checkpoint directory claimed by this run: created, locked against other runs (a lock
    on DIR/.lock, released when the process ends, however it ends), cleared of the temporary
    files of writes that a killed run left behind, and checked that it holds no other run's
    checkpoint unless the run resumes it or overwrites it. Claim it before any training, so a
    bad path costs nothing.

    The lock is a POSIX record lock (fcntl.lockf), not flock: a flock is shared with forked
    children, so the compile-ahead helper (runtime/compile_ahead.py), still ending its last
    compile just after its parent was stopped, would lock out the `--resume` that follows."""

    def __init__(self, path, *, resume=False, overwrite=False):
        import fcntl
        self._lock = None
        self.path = os.fspath(path)
        key = os.path.realpath(self.path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RuntimeUserError(f"--checkpoint {self.path} is not a directory",
                                   "give a directory (it is created if missing); checkpoints go in DIR/last.ckpt")
        try:
            os.makedirs(self.path, exist_ok=True)
            self._lock = open(os.path.join(self.path, LOCK_NAME), "a")
        except OSError as e:
            raise RuntimeUserError(f"cannot use checkpoint directory {self.path}: {e.strerror or e}",
                                   "give a directory you can write to") from None
        try:
            if key in _claimed:
                raise BlockingIOError
            fcntl.lockf(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise RuntimeUserError(f"another dslc run is using checkpoint directory {self.path} "
                                   f"(it holds {os.path.join(self.path, LOCK_NAME)})",
                                   "wait for that run to end, or give this run another --checkpoint directory") \
                from None
        self._key = key
        _claimed.add(key)
        # Under the lock no write is in progress: any temporary file is a killed write's.
        prefix = f".{CHECKPOINT_NAME}."
        for name in os.listdir(self.path):
            if name.startswith(prefix) and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError:
                    pass
        ckpt = os.path.join(self.path, CHECKPOINT_NAME)
        if resume and not os.path.exists(ckpt):
            self.release()
            raise CheckpointError(f"nothing to resume: {ckpt} does not exist",
                                  "run once with --checkpoint DIR first, or drop --resume")
        if not resume and not overwrite and os.path.exists(ckpt):
            self.release()
            raise RuntimeUserError(f"{ckpt} already holds a training checkpoint, which this run would overwrite",
                                   "continue that run with --resume, replace it with --overwrite, "
                                   "or give another --checkpoint directory")

    def release(self):
        if self._lock is not None:
            self._lock.close()      # closing the file drops the lock
            self._lock = None
            _claimed.discard(self._key)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def check_output_file(path, flag="--metrics"):
    """Make sure `path` can be appended to (its directory created) before any training, so a
    bad path does not cost a trained epoch."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise RuntimeUserError(f"{flag} {path} is a directory",
                               f"give a file name, e.g. {flag} {os.path.join(path, 'metrics.jsonl')}")
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as e:
        raise RuntimeUserError(f"cannot write {flag} {path}: {e.strerror or e}",
                               "give a path in a directory you can write to") from None


def _epoch_line(r, epochs):
    parts = [f"epoch {r['epoch']}/{epochs}",
             f"train loss {r['train_loss']:.4f}" + _terms_text(r.get("train_terms"))]
    if r["train_accuracy"] is not None:
        parts.append(f"acc {r['train_accuracy']:.4f}")
    if r["val_loss"] is not None:
        parts.append(f"val loss {r['val_loss']:.4f}" + _terms_text(r.get("val_terms")))
    if r.get("val_accuracy") is not None:
        parts.append(f"val acc {r['val_accuracy']:.4f}")
    parts.append(f"{r['samples_per_s']:.0f} samples/s")
    if r.get("processes"):
        t = r.get("threads") or 1
        parts.append(f"{r['processes']} processes x {t} thread{'s' * (t != 1)}")
    return "  ".join(parts)


def _threads() -> int:
    """Numba's threads in use (1 before Numba is loaded, e.g. on a GPU)."""
    numba = sys.modules.get("numba")
    return int(numba.get_num_threads()) if numba is not None else 1


def _terms_text(terms) -> str:
    return " (" + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) + ")" if terms else ""
