"""PyTorch checkpoints -> jaxgen params. The only code that knows PyTorch names and layouts.

``key_rule(class_name, config)`` returns the key map of an architecture (see ``convert.engine``), found
by the model's module: the key map of ``jaxgen/models/<name>.py`` (or ``jaxgen/text/<name>.py``) lives in
``convert/<name>.py``, so a new model needs no table entry here;
``python -m convert SRC DST`` converts a whole pipeline folder to orbax checkpoints that load
without torch or conversion.
"""

from __future__ import annotations

import importlib
from typing import Any

from convert.engine import ConversionError, KeyRule, Source, convert_state_dict, default_rule

__all__ = ["key_rule", "ignored_keys", "prepare_state_dict", "ConversionError", "convert_state_dict", "Source", "KeyRule"]


def _module(class_name: str):
    """The key-map module of a jaxgen model class: ``convert/<module>.py`` for the class defined in
    ``jaxgen/.../<module>.py`` (``jaxgen.models.pixart_transformer`` -> ``convert.pixart_transformer``)."""
    from jaxgen import registry

    if class_name not in registry.MODELS:
        raise ValueError(f"no PyTorch key map for {class_name!r}: not a jaxgen model; known: {sorted(registry.MODELS)}")
    return importlib.import_module("convert." + registry.MODELS[class_name].rsplit(".", 1)[-1])


def key_rule(class_name: str, config: Any) -> KeyRule:
    """The key map (Flax path, shape) -> Source for a jaxgen model class and its config."""
    return _module(class_name).key_rule(config)


def prepare_state_dict(class_name: str, config: Any, state_dict: dict) -> dict:
    """Rewrite a state dict before the key map runs, where an architecture has legacy key names."""
    fn = getattr(_module(class_name), "rename_legacy_keys", None)
    return fn(state_dict) if fn else state_dict


def ignored_keys(class_name: str, config: Any) -> tuple[str, ...]:
    """Regular expressions of PyTorch keys the architecture knowingly leaves unused."""
    fn = getattr(_module(class_name), "ignored_keys", None)
    return tuple(fn(config)) if fn else ()
