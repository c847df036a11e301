"""jax's persistent compilation cache, as jaxgen sets it up: compiled programs kept across processes.

The first pipeline built applies the default (``apply_default``) unless ``set_compilation_cache`` was called.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

__all__ = ["set_compilation_cache", "apply_default", "DEFAULT_COMPILATION_CACHE"]

logger = logging.getLogger(__name__)

DEFAULT_COMPILATION_CACHE = Path("~/.cache/jaxgen/xla")
"""Where compiled programs are kept unless ``JAXGEN_COMPILATION_CACHE`` or ``set_compilation_cache`` says otherwise."""

_OFF = ("", "0", "off", "none", "false", "no")
_cache_chosen = False  # set_compilation_cache was called, or the default was applied


def set_compilation_cache(path: str | os.PathLike | None) -> None:
    """Keep compiled XLA programs in ``path`` (jax's persistent compilation cache); None turns it off.

    A later process that builds the same program (same pipeline, shapes, step count, devices)
    loads it instead of compiling it. The first pipeline built applies the default when this was
    not called: the directory in the environment variable ``JAXGEN_COMPILATION_CACHE`` ("off" or
    empty disables it), else ``~/.cache/jaxgen/xla``; a directory already set with
    ``jax.config.update("jax_compilation_cache_dir", ...)`` is left alone. Only programs that take
    longer than ``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile are
    written. The cache directory is trusted code: do not share it with people you do not trust.
    """
    from jax.experimental.compilation_cache import compilation_cache

    global _cache_chosen
    _cache_chosen = True
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        folder = Path(path).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", os.fspath(folder))
    compilation_cache.reset_cache()  # jax reads the setting once; make it read the new one


def apply_default() -> None:
    """Apply the default compilation cache once per process (see ``set_compilation_cache``)."""
    global _cache_chosen
    if _cache_chosen:
        return
    if jax.config.jax_compilation_cache_dir is not None:  # the user configured jax directly
        _cache_chosen = True
        return
    env = os.environ.get("JAXGEN_COMPILATION_CACHE")
    if env is not None and env.strip().lower() in _OFF:
        set_compilation_cache(None)
        return
    try:
        set_compilation_cache(env or DEFAULT_COMPILATION_CACHE)
    except OSError as e:  # a read-only home: run without the cache rather than fail
        logger.warning("jaxgen: no persistent compilation cache (%s)", e)
        _cache_chosen = True
