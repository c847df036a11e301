"""jaxgen: diffusers' text-to-image pipelines in JAX/Flax.

Pipelines live at ``jaxgen.<diffusers class name>`` (``jaxgen.PixArtAlphaPipeline``), schedulers at
``jaxgen.<name>`` and ``jaxgen.schedulers.<name>``, models at ``jaxgen.models.<name>``; the
subpackages ``jaxgen.models``, ``jaxgen.schedulers``, ``jaxgen.text``, ``jaxgen.sharding`` and
``jaxgen.batch`` are reachable after a bare ``import jaxgen``. Everything is imported on first use
(names come from ``jaxgen.registry``), so ``import jaxgen`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from jaxgen import registry

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    **registry.PIPELINES,
    **registry.SCHEDULERS,
    "AutoPipelineForText2Image": "jaxgen.pipelines.auto_pipeline",
    "AutoPipelineForImage2Image": "jaxgen.pipelines.auto_pipeline",
    "AutoPipelineForInpainting": "jaxgen.pipelines.auto_pipeline",
    "DiffusionPipeline": "jaxgen.pipelines.pipeline_utils",
    "ImagePipelineOutput": "jaxgen.pipelines.outputs",
    "set_compilation_cache": "jaxgen.pipelines.compilation_cache",
}
_SUBMODULES = ("models", "schedulers", "pipelines", "text", "nn", "sharding", "batch", "hub", "quantize",
               "image_processing", "registry", "cli", "utils")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return registry.load(_EXPORTS[name], name)
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxgen.{name}")
    raise AttributeError(f"module 'jaxgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
