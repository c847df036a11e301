"""Kandinsky 2.1: the prior (``prior.py``), the decoders (``decoder.py``: text-to-image, image-to-image,
inpainting; shared parts in ``common.py``) and prior + decoder in one call (``combined.py``)."""

from jaxgen.pipelines.kandinsky.combined import (
    KandinskyCombinedPipeline, KandinskyImg2ImgCombinedPipeline, KandinskyInpaintCombinedPipeline,
)
from jaxgen.pipelines.kandinsky.decoder import KandinskyImg2ImgPipeline, KandinskyInpaintPipeline, KandinskyPipeline
from jaxgen.pipelines.kandinsky.prior import KandinskyPriorPipeline, KandinskyPriorPipelineOutput

__all__ = [
    "KandinskyPriorPipeline", "KandinskyPriorPipelineOutput", "KandinskyPipeline", "KandinskyImg2ImgPipeline",
    "KandinskyInpaintPipeline", "KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline",
    "KandinskyInpaintCombinedPipeline",
]
