"""Hostile and careless input, case by case: each ends in a diagnostic that names the problem
and a fix (`help:`), with exit 1 or 2, never "internal error" or a traceback, and quickly.

Run in-process through `dslc.cli.main` where that is faithful; special files and the
environment need a subprocess. Add a case here for every such bug found."""
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dslc.cli import main
from dslc.runtime.checkpoint import DIGEST_KEY, META_KEY, load_checkpoint, save_checkpoint
from dslc.runtime.errors import CheckpointError

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
TINY_MLP = "network n\ninput x: float[4]\ny = x -> dense(3)\noutput y\n"


def refused(capsys, argv, *words, codes=(1, 2)):
    """Run the CLI; assert a clean refusal whose message holds each of `words`."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code in codes, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert "help:" in err, err
    for w in words:
        assert w in err, err
    return err


def refused_subprocess(argv, *words, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "dslc", *map(str, argv)], capture_output=True, text=True,
                          cwd=REPO, env=full_env, timeout=timeout)
    err = proc.stderr
    assert proc.returncode in (1, 2), err
    assert "internal error" not in err and "Traceback" not in err, err
    assert "help:" in err, err
    for w in words:
        assert w in err, err
    return err


# ---- command-line flags --------------------------------------------------------------------

def test_negative_seed(capsys):
    refused(capsys, ["run", MODELS / "digits_cnn.net", "--seed", "-1"], "seed")


@pytest.mark.parametrize("value", ["0", "-5"])
def test_non_positive_sequence_length(capsys, value):
    refused(capsys, ["compile", MODELS / "charlstm.net", "--set", f"T={value}"], "T", "positive")


def test_unknown_run_flag_names_the_commands_help(capsys):
    err = refused(capsys, ["run", MODELS / "digits_cnn.net", "--bogus"], "--bogus")
    assert "dslc run --help" in err


# ---- sources ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_as_the_program(capsys, device):
    refused(capsys, ["compile", device], "not a regular file")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_as_an_import(capsys, tmp_path, device):
    prog = tmp_path / "p.net"
    prog.write_text(f'import "{device}"\n' + TINY_MLP)
    refused(capsys, ["compile", prog], "not a regular file")


def test_a_fifo_as_the_program_or_an_import(capsys, tmp_path):
    fifo = tmp_path / "p.net"
    os.mkfifo(fifo)
    refused(capsys, ["compile", fifo], "not a regular file")
    prog = tmp_path / "q.net"
    prog.write_text(f'import "{fifo}"\n' + TINY_MLP)
    refused(capsys, ["compile", prog], "not a regular file")


def test_a_source_too_large_is_refused_unread(capsys, tmp_path):
    big = tmp_path / "big.net"
    with open(big, "wb") as f:
        f.truncate(64 << 20)          # sparse: no disk used
    refused(capsys, ["compile", big], "too large")


def test_a_megabyte_identifier_is_reported_quickly(capsys, tmp_path):
    prog = tmp_path / "long.net"
    prog.write_text("network n\ninput x: float[4]\ny = x -> dense(3) -> " + "a" * 1_000_000 + "\noutput y\n")
    refused(capsys, ["compile", prog], "unknown")


@pytest.mark.parametrize("op", ["conv(3, 3x3, pad = -1)", "deconv(3, 2x2, stride = 2, pad = -1)",
                                "deconv(3, 2x2, stride = 2, output_pad = -1)"])
def test_negative_conv_padding_is_refused(capsys, tmp_path, op):
    prog = tmp_path / "p.net"
    prog.write_text(f"network n\ninput x: float[3, 8, 8]\ny = x -> {op}\noutput y\n")
    refused(capsys, ["compile", prog], "must be 0 or more")


# ---- data files --------------------------------------------------------------------------

def run_on(data, model="digits_cnn.net", *extra):
    return ["run", MODELS / model, "--data", data, "--epochs", "1", "--quiet", *extra]


def test_zero_dimensional_arrays_in_npz(capsys, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array(1.0), y=np.array(2))
    refused(capsys, run_on(path), "0-d array")


def test_npy_named_npz(capsys, tmp_path):
    path = tmp_path / "d.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 64), np.float32))
    refused(capsys, run_on(path), "a single array (a .npy file)")


@pytest.mark.parametrize("size", [16, 8])
def test_channels_last_npz_says_transpose(capsys, tmp_path, size):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, size, size, 1), np.float32), y=np.zeros(10, np.int64))
    err = refused(capsys, run_on(path), "channels last", "transpose(0, 3, 1, 2)")
    assert "reshape" not in err


@pytest.mark.parametrize("ids,word", [(100, "vocabulary of"), (-3, "negative input id")])
def test_token_ids_outside_the_vocabulary(capsys, tmp_path, ids, word):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.full((20, 16), ids, np.int64), y=np.zeros((20, 16), np.int64))
    refused(capsys, run_on(path, "charlstm.net", "--set", "T=16"), word)


def write_idx(directory, dims, payload=b""):
    (directory / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + struct.pack(">III", *dims) + payload)
    (directory / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", dims[0])
                                                         + bytes(dims[0] if dims[0] < 1000 else 0))
    return directory / "train-images-idx3-ubyte"


def test_idx_header_whose_size_overflows_int64(capsys, tmp_path):
    path = write_idx(tmp_path, (2**31, 2**31, 2**31))
    refused(capsys, run_on(path), "header announces")


def test_idx_images_of_width_zero(capsys, tmp_path):
    path = write_idx(tmp_path, (5, 8, 0))
    refused(capsys, run_on(path), "8x0")


def test_a_fifo_as_data(capsys, tmp_path):
    fifo = tmp_path / "d.npz"
    os.mkfifo(fifo)
    refused(capsys, run_on(fifo), "not a regular file")


# ---- checkpoints -------------------------------------------------------------------------

def digest_of(arrays, meta_bytes):
    from dslc.runtime.checkpoint import _digest
    return np.frombuffer(_digest(arrays, meta_bytes), np.uint8)


def forged_checkpoint(path, arrays, meta_bytes, compression=zipfile.ZIP_STORED):
    """A checkpoint with a valid digest (anyone can compute one) over whatever it holds."""
    members = dict(arrays)
    members[META_KEY] = np.frombuffer(meta_bytes, np.uint8)
    members[DIGEST_KEY] = digest_of(arrays, meta_bytes)
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, arr in members.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr)
    return path


def test_deeply_nested_checkpoint_metadata(capsys, tmp_path):
    path = forged_checkpoint(tmp_path / "c.ckpt", {"w": np.ones(2, np.float32)},
                             b"[" * 100_000 + b"]" * 100_000)
    refused(capsys, ["eval", MODELS / "digits_cnn.net", "--weights", path], "unreadable metadata")


def test_a_member_declaring_1e12_elements(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"w": np.ones(4, np.float32)}, {})
    with zipfile.ZipFile(path) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    header = np.lib.format.header_data_from_array_1_0(np.ones(4, np.float32))
    header["shape"] = (10**12,)
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    members["w.npy"] = buf.getvalue() + members["w.npy"][-16:]
    with zipfile.ZipFile(path, "w") as zout:
        for n, data in members.items():
            zout.writestr(n, data)
    with pytest.raises(CheckpointError, match="declares an array of shape"):
        load_checkpoint(path)


def test_a_decompression_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    # 1 GiB of zeros compresses to about a megabyte; nothing of it may be inflated.
    path = tmp_path / "bomb.ckpt"
    meta = json.dumps({"format": 1, "meta": {}}).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("w.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 28,)})
            chunk = bytes(1 << 24)
            for _ in range(64):
                f.write(chunk)
        zf.writestr(f"{META_KEY}.npy", _npy(np.frombuffer(meta, np.uint8)))
        zf.writestr(f"{DIGEST_KEY}.npy", _npy(np.zeros(32, np.uint8)))
    read = []
    real_read = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: read.append(1) or real_read(*a, **k))
    with pytest.raises(CheckpointError, match="does not compress checkpoints"):
        load_checkpoint(path)
    assert not read


def test_digest_is_checked_before_arrays_are_loaded(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    meta = json.dumps({"format": 1, "meta": {}}).encode()
    forged_checkpoint(path, {"w": np.ones(1000, np.float32)}, meta)
    with zipfile.ZipFile(path) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    members[f"{DIGEST_KEY}.npy"] = _npy(np.zeros(32, np.uint8))      # a digest of other contents
    with zipfile.ZipFile(path, "w") as zout:
        for n, data in members.items():
            zout.writestr(n, data)
    loaded = []
    real_read = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, *a, **k: loaded.append(1) or real_read(f, *a, **k))
    with pytest.raises(CheckpointError, match="digest does not match"):
        load_checkpoint(path)
    assert len(loaded) <= 2      # __meta__ and __digest__, a few bytes each; never the array


def _npy(arr):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    return buf.getvalue()


def test_a_pytorch_file_as_weights(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, path)     # read (weights_only), but nothing in it fits the network
    refused(capsys, ["eval", MODELS / "digits_cnn.net", "--weights", path], "does not hold this network's",
            "not in this network (1): w")
    ckpt = tmp_path / "model.ckpt"             # a torch.save file under a checkpoint's name
    torch.save({"w": torch.ones(3)}, ckpt)
    refused(capsys, ["eval", MODELS / "digits_cnn.net", "--weights", ckpt], "a PyTorch file")


def test_missing_weights(capsys, tmp_path):
    err = refused(capsys, ["eval", MODELS / "digits_cnn.net", "--weights", tmp_path / "missing.ckpt"],
                  "does not exist")
    assert "resum" not in err


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".last.ckpt.{dead}.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".last.ckpt.{os.getppid()}.abcd1234.tmp"      # a running process's write
    live.write_bytes(b"in progress")
    save_checkpoint(tmp_path / "last.ckpt", {"w": np.ones(2, np.float32)}, {})
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", live.name])


# ---- environment ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_bad_numba_num_threads(value):
    refused_subprocess(["run", MODELS / "digits_cnn.net", "--epochs", "1", "--limit", "40", "--quiet"],
                       "NUMBA_NUM_THREADS", env={"NUMBA_NUM_THREADS": value})
