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
import math
import os
import stat
import tempfile
import zipfile

import numpy as np

from dslc.runtime.errors import CheckpointError

FORMAT_VERSION = 1
META_KEY = "__meta__"
DIGEST_KEY = "__digest__"
_RESERVED = (META_KEY, DIGEST_KEY)

_CORRUPT_HINT = "restore the file from a backup, or retrain; checkpoint files must not be edited"
# dslc writes its archives uncompressed (np.savez), so a member's declared size is its size on
# disk; a compressed member that inflates to more than this many times its stored bytes is not
# a checkpoint but a decompression bomb, refused before a byte of it is inflated.
MAX_COMPRESSION_RATIO = 64
# The JSON metadata is a few hundred bytes (epoch, step, settings).
MAX_META_BYTES = 16 << 20
# Bytes hashed per read while the digest is streamed.
_CHUNK = 1 << 20


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


def _remove_stale_temp_files(directory: str, name: str) -> None:
    """Delete the temporary files that writes of `name` killed mid-way left behind. Their names
    carry the writer's process id (.NAME.PID.XXXX.tmp); a file whose writer is no longer
    running is stale, one of a live process is left alone."""
    prefix = f".{name}."
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid = entry[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False         # this process is not writing one now: any such file is from an earlier failed save
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


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
    _remove_stale_temp_files(directory, os.path.basename(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.{os.getpid()}.",
                                    suffix=".tmp")
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


class _Member:
    """One .npy member of the archive, described from its headers alone (nothing inflated)."""

    def __init__(self, info: zipfile.ZipInfo, name: str, dtype: np.dtype, shape: tuple, fortran: bool,
                 data_offset: int):
        self.info, self.name, self.dtype, self.shape, self.fortran = info, name, dtype, shape, fortran
        self.data_offset = data_offset        # where the array's bytes start in the member

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _corrupt(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint '{path}' was modified or corrupted ({why})", _CORRUPT_HINT)


def _describe_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, file_size: int) -> _Member:
    """Read one member's .npy header and check that what it declares is an array of the size the
    archive says the member has, before any of its data is read."""
    name = info.filename[:-len(".npy")]
    inflated_limit = MAX_COMPRESSION_RATIO * max(info.compress_size, 1) + 4096
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > inflated_limit:
        raise _corrupt(path, f"member {name!r} declares {info.file_size:,} bytes compressed into "
                             f"{info.compress_size:,}; dslc does not compress checkpoints")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size > file_size:
        raise _corrupt(path, f"member {name!r} declares {info.file_size:,} bytes in a {file_size:,}-byte file")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(f, max_header_size=10000)
        data_offset = f.tell()
    if dtype.hasobject:
        raise CheckpointError(
            f"checkpoint '{path}' holds an object array {name!r}, which could run code when loaded",
            "only load checkpoints written by dslc; this file was not, or was tampered with")
    member = _Member(info, name, dtype, tuple(shape), fortran, data_offset)
    if member.nbytes != info.file_size - data_offset:
        raise _corrupt(path, f"member {name!r} declares an array of shape {member.shape} ({member.nbytes:,} "
                             f"bytes) but holds {info.file_size - data_offset:,} bytes")
    return member


def _stream_digest(zf: zipfile.ZipFile, members: dict[str, _Member], meta_bytes: bytes) -> bytes:
    """_digest's value, computed by reading each member in chunks: nothing is held whole."""
    h = hashlib.sha256()
    for name in sorted(members):
        m = members[name]
        # _digest hashes np.ascontiguousarray(arr), which gives a 0-d array the shape (1,).
        shape = m.shape or (1,)
        for field in (name.encode(), m.dtype.str.encode(), repr(shape).encode()):
            h.update(len(field).to_bytes(8, "little"))
            h.update(field)
        h.update(m.nbytes.to_bytes(8, "little"))
        with zf.open(m.info) as f:
            if m.fortran and len(m.shape) > 1:
                # The digest covers C-order bytes; a Fortran-order member (never written by dslc,
                # whose size was checked above) is read whole and reordered.
                f.seek(0)
                h.update(np.ascontiguousarray(np.lib.format.read_array(f, allow_pickle=False)).data)
                continue
            f.read(m.data_offset)
            left = m.nbytes
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise EOFError(f"member {name!r} ends early")
                h.update(chunk)
                left -= len(chunk)
    h.update(meta_bytes)
    return h.digest()


def _not_a_checkpoint(path: str) -> CheckpointError | None:
    """A clear error for files people pass by mistake (a PyTorch file), else None."""
    with open(path, "rb") as f:
        head = f.read(8)
    torch_file = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")   # a bare pickle
    if not torch_file and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                torch_file = any(n.endswith("data.pkl") or n.endswith("/version") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
    if torch_file:
        return CheckpointError(
            f"'{path}' is a PyTorch file (torch.save); dslc reads its own checkpoints, which hold no pickles",
            "give a checkpoint written by `dslc run --checkpoint DIR` or Model.save; a PyTorch state_dict is read "
            "from a file named .pt or .pth (or converted to .safetensors): see README, Weights from PyTorch")
    return None


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint written by `save_checkpoint`, verifying its digest.

    Returns (arrays, meta); meta is what was saved, after a JSON round trip (tuples come
    back as lists). Raises CheckpointError for anything wrong with the file.

    Every member's declared size is checked against the file and its .npy header, and the
    digest is computed by streaming, before any array is loaded: a crafted file cannot make
    this allocate more than the arrays it really holds.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist", "check the path") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({err})", "check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint '{path}' is not a regular file",
                              "give the path of a checkpoint file (last.ckpt in a --checkpoint directory)")
    try:
        mistaken = _not_a_checkpoint(path)
    except OSError as err:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({err.strerror or err})", "check the path") from None
    if mistaken is not None:
        raise mistaken
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint '{path}' is not an .npz archive (it may be truncated or another kind of file)",
            _CORRUPT_HINT)
    try:
        with zipfile.ZipFile(path) as zf:
            members: dict[str, _Member] = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy") or info.is_dir():
                    raise CheckpointError(f"checkpoint '{path}' holds an unexpected member {info.filename!r}",
                                          _CORRUPT_HINT)
                name = info.filename[:-len(".npy")]
                if name in members:
                    raise _corrupt(path, f"member {name!r} appears twice")
                members[name] = _describe_member(zf, info, path, st.st_size)

            if META_KEY not in members or DIGEST_KEY not in members:
                raise CheckpointError(
                    f"checkpoint '{path}' has no integrity digest; it was not written by dslc",
                    "give a checkpoint saved by dslc's trainer")
            meta_m, digest_m = members.pop(META_KEY), members.pop(DIGEST_KEY)
            if meta_m.dtype != np.uint8 or meta_m.nbytes > MAX_META_BYTES:
                raise _corrupt(path, "its metadata is not a short byte string")
            if digest_m.dtype != np.uint8 or digest_m.shape != (32,):
                raise _corrupt(path, "its digest is not 32 bytes")
            meta_bytes = _read_array(zf, meta_m).tobytes()
            stored_digest = _read_array(zf, digest_m).tobytes()
            meta, version = _parse_meta(meta_bytes, path)
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise CheckpointError(
                    f"checkpoint '{path}' has format version {version}, newer than this dslc reads "
                    f"(up to {FORMAT_VERSION})",
                    "upgrade dslc to the version that wrote the checkpoint")
            if _stream_digest(zf, members, meta_bytes) != stored_digest:
                raise CheckpointError(
                    f"checkpoint '{path}' was modified or corrupted: its SHA-256 digest does not match its contents",
                    _CORRUPT_HINT)
            arrays = {name: _read_array(zf, m) for name, m in members.items()}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError) as err:
        raise _corrupt(path, str(err)) from err
    return arrays, meta


def _read_array(zf: zipfile.ZipFile, m: _Member) -> np.ndarray:
    with zf.open(m.info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _parse_meta(meta_bytes: bytes, path: str):
    """(meta, format version) from the __meta__ bytes; nesting is bounded by Python's JSON reader,
    whose RecursionError on deeply nested input is reported like any other corruption."""
    try:
        wrapper = json.loads(meta_bytes)
        return wrapper["meta"], wrapper["format"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise CheckpointError(f"checkpoint '{path}' was modified or corrupted (unreadable metadata)",
                              _CORRUPT_HINT) from None


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
