"""`dslc run`'s safety around signals, output paths and checkpoint directories.

- output paths are checked (directories created) before any training;
- a checkpoint directory holding a checkpoint is not overwritten without --resume/--overwrite,
  and a lock keeps two runs out of one directory;
- a resume with other settings or data is refused, naming the setting;
- SIGINT/SIGTERM at random times, then --resume, end bit for bit as an uninterrupted run;
- kill -9 during checkpoint writes leaves the previous or the new checkpoint, loadable;
- Ctrl-C during a cold kernel compile prints no traceback, and the compile-ahead helper never
  outlives its parent.
"""
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime.checkpoint import load_checkpoint
from dslc.runtime.data import Dataset, load_dataset
from dslc.runtime.errors import CheckpointError, RuntimeUserError
from dslc.runtime.model import Model
from dslc.runtime.train import CHECKPOINT_NAME, LOCK_NAME, CheckpointDir, TrainConfig, Trainer, check_output_file

ROOT = Path(__file__).resolve().parents[1]

TINY = """
network tiny(classes = 10)
input image: [1, 8, 8]
input label: int
logits = image -> conv(4, 3x3, pad = 1) -> batchnorm -> relu -> maxpool(2x2) -> flatten
  -> dense(16) -> relu -> dropout(0.3) -> dense(classes)
loss cross_entropy(logits, label)
train { optimizer sgd(lr = 0.05, momentum = 0.9) batch 16 epochs 4 augment(brightness = 0.1) }
"""


def dslc_command():
    exe = Path(sys.executable).with_name("dslc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dslc.cli"]


def run_dslc(*args, env=None, timeout=600):
    return subprocess.run(dslc_command() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.net"
    path.write_text(TINY)
    return path


def _trainer(directory=None, **cfg_flags):
    net, _ = compile_source(Source("tiny.net", TINY))
    cfg = TrainConfig.from_network(net, **cfg_flags)
    train, val = load_dataset("digits", x_shape=(1, 8, 8), x_dtype="float32", y_shape=(), y_dtype="int64",
                              limit=80, classes=10)
    return Trainer(Model(net, seed=0), cfg, train, val, progress=False, log=lambda s: None,
                   checkpoint_dir=str(directory) if directory else None, data_info={"data": "digits", "limit": 80})


def assert_same_checkpoints(a_path, b_path):
    (a, a_meta), (b, b_meta) = load_checkpoint(a_path), load_checkpoint(b_path)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), f"array {k} differs"
    assert [h["val_loss"] for h in a_meta["history"]] == [h["val_loss"] for h in b_meta["history"]]


# ---- checkpoint directories and output paths (in process, no training) ------------------------
def test_an_existing_checkpoint_needs_resume_or_overwrite(tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"another run's checkpoint")
    with pytest.raises(RuntimeUserError, match="would overwrite") as e:
        CheckpointDir(tmp_path)
    assert "--resume" in e.value.hint and "--overwrite" in e.value.hint
    CheckpointDir(tmp_path, overwrite=True).release()
    CheckpointDir(tmp_path, resume=True).release()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == b"another run's checkpoint"


def test_resume_needs_a_checkpoint_to_resume(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        CheckpointDir(tmp_path / "fresh", resume=True)


def test_two_claims_of_one_directory_in_one_process(tmp_path):
    with CheckpointDir(tmp_path / "ck"):
        with pytest.raises(RuntimeUserError, match="another dslc run is using"):
            CheckpointDir(tmp_path / "ck")
    CheckpointDir(tmp_path / "ck").release()    # free again once released


def test_a_directory_locked_by_another_process_is_refused(tmp_path):
    ck = tmp_path / "ck"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"os.makedirs({str(ck)!r}, exist_ok=True)\n"
        f"f = open(os.path.join({str(ck)!r}, {LOCK_NAME!r}), 'a')\n"
        "fcntl.lockf(f.fileno(), fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeUserError, match="another dslc run is using") as e:
            CheckpointDir(ck)
        assert "another --checkpoint directory" in e.value.hint
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    CheckpointDir(ck).release()


def test_temp_files_of_killed_writes_are_removed_when_the_directory_is_claimed(tmp_path):
    stale = tmp_path / f".{CHECKPOINT_NAME}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "keep.tmp"
    other.write_bytes(b"not ours")
    CheckpointDir(tmp_path).release()
    assert not stale.exists() and other.exists()


def test_checkpoint_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RuntimeUserError, match="is not a directory"):
        CheckpointDir(tmp_path / "f")


def test_metrics_path_is_checked_and_its_directory_created(tmp_path):
    check_output_file(tmp_path / "new" / "dir" / "m.jsonl")
    assert (tmp_path / "new" / "dir" / "m.jsonl").exists()
    with pytest.raises(RuntimeUserError, match="is a directory"):
        check_output_file(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RuntimeUserError, match="cannot write"):
        check_output_file(tmp_path / "file" / "m.jsonl")


def test_contradictory_flags_are_usage_errors(tmp_path, tiny, capsys):
    assert main(["run", str(tiny), "--checkpoint", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert main(["run", str(tiny), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "give one of them" in err and "--overwrite needs --checkpoint" in err


def test_bad_metrics_path_fails_before_any_training(tmp_path, tiny, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["run", str(tiny), "--quiet", "--metrics", str(tmp_path / "file" / "m.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "cannot write --metrics" in err and "training tiny" not in err


@pytest.mark.parametrize("flags,named", [({"batch": 8}, "--batch 16"), ({"seed": 5}, "--seed 0"),
                                         ({"lr": 0.1}, "--lr 0.05"), ({"optimizer": "adam"}, "--optimizer sgd")])
def test_resume_with_other_settings_names_the_setting(tmp_path, flags, named):
    _trainer(tmp_path).save()
    with pytest.raises(CheckpointError, match=named):
        _trainer(tmp_path, **flags).resume()
    _trainer(tmp_path, epochs=9).resume()      # training longer is allowed


def test_resume_on_other_data_names_it(tmp_path):
    _trainer(tmp_path).save()
    t = _trainer(tmp_path)
    t.data_info["limit"] = 200
    with pytest.raises(CheckpointError, match="--limit 80; this run has --limit 200"):
        t.resume()


# ---- training (in process) -------------------------------------------------------------------
@pytest.mark.slow
def test_validation_nan_is_divergence(tmp_path):
    t = _trainer(epochs=1)
    x = t.val.x.copy()
    x[0, 0, 0, 0] = np.nan
    t.val = Dataset(x, t.val.y, "digits", 10)
    with pytest.raises(RuntimeUserError, match="training diverged: after epoch 1 the validation loss is nan") as e:
        t.fit()
    assert "NaN" in e.value.hint


@pytest.mark.slow
def test_model_fit_without_progress_prints_nothing(capsys):
    net, _ = compile_source(Source("tiny.net", TINY))
    train, _ = load_dataset("digits", x_shape=(1, 8, 8), x_dtype="float32", y_shape=(), y_dtype="int64",
                            limit=48, classes=10)
    history = Model(net, seed=0).fit(train.x, train.y, epochs=2, batch=16, progress=False)
    assert len(history) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# ---- the dslc command (subprocesses) ---------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_and_metrics_in_one_fresh_directory(tmp_path, tiny):
    ck = tmp_path / "ck"
    r = run_dslc("run", tiny, "--data", "digits", "--limit", "80", "--epochs", "1", "--quiet",
                 "--checkpoint", ck, "--metrics", ck / "m.jsonl")
    assert r.returncode == 0, r.stderr
    assert (ck / CHECKPOINT_NAME).exists() and len((ck / "m.jsonl").read_text().splitlines()) == 1
    again = run_dslc("run", tiny, "--data", "digits", "--limit", "80", "--epochs", "1", "--quiet", "--checkpoint", ck)
    assert again.returncode == 1 and "already holds a training checkpoint" in again.stderr
    assert "Traceback" not in again.stderr


class _Run:
    """A `dslc run` in its own process group (as a shell job: Ctrl-C reaches the whole group),
    its stderr collected by a thread, with an event set when training starts."""

    def __init__(self, args, env=None):
        self.proc = subprocess.Popen(dslc_command() + [str(a) for a in args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
        self.err, self.training = [], threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.err.append(line)
            if line.startswith("training "):
                self.training.set()
        self.training.set()

    def signal(self, signum):
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self):
        rc = self.proc.wait(timeout=600)
        self._reader.join(timeout=60)
        self.proc.stdout.close()
        return rc, "".join(self.err)


def _train_args(tiny, ck):
    return ["run", tiny, "--data", "digits", "--limit", "400", "--quiet", "--checkpoint", ck]


@pytest.mark.slow
def test_real_signals_at_random_times_then_resume_equal_an_uninterrupted_run(tmp_path, tiny):
    """Several runs stopped by SIGINT or SIGTERM at a random moment of training, each resumed
    (as often as it takes) to the end: every checkpoint array equals the uninterrupted run's."""
    straight = tmp_path / "straight"
    t0 = time.monotonic()
    r = run_dslc(*_train_args(tiny, straight))
    assert r.returncode == 0, r.stderr
    span = time.monotonic() - t0          # a scale for the random delays only; nothing is timed
    seed = int(os.environ.get("DSLC_SIGNAL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    for trial in range(3):
        ck = tmp_path / f"trial{trial}"
        signum = (signal.SIGINT, signal.SIGTERM)[trial % 2]
        run = _Run(_train_args(tiny, ck))
        run.training.wait(timeout=600)
        delay = rng.uniform(0.0, span * 0.6)
        time.sleep(delay)
        run.signal(signum)
        rc, err = run.wait()
        what = f"seed {seed}, trial {trial}, {signum.name} {delay:.2f} s into training: rc {rc}\n{err}"
        assert rc in (0, 128 + signum), what
        assert "Traceback" not in err and "internal error" not in err, what
        if rc:      # stopped in training, or (just after it) on the way out
            assert "continue with --resume" in err or "interrupted" in err or "terminated" in err, what
        for _ in range(3):
            if rc == 0:
                break
            flags = ["--resume"] if (ck / CHECKPOINT_NAME).exists() else []
            r = run_dslc(*_train_args(tiny, ck), *flags)
            rc = r.returncode
            assert rc == 0, what + r.stderr
        assert_same_checkpoints(straight / CHECKPOINT_NAME, ck / CHECKPOINT_NAME)


@pytest.mark.slow
def test_a_second_signal_stops_at_once_leaving_a_loadable_checkpoint(tmp_path, tiny):
    ck = tmp_path / "ck"
    run = _Run(_train_args(tiny, ck) + ["--epochs", "40"])
    run.training.wait(timeout=600)
    deadline = time.monotonic() + 300
    while not (ck / CHECKPOINT_NAME).exists() and time.monotonic() < deadline:   # after epoch 1's save
        time.sleep(0.1)
    run.signal(signal.SIGINT)
    run.signal(signal.SIGINT)
    rc, err = run.wait()
    assert rc == 130 and "Traceback" not in err, err
    load_checkpoint(ck / CHECKPOINT_NAME)
    assert not [f for f in os.listdir(ck) if f.endswith(".tmp")]


_WRITER = """
import sys
import numpy as np
from dslc.runtime.checkpoint import save_checkpoint
path = sys.argv[1]
for version in range(1, 10**6):
    arrays = {f"a{i}": np.full(200_000, version, dtype=np.float32) for i in range(8)}
    save_checkpoint(path, arrays, {"version": version})
    print(version, flush=True)
"""


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_leaves_the_previous_or_the_new_one(tmp_path):
    """A process writing checkpoints in a loop, killed at random moments: the file is always
    whole, and holds the last version reported written or the one being written."""
    path = tmp_path / "ck" / CHECKPOINT_NAME
    path.parent.mkdir()
    rng = random.Random(int(os.environ.get("DSLC_SIGNAL_SEED", random.randrange(10**6))))
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()          # at least one checkpoint on disk
        assert first.strip(), "the writer produced nothing"
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        rest = proc.stdout.read()
        proc.wait()
        done = int((first + rest).split()[-1])
        arrays, meta = load_checkpoint(path)
        assert meta["version"] in (done, done + 1), (trial, done, meta)
        assert all(np.all(a == meta["version"]) for a in arrays.values())
    CheckpointDir(path.parent, overwrite=True).release()      # the next run clears the temp files
    assert [f for f in os.listdir(path.parent) if f.endswith(".tmp")] == []


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the compile-ahead helper is Linux only")
@pytest.mark.parametrize("how", ["ctrl_c", "kill_9"])
def test_stopping_a_cold_first_run_leaves_no_traceback_and_no_helper(tmp_path, tiny, how):
    """With an empty kernel cache (its own NUMBA_CACHE_DIR) and the compile-ahead helper on, stop
    the run while it compiles: Ctrl-C exits 130 without a traceback; either way the helper ends."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), DSLC_COMPILE_AHEAD="1")
    run = _Run(["run", tiny, "--data", "digits", "--limit", "80", "--quiet", "--checkpoint", tmp_path / "ck"], env=env)
    run.training.wait(timeout=600)
    helpers = []
    deadline = time.monotonic() + 120
    while not helpers and time.monotonic() < deadline and run.proc.poll() is None:
        helpers = _children(run.proc.pid)
        time.sleep(0.05)
    assert helpers, "no compile-ahead helper started"
    if how == "ctrl_c":
        run.signal(signal.SIGINT)
    else:
        run.proc.kill()
    rc, err = run.wait()
    if how == "ctrl_c":
        assert rc in (0, 130) and "Traceback" not in err, err
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in helpers), "the compile-ahead helper outlived its parent"
