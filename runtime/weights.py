"""Weights files in and out: dslc checkpoints, safetensors, .npz and PyTorch state_dicts.

    arrays, meta, kind = read_weights("resnet18.safetensors")     # by the file's suffix
    net.load_params("resnet18.safetensors")                      # torchvision's names mapped to the zoo's
    save_torch_safetensors(net, "resnet18.safetensors")          # and back, torch-named

`.safetensors` is read with the safetensors package (no torch needed), `.npz` with numpy (no pickles),
`.pt`/`.pth` only when torch is installed and only with torch.load(weights_only=True), which refuses
any pickled object that is not a tensor or a container of them. Any other file is a dslc checkpoint.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from .checkpoint import DIGEST_KEY, META_KEY, load_checkpoint
from .errors import CheckpointError, RuntimeUserError
from .torchvision_names import MAPS, TORCH_ONLY_LEAVES, NameMap

FOREIGN_SUFFIXES = (".safetensors", ".npz", ".pt", ".pth")

CONVERT_HINT = ("convert it where torch is installed:\n"
                "      import torch, safetensors.torch\n"
                "      safetensors.torch.save_file(torch.load('{path}', weights_only=True), '{stem}.safetensors')\n"
                "  then give {stem}.safetensors (or install torch)")


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def read_weights(path) -> tuple[dict[str, np.ndarray], dict, str]:
    """(arrays by name, meta, kind). kind "checkpoint": a dslc checkpoint, arrays named as its network's
    parameters and meta its record; else the file's format ("safetensors", "npz", "torch"), meta {}."""
    path = os.fspath(path)
    suffix = _suffix(path)
    if suffix not in FOREIGN_SUFFIXES or (suffix == ".npz" and _is_dslc_checkpoint(path)):
        arrays, meta = load_checkpoint(path)
        params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")} or arrays
        return params, meta if isinstance(meta, dict) else {}, "checkpoint"
    _check_file(path)
    if suffix == ".safetensors":
        return _read_safetensors(path), {}, "safetensors"
    if suffix == ".npz":
        return _read_npz(path), {}, "npz"
    return _read_torch(path), {}, "torch"


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"weights file '{path}' does not exist", "check the path")
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file '{path}' is not a regular file", "give the path of a weights file")


def _unreadable(path: str, what: str, err) -> CheckpointError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CheckpointError(f"weights file '{path}' cannot be read as {what} ({detail})",
                           f"the file may be truncated or not {what}; write it again, or give the right file")


def _is_dslc_checkpoint(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return f"{META_KEY}.npy" in names and f"{DIGEST_KEY}.npy" in names


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        arrays = load_file(path)
    except OSError as err:
        raise CheckpointError(f"weights file '{path}' cannot be read ({err.strerror or err})",
                              "check the path and its permissions") from None
    except Exception as err:          # safetensors' own error type (a truncated header, an unknown dtype)
        if "bf16" in str(err).lower() or "bfloat16" in str(err).lower():
            raise CheckpointError(f"weights file '{path}' holds bfloat16 tensors, which numpy cannot read",
                                  "save them as float32: {k: v.float() for k, v in state_dict.items()}") from None
        raise _unreadable(path, "safetensors", err) from None
    return {k: np.asarray(v) for k, v in arrays.items()}


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except OSError as err:
        raise CheckpointError(f"weights file '{path}' cannot be read ({err.strerror or err})",
                              "check the path and its permissions") from None
    except Exception as err:       # zipfile, .npy header and pickle-refusal errors alike
        if "pickle" in str(err).lower():
            raise CheckpointError(f"weights file '{path}' holds Python objects, which dslc does not unpickle",
                                  "save plain numeric arrays: np.savez(path, **{name: array})") from None
        raise _unreadable(path, "an .npz archive", err) from None


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        stem = os.path.splitext(os.path.basename(path))[0]
        raise RuntimeUserError(f"weights file '{path}' is a PyTorch file, and reading it needs torch, "
                               "which is not installed", CONVERT_HINT.format(path=path, stem=stem)) from None
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except OSError as err:
        raise CheckpointError(f"weights file '{path}' cannot be read ({err.strerror or err})",
                              "check the path and its permissions") from None
    except Exception as err:       # pickle refusals, truncated archives: torch raises many kinds
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise CheckpointError(f"weights file '{path}' holds Python objects besides tensors, which dslc does "
                                  "not unpickle (torch.load(weights_only=True) refused it)",
                                  "save the state_dict alone: torch.save(model.state_dict(), path)") from None
        raise _unreadable(path, "a PyTorch file", err) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"weights file '{path}' holds a {type(obj).__name__}, not a state_dict",
                              "save the state_dict: torch.save(model.state_dict(), path)")
    arrays = {str(k): _to_numpy(v) for k, v in obj.items() if hasattr(v, "detach")}
    if not arrays:
        raise CheckpointError(f"weights file '{path}' holds no tensors",
                              "save the state_dict: torch.save(model.state_dict(), path)")
    return arrays


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):           # a torch tensor (maybe on a GPU, maybe requiring grad, maybe bfloat16)
        v = v.detach().cpu()
        if not v.dtype.is_floating_point or v.dtype.itemsize >= 4:
            return v.numpy()
        return v.float().numpy()
    return np.asarray(v)


# ---- names ------------------------------------------------------------------------------------
def to_network_names(arrays: dict, names, network: str) -> tuple[dict, NameMap | None, list[str]]:
    """(arrays renamed to this network's parameter names, the torchvision map used or None, the names left
    out as torch's own bookkeeping). A map is used when it places most of the file's tensors, and more of
    them than the names as they are; for a network whose zoo file uses torchvision's names, its map (found by
    the network's name) is reported when the names match as they are."""
    names = set(names)
    ignored = [k for k in arrays if k.rsplit(".", 1)[-1] in TORCH_ONLY_LEAVES]
    arrays = {k: _to_numpy(v) for k, v in arrays.items() if k.rsplit(".", 1)[-1] not in TORCH_ONLY_LEAVES}
    if arrays and all(k.startswith("module.") for k in arrays):      # saved from DataParallel
        arrays = {k[len("module."):]: v for k, v in arrays.items()}
    best, best_hits = None, sum(k in names for k in arrays)
    own = MAPS.get(network)
    for m in ([own] if own else []) + [m for m in MAPS.values() if m is not own]:
        hits = sum(m.to_zoo(k) in names for k in arrays)
        if hits > best_hits or (m is own and not m.rules and hits == best_hits):
            best, best_hits = m, hits
    if best is None or 2 * best_hits <= len(arrays):
        return arrays, None, ignored
    return {best.to_zoo(k): v for k, v in arrays.items()}, best, ignored


def network_params(source, model) -> tuple[dict, NameMap | None, list[str], str]:
    """What Model.load_params loads: (arrays by parameter name, map used, names ignored, source's kind)."""
    names, network = model.specs.keys(), model.net.name
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        arrays, _, kind = read_weights(os.fsdecode(source))
        if kind == "checkpoint":
            return arrays, None, [], kind
        return (*to_network_names(arrays, names, network), kind)
    return (*to_network_names(dict(source), names, network), "dict")


def is_foreign(path) -> bool:
    """True for a weights file that is not a dslc checkpoint (and so records no training settings)."""
    path = os.fspath(path)
    suffix = _suffix(path)
    return suffix in FOREIGN_SUFFIXES and not (suffix == ".npz" and _is_dslc_checkpoint(path))


# ---- out --------------------------------------------------------------------------------------
def torch_named_params(model, network: str | None = None) -> tuple[dict[str, np.ndarray], NameMap | None]:
    """The model's parameters under torchvision's names (where the zoo has a map for the network), with
    the batchnorm update counts torch's load_state_dict expects (0: dslc does not count them)."""
    name_map = MAPS.get(network or model.net.name)
    out = {}
    for k, v in model.params.items():
        tk = name_map.to_torch(k) if name_map else k
        out[tk] = np.ascontiguousarray(v, dtype=np.float32)
        if k.endswith(".running_var"):
            out[tk[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out, name_map


def save_torch_safetensors(model, path, network: str | None = None) -> tuple[int, NameMap | None]:
    """Write the model's parameters, torch-named, to a .safetensors file: (tensors written, map used)."""
    from safetensors.numpy import save_file
    path = os.fspath(path)
    tensors, name_map = torch_named_params(model, network)
    meta = {"format": "pt", "written_by": "dslc", "network": model.net.name}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise RuntimeUserError(f"cannot write '{path}' ({err.strerror or err})",
                               "give -o a path in a writable directory") from None
    return len(tensors), name_map
