"""No silent settings: every `train { }` setting and every optimizer, schedule and augment
argument is either honoured (it changes what training produces) or refused where it was written.

The tables walked here are dslc/train_section.py's, so a setting added there without a case
here fails `test_every_setting_and_argument_has_a_case`.
"""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dslc.compiler import CompileError, compile_source
from dslc.diagnostics import Source
from dslc.runtime.config import TrainConfig
from dslc.runtime.data import load_dataset
from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.model import Model
from dslc.runtime.optim import make_optimizer, make_schedule
from dslc.runtime.train import Trainer
from dslc.train_section import AUGMENT, OPTIMIZERS, SCHEDULES, TRAIN_KEYS

NET = """
network tiny(classes = 10)
input image: [1, 4, 4]
input label: int
logits = image -> flatten -> dense(8) -> relu -> dense(classes)
loss cross_entropy(logits, label)
train {{
{settings}
}}
"""
# Two epochs of four steps: enough for momentum, Adam's betas and per-epoch schedules to act.
BASE = {"optimizer": "sgd(lr = 0.1)", "epochs": "2", "batch": "8", "seed": "0"}

# setting -> (what it replaces or adds to BASE, what it is compared with).
# Each case changes one thing; optimizer arguments are each compared with the same optimizer
# without that argument (its default).
CASES = {
    "lr": ({"optimizer": "sgd", "lr": "0.05"}, {"optimizer": "sgd", "lr": "0.1"}),
    "epochs": ({"epochs": "1"}, {}),
    "batch": ({"batch": "4"}, {}),
    "weight_decay": ({"weight_decay": "0.5"}, {}),
    "momentum": ({"momentum": "0.9"}, {}),
    "clip_grad_norm": ({"clip_grad_norm": "0.01"}, {}),
    "clip_grad_value": ({"clip_grad_value": "0.001"}, {}),
    "seed": ({"seed": "1"}, {}),
    "val_fraction": ({"val_fraction": "0.5"}, {}),
    "optimizer": ({"optimizer": "adam(lr = 0.1)"}, {}),
    "schedule": ({"schedule": "cosine"}, {}),
    "augment": ({"augment": "augment(flip = true)"}, {}),
    "lr_mult": ({"lr_mult": "lr_mult(dense1 = 0.1)"}, {}),
    "init": ({"init": "xavier"}, {"init": "he"}),
    "ema": ({"ema": "0.9"}, {}),        # changes what is kept beside the weights (compared below)
}
OPTIMIZER_VALUES = {"lr": "0.02", "momentum": "0.5", "nesterov": "true", "weight_decay": "0.5", "eps": "0.5",
                    "alpha": "0.5", "beta1": "0.3", "beta2": "0.5"}
SCHEDULE_CASES = {   # (schedule, argument) -> (with it, without it)
    ("step", "step_size"): ("step(step_size = 1)", "step"),
    ("step", "gamma"): ("step(step_size = 1, gamma = 0.5)", "step(step_size = 1)"),
    ("exponential", "gamma"): ("exponential(gamma = 0.5)", "exponential"),
    ("cosine", "min_lr"): ("cosine(min_lr = 0.05)", "cosine"),
}
AUGMENT_VALUES = {"crop": "1", "flip": "true", "brightness": "0.5"}


CALLS = ("augment", "lr_mult")     # settings written as a call, without the key before it


def _source(settings: dict) -> Source:
    return Source("tiny.net", NET.format(settings="\n".join(f"  {k} {v}" if k not in CALLS else f"  {v}"
                                                             for k, v in settings.items())))


def _optimizer_case(name, arg):
    """(with `arg`, without it) for optimizer `name`; nesterov is compared with momentum on in both."""
    base = {"momentum": "0.9"} if arg == "nesterov" else {}
    with_arg = {**base, arg: OPTIMIZER_VALUES[arg]}
    if arg == "lr":
        base = {"lr": "0.1"}
    call = lambda args: f"{name}({', '.join(f'{k} = {v}' for k, v in args.items())})"   # noqa: E731
    return {"optimizer": call(with_arg)}, {"optimizer": call(base)}


def _trained(settings: dict) -> dict:
    net, _ = compile_source(_source({**BASE, **settings}))
    cfg = TrainConfig.from_network(net)
    model = Model(net, seed=0)
    train, val = load_dataset("digits", x_shape=(1, 4, 4), x_dtype="float32", y_shape=(), y_dtype="int64",
                              val_fraction=cfg.val_fraction, seed=cfg.seed, limit=40, classes=10)
    trainer = Trainer(model, cfg, train, val, progress=False, log=lambda s: None)
    trainer.fit()
    params = {k: v.copy() for k, v in model.params.items()}
    # The averaged weights `ema` keeps: for a run without them, the trained weights they would equal.
    params.update({f"ema/{k}": v.copy() for k, v in (trainer.ema.avg if trainer.ema else
                                                      {k: params[k] for k in model.trainable_names()}).items()})
    return params


def _assert_changes(with_it, without_it):
    a, b = _trained(with_it), _trained(without_it)
    assert any(not np.array_equal(a[k], b[k]) for k in a), f"{with_it} trains exactly like {without_it}"


def test_every_setting_and_argument_has_a_case():
    assert set(CASES) == set(TRAIN_KEYS)
    assert {k for args in OPTIMIZERS.values() for k in args} <= set(OPTIMIZER_VALUES)
    assert {(s, a) for s, args in SCHEDULES.items() for a in args} == set(SCHEDULE_CASES)
    assert set(AUGMENT) == set(AUGMENT_VALUES)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(CASES))
def test_setting_changes_the_result(key):
    _assert_changes(*CASES[key])


@pytest.mark.slow
@pytest.mark.parametrize("name,arg", [(n, a) for n, args in OPTIMIZERS.items() for a in args])
def test_optimizer_argument_changes_the_result(name, arg):
    _assert_changes(*_optimizer_case(name, arg))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"sgd"}))
def test_each_optimizer_trains_differently_from_sgd(name):
    _assert_changes({"optimizer": f"{name}(lr = 0.1)"}, {})


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SCHEDULE_CASES))
def test_schedule_argument_changes_the_result(case):
    with_it, without_it = SCHEDULE_CASES[case]
    _assert_changes({"schedule": with_it}, {"schedule": without_it})


@pytest.mark.slow
@pytest.mark.parametrize("arg", sorted(AUGMENT))
def test_augment_argument_changes_the_result(arg):
    _assert_changes({"augment": f"augment({arg} = {AUGMENT_VALUES[arg]})"}, {})


# ---- what is in effect, without training -------------------------------------------------------

def _config(settings: dict, **flags) -> TrainConfig:
    net, _ = compile_source(_source(settings))
    return TrainConfig.from_network(net, **flags)


def test_sgd_momentum_is_momentum_sgd_and_plain_sgd_has_none():
    assert _config({"optimizer": "sgd(lr = 0.05, momentum = 0.9)"}).optimizer_args["momentum"] == 0.9
    assert _config({"optimizer": "sgd"}).optimizer_args["momentum"] == 0.0
    assert _config({"optimizer": "momentum"}).optimizer_args["momentum"] == 0.9
    assert _config({"optimizer": "sgd", "momentum": "0.8"}).optimizer_args["momentum"] == 0.8


def test_the_run_line_shows_every_setting_in_effect():
    cfg = _config({"optimizer": "sgd(lr = 0.05, momentum = 0.9)", "batch": "64", "epochs": "10"})
    assert cfg.describe() == ("sgd lr 0.05 momentum 0.9 nesterov false weight_decay 0, schedule constant, "
                              "no clipping, batch 64, 10 epochs, seed 0")
    cfg = _config({"optimizer": "adam(lr = 3e-3)", "schedule": "step(step_size = 5)", "clip_grad_norm": "5",
                   "augment": "augment(crop = 2)"})
    assert cfg.describe() == ("adam lr 0.003 beta1 0.9 beta2 0.999 eps 1e-08 weight_decay 0, "
                              "schedule step step_size 5 gamma 0.1, clip_grad_norm 5, augment crop 2, "
                              "batch 32, 10 epochs, seed 0")


def test_a_flag_optimizer_keeps_what_it_takes_and_says_what_it_drops():
    cfg = _config({"optimizer": "sgd(lr = 0.05, momentum = 0.9)"}, optimizer="adam")
    assert cfg.lr == 0.05 and "momentum" not in cfg.optimizer_args
    assert "(not taken by adam: momentum 0.9)" in cfg.describe()
    cfg = _config({"optimizer": "sgd(lr = 0.05, momentum = 0.5)"}, optimizer="nesterov")
    assert cfg.optimizer_args["momentum"] == 0.5 and not cfg.dropped


def test_a_flag_the_optimizer_does_not_take_is_refused():
    with pytest.raises(RuntimeUserError, match="`adam` takes no argument `momentum`"):
        _config({"optimizer": "adam"}, momentum=0.9)
    with pytest.raises(RuntimeUserError, match="unknown training option `momentun`"):
        _config({"optimizer": "sgd"}, momentun=0.9)
    with pytest.raises(RuntimeUserError, match="unknown optimizer 'lamb'"):
        _config({}, optimizer="lamb")


def _errors(settings: dict) -> list:
    with pytest.raises(CompileError) as e:
        compile_source(_source(settings))
    return [(d.span.line, d.span.col, d.message) for d in e.value.diagnostics if d.severity == "error"]


def test_arguments_an_optimizer_does_not_take_are_refused_where_written():
    # line 8 is the first setting: BASE has none here, so the settings start the section.
    assert _errors({"optimizer": "adam(lr = 1e-3, momentum = 0.9)"}) == [
        (8, 29, "`adam` has no argument `momentum`")]
    assert _errors({"optimizer": "adam", "momentum": "0.9"}) == [(9, 3, "`adam` takes no `momentum`")]
    assert _errors({"momentum": "0.9"}) == [(8, 3, "`adam` (the default optimizer) takes no `momentum`")]
    assert _errors({"optimizer": "sgd(nesterov = true)"}) == [
        (8, 17, "`nesterov = true` needs a momentum above 0")]
    assert _errors({"optimizer": "sgd(lr = 0.1)", "lr": "0.2"}) == [
        (9, 3, "`lr` is given twice: as a training setting and as an argument of `sgd`")]
    assert _errors({"optimizer": "sgd(lr = 0.1, lr = 0.2)"}) == [(8, 27, "`sgd` argument `lr` is given twice")]
    assert _errors({"optimizer": "nesterov(momentum = 0)"}) == [
        (8, 22, "`nesterov` argument `momentum` takes a number above 0 and below 1, found `0`")]
    assert _errors({"schedule": "cosine(gamma = 0.5)"}) == [(8, 19, "`cosine` has no argument `gamma`")]


def test_runtime_refuses_what_the_optimizer_does_not_take():
    params = {"w": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match="takes no argument `momentum`"):
        make_optimizer("adam", params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="takes no argument `gamma`"):
        make_schedule("cosine", 0.1, epochs=3, gamma=0.5)
    with pytest.raises(ValueError, match="nesterov = true needs a momentum above 0"):
        make_optimizer("sgd", params, lr=0.1, nesterov=True)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_with_momentum_matches_torch(nesterov):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)).astype(np.float32)}
    tensor = torch.tensor(params["w"], requires_grad=True)
    ours = make_optimizer("sgd", params, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    theirs = torch.optim.SGD([tensor], lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    for _ in range(4):
        g = rng.standard_normal((4, 3)).astype(np.float32)
        ours.step({"w": g}, 0.05)
        tensor.grad = torch.tensor(g)
        theirs.step()
    np.testing.assert_allclose(params["w"], tensor.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adam"])
def test_other_optimizer_arguments_match_torch(name):
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((4, 3)).astype(np.float32)}
    tensor = torch.tensor(params["w"], requires_grad=True)
    if name == "adagrad":
        ours = make_optimizer(name, params, lr=0.05, eps=0.1)
        theirs = torch.optim.Adagrad([tensor], lr=0.05, eps=0.1)
    elif name == "rmsprop":
        ours = make_optimizer(name, params, lr=0.05, alpha=0.5, eps=0.1)
        theirs = torch.optim.RMSprop([tensor], lr=0.05, alpha=0.5, eps=0.1)
    else:
        ours = make_optimizer(name, params, lr=0.05, beta1=0.5, beta2=0.6, eps=0.1)
        theirs = torch.optim.Adam([tensor], lr=0.05, betas=(0.5, 0.6), eps=0.1)
    for _ in range(4):
        g = rng.standard_normal((4, 3)).astype(np.float32)
        ours.step({"w": g}, 0.05)
        tensor.grad = torch.tensor(g)
        theirs.step()
    np.testing.assert_allclose(params["w"], tensor.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_the_documented_optimizers_are_the_ones_defined():
    """docs/LANGUAGE.md's optimizer table lists every optimizer with its arguments and defaults."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "LANGUAGE.md").read_text()
    table = text.split("| optimizer | arguments")[1].split("\n\n")[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)`", table, re.M))
    value = lambda text: {"true": True, "false": False}.get(text, None) if text.isalpha() else float(text)  # noqa: E731
    documented = {name: {k: value(v) for k, v in re.findall(r"(\w+) = ([\w.+-]+)", args)} for name, args in rows.items()}
    assert documented == {name: {k: a.default for k, a in args.items()} for name, args in OPTIMIZERS.items()}
