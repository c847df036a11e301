"""Finding checkpoint files: a local folder or a Hugging Face Hub repo id -> paths and arrays.

A diffusers checkpoint is a folder with ``model_index.json`` naming its components; each component
is a subfolder with ``config.json`` (``scheduler_config.json`` for schedulers) and weights in
``*.safetensors`` (one file, or shards listed by an ``*.index.json``; ``variant="fp16"`` picks
``*.fp16.safetensors``). Pickle checkpoints (``.bin``, ``.pt``, ...) are refused: loading one can run
arbitrary code. Safetensors files are read here without torch (numpy memory maps).

From the Hub, only what will be loaded is downloaded: ``resolve_pipeline`` reads model_index.json
first and then fetches the chosen components; ``resolve_checkpoint(..., subfolder=, kind=)`` one
component; ``component_patterns`` says which files each kind needs.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

__all__ = [
    "HubError",
    "CheckpointError",
    "resolve_checkpoint",
    "resolve_pipeline",
    "component_patterns",
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


COMPONENT_KINDS = ("model", "object", "tokenizer", "scheduler", "processor")
"""The ``ComponentSpec.kind`` values ``component_patterns`` knows."""

# never downloaded: pickle weights (refused anyway: loading them can run code) and other frameworks' weights
NEVER_DOWNLOADED = tuple(f"*{s}" for s in PICKLE_SUFFIXES) + ("*.msgpack", "*.onnx", "*.onnx_data", "*.h5")
TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "spiece.model", "*.model", "*.tiktoken",
)
_VARIANT = re.compile(r"^[A-Za-z0-9_\-]+$")


def component_patterns(name: str, kind: str, variant: str | None = None) -> tuple[list[str], list[str]]:
    """``(allow_patterns, ignore_patterns)`` for ``snapshot_download``: the files one component needs.

    ``name``: the component's subfolder, or "" for the repo root (a single-model repo). ``kind``:
    a ``ComponentSpec.kind`` ("model", "object", "tokenizer", "scheduler", "processor"). Models and
    objects get ``config.json``, the safetensors weights of ``variant`` only (single file or shards
    with their index, diffusers' and transformers' names, as ``weight_files`` reads them) and a
    converted ``jaxgen_params/`` folder; tokenizers their tokenizer files; schedulers
    ``scheduler_config.json``; processors ``preprocessor_config.json``. Patterns are fnmatch
    patterns as huggingface_hub applies them, where ``*`` also matches ``/``: each wildcard pattern
    comes with an ignore pattern for the same file one folder deeper, so a component takes only its
    own files (and ``name=""`` not every subfolder's). Pickle, msgpack, onnx and h5 files are always
    ignored.
    """
    if kind not in COMPONENT_KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {COMPONENT_KINDS}")
    if variant is not None and not _VARIANT.match(variant):
        raise ValueError(f"variant={variant!r} is not a plain name like 'fp16'")
    prefix = f"{_plain_component_name(name)}/" if name else ""
    ignore: list[str] = []
    if kind in ("model", "object"):
        files, ignore = _weight_patterns(variant)
        files = ["config.json", *files]
    elif kind == "tokenizer":
        files = list(TOKENIZER_FILES)
    elif kind == "scheduler":
        files = ["scheduler_config.json"]
    else:
        files = ["preprocessor_config.json"]
    nested = [f"*/{f}" for f in files if "*" in f]  # `*` crosses folders: keep to this folder's own files
    allow = [prefix + f for f in files]
    if kind in ("model", "object"):
        allow.append(f"{prefix}jaxgen_params/*")  # written by `python -m convert`: orbax params, any depth
    return allow, [prefix + f for f in ignore + nested] + list(NEVER_DOWNLOADED)


def _weight_patterns(variant: str | None) -> tuple[list[str], list[str]]:
    """Weight file patterns (relative to the component folder) for ``variant``: (allow, ignore)."""
    if variant:
        # variant names as weight_files reads them: x.fp16.safetensors; shards x.fp16-00001-of-00002.safetensors
        # (or x-00001-of-00002.fp16.safetensors) listed by x.safetensors.index.fp16.json (diffusers and transformers)
        return [f"*.{variant}.safetensors", f"*.{variant}-*.safetensors", f"*.safetensors.index.{variant}.json"], []
    # a name with a second dot is a variant (x.fp16.safetensors, x.fp16-00001-of-00002.safetensors)
    return ["*.safetensors", "*.safetensors.index.json"], ["*.*.safetensors", "*.*.safetensors.index.json"]


def _plain_component_name(name: str) -> str:
    """``name`` if it is a plain folder name (no separators, ``..``, or wildcards); else ``CheckpointError``."""
    if not isinstance(name, str) or not _COMPONENT_NAME.match(name) or name in (".", ".."):
        raise CheckpointError(f"component name {name!r} in model_index.json is not a plain folder name")
    return name


def _local_or_repo_id(path_or_repo_id: str | os.PathLike) -> Path | str:
    """A local folder as a ``Path``, or the Hub repo id as a ``str``.

    Raises ``CheckpointError`` for a file and ``FileNotFoundError`` for a missing local path that is
    not shaped like a repo id (``org/name``).
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
    return name


def _snapshot(repo_id: str, allow_patterns: Iterable[str] | None, ignore_patterns: Iterable[str]) -> Path:
    """``huggingface_hub.snapshot_download`` of the matching files -> the local snapshot folder.

    Hub failures become ``HubError`` with a message saying what to do (log in, accept the license,
    go online).
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise HubError(f"huggingface_hub is needed to download {repo_id!r}: {e}") from e
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
            ignore_patterns=list(ignore_patterns),
        )
    except RepositoryNotFoundError as e:
        raise HubError(f"model {repo_id!r} was not found on the Hugging Face Hub (or it is private/gated: log in with `hf auth login`)") from e
    except GatedRepoError as e:
        raise HubError(f"model {repo_id!r} is gated on the Hugging Face Hub: accept its license and log in with `hf auth login`") from e
    except RevisionNotFoundError as e:
        raise HubError(f"model {repo_id!r}: revision not found on the Hugging Face Hub") from e
    except LocalEntryNotFoundError as e:
        raise HubError(
            f"could not download {repo_id!r}: the Hugging Face Hub is not reachable and the model is not in the local cache"
        ) from e
    except OSError as e:  # network errors surface as OSError subclasses (requests/httpx)
        raise HubError(f"could not download {repo_id!r} from the Hugging Face Hub: {e}") from e
    return Path(folder)


def resolve_checkpoint(
    path_or_repo_id: str | os.PathLike,
    *,
    subfolder: str | None = None,
    kind: str | None = None,
    variant: str | None = None,
    allow_patterns: Iterable[str] | None = None,
) -> Path:
    """Return a local folder for ``path_or_repo_id``: the folder itself, or a Hub snapshot (its root).

    A local folder is returned as is, whatever the other arguments. From the Hub: with ``kind``
    (a ``ComponentSpec.kind``), only the files of that one component are downloaded: those of
    ``subfolder`` (None: the repo root), weights of ``variant`` only (``component_patterns``), and
    any extra ``allow_patterns``. Without ``kind``: the files matching ``allow_patterns`` (None: the
    whole repo). Pickle, msgpack, onnx and h5 files are never downloaded. Raises ``HubError`` with
    a readable message when the Hub cannot be reached or the repo is unknown, and
    ``FileNotFoundError`` for a local path that does not exist.
    """
    local = _local_or_repo_id(path_or_repo_id)
    if isinstance(local, Path):
        return local
    if kind is None:
        return _snapshot(local, allow_patterns, NEVER_DOWNLOADED)
    allow, ignore = component_patterns(subfolder or "", kind, variant)
    return _snapshot(local, allow + list(allow_patterns or ()), ignore)


def resolve_pipeline(
    path_or_repo_id: str | os.PathLike,
    select: Callable[[dict[str, Any]], Mapping[str, str]],
    *,
    variant: str | None = None,
) -> Path:
    """Return a local pipeline folder: the folder itself, or a Hub snapshot of what will be loaded.

    A local folder is returned as is (``select`` is not called). From the Hub: ``model_index.json``
    is downloaded first and read (``load_model_index``); ``select(index)`` returns
    ``{component name: kind}`` for the components to load (not those the caller passes in), and
    only their files are downloaded (``component_patterns``, weights of ``variant`` only), in one
    ``snapshot_download`` call. Returns the snapshot folder, which holds model_index.json and those
    components. Raises ``HubError`` as ``resolve_checkpoint`` does.
    """
    local = _local_or_repo_id(path_or_repo_id)
    if isinstance(local, Path):
        return local
    root = _snapshot(local, ["model_index.json"], NEVER_DOWNLOADED)
    wanted = dict(select(load_model_index(root)))
    if not wanted:  # everything passed in (or an Auto pipeline reading the class name): nothing more
        return root
    allow, ignore = ["model_index.json"], list(NEVER_DOWNLOADED)
    for name, kind in wanted.items():
        if not name:
            raise CheckpointError("select() returned an empty component name; the repo root is not a pipeline component")
        a, i = component_patterns(name, kind, variant)
        allow += a
        ignore += [p for p in i if p not in ignore]
    return _snapshot(local, allow, ignore)


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
    _plain_component_name(name)
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
