"""What the Kandinsky decoders share (2.1 here; 2.2 and 3 reuse the MoVQ and UNet parts): the UNet
adapter with Kandinsky's image-embedding conditioning, the MoVQ's encode and decode, the latent size
rule, the image-embedding checks, and 2.1's prompt encoding (M-CLIP).

The decoder pipelines themselves (text-to-image, image-to-image, inpainting) are in ``decoder.py``;
the prior in ``prior.py``; prior + decoder in ``combined.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen import sharding
from jaxgen.image_processing import preprocess
from jaxgen.models.unet_2d_condition import UNet2DConditionModel
from jaxgen.models.vq_model import VQModel
from jaxgen.pipelines import checks, tasks
from jaxgen.pipelines.loading import host_params
from jaxgen.pipelines.pipeline_utils import Batch, ComponentSpec, DiffusionPipeline, as_key, unbind
from jaxgen.pipelines.sampling import Denoiser
from jaxgen.text.multilingual_clip import MultilingualCLIP

__all__ = [
    "KandinskyDenoiser", "KandinskyDecoderBase", "MoVQParts", "decode_movq", "encode_movq", "latent_size", "image_embeds_rows",
    "MAX_LENGTH", "HINT_FACTOR",
]

MAX_LENGTH = 77  # diffusers' Kandinsky 2.1 tokenizes to 77 tokens
HINT_FACTOR = 8  # 2.2's ControlNet UNet encodes its hint with three halvings (ImageHintTimeEmbedding)


@dataclasses.dataclass(frozen=True)
class KandinskyDenoiser(Denoiser):
    """A Kandinsky UNet as ``sampling.denoise`` calls it: (N, h, w, C) latents -> epsilon then the
    learned variance on the last axis. cond: ``encoder_hidden_states`` (2.1's text; absent for 2.2),
    ``text_embeds`` / ``image_embeds`` / ``hint`` (the UNet's ``added_cond_kwargs``), and
    ``extra_channels`` (inpainting's masked image and mask), each (N, ...)."""

    unet: Any
    latent_channels: int

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        added = {k: cond[k] for k in ("text_embeds", "image_embeds", "hint") if k in cond}
        sample = self.with_extra_channels(model_input, cond, self.unet.dtype)
        return self.unet.apply({"params": params}, sample, timestep, cond.get("encoder_hidden_states"),
                               added_cond_kwargs=added).sample

    def learned_variance(self) -> bool:
        return self.unet.config.out_channels == 2 * self.latent_channels


@functools.partial(jax.jit, static_argnames=("module", "rows_per_pass"))
def decode_movq(module: Any, params: Any, latents: jax.Array, rows_per_pass: int | None = None) -> jax.Array:
    """MoVQ decode of latents (B, h, w, C), not quantized (as every Kandinsky pipeline decodes) -> images
    (B, f*h, f*w, 3) in about [-1, 1], float32. Kandinsky's latents are not scaled.

    ``rows_per_pass`` (e.g. the mesh's data-axis size; it must divide B): decode that many rows at a time,
    one pass after another, so memory holds one pass's activations (5 GiB per image at 1024 x 1024 in
    bfloat16). Pass j takes row j of every block of B / rows_per_pass rows: with the rows split over the
    data axis in such blocks, each device decodes its own rows one by one. The same values either way."""
    decode = lambda z: module.apply({"params": params}, z.astype(module.dtype), force_not_quantize=True,
                                    method="decode").sample.astype(jnp.float32)
    rows = latents.shape[0]
    if rows_per_pass is None or rows <= rows_per_pass:
        return decode(latents)
    blocks = jnp.swapaxes(latents.reshape(rows_per_pass, rows // rows_per_pass, *latents.shape[1:]), 0, 1)
    images = jax.lax.map(decode, blocks)  # (B / n, n, H, W, 3)
    return jnp.swapaxes(images, 0, 1).reshape(rows, *images.shape[2:])


@functools.partial(jax.jit, static_argnames=("module",))
def encode_movq(module: Any, params: Any, images: jax.Array) -> jax.Array:
    """MoVQ encode of images (B, H, W, 3) in [-1, 1] -> latents (B, H/f, W/f, C) before quantization, float32."""
    out = module.apply({"params": params}, images.astype(module.dtype), method="encode")
    return out.latents.astype(jnp.float32)


def latent_size(height: int, width: int, scale_factor: int) -> tuple[int, int]:
    """diffusers' ``get_new_h_w``: the latents' size for an image of ``height`` x ``width``: each side
    rounded up to a multiple of ``scale_factor ** 2`` pixels, divided by ``scale_factor`` (the MoVQ's
    factor; the UNet halves the latents ``scale_factor``-fold too)."""
    up = lambda n: -(-n // scale_factor**2) * scale_factor
    return up(height), up(width)


def _as_rows(value: Any, name: str) -> np.ndarray:
    """An embeddings argument (an array, or a list of arrays concatenated) -> float32 (N, D)."""
    if value is None:
        raise ValueError(f"`{name}` must be given: the prior's output (`KandinskyPriorPipeline`)")
    parts = value if isinstance(value, (list, tuple)) else [value]
    arrays = [np.asarray(sharding.gather_rows(x) if isinstance(x, jax.Array) else x, np.float32) for x in parts]
    arrays = [a[None] if a.ndim == 1 else a for a in arrays]
    if any(a.ndim != 2 for a in arrays):
        raise ValueError(f"`{name}` must be (batch, width) image embeddings, got shape {arrays[0].shape}")
    return np.concatenate(arrays, axis=0)


def image_embeds_rows(image_embeds: Any, negative_image_embeds: Any, *, width: int, batch: Batch,
                      guided: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The image embeddings of a decoder call, checked and repeated per image: ``(image_embeds,
    negative_image_embeds or None without guidance)``, each (batch.total, width).

    Each must have one row per prompt (the prior's output for these prompts) and ``width`` columns
    (the UNet's image-embedding width); ValueError naming the argument otherwise.
    """
    out = []
    for name, value in (("image_embeds", image_embeds), ("negative_image_embeds", negative_image_embeds)):
        rows = _as_rows(value, name)
        if rows.shape[1] != width:
            raise ValueError(f"`{name}` has width {rows.shape[1]}, but the UNet takes image embeddings of width {width}")
        if rows.shape[0] != batch.prompts:
            raise ValueError(f"`{name}` has {rows.shape[0]} rows, expected one per prompt ({batch.prompts})")
        out.append(np.repeat(rows, batch.per_prompt, axis=0))
    return out[0], out[1] if guided else None


_COMPONENTS = {
    "text_encoder": ComponentSpec("model", MultilingualCLIP, ("MultilingualCLIP",), optional=True),
    "tokenizer": ComponentSpec("tokenizer", optional=True),
    "unet": ComponentSpec("model", UNet2DConditionModel, ("UNet2DConditionModel",)),
    "scheduler": ComponentSpec("scheduler"),
    "movq": ComponentSpec("model", VQModel, ("VQModel",), optional=True),
}


class MoVQParts:
    """A pipeline whose latents are a ``movq``'s (a ``VQModel``): Kandinsky 2.1, 2.2 and 3's MoVQ encode
    (image inputs), decode (the output) and scale factor, and the runs from noise and from an image
    around the pipeline's own ``sample(latents, state, embeds, guidance_scale, key, batch, **options)``."""

    def _decoder_name(self) -> str:
        return "movq"

    @property
    def movq_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (MoVQ levels - 1) (8), as diffusers; 8 without a MoVQ."""
        return 2 ** (len(self.movq.config.block_out_channels) - 1) if self.movq is not None else 8

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Latents on the mesh -> images in about [-1, 1]: the MoVQ decode (not quantized), one image per
        device at a time."""
        module, params = unbind(self.movq)
        with self._mesh_context():
            return decode_movq(module, params, latents, rows_per_pass=sharding.data_size(self.mesh))

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """Images (N, H, W, 3) in [-1, 1] -> MoVQ latents (N, H/f, W/f, C), rows split over the mesh."""
        if self.movq is None:
            raise ValueError("this pipeline was loaded without its `movq`, which encodes the input image")
        module, params = unbind(self.movq)
        rows = sharding.padded_size(images.shape[0], self.mesh)
        with self._mesh_context():
            latents = encode_movq(module, params, self.shard_rows(images.astype(np.dtype(module.dtype)), rows))
        return np.asarray(sharding.gather_rows(latents, images.shape[0]), np.float32)

    def preprocess_image(self, image: Any, height: int | None, width: int | None, name: str = "image",
                         normalize: bool = True) -> np.ndarray:
        """An image argument -> float32 (N, height, width, 3) in [-1, 1] (in [0, 1] without ``normalize``: 2.2's
        ControlNet hint): PIL images resized to ``width`` x ``height`` (bicubic, as diffusers' Kandinsky);
        arrays (NHWC in [0, 1]) must be that size already. ``height``/``width`` None (Kandinsky 3): the
        image's own size, PIL images rounded down to multiples of the MoVQ's factor (diffusers'
        ``VaeImageProcessor``), arrays as they are."""
        checks.image_batch_size(name, image)
        pil = isinstance(image, PIL.Image.Image) or (isinstance(image, (list, tuple)) and image
                                                     and isinstance(image[0], PIL.Image.Image))
        if pil:
            factor = 1 if height is not None else self.movq_scale_factor
            return preprocess(image, height, width, vae_scale_factor=factor, resample="bicubic", reducing_gap=1,
                              do_normalize=normalize, do_convert_rgb=True)
        out = preprocess(image, do_resize=False, do_normalize=normalize)
        size = out.shape[1:3] if height is None else (height, width)
        if out.shape[1:3] != size or out.shape[-1] != 3:
            raise ValueError(f"`{name}` arrays must be (N, height, width, 3) = (N, {size[0]}, {size[1]}, 3) (channels"
                             f" last, in [0, 1]; PIL images are resized), got shape {out.shape}")
        return out

    def sample_from_noise(self, latents: Any, shape: tuple[int, ...], num_inference_steps: int, guidance_scale: float,
                          rng: Any, batch: Batch, embeds: Any, *, noise_to_cond: bool = False,
                          **sample_options: Any) -> jax.Array:
        """Text-to-image's run (and inpainting's): the initial noise (``latents`` or drawn from ``rng``'s first
        key) times the scheduler's ``init_noise_sigma``, sampled over every step by the pipeline's ``sample``
        (``embeds``: its conditioning; ``sample_options`` passed on). ``noise_to_cond``: the initial latents
        also go to ``per_image["noise"]`` (for a post step)."""
        noise_key, step_key = jax.random.split(as_key(rng))
        state = self.prepare_timesteps(num_inference_steps, None, None, (batch.rows,) + shape[1:])
        latents = self.initial_noise(latents, noise_key, shape) * self.scheduler.init_noise_sigma
        if noise_to_cond:
            sample_options["per_image"] = dict(sample_options.get("per_image") or {}, noise=latents)
        return self.sample(latents, state, embeds, guidance_scale, step_key, batch, **sample_options)

    def sample_from_image(self, init: np.ndarray, latents: Any, shape: tuple[int, ...], strength: float,
                          num_inference_steps: int, guidance_scale: float, rng: Any, batch: Batch, embeds: Any,
                          **sample_options: Any) -> jax.Array:
        """Image-to-image's run (2.2 and 3): the images' MoVQ latents, repeated per image, noised by the
        scheduler (``add_noise``) to the first of the last ``strength`` fraction of the steps (noise:
        ``latents`` or drawn), then sampled from there by the pipeline's ``sample``."""
        noise_key, step_key = jax.random.split(as_key(rng))
        state = self.prepare_timesteps(num_inference_steps, None, None, (batch.rows,) + shape[1:])
        state = tasks.start_at_strength(state, strength, self.scheduler.order)
        init_latents = np.repeat(self.encode_images(init), batch.per_prompt, axis=0)
        noise = self.initial_noise(latents, noise_key, shape)
        start = tasks.noised_to_start(self.scheduler, state, init_latents, noise)
        return self.sample(start, state, embeds, guidance_scale, step_key, batch, **sample_options)


class KandinskyDecoderBase(MoVQParts, DiffusionPipeline):
    """What Kandinsky 2.1's three decoder pipelines share: components (diffusers' names: ``text_encoder``
    (``MultilingualCLIP``), ``tokenizer`` (XLM-RoBERTa), ``unet``, ``scheduler`` (DDIM), ``movq``
    (``VQModel``)), prompt encoding, the image embeddings, the MoVQ, and the sampling run."""

    _components = _COMPONENTS

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the UNet denoises: the MoVQ's (4), else the UNet's ``out_channels`` / 2."""
        if self.movq is not None:
            return self.movq.config.latent_channels
        return self.unet.config.out_channels // 2

    # -- text and image embeddings -------------------------------------------------------------

    def encode_prompt(self, prompt: str | list[str], num_images_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt: str | list[str] | None = None) -> tuple[tuple, tuple | None]:
        """M-CLIP of the prompts and, with guidance, the negative prompts ("" for None), 77 tokens.

        Returns ``((text_embeds (B*n, D), hidden_states (B*n, 77, H)), the negatives' pair or None)``,
        each prompt's rows repeated ``num_images_per_prompt`` times (diffusers' ``_encode_prompt``).
        """
        texts = [prompt] if isinstance(prompt, str) else list(prompt)

        def encode(batch: list[str]) -> tuple[jax.Array, jax.Array]:
            (embeds, hidden), _ = self.encode_texts(batch, MAX_LENGTH, outputs=("text_embeds", "last_hidden_state"),
                                                    warn_truncation=True, encoder_name="CLIP")
            return jnp.repeat(embeds, num_images_per_prompt, axis=0), jnp.repeat(hidden, num_images_per_prompt, axis=0)

        positive = encode(texts)
        if not do_classifier_free_guidance:
            return positive, None
        if negative_prompt is not None and type(prompt) is not type(negative_prompt):
            raise TypeError(
                f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} !="
                f" {type(prompt)}."
            )
        return positive, encode(checks.negative_prompts(negative_prompt, prompt, len(texts)))

    def image_embed_width(self) -> int:
        """The width of the image embeddings the UNet takes (its ``add_embedding.image_proj`` input)."""
        return int(host_params(self.unet)["add_embedding"]["image_proj"]["kernel"].shape[0])  # an offloaded UNet stays put

    def begin(self, kwargs: dict, prompt: Any, image_embeds: Any, negative_image_embeds: Any, height: Any, width: Any,
              *, num_images_per_prompt: Any, guidance_scale: Any, output_type: Any, num_inference_steps: Any,
              images: dict[str, Any] | None = None) -> tuple[Batch, tuple]:
        """The checks a decoder call starts with, before anything is encoded or compiled: the run options,
        ``prompt`` (2.1: a string or a list, diffusers' message; None for 2.2, whose prompts are the rows of
        ``image_embeds``), the size (image inputs: multiples of 64), ``images`` (name -> argument: one per
        prompt; ``mask_image`` one or one per prompt) and the image embeddings. Returns the call's rows and
        ``image_embeds_rows``' (positive, negative or None)."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps)
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
        if images:  # the MoVQ encodes them to latents the UNet must halve three times
            checks.check_size(height, width, self.movq_scale_factor**2)
        else:
            checks.check_size(height, width)
        rows = _as_rows(image_embeds, "image_embeds") if prompt is None else None  # 2.2: a prompt per row
        batch = self.batch(prompt, rows, num_images_per_prompt, (height, width))
        for name, value in (images or {}).items():
            if name == "mask_image":
                checks.check_mask_argument(value, batch.prompts)
            else:
                checks.check_image_argument(name, value, batch.prompts)
        embeds = image_embeds_rows(image_embeds, negative_image_embeds, width=self.image_embed_width(), batch=batch,
                                   guided=guidance_scale > 1.0)
        return batch, embeds

    def latents_shape(self, batch: Batch, height: int, width: int, channels: int | None = None) -> tuple[int, ...]:
        """The initial noise's shape: (images, h, w, ``channels``: default the MoVQ's latent channels)."""
        size = latent_size(height, width, self.movq_scale_factor)
        return (batch.total, *size, self.latent_channels if channels is None else channels)

    # -- the run -------------------------------------------------------------------------------

    def sample(self, latents: Any, state: Any, image_embeds: tuple, guidance_scale: float, key: jax.Array,
               batch: Batch, *, text: tuple | None = None, per_image: dict[str, np.ndarray] | None = None,
               post_step: Any = None, callback: Callable | None = None, callback_steps: int = 1) -> jax.Array:
        """The UNet in the shared loop. ``image_embeds``: (positive, negative or None); ``text`` (2.1):
        ``encode_prompt``'s pair; ``per_image``: conditioning that is the same for both guidance halves,
        one row per image (``extra_channels``: inpainting's masked image and mask; ``hint``: the
        ControlNet's; what ``post_step`` reads)."""
        module, params = unbind(self.unet)
        guided = image_embeds[1] is not None
        rows = lambda pos, neg: self.guidance_rows(pos, neg if guided else None, batch.rows, module.dtype)
        cond = {"image_embeds": rows(*image_embeds)}
        if text is not None:
            (embeds, hidden), negative = text
            neg_embeds, neg_hidden = negative if guided else (None, None)
            cond.update(encoder_hidden_states=rows(hidden, neg_hidden), text_embeds=rows(embeds, neg_embeds))
        for name, value in (per_image or {}).items():
            cond[name] = self.guidance_rows(value, value if guided else None, batch.rows)
        denoiser = KandinskyDenoiser(module, self.latent_channels)
        return self.denoise(denoiser, params, latents, state, cond, guidance_scale, key, batch, post_step=post_step,
                            callback=callback, callback_steps=callback_steps)

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None, call: Any) -> dict[str, Any]:
        """``warmup``: zero image embeddings (and, for the image pipelines, a gray image and mask)."""
        embeds = np.zeros((batch_size, self.image_embed_width()), np.float32)
        out: dict[str, Any] = {"image_embeds": embeds, "negative_image_embeds": embeds}
        takes = self.call_parameters()
        size = (height or 512, width or 512)
        if "image" in takes:
            out["image"] = np.full((batch_size, *size, 3), 0.5, np.float32)
        if "mask_image" in takes:
            out["mask_image"] = np.zeros((batch_size, *size), np.float32)
        if "hint" in takes:  # the ControlNet's
            hint_size = tuple(HINT_FACTOR * s for s in latent_size(*size, self.movq_scale_factor))
            out["hint"] = np.zeros((batch_size, *hint_size, 3), np.float32)
        return out

