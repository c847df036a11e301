"""Kandinsky 2.2: the priors (``prior.py``: text to embeddings, emb2emb), the decoders (``decoder.py``: text
to image, image to image, inpainting, the depth ControlNet's two) and prior + decoder (``combined.py``).
Built on Kandinsky 2.1's parts (``jaxgen.pipelines.kandinsky``)."""

from jaxgen.pipelines.kandinsky2_2.combined import (
    KandinskyV22CombinedPipeline, KandinskyV22Img2ImgCombinedPipeline, KandinskyV22InpaintCombinedPipeline,
)
from jaxgen.pipelines.kandinsky2_2.decoder import (
    KandinskyV22ControlnetImg2ImgPipeline, KandinskyV22ControlnetPipeline, KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline, KandinskyV22Pipeline,
)
from jaxgen.pipelines.kandinsky2_2.prior import KandinskyV22PriorEmb2EmbPipeline, KandinskyV22PriorPipeline

__all__ = [
    "KandinskyV22PriorPipeline", "KandinskyV22PriorEmb2EmbPipeline", "KandinskyV22Pipeline",
    "KandinskyV22Img2ImgPipeline", "KandinskyV22InpaintPipeline", "KandinskyV22ControlnetPipeline",
    "KandinskyV22ControlnetImg2ImgPipeline", "KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline",
    "KandinskyV22InpaintCombinedPipeline",
]
