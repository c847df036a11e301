"""StableDiffusionUpscalePipeline: the x4 upscaler (stabilityai/stable-diffusion-x4-upscaler), also
DeepFloyd IF's stage III, with diffusers' arguments, defaults and checks.

The low-resolution image (in [-1, 1]) is noised by ``low_res_scheduler`` to ``noise_level``, and
the UNet denoises latents of the image's own size with that noisy image concatenated to them on the
channel axis (4 + 3 = 7 input channels) and ``noise_level`` as its class label; the VAE (x4, three
levels, ``scaling_factor`` 0.08333) decodes the latents to an image 4x the input's size. The loop is
the shared compiled one (``jaxgen.pipelines.sampling``); ``UpscaleDenoiser`` is its model adapter.
At 1024 pixels the VAE's mid-block attention spans 256 x 256 latents: ``enable_vae_tiling()``
decodes in overlapping tiles instead, as diffusers does.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen import sharding
from jaxgen.image_processing import postprocess, preprocess
from jaxgen.models.autoencoder_kl import AutoencoderKL, tile_sizes, tiled_decode
from jaxgen.models.safety_checker import IFSafetyChecker, check_safety
from jaxgen.models.unet_2d_condition import UNet2DConditionModel
from jaxgen.models.watermark import IFWatermarker
from jaxgen.pipelines.pipeline_utils import (
    ComponentSpec, DiffusionPipeline, as_key, check_prompt_arguments, negative_prompts, unbind,
)
from jaxgen.pipelines.pixart_alpha import decode_latents
from jaxgen.pipelines.sampling import Denoiser, guidance_rows, run_denoise
from jaxgen.text.clip import CLIPTextModel

__all__ = ["StableDiffusionUpscalePipeline", "StableDiffusionPipelineOutput", "UpscaleDenoiser", "encode_clip_text"]

logger = logging.getLogger(__name__)

VAE_SCALING_FACTOR = 0.08333  # the x4 VAE's; diffusers forces it on any other value


@dataclasses.dataclass
class StableDiffusionPipelineOutput:
    """``images`` (list of PIL images, float32 NHWC numpy in [0, 1], or NHWC latents) and
    ``nsfw_content_detected`` (one bool per image, None without a safety checker), as diffusers."""

    images: Any
    nsfw_content_detected: list[bool] | None

    def __getitem__(self, index: int) -> Any:  # diffusers' outputs index like tuples
        return dataclasses.astuple(self)[index]


@functools.partial(jax.jit, static_argnames=("module", "clip_skip"))
def encode_clip_text(module: Any, params: Any, input_ids: jax.Array, clip_skip: int | None = None) -> jax.Array:
    """CLIP text encoder: (B, L) ids -> (B, L, D) embeddings, the last layer's (final-normed) output,
    or with ``clip_skip`` = k the output of the layer k before the last, through ``final_layer_norm``
    (diffusers' ``encode_prompt``)."""
    if clip_skip is None:
        return module.apply({"params": params}, input_ids).last_hidden_state
    hidden = module.apply({"params": params}, input_ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
    norm = params["text_model"]["final_layer_norm"]
    mean = hidden.mean(-1, keepdims=True)
    var = jnp.square(hidden - mean).mean(-1, keepdims=True)
    out = (hidden - mean) * jax.lax.rsqrt(var + module.config.layer_norm_eps) * norm["scale"] + norm["bias"]
    return out.astype(hidden.dtype)


@functools.partial(jax.jit, static_argnames=("module", "tile_sample_min_size", "tile_latent_min_size"))
def _decode_tiled(module: Any, params: Any, latents: jax.Array, tile_sample_min_size: int,
                  tile_latent_min_size: int) -> jax.Array:
    """Scaled latents -> images in about [-1, 1], float32, decoded in tiles (``tiled_decode``)."""
    z = (latents / module.config.scaling_factor).astype(module.dtype)
    out = tiled_decode(module, params, z, tile_sample_min_size=tile_sample_min_size,
                       tile_latent_min_size=tile_latent_min_size)
    return out.sample.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class UpscaleDenoiser(Denoiser):
    """The x4 upscaler's UNet as ``denoise`` calls it. cond: ``encoder_hidden_states`` (N, L, D),
    ``image`` (N, H, W, 3), the noised low-resolution image, concatenated after the (scaled) latents
    on the channel axis, and ``class_labels`` (N,) int, the noise level."""

    unet: Any

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        dtype = self.unet.dtype
        sample = jnp.concatenate([model_input.astype(dtype), cond["image"].astype(dtype)], axis=-1)
        return self.unet.apply(
            {"params": params}, sample, timestep, encoder_hidden_states=cond["encoder_hidden_states"],
            class_labels=cond["class_labels"],
        ).sample


def _image_batch(image: Any) -> int:
    """How many images ``image`` holds: a list's length, a 4-D array's first axis, else 1."""
    if isinstance(image, (list, tuple)):
        return len(image)
    if isinstance(image, (np.ndarray, jax.Array)) and np.ndim(image) == 4:
        return int(np.shape(image)[0])
    return 1


class StableDiffusionUpscalePipeline(DiffusionPipeline):
    """Text-guided x4 super-resolution: ``pipe(prompt, image) -> StableDiffusionPipelineOutput(images=...)``.

    Components (as diffusers): ``vae`` (``AutoencoderKL``), ``text_encoder`` (``CLIPTextModel``),
    ``tokenizer`` (transformers CLIP tokenizer), ``unet`` (``UNet2DConditionModel``, 7 input
    channels, ``num_class_embeds``), ``low_res_scheduler`` (``DDPMScheduler``: noises the input
    image), ``scheduler`` (``DDIMScheduler`` in the checkpoint, or any jaxgen scheduler); optional
    ``safety_checker`` / ``feature_extractor`` / ``watermarker`` (IF's, passed in when the pipeline
    is IF's stage III, as diffusers documents it). Config: ``max_noise_level`` (350), from
    model_index.json.

    Runs on ``pipe.mesh`` as every jaxgen pipeline (rows split over the ``data`` axis; a seed gives
    the same images on any number of devices).
    """

    _components = {
        "vae": ComponentSpec("model", AutoencoderKL, ("AutoencoderKL",), optional=True),
        "text_encoder": ComponentSpec("model", CLIPTextModel, ("CLIPTextModel",), optional=True),
        "tokenizer": ComponentSpec("tokenizer", optional=True),
        "unet": ComponentSpec("model", UNet2DConditionModel, ("UNet2DConditionModel",)),
        "low_res_scheduler": ComponentSpec("scheduler"),
        "scheduler": ComponentSpec("scheduler"),
        "safety_checker": ComponentSpec("model", IFSafetyChecker, ("IFSafetyChecker",), optional=True),
        "feature_extractor": ComponentSpec("processor", optional=True),
        "watermarker": ComponentSpec("object", IFWatermarker, ("IFWatermarker",), optional=True),
    }
    _config = {"max_noise_level": 350}

    def __init__(self, *, mesh: Any = None, **components: Any) -> None:
        super().__init__(mesh=mesh, **components)
        self._vae_tiling = False
        if self.vae is not None and self.vae.config.scaling_factor != VAE_SCALING_FACTOR:
            # diffusers rewrites the VAE's config with a deprecation warning: the same here
            logger.warning(
                "The configuration file of the vae does not contain `scaling_factor` or it is set to"
                f" {self.vae.config.scaling_factor}, which seems highly unlikely. If your checkpoint is a fine-tuned"
                " version of `stabilityai/stable-diffusion-x4-upscaler` you should change 'scaling_factor' to"
                f" {VAE_SCALING_FACTOR}."
            )
            module, variables = self.vae.unbind()
            config = dataclasses.replace(module.config, scaling_factor=VAE_SCALING_FACTOR)
            self.vae = module.clone(config=config).bind(variables)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (number of VAE levels - 1) (4 for the x4 VAE), 8 without a VAE."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    def enable_vae_tiling(self) -> None:
        """Decode in overlapping tiles (diffusers' ``enable_vae_tiling``): latents wider or taller than
        the VAE's ``sample_size / vae_scale_factor`` are decoded tile by tile and blended, so memory
        stays that of one tile (``jaxgen.models.autoencoder_kl.tiled_decode``)."""
        self._vae_tiling = True

    def disable_vae_tiling(self) -> None:
        """Decode in one piece again (the default)."""
        self._vae_tiling = False

    # ------------------------------------------------------------------ prompts

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        clip_skip: int | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """CLIP embeddings of the prompt and (with guidance) of the negative prompt, repeated per image.

        diffusers' ``encode_prompt`` without ``device``/``lora_scale``: returns ``(prompt_embeds
        (B*n, L, D), negative_prompt_embeds (B*n, L, D) or None without guidance)``. ``clip_skip``
        = k takes the output of the layer k before the last (through the final layer norm).
        """
        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = np.shape(prompt_embeds)[0]
        dtype = self._embeds_dtype()
        if prompt_embeds is None:
            prompt_embeds = self._encode_clip([prompt] if isinstance(prompt, str) else list(prompt), clip_skip,
                                              warn_truncation=True)
        prompt_embeds = jnp.repeat(jnp.asarray(prompt_embeds).astype(dtype), num_images_per_prompt, axis=0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            # Stable Diffusion's encode_prompt also wants both of one type (IF's does not)
            if negative_prompt is not None and prompt is not None and type(prompt) is not type(negative_prompt):
                raise TypeError(
                    f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} !="
                    f" {type(prompt)}."
                )
            uncond = negative_prompts(negative_prompt, prompt, batch_size)
            # as diffusers: padded to the prompt's length, and never clip-skipped
            negative_prompt_embeds = self._encode_clip(uncond, None, max_length=prompt_embeds.shape[1])
        negative_prompt_embeds = jnp.repeat(jnp.asarray(negative_prompt_embeds).astype(dtype), num_images_per_prompt, axis=0)
        return prompt_embeds, negative_prompt_embeds

    def _embeds_dtype(self) -> Any:
        for component in (self.text_encoder, self.unet):
            if component is not None:
                return component.dtype
        return jnp.float32

    def _encode_clip(self, texts: list[str], clip_skip: int | None, max_length: int | None = None,
                     warn_truncation: bool = False) -> jax.Array:
        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError(
                "this pipeline was loaded without `tokenizer`/`text_encoder`: pass `prompt_embeds` (and"
                " `negative_prompt_embeds` when guidance_scale > 1)"
            )
        max_length = max_length or self.tokenizer.model_max_length
        ids = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                             return_tensors="np").input_ids
        if warn_truncation:
            untruncated = self.tokenizer(texts, padding="longest", return_tensors="np").input_ids
            if untruncated.shape[-1] >= ids.shape[-1] and not np.array_equal(ids, untruncated):
                removed = self.tokenizer.batch_decode(untruncated[:, max_length - 1 : -1])
                logger.warning(
                    "The following part of your input was truncated because CLIP can only handle sequences up to"
                    f" {max_length} tokens: {removed}"
                )
        module, params = unbind(self.text_encoder)
        rows = self._padded_rows(len(texts))  # split over the mesh's data axis, then gathered
        with self._mesh_context():
            embeds = encode_clip_text(module, params, self._shard_rows(np.asarray(ids, np.int32), rows), clip_skip)
        return jnp.asarray(sharding.gather_rows(embeds, len(texts)))

    # ------------------------------------------------------------------ checks

    def check_inputs(
        self, prompt, image, noise_level, callback_steps, negative_prompt=None, prompt_embeds=None,
        negative_prompt_embeds=None,
    ) -> None:
        """diffusers' checks and messages, plus a noise level inside the low-res schedule; raised before
        anything is encoded or compiled."""
        check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if prompt_embeds is not None and np.ndim(prompt_embeds) != 3:
            raise ValueError(f"`prompt_embeds` must be (batch, tokens, width), got shape {np.shape(prompt_embeds)}")
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        if not isinstance(image, (PIL.Image.Image, np.ndarray, jax.Array, list)):
            raise ValueError(
                "`image` has to be of type `np.ndarray`, `jax.Array`, `PIL.Image.Image` or `list` but is"
                f" {type(image)}"
            )
        if isinstance(prompt, str):
            batch_size = 1
        elif isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = np.shape(prompt_embeds)[0]
        image_batch_size = _image_batch(image)
        if batch_size != image_batch_size:
            raise ValueError(
                f"`prompt` has batch size {batch_size} and `image` has batch size {image_batch_size}."
                " Please make sure that passed `prompt` matches the batch size of `image`."
            )
        if isinstance(noise_level, bool) or not isinstance(noise_level, (int, np.integer)):
            raise ValueError(f"`noise_level` has to be an integer but is {noise_level!r} of type {type(noise_level)}")
        if noise_level > self.config.max_noise_level:
            raise ValueError(f"`noise_level` has to be <= {self.config.max_noise_level} but is {noise_level}")
        if noise_level < 0:
            raise ValueError(f"`noise_level` has to be >= 0 but is {noise_level}")
        steps = self.low_res_scheduler.config["num_train_timesteps"]
        if noise_level >= steps:
            raise ValueError(
                f"`noise_level` has to be < {steps}, the `low_res_scheduler`'s num_train_timesteps, but is {noise_level}"
            )

    # ------------------------------------------------------------------ sampling

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        num_inference_steps: int = 75,
        guidance_scale: float = 9.0,
        noise_level: int = 20,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        eta: float = 0.0,
        rng: Any = None,
        latents: Any = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        **kwargs: Any,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Upscale ``image`` 4x, guided by ``prompt``.

        Arguments are diffusers' (``generator`` becomes ``rng``: an int seed or a ``jax.random`` key).
        ``image``: a PIL image, a numpy/jax array (H, W, 3) or (B, H, W, 3) in [0, 1] (arrays with
        negative values are taken as already in [-1, 1]), or a list of these; one per prompt. PIL
        images are resized (bicubic) and arrays cropped by nearest resize to a multiple of
        ``vae_scale_factor``, as diffusers' ``VaeImageProcessor``. ``latents``: the initial noise,
        (B * num_images_per_prompt, H, W, vae latent_channels) at the input's size, channels last.
        The key is split in three, in diffusers' order of draws: the noise added to the low-res
        image (``jax.random.normal``, the preprocessed image's NHWC shape), the latents, the
        scheduler's steps. As diffusers, the image rows are repeated as a whole: with several
        prompts and ``num_images_per_prompt`` n > 1, output k comes from prompt k // n and image
        k % B. ``output_type``: "pil", "np" (float32 NHWC in [0, 1]) or "latent". Returns
        ``StableDiffusionPipelineOutput(images, nsfw_content_detected)``, or ``(images,
        nsfw_content_detected)`` with ``return_dict=False``.
        """
        if "generator" in kwargs:
            raise TypeError("jaxgen pipelines take `rng` (an int seed or a jax.random key) instead of `generator`")
        compile_only = kwargs.pop("_compile_only", False)  # warmup(): everything but the loop's steps
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        self.check_inputs(prompt, image, noise_level, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if cross_attention_kwargs:
            raise ValueError(f"cross_attention_kwargs are not supported (got keys {sorted(cross_attention_kwargs)})")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` has to be a positive integer but is {num_images_per_prompt}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps}.")
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"`output_type` has to be one of 'pil', 'np', 'latent' but is {output_type!r}.")
        if output_type != "latent" and self.vae is None:
            raise ValueError("this pipeline was loaded with `vae=None`: use output_type='latent'")
        if self.safety_checker is not None and self.feature_extractor is None and output_type != "latent":
            raise ValueError("the safety checker needs a `feature_extractor` (CLIPImageProcessor)")

        if isinstance(prompt, str):
            batch_size = 1
        elif isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = np.shape(prompt_embeds)[0]
        total = batch_size * num_images_per_prompt
        image = preprocess(image, vae_scale_factor=self.vae_scale_factor, resample="bicubic")
        latent_channels = self.vae.config.latent_channels if self.vae is not None else self.unet.config.out_channels
        unet_channels = self.unet.config.in_channels
        if latent_channels + image.shape[-1] != unet_channels:
            raise ValueError(
                f"Incorrect configuration settings! The config of `pipeline.unet`: {self.unet.config} expects"
                f" {unet_channels} but received `num_channels_latents`: {latent_channels} +"
                f" `num_channels_image`: {image.shape[-1]}  = {latent_channels + image.shape[-1]}. Please verify the"
                " config of `pipeline.unet` or your `image` input."
            )
        height, width = image.shape[1:3]
        latent_shape = (total, height, width, latent_channels)
        if latents is not None and tuple(np.shape(latents)) != latent_shape:
            raise ValueError(f"Unexpected latents shape, got {tuple(np.shape(latents))}, expected {latent_shape}")

        rows = self._padded_rows(total)
        state = self.scheduler.set_timesteps(num_inference_steps, shape=(rows,) + latent_shape[1:])
        state = sharding.place_matching(state, self.mesh, (rows,) + latent_shape[1:])
        do_cfg = guidance_scale > 1.0
        embeds, neg_embeds = self.encode_prompt(
            prompt, num_images_per_prompt, do_cfg, negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, clip_skip=clip_skip,
        )

        key = as_key(rng)
        image_key, latents_key, step_key = jax.random.split(key, 3)
        noise = jax.random.normal(image_key, image.shape, jnp.float32)
        image = self.low_res_scheduler.add_noise(None, jnp.asarray(image), noise, jnp.asarray([noise_level]))
        # diffusers repeats the whole image batch once per image per prompt (torch.cat([image] * n))
        image_rows = np.tile(np.asarray(image), (num_images_per_prompt, 1, 1, 1))
        labels = np.full((total,), noise_level, np.int32)
        module, params = unbind(self.unet)
        neg = lambda x: x if do_cfg else None
        cond = {
            "encoder_hidden_states": guidance_rows(self, embeds, neg(neg_embeds), rows, module.dtype),
            "image": guidance_rows(self, image_rows, neg(image_rows), rows, module.dtype),
            "class_labels": guidance_rows(self, labels, neg(labels), rows),
        }
        if latents is None:
            latents = jax.random.normal(latents_key, latent_shape, jnp.float32)
        latents = self._shard_rows(jnp.asarray(latents, jnp.float32) * self.scheduler.init_noise_sigma, rows)

        with self._mesh_context():
            latents = run_denoise(
                self, UpscaleDenoiser(module), params, latents, state, cond, guidance_scale, step_key, eta=eta,
                callback=callback, callback_steps=callback_steps, rows=total, compile_only=compile_only,
            )
            if output_type != "latent":
                decoded = self._decode(latents)

        if output_type == "latent":
            return self._output(jnp.asarray(sharding.gather_rows(latents, total)), None, return_dict)
        images = sharding.gather_rows(decoded, total)
        images, nsfw_detected = self.run_safety_checker(images)
        do_denormalize = None if nsfw_detected is None else [not flagged for flagged in nsfw_detected]
        images = postprocess(images, output_type, do_denormalize=do_denormalize)
        if output_type == "pil" and self.watermarker is not None:
            images = self.watermarker.apply_watermark(images)
        return self._output(images, nsfw_detected, return_dict)

    @staticmethod
    def _output(images: Any, nsfw_detected: list[bool] | None, return_dict: bool):
        return StableDiffusionPipelineOutput(images, nsfw_detected) if return_dict else (images, nsfw_detected)

    def _decode(self, latents: jax.Array) -> jax.Array:
        """Scaled latents (N, h, w, C) -> images (N, 4h, 4w, 3) in about [-1, 1]; tiled when enabled and
        the latents exceed a tile, as diffusers decides."""
        module, params = unbind(self.vae)
        sample_tile, latent_tile = tile_sizes(module.config)
        if self._vae_tiling and max(latents.shape[1], latents.shape[2]) > latent_tile:
            return _decode_tiled(module, params, latents, sample_tile, latent_tile)
        return decode_latents(module, params, latents)

    def run_safety_checker(self, images: np.ndarray) -> tuple[np.ndarray, list[bool] | None]:
        """IF's safety checker on decoded NHWC images in [-1, 1]: flagged images become zeros.

        Returns ``(images, nsfw_detected)``, ``nsfw_detected`` one bool per image (None without a
        safety checker): diffusers' ``run_safety_checker`` (its watermark flag is not returned).
        """
        if self.safety_checker is None:
            return images, None
        pixel_values = self.feature_extractor(postprocess(images, "pil"), return_tensors="np").pixel_values
        clip_input = np.transpose(np.asarray(pixel_values, np.float32), (0, 2, 3, 1))  # NCHW -> NHWC
        module, params = unbind(self.safety_checker)
        checked, nsfw, _ = check_safety(module, params, jnp.asarray(clip_input, module.dtype), jnp.asarray(images))
        return np.asarray(checked, np.float32), [bool(x) for x in np.asarray(nsfw)]

    def warmup(
        self,
        height: int,
        width: int,
        num_inference_steps: int = 75,
        batch_size: int = 1,
        guidance_scale: float = 9.0,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        **kwargs: Any,
    ) -> float:
        """Compile ahead what a call on ``batch_size`` low-resolution images of ``height`` x ``width``
        runs (placeholder prompts and images; the loop's step count set to 0). Other arguments go to
        ``__call__``. Returns the seconds it took."""
        start = time.perf_counter()
        images = np.zeros((batch_size, height, width, 3), np.float32)
        if self.tokenizer is not None and self.text_encoder is not None:
            inputs: dict[str, Any] = {"prompt": [""] * batch_size}
        else:
            cfg = self.unet.config
            width_ = cfg.encoder_hid_dim or cfg.level("cross_attention_dim")[0]
            embeds = np.zeros((batch_size, 77, width_), np.float32)
            inputs = {"prompt_embeds": embeds}
            if guidance_scale > 1.0:
                inputs["negative_prompt_embeds"] = embeds
        self(
            image=images, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            num_images_per_prompt=num_images_per_prompt, output_type=output_type, _compile_only=True,
            **inputs, **kwargs,
        )
        return time.perf_counter() - start
