"""Reporting what Numba compiles (runtime/compile_watch.py) and the trainer's use of it: a cold
first step says what it is doing, on the bar and in one line afterwards; steps that compile
nothing say nothing."""
import numba
import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.compile_watch import CompileWatch
from dslc.runtime.data import load_dataset
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer

NET = """
network mlp
input image: [1, 8, 8]
input label: int
logits = image -> flatten -> dense(12) -> relu -> dense(10)
loss cross_entropy(logits, label)
train { optimizer sgd(lr = 0.05) batch 50 epochs 2 }
"""


def _fresh_function():
    """A jitted function no process has compiled (cache=False): calling it compiles it (and,
    in some Numba versions, their implementation of the numpy sum inside it)."""
    @numba.njit(cache=False)
    def dslc_test_kernel(x):
        return np.sum(x) + 1.0
    return dslc_test_kernel


@pytest.mark.slow
def test_counts_what_compiles_and_names_only_dslcs_own_functions():
    started = []
    kernel = _fresh_function()
    with CompileWatch(lambda name, compiled: started.append((name, compiled))).installed() as watch:
        kernel(np.ones(3))
        kernel(np.ones(4))          # the same types: compiled already
    # the kernel, and Numba's implementation of np.sum where it compiles one (0.68 does, 0.61
    # does not): counted, never named
    assert watch.compiled >= 1
    assert started == [("dslc_test_kernel", 0)]
    counted = watch.compiled
    kernel(np.ones(3, np.int64))    # new types compile again, but the watch is gone
    assert watch.compiled == counted


def _trainer(progress, lines):
    net, _ = compile_source(Source("mlp.net", NET))
    model = Model(net, seed=0)
    cfg = TrainConfig.from_network(net)
    train, val = load_dataset("digits", x_shape=(1, 8, 8), x_dtype="float32", y_shape=(), y_dtype="int64",
                              limit=150, classes=10)
    return Trainer(model, cfg, train, val, progress=progress, log=lines.append)


@pytest.mark.slow
def test_a_step_that_compiles_says_so_once(monkeypatch):
    """The first step compiles (a function no process has compiled stands in for a cold kernel
    cache): one line says how many functions and how long; later steps, and evaluation, whose
    kernels are compiled by then, say nothing. Without progress, nothing is said."""
    for progress in (True, False):
        lines = []
        trainer = _trainer(progress, lines)
        kernel = _fresh_function()
        step = trainer._step

        def compiling_step(feeds, lr, kernel=kernel, step=step):
            kernel(feeds["image"])
            return step(feeds, lr)

        trainer.model.forward(training=True, image=trainer.train.x[:50], label=trainer.train.y[:50])
        trainer.model.forward(training=False, image=trainer.train.x[:50], label=trainer.train.y[:50])
        monkeypatch.setattr(trainer, "_step", compiling_step)
        trainer.fit()
        said = [line for line in lines if "compiled" in line]
        if progress:
            assert len(said) == 1 and said[0].startswith("training step: compiled ")
            assert "kernel functions in" in said[0] and "later runs load them from the cache" in said[0]
        else:
            assert said == []
