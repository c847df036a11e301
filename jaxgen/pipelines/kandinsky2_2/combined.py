"""Kandinsky 2.2 prior + decoder in one call: text to image, image to image, inpainting.

The combined pipelines of 2.1 (``jaxgen.pipelines.kandinsky.combined``: building from a decoder
checkpoint that names its prior, ``from_pipes``, diffusers' component names with ``prior_``, the
calls) with 2.2's prior and decoders. ``from_pretrained`` loads the prior first, whose CLIP ViT-bigG
image encoder is loaded alone, used for the zero-image embedding and let go (not resident for text to
image). The ControlNet has no combined pipeline in diffusers; ``cli_generate`` chains its prior and
decoder for ``jaxgen generate --hint``.
"""

from __future__ import annotations

from typing import Any, Callable

import PIL.Image

from jaxgen.pipelines.kandinsky.combined import (
    KandinskyCombinedPipeline, KandinskyImg2ImgCombinedPipeline, KandinskyInpaintCombinedPipeline, connected_prior,
    prior_options, run_combined,
)
from jaxgen.pipelines.kandinsky2_2.decoder import (
    KandinskyV22ControlnetImg2ImgPipeline, KandinskyV22ControlnetPipeline, KandinskyV22Img2ImgPipeline,
    KandinskyV22InpaintPipeline, KandinskyV22Pipeline,
)
from jaxgen.pipelines.kandinsky2_2.prior import KandinskyV22PriorPipeline

__all__ = ["KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline", "KandinskyV22InpaintCombinedPipeline",
           "cli_generate", "DEFAULT_PRIOR"]

DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
"""The prior ``jaxgen generate`` uses for a 2.2 decoder whose README.md names none (the ControlNet's)."""


class KandinskyV22CombinedPipeline(KandinskyCombinedPipeline):
    """Kandinsky 2.2 text to image, prior and decoder: ``pipe(prompt) -> ImagePipelineOutput(images)``;
    arguments as diffusers' (``KandinskyCombinedPipeline``'s)."""

    _decoder_class = KandinskyV22Pipeline
    _prior_class = KandinskyV22PriorPipeline


class KandinskyV22Img2ImgCombinedPipeline(KandinskyImg2ImgCombinedPipeline):
    """Kandinsky 2.2 image to image, prior and decoder: ``pipe(prompt, image, strength=0.3)``."""

    _decoder_class = KandinskyV22Img2ImgPipeline
    _prior_class = KandinskyV22PriorPipeline


class KandinskyV22InpaintCombinedPipeline(KandinskyInpaintCombinedPipeline):
    """Kandinsky 2.2 inpainting, prior and decoder: ``pipe(prompt, image, mask_image)`` (white = repaint)."""

    _decoder_class = KandinskyV22InpaintPipeline
    _prior_class = KandinskyV22PriorPipeline


def cli_generate(args: Any, call: dict, dtype: Any, save: Callable) -> list:
    """``jaxgen generate`` for a Kandinsky 2.2 decoder: prior then decoder (``--prior-model``: default the one
    the decoder's README.md names, else ``DEFAULT_PRIOR``); ``--image`` / ``--strength`` for image to image;
    ``--image`` / ``--mask`` for inpainting (an inpainting decoder); ``--hint`` (a depth map image) for the
    ControlNet checkpoint."""
    if "hint" not in call:
        combined = (KandinskyV22InpaintCombinedPipeline if "mask_image" in call
                    else KandinskyV22Img2ImgCombinedPipeline if "image" in call else KandinskyV22CombinedPipeline)
        return run_combined(combined, args, call, dtype)
    prior_path = args.prior_model
    if prior_path is None:
        try:
            prior_path = connected_prior(args.model)
        except ValueError:
            prior_path = DEFAULT_PRIOR
    from jaxgen.cli import load_options

    prior = KandinskyV22PriorPipeline.from_pretrained(prior_path, dtype=dtype, **load_options(args))
    decoder_class = KandinskyV22ControlnetImg2ImgPipeline if "image" in call else KandinskyV22ControlnetPipeline
    offload = {k: v for k, v in load_options(args).items() if k == "model_cpu_offload"}  # the decoder has no encoder
    decoder = decoder_class.from_pretrained(args.model, dtype=dtype, mesh=prior.mesh, **offload)
    options = prior_options(args)
    embeds = prior(args.prompt, negative_prompt=call.pop("negative_prompt", None),
                   num_images_per_prompt=call.pop("num_images_per_prompt"), rng=call["rng"],
                   num_inference_steps=options.get("prior_num_inference_steps", 25),
                   guidance_scale=options.get("prior_guidance_scale", 4.0))
    hint = call.pop("hint")
    return decoder(embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                   hint=hint.convert("RGB") if isinstance(hint, PIL.Image.Image) else hint, **call).images
