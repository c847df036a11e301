"""DeepFloyd IF stage II: super-resolution of the stage I image (64 -> 256 pixels), plain, image to
image and inpainting. The UNet sees the noisy image and the stage I image, upscaled and noised to
``noise_level``, as 6 channels, with the noise level as its class label."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen.image_processing import as_image_list, stack_image_arrays, to_signed_range
from jaxgen.pipelines import checks, tasks
from jaxgen.pipelines.deepfloyd_if.common import _COMPONENTS, _IFPipelineBase, _split_rng, upscale_and_noise
from jaxgen.pipelines.outputs import IFPipelineOutput
from jaxgen.pipelines.pipeline_utils import Batch, ComponentSpec

__all__ = ["IFSuperResolutionPipeline", "IFImg2ImgSuperResolutionPipeline", "IFInpaintingSuperResolutionPipeline"]

logger = logging.getLogger("jaxgen.pipelines.deepfloyd_if")


class _IFStageII(_IFPipelineBase):
    """Stage II: the UNet takes the noisy image and the noised, upscaled stage I image (6 channels)."""

    _components = {
        **{k: v for k, v in _COMPONENTS.items() if k in ("tokenizer", "text_encoder", "unet", "scheduler")},
        "image_noising_scheduler": ComponentSpec("scheduler"),
        **{k: v for k, v in _COMPONENTS.items() if k in ("safety_checker", "feature_extractor", "watermarker")},
    }

    def __init__(self, *, mesh: Any = None, **components: Any) -> None:
        super().__init__(mesh=mesh, **components)
        if self.unet is not None and self.unet.config.in_channels != 6:
            logger.warning(
                "It seems like you have loaded a checkpoint that shall not be used for super resolution as it accepts"
                f" {self.unet.config.in_channels} input channels instead of 6. Please make sure to pass a super"
                " resolution checkpoint as the `'unet'`: IFSuperResolutionPipeline.from_pretrained(unet=super_resolution_unet, ...)`."
            )

    @property
    def image_channels(self) -> int:
        return self.unet.config.in_channels // 2

    def check_noise_level(self, noise_level: Any) -> None:
        """``noise_level``: an int timestep of the ``image_noising_scheduler``."""
        n = self.image_noising_scheduler.config["num_train_timesteps"]
        if isinstance(noise_level, bool) or not isinstance(noise_level, (int, np.integer)):
            raise ValueError(f"`noise_level` must be an int timestep of `self.noising_scheduler`, got {noise_level!r}")
        if noise_level < 0 or noise_level >= n:
            raise ValueError(
                f"`noise_level`: {noise_level} must be a valid timestep in `self.noising_scheduler`, [0, {n})"
            )

    def low_res_image(self, image: Any, batch: Batch, height: int, width: int) -> np.ndarray:
        """Stage II's low-resolution ``image`` (PIL at its size, as diffusers; arrays in [0, 1] or [-1, 1])
        -> float32 (B * n, h, w, C) in [-1, 1], checked against the output size."""
        images = as_image_list(image, "image")
        if isinstance(images[0], PIL.Image.Image):
            low_res = np.stack([np.array(i).astype(np.float32) / 127.5 - 1.0 for i in images], axis=0)
        else:
            low_res = to_signed_range(stack_image_arrays(images, "image"))
        if low_res.shape[-1] != self.image_channels:
            raise ValueError(f"`image` must have {self.image_channels} channels (channels last), got shape {low_res.shape}")
        if low_res.shape[1] > height or low_res.shape[2] > width:
            raise ValueError(
                f"`image` is {low_res.shape[1]}x{low_res.shape[2]}, larger than the output {height}x{width}:"
                f" {type(self).__name__} upscales the lower-resolution image of the previous stage (pass that image,"
                " or a larger `height`/`width`)"
            )
        return np.repeat(low_res, batch.per_prompt, axis=0)

    def _upscaled(self, low_res: np.ndarray, key: jax.Array, noise_level: int, shape: tuple[int, ...]) -> dict:
        """The stage II conditioning: the low-res image upscaled to ``shape`` and noised to ``noise_level``."""
        levels = np.full((shape[0],), noise_level, np.int32)
        upscaled = upscale_and_noise(jnp.asarray(low_res), jax.random.normal(key, shape), jnp.asarray(levels),
                                     height=shape[1], width=shape[2], scheduler=self.image_noising_scheduler)
        return tasks.noise_level_condition(upscaled, noise_level, shape[0])

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None, call: Any) -> dict[str, Any]:
        """A stage I image a quarter of the output size (IF's x4), and ``original_image`` / ``mask_image``
        of the output size where the pipeline takes them."""
        height, width = self._check_size(height, width)
        out = {"image": np.zeros((batch_size, max(1, height // 4), max(1, width // 4), 3), np.float32)}
        takes = self.call_parameters()
        if "original_image" in takes:
            out["original_image"] = np.zeros((batch_size, height, width, 3), np.float32)
        if "mask_image" in takes:
            out["mask_image"] = np.ones((batch_size, height, width, 1), np.float32)
        return out



class IFSuperResolutionPipeline(_IFStageII):
    """IF stage II: ``pipe(image=stage_I_images, prompt_embeds=..., negative_prompt_embeds=...)`` upscales
    to height x width (the UNet's sample size, 256, by default). Components: ``IFPipeline``'s plus
    ``image_noising_scheduler`` (the DDPM schedule that noises the upscaled image to ``noise_level``)."""

    def check_inputs(self, prompt, image, batch_size, noise_level, callback_steps, negative_prompt=None,
                     prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
        self.check_noise_level(noise_level)
        self.check_image_inputs(batch_size, image=image)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        image: Any = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 4.0,
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
        cross_attention_kwargs: dict | None = None,
        noise_level: int = 250,
        clean_caption: bool = True,
        latents: Any = None,
        **kwargs: Any,
    ) -> IFPipelineOutput | tuple:
        """Upscale ``image`` (the stage I output: PIL, or NHWC arrays in [0, 1] or [-1, 1]) by the prompt.
        ``latents``: the initial noise (B * n, height, width, 3)."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps, timesteps=timesteps,
                        cross_attention_kwargs=cross_attention_kwargs)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt)
        self.check_inputs(prompt, image, batch.prompts, noise_level, callback_steps, negative_prompt, prompt_embeds,
                          negative_prompt_embeds)
        height, width = self._check_size(height, width)
        checks.check_images_fit(batch.total, height, width,
                                f"{batch.prompts} prompts x `num_images_per_prompt` = {num_images_per_prompt}")
        low_res = self.low_res_image(image, batch, height, width)
        shape = (batch.total, height, width, self.image_channels)
        checks.check_latents(latents, shape)

        embeds = self.encode_prompt(prompt, guidance_scale > 1.0, num_images_per_prompt, negative_prompt,
                                    prompt_embeds, negative_prompt_embeds, clean_caption)
        noise_key, image_key, step_key = _split_rng(rng)
        state = self._start(num_inference_steps, timesteps, batch, shape)
        images = self._initial_images(latents, noise_key, shape, state)
        upscaled = self._upscaled(low_res, image_key, noise_level, shape)
        images = self._sample(images, state, embeds, guidance_scale, step_key, batch, eta=eta, callback=callback,
                              callback_steps=callback_steps, extra=upscaled)
        return self.output(images, batch, output_type, return_dict)


class IFImg2ImgSuperResolutionPipeline(_IFStageII):
    """IF stage II image to image: upscales ``image`` (stage I's output) to ``original_image``'s size,
    starting from ``original_image`` noised by ``strength``. Components as ``IFSuperResolutionPipeline``."""

    def check_inputs(self, prompt, image, original_image, batch_size, callback_steps, negative_prompt=None,
                     prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
        self.check_image_inputs(batch_size, image=image, original_image=original_image)

    def __call__(
        self,
        image: Any,
        original_image: Any = None,
        strength: float = 0.8,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 4.0,
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
        cross_attention_kwargs: dict | None = None,
        noise_level: int = 250,
        clean_caption: bool = True,
        latents: Any = None,
        **kwargs: Any,
    ) -> IFPipelineOutput | tuple:
        """``latents``: the noise added to ``original_image``, its shape (B * n, H, W, 3)."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps, timesteps=timesteps,
                        cross_attention_kwargs=cross_attention_kwargs)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt)
        self.check_inputs(prompt, image, original_image, batch.prompts, callback_steps, negative_prompt, prompt_embeds,
                          negative_prompt_embeds)
        checks.check_strength(strength)
        self.check_noise_level(noise_level)
        init = np.repeat(self.image_rows(original_image, batch, "original_image"), num_images_per_prompt, axis=0)
        low_res = self.low_res_image(image, batch, *init.shape[1:3])
        checks.check_latents(latents, init.shape)

        embeds = self.encode_prompt(prompt, guidance_scale > 1.0, num_images_per_prompt, negative_prompt,
                                    prompt_embeds, negative_prompt_embeds, clean_caption)
        noise_key, image_key, step_key = _split_rng(rng)
        state = self._start(num_inference_steps, timesteps, batch, init.shape, strength)
        images = self._initial_images(latents, noise_key, init.shape, state, init)
        upscaled = self._upscaled(low_res, image_key, noise_level, init.shape)
        images = self._sample(images, state, embeds, guidance_scale, step_key, batch, eta=eta, callback=callback,
                              callback_steps=callback_steps, extra=upscaled)
        return self.output(images, batch, output_type, return_dict)


class IFInpaintingSuperResolutionPipeline(_IFStageII):
    """IF stage II inpainting: upscales ``image`` (stage I's inpainted output) to ``original_image``'s
    size, repainting only where ``mask_image`` is 1. Components as ``IFSuperResolutionPipeline``."""

    def check_inputs(self, prompt, image, original_image, mask_image, batch_size, callback_steps,
                     negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
        self.check_image_inputs(batch_size, image=image, original_image=original_image, mask_image=mask_image)

    def __call__(
        self,
        image: Any,
        original_image: Any = None,
        mask_image: Any = None,
        strength: float = 0.8,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 4.0,
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
        cross_attention_kwargs: dict | None = None,
        noise_level: int = 0,
        clean_caption: bool = True,
        latents: Any = None,
        **kwargs: Any,
    ) -> IFPipelineOutput | tuple:
        """``latents``: the noise added to ``original_image``, its shape (B * n, H, W, 3)."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps, timesteps=timesteps,
                        cross_attention_kwargs=cross_attention_kwargs)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt)
        self.check_inputs(prompt, image, original_image, mask_image, batch.prompts, callback_steps, negative_prompt,
                          prompt_embeds, negative_prompt_embeds)
        checks.check_strength(strength)
        self.check_noise_level(noise_level)
        init = self.image_rows(original_image, batch, "original_image")
        mask = self._mask_rows(mask_image, init, "original_image", batch)
        init = np.repeat(init, num_images_per_prompt, axis=0)
        low_res = self.low_res_image(image, batch, *init.shape[1:3])
        checks.check_latents(latents, init.shape)

        embeds = self.encode_prompt(prompt, guidance_scale > 1.0, num_images_per_prompt, negative_prompt,
                                    prompt_embeds, negative_prompt_embeds, clean_caption)
        noise_key, image_key, step_key = _split_rng(rng)
        state = self._start(num_inference_steps, timesteps, batch, init.shape, strength)
        images = self._initial_images(latents, noise_key, init.shape, state, init, mask)
        upscaled = self._upscaled(low_res, image_key, noise_level, init.shape)
        images = self._sample(images, state, embeds, guidance_scale, step_key, batch, eta=eta, callback=callback,
                              callback_steps=callback_steps, mask=mask, extra=upscaled)
        return self.output(images, batch, output_type, return_dict)
