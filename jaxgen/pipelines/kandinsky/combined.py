"""Kandinsky 2.1 prior + decoder in one call: text to image, image to image, inpainting.

A ``jaxgen.pipelines.combined.PriorDecoderPipeline`` (``pipe.prior_pipe``, ``pipe.decoder_pipe``,
diffusers' component names with ``prior_``, ``from_pretrained`` finding the prior the decoder's README.md
names, ``from_pipes``) with Kandinsky's calls: the prior's image embeddings, then the decoder on them
with each prompt and image argument repeated per row.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import jax
import numpy as np

from jaxgen.pipelines import checks
from jaxgen.pipelines.combined import PriorDecoderPipeline, connected_prior, prior_options, run_combined
from jaxgen.pipelines.kandinsky.decoder import KandinskyImg2ImgPipeline, KandinskyInpaintPipeline, KandinskyPipeline
from jaxgen.pipelines.kandinsky.prior import KandinskyPriorPipeline
from jaxgen.pipelines.outputs import ImagePipelineOutput
from jaxgen.pipelines.pipeline_utils import as_key

__all__ = ["KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline", "KandinskyInpaintCombinedPipeline",
           "connected_prior", "cli_generate", "run_combined", "prior_options"]


def _per_image(values: Any, count: int, name: str) -> Any:
    """A prompt or image argument for ``count`` images: each entry repeated ``count / len`` times, in order
    (the prior's rows are each prompt's images in a row)."""
    if values is None:
        return None
    if isinstance(values, (list, tuple)):
        items = list(values)
    elif np.ndim(values) == 4 and not isinstance(values, str):  # an NHWC batch: one entry per row
        items = list(np.asarray(values))
    else:
        items = [values]
    if not items:
        raise ValueError(f"`{name}` is an empty list: pass at least one")
    if count % len(items):
        raise ValueError(f"`{name}` has {len(items)} entries, which does not divide the {count} images")
    return [x for x in items for _ in range(count // len(items))]


class _KandinskyCombined(PriorDecoderPipeline):
    """Kandinsky's prior + decoder: the prior's embeddings, then the decoder on them. Subclasses set
    ``_decoder_class`` and write ``__call__``."""

    _prior_class: ClassVar[type] = KandinskyPriorPipeline

    def run(self, prompt: Any, negative_prompt: Any, num_images_per_prompt: int, prior_num_inference_steps: int,
            prior_guidance_scale: float, rng: Any, latents: Any, images: dict[str, Any],
            **options: Any) -> ImagePipelineOutput | tuple:
        """The decoder's checks on its part of the call (with placeholder embeddings of the rows the prior will give),
        then the prior on ``prompt`` (``latents``: its initial noise), then the decoder on its embeddings with
        ``images`` (name -> argument) and ``options``: a mistake in the decoder's arguments fails before the prior
        encodes or compiles anything."""
        self.check_before_prior(prompt, num_images_per_prompt, latents, images, options)
        prior_key, decoder_key = jax.random.split(as_key(rng))
        embeds, negative = self.prior_pipe(
            prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=prior_num_inference_steps, rng=prior_key, latents=latents,
            guidance_scale=prior_guidance_scale, output_type="pt", return_dict=False)
        return self.decode(prompt, embeds, negative, decoder_key, images, **options)

    def _decoder_arguments(self, prompt: Any, rows: int, images: dict[str, Any]) -> dict[str, Any]:
        """The decoder's prompt (2.1's decoders take it) and image arguments for the prior's ``rows`` (each prompt's
        images in a row): each repeated per row, a single mask shared."""
        call = {}
        if "prompt" in self.decoder_pipe.call_parameters():
            call["prompt"] = _per_image(prompt, rows, "prompt")
        for name, value in images.items():
            shared = name == "mask_image" and not (isinstance(value, (list, tuple)) and len(value) > 1)
            call[name] = value if shared else _per_image(value, rows, name)
        return call

    def check_before_prior(self, prompt: Any, num_images_per_prompt: int, latents: Any, images: dict[str, Any],
                           options: dict) -> None:
        """The prior's ``latents`` and the decoder's checks (run options, size, image arguments' counts, types, ranges
        and sizes, ``strength``) on zero embeddings of the rows the prior will give; host-side only."""
        decoder = self.decoder_pipe
        checks.check_run_options(num_images_per_prompt=num_images_per_prompt)
        rows = checks.prompt_batch_size(prompt, None) * num_images_per_prompt
        checks.check_latents(latents, (rows, self.prior_pipe.prior.config.embedding_dim))
        call = self._decoder_arguments(prompt, rows, images)
        zeros = np.zeros((rows, decoder.image_embed_width()), np.float32)
        height, width = options["height"], options["width"]
        decoder.begin({}, call.pop("prompt", None), zeros, zeros, height, width, num_images_per_prompt=1,
                      guidance_scale=options["guidance_scale"], output_type=options["output_type"],
                      num_inference_steps=options["num_inference_steps"], images=call)
        if "strength" in options:
            checks.check_strength(options["strength"])
        for name, value in call.items():
            if name == "mask_image":
                decoder.preprocess_mask(value, height, width)
            else:
                decoder.preprocess_image(value, height, width, name)

    def decode(self, prompt: Any, image_embeds: jax.Array, negative_image_embeds: jax.Array, key: jax.Array,
               images: dict[str, Any], **options: Any) -> ImagePipelineOutput | tuple:
        """The decoder on the prior's rows with the prompt and images as ``_decoder_arguments`` gives them, then
        ``options``."""
        call = dict(options, image_embeds=image_embeds, negative_image_embeds=negative_image_embeds, rng=key)
        return self.decoder_pipe(**call, **self._decoder_arguments(prompt, image_embeds.shape[0], images))


class KandinskyCombinedPipeline(_KandinskyCombined):
    """Kandinsky 2.1 text to image, prior and decoder: ``pipe(prompt) -> ImagePipelineOutput(images)``."""

    _decoder_class = KandinskyPipeline

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments: the prior runs ``prior_num_inference_steps`` with ``prior_guidance_scale``
        (and ``negative_prompt``, and ``latents`` as its initial noise), the decoder the rest."""
        return self.run(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                        prior_guidance_scale, rng, latents, {}, width=width, height=height,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type=output_type,
                        callback=callback, callback_steps=callback_steps, return_dict=return_dict)


class KandinskyImg2ImgCombinedPipeline(_KandinskyCombined):
    """Kandinsky 2.1 image to image, prior and decoder: ``pipe(prompt, image, strength=0.3)``."""

    _decoder_class = KandinskyImg2ImgPipeline

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        strength: float = 0.3,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """As ``KandinskyCombinedPipeline``, plus ``image`` (one per prompt) and ``strength``."""
        return self.run(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                        prior_guidance_scale, rng, latents, {"image": image}, strength=strength, width=width,
                        height=height, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        output_type=output_type, callback=callback, callback_steps=callback_steps,
                        return_dict=return_dict)


class KandinskyInpaintCombinedPipeline(_KandinskyCombined):
    """Kandinsky 2.1 inpainting, prior and decoder: ``pipe(prompt, image, mask_image)``."""

    _decoder_class = KandinskyInpaintPipeline

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        mask_image: Any,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """As ``KandinskyCombinedPipeline``, plus ``image`` and ``mask_image`` (white = repaint)."""
        return self.run(prompt, negative_prompt, num_images_per_prompt, prior_num_inference_steps,
                        prior_guidance_scale, rng, latents, {"image": image, "mask_image": mask_image}, width=width,
                        height=height, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        output_type=output_type, callback=callback, callback_steps=callback_steps,
                        return_dict=return_dict)


def cli_generate(args: Any, call: dict, dtype: Any, save: Callable) -> list:
    """``jaxgen generate`` for a Kandinsky 2.1 decoder: prior then decoder (``--prior-model``, default the one
    the decoder names; ``--prior-steps``, ``--prior-guidance``; ``--image`` / ``--strength``: image to image;
    ``--image`` / ``--mask``: inpainting, with an inpainting decoder)."""
    combined = (KandinskyInpaintCombinedPipeline if "mask_image" in call
                else KandinskyImg2ImgCombinedPipeline if "image" in call else KandinskyCombinedPipeline)
    return run_combined(combined, args, call, dtype)
