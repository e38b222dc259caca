"""Data-parallel training on MPI (`mpiexec -n 2 dslc run ...`, runtime/distributed.py).

Two ranks with global batch B must end where one process with batch B ends, up to the order of
float32 sums: the same samples per step, dropout masks and augmentation draws per sample, the
averaged gradient equal to the global mean. A resume with the same process count is bit-exact;
a resume with another count, a rank whose command differs, and a rank that fails or dies are
refused or end the job with a message that names the rank.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dslc.runtime.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BIN) or shutil.which("mpiexec")
DSLC = os.path.join(BIN, "dslc")
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(MPIEXEC is None or not HAVE_MPI4PY,
                               reason="needs mpiexec and mpi4py (pip install '.[mpi]')")
# Kernels compile on first use, per batch size: the first run of a size can take minutes.
TIMEOUT = 900

# A net with dropout and augmentation (crop, flip, brightness) and no batchnorm: every random
# draw of training, and per-rank batch statistics play no part.
DROPNET = """
network dropnet(classes = 10)
input image: [1, 16, 16]
input label: int
logits = image
  -> conv1: conv(8, 3x3, pad = 1) -> relu -> maxpool(2x2)
  -> flatten
  -> fc1: dense(32) -> relu -> dropout(0.3)
  -> fc2: dense(classes)
loss cross_entropy(logits, label)
train {
  optimizer sgd(lr = 0.05, momentum = 0.9)
  augment(crop = 2, flip = true, brightness = 0.1)
  epochs 2
  batch 32
  seed 0
}
"""


def _env():
    env = dict(os.environ)
    env.pop("NUMBA_NUM_THREADS", None)
    return env


def _run(cmd, cwd, timeout=TIMEOUT):
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train(tmp_path, ranks, name, *flags):
    net = tmp_path / "drop.net"
    net.write_text(DROPNET)
    cmd = [DSLC, "run", str(net), "--data", "digits", "--limit", "400", "--quiet",
           "--checkpoint", str(tmp_path / name), *flags]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return _run(cmd, tmp_path)


def _params(path):
    arrays, meta = load_checkpoint(str(path / "last.ckpt"))
    return {k: v for k, v in arrays.items() if k.startswith(("param/", "opt/"))}, meta


@needs_mpi
def test_two_ranks_equal_one_process_and_resume(tmp_path):
    one = _train(tmp_path, 1, "one")
    assert one.returncode == 0, one.stderr
    two = _train(tmp_path, 2, "two", "--metrics", str(tmp_path / "m.jsonl"))
    assert two.returncode == 0, two.stderr
    assert "2 processes x 1 thread" in two.stderr
    assert two.stdout.count("done:") == 1                  # rank 0 alone speaks
    a, meta_a = _params(tmp_path / "one")
    b, meta_b = _params(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert meta_b["ranks"] == 2
    for ra, rb in zip(meta_a["history"], meta_b["history"]):
        assert rb["train_accuracy"] == ra["train_accuracy"] and rb["val_accuracy"] == ra["val_accuracy"]
        assert abs(rb["train_loss"] - ra["train_loss"]) < 1e-5 and abs(rb["val_loss"] - ra["val_loss"]) < 1e-5
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2

    # One epoch, then a resume to two: bit for bit the uninterrupted two-rank run.
    half = _train(tmp_path, 2, "half", "--epochs", "1")
    assert half.returncode == 0, half.stderr
    resumed = _train(tmp_path, 2, "half", "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    c, _ = _params(tmp_path / "half")
    for k in b:
        np.testing.assert_array_equal(c[k], b[k], err_msg=k)

    # Another process count cannot resume it.
    other = _train(tmp_path, 1, "half", "--epochs", "3", "--resume")
    assert other.returncode == 1
    assert "saved by a run of 2 processes; this run has 1 process" in other.stderr
    assert "mpiexec -n 2" in other.stderr


def _same_run(tmp_path, net, *flags, rtol=1e-5, atol=1e-6):
    """`net` trained by one process and by two (with `flags` on both): the same parameters.

    One thread per process in both runs: the thread count changes the order in which a conv
    sums its weight gradient over samples (per-worker partials), and a few dozen SGD steps on
    the digits grow that rounding to ~1e-2 (digits_cnn, one process at 1 and 2 threads, im2col
    for conv2), which would hide what this compares: the data-parallel arithmetic."""
    for ranks in (1, 2):
        cmd = [DSLC, "run", net, "--quiet", "--threads", "1", "--checkpoint", str(tmp_path / f"k{ranks}"), *flags]
        r = _run([MPIEXEC, "-n", "2", *cmd] if ranks > 1 else cmd, ROOT)
        assert r.returncode == 0, r.stderr
    a, _ = _params(tmp_path / "k1")
    b, _ = _params(tmp_path / "k2")
    for k in a:
        if k.startswith("param/"):
            np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)


@needs_mpi
def test_sync_batchnorm_equals_one_process(tmp_path):
    """digits_cnn (batchnorm, dropout) under --sync-batchnorm. Plain SGD: the conv biases before
    batchnorm have a gradient of zero up to rounding, which Adam would scale up to full steps."""
    _same_run(tmp_path, "models/digits_cnn.net", "--data", "digits", "--limit", "400", "--epochs", "2",
              "--optimizer", "sgd", "--lr", "0.05", "--sync-batchnorm")


@needs_mpi
def test_char_lstm_equals_one_process(tmp_path):
    _same_run(tmp_path, "models/charlstm.net", "--data", "chars", "--limit", "320", "--epochs", "1",
              "--set", "hidden=32", "--set", "embedding=16", "--set", "T=16", rtol=1e-4, atol=1e-5)


@needs_mpi
def test_mismatched_command_is_refused(tmp_path):
    net = tmp_path / "drop.net"
    net.write_text(DROPNET)
    base = [DSLC, "run", str(net), "--data", "digits", "--limit", "200", "--quiet", "--epochs", "1"]
    r = _run([MPIEXEC, "-n", "1", *base, "--checkpoint", str(tmp_path / "c"), "--lr", "0.05", ":",
              "-n", "1", *base, "--checkpoint", str(tmp_path / "c"), "--lr", "0.01"], tmp_path, timeout=300)
    assert r.returncode != 0
    assert "differs from rank 0 in its flags" in r.stderr
    assert "Traceback" not in r.stderr


@needs_mpi
def test_failing_rank_ends_the_job(tmp_path):
    """Rank 1's data cannot be read: it says so with its rank and the job ends, rank 0 does not wait."""
    net = tmp_path / "drop.net"
    net.write_text(DROPNET)
    base = [DSLC, "run", str(net), "--limit", "200", "--quiet", "--epochs", "1", "--checkpoint", str(tmp_path / "c")]
    r = _run([MPIEXEC, "-n", "1", *base, "--data", "digits", ":", "-n", "1", *base, "--data",
              str(tmp_path / "missing.npz")], tmp_path, timeout=300)
    assert r.returncode != 0
    assert "rank 1: error:" in r.stderr and "missing.npz" in r.stderr
    assert "Traceback" not in r.stderr


@needs_mpi
def test_killed_rank_ends_the_job(tmp_path):
    """A rank killed by a signal: the launcher ends the job instead of rank 0 waiting in a collective."""
    net = tmp_path / "drop.net"
    net.write_text(DROPNET)
    kill = "import os, signal; from mpi4py import MPI; os.kill(os.getpid(), signal.SIGKILL)"
    r = _run([MPIEXEC, "-n", "1", DSLC, "run", str(net), "--data", "digits", "--limit", "200", "--quiet",
              "--epochs", "1", "--checkpoint", str(tmp_path / "c"), ":", "-n", "1", sys.executable, "-c", kill],
             tmp_path, timeout=300)
    assert r.returncode != 0        # within the timeout: rank 0 did not wait for the dead rank
    said = (r.stdout + r.stderr).lower()
    assert "signal 9" in said or "killed" in said or "terminat" in said, said
    assert not (tmp_path / "c" / "last.ckpt").exists()


@needs_mpi
def test_fit_with_comm_equals_one_process(tmp_path):
    """The Python API: net.fit(x, y, comm=MPI.COMM_WORLD) under mpiexec -n 2."""
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        from dslc.compiler import compile_source
        from dslc.diagnostics import Source
        from dslc.runtime.data import load_dataset
        from dslc.runtime.model import Model
        net, _ = compile_source(Source("drop.net", {DROPNET!r}))
        train, _ = load_dataset("digits", x_shape=(1, 16, 16), x_dtype="float32", y_shape=(), y_dtype="int64",
                                limit=256, classes=10, val_fraction=0)
        model = Model(net)
        comm = None
        if sys.argv[1] == "mpi":
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
        model.fit(train.arrays["x"], train.arrays["y"], epochs=1, batch=32, progress=False, comm=comm)
        if comm is None or comm.Get_rank() == 0:
            np.savez(sys.argv[2], **model.params)
    """))
    one = _run([sys.executable, str(script), "one", str(tmp_path / "one.npz")], ROOT)
    assert one.returncode == 0, one.stderr
    two = _run([MPIEXEC, "-n", "2", sys.executable, str(script), "mpi", str(tmp_path / "two.npz")], ROOT)
    assert two.returncode == 0, two.stderr
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_missing_mpi4py_is_a_usage_error(tmp_path):
    """Under a launcher's variables without mpi4py: exit 2, naming what to install."""
    shim = tmp_path / "shim" / "mpi4py"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('mpi4py is not installed (test)')\n")
    net = tmp_path / "drop.net"
    net.write_text(DROPNET)
    env = {**_env(), "PMI_SIZE": "2", "PMI_RANK": "0",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([DSLC, "run", str(net), "--data", "digits", "--limit", "100", "--epochs", "1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "pip install 'dslc[mpi]'" in r.stderr
    assert "Traceback" not in r.stderr


@needs_mpi
def test_buckets_start_during_the_backward_pass(monkeypatch):
    """The gradient average is started bucket by bucket as the backward pass makes gradients
    final, not after it: with small buckets the first allreduce begins while kernels are still
    to run, and the sums (over MPI's one-process COMM_SELF) are the gradients times the share."""
    from mpi4py import MPI

    from dslc.runtime import distributed
    from dslc.runtime.kernel_api import Context
    from dslc.runtime.model import Model
    from dslc.runtime.plan import Plan

    from . import test_plan

    monkeypatch.setattr(distributed, "BUCKET_BYTES", 2048)
    comm = distributed.MPICommunicator(MPI.COMM_SELF)
    model = Model(test_plan._compiled(), seed=0)
    plan = Plan(model.net, model._dev, model.device, 4, {}, True, set(model.trainable_names()))
    plan.set_inputs(test_plan._feeds())
    plan.forward(Context(training=True))
    average = comm.begin_gradient_average(plan.param_grads, 0.5, model.device, plan.gradient_order)
    started_at = []
    after_call = average.after_call

    def counting(final):
        after_call(final)
        started_at.extend([counting.calls] * (average.started - len(started_at)))
        counting.calls += 1
    counting.calls = 0
    average.after_call = counting
    plan.backward(Context(training=True), average)
    expected = {k: model.device.to_host(v).copy() * np.float32(0.5) for k, v in plan.param_grads.items()}
    average.finish()
    assert len(average.buckets) >= 3
    assert len(started_at) == len(average.buckets)
    assert started_at[0] < counting.calls - 1 and started_at == sorted(started_at)
    for k, v in expected.items():
        np.testing.assert_array_equal(model.device.to_host(plan.param_grads[k]), v, err_msg=k)


@needs_mpi
def test_eval_on_two_ranks_equals_one_process(tmp_path):
    """`mpiexec -n 2 dslc eval`: each rank scores half the data; the reduced loss, accuracy and
    confusion matrix are the one-process figures, printed once."""
    trained = _train(tmp_path, 1, "w", "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    cmd = [DSLC, "eval", str(tmp_path / "drop.net"), "--weights", str(tmp_path / "w" / "last.ckpt"),
           "--data", "digits", "--format", "json"]
    one = _run(cmd, tmp_path)
    two = _run([MPIEXEC, "-n", "2", *cmd, "--batch", "30"], tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert len(two.stdout.strip().splitlines()) == 1
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["samples"] == a["samples"] and b["accuracy"] == a["accuracy"] and b["confusion"] == a["confusion"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


@pytest.mark.parametrize("command", [["predict", "m.net", "--weights", "w.ckpt", "x.npz"],
                                     ["export", "m.net", "--weights", "w.ckpt", "-o", "m.onnx"],
                                     ["run", "m.net", "--lr-find"]])
def test_one_process_commands_refuse_a_launcher(tmp_path, command):
    """Every rank would redo a predict, an export or a range test whole: refused, exit 2."""
    env = {**_env(), "PMI_SIZE": "2"}
    r = subprocess.run([DSLC, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "runs in one process" in r.stderr and "without mpiexec/srun" in r.stderr
    assert "Traceback" not in r.stderr
