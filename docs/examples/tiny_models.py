"""Tiny random-weight stand-ins of the Hub checkpoints the example notebooks use, built offline.

The notebooks in this folder run as they are without network access and in seconds on a CPU: each one starts
with ``MODEL = tiny_model("<hub id>")``, the folder of a tiny model of the same family (and pixel geometry),
with random weights, saved by diffusers' ``save_pretrained`` as the real checkpoint is laid out. The images it
makes are noise; the calls are the real ones. Swap in the commented ``MODEL = "<hub id>"`` line beside it to
run the notebook on the real checkpoint.

Building needs what a clone's test extras install (``pip install -e ".[test]"``: torch, diffusers,
transformers): it reuses the test suite's ``build_tiny_hub`` (tests/conftest.py), one family at a time, into a
temporary folder made once per process. The test suite (tests/test_notebooks.py) runs the notebooks on its
own tiny models instead, so nothing is built twice there.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

__all__ = ["tiny_model"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
_BUILT: dict[str, Path] = {}
_ROOT: list[Path] = []


def tiny_model(repo_id: str) -> str:
    """The folder of a tiny random-weight stand-in of Hub checkpoint ``repo_id`` (e.g.
    ``"PixArt-alpha/PixArt-XL-2-1024-MS"``), built on first use (with the checkpoints built alongside it, such
    as a Kandinsky decoder's prior) and reused afterwards in this process. A KeyError for an id with no
    stand-in."""
    if repo_id not in _BUILT:
        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="jaxgen-tiny-models-")))
        _BUILT.update(_build_tiny_hub()(_ROOT[0], only={repo_id}))
    return str(_BUILT[repo_id])


def _build_tiny_hub():
    """tests/conftest.py's ``build_tiny_hub``, imported without letting the test suite's settings (8 CPU
    devices, no compilation cache) leak into this process's environment."""
    if str(_REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(_REPO_ROOT))
    saved = {name: os.environ.get(name) for name in ("XLA_FLAGS", "JAXGEN_COMPILATION_CACHE")}
    try:
        from tests.conftest import build_tiny_hub
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return build_tiny_hub
