"""Checkpoint round trip, integrity checks and RNG state."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

from dslc.runtime.checkpoint import (
    DIGEST_KEY,
    FORMAT_VERSION,
    META_KEY,
    load_checkpoint,
    rng_from_arrays,
    rng_state_to_arrays,
    save_checkpoint,
)
from dslc.runtime.errors import CheckpointError


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn.running_mean": np.zeros(4, np.float32),
        "adam.exp_avg/conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "adam.step": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 3), np.float64),
    }


META = {"epoch": 3, "network": "lenet.net", "lr": 0.01, "history": [1.5, 0.75]}


def rewrite_archive(src, dst, replace):
    """Copy the zip `src` to `dst`, with members named in `replace` given new bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for member in zin.namelist():
            zout.writestr(member, replace.get(member, zin.read(member)))


def npy_bytes(arr, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_round_trip(tmp_path):
    path = tmp_path / "run.ckpt.npz"
    arrays = sample_arrays()
    save_checkpoint(path, arrays, META)
    loaded, meta = load_checkpoint(path)
    assert meta == META
    assert loaded.keys() == arrays.keys()
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype and loaded[name].shape == arr.shape
        np.testing.assert_array_equal(loaded[name], arr)


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "run.npz"
    save_checkpoint(path, {"w": np.ones(3, np.float32)}, {"epoch": 1})
    save_checkpoint(path, {"w": np.full(3, 2, np.float32)}, {"epoch": 2})
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]
    arrays, meta = load_checkpoint(path)
    assert meta == {"epoch": 2} and arrays["w"].tolist() == [2, 2, 2]


def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "run.npz"
    save_checkpoint(path, {"w": np.ones(3, np.float32)}, {"epoch": 1})
    with pytest.raises(TypeError):
        save_checkpoint(path, {"w": np.zeros(3, np.float32)}, {"epoch": object()})
    with pytest.raises(ValueError, match="object"):
        save_checkpoint(path, {"w": np.array([None], dtype=object)}, {})
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]
    assert load_checkpoint(path)[1] == {"epoch": 1}


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "nope.npz")
    assert "nope.npz" in err.value.message and "does not exist" in err.value.message
    assert err.value.hint
    assert str(err.value) == f"{err.value.message}\n  = help: {err.value.hint}"


def test_truncated_file(tmp_path):
    path = tmp_path / "run.npz"
    save_checkpoint(path, sample_arrays(), META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not an .npz archive") as err:
        load_checkpoint(path)
    assert "run.npz" in err.value.message


def test_flipped_byte_anywhere_in_the_data_is_detected(tmp_path):
    path = tmp_path / "run.npz"
    save_checkpoint(path, sample_arrays(), META)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("conv1.weight.npy")
    # Past the member's local header and the .npy header: inside the float data.
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="was modified or corrupted"):
        load_checkpoint(path)


def test_modified_array_with_valid_zip_fails_the_digest(tmp_path):
    src, dst = tmp_path / "run.npz", tmp_path / "edited.npz"
    arrays = sample_arrays()
    save_checkpoint(src, arrays, META)
    edited = arrays["conv1.weight"].copy()
    edited[0, 0, 0, 0] += 1
    rewrite_archive(src, dst, {"conv1.weight.npy": npy_bytes(edited)})
    with pytest.raises(CheckpointError, match="digest does not match") as err:
        load_checkpoint(dst)
    assert "edited.npz" in err.value.message and "was modified or corrupted" in err.value.message


def test_modified_meta_fails_the_digest(tmp_path):
    src, dst = tmp_path / "run.npz", tmp_path / "edited.npz"
    save_checkpoint(src, sample_arrays(), META)
    meta = json.dumps({"format": FORMAT_VERSION, "meta": {**META, "epoch": 99}}).encode()
    rewrite_archive(src, dst, {f"{META_KEY}.npy": npy_bytes(np.frombuffer(meta, np.uint8))})
    with pytest.raises(CheckpointError, match="digest does not match"):
        load_checkpoint(dst)


def test_renamed_array_fails_the_digest(tmp_path):
    src, dst = tmp_path / "run.npz", tmp_path / "edited.npz"
    save_checkpoint(src, {"a": np.ones(2, np.float32)}, {})
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for member in zin.namelist():
            zout.writestr("b.npy" if member == "a.npy" else member, zin.read(member))
    with pytest.raises(CheckpointError, match="digest does not match"):
        load_checkpoint(dst)


def test_plain_npz_without_digest(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="no integrity digest") as err:
        load_checkpoint(path)
    assert "weights.npz" in err.value.message


def test_pickle_bearing_npz_is_refused_without_unpickling(tmp_path):
    src, dst = tmp_path / "run.npz", tmp_path / "evil.npz"
    save_checkpoint(src, {"w": np.ones(2, np.float32)}, {})
    evil = np.array([{"payload": 1}], dtype=object)
    rewrite_archive(src, dst, {"w.npy": npy_bytes(evil, allow_pickle=True)})
    with pytest.raises(CheckpointError, match="object array 'w'") as err:
        load_checkpoint(dst)
    assert "evil.npz" in err.value.message


def test_newer_format_version_is_refused(tmp_path):
    src, dst = tmp_path / "run.npz", tmp_path / "future.npz"
    save_checkpoint(src, {"w": np.ones(2, np.float32)}, {})
    meta = json.dumps({"format": FORMAT_VERSION + 1, "meta": {}}).encode()
    rewrite_archive(src, dst, {f"{META_KEY}.npy": npy_bytes(np.frombuffer(meta, np.uint8))})
    with pytest.raises(CheckpointError, match="newer than this dslc reads") as err:
        load_checkpoint(dst)
    assert "upgrade" in err.value.hint


def test_reserved_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.npz", {DIGEST_KEY: np.zeros(32, np.uint8)}, {})


def test_rng_state_survives_a_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(1234)
    rng.random(5)
    rng.integers(0, 10, size=3, dtype=np.uint32)   # leaves a buffered uint32 in the state
    path = tmp_path / "rng.npz"
    save_checkpoint(path, rng_state_to_arrays(rng, prefix="shuffle"), {})
    arrays, _ = load_checkpoint(path)
    restored = rng_from_arrays(arrays, prefix="shuffle")
    assert restored.bit_generator.state == rng.bit_generator.state
    np.testing.assert_array_equal(restored.integers(0, 1 << 30, size=20), rng.integers(0, 1 << 30, size=20))
    np.testing.assert_array_equal(restored.random(7), rng.random(7))


def test_missing_rng_state():
    with pytest.raises(CheckpointError, match="'rng.pcg64'"):
        rng_from_arrays({})


def test_only_pcg64_generators_are_saved():
    with pytest.raises(ValueError, match="PCG64"):
        rng_state_to_arrays(np.random.Generator(np.random.MT19937(0)))
