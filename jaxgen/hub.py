"""Finding checkpoint files: a local folder or a Hugging Face Hub repo id -> paths and arrays.

A diffusers checkpoint is a folder with ``model_index.json`` naming its components; each component
is a subfolder with ``config.json`` (``scheduler_config.json`` for schedulers) and weights in
``*.safetensors`` (one file, or shards listed by an ``*.index.json``; ``variant="fp16"`` picks
``*.fp16.safetensors``). Pickle checkpoints (``.bin``, ``.pt``, ...) are refused: loading one can run
arbitrary code. Safetensors files are read here without torch (numpy memory maps).
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

import ml_dtypes
import numpy as np

__all__ = [
    "HubError",
    "CheckpointError",
    "resolve_checkpoint",
    "load_model_index",
    "component_folder",
    "load_config",
    "weight_files",
    "load_state_dict",
    "read_safetensors",
]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_COMPONENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class HubError(RuntimeError):
    """The Hub could not be reached, or the repo or file does not exist there."""


class CheckpointError(ValueError):
    """A checkpoint folder is malformed: missing files, pickle weights, corrupt safetensors."""


def resolve_checkpoint(path_or_repo_id: str | os.PathLike, *, allow_patterns: Iterable[str] | None = None) -> Path:
    """Return a local folder for ``path_or_repo_id``: the folder itself, or a Hub snapshot.

    Hub downloads skip pickle weights (they would be refused anyway). Raises ``HubError`` with a
    readable message when the Hub cannot be reached or the repo is unknown, and
    ``FileNotFoundError`` for a local path that does not exist.
    """
    path = Path(os.path.expanduser(os.fspath(path_or_repo_id)))
    if path.is_dir():
        return path
    name = os.fspath(path_or_repo_id)
    if path.exists():
        raise CheckpointError(f"pretrained_model_name_or_path={name!r} is a file; expected a checkpoint folder or a Hub repo id")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FileNotFoundError(
            f"pretrained_model_name_or_path={name!r}: no such folder, and it is not a Hub repo id ('org/name')"
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise HubError(f"huggingface_hub is needed to download {name!r}: {e}") from e
    try:
        folder = snapshot_download(
            name,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
            ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES] + ["*.msgpack", "*.onnx", "*.onnx_data", "*.h5"],
        )
    except RepositoryNotFoundError as e:
        raise HubError(f"model {name!r} was not found on the Hugging Face Hub (or it is private/gated: log in with `hf auth login`)") from e
    except GatedRepoError as e:
        raise HubError(f"model {name!r} is gated on the Hugging Face Hub: accept its license and log in with `hf auth login`") from e
    except RevisionNotFoundError as e:
        raise HubError(f"model {name!r}: revision not found on the Hugging Face Hub") from e
    except LocalEntryNotFoundError as e:
        raise HubError(
            f"could not download {name!r}: the Hugging Face Hub is not reachable and the model is not in the local cache"
        ) from e
    except OSError as e:  # network errors surface as OSError subclasses (requests/httpx)
        raise HubError(f"could not download {name!r} from the Hugging Face Hub: {e}") from e
    return Path(folder)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def load_model_index(root: Path) -> dict[str, Any]:
    """Read ``root/model_index.json`` (the pipeline's class and components) and validate component names.

    Scalar values (``"max_noise_level": 350``, ``"requires_safety_checker": true``) are the
    pipeline's own config (diffusers' ``register_to_config``), not components: kept as they are.
    """
    path = Path(root) / "model_index.json"
    if not path.is_file():
        raise CheckpointError(
            f"{root} has no model_index.json: expected a diffusers pipeline folder (or a folder written by `python -m convert`)"
        )
    index = _read_json(path)
    for name, value in index.items():
        if name.startswith("_") or isinstance(value, (bool, int, float, str)):
            continue
        component_folder(root, name)  # validates the name
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise CheckpointError(f"{path}: component {name!r} should be [library, class_name] or null, got {value!r}")
    return index


def component_folder(root: Path, name: str) -> Path:
    """``root/name``, refusing names that could escape ``root`` (``..``, absolute paths, separators)."""
    if not isinstance(name, str) or not _COMPONENT_NAME.match(name) or name in (".", ".."):
        raise CheckpointError(f"component name {name!r} in model_index.json is not a plain folder name")
    root = Path(root).resolve()
    folder = (root / name).resolve()
    if folder.parent != root:
        raise CheckpointError(f"component {name!r} resolves outside the checkpoint folder {root}")
    return folder


def load_config(folder: Path, name: str = "config.json") -> dict[str, Any]:
    """Read a component's ``config.json`` (or ``scheduler_config.json``) as a dict."""
    path = Path(folder) / name
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {name}")
    return _read_json(path)


def _variant_name(filename: str, variant: str | None) -> str:
    if not variant:
        return filename
    stem, ext = filename.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def weight_files(folder: Path, variant: str | None = None) -> list[Path]:
    """The safetensors files holding a component's weights, in shard order.

    Looks for an index (``*.safetensors.index.json``, diffusers' and transformers' names, with the
    variant) first, then a single ``*.safetensors`` file. Raises ``CheckpointError`` naming the
    pickle file if only pickle weights are there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"component folder {folder} does not exist")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    for base in ("diffusion_pytorch_model", "model"):
        for index_name in (_variant_name(f"{base}.safetensors.index.json", variant),
                           f"{base}.safetensors.index.{variant}.json" if variant else None):
            if index_name and index_name in names:
                weight_map = _read_json(folder / index_name).get("weight_map")
                if not isinstance(weight_map, dict):
                    raise CheckpointError(f"{folder / index_name} has no weight_map")
                shards = sorted(set(weight_map.values()))
                for shard in shards:
                    if "/" in shard or shard.startswith(".") or not (folder / shard).is_file():
                        raise CheckpointError(f"{folder / index_name} names shard {shard!r}, which is not a file in {folder}")
                return [folder / s for s in shards]
        single = _variant_name(f"{base}.safetensors", variant)
        if single in names:
            return [folder / single]
    safetensors = [n for n in names if n.endswith(".safetensors")]
    if variant:
        matching = [n for n in safetensors if n.endswith(f".{variant}.safetensors")]
        if len(matching) == 1:
            return [folder / matching[0]]
        if safetensors:
            raise CheckpointError(f"{folder}: no weights for variant={variant!r}; files there: {safetensors}")
    else:
        plain = [n for n in safetensors if n.count(".") == 1]
        if len(plain) == 1:
            return [folder / plain[0]]
        if len(plain) > 1:
            raise CheckpointError(f"{folder} holds several safetensors files and no index: {plain}")
        if safetensors:
            raise CheckpointError(f"{folder} holds only variant weights {safetensors}: pass variant=...")
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise CheckpointError(
            f"{folder / pickles[0]} is a pickle checkpoint; jaxgen refuses to load pickle files because "
            "loading them can run arbitrary code. Convert it to safetensors first."
        )
    raise CheckpointError(f"{folder} holds no *.safetensors weights")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read one safetensors file as ``{key: numpy array}`` (memory-mapped, no copy, no torch).

    bfloat16 tensors come back as ``ml_dtypes.bfloat16`` arrays. A truncated or corrupt file raises
    ``CheckpointError`` naming the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated: no safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise CheckpointError(f"{path} is truncated or not a safetensors file: header of {header_len} bytes, file of {size}")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is corrupt: unreadable safetensors header ({e})") from e
    data_start = 8 + header_len
    data_size = size - data_start
    header.pop("__metadata__", None)
    needed = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if needed > data_size:
        raise CheckpointError(f"{path} is truncated: its header needs {needed} bytes of data, the file has {data_size}")
    buffer = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_size,)) if data_size else np.zeros(0, np.uint8)
    out = {}
    for key, info in header.items():
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        begin, end = (int(x) for x in info["data_offsets"])
        shape = tuple(int(s) for s in info["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise CheckpointError(f"{path} is corrupt: tensor {key!r} of shape {shape} does not fit its byte range")
        out[key] = buffer[begin:end].view(dtype).reshape(shape)
    return out


def load_state_dict(folder: Path, variant: str | None = None) -> dict[str, np.ndarray]:
    """All tensors of a component folder (every shard) as one ``{PyTorch key: numpy array}`` dict."""
    state: dict[str, np.ndarray] = {}
    for file in weight_files(folder, variant):
        tensors = read_safetensors(file)
        clash = state.keys() & tensors.keys()
        if clash:
            raise CheckpointError(f"{file} repeats keys of another shard: {sorted(clash)[:5]}")
        state.update(tensors)
    return state


def read_json_file(path: Path) -> Mapping[str, Any]:
    """Read a JSON file, raising ``CheckpointError`` naming it when it is malformed."""
    return _read_json(Path(path))
