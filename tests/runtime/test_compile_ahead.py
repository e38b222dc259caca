"""The compile-ahead helper (runtime/compile_ahead.py): what it compiles is what a plan's first
step needs, it stays silent, and it stops when the first step is done. Each test runs plans in
fresh processes on an empty Numba cache of its own, since the test process has every kernel
compiled already."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dslc.runtime import compile_ahead

REPO_ROOT = Path(__file__).resolve().parents[2]

# A small network whose kernels compile in seconds: dense, a fused relu, batchnorm, softmax
# cross-entropy.
SCRIPT = r'''
import gc, json, os, signal, sys, time
import numpy as np
from numba.core.registry import CPUDispatcher
from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.kernel_api import Context
from dslc.runtime.model import Model
from dslc.runtime.plan import Plan

NET = """
network mlp
input x: [6]
input label: int
logits = x -> dense(8) -> relu -> batchnorm -> dense(3)
loss cross_entropy(logits, label)
"""
net, _ = compile_source(Source("mlp.net", NET))
model = Model(net)
plan = Plan(model.net, model._dev, model.device, 4, {}, True, set(model.trainable_names()))
helper = plan._compile_helper
report = {"helper": helper is not None}
if sys.argv[1] == "step":
    rng = np.random.default_rng(0)
    plan.set_inputs({"x": rng.standard_normal((4, 6)).astype(np.float32),
                     "label": rng.integers(0, 3, 4).astype(np.int64)})
    plan.forward(Context(training=True))
    plan.backward(Context(training=True))
    report["helper_dropped"] = plan._compile_helper is None
    report["loss"] = float(plan.loss_value())
    dispatchers = [d for d in gc.get_objects() if isinstance(d, CPUDispatcher)]
    report["compiled"] = sorted(d.py_func.__qualname__ for d in dispatchers if d.stats.cache_misses)
    report["loaded"] = sorted(d.py_func.__qualname__ for d in dispatchers if d.stats.cache_hits)
if sys.argv[1] == "interrupt":     # Ctrl-C, which reaches the whole process group
    try:
        os.killpg(os.getpgid(0), signal.SIGINT)
        time.sleep(300)             # the KeyboardInterrupt comes first
    except KeyboardInterrupt:
        report["interrupted"] = True
if helper is not None:
    report["helper_exited"] = helper.wait(timeout=300)
print(json.dumps(report))
'''


def _run(mode, cache_dir, ahead):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), DSLC_COMPILE_AHEAD="1" if ahead else "0")
    # a session of its own: the interrupt test signals its whole process group
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900, start_new_session=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compile-ahead forks: Linux only")
def test_the_helper_compiles_what_the_first_step_needs(tmp_path):
    """A helper left to finish on an empty cache, with no step run: a later process's first
    step then loads every kernel from the cache and compiles none. The helper writes nothing
    to the terminal."""
    report, done = _run("build", tmp_path, ahead=True)
    assert report == {"helper": True, "helper_exited": True}
    assert done.stdout.strip() == json.dumps(report) and done.stderr == ""
    report, _ = _run("step", tmp_path, ahead=False)
    assert report["compiled"] == []
    assert report["loaded"]                     # the dense, batchnorm and loss kernels at least


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compile-ahead forks: Linux only")
def test_the_helper_stops_after_the_first_step(tmp_path):
    """Parent and helper compiling at once on an empty cache: the step's result is that of a
    process alone, the plan lets the helper go after its first complete step, and the helper
    exits. With the cache warm, a helper still starts and finds nothing to do."""
    alone, _ = _run("step", tmp_path / "alone", ahead=False)
    report, done = _run("step", tmp_path / "both", ahead=True)
    assert report["helper"] and report["helper_dropped"] and report["helper_exited"]
    assert report["loss"] == alone["loss"]
    assert done.stderr == ""
    warm, _ = _run("step", tmp_path / "both", ahead=True)
    assert warm["helper_exited"] and warm["compiled"] == []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compile-ahead forks: Linux only")
def test_ctrl_c_ends_the_helper(tmp_path):
    """Ctrl-C while the helper compiles: the parent gets its KeyboardInterrupt, the helper
    stops there (a later first step finds kernels left to compile: the helper did not go on
    to the end) and leaves no half-written file in the kernel cache."""
    report, _ = _run("interrupt", tmp_path, ahead=True)
    assert report == {"helper": True, "interrupted": True, "helper_exited": True}
    assert not [f for f in tmp_path.rglob("*") if ".tmp." in f.name]
    later, _ = _run("step", tmp_path, ahead=False)
    assert later["compiled"]


def test_off_by_environment(monkeypatch):
    """DSLC_COMPILE_AHEAD=0 (as in the test suite) starts no helper."""
    monkeypatch.setenv("DSLC_COMPILE_AHEAD", "0")
    assert not compile_ahead.enabled()
    assert compile_ahead.start(object()) is None


def test_no_helper_where_fork_fails(monkeypatch):
    """A process that may not fork (a limit, a sandbox) compiles alone: the plan gets no helper."""
    monkeypatch.setenv("DSLC_COMPILE_AHEAD", "1")

    def refuse():
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refuse)
    assert compile_ahead.start(object()) is None


def test_the_parent_waits_while_the_helper_compiles_that_kernel():
    """HelperProgress: asked about the kernel the helper has started and not ended, the parent
    waits until its end line; about any other kernel, or once the pipe is closed, not at all."""
    read_end, write_end = os.pipe()
    progress = compile_ahead.HelperProgress(read_end)
    try:
        os.write(write_end, b"s aaaa\ne aaaa\ns bbbb\n")
        progress.wait_while_compiling("cccc")           # another kernel: at once
        assert progress.compiling == "bbbb"
        ended = []

        def helper_ends_it():
            ended.append(True)
            os.write(write_end, b"e bb")                # a line may arrive in pieces
            os.write(write_end, b"bb\ns cccc\n")

        threading.Timer(0.2, helper_ends_it).start()
        progress.wait_while_compiling("bbbb")
        assert ended and progress.compiling == "cccc"
        os.close(write_end)                             # the helper exits
        write_end = None
        progress.wait_while_compiling("cccc")
        assert progress.fd is None and progress.compiling is None
        assert progress not in compile_ahead._listening
    finally:
        progress.close()
        if write_end is not None:
            os.close(write_end)


def test_waiting_has_a_limit():
    """A helper that never says it ended (stuck) holds the parent for `limit` seconds at most."""
    read_end, write_end = os.pipe()
    progress = compile_ahead.HelperProgress(read_end)
    try:
        os.write(write_end, b"s aaaa\n")
        progress.wait_while_compiling("aaaa", limit=0.1)
        assert progress.compiling == "aaaa"
    finally:
        progress.close()
        os.close(write_end)
