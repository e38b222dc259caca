"""The `train { }` section: every setting, every optimizer and schedule with its arguments and
their defaults, defined once.

The compiler checks a section against these tables (`check_section`, each mistake reported at
the place it was written); the runtime reads the same tables to fill in defaults and to build
its optimizers and schedules (`optimizer_settings`, `schedule_settings`), so an argument the
front end accepts is one the runtime honours, and a default the docs state is the one used.

A section's values are kept as elaboration evaluates them: numbers, booleans, words, and
("call", name, positional, keyword) tuples for `adam(lr = 3e-3)`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import ast
from .diagnostics import Diagnostics, did_you_mean
from .values import EvalError, Poisoned, describe, evaluate


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_whole(v):
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Kind:
    """What a setting or argument accepts: a test and its name in a diagnostic."""
    test: Callable[[object], bool]
    what: str


POSITIVE = Kind(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE = Kind(lambda v: _is_number(v) and v >= 0, "a number >= 0")
FRACTION = Kind(lambda v: _is_number(v) and 0 <= v < 1, "a number from 0 up to (not including) 1")
OPEN_FRACTION = Kind(lambda v: _is_number(v) and 0 < v < 1, "a number above 0 and below 1")
COUNT = Kind(lambda v: _is_whole(v) and v >= 1, "a whole number >= 1")
WHOLE = Kind(lambda v: _is_whole(v) and v >= 0, "a whole number >= 0")
BOOL = Kind(lambda v: isinstance(v, bool), "`true` or `false`")


@dataclass(frozen=True)
class Arg:
    default: object
    kind: Kind


_LR = Arg(1e-3, POSITIVE)
_WEIGHT_DECAY = Arg(0.0, NON_NEGATIVE)     # L2 added to the gradient (torch's; adamw's is decoupled)

# Every optimizer and the arguments it takes, with torch.optim's defaults (lr: 1e-3 for all).
# `sgd` is torch's SGD: momentum 0 unless given, dampening 0; `momentum` and `nesterov` are SGD
# with momentum 0.9 and, for `nesterov`, Nesterov's formula.
OPTIMIZERS: dict[str, dict[str, Arg]] = {
    "sgd": {"lr": _LR, "momentum": Arg(0.0, FRACTION), "nesterov": Arg(False, BOOL), "weight_decay": _WEIGHT_DECAY},
    "momentum": {"lr": _LR, "momentum": Arg(0.9, FRACTION), "weight_decay": _WEIGHT_DECAY},
    "nesterov": {"lr": _LR, "momentum": Arg(0.9, OPEN_FRACTION), "weight_decay": _WEIGHT_DECAY},
    "adagrad": {"lr": _LR, "eps": Arg(1e-10, POSITIVE), "weight_decay": _WEIGHT_DECAY},
    "rmsprop": {"lr": _LR, "alpha": Arg(0.99, FRACTION), "eps": Arg(1e-8, POSITIVE), "weight_decay": _WEIGHT_DECAY},
    "adam": {"lr": _LR, "beta1": Arg(0.9, FRACTION), "beta2": Arg(0.999, FRACTION), "eps": Arg(1e-8, POSITIVE),
             "weight_decay": _WEIGHT_DECAY},
    # torch.optim.AdamW: Adam whose weight decay shrinks the parameter (p *= 1 - lr * weight_decay)
    # apart from the gradient's averages, with torch's default of 0.01.
    "adamw": {"lr": _LR, "beta1": Arg(0.9, FRACTION), "beta2": Arg(0.999, FRACTION), "eps": Arg(1e-8, POSITIVE),
              "weight_decay": Arg(0.01, NON_NEGATIVE)},
}
DEFAULT_OPTIMIZER = "adam"
# Learning-rate schedules, stepped per epoch, with their arguments (torch's closed forms).
SCHEDULES: dict[str, dict[str, Arg]] = {
    "constant": {},
    "step": {"step_size": Arg(30, COUNT), "gamma": Arg(0.1, POSITIVE)},
    "exponential": {"gamma": Arg(0.95, POSITIVE)},
    "cosine": {"min_lr": Arg(0.0, NON_NEGATIVE)},
}
AUGMENT = {"crop": Arg(0, WHOLE), "flip": Arg(False, BOOL), "brightness": Arg(0.0, NON_NEGATIVE)}
INITS = ("he", "xavier")

# Settings written as a plain value. `lr`, `weight_decay` and `momentum` are shorthands for the
# optimizer's argument of that name (`weight_decay 5e-4` next to `optimizer sgd(lr = 0.1)`).
SCALAR_SETTINGS: dict[str, Kind] = {
    "lr": POSITIVE, "epochs": COUNT, "batch": COUNT, "weight_decay": NON_NEGATIVE, "momentum": FRACTION,
    "clip_grad_norm": POSITIVE, "clip_grad_value": POSITIVE, "seed": WHOLE, "val_fraction": FRACTION,
    "ema": OPEN_FRACTION,
}
OPTIMIZER_SHORTHANDS = ("lr", "weight_decay", "momentum")
# Settings written as a name or a call: the names allowed and each one's keyword arguments.
CALL_SETTINGS: dict[str, dict[str, dict[str, Arg]]] = {
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "augment": {"augment": AUGMENT},
    "init": {name: {} for name in INITS},
    # Per-layer learning-rate multipliers (fine-tuning): keyword arguments named after layers or
    # blocks, checked by _value_ok and against the network's parameters by the runtime.
    "lr_mult": {"lr_mult": {}},
}
EXAMPLES = {
    "optimizer": "`optimizer adam(lr = 1e-3)`, `optimizer adamw(weight_decay = 0.05)` or "
                 "`optimizer sgd(lr = 0.1, momentum = 0.9)`",
    "schedule": "`schedule step(step_size = 30, gamma = 0.1)`, `schedule exponential(gamma = 0.95)` "
                "or `schedule cosine`",
    "augment": "`augment(crop = 4, flip = true, brightness = 0.1)`",
    "init": "`init he` or `init xavier`",
    "lr": "`lr 1e-3`", "epochs": "`epochs 10`", "batch": "`batch 32`", "weight_decay": "`weight_decay 5e-4`",
    "momentum": "`momentum 0.9`", "clip_grad_norm": "`clip_grad_norm 5`", "clip_grad_value": "`clip_grad_value 1`",
    "seed": "`seed 0`", "val_fraction": "`val_fraction 0.2`", "ema": "`ema 0.999`",
    "lr_mult": "`lr_mult(conv1 = 0.1, fc = 2)`",
}
TRAIN_KEYS = sorted(SCALAR_SETTINGS) + sorted(CALL_SETTINGS)


def split_call(v) -> tuple[object, tuple, dict]:
    """(name, positional arguments, keyword arguments) of a setting written as a name or a call."""
    if isinstance(v, tuple) and len(v) == 4 and v[0] == "call":
        return v[1], v[2], dict(v[3])
    return v, (), {}


def takers(arg: str) -> list[str]:
    """The optimizers that take argument `arg`."""
    return [name for name, args in OPTIMIZERS.items() if arg in args]


# ---- the runtime's side: complete settings from what was written --------------------------------

def _complete(table: dict[str, dict[str, Arg]], family: str, name, given: dict) -> dict:
    """`given` checked against `table[name]`, with every argument not given at its default.
    Raises ValueError, with a message for the user, on an unknown name, argument or value."""
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"unknown {family} {name!r}; known {family}s: {', '.join(table)}")
    args = table[name]
    out = {}
    for k, v in given.items():
        if k not in args:
            raise ValueError(f"{family} `{name}` takes no argument `{k}`; its arguments: "
                             f"{', '.join(args) or 'none'}")
        if not args[k].kind.test(v):
            raise ValueError(f"{family} `{name}` argument `{k}` takes {args[k].kind.what}, got {v!r}")
    for k, a in args.items():
        out[k] = given.get(k, a.default)
    return out


def optimizer_settings(name, given: dict) -> dict:
    """Every argument of optimizer `name` (lr included): those in `given`, the rest at their defaults."""
    out = _complete(OPTIMIZERS, "optimizer", name, given)
    if out.get("nesterov") and not out["momentum"]:
        raise ValueError(f"optimizer `{name}` with nesterov = true needs a momentum above 0 (torch's rule)")
    return out


def schedule_settings(name, given: dict) -> dict:
    """Every argument of schedule `name`: those in `given`, the rest at their defaults."""
    return _complete(SCHEDULES, "schedule", name, given)


# ---- the compiler's side: a section checked where it was written --------------------------------

def check_section(sections: list[ast.TrainSection], env: dict, d: Diagnostics) -> dict:
    """The `train { }` settings of a program, each checked so a mistake is reported at its place."""
    train, where, arg_spans = {}, {}, {}
    for sec in sections:
        for it in sec.items:
            if it.key not in SCALAR_SETTINGS and it.key not in CALL_SETTINGS:
                d.error(f"unknown training setting `{it.key}`", it.span, label="here",
                        notes=["settings: " + ", ".join(TRAIN_KEYS)],
                        help=did_you_mean(it.key, TRAIN_KEYS) or "remove it")
                continue
            if it.key in where:
                d.error(f"training setting `{it.key}` is given twice", it.span, label="again here",
                        notes=[f"first given at {where[it.key].where}"], help="keep one")
                continue
            where[it.key] = it.span
            try:
                v = evaluate(it.value, env)
            except EvalError as e:
                d.error(e.message, e.span, help=e.help)
                continue
            except Poisoned:
                continue
            spans = _value_ok(it, v, d)
            if spans is not None:
                train[it.key], arg_spans[it.key] = v, spans
    _check_optimizer(train, where, arg_spans, d)
    return train


def _value_ok(it: ast.TrainItem, v, d: Diagnostics):
    """The spans of the value's arguments by name when `v` suits setting `it.key`, else None."""
    if it.key in SCALAR_SETTINGS:
        kind = SCALAR_SETTINGS[it.key]
        if kind.test(v):
            return {}
        d.error(f"training setting `{it.key}` takes {kind.what}, found {describe(v)}", it.value.span,
                label="here", help=f"e.g. {EXAMPLES[it.key]}")
        return None
    choices = CALL_SETTINGS[it.key]
    name, positional, kwargs = split_call(v)
    example = EXAMPLES[it.key]
    if it.key == "lr_mult":
        return _lr_mult_ok(it, name, positional, kwargs, d)
    if not isinstance(name, str) or name not in choices:
        shown = f"`{name}`" if isinstance(name, str) else describe(name)
        hint = did_you_mean(name, choices) if isinstance(name, str) else ""
        d.error(f"training setting `{it.key}` takes one of {', '.join(choices)}, found {shown}",
                it.value.span, label="here", help=hint or f"e.g. {example}")
        return None
    if positional:
        d.error(f"`{name}` takes keyword arguments only", it.value.span, label="here", help=f"e.g. {example}")
        return None
    ok = True
    args = choices[name]
    spans = {}
    for a in (it.value.args if isinstance(it.value, ast.CallExpr) else ()):
        if a.name in spans:
            d.error(f"`{name}` argument `{a.name}` is given twice", a.span, label="again here",
                    notes=[f"first given at {spans[a.name].where}"], help="keep one")
            ok = False
        spans[a.name] = a.span
    for k, x in kwargs.items():
        span = spans.get(k, it.value.span)
        if k not in args:
            listed = ", ".join(args) or "none"
            notes = [f"arguments of `{name}`: {listed}"]
            others = takers(k) if it.key == "optimizer" else []
            if others:
                notes.append(f"`{k}` is an argument of {', '.join(others)}")
            d.error(f"`{name}` has no argument `{k}`", span, label="here", notes=notes,
                    help=did_you_mean(k, args) or "remove it")
            ok = False
            continue
        kind = args[k].kind
        if not kind.test(x):
            d.error(f"`{name}` argument `{k}` takes {kind.what}, found {describe(x)}", span,
                    label="here", help=f"e.g. {example}")
            ok = False
    return spans if ok else None


def _lr_mult_ok(it: ast.TrainItem, name, positional, kwargs: dict, d: Diagnostics):
    """`lr_mult(layer = m, ...)`: one multiplier >= 0 per layer or block name (the spans by name), else None."""
    example = EXAMPLES["lr_mult"]
    if name != "lr_mult" or positional or not kwargs:
        d.error("`lr_mult` takes layer names with their learning-rate multipliers", it.value.span, label="here",
                notes=["each parameter of a layer (or of a block, by its name) learns at lr times its multiplier"],
                help=f"e.g. {example}")
        return None
    spans, ok = {}, True
    for a in (it.value.args if isinstance(it.value, ast.CallExpr) else ()):
        if a.name in spans:
            d.error(f"`lr_mult` gives `{a.name}` twice", a.span, label="again here",
                    notes=[f"first given at {spans[a.name].where}"], help="keep one")
            ok = False
        spans[a.name] = a.span
    for k, x in kwargs.items():
        if not NON_NEGATIVE.test(x):
            d.error(f"`lr_mult` for `{k}` takes {NON_NEGATIVE.what}, found {describe(x)}", spans.get(k, it.value.span),
                    label="here", help=f"e.g. {example}")
            ok = False
    return spans if ok else None


def _check_optimizer(train: dict, where: dict, arg_spans: dict, d: Diagnostics):
    """The shorthands (`momentum 0.9` beside the optimizer) against the optimizer they feed, and
    `nesterov = true` against the momentum in effect."""
    if "optimizer" not in train and "optimizer" in where:
        return                           # the optimizer itself was wrong, and is reported
    name, _, kwargs = split_call(train.get("optimizer", DEFAULT_OPTIMIZER))
    args = OPTIMIZERS[name]
    for k in OPTIMIZER_SHORTHANDS:
        if k not in train:
            continue
        if k in kwargs:
            d.error(f"`{k}` is given twice: as a training setting and as an argument of `{name}`",
                    where[k], label="again here", notes=[f"`{name}({k} = ...)` at {arg_spans['optimizer'][k].where}"],
                    help="keep one")
            del train[k]
        elif k not in args:
            default = "" if "optimizer" in train else " (the default optimizer)"
            d.error(f"`{name}`{default} takes no `{k}`", where[k], label="not used",
                    notes=[f"`{k}` is an argument of {', '.join(takers(k))}"],
                    help=f"remove it, or choose an optimizer that takes it, e.g. `optimizer sgd(lr = 0.1, {k} = ...)`")
            del train[k]
        elif not args[k].kind.test(train[k]):
            d.error(f"`{k}` for `{name}` takes {args[k].kind.what}, found {describe(train[k])}", where[k],
                    label="here", help=f"e.g. {EXAMPLES[k]}")
            del train[k]
    if kwargs.get("nesterov") is True and not kwargs.get("momentum", train.get("momentum", 0)):
        d.error("`nesterov = true` needs a momentum above 0", arg_spans["optimizer"]["nesterov"], label="here",
                notes=["Nesterov's formula looks ahead along the momentum; with momentum 0 there is none"],
                help=f"e.g. `optimizer {name}(lr = 0.1, momentum = 0.9, nesterov = true)`")
