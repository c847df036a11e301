"""PixArtAlphaPipeline: T5 prompt encoding, the PixArt transformer in the shared compiled loop
(DPM-Solver by default), AutoencoderKL decoding, with diffusers' arguments, defaults and checks.

What is PixArt's own: the transformer adapter (``PixArtDenoiser``: caption mask, the 1024
checkpoints' resolution and aspect-ratio micro-conditions, a learned sigma the scheduler never
sees), resolution binning (the requested size snapped to the trained aspect-ratio bins, the image
resized back), and its ``encode_prompt`` (T5, 120 tokens, with attention masks).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, ClassVar, Mapping, Sequence

import jax
import numpy as np

from jaxgen.models.autoencoder_kl import AutoencoderKL
from jaxgen.models.pixart_transformer import PixArtTransformer2DModel
from jaxgen.pipelines import checks
from jaxgen.pipelines.aspect_ratio_bins import BINS_BY_SAMPLE_SIZE, bins_for_sample_size, classify_height_width_bin
from jaxgen.pipelines.outputs import ImagePipelineOutput
from jaxgen.pipelines.pipeline_utils import Batch, ComponentSpec, DiffusionPipeline, as_key, unbind
from jaxgen.pipelines.sampling import Denoiser
from jaxgen.text.captions import text_preprocessing
from jaxgen.text.t5 import T5EncoderModel

__all__ = ["PixArtAlphaPipeline", "PixArtDenoiser"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PixArtDenoiser(Denoiser):
    """The PixArt transformer as ``denoise`` calls it; cond: encoder_hidden_states, encoder_attention_mask
    and (1024 checkpoints) added_cond_kwargs. A learned sigma (``out_channels`` twice ``in_channels``)
    is dropped after guidance whatever the scheduler, as diffusers' PixArt does."""

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

    def learned_variance(self) -> bool:
        config = self.transformer.config
        return config.out_channels == 2 * config.in_channels

    def keeps_variance(self, scheduler: Any) -> bool:
        return False


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
    _denoiser = "transformer"
    # what PixArt-Σ (``PixArtSigmaPipeline``) sets otherwise
    default_max_sequence_length: ClassVar[int] = 120  # T5 tokens of a prompt when ``max_sequence_length`` is None
    aspect_ratio_bins: ClassVar[Mapping[int, dict]] = BINS_BY_SAMPLE_SIZE  # resolution binning's, by sample_size
    micro_conditions: ClassVar[bool] = True  # the 1024 px model's resolution and aspect ratio, as diffusers' α

    @property
    def prompt_embeds_width(self) -> int | None:
        """T5's width, which the transformer's caption projection takes (4096)."""
        return self.transformer.config.caption_channels

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
        max_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
        """T5 embeddings of the prompt and (with guidance) the negative prompt, repeated per image, padded or cut to
        ``max_sequence_length`` tokens (None: ``default_max_sequence_length``, diffusers' 120 for α, 300 for Σ).

        Returns ``(prompt_embeds (B*n, L, D), prompt_attention_mask (B*n, L), negative_prompt_embeds,
        negative_prompt_attention_mask)``, the negatives None without guidance: diffusers' values.
        """

        max_sequence_length = self.default_max_sequence_length if max_sequence_length is None else max_sequence_length

        def encode(texts: Any, length: int | None) -> tuple[jax.Array, jax.Array]:
            (embeds,), mask = self.encode_texts(text_preprocessing(texts, clean_caption=clean_caption),
                                                length or max_sequence_length, warn_truncation=length is None)
            return embeds, mask

        return self.encode_prompt_pair(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            do_classifier_free_guidance=do_classifier_free_guidance, num_images_per_prompt=num_images_per_prompt,
            encode=encode, prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask, check_negative_type=False,
        )

    def check_inputs(
        self, prompt, height, width, negative_prompt, callback_steps, prompt_embeds=None, negative_prompt_embeds=None,
        prompt_attention_mask=None, negative_prompt_attention_mask=None,
    ) -> None:
        """diffusers' checks, same messages; raised before anything is encoded or compiled."""
        checks.check_size(height, width, multiple=8)
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
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

    def generation_size(self, height: int | None, width: int | None,
                        use_resolution_binning: bool) -> tuple[tuple[int, int], tuple[int, int]]:
        """((height, width) sampled, (height, width) returned) for a requested size: the transformer's
        default size where not given; with ``use_resolution_binning`` the sampled size is the nearest
        trained aspect-ratio bin and the image is resized back (diffusers' binning)."""
        sample_size = self.transformer.config.sample_size
        size = (height or sample_size * self.vae_scale_factor, width or sample_size * self.vae_scale_factor)
        if not use_resolution_binning:
            return size, size
        checks.check_size(*size)
        return classify_height_width_bin(*size, ratios=bins_for_sample_size(sample_size, self.aspect_ratio_bins)), size

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
        max_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """Generate images from text.

        Arguments are diffusers' (``generator`` becomes ``rng``: an int seed or a ``jax.random``
        key). ``latents``: the initial noise, (batch * num_images_per_prompt, height // 8,
        width // 8, 4), channels last. ``output_type``: "pil" (list of PIL images), "np" (float32
        NHWC in [0, 1]) or "latent" (NHWC latents). Returns ``ImagePipelineOutput(images=...)``,
        or ``(images,)`` with ``return_dict=False``. ``max_sequence_length`` None: the class's
        ``default_max_sequence_length`` (diffusers' default: 120 for α, 300 for Σ).
        """
        max_sequence_length = self.default_max_sequence_length if max_sequence_length is None else max_sequence_length
        kwargs.pop("mask_feature", None)  # deprecated in diffusers, no effect
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps, timesteps=timesteps,
                        sigmas=sigmas)
        (height, width), output_size = self.generation_size(height, width, use_resolution_binning)
        self.check_inputs(prompt, height, width, negative_prompt, callback_steps, prompt_embeds, negative_prompt_embeds,
                          prompt_attention_mask, negative_prompt_attention_mask)
        encoder = self.text_encoder if prompt is not None else None
        checks.check_max_sequence_length(max_sequence_length, encoder and encoder.config.num_heads)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt, (height, width))
        factor = self.vae_scale_factor
        latent_shape = (batch.total, height // factor, width // factor, self.transformer.config.in_channels)
        checks.check_latents(latents, latent_shape)

        do_cfg = guidance_scale > 1.0
        embeds = self.encode_prompt(
            prompt, do_cfg, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_attention_mask=negative_prompt_attention_mask,
            clean_caption=clean_caption, max_sequence_length=max_sequence_length,
        )
        cond = self._conditioning(*embeds, batch=batch, height=height, width=width)

        noise_key, step_key = jax.random.split(as_key(rng))
        state = self.prepare_timesteps(num_inference_steps, timesteps, sigmas, (batch.rows,) + latent_shape[1:])
        latents = self.initial_noise(latents, noise_key, latent_shape) * self.scheduler.init_noise_sigma

        module, params = unbind(self.transformer)
        latents = self.denoise(PixArtDenoiser(module), params, latents, state, cond, guidance_scale, step_key, batch,
                               eta=eta, callback=callback, callback_steps=callback_steps)
        del module, params  # an offloaded transformer's device copy goes before the VAE comes
        return self.output(latents, batch, output_type, return_dict, size=output_size)

    def _conditioning(self, embeds: jax.Array, mask: jax.Array, negative: jax.Array | None,
                      negative_mask: jax.Array | None, *, batch: Batch, height: int, width: int) -> dict[str, Any]:
        """The transformer's conditioning rows for ``denoise``: caption embeddings and mask ([negative;
        positive] with guidance), and the 1024 checkpoints' resolution and aspect-ratio micro-conditions."""
        dtype = self.transformer.dtype
        cond = {
            "encoder_hidden_states": self.guidance_rows(embeds, negative, batch.rows, dtype),
            "encoder_attention_mask": self.guidance_rows(mask, negative_mask, batch.rows),
        }
        if self.micro_conditions and self.transformer.config.sample_size == 128:
            n = cond["encoder_hidden_states"].shape[0]
            cond["added_cond_kwargs"] = {
                "resolution": self.shard_rows(np.tile(np.asarray([[height, width]], np.dtype(dtype)), (n, 1)), n),
                "aspect_ratio": self.shard_rows(np.full((n, 1), float(height / width), np.dtype(dtype)), n),
            }
        return cond

    def _placeholder_embeds(self, batch_size: int, guided: bool, call: Any) -> dict[str, Any]:
        config = self.transformer.config
        length = call.get("max_sequence_length") or self.default_max_sequence_length  # None: the default
        embeds = np.zeros((batch_size, length, config.caption_channels or config.cross_attention_dim), np.float32)
        mask = np.ones((batch_size, length), np.int32)
        inputs: dict[str, Any] = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
        if guided:
            inputs.update(negative_prompt=None, negative_prompt_embeds=embeds, negative_prompt_attention_mask=mask)
        return inputs
