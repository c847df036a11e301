"""PixArtSigmaPipeline: PixArt-Σ, diffusers' ``PixArtSigmaPipeline``, on PixArt-α's pipeline.

Σ runs the same ``PixArtTransformer2DModel`` class, the same T5-XXL and the same sampling, so the pipeline is
``PixArtAlphaPipeline`` with what diffusers' Σ pipeline sets otherwise: prompts of 300 T5 tokens by default
instead of 120, no resolution / aspect-ratio micro-conditions (its transformers have none: their configs say
``use_additional_conditions: false``), and resolution binning with the 2K model's 2048 px bins as well (sample
size 256) besides α's 1024, 512 and 256 px ones. The per-resolution ``interpolation_scale`` of the position
embeddings and the SDXL VAE (scaling factor 0.13025) come from the checkpoint's configs.
"""

from __future__ import annotations

from jaxgen.pipelines.aspect_ratio_bins import SIGMA_BINS_BY_SAMPLE_SIZE
from jaxgen.pipelines.pixart_alpha import PixArtAlphaPipeline

__all__ = ["PixArtSigmaPipeline"]


class PixArtSigmaPipeline(PixArtAlphaPipeline):
    """PixArt-Σ text-to-image: ``pipe(prompt) -> ImagePipelineOutput(images=...)``, with diffusers' arguments
    and defaults (``max_sequence_length`` 300); components and everything else as ``PixArtAlphaPipeline``."""

    default_max_sequence_length = 300
    aspect_ratio_bins = SIGMA_BINS_BY_SAMPLE_SIZE
    micro_conditions = False
