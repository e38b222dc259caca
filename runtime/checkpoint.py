"""Checkpoints: named arrays plus JSON metadata in one .npz file, with an integrity digest.

Layout of the archive: one member per user array (under its own name), plus
  __meta__    uint8: UTF-8 JSON {"format": FORMAT_VERSION, "meta": <the caller's meta>}
  __digest__  uint8[32]: SHA-256 over every user array's name, dtype, shape and bytes (in
              name order) followed by the __meta__ bytes.
Nothing is pickled: arrays are written and read with allow_pickle=False, and an archive that
holds an object array is refused. Files are written atomically, so a crash mid-save leaves
the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

from dslc.runtime.errors import CheckpointError

FORMAT_VERSION = 1
META_KEY = "__meta__"
DIGEST_KEY = "__digest__"
_RESERVED = (META_KEY, DIGEST_KEY)

_CORRUPT_HINT = "restore the file from a backup, or retrain; checkpoint files must not be edited"


def _digest(arrays: dict[str, np.ndarray], meta_bytes: bytes) -> bytes:
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        # Length-prefixed fields, so no two different checkpoints hash the same byte stream.
        for field in (name.encode(), arr.dtype.str.encode(), repr(arr.shape).encode()):
            h.update(len(field).to_bytes(8, "little"))
            h.update(field)
        h.update(arr.nbytes.to_bytes(8, "little"))
        h.update(arr.data)
    h.update(meta_bytes)
    return h.digest()


def save_checkpoint(path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write `arrays` and the JSON-serialisable `meta` to `path` atomically.

    The archive is written to a temporary file in the same directory, flushed and fsynced,
    then renamed over `path`, and the directory is fsynced so the rename itself survives a
    crash.
    """
    path = os.fspath(path)
    for name, arr in arrays.items():
        if name in _RESERVED:
            raise ValueError(f"array name {name!r} is reserved for the checkpoint format")
        if arr.dtype.hasobject:
            raise ValueError(f"array {name!r} has dtype object, which checkpoints do not store")
    meta_bytes = json.dumps({"format": FORMAT_VERSION, "meta": meta}, sort_keys=True).encode()
    members = dict(arrays)
    members[META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)
    members[DIGEST_KEY] = np.frombuffer(_digest(arrays, meta_bytes), dtype=np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_member(zf: zipfile.ZipFile, member: str, path: str) -> np.ndarray:
    """One .npy member, refusing object arrays before any data is read."""
    name = member[:-len(".npy")]
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        _, _, dtype = header(f)
    if dtype.hasobject:
        raise CheckpointError(
            f"checkpoint '{path}' holds an object array {name!r}, which could run code when loaded",
            "only load checkpoints written by dslc; this file was not, or was tampered with")
    with zf.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by `save_checkpoint`, verifying its digest.

    Returns (arrays, meta); meta is what was saved, after a JSON round trip (tuples come
    back as lists). Raises CheckpointError for anything wrong with the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist",
                              "check the path, or start training without resuming from a checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint '{path}' is not an .npz archive (it may be truncated or another kind of file)",
            _CORRUPT_HINT)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    raise CheckpointError(f"checkpoint '{path}' holds an unexpected member {member!r}",
                                          _CORRUPT_HINT)
                arrays[member[:-len(".npy")]] = _read_member(zf, member, path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise CheckpointError(f"checkpoint '{path}' was modified or corrupted ({err})", _CORRUPT_HINT) from err

    if META_KEY not in arrays or DIGEST_KEY not in arrays:
        raise CheckpointError(
            f"checkpoint '{path}' has no integrity digest; it was not written by dslc",
            "give a checkpoint saved by dslc's trainer")
    meta_bytes = arrays.pop(META_KEY).tobytes()
    stored_digest = arrays.pop(DIGEST_KEY).tobytes()
    try:
        wrapper = json.loads(meta_bytes)
        version = wrapper["format"]
        meta = wrapper["meta"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint '{path}' was modified or corrupted (unreadable metadata)",
                              _CORRUPT_HINT) from err
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has format version {version}, newer than this dslc reads "
            f"(up to {FORMAT_VERSION})",
            "upgrade dslc to the version that wrote the checkpoint")
    if _digest(arrays, meta_bytes) != stored_digest:
        raise CheckpointError(
            f"checkpoint '{path}' was modified or corrupted: its SHA-256 digest does not match its contents",
            _CORRUPT_HINT)
    return arrays, meta


def rng_state_to_arrays(rng: np.random.Generator, prefix: str = "rng") -> dict[str, np.ndarray]:
    """The exact state of a PCG64 generator as {f"{prefix}.pcg64": uint64[6]}.

    The 128-bit state and increment are split into 64-bit halves, since an .npz has no
    128-bit integers; the last two entries are the buffered-uint32 flag and value.
    """
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise ValueError(f"only PCG64 generators can be saved, got {state['bit_generator']}")
    mask = (1 << 64) - 1
    s, inc = state["state"]["state"], state["state"]["inc"]
    words = [s >> 64, s & mask, inc >> 64, inc & mask, state["has_uint32"], state["uinteger"]]
    return {f"{prefix}.pcg64": np.array(words, dtype=np.uint64)}


def rng_from_arrays(arrays: dict[str, np.ndarray], prefix: str = "rng") -> np.random.Generator:
    """A generator in exactly the state `rng_state_to_arrays` recorded."""
    key = f"{prefix}.pcg64"
    words = arrays.get(key)
    if words is None or words.shape != (6,) or words.dtype != np.uint64:
        raise CheckpointError(f"the checkpoint has no random-generator state {key!r}",
                              "resume only from checkpoints written by dslc's trainer")
    hi, lo, inc_hi, inc_lo, has_uint32, uinteger = (int(w) for w in words)
    bit_generator = np.random.PCG64()
    bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (hi << 64) | lo, "inc": (inc_hi << 64) | inc_lo},
        "has_uint32": has_uint32,
        "uinteger": uinteger,
    }
    return np.random.Generator(bit_generator)
