"""DeepFloyd IF in JAX: the six diffusers pipelines of the cascade's pixel-space stages.

Stage I (``IFPipeline``, ``IFImg2ImgPipeline``, ``IFInpaintingPipeline``) denoises 64x64 images
from T5 embeddings; stage II (``IFSuperResolutionPipeline``, ``IFImg2ImgSuperResolutionPipeline``,
``IFInpaintingSuperResolutionPipeline``) upscales the stage I image to 256x256: the low-resolution
image is resized (bilinear, corners aligned), noised to ``noise_level`` by the
``image_noising_scheduler`` and concatenated to the noisy image on the channel axis, with the noise
level as the UNet's class label. Arguments, defaults and messages are diffusers 0.42's; the torch
``generator`` is ``rng`` and ``latents=`` (the initial noise, NHWC) is accepted by every pipeline.

The denoising loop is ``sampling.denoise`` with ``IFDenoiser``: classifier-free guidance on the
epsilon half of the UNet output, the learned variance taken from the text half; img2img starts the
loop mid-schedule (the state's ``step_index``), inpainting blends the known region back after every
step (``IFDenoiser.post_step``), both inside the one compiled loop.

Images are channels last. Inputs: PIL images, or arrays (N, H, W, C) / (H, W, C), either in [0, 1]
(as ``output_type="np"`` returns them) or in [-1, 1] (as ``output_type="latent"`` returns them and
diffusers takes arrays): an array with a negative value is taken as already in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen import sharding
from jaxgen.image_processing import numpy_to_pil, postprocess
from jaxgen.models.safety_checker import IFSafetyChecker, check_safety
from jaxgen.models.unet_2d_condition import UNet2DConditionModel
from jaxgen.models.watermark import IFWatermarker
from jaxgen.pipelines.if_timesteps import (  # noqa: F401  (re-exported: `timesteps=fast27_timesteps`)
    fast27_timesteps, smart27_timesteps, smart50_timesteps, smart100_timesteps, smart185_timesteps,
    super27_timesteps, super40_timesteps, super100_timesteps,
)
from jaxgen.pipelines.pipeline_utils import (
    ComponentSpec, DiffusionPipeline, as_key, check_prompt_arguments, negative_prompts, unbind,
)
from jaxgen.pipelines.sampling import Denoiser, guidance_rows, run_denoise
from jaxgen.text.captions import text_preprocessing
from jaxgen.text.t5 import T5EncoderModel

__all__ = [
    "IFPipeline", "IFSuperResolutionPipeline", "IFImg2ImgPipeline", "IFImg2ImgSuperResolutionPipeline",
    "IFInpaintingPipeline", "IFInpaintingSuperResolutionPipeline", "IFPipelineOutput", "IFDenoiser",
    "resize_bilinear_align_corners", "upscale_and_noise",
]

logger = logging.getLogger(__name__)

MAX_LENGTH = 77  # IF's T5 was trained on 77 tokens (diffusers' encode_prompt)
_LEARNED = ("learned", "learned_range")


@dataclasses.dataclass
class IFPipelineOutput:
    """diffusers' ``IFPipelineOutput``: ``images`` (PIL list, float32 NHWC numpy in [0, 1], or the raw
    NHWC images for ``output_type="latent"``), ``nsfw_detected`` and ``watermark_detected`` (lists of
    bools, None without a safety checker or for "latent")."""

    images: Any
    nsfw_detected: list[bool] | None
    watermark_detected: list[bool] | None

    def __getitem__(self, index: int) -> Any:  # diffusers' outputs index like tuples
        return dataclasses.astuple(self)[index]


# --------------------------------------------------------------------------- the denoiser adapter


@dataclasses.dataclass(frozen=True)
class IFDenoiser(Denoiser):
    """IF's UNet as ``sampling.denoise`` calls it.

    ``channels``: the image's channels (3); the UNet outputs epsilon then (learned) variance on the
    last axis. cond: ``encoder_hidden_states`` (no attention mask: IF's UNet sees the padded tokens,
    as in diffusers), and for stage II ``upscaled`` (the noised low-resolution image, concatenated
    to the input's channels) and ``class_labels`` (the noise level). ``inpaint``: after each step the
    pixels outside ``cond["mask"]`` (1 = repaint) go back to the previous step's.
    """

    unet: Any
    channels: int
    inpaint: bool = False

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        if "upscaled" in cond:
            model_input = jnp.concatenate([model_input, cond["upscaled"].astype(model_input.dtype)], axis=-1)
        return self.unet.apply(
            {"params": params}, model_input.astype(self.unet.dtype), timestep, cond["encoder_hidden_states"],
            class_labels=cond.get("class_labels"),
        ).sample

    def guide(self, uncond: jax.Array, text: jax.Array, scale: jax.Array) -> jax.Array:
        """Guidance on epsilon only; the predicted variance is the text half's (as diffusers)."""
        c = self.channels
        eps = uncond[..., :c] + scale * (text[..., :c] - uncond[..., :c])
        return jnp.concatenate([eps, text[..., c:]], axis=-1)

    def scheduler_input(self, output: jax.Array, latent_channels: int, scheduler: Any) -> jax.Array:
        """The variance stays for a scheduler that reads it (its own ``variance_type`` learned), else dropped.

        diffusers reads ``scheduler.config.variance_type`` even where the scheduler does not use it
        (a DDIM made from IF's DDPM config keeps it), and then fails; here only schedulers with a
        ``variance_type`` setting of their own (DDPM, DPM-Solver) get the variance.
        """
        keeps = "variance_type" in scheduler.config_keys() and scheduler.config["variance_type"] in _LEARNED
        return output if keeps else output[..., :latent_channels]

    def post_step(self, latents: jax.Array, previous: jax.Array, cond: Any) -> jax.Array:
        if not self.inpaint:
            return latents
        mask = cond["mask"].astype(latents.dtype)
        return (1 - mask) * previous + mask * latents


# --------------------------------------------------------------------------- image helpers


def _bilinear_aligned_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear resize with align_corners=True (CPU, float32).

    Source position i * (in - 1) / (out - 1), the scale and the product each rounded to float32; the
    lower index floor(position), the upper one the next pixel (the same at the last).
    """
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    position = (scale * np.arange(out_size, dtype=np.float32)).astype(np.float32)
    lower = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
    upper = np.where(lower < in_size - 1, lower + 1, lower)
    w_upper = np.clip(position - lower.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    return lower, upper, (np.float32(1) - w_upper).astype(np.float32), w_upper


def resize_bilinear_align_corners(images: jax.Array, height: int, width: int) -> jax.Array:
    """NHWC images (N, h, w, C) -> (N, height, width, C): torch's
    ``F.interpolate(mode="bilinear", align_corners=True)`` on NCHW, the same taps, width then height."""
    dtype = images.dtype
    x = images.astype(jnp.promote_types(dtype, jnp.float32))
    w0_idx, w1_idx, w0, w1 = _bilinear_aligned_taps(x.shape[2], width)
    h0_idx, h1_idx, h0, h1 = _bilinear_aligned_taps(x.shape[1], height)
    x = jnp.take(x, w0_idx, axis=2) * w0[:, None] + jnp.take(x, w1_idx, axis=2) * w1[:, None]
    x = jnp.take(x, h0_idx, axis=1) * h0[:, None, None] + jnp.take(x, h1_idx, axis=1) * h1[:, None, None]
    return x.astype(dtype)


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


def _is_image(x: Any) -> bool:
    return isinstance(x, (PIL.Image.Image, np.ndarray, jax.Array))


def _check_image_type(name: str, image: Any) -> int:
    """diffusers' type check of an image argument; returns its batch size (an array of rank <= 3 is one image)."""
    first = image[0] if isinstance(image, (list, tuple)) and len(image) else image
    if not _is_image(first):
        raise ValueError(
            f"`{name}` has to be of type `PIL.Image.Image`, `np.ndarray`, `jax.Array`, or list[...] but is {type(first)}"
        )
    if isinstance(image, (list, tuple)):
        return len(image)
    if isinstance(image, PIL.Image.Image) or np.ndim(image) <= 3:
        return 1
    return int(np.shape(image)[0])


def _to_signed(array: np.ndarray) -> np.ndarray:
    """Arrays in [0, 1] -> [-1, 1]; an array with a negative value is taken as already in [-1, 1]."""
    array = np.asarray(array, np.float32)
    return array if array.size and array.min() < 0 else array * 2.0 - 1.0


def _stack_arrays(images: list, name: str) -> np.ndarray:
    """A list of arrays (H, W), (H, W, C) or (N, H, W, C) -> one float32 (N, H, W, C) array."""
    arrays = [np.asarray(i, np.float32) for i in images]
    if arrays[0].ndim == 4:
        out = np.concatenate(arrays, axis=0)
    else:
        out = np.stack(arrays, axis=0)
    if out.ndim == 3:  # (N, H, W): one channel
        out = out[..., None]
    if out.ndim != 4:
        raise ValueError(f"`{name}` arrays must be (H, W), (H, W, C) or (N, H, W, C), got shape {arrays[0].shape}")
    return out


def _as_list(image: Any) -> list:
    return list(image) if isinstance(image, (list, tuple)) else [image]


# --------------------------------------------------------------------------- shared pipeline code

_COMPONENTS = {
    "tokenizer": ComponentSpec("tokenizer", optional=True),
    "text_encoder": ComponentSpec("model", T5EncoderModel, ("T5EncoderModel",), optional=True),
    "unet": ComponentSpec("model", UNet2DConditionModel, ("UNet2DConditionModel",)),
    "scheduler": ComponentSpec("scheduler"),
    "safety_checker": ComponentSpec("model", IFSafetyChecker, ("IFSafetyChecker",), optional=True),
    "feature_extractor": ComponentSpec("processor", optional=True),
    "watermarker": ComponentSpec("object", IFWatermarker, ("IFWatermarker",), optional=True),
}
_SR_COMPONENTS = {
    **{k: v for k, v in _COMPONENTS.items() if k in ("tokenizer", "text_encoder", "unet", "scheduler")},
    "image_noising_scheduler": ComponentSpec("scheduler"),
    **{k: v for k, v in _COMPONENTS.items() if k in ("safety_checker", "feature_extractor", "watermarker")},
}


class _IFPipelineBase(DiffusionPipeline):
    """What the six IF pipelines share: components, safety checking, prompt encoding, the sampling run."""

    _components = _COMPONENTS
    _config = {"requires_safety_checker": True}

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

    # -- prompts -------------------------------------------------------------------------------

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
        if prompt is not None and negative_prompt is not None and type(prompt) is not type(negative_prompt):
            raise TypeError(
                f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} !="
                f" {type(prompt)}."
            )
        if prompt is not None:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        else:
            batch_size = np.shape(prompt_embeds)[0]
        if prompt_embeds is None:
            prompt_embeds, _ = self._encode_text(
                text_preprocessing(prompt, clean_caption=clean_caption), MAX_LENGTH, warn_truncation=True
            )
        else:
            prompt_embeds = self._embeds_array(prompt_embeds, "prompt_embeds")
        dtype = self._embeds_dtype()
        prompt_embeds = jnp.repeat(prompt_embeds.astype(dtype), num_images_per_prompt, axis=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            uncond = negative_prompts(negative_prompt, prompt, batch_size)
            negative_prompt_embeds, _ = self._encode_text(
                text_preprocessing(uncond, clean_caption=clean_caption), prompt_embeds.shape[1]
            )
        else:
            negative_prompt_embeds = self._embeds_array(negative_prompt_embeds, "negative_prompt_embeds")
        negative_prompt_embeds = jnp.repeat(negative_prompt_embeds.astype(dtype), num_images_per_prompt, axis=0)
        return prompt_embeds, negative_prompt_embeds

    @staticmethod
    def _embeds_array(x: Any, name: str) -> jax.Array:
        arr = jnp.asarray(x)
        if arr.ndim != 3:
            raise ValueError(f"`{name}` must be (batch, tokens, width), got shape {tuple(arr.shape)}")
        return arr

    def _embeds_dtype(self) -> Any:
        for component in (self.text_encoder, self.unet):
            if component is not None:
                return component.dtype
        return jnp.float32

    # -- safety --------------------------------------------------------------------------------

    def run_safety_checker(self, image: np.ndarray) -> tuple[np.ndarray, list[bool] | None, list[bool] | None]:
        """float32 NHWC images in [0, 1] -> (images with flagged ones black, nsfw_detected, watermark_detected).

        The CLIP input is the ``feature_extractor``'s (transformers' ``CLIPImageProcessor``) on the PIL
        images, as diffusers; without a safety checker the images pass unchanged with None flags.
        """
        if self.safety_checker is None:
            return image, None, None
        pixel_values = np.asarray(self.feature_extractor(numpy_to_pil(image), return_tensors="np").pixel_values)
        module, params = unbind(self.safety_checker)
        clip_input = np.transpose(pixel_values, (0, 2, 3, 1)).astype(np.dtype(module.dtype))
        n = len(image)
        rows = self._padded_rows(n)  # one compiled checker for every batch up to a multiple of the data axis
        with self._mesh_context():
            checked, nsfw, watermark = check_safety(
                module, params, self._shard_rows(clip_input, rows), self._shard_rows(np.asarray(image), rows)
            )
        jax.effects_barrier()  # the checker's warnings are logged before we return
        flags = lambda x: np.asarray(sharding.gather_rows(x, n)).tolist()
        return np.asarray(sharding.gather_rows(checked, n), np.float32), flags(nsfw), flags(watermark)

    # -- checks --------------------------------------------------------------------------------

    @staticmethod
    def _check_prompt_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds) -> None:
        """diffusers' checks of the prompt arguments, same messages."""
        check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)

    @staticmethod
    def _check_image(name: str, image: Any, batch_size: int) -> None:
        if image is None:
            raise ValueError(f"`{name}` must be given")
        image_batch_size = _check_image_type(name, image)
        if batch_size != image_batch_size:
            raise ValueError(f"{name} batch size: {image_batch_size} must be same as prompt batch size {batch_size}")

    @staticmethod
    def _check_mask(mask_image: Any, batch_size: int) -> None:
        if mask_image is None:
            raise ValueError("`mask_image` must be given")
        mask_batch_size = _check_image_type("mask_image", mask_image)
        if isinstance(mask_image, (np.ndarray, jax.Array)) and np.ndim(mask_image) == 3 and np.shape(mask_image)[-1] != 1:
            mask_batch_size = int(np.shape(mask_image)[0])  # (N, H, W)
        if mask_batch_size != 1 and batch_size != mask_batch_size:
            raise ValueError(
                f"mask_image batch size: {mask_batch_size} must be `1` or the same as prompt batch size {batch_size}"
            )

    @staticmethod
    def _check_strength(strength: Any) -> None:
        if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 <= strength <= 1:
            raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")

    @staticmethod
    def _check_call_options(kwargs: dict, num_images_per_prompt, guidance_scale, output_type,
                            num_inference_steps, timesteps, cross_attention_kwargs) -> None:
        """jaxgen's own checks of the run options (before anything is encoded or compiled)."""
        if "generator" in kwargs:
            raise TypeError("jaxgen pipelines take `rng` (an int seed or a jax.random key) instead of `generator`")
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        if cross_attention_kwargs:
            raise ValueError(f"`cross_attention_kwargs` are not supported by jaxgen (got keys {sorted(cross_attention_kwargs)})")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` has to be a positive integer but is {num_images_per_prompt}.")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` has to be >= 0 (1 or less turns guidance off) but is {guidance_scale}.")
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(
                f"`output_type` has to be one of 'pil', 'np', 'latent' (the raw NHWC images, diffusers' 'pt') but is"
                f" {output_type!r}."
            )
        if timesteps is None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps}.")

    # -- image preprocessing (host, NHWC) ------------------------------------------------------

    def preprocess_image(self, image: Any) -> np.ndarray:
        """Stage I image (img2img, inpainting) or stage II ``original_image`` -> float32 (N, H, W, C) in [-1, 1].

        PIL images are converted to RGB and resized with IF's ``resize`` to the UNet's sample size;
        arrays are taken at their size.
        """
        images = _as_list(image)
        if isinstance(images[0], PIL.Image.Image):
            size = self.unet.config.sample_size
            arrays = [np.array(resize(i.convert("RGB"), size)).astype(np.float32) / 127.5 - 1 for i in images]
            return np.stack(arrays, axis=0)
        return _to_signed(_stack_arrays(images, "image"))

    def preprocess_mask_image(self, mask_image: Any) -> np.ndarray:
        """Mask (1 = repaint) -> float32 (N, H, W, 1) of 0/1 (binarized at 0.5), IF's ``preprocess_mask_image``.

        PIL masks are converted to "L" and resized with IF's ``resize`` to the UNet's sample size;
        arrays ((H, W), (N, H, W), (H, W, 1), (N, H, W, 1), values in [0, 1]) at their size.
        """
        masks = _as_list(mask_image)
        if isinstance(masks[0], PIL.Image.Image):
            size = self.unet.config.sample_size
            arrays = [np.array(resize(m.convert("L"), size)).astype(np.float32) / 255.0 for m in masks]
            out = np.stack(arrays, axis=0)[..., None]
        else:
            arrays = [np.asarray(m, np.float32) for m in masks]
            if len(arrays) == 1 and arrays[0].ndim == 3 and arrays[0].shape[-1] == 1:
                arrays = [arrays[0][..., 0]]  # one (H, W, 1) mask
            out = _stack_arrays(arrays, "mask_image")
            if out.shape[-1] != 1:
                raise ValueError(f"`mask_image` must have one channel, got shape {out.shape} (channels last)")
        return np.where(out < 0.5, 0.0, 1.0).astype(np.float32)

    def _low_res_image(self, image: Any) -> np.ndarray:
        """Stage II's low-resolution ``image`` -> float32 (N, h, w, C) in [-1, 1] (PIL at its size, as diffusers)."""
        images = _as_list(image)
        if isinstance(images[0], PIL.Image.Image):
            return np.stack([np.array(i).astype(np.float32) / 127.5 - 1.0 for i in images], axis=0)
        return _to_signed(_stack_arrays(images, "image"))

    def _check_channels(self, name: str, array: np.ndarray, channels: int) -> None:
        if array.shape[-1] != channels:
            raise ValueError(f"`{name}` must have {channels} channels (channels last), got shape {array.shape}")

    # -- the run -------------------------------------------------------------------------------

    def _image_channels(self) -> int:
        return self.unet.config.in_channels

    def _sample(
        self,
        *,
        prompt: Any,
        negative_prompt: Any,
        prompt_embeds: Any,
        negative_prompt_embeds: Any,
        num_images_per_prompt: int,
        clean_caption: bool,
        guidance_scale: float,
        num_inference_steps: int,
        timesteps: Sequence[int] | None,
        eta: float,
        rng: Any,
        latents: Any,
        callback: Callable | None,
        callback_steps: int,
        output_type: str,
        return_dict: bool,
        height: int,
        width: int,
        batch_size: int,
        init_image: np.ndarray | None = None,
        strength: float | None = None,
        mask: np.ndarray | None = None,
        low_res: np.ndarray | None = None,
        noise_level: int | None = None,
        compile_only: bool = False,
    ) -> IFPipelineOutput | tuple:
        """Encode, prepare the images, run the compiled loop, post-process. Every array argument is
        host-side, NHWC, one row per image of the batch (prompts x num_images_per_prompt).
        ``compile_only``: the loop runs zero steps (``warmup``)."""
        total = batch_size * num_images_per_prompt
        channels = self._image_channels()
        image_shape = (total, height, width, channels)
        if latents is not None and tuple(np.shape(latents)) != image_shape:
            raise ValueError(f"`latents` must have shape {image_shape} (channels last), got {tuple(np.shape(latents))}")

        rows = self._padded_rows(total)
        state = self._set_timesteps(num_inference_steps, timesteps, None, (rows,) + image_shape[1:])
        begin = 0
        if strength is not None:  # diffusers' get_timesteps: the last strength * N steps of the schedule
            n = int(state.timesteps.shape[0])
            begin = max(n - min(int(n * strength), n), 0) * self.scheduler.order
            if begin >= n:
                raise ValueError(
                    f"After adjusting the num_inference_steps by strength parameter: {strength}, the number of pipeline"
                    f" steps is {n - begin} which is < 1 and not appropriate for this pipeline."
                )
            state = state.replace(step_index=jnp.asarray(begin, jnp.int32))

        do_cfg = guidance_scale > 1.0
        embeds, neg_embeds = self.encode_prompt(
            prompt, do_cfg, num_images_per_prompt=num_images_per_prompt, negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, clean_caption=clean_caption,
        )
        state = sharding.place_matching(state, self.mesh, (rows,) + image_shape[1:])

        noise_key, image_key, step_key = _split_rng(rng)
        noise = jnp.asarray(latents, jnp.float32) if latents is not None else jax.random.normal(noise_key, image_shape)
        if init_image is None:
            intermediate = noise * self.scheduler.init_noise_sigma
        else:  # img2img / inpainting: the image noised to the first timestep run
            first = jnp.full((total,), np.asarray(state.timesteps)[begin], jnp.int32)
            intermediate = self.scheduler.add_noise(state, jnp.asarray(init_image), noise, first)
            if mask is not None:
                intermediate = (1 - mask) * init_image + mask * intermediate

        module, params = unbind(self.unet)
        both = lambda x, dtype=None: guidance_rows(self, x, x if do_cfg else None, rows, dtype)
        cond = {"encoder_hidden_states": guidance_rows(self, embeds, neg_embeds, rows, module.dtype)}
        if low_res is not None:
            up_noise = jax.random.normal(image_key, image_shape)
            levels = np.full((total,), noise_level, np.int32)
            upscaled = upscale_and_noise(
                jnp.asarray(low_res), up_noise, jnp.asarray(levels), height=height, width=width,
                scheduler=self.image_noising_scheduler,
            )
            cond["upscaled"] = both(np.asarray(upscaled))
            cond["class_labels"] = both(levels)
        if mask is not None:
            cond["mask"] = both(mask)

        denoiser = IFDenoiser(module, channels=channels, inpaint=mask is not None)
        with self._mesh_context():
            out = run_denoise(
                self, denoiser, params, self._shard_rows(np.asarray(intermediate, np.float32), rows), state, cond,
                guidance_scale, step_key, eta=eta, callback=callback, callback_steps=callback_steps, rows=total,
                compile_only=compile_only,
            )
        images = sharding.gather_rows(out, total)

        if output_type == "latent":
            result = (jnp.asarray(images), None, None)
        else:
            checked, nsfw, watermark = self.run_safety_checker(postprocess(images, "np"))
            if output_type == "pil":
                checked = numpy_to_pil(checked)
                if self.watermarker is not None:
                    self.watermarker.apply_watermark(checked, self.unet.config.sample_size)
            result = (checked, nsfw, watermark)
        return IFPipelineOutput(*result) if return_dict else result

    @staticmethod
    def _batch_size(prompt: Any, prompt_embeds: Any) -> int:
        if prompt is not None:
            return 1 if isinstance(prompt, str) else len(prompt)
        return int(np.shape(prompt_embeds)[0])


class _IFSuperResolutionBase(_IFPipelineBase):
    """Stage II: the UNet takes the noisy image and the noised, upscaled stage I image (6 channels)."""

    _components = _SR_COMPONENTS

    def __init__(self, *, mesh: Any = None, **components: Any) -> None:
        super().__init__(mesh=mesh, **components)
        if self.unet is not None and self.unet.config.in_channels != 6:
            logger.warning(
                "It seems like you have loaded a checkpoint that shall not be used for super resolution as it accepts"
                f" {self.unet.config.in_channels} input channels instead of 6. Please make sure to pass a super"
                " resolution checkpoint as the `'unet'`: IFSuperResolutionPipeline.from_pretrained(unet=super_resolution_unet, ...)`."
            )

    def _image_channels(self) -> int:
        return self.unet.config.in_channels // 2

    def _check_noise_level(self, noise_level: Any) -> None:
        n = self.image_noising_scheduler.config["num_train_timesteps"]
        if isinstance(noise_level, bool) or not isinstance(noise_level, (int, np.integer)):
            raise ValueError(f"`noise_level` must be an int timestep of `self.noising_scheduler`, got {noise_level!r}")
        if noise_level < 0 or noise_level >= n:
            raise ValueError(
                f"`noise_level`: {noise_level} must be a valid timestep in `self.noising_scheduler`, [0, {n})"
            )

    def _upscale_source(self, image: Any, num_images_per_prompt: int, height: int, width: int) -> np.ndarray:
        """The low-resolution image, checked against the output size and repeated per image."""
        low_res = self._low_res_image(image)
        self._check_channels("image", low_res, self._image_channels())
        if low_res.shape[1] > height or low_res.shape[2] > width:
            raise ValueError(
                f"`image` is {low_res.shape[1]}x{low_res.shape[2]}, larger than the output {height}x{width}:"
                f" {type(self).__name__} upscales the lower-resolution image of the previous stage (pass that image,"
                " or a larger `height`/`width`)"
            )
        return np.repeat(low_res, num_images_per_prompt, axis=0)


def _repeat_mask(mask: np.ndarray, total: int, num_images_per_prompt: int) -> np.ndarray:
    return np.repeat(mask, total, axis=0) if mask.shape[0] == 1 else np.repeat(mask, num_images_per_prompt, axis=0)


def _check_mask_size(mask: np.ndarray, image: np.ndarray, image_name: str) -> None:
    if mask.shape[1:3] != image.shape[1:3]:
        raise ValueError(
            f"`mask_image` is {mask.shape[1]}x{mask.shape[2]} but `{image_name}` is {image.shape[1]}x{image.shape[2]}"
            " (after preprocessing): they must have the same size"
        )


# --------------------------------------------------------------------------- stage I


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
        self._check_prompt_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)

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
        compile_only = kwargs.pop("_compile_only", False)  # warmup(): everything but the loop's steps
        self._check_call_options(kwargs, num_images_per_prompt, guidance_scale, output_type, num_inference_steps,
                                 timesteps, cross_attention_kwargs)
        self.check_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise ValueError(f"`height` and `width` have to be positive integers but are {height} and {width}.")
        return self._sample(
            prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, num_images_per_prompt=num_images_per_prompt,
            clean_caption=clean_caption, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
            timesteps=timesteps, eta=eta, rng=rng, latents=latents, callback=callback, callback_steps=callback_steps,
            output_type=output_type, return_dict=return_dict, height=height, width=width,
            batch_size=self._batch_size(prompt, prompt_embeds), compile_only=compile_only,
        )

    def warmup(
        self,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 100,
        batch_size: int = 1,
        guidance_scale: float = 7.0,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        **kwargs: Any,
    ) -> float:
        """Compile ahead what a call with these settings runs (text encoder, the sampling loop, the
        safety checker), so that the call itself does not compile; ``batch_size`` is the number of
        prompts, other ``__call__`` arguments go through ``kwargs``. The loop is compiled with its
        step count set to 0, not run. Returns the seconds it took."""
        start = time.perf_counter()
        if self.tokenizer is not None and self.text_encoder is not None:
            inputs: dict[str, Any] = {"prompt": [""] * batch_size}
        else:
            width_ = self.unet.config.encoder_hid_dim or self.unet.config.cross_attention_dim
            embeds = np.zeros((batch_size, 77, width_), np.float32)
            inputs = {"prompt_embeds": embeds, "negative_prompt_embeds": embeds if guidance_scale > 1.0 else None}
        self(**inputs, height=height, width=width, num_inference_steps=num_inference_steps,
             guidance_scale=guidance_scale, num_images_per_prompt=num_images_per_prompt, output_type=output_type,
             _compile_only=True, **kwargs)
        return time.perf_counter() - start


class IFImg2ImgPipeline(_IFPipelineBase):
    """IF stage I, image to image: ``pipe(prompt, image, strength=0.7)``; the image noised to the
    ``strength`` fraction of the schedule, then denoised from there. Components as ``IFPipeline``."""

    def check_inputs(self, prompt, image, batch_size, callback_steps, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        self._check_prompt_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self._check_image("image", image, batch_size)

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
        self._check_call_options(kwargs, num_images_per_prompt, guidance_scale, output_type, num_inference_steps,
                                 timesteps, cross_attention_kwargs)
        batch_size = self._batch_size(prompt, prompt_embeds)
        self.check_inputs(prompt, image, batch_size, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self._check_strength(strength)
        init = self.preprocess_image(image)
        self._check_channels("image", init, self._image_channels())
        init = np.repeat(init, num_images_per_prompt, axis=0)
        return self._sample(
            prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, num_images_per_prompt=num_images_per_prompt,
            clean_caption=clean_caption, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
            timesteps=timesteps, eta=eta, rng=rng, latents=latents, callback=callback, callback_steps=callback_steps,
            output_type=output_type, return_dict=return_dict, height=init.shape[1], width=init.shape[2],
            batch_size=batch_size, init_image=init, strength=strength,
        )


class IFInpaintingPipeline(_IFPipelineBase):
    """IF stage I inpainting: ``pipe(prompt, image, mask_image, strength=1.0)``; the pixels where the
    mask is 1 are generated, the others kept (blended back after every step). Components as ``IFPipeline``."""

    def check_inputs(self, prompt, image, mask_image, batch_size, callback_steps, negative_prompt=None,
                     prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        self._check_prompt_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self._check_image("image", image, batch_size)
        self._check_mask(mask_image, batch_size)

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
        self._check_call_options(kwargs, num_images_per_prompt, guidance_scale, output_type, num_inference_steps,
                                 timesteps, cross_attention_kwargs)
        batch_size = self._batch_size(prompt, prompt_embeds)
        self.check_inputs(prompt, image, mask_image, batch_size, callback_steps, negative_prompt, prompt_embeds,
                          negative_prompt_embeds)
        self._check_strength(strength)
        init = self.preprocess_image(image)
        self._check_channels("image", init, self._image_channels())
        mask = self.preprocess_mask_image(mask_image)
        _check_mask_size(mask, init, "image")
        total = batch_size * num_images_per_prompt
        init = np.repeat(init, num_images_per_prompt, axis=0)
        return self._sample(
            prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, num_images_per_prompt=num_images_per_prompt,
            clean_caption=clean_caption, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
            timesteps=timesteps, eta=eta, rng=rng, latents=latents, callback=callback, callback_steps=callback_steps,
            output_type=output_type, return_dict=return_dict, height=init.shape[1], width=init.shape[2],
            batch_size=batch_size, init_image=init, strength=strength,
            mask=_repeat_mask(mask, total, num_images_per_prompt),
        )


# --------------------------------------------------------------------------- stage II


class IFSuperResolutionPipeline(_IFSuperResolutionBase):
    """IF stage II: ``pipe(image=stage_I_images, prompt_embeds=..., negative_prompt_embeds=...)`` upscales
    to height x width (the UNet's sample size, 256, by default). Components: ``IFPipeline``'s plus
    ``image_noising_scheduler`` (the DDPM schedule that noises the upscaled image to ``noise_level``)."""

    def check_inputs(self, prompt, image, batch_size, noise_level, callback_steps, negative_prompt=None,
                     prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        self._check_prompt_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self._check_noise_level(noise_level)
        self._check_image("image", image, batch_size)

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
        self._check_call_options(kwargs, num_images_per_prompt, guidance_scale, output_type, num_inference_steps,
                                 timesteps, cross_attention_kwargs)
        batch_size = self._batch_size(prompt, prompt_embeds)
        self.check_inputs(prompt, image, batch_size, noise_level, callback_steps, negative_prompt, prompt_embeds,
                          negative_prompt_embeds)
        height = height or self.unet.config.sample_size
        width = width or self.unet.config.sample_size
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise ValueError(f"`height` and `width` have to be positive integers but are {height} and {width}.")
        low_res = self._upscale_source(image, num_images_per_prompt, height, width)
        return self._sample(
            prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, num_images_per_prompt=num_images_per_prompt,
            clean_caption=clean_caption, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
            timesteps=timesteps, eta=eta, rng=rng, latents=latents, callback=callback, callback_steps=callback_steps,
            output_type=output_type, return_dict=return_dict, height=height, width=width, batch_size=batch_size,
            low_res=low_res, noise_level=noise_level,
        )


class IFImg2ImgSuperResolutionPipeline(_IFSuperResolutionBase):
    """IF stage II image to image: upscales ``image`` (stage I's output) to ``original_image``'s size,
    starting from ``original_image`` noised by ``strength``. Components as ``IFSuperResolutionPipeline``."""

    def check_inputs(self, prompt, image, original_image, batch_size, callback_steps, negative_prompt=None,
                     prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        self._check_prompt_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self._check_image("image", image, batch_size)
        self._check_image("original_image", original_image, batch_size)

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
        self._check_call_options(kwargs, num_images_per_prompt, guidance_scale, output_type, num_inference_steps,
                                 timesteps, cross_attention_kwargs)
        batch_size = self._batch_size(prompt, prompt_embeds)
        self.check_inputs(prompt, image, original_image, batch_size, callback_steps, negative_prompt, prompt_embeds,
                          negative_prompt_embeds)
        self._check_strength(strength)
        self._check_noise_level(noise_level)
        init = self.preprocess_image(original_image)
        self._check_channels("original_image", init, self._image_channels())
        height, width = init.shape[1:3]
        low_res = self._upscale_source(image, num_images_per_prompt, height, width)
        return self._sample(
            prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, num_images_per_prompt=num_images_per_prompt,
            clean_caption=clean_caption, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
            timesteps=timesteps, eta=eta, rng=rng, latents=latents, callback=callback, callback_steps=callback_steps,
            output_type=output_type, return_dict=return_dict, height=height, width=width, batch_size=batch_size,
            init_image=np.repeat(init, num_images_per_prompt, axis=0), strength=strength, low_res=low_res,
            noise_level=noise_level,
        )


class IFInpaintingSuperResolutionPipeline(_IFSuperResolutionBase):
    """IF stage II inpainting: upscales ``image`` (stage I's inpainted output) to ``original_image``'s
    size, repainting only where ``mask_image`` is 1. Components as ``IFSuperResolutionPipeline``."""

    def check_inputs(self, prompt, image, original_image, mask_image, batch_size, callback_steps,
                     negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None):
        """diffusers' checks, same messages."""
        self._check_prompt_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self._check_image("image", image, batch_size)
        self._check_image("original_image", original_image, batch_size)
        self._check_mask(mask_image, batch_size)

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
        self._check_call_options(kwargs, num_images_per_prompt, guidance_scale, output_type, num_inference_steps,
                                 timesteps, cross_attention_kwargs)
        batch_size = self._batch_size(prompt, prompt_embeds)
        self.check_inputs(prompt, image, original_image, mask_image, batch_size, callback_steps, negative_prompt,
                          prompt_embeds, negative_prompt_embeds)
        self._check_strength(strength)
        self._check_noise_level(noise_level)
        init = self.preprocess_image(original_image)
        self._check_channels("original_image", init, self._image_channels())
        mask = self.preprocess_mask_image(mask_image)
        _check_mask_size(mask, init, "original_image")
        height, width = init.shape[1:3]
        low_res = self._upscale_source(image, num_images_per_prompt, height, width)
        total = batch_size * num_images_per_prompt
        return self._sample(
            prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, num_images_per_prompt=num_images_per_prompt,
            clean_caption=clean_caption, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
            timesteps=timesteps, eta=eta, rng=rng, latents=latents, callback=callback, callback_steps=callback_steps,
            output_type=output_type, return_dict=return_dict, height=height, width=width, batch_size=batch_size,
            init_image=np.repeat(init, num_images_per_prompt, axis=0), strength=strength,
            mask=_repeat_mask(mask, total, num_images_per_prompt), low_res=low_res, noise_level=noise_level,
        )
