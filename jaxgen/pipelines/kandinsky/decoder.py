"""Kandinsky 2.1's decoders: text-to-image, image-to-image and inpainting from the prior's image embeddings.

Each takes the prompt and the prior's ``image_embeds`` / ``negative_image_embeds``
(``KandinskyPriorPipeline``), encodes the prompt with M-CLIP, denoises MoVQ latents with the UNet
(DDIM by default) and decodes them with the MoVQ.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.image_processing import _resize_nearest, as_image_list, preprocess_mask, stack_mask_arrays
from jaxgen.pipelines import checks, tasks
from jaxgen.pipelines.kandinsky.common import KandinskyDecoderBase
from jaxgen.pipelines.outputs import ImagePipelineOutput
from jaxgen.pipelines.pipeline_utils import as_key
from jaxgen.schedulers.base import _torch_linspace_f32, cumprod_f32

__all__ = ["KandinskyPipeline", "KandinskyImg2ImgPipeline", "KandinskyInpaintPipeline", "InpaintingParts",
           "noise_image_latents", "shrink_kept_region", "masked_image_channels"]


class KandinskyPipeline(KandinskyDecoderBase):
    """Kandinsky 2.1 text to image: ``pipe(prompt, image_embeds, negative_image_embeds) -> ImagePipelineOutput``.

    ``image_embeds`` / ``negative_image_embeds``: (B, 768) from ``KandinskyPriorPipeline`` (one row per
    prompt). Images are ``height`` x ``width`` rounded up to multiples of 64.
    """

    def __call__(
        self,
        prompt: str | list[str],
        image_embeds: Any,
        negative_image_embeds: Any,
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments (``generator`` is ``rng``: an int seed or a ``jax.random`` key); ``latents``:
        the initial noise (B * n, h, w, 4), channels last. Returns ``ImagePipelineOutput(images)``."""
        batch, embeds = self.begin(kwargs, prompt, image_embeds, negative_image_embeds, height, width,
                                   num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                                   output_type=output_type, num_inference_steps=num_inference_steps)
        shape = self.latents_shape(batch, height, width, self.unet.config.in_channels)
        checks.check_latents(latents, shape)

        text = self.encode_prompt(prompt, num_images_per_prompt, guidance_scale > 1.0, negative_prompt)
        latents = self.sample_from_noise(latents, shape, num_inference_steps, guidance_scale, rng, batch, embeds,
                                         text=text, callback=callback, callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)


def noise_image_latents(latents: jax.Array, noise: jax.Array, strength: float, num_train_timesteps: int) -> jax.Array:
    """Kandinsky 2.1 image-to-image's own noising (from the original repository, kept by diffusers): q(x_t | x_0)
    under a fixed linear schedule (betas 1e-4 to 0.02 over 1000 steps, not the scheduler's), at
    t = int(num_train_timesteps * strength) - 2. Latents and noise (N, h, w, C)."""
    alphas_cumprod = cumprod_f32(1.0 - _torch_linspace_f32(0.0001, 0.02, 1000))
    t = int(num_train_timesteps * strength) - 2  # negative wraps around, as torch indexing does
    alpha = jnp.float32(alphas_cumprod[t])
    return jnp.sqrt(alpha) * latents + jnp.sqrt(1 - alpha) * noise


class KandinskyImg2ImgPipeline(KandinskyDecoderBase):
    """Kandinsky 2.1 image to image: ``pipe(prompt, image, image_embeds, negative_image_embeds, strength=0.3)``.

    The image is resized to ``height`` x ``width`` (multiples of 64), MoVQ-encoded, noised to the
    ``strength`` fraction of the schedule and denoised from there.
    """

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        image_embeds: Any,
        negative_image_embeds: Any,
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        strength: float = 0.3,
        guidance_scale: float = 7.0,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """``image``: PIL image(s) or NHWC arrays in [0, 1], one per prompt. ``latents`` (a jaxgen
        addition): the noise added to the encoded image, (B * n, height/8, width/8, 4)."""
        batch, embeds = self.begin(kwargs, prompt, image_embeds, negative_image_embeds, height, width,
                                   num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                                   output_type=output_type, num_inference_steps=num_inference_steps,
                                   images={"image": image})
        checks.check_strength(strength)
        init = self.preprocess_image(image, height, width)
        shape = self.latents_shape(batch, height, width, self.unet.config.in_channels)
        checks.check_latents(latents, shape)

        text = self.encode_prompt(prompt, num_images_per_prompt, guidance_scale > 1.0, negative_prompt)
        noise_key, step_key = jax.random.split(as_key(rng))
        state = self.prepare_timesteps(num_inference_steps, None, None, (batch.rows,) + shape[1:])
        state = tasks.start_at_strength(state, strength, self.scheduler.order)
        init_latents = np.repeat(self.encode_images(init), num_images_per_prompt, axis=0)
        noise = self.initial_noise(latents, noise_key, shape)
        start = noise_image_latents(init_latents * self.scheduler.init_noise_sigma, noise, strength,
                                    self.scheduler.config["num_train_timesteps"])
        start = self.sample(start, state, embeds, guidance_scale, step_key, batch, text=text, callback=callback,
                            callback_steps=callback_steps)
        return self.output(start, batch, output_type, return_dict)


def shrink_kept_region(mask: np.ndarray) -> np.ndarray:
    """diffusers' Kandinsky ``prepare_mask``: a 0/1 mask (N, h, w, 1), 1 = keep, with every pixel next to a
    repainted one (above, left, above-left, below, right, below-right) also repainted."""
    keep = mask[..., 0]
    repaint = keep != 1
    out = keep.copy()
    h, w = keep.shape[1:]
    for di, dj in ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (1, 1)):
        spread = np.zeros_like(repaint)  # spread[i + di, j + dj] = repaint[i, j]
        spread[:, max(di, 0):h + min(di, 0), max(dj, 0):w + min(dj, 0)] = \
            repaint[:, max(-di, 0):h - max(di, 0), max(-dj, 0):w - max(dj, 0)]
        out[spread] = 0
    return out[..., None]


def masked_image_channels(image_latents: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The inpainting UNet's extra input: [masked image latents, keep mask] on the channel axis."""
    return np.concatenate([image_latents * keep, keep], axis=-1)


class InpaintingParts:
    """What Kandinsky's inpainting decoders (2.1 and 2.2) share: the mask's preprocessing, the image's
    latents with the kept region, and diffusers' check of the UNet's input channels."""

    def preprocess_mask(self, mask_image: Any, height: int, width: int) -> np.ndarray:
        """``mask_image`` -> float32 (N, H, W, 1) of 0/1, 1 = repaint: PIL masks resized to ``width`` x
        ``height`` (Lanczos, grayscale), arrays at their size; binarized at 0.5."""
        masks = as_image_list(mask_image, "mask_image")
        if not isinstance(masks[0], np.ndarray | jax.Array):
            return preprocess_mask(mask_image, height, width, vae_scale_factor=1, resample="lanczos")
        out = stack_mask_arrays(masks)
        return np.where(out < 0.5, 0.0, 1.0).astype(np.float32)

    def masked_image_latents(self, init: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, H, W, 3) and their mask (1 or N, H, W, 1; 1 = repaint) -> (the images' MoVQ latents
        (N, h, w, C), the keep mask (N, h, w, 1) at the latents' size: resized nearest, its kept region
        shrunk by a pixel, as diffusers)."""
        image_latents = self.encode_images(init)
        keep = shrink_kept_region(_resize_nearest(1.0 - mask, image_latents.shape[1], image_latents.shape[2]))
        return image_latents, np.broadcast_to(keep, image_latents.shape[:3] + (1,)).astype(np.float32)

    def check_unet_channels(self, latent_channels: int) -> None:
        """The UNet takes the latents, the masked image's latents and the mask (diffusers' message)."""
        need = self.unet.config.in_channels
        if 2 * latent_channels + 1 != need:
            raise ValueError(
                f"Incorrect configuration settings! The config of `pipeline.unet` expects {need} input channels but"
                f" received `num_channels_latents`: {latent_channels} + `num_channels_mask`: 1 +"
                f" `num_channels_masked_image`: {latent_channels} = {2 * latent_channels + 1}. Please verify the"
                " config of `pipeline.unet` or your `mask_image` or `image` input."
            )


class KandinskyInpaintPipeline(InpaintingParts, KandinskyDecoderBase):
    """Kandinsky 2.1 inpainting: ``pipe(prompt, image, mask_image, image_embeds, negative_image_embeds)``.

    Where ``mask_image`` is white (>= 0.5) the image is repainted, elsewhere kept (diffusers >= 0.19).
    The inpainting UNet sees the latents, the masked image's latents and the mask (9 channels).
    """

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        mask_image: Any,
        image_embeds: Any,
        negative_image_embeds: Any,
        negative_prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """``image``: PIL image(s) or NHWC arrays in [0, 1], one per prompt; ``mask_image``: PIL (resized)
        or arrays (H, W) / (N, H, W) in [0, 1] of the image's size, one or one per prompt. ``latents``:
        the initial noise (B * n, height/8, width/8, 4)."""
        batch, embeds = self.begin(kwargs, prompt, image_embeds, negative_image_embeds, height, width,
                                   num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                                   output_type=output_type, num_inference_steps=num_inference_steps,
                                   images={"image": image, "mask_image": mask_image})
        init = self.preprocess_image(image, height, width)
        mask = self.preprocess_mask(mask_image, height, width)
        tasks.check_mask_size(mask, init, "image")
        shape = self.latents_shape(batch, height, width)
        checks.check_latents(latents, shape)
        self.check_unet_channels(shape[-1])

        text = self.encode_prompt(prompt, num_images_per_prompt, guidance_scale > 1.0, negative_prompt)
        image_latents, keep = self.masked_image_latents(init, mask)
        extra = np.repeat(masked_image_channels(image_latents, keep), num_images_per_prompt, axis=0)
        latents = self.sample_from_noise(latents, shape, num_inference_steps, guidance_scale, rng, batch, embeds,
                                         text=text, per_image={"extra_channels": extra}, callback=callback,
                                         callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)
