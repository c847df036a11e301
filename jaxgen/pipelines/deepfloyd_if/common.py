"""What DeepFloyd IF's six pipelines share: the UNet adapter, stage II's conditioning image, IF's image
preprocessing and prompt encoding, and the steps of a run (timesteps, initial images, the sampling
loop with inpainting's blend); the pipelines themselves are in ``stage_1.py`` and ``stage_2.py``."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen.image_processing import (as_image_list, resize_bilinear_align_corners, stack_image_arrays, stack_mask_arrays,
                                     to_signed_range)
from jaxgen.models.safety_checker import IFSafetyChecker
from jaxgen.models.unet_2d_condition import UNet2DConditionModel
from jaxgen.models.watermark import IFWatermarker
from jaxgen.pipelines import checks, tasks
from jaxgen.pipelines.outputs import IFPipelineOutput
from jaxgen.pipelines.pipeline_utils import Batch, ComponentSpec, DiffusionPipeline, as_key, unbind
from jaxgen.pipelines.sampling import Denoiser
from jaxgen.text.captions import text_preprocessing
from jaxgen.text.t5 import T5EncoderModel

__all__ = ["IFDenoiser", "upscale_and_noise", "resize", "MAX_LENGTH"]

logger = logging.getLogger("jaxgen.pipelines.deepfloyd_if")

MAX_LENGTH = 77  # IF's T5 was trained on 77 tokens (diffusers' encode_prompt)


@dataclasses.dataclass(frozen=True)
class IFDenoiser(Denoiser):
    """IF's UNet as ``sampling.denoise`` calls it: (N, H, W, C) images -> epsilon then (learned) variance
    on the last axis. cond: ``encoder_hidden_states`` (no attention mask: IF's UNet sees the padded
    tokens, as in diffusers), and for stage II ``extra_channels`` (the noised, upscaled stage I image)
    and ``class_labels`` (the noise level)."""

    unet: Any

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        return self.unet.apply(
            {"params": params}, self.with_extra_channels(model_input, cond, self.unet.dtype), timestep,
            cond["encoder_hidden_states"], class_labels=cond.get("class_labels"),
        ).sample

    def learned_variance(self) -> bool:
        config = self.unet.config
        image_channels = config.in_channels // 2 if config.class_embed_type is not None else config.in_channels
        return config.out_channels == 2 * image_channels


@functools.partial(jax.jit, static_argnames=("height", "width", "scheduler"))
def upscale_and_noise(
    image: jax.Array, noise: jax.Array, noise_level: jax.Array, *, height: int, width: int, scheduler: Any
) -> jax.Array:
    """Stage II's conditioning image: the low-resolution image (N, h, w, 3) in [-1, 1] resized to
    (height, width) (bilinear, corners aligned) and noised by ``scheduler.add_noise`` at
    ``noise_level`` (N,) with ``noise`` (N, height, width, 3): diffusers' step 7 of the SR pipelines."""
    upscaled = resize_bilinear_align_corners(image.astype(jnp.float32), height, width)
    return scheduler.add_noise(None, upscaled, noise, noise_level)


def _split_rng(rng: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``rng`` -> the keys of (the initial noise, stage II's upscaled-image noise, the sampling steps)."""
    return tuple(jax.random.split(as_key(rng), 3))


def resize(image: PIL.Image.Image, img_size: int) -> PIL.Image.Image:
    """IF's resize: the shorter side to ``img_size``, the other to the nearest multiple of 8 keeping
    the aspect ratio (bicubic): diffusers' ``deepfloyd_if`` ``resize``."""
    w, h = image.size
    coef = w / h
    w, h = img_size, img_size
    if coef >= 1:
        w = int(round(img_size / 8 * coef) * 8)
    else:
        h = int(round(img_size / 8 / coef) * 8)
    return image.resize((w, h), resample=PIL.Image.Resampling.BICUBIC, reducing_gap=None)


_COMPONENTS = {
    "tokenizer": ComponentSpec("tokenizer", optional=True),
    "text_encoder": ComponentSpec("model", T5EncoderModel, ("T5EncoderModel",), optional=True),
    "unet": ComponentSpec("model", UNet2DConditionModel, ("UNet2DConditionModel",)),
    "scheduler": ComponentSpec("scheduler"),
    "safety_checker": ComponentSpec("model", IFSafetyChecker, ("IFSafetyChecker",), optional=True),
    "feature_extractor": ComponentSpec("processor", optional=True),
    "watermarker": ComponentSpec("object", IFWatermarker, ("IFWatermarker",), optional=True),
}


class _IFPipelineBase(DiffusionPipeline):
    """What the six IF pipelines share: components, prompt encoding, image preprocessing, the run's steps."""

    _components = _COMPONENTS
    _config = {"requires_safety_checker": True}
    _output_class = IFPipelineOutput

    def __init__(self, *, mesh: Any = None, **components: Any) -> None:
        super().__init__(mesh=mesh, **components)
        if self.safety_checker is None and self.config["requires_safety_checker"]:
            logger.warning(
                f"You have disabled the safety checker for {self.__class__} by passing `safety_checker=None`. Ensure"
                " that you abide to the conditions of the IF license and do not expose unfiltered"
                " results in services or applications open to the public. Both the diffusers team and Hugging Face"
                " strongly recommend to keep the safety filter enabled in all public facing circumstances, disabling"
                " it only for use-cases that involve analyzing network behavior or auditing its results. For more"
                " information, please have a look at https://github.com/huggingface/diffusers/pull/254 ."
            )
        if self.safety_checker is not None and self.feature_extractor is None:
            raise ValueError(
                f"Make sure to define a feature extractor when loading {self.__class__} if you want to use the safety"
                " checker. If you do not want to use the safety checker, you can pass `'safety_checker=None'` instead."
            )

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        do_classifier_free_guidance: bool = True,
        num_images_per_prompt: int = 1,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        clean_caption: bool = False,
    ) -> tuple[jax.Array, jax.Array | None]:
        """T5 embeddings (77 tokens) of the prompt and, with guidance, of the negative prompt ("" by default).

        Returns diffusers' ``(prompt_embeds (B*n, L, D), negative_prompt_embeds (B*n, L, D) or None)``,
        each prompt's rows repeated ``num_images_per_prompt`` times. The T5 attention mask is used by
        the encoder only: the UNet attends to every token (as diffusers' IF).
        """

        def encode(texts: Any, length: int | None) -> tuple[jax.Array, None]:
            (embeds,), _ = self.encode_texts(text_preprocessing(texts, clean_caption=clean_caption),
                                             length or MAX_LENGTH, warn_truncation=length is None)
            return embeds, None

        embeds, _, negative, _ = self.encode_prompt_pair(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            do_classifier_free_guidance=do_classifier_free_guidance, num_images_per_prompt=num_images_per_prompt,
            encode=encode,
        )
        return embeds, negative

    # -- inputs --------------------------------------------------------------------------------

    def check_image_inputs(self, batch_size: int, **images: Any) -> None:
        """diffusers' checks of the image arguments: one image per prompt (``mask_image``: one, or one per prompt)."""
        for name, image in images.items():
            if name == "mask_image":
                checks.check_mask_argument(image, batch_size)
            else:
                checks.check_image_argument(name, image, batch_size)

    def preprocess_image(self, image: Any, name: str = "image") -> np.ndarray:
        """Stage I image (img2img, inpainting) or stage II ``original_image`` -> float32 (N, H, W, C) in [-1, 1].

        PIL images are converted to RGB and resized with IF's ``resize`` to the UNet's sample size;
        arrays are taken at their size.
        """
        images = as_image_list(image, name)
        if isinstance(images[0], PIL.Image.Image):
            size = self.unet.config.sample_size
            out = np.stack([np.array(resize(i.convert("RGB"), size)).astype(np.float32) / 127.5 - 1 for i in images])
        else:
            out = to_signed_range(stack_image_arrays(images, name))
        if out.shape[-1] != self.image_channels:
            raise ValueError(f"`{name}` must have {self.image_channels} channels (channels last), got shape {out.shape}")
        return out

    def image_rows(self, image: Any, batch: Batch, name: str = "image") -> np.ndarray:
        """``preprocess_image``, refused when ``batch.total`` rows of that size cannot fit (before they are made)."""
        out = self.preprocess_image(image, name)
        checks.check_images_fit(batch.total, *out.shape[1:3],
                                f"{batch.prompts} prompts x `num_images_per_prompt` = {batch.per_prompt}")
        return out

    def preprocess_mask_image(self, mask_image: Any) -> np.ndarray:
        """Mask (1 = repaint) -> float32 (N, H, W, 1) of 0/1 (binarized at 0.5), IF's ``preprocess_mask_image``.

        PIL masks are converted to "L" and resized with IF's ``resize`` to the UNet's sample size;
        arrays ((H, W), (N, H, W), (H, W, 1), (N, H, W, 1), values in [0, 1]) at their size.
        """
        masks = as_image_list(mask_image, "mask_image")
        if isinstance(masks[0], PIL.Image.Image):
            size = self.unet.config.sample_size
            arrays = [np.array(resize(m.convert("L"), size)).astype(np.float32) / 255.0 for m in masks]
            out = np.stack(arrays, axis=0)[..., None]
        else:
            out = stack_mask_arrays(masks)
            if out.shape[-1] != 1:
                raise ValueError(f"`mask_image` must have one channel, got shape {out.shape} (channels last)")
        return np.where(out < 0.5, 0.0, 1.0).astype(np.float32)

    def _mask_rows(self, mask_image: Any, image: np.ndarray, image_name: str, batch: Batch) -> np.ndarray:
        """The preprocessed mask, checked against the image's size, one row per image."""
        mask = self.preprocess_mask_image(mask_image)
        tasks.check_mask_size(mask, image, image_name)
        return tasks.repeat_mask(mask, batch.total, batch.per_prompt)

    @property
    def image_channels(self) -> int:
        """The channels of the images this stage denoises (3)."""
        return self.unet.config.in_channels

    @property
    def prompt_embeds_width(self) -> int:
        """T5's width, which the UNet's text projection takes (4096)."""
        config = self.unet.config
        return config.encoder_hid_dim or config.cross_attention_dim

    def _check_size(self, height: Any, width: Any) -> tuple[int, int]:
        height, width = height or self.unet.config.sample_size, width or self.unet.config.sample_size
        checks.check_size(height, width)
        return height, width

    # -- the run -------------------------------------------------------------------------------

    def _start(self, num_inference_steps: int, timesteps: Any, batch: Batch, shape: tuple[int, ...],
               strength: float | None = None) -> Any:
        """The scheduler state; with ``strength`` (img2img, inpainting) it starts at the schedule's last
        ``strength`` fraction."""
        state = self.prepare_timesteps(num_inference_steps, timesteps, None, (batch.rows,) + shape[1:])
        return state if strength is None else tasks.start_at_strength(state, strength, self.scheduler.order)

    def _initial_images(self, latents: Any, key: jax.Array, shape: tuple[int, ...], state: Any,
                        init: np.ndarray | None = None, mask: np.ndarray | None = None) -> jax.Array:
        """What sampling starts from: noise (``latents`` if given) scaled by the scheduler's init sigma, or
        the init image noised to the first timestep run; with a mask, the known pixels are the init's."""
        noise = self.initial_noise(latents, key, shape)
        if init is None:
            return noise * self.scheduler.init_noise_sigma
        start = tasks.noised_to_start(self.scheduler, state, init, noise)
        return start if mask is None else (1 - mask) * init + mask * start

    def _sample(self, images: jax.Array, state: Any, embeds: tuple, guidance_scale: float, key: jax.Array,
                batch: Batch, *, eta: float, callback: Callable | None, callback_steps: int,
                mask: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None) -> jax.Array:
        """The UNet in the shared loop: ``embeds`` = (prompt_embeds, negative or None), ``extra`` the stage
        II conditioning (one row per image), ``mask`` (inpainting) put back after every step."""
        module, params = unbind(self.unet)
        positive, negative = embeds
        both = lambda x: self.guidance_rows(x, x if negative is not None else None, batch.rows)
        cond = {"encoder_hidden_states": self.guidance_rows(positive, negative, batch.rows, module.dtype)}
        cond.update({name: both(value) for name, value in (extra or {}).items()})
        if mask is not None:
            cond["mask"] = both(mask)
        return self.denoise(IFDenoiser(module), params, np.asarray(images, np.float32), state, cond, guidance_scale,
                            key, batch, post_step=tasks.KeepUnmasked() if mask is not None else None, eta=eta,
                            callback=callback, callback_steps=callback_steps)

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """IF samples pixels: its "latents" are the images, in [-1, 1]."""
        return latents

    def _watermark_sample_size(self) -> int:
        return self.unet.config.sample_size

    def _placeholder_embeds(self, batch_size: int, guided: bool, call: Any) -> dict[str, Any]:
        config = self.unet.config
        embeds = np.zeros((batch_size, MAX_LENGTH, config.encoder_hid_dim or config.level("cross_attention_dim")[0]),
                          np.float32)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": embeds if guided else None}

