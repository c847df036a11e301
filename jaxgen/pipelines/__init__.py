"""Pipelines, one module (or package) per family, on the shared layer: ``pipeline_utils``
(``DiffusionPipeline``), ``sampling`` (the compiled loop), ``tasks`` (img2img, inpainting,
super-resolution parts), ``checks`` (argument checks), ``outputs``, ``loading``. ``PIPELINES`` maps
diffusers class names to their modules (from ``jaxgen.registry``)."""

from jaxgen.registry import PIPELINES

__all__ = ["PIPELINES"]
