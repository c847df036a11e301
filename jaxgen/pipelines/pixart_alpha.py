"""PixArtAlphaPipeline: T5 prompt encoding, a compiled DPM-Solver/DDIM/DDPM loop over the PixArt
transformer, and AutoencoderKL decoding, with diffusers' arguments, defaults and checks.

The whole denoising loop is one XLA program per (shapes, step count, scheduler, guidance on/off):
``lax.fori_loop`` over steps with the scheduler state in the carry, classifier-free guidance as
one batched call (each sample's unconditional and conditional rows side by side, so that a batch
split over devices keeps both halves of a sample together), no host round trip per step.
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

from jaxgen import sharding
from jaxgen.image_processing import postprocess, resize_and_crop
from jaxgen.models.autoencoder_kl import AutoencoderKL
from jaxgen.models.pixart_transformer import PixArtTransformer2DModel
from jaxgen.pipelines.aspect_ratio_bins import (
    ASPECT_RATIO_256_BIN, ASPECT_RATIO_512_BIN, ASPECT_RATIO_1024_BIN, classify_height_width_bin,
)
from jaxgen.pipelines.pipeline_utils import (
    ComponentSpec, DiffusionPipeline, ImagePipelineOutput, as_key, check_prompt_arguments, encode_text, unbind,
)
from jaxgen.pipelines.sampling import Denoiser, guidance_rows, run_denoise
from jaxgen.text.captions import text_preprocessing
from jaxgen.text.t5 import T5EncoderModel

__all__ = ["PixArtAlphaPipeline", "encode_text", "decode_latents"]

logger = logging.getLogger(__name__)


@functools.partial(jax.jit, static_argnames=("module",))
def decode_latents(module: Any, params: Any, latents: jax.Array) -> jax.Array:
    """AutoencoderKL: scaled latents (B, h, w, C) -> images (B, 8h, 8w, 3) in about [-1, 1], float32."""
    z = latents / module.config.scaling_factor
    return module.apply({"params": params}, z.astype(module.dtype), method="decode").sample.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class PixArtDenoiser(Denoiser):
    """The PixArt transformer as ``denoise`` calls it; cond: encoder_hidden_states, encoder_attention_mask
    and (1024 checkpoints) added_cond_kwargs. Its learned sigma is dropped after guidance."""

    transformer: Any

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        return self.transformer.apply(
            {"params": params},
            model_input.astype(self.transformer.dtype),
            encoder_hidden_states=cond["encoder_hidden_states"],
            timestep=timestep,
            added_cond_kwargs=cond.get("added_cond_kwargs"),
            encoder_attention_mask=cond["encoder_attention_mask"],
        ).sample


def _as_batch(x: Any, name: str, ndim: int) -> jax.Array:
    arr = jnp.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(arr.shape)}")
    return arr


class PixArtAlphaPipeline(DiffusionPipeline):
    """PixArt-α text-to-image: ``pipe(prompt) -> ImagePipelineOutput(images=...)``.

    Components (as diffusers): ``tokenizer`` (transformers T5 tokenizer), ``text_encoder``
    (``T5EncoderModel``), ``vae`` (``AutoencoderKL``), ``transformer`` (``PixArtTransformer2DModel``),
    ``scheduler`` (``DPMSolverMultistepScheduler`` or any jaxgen scheduler).

    Runs on ``pipe.mesh``: the images of a call (prompts x images per prompt, each with both
    guidance halves) are split over the mesh's ``data`` axis, padded to a multiple of it and the
    padding dropped from the results; a seed gives the same images on any number of devices.
    ``pipe.warmup(height=..., width=..., num_inference_steps=..., batch_size=...)`` compiles ahead.
    """

    _components = {
        "tokenizer": ComponentSpec("tokenizer", optional=True),
        "text_encoder": ComponentSpec("model", T5EncoderModel, ("T5EncoderModel",), optional=True),
        "vae": ComponentSpec("model", AutoencoderKL, ("AutoencoderKL",), optional=True),
        "transformer": ComponentSpec("model", PixArtTransformer2DModel, ("Transformer2DModel", "PixArtTransformer2DModel")),
        "scheduler": ComponentSpec("scheduler"),
    }

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (number of VAE levels - 1), 8 without a VAE (as diffusers)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] = "",
        num_images_per_prompt: int = 1,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        prompt_attention_mask: Any = None,
        negative_prompt_attention_mask: Any = None,
        clean_caption: bool = False,
        max_sequence_length: int = 120,
        **kwargs: Any,
    ) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
        """T5 embeddings of the prompt and (with guidance) the negative prompt, repeated per image.

        Returns ``(prompt_embeds (B*n, L, D), prompt_attention_mask (B*n, L), negative_prompt_embeds,
        negative_prompt_attention_mask)``, the negatives None without guidance: diffusers' values.
        """
        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = self._encode_text(
                text_preprocessing(prompt, clean_caption=clean_caption), max_sequence_length, warn_truncation=True
            )
        else:
            prompt_embeds = _as_batch(prompt_embeds, "prompt_embeds", 3)
            prompt_attention_mask = _as_batch(prompt_attention_mask, "prompt_attention_mask", 2)
        dtype = self._embeds_dtype()
        batch = prompt_embeds.shape[0]
        prompt_embeds = jnp.repeat(prompt_embeds.astype(dtype), num_images_per_prompt, axis=0)
        prompt_attention_mask = jnp.repeat(prompt_attention_mask, num_images_per_prompt, axis=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, prompt_attention_mask, None, None
        if negative_prompt_embeds is None:
            uncond = [negative_prompt] * batch if isinstance(negative_prompt, str) else negative_prompt
            negative_prompt_embeds, negative_prompt_attention_mask = self._encode_text(
                text_preprocessing(uncond, clean_caption=clean_caption), prompt_embeds.shape[1]
            )
        else:
            negative_prompt_embeds = _as_batch(negative_prompt_embeds, "negative_prompt_embeds", 3)
            negative_prompt_attention_mask = _as_batch(negative_prompt_attention_mask, "negative_prompt_attention_mask", 2)
        negative_prompt_embeds = jnp.repeat(negative_prompt_embeds.astype(dtype), num_images_per_prompt, axis=0)
        negative_prompt_attention_mask = jnp.repeat(negative_prompt_attention_mask, num_images_per_prompt, axis=0)
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask

    def _embeds_dtype(self) -> Any:
        for component in (self.text_encoder, self.transformer):
            if component is not None:
                return component.dtype
        return jnp.float32

    def check_inputs(
        self, prompt, height, width, negative_prompt, callback_steps, prompt_embeds=None, negative_prompt_embeds=None,
        prompt_attention_mask=None, negative_prompt_attention_mask=None,
    ) -> None:
        """diffusers' checks, same messages; raised before anything is encoded or compiled."""
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError(f"`height` and `width` have to be divisible by 8 but are {height} and {width}.")
        check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if prompt is not None and negative_prompt_embeds is not None:
            raise ValueError(
                f"Cannot forward both `prompt`: {prompt} and `negative_prompt_embeds`:"
                f" {negative_prompt_embeds}. Please make sure to only forward one of the two."
            )
        if prompt_embeds is not None and prompt_attention_mask is None:
            raise ValueError("Must provide `prompt_attention_mask` when specifying `prompt_embeds`.")
        if negative_prompt_embeds is not None and negative_prompt_attention_mask is None:
            raise ValueError("Must provide `negative_prompt_attention_mask` when specifying `negative_prompt_embeds`.")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if np.shape(prompt_attention_mask) != np.shape(negative_prompt_attention_mask):
                raise ValueError(
                    "`prompt_attention_mask` and `negative_prompt_attention_mask` must have the same shape when passed"
                    f" directly, but got: `prompt_attention_mask` {np.shape(prompt_attention_mask)} !="
                    f" `negative_prompt_attention_mask` {np.shape(negative_prompt_attention_mask)}."
                )

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] = "",
        num_inference_steps: int = 20,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 4.5,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        rng: Any = None,
        latents: Any = None,
        prompt_embeds: Any = None,
        prompt_attention_mask: Any = None,
        negative_prompt_embeds: Any = None,
        negative_prompt_attention_mask: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        clean_caption: bool = True,
        use_resolution_binning: bool = True,
        max_sequence_length: int = 120,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """Generate images from text.

        Arguments are diffusers' (``generator`` becomes ``rng``: an int seed or a ``jax.random``
        key). ``latents``: the initial noise, (batch * num_images_per_prompt, height // 8,
        width // 8, 4), channels last. ``output_type``: "pil" (list of PIL images), "np" (float32
        NHWC in [0, 1]) or "latent" (NHWC latents). Returns ``ImagePipelineOutput(images=...)``,
        or ``(images,)`` with ``return_dict=False``.
        """
        if "generator" in kwargs:
            raise TypeError("jaxgen pipelines take `rng` (an int seed or a jax.random key) instead of `generator`")
        kwargs.pop("mask_feature", None)  # deprecated in diffusers, no effect
        compile_only = kwargs.pop("_compile_only", False)  # warmup(): everything but the loop's steps
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        sample_size = self.transformer.config.sample_size
        height = height or sample_size * self.vae_scale_factor
        width = width or sample_size * self.vae_scale_factor
        orig_height, orig_width = height, width
        if use_resolution_binning:
            bins = {128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}.get(sample_size)
            if bins is None:
                raise ValueError("Invalid sample size")
            height, width = classify_height_width_bin(height, width, ratios=bins)
        self.check_inputs(
            prompt, height, width, negative_prompt, callback_steps, prompt_embeds, negative_prompt_embeds,
            prompt_attention_mask, negative_prompt_attention_mask,
        )
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` has to be a positive integer but is {num_images_per_prompt}.")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` has to be >= 0 (1 or less turns guidance off) but is {guidance_scale}.")
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"`output_type` has to be one of 'pil', 'np', 'latent' but is {output_type!r}.")
        if timesteps is None and sigmas is None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps}.")
        if timesteps is not None and sigmas is not None:
            raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
        if output_type != "latent" and self.vae is None:
            raise ValueError("this pipeline was loaded with `vae=None`: use output_type='latent'")

        if prompt is not None:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        else:
            batch_size = np.shape(prompt_embeds)[0]
        total = batch_size * num_images_per_prompt
        latent_channels = self.transformer.config.in_channels
        latent_shape = (total, height // self.vae_scale_factor, width // self.vae_scale_factor, latent_channels)
        if latents is not None and tuple(np.shape(latents)) != latent_shape:
            raise ValueError(f"`latents` must have shape {latent_shape} (channels last), got {tuple(np.shape(latents))}")

        # The batch is split over the mesh's data axis, padded to a multiple of it; the noise is
        # drawn for the unpadded batch, so a seed gives the same images on any number of devices.
        mesh = self.mesh
        rows = self._padded_rows(total)
        padded_shape = (rows,) + latent_shape[1:]
        state = self._set_timesteps(num_inference_steps, timesteps, sigmas, padded_shape)
        state = sharding.place_matching(state, mesh, padded_shape)
        do_cfg = guidance_scale > 1.0
        embeds, mask, neg_embeds, neg_mask = self.encode_prompt(
            prompt, do_cfg, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_attention_mask=negative_prompt_attention_mask,
            clean_caption=clean_caption, max_sequence_length=max_sequence_length,
        )
        module, params = unbind(self.transformer)
        cond = {
            "encoder_hidden_states": guidance_rows(self, embeds, neg_embeds if do_cfg else None, rows, module.dtype),
            "encoder_attention_mask": guidance_rows(self, mask, neg_mask if do_cfg else None, rows),
        }
        if sample_size == 128:  # the 1024 checkpoints' resolution and aspect-ratio micro-conditions
            n = cond["encoder_hidden_states"].shape[0]
            dtype = np.dtype(module.dtype)
            cond["added_cond_kwargs"] = {
                "resolution": self._shard_rows(np.tile(np.asarray([[height, width]], dtype), (n, 1)), n),
                "aspect_ratio": self._shard_rows(np.full((n, 1), float(height / width), dtype), n),
            }

        key = as_key(rng)
        noise_key, step_key = jax.random.split(key)
        if latents is None:
            latents = jax.random.normal(noise_key, latent_shape, jnp.float32)
        latents = jnp.asarray(latents, jnp.float32) * self.scheduler.init_noise_sigma
        latents = self._shard_rows(latents, rows)

        with self._mesh_context():
            latents = run_denoise(
                self, PixArtDenoiser(module), params, latents, state, cond, guidance_scale, step_key, eta=eta,
                callback=callback, callback_steps=callback_steps, rows=total, compile_only=compile_only,
            )
            if output_type != "latent":
                vae_module, vae_params = unbind(self.vae)
                decoded = decode_latents(vae_module, vae_params, latents)

        if output_type == "latent":
            images = jnp.asarray(sharding.gather_rows(latents, total))
        else:
            images = sharding.gather_rows(decoded, total)
            if use_resolution_binning and (orig_height, orig_width) != (height, width):
                images = resize_and_crop(images, orig_width, orig_height)
            images = postprocess(images, output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def warmup(
        self,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        batch_size: int = 1,
        guidance_scale: float = 4.5,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        use_resolution_binning: bool = True,
        max_sequence_length: int = 120,
        **kwargs: Any,
    ) -> float:
        """Compile ahead what a call with these settings runs, so that the call itself does not compile.

        ``batch_size`` is the number of prompts; the other arguments are ``__call__``'s (more of
        them, such as ``timesteps`` or ``eta``, go through ``kwargs``). Runs the whole pipeline on
        placeholder prompts (or zero ``prompt_embeds`` without a text encoder) with the sampling
        loop's step count set to 0: the loop is compiled, not run. Calls with other shapes, step
        counts, guidance on/off, a ``callback``, or another progress-bar setting compile their own
        programs. Returns the seconds it took.
        """
        start = time.perf_counter()
        if self.tokenizer is not None and self.text_encoder is not None:
            inputs: dict[str, Any] = {"prompt": [""] * batch_size}
        else:
            width_ = self.transformer.config.caption_channels or self.transformer.config.cross_attention_dim
            embeds = np.zeros((batch_size, max_sequence_length, width_), np.float32)
            mask = np.ones((batch_size, max_sequence_length), np.int32)
            inputs = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
            if guidance_scale > 1.0:
                inputs.update(negative_prompt=None, negative_prompt_embeds=embeds, negative_prompt_attention_mask=mask)
        self(
            **inputs, height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_prompt, output_type=output_type,
            use_resolution_binning=use_resolution_binning, max_sequence_length=max_sequence_length,
            _compile_only=True, **kwargs,
        )
        return time.perf_counter() - start
