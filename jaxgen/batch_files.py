"""The files of a ``jaxgen batch`` folder: PNGs written atomically with their metadata, the manifest, the lock.

Every write goes to a temporary file in the same folder, is fsynced and renamed into place, so a crash leaves
either the whole file or none; the manifest is appended one fsynced line at a time and a torn last line (a
crash mid-append) is dropped when it is read again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["png_parameters", "write_atomic", "png_bytes", "Manifest", "finished", "lock_folder"]

logger = logging.getLogger("jaxgen.batch")


def png_parameters(path: Path) -> dict | None:
    """The "parameters" metadata of a valid PNG (all chunk CRCs checked), {} without it; None if missing or corrupt."""
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            if image.format != "PNG":
                return None
            text = image.info.get("parameters")
            image.verify()
    except Exception:  # PIL raises many kinds for truncated or damaged files
        return None
    try:
        params = json.loads(text) if text is not None else {}
    except json.JSONDecodeError:
        return {}
    return params if isinstance(params, dict) else {}


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, tmp_suffix: str) -> None:
    """Write to a temporary file beside ``path``, fsync, rename over ``path``, fsync the folder."""
    tmp = path.with_name(f".{path.name}{tmp_suffix}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def png_bytes(image: Any, record: dict) -> bytes:
    import io

    from PIL.PngImagePlugin import PngInfo

    from jaxgen import __version__

    info = PngInfo()
    info.add_text("parameters", json.dumps(record, sort_keys=True))
    info.add_text("Software", f"jaxgen {__version__}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class Manifest:
    """This process's manifest: read (torn last lines repaired), then appended one fsynced line at a time."""

    def __init__(self, path: Path, tmp_suffix: str) -> None:
        self.path = path
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
        good = [line for line in lines if _parse(line) is not None]
        if len(good) != len(lines) or (lines and not path.read_bytes().endswith(b"\n")):
            # a crash mid-append left a torn line: keep the whole ones
            write_atomic(path, "".join(line + "\n" for line in good).encode(), tmp_suffix)
            logger.warning("%s: dropped %d unreadable line(s)", path, len(lines) - len(good))
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, entry: dict) -> None:
        data = (json.dumps(entry, sort_keys=True) + "\n").encode()
        while data:  # one write for any line of normal size; O_APPEND keeps lines whole
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _parse(line: str) -> dict | None:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return None
    return entry if isinstance(entry, dict) and "id" in entry and "file" in entry else None


def finished(out_dir: Path) -> dict[tuple[str, int], dict]:
    """(id, image) -> the last manifest entry for it, over every process's manifest."""
    entries: dict[tuple[str, int], dict] = {}
    for path in sorted(out_dir.glob("manifest*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            entry = _parse(line)
            if entry is not None:
                entries[(str(entry["id"]), int(entry.get("image", 0)))] = entry
    return entries


def lock_folder(out_dir: Path, process_index: int) -> Any:
    """An exclusive lock on the folder for this process index (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return None
    handle = open(out_dir / f".lock-p{process_index}", "a")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ValueError(f"another jaxgen batch (process {process_index}) is writing to {out_dir}") from None
    return handle
