"""jaxgen's models by their diffusers/transformers class names: ``jaxgen.models.<Name>``.

The names come from ``jaxgen.registry.MODELS`` (text encoders live in ``jaxgen.text`` and are
reachable here too), as do their config dataclasses (``jaxgen.models.AutoencoderKLConfig``); each is
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from jaxgen import registry

__all__ = sorted(registry.MODELS)


def __getattr__(name: str) -> Any:
    if name in registry.MODELS:
        return registry.load(registry.MODELS[name], name)
    if name.endswith("Config"):  # a model's config dataclass (``AutoencoderKLConfig``, ``T5Config``)
        for module in dict.fromkeys(registry.MODELS.values()):
            found = getattr(importlib.import_module(module), name, None)
            if found is not None:
                return found
    raise AttributeError(f"module 'jaxgen.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
