"""jaxgen: diffusers' text-to-image pipelines in JAX/Flax.

Pipelines live at ``jaxgen.<diffusers class name>`` (``jaxgen.PixArtAlphaPipeline``), models at
``jaxgen.models.<name>``, schedulers at ``jaxgen.schedulers.<name>``. Attributes are imported on
first use, so ``import jaxgen`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from jaxgen.pipelines import PIPELINES  # a dict of names only: importing it is cheap

__version__ = "0.1.0"

# public name -> module that defines it (every pipeline of jaxgen.pipelines.PIPELINES, and these)
_EXPORTS = {
    **PIPELINES,
    "AutoPipelineForText2Image": "jaxgen.pipelines.auto_pipeline",
    "AutoPipelineForImage2Image": "jaxgen.pipelines.auto_pipeline",
    "AutoPipelineForInpainting": "jaxgen.pipelines.auto_pipeline",
    "DiffusionPipeline": "jaxgen.pipelines.pipeline_utils",
    "ImagePipelineOutput": "jaxgen.pipelines.pipeline_utils",
    "set_compilation_cache": "jaxgen.pipelines.pipeline_utils",
    "DDPMScheduler": "jaxgen.schedulers",
    "DDIMScheduler": "jaxgen.schedulers",
    "DPMSolverMultistepScheduler": "jaxgen.schedulers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jaxgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
