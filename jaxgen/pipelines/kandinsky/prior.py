"""Kandinsky's prior: text (or a mix of texts and images) -> CLIP image embeddings for the decoders.

The prior is an unCLIP ``PriorTransformer`` sampled with the ``UnCLIPScheduler``, conditioned on the
CLIP text tower's projected embedding and hidden states; the CLIP vision tower embeds the images of
``interpolate`` and the zero image that is the default negative embedding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen import sharding
from jaxgen.models.prior_transformer import PriorTransformer
from jaxgen.pipelines import checks, tasks
from jaxgen.pipelines.outputs import BaseOutput
from jaxgen.pipelines.pipeline_utils import ComponentSpec, DeferredModel, DiffusionPipeline, as_key, unbind
from jaxgen.pipelines.sampling import Denoiser
from jaxgen.text.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

__all__ = ["KandinskyPriorPipeline", "KandinskyPriorPipelineOutput", "PriorDenoiser"]


@dataclasses.dataclass
class KandinskyPriorPipelineOutput(BaseOutput):
    """diffusers' ``KandinskyPriorPipelineOutput``: ``image_embeds`` and ``negative_image_embeds``, each
    (B * n, embedding_dim) (jax arrays, or numpy for ``output_type="np"``)."""

    image_embeds: Any
    negative_image_embeds: Any


@dataclasses.dataclass(frozen=True)
class PriorDenoiser(Denoiser):
    """The prior as ``sampling.denoise`` calls it: image embeddings (N, D) -> the predicted clean
    embeddings (N, D). cond: ``proj_embedding`` (N, D), ``encoder_hidden_states`` (N, L, D),
    ``attention_mask`` (N, L) of the prompt's tokens."""

    prior: Any

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        return self.prior.apply(
            {"params": params}, model_input.astype(self.prior.dtype), timestep, cond["proj_embedding"],
            cond["encoder_hidden_states"], cond["attention_mask"],
        ).predicted_image_embedding


@functools.partial(jax.jit, static_argnames=("module",))
def _image_embeds(module: Any, params: Any, pixel_values: jax.Array) -> jax.Array:
    return module.apply({"params": params}, pixel_values.astype(module.dtype)).image_embeds.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("module",))
def _post_process(module: Any, params: Any, latents: jax.Array) -> jax.Array:
    return module.apply({"params": params}, latents.astype(jnp.float32), method=PriorTransformer.post_process_latents)


def _zero_image_embeds(encoder: Any, mesh_context: Callable) -> jax.Array:
    """A bound CLIP vision tower's embedding of one black image, (1, D) float32."""
    module, params = unbind(encoder)
    size = module.config.image_size
    with mesh_context():
        return _image_embeds(module, params, jnp.zeros((1, size, size, 3), module.dtype))


def _as_list(value: Any, name: str) -> list[str] | None:
    if value is None or isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    raise ValueError(f"`{name}` has to be of type `str` or `list` but is {type(value)}")


class KandinskyPriorPipeline(DiffusionPipeline):
    """Kandinsky 2.1's prior: ``pipe(prompt) -> KandinskyPriorPipelineOutput(image_embeds, negative_image_embeds)``.

    Components (diffusers' names): ``prior`` (``PriorTransformer``), ``image_encoder``
    (``CLIPVisionModelWithProjection``), ``text_encoder`` (``CLIPTextModelWithProjection``),
    ``tokenizer`` (CLIP), ``scheduler`` (``UnCLIPScheduler``), ``image_processor`` (transformers'
    ``CLIPImageProcessor``, for ``interpolate``'s PIL images).
    """

    _components = {
        "prior": ComponentSpec("model", PriorTransformer, ("PriorTransformer",)),
        "image_encoder": ComponentSpec("model", CLIPVisionModelWithProjection, ("CLIPVisionModelWithProjection",),
                                       optional=True),
        "text_encoder": ComponentSpec("model", CLIPTextModelWithProjection, ("CLIPTextModelWithProjection",)),
        "tokenizer": ComponentSpec("tokenizer"),
        "scheduler": ComponentSpec("scheduler"),
        "image_processor": ComponentSpec("processor", optional=True),
    }
    _denoiser = "prior"
    _output_class = KandinskyPriorPipelineOutput
    _interpolate_per_image: ClassVar[bool] = False  # 2.2: an image's embedding repeated per image, summed per image

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        rng: Any = None,
        latents: Any = None,
        guidance_scale: float = 4.0,
        output_type: str = "pt",
        return_dict: bool = True,
        **kwargs: Any,
    ) -> KandinskyPriorPipelineOutput | tuple:
        """Image embeddings for the prompts, ``num_images_per_prompt`` each.

        With ``negative_prompt`` the prior also samples the negative prompts, whose embeddings become
        ``negative_image_embeds`` (as diffusers: the batch is [prompts, negatives], and ``latents``
        then has rows for both); without, ``negative_image_embeds`` is the image encoder's embedding
        of a black image. ``rng``: an int seed or a ``jax.random`` key (diffusers' ``generator``);
        ``latents``: the initial noise. ``output_type``: "pt" (diffusers' default; jax arrays here)
        or "np".
        """
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type="np", num_inference_steps=num_inference_steps)
        checks.check_embeddings_output_type(output_type)
        prompts, negatives = _as_list(prompt, "prompt"), _as_list(negative_prompt, "negative_prompt")
        if negatives is not None:  # diffusers samples the negative prompts too, guided by themselves
            prompts, negatives = prompts + negatives, 2 * negatives
        batch = self.batch(prompts, None, num_images_per_prompt)
        if negatives is None and self.image_encoder is None:
            raise ValueError("without `negative_prompt` the prior needs its `image_encoder` (for the zero-image embedding)")

        embeds = self.sample_embeds(prompts, negatives, num_images_per_prompt, num_inference_steps, rng, latents,
                                    guidance_scale, batch)
        return self.prior_output(embeds, negatives is not None, output_type, return_dict)

    def prior_output(self, embeds: jax.Array, sampled_negatives: bool, output_type: str,
                     return_dict: bool) -> KandinskyPriorPipelineOutput | tuple:
        """The sampled rows -> the output: [prompts; negatives] split in two when the negative prompts were
        sampled too, else the embeddings and the zero-image embedding per row."""
        if sampled_negatives:
            image_embeds, negative = jnp.split(embeds, 2)
        else:
            image_embeds, negative = embeds, self.zero_image_embeds(embeds.shape[0])
        out = KandinskyPriorPipelineOutput(*_as_output(output_type, image_embeds, negative))
        return out if return_dict else out.to_tuple()

    def sample_embeds(self, prompts: list[str], negatives: list[str] | None, num_images_per_prompt: int,
                      num_inference_steps: int, rng: Any, latents: Any, guidance_scale: float, batch: Any, *,
                      init_embeds: np.ndarray | None = None, strength: float = 1.0) -> jax.Array:
        """The prior's sampling run: encode -> noise -> denoise -> ``post_process_latents``; (B * n, D).
        With ``init_embeds`` (B * n, D) (emb2emb), sampling starts at the ``strength`` fraction of the
        schedule from those embeddings noised to it (``latents`` is then that noise)."""
        dim = self.prior.config.embedding_dim
        shape = (batch.total, dim)
        checks.check_latents(latents, shape)  # before the text encoder runs
        text = self.encode_prompt(prompts, num_images_per_prompt, guidance_scale > 1.0, negatives)
        noise_key, step_key = jax.random.split(as_key(rng))
        state = self.prepare_timesteps(num_inference_steps, None, None, (batch.rows, dim))
        latents = self.initial_noise(latents, noise_key, shape)
        if init_embeds is None:
            latents = latents * self.scheduler.init_noise_sigma
        else:
            state = tasks.start_at_strength(state, strength, self.scheduler.order)
            latents = tasks.noised_to_start(self.scheduler, state, init_embeds, latents)
        module, params = unbind(self.prior)
        positive, negative = text
        negative = negative or (None, None, None)
        rows = lambda i, dtype=None: self.guidance_rows(positive[i], negative[i], batch.rows, dtype)
        cond = {"proj_embedding": rows(0, module.dtype), "encoder_hidden_states": rows(1, module.dtype),
                "attention_mask": rows(2)}
        latents = self.denoise(PriorDenoiser(module), params, latents, state, cond, guidance_scale, step_key, batch)
        with self._mesh_context():
            latents = _post_process(module, params, latents)
        return jnp.asarray(sharding.gather_rows(latents, batch.total))

    def encode_prompt(self, prompts: list[str], num_images_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt: list[str] | None = None) -> tuple[tuple, tuple | None]:
        """CLIP text of the prompts (and, with guidance, the negatives: "" for None), padded to the
        tokenizer's max length and encoded without a mask, as diffusers' prior. Returns ``((text_embeds
        (N, D), hidden_states (N, L, D), attention_mask (N, L)), the negatives' or None)``, each row
        repeated ``num_images_per_prompt`` times."""
        def encode(texts: list[str]) -> tuple[jax.Array, ...]:
            (embeds, hidden), mask = self.encode_texts(
                texts, self.tokenizer.model_max_length, outputs=("text_embeds", "last_hidden_state"), use_mask=False,
                warn_truncation=True, encoder_name="CLIP")
            return tuple(jnp.repeat(jnp.asarray(x), num_images_per_prompt, axis=0) for x in (embeds, hidden, mask))

        positive = encode(prompts)
        if not do_classifier_free_guidance:
            return positive, None
        return positive, encode(checks.negative_prompts(negative_prompt, prompts, len(prompts)))

    def image_embeds(self, pixel_values: Any) -> jax.Array:
        """CLIP image embeddings (N, D) of pixel values (N, S, S, 3) (the image processor's output, channels
        last). A deferred image encoder is loaded now and kept (``resident``)."""
        module, params = unbind(self.resident("image_encoder"))
        with self._mesh_context():
            return _image_embeds(module, params, jnp.asarray(pixel_values))

    def zero_image_embeds(self, batch_size: int) -> jax.Array:
        """diffusers' ``get_zero_embed``: the image encoder's embedding of a black image, (batch_size, D).
        A deferred encoder is loaded for it and let go again; the embedding is kept with the component."""
        encoder = self.image_encoder
        if isinstance(encoder, DeferredModel):
            if "zero_image_embeds" not in encoder.outputs:
                encoder.outputs["zero_image_embeds"] = _zero_image_embeds(encoder.load(self.mesh), self._mesh_context)
            zero = encoder.outputs["zero_image_embeds"]
        else:
            zero = _zero_image_embeds(encoder, self._mesh_context)
        return jnp.repeat(zero, batch_size, axis=0)

    def interpolate(
        self,
        images_and_prompts: Sequence[str | PIL.Image.Image | Any],
        weights: Sequence[float],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        rng: Any = None,
        latents: Any = None,
        negative_prior_prompt: str | None = None,
        negative_prompt: str = "",
        guidance_scale: float = 4.0,
        **kwargs: Any,
    ) -> KandinskyPriorPipelineOutput:
        """Mix prompts and images: ``image_embeds`` = the weighted sum of each condition's embeddings (a
        prompt's from the prior, its ``num_images_per_prompt`` rows; an image's from the image encoder: PIL
        through ``image_processor``, or pixel values (1, S, S, 3)); ``negative_image_embeds`` from the prior
        on ``negative_prompt``. As diffusers' ``interpolate``: 2.1 sums every row into one, (1, D); 2.2
        repeats an image's row per image and sums per image, (n, D)."""
        checks.check_call_kwargs(f"{type(self).__name__}.interpolate", kwargs)
        if len(images_and_prompts) != len(weights):
            raise ValueError(
                f"`images_and_prompts` contains {len(images_and_prompts)} items and `weights` contains {len(weights)}"
                " items - they should be lists of same length"
            )
        # the text-to-embeddings run, also where a subclass's __call__ takes other inputs (emb2emb)
        run = functools.partial(KandinskyPriorPipeline.__call__, self, num_inference_steps=num_inference_steps,
                                num_images_per_prompt=num_images_per_prompt, rng=rng, latents=latents,
                                negative_prompt=negative_prior_prompt, guidance_scale=guidance_scale)
        parts = []
        for cond, weight in zip(images_and_prompts, weights):
            if isinstance(cond, str):
                embeds = run(cond).image_embeds
            elif isinstance(cond, (PIL.Image.Image, np.ndarray, jax.Array)):
                embeds = self.image_embeds(self._pixel_values(cond))
                embeds = jnp.repeat(embeds, num_images_per_prompt, axis=0) if self._interpolate_per_image else embeds
            else:
                raise ValueError(
                    "`images_and_prompts` can only contains elements to be of type `str`, `PIL.Image.Image` or"
                    f" `np.ndarray`/`jax.Array` (pixel values) but is {type(cond)}"
                )
            parts.append(embeds * weight)
        if self._interpolate_per_image:
            image_embeds = jnp.stack(parts).sum(axis=0)
        else:
            image_embeds = jnp.concatenate(parts).sum(axis=0, keepdims=True)
        negative = self._interpolation_negative(run, negative_prompt, image_embeds, rng)
        return KandinskyPriorPipelineOutput(image_embeds=image_embeds, negative_image_embeds=negative)

    def _interpolation_negative(self, run: Callable, negative_prompt: str, image_embeds: jax.Array,
                                rng: Any) -> jax.Array:
        """``interpolate``'s negative embeddings: the prior's on ``negative_prompt`` (its zero-image
        embedding for "")."""
        zero = run(negative_prompt)
        return zero.negative_image_embeds if negative_prompt == "" else zero.image_embeds

    def _pixel_values(self, image: Any) -> np.ndarray:
        if isinstance(image, PIL.Image.Image):
            if self.image_processor is None:
                raise ValueError("PIL images in `images_and_prompts` need the pipeline's `image_processor`")
            pixels = np.asarray(self.image_processor(image, return_tensors="np").pixel_values[:1], np.float32)
            return np.transpose(pixels, (0, 2, 3, 1))  # NCHW -> NHWC
        pixels = np.asarray(image, np.float32)
        return pixels[None] if pixels.ndim == 3 else pixels


def _as_output(output_type: str, *arrays: jax.Array) -> tuple:
    """"pt": jax arrays (jaxgen's framework arrays); "np": numpy."""
    return tuple(np.asarray(a) if output_type == "np" else a for a in arrays)
