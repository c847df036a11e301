"""DeepFloyd IF stage I: text to image, image to image, inpainting (64 x 64 pixels for IF-I-XL)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from jaxgen.pipelines import checks
from jaxgen.pipelines.deepfloyd_if.common import _IFPipelineBase, _split_rng
from jaxgen.pipelines.outputs import IFPipelineOutput

__all__ = ["IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline"]


class IFPipeline(_IFPipelineBase):
    """IF stage I, text to image: ``pipe(prompt) -> IFPipelineOutput(images, nsfw_detected, watermark_detected)``.

    Components (as diffusers): ``tokenizer`` (T5), ``text_encoder`` (``T5EncoderModel``), ``unet``
    (``UNet2DConditionModel``), ``scheduler`` (``DDPMScheduler``, learned-range variance and dynamic
    thresholding as IF's config sets them; any jaxgen scheduler may be swapped in), and the optional
    ``safety_checker`` (``IFSafetyChecker``), ``feature_extractor`` (transformers' CLIP image
    processor) and ``watermarker`` (``IFWatermarker``), on by default: pass ``safety_checker=None,
    feature_extractor=None, watermarker=None`` to turn them off.
    """

    def check_inputs(self, prompt, callback_steps, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        rng: Any = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        clean_caption: bool = True,
        cross_attention_kwargs: dict | None = None,
        latents: Any = None,
        **kwargs: Any,
    ) -> IFPipelineOutput | tuple:
        """Generate images (height x width, the UNet's sample size by default) from text.

        Arguments are diffusers' (``generator`` is ``rng``, an int seed or a ``jax.random`` key);
        ``latents``: the initial noise (B * num_images_per_prompt, height, width, 3). ``timesteps``:
        e.g. ``fast27_timesteps``. Returns ``IFPipelineOutput``, or ``(images, nsfw_detected,
        watermark_detected)`` with ``return_dict=False``.
        """
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps, timesteps=timesteps,
                        cross_attention_kwargs=cross_attention_kwargs)
        self.check_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        height, width = self._check_size(height, width)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt, (height, width))
        shape = (batch.total, height, width, self.image_channels)
        checks.check_latents(latents, shape)

        embeds = self.encode_prompt(prompt, guidance_scale > 1.0, num_images_per_prompt, negative_prompt,
                                    prompt_embeds, negative_prompt_embeds, clean_caption)
        noise_key, _, step_key = _split_rng(rng)
        state = self._start(num_inference_steps, timesteps, batch, shape)
        images = self._initial_images(latents, noise_key, shape, state)
        images = self._sample(images, state, embeds, guidance_scale, step_key, batch, eta=eta, callback=callback,
                              callback_steps=callback_steps)
        return self.output(images, batch, output_type, return_dict)


class _IFStageIImages(_IFPipelineBase):
    """Stage I pipelines that take an ``image`` (and ``mask_image``): placeholders for ``warmup``."""

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None, call: Any) -> dict[str, Any]:
        height, width = self._check_size(height, width)
        out = {"image": np.zeros((batch_size, height, width, 3), np.float32)}
        if "mask_image" in self.call_parameters():
            out["mask_image"] = np.ones((batch_size, height, width, 1), np.float32)
        return out


class IFImg2ImgPipeline(_IFStageIImages):
    """IF stage I, image to image: ``pipe(prompt, image, strength=0.7)``; the image noised to the
    ``strength`` fraction of the schedule, then denoised from there. Components as ``IFPipeline``."""

    def check_inputs(self, prompt, image, batch_size, callback_steps, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
        self.check_image_inputs(batch_size, image=image)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float = 0.7,
        num_inference_steps: int = 80,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 10.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        rng: Any = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        clean_caption: bool = True,
        cross_attention_kwargs: dict | None = None,
        latents: Any = None,
        **kwargs: Any,
    ) -> IFPipelineOutput | tuple:
        """Transform ``image`` (PIL, resized with IF's resize to the sample size; or NHWC arrays) by the
        prompt. ``latents``: the noise added to the image, its shape (B * n, H, W, 3)."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps, timesteps=timesteps,
                        cross_attention_kwargs=cross_attention_kwargs)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt)
        self.check_inputs(prompt, image, batch.prompts, callback_steps, negative_prompt, prompt_embeds,
                          negative_prompt_embeds)
        checks.check_strength(strength)
        init = np.repeat(self.image_rows(image, batch), num_images_per_prompt, axis=0)
        checks.check_latents(latents, init.shape)

        embeds = self.encode_prompt(prompt, guidance_scale > 1.0, num_images_per_prompt, negative_prompt,
                                    prompt_embeds, negative_prompt_embeds, clean_caption)
        noise_key, _, step_key = _split_rng(rng)
        state = self._start(num_inference_steps, timesteps, batch, init.shape, strength)
        images = self._initial_images(latents, noise_key, init.shape, state, init)
        images = self._sample(images, state, embeds, guidance_scale, step_key, batch, eta=eta, callback=callback,
                              callback_steps=callback_steps)
        return self.output(images, batch, output_type, return_dict)


class IFInpaintingPipeline(_IFStageIImages):
    """IF stage I inpainting: ``pipe(prompt, image, mask_image, strength=1.0)``; the pixels where the
    mask is 1 are generated, the others kept (put back after every step). Components as ``IFPipeline``."""

    def check_inputs(self, prompt, image, mask_image, batch_size, callback_steps, negative_prompt=None,
                     prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
        self.check_image_inputs(batch_size, image=image, mask_image=mask_image)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        mask_image: Any = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        rng: Any = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        clean_caption: bool = True,
        cross_attention_kwargs: dict | None = None,
        latents: Any = None,
        **kwargs: Any,
    ) -> IFPipelineOutput | tuple:
        """Repaint ``image`` where ``mask_image`` is white (>= 0.5). The mask: one for all images or one
        per prompt, the image's size after preprocessing (PIL: both resized with IF's resize)."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps, timesteps=timesteps,
                        cross_attention_kwargs=cross_attention_kwargs)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt)
        self.check_inputs(prompt, image, mask_image, batch.prompts, callback_steps, negative_prompt, prompt_embeds,
                          negative_prompt_embeds)
        checks.check_strength(strength)
        init = self.image_rows(image, batch)
        mask = self._mask_rows(mask_image, init, "image", batch)
        init = np.repeat(init, num_images_per_prompt, axis=0)
        checks.check_latents(latents, init.shape)

        embeds = self.encode_prompt(prompt, guidance_scale > 1.0, num_images_per_prompt, negative_prompt,
                                    prompt_embeds, negative_prompt_embeds, clean_caption)
        noise_key, _, step_key = _split_rng(rng)
        state = self._start(num_inference_steps, timesteps, batch, init.shape, strength)
        images = self._initial_images(latents, noise_key, init.shape, state, init, mask)
        images = self._sample(images, state, embeds, guidance_scale, step_key, batch, eta=eta, callback=callback,
                              callback_steps=callback_steps, mask=mask)
        return self.output(images, batch, output_type, return_dict)
