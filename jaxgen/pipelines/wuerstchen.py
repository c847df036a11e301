"""Würstchen v2: ``WuerstchenPriorPipeline`` (text -> stage C image embeddings), ``WuerstchenDecoderPipeline``
(image embeddings -> stage B latents -> Paella VQ decode (stage A) -> images) and ``WuerstchenCombinedPipeline``
(both), with diffusers' arguments, defaults, checks and outputs.

Sizes, as diffusers computes them: the prior samples embeddings of ceil(height / 42.67) x ceil(width / 42.67)
(``resolution_multiple``; 24 x 24 at 1024 px), the decoder latents of int(embedding side * 10.67)
(``latent_dim_scale``; 256 x 256), which the DiffNeXt patches by 2 and halves three times: they must be
multiples of 16. 512, 768, 1024, 1536 px work; a side such as 544 px (13 -> 138) does not, and is refused
before anything runs (diffusers fails inside the model).

What each stage is: the CLIP text tower's last hidden states, with the padding mask (ViT-bigG's for the prior,
ViT-H's for the decoder); classifier-free guidance ``lerp(uncond, cond, g)``, on when g > 1, over the prompts
and the negative prompts ("" by default; the decoder's unconditional rows also get zero image embeddings);
the ``DDPMWuerstchenScheduler`` in the shared compiled loop, the model fed the time t in [0, 1]. The prior's
embeddings come out as ``latents * latent_mean - latent_std`` (42 and 1), as diffusers writes it.

dtype: use bfloat16 on accelerators (``from_pretrained(..., dtype=jnp.bfloat16)``); the released weights
overflow in float16 (diffusers' documentation).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import sharding
from jaxgen.models.paella_vq_model import PaellaVQModel
from jaxgen.models.wuerstchen_diffnext import WuerstchenDiffNeXt
from jaxgen.models.wuerstchen_prior import WuerstchenPrior
from jaxgen.pipelines import checks
from jaxgen.pipelines.combined import PriorDecoderPipeline, prior_options
from jaxgen.pipelines.outputs import BaseOutput, ImagePipelineOutput
from jaxgen.pipelines.pipeline_utils import Batch, ComponentSpec, DiffusionPipeline, as_key, unbind
from jaxgen.pipelines.sampling import Denoiser
from jaxgen.text.clip import CLIPTextModel

__all__ = ["WuerstchenPriorPipeline", "WuerstchenDecoderPipeline", "WuerstchenCombinedPipeline",
           "WuerstchenPriorPipelineOutput", "WuerstchenDenoiser", "DEFAULT_STAGE_C_TIMESTEPS", "cli_generate"]

DEFAULT_STAGE_C_TIMESTEPS = [float(t) for t in np.linspace(1.0, 2 / 3, 20)] + \
    [float(t) for t in np.linspace(2 / 3, 0.0, 11)][1:]
"""diffusers' stage C schedule (30 steps): 20 from t = 1 to 2/3, then 10 to 0; ``prior_timesteps=`` takes it."""

RESOLUTION_MULTIPLE = 42.67  # the prior's default: pixels per embedding pixel

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class WuerstchenPriorPipelineOutput(BaseOutput):
    """diffusers' ``WuerstchenPriorPipelineOutput``: ``image_embeddings`` (B * n, h, w, 16), channels last
    (a jax array, or numpy for ``output_type="np"``)."""

    image_embeddings: Any


@dataclasses.dataclass(frozen=True)
class WuerstchenDenoiser(Denoiser):
    """A Würstchen model (stage C's ``WuerstchenPrior``, stage B's ``WuerstchenDiffNeXt``) as
    ``sampling.denoise`` calls it: (N, h, w, C) latents at time t -> its prediction (N, h, w, C); ``cond``
    holds the model's conditioning arguments by name (the prior's ``c``; the decoder's ``effnet``, ``clip``)."""

    model: Any

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        ratio = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (model_input.shape[0],))
        return self.model.apply({"params": params}, model_input.astype(self.model.dtype), ratio, **cond)


@functools.partial(jax.jit, static_argnames=("module",))
def _decode_vqgan(module: Any, params: Any, latents: jax.Array) -> jax.Array:
    """Stage B latents (N, h, w, 4) -> images in [-1, 1] (N, 4h, 4w, 3) float32: Paella's decode (no
    quantization) of ``scale_factor * latents``, clamped to [0, 1] as diffusers."""
    images = module.apply({"params": params}, latents.astype(module.dtype) * module.config.scale_factor,
                          method="decode").sample
    return jnp.clip(images.astype(jnp.float32), 0.0, 1.0) * 2.0 - 1.0


class _WuerstchenStage:
    """What both stages share: the float16 warning at loading, the prompt encoding (CLIP on 77 tokens with the
    padding mask, last hidden states)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *, dtype: Any = jnp.float32,
                        **kwargs: Any) -> DiffusionPipeline:
        """As ``DiffusionPipeline.from_pretrained``; ``dtype=jnp.bfloat16`` is the one for accelerators."""
        if jnp.dtype(dtype) == jnp.float16:
            logger.warning("jaxgen: Würstchen's released weights overflow in float16 (diffusers' documentation):"
                           " use dtype=jnp.bfloat16")
        return super().from_pretrained(pretrained_model_name_or_path, dtype=dtype, **kwargs)

    def _encode(self, texts: Any, length: int | None = None) -> tuple[jax.Array, jax.Array]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        (hidden,), mask = self.encode_texts(texts, self.tokenizer.model_max_length, use_mask=True,
                                            warn_truncation=True, encoder_name="CLIP")
        return hidden, mask

    def encode_prompt(self, prompt: Any, num_images_per_prompt: int, do_classifier_free_guidance: bool,
                      negative_prompt: Any = None, prompt_embeds: Any = None,
                      negative_prompt_embeds: Any = None) -> tuple[jax.Array, jax.Array | None]:
        """diffusers' ``encode_prompt``: ``(prompt_embeds (B * n, 77, D), negative_prompt_embeds or None)``, the
        text tower's last hidden states, each prompt's rows repeated ``num_images_per_prompt`` times (the
        negative ones too: diffusers tiles them, which pairs them with the wrong prompts when they differ)."""
        positive, _, negative, _ = self.encode_prompt_pair(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            do_classifier_free_guidance=do_classifier_free_guidance, num_images_per_prompt=num_images_per_prompt,
            encode=self._encode)
        return positive, negative


class WuerstchenPriorPipeline(_WuerstchenStage, DiffusionPipeline):
    """Würstchen's stage C: ``pipe(prompt) -> WuerstchenPriorPipelineOutput(image_embeddings)``.

    Components (diffusers' names): ``tokenizer`` (CLIP), ``text_encoder`` (``CLIPTextModel``, ViT-bigG),
    ``prior`` (``WuerstchenPrior``), ``scheduler`` (``DDPMWuerstchenScheduler``); config ``latent_mean``,
    ``latent_std``, ``resolution_multiple`` from model_index.json.
    """

    _components = {
        "tokenizer": ComponentSpec("tokenizer", optional=True),
        "text_encoder": ComponentSpec("model", CLIPTextModel, ("CLIPTextModel",), optional=True),
        "prior": ComponentSpec("model", WuerstchenPrior, ("WuerstchenPrior",)),
        "scheduler": ComponentSpec("scheduler"),
    }
    _config = {"latent_mean": 42.0, "latent_std": 1.0, "resolution_multiple": RESOLUTION_MULTIPLE}
    _denoiser = "prior"
    _output_class = WuerstchenPriorPipelineOutput

    @property
    def prompt_embeds_width(self) -> int:
        """CLIP-bigG's width, the prior's text conditioning (1280)."""
        return self.prior.config.c_cond

    def embedding_size(self, height: int, width: int) -> tuple[int, int]:
        """The embeddings' (h, w) for an image of ``height`` x ``width``: each divided by
        ``resolution_multiple``, rounded up."""
        multiple = self.config["resolution_multiple"]
        return math.ceil(height / multiple), math.ceil(width / multiple)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 60,
        timesteps: list[float] | None = None,
        guidance_scale: float = 8.0,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pt",
        return_dict: bool = True,
        callback: Callable[[int, float, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> WuerstchenPriorPipelineOutput | tuple:
        """Image embeddings for the prompts, ``num_images_per_prompt`` each, (B * n, h, w, 16) channels last.
        ``timesteps``: times in [0, 1], decreasing, the last one where sampling ends (``DEFAULT_STAGE_C_TIMESTEPS``);
        ``rng``: an int seed or a ``jax.random`` key (diffusers' ``generator``); ``latents``: the initial noise
        (B * n, h, w, 16); ``output_type``: "pt" (jax arrays here) or "np"."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type="np", num_inference_steps=num_inference_steps, timesteps=timesteps, callback=callback)
        checks.check_embeddings_output_type(output_type)
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
        checks.check_size(height, width)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt, (height, width))
        shape = (batch.total, *self.embedding_size(height, width), self.prior.config.c_in)
        checks.check_latents(latents, shape)
        state = self.prepare_timesteps(num_inference_steps, timesteps, None, (batch.rows, *shape[1:]))

        text, negative = self.encode_prompt(prompt, num_images_per_prompt, guidance_scale > 1.0, negative_prompt,
                                            prompt_embeds, negative_prompt_embeds)
        noise_key, step_key = jax.random.split(as_key(rng))
        latents = self.initial_noise(latents, noise_key, shape) * self.scheduler.init_noise_sigma
        module, params = unbind(self.prior)
        cond = {"c": self.guidance_rows(text, negative, batch.rows, module.dtype)}
        latents = self.denoise(WuerstchenDenoiser(module), params, latents, state, cond, guidance_scale, step_key,
                               batch, callback=callback, callback_steps=callback_steps)
        embeddings = jnp.asarray(sharding.gather_rows(latents, batch.total))
        embeddings = embeddings * self.config["latent_mean"] - self.config["latent_std"]
        out = WuerstchenPriorPipelineOutput(np.asarray(embeddings) if output_type == "np" else embeddings)
        return out if return_dict else out.to_tuple()

    def _placeholder_embeds(self, batch_size: int, guided: bool, call: Any) -> dict[str, Any]:
        embeds = np.zeros((batch_size, 77, self.prior.config.c_cond), np.float32)
        return dict(prompt_embeds=embeds, **(dict(negative_prompt_embeds=embeds) if guided else {}))


class WuerstchenDecoderPipeline(_WuerstchenStage, DiffusionPipeline):
    """Würstchen's stages B and A: ``pipe(image_embeddings, prompt) -> ImagePipelineOutput(images)``.

    Components (diffusers' names): ``tokenizer`` (CLIP), ``text_encoder`` (``CLIPTextModel``, ViT-H),
    ``decoder`` (``WuerstchenDiffNeXt``), ``scheduler`` (``DDPMWuerstchenScheduler``), ``vqgan``
    (``PaellaVQModel``); config ``latent_dim_scale`` from model_index.json.
    """

    _components = {
        "tokenizer": ComponentSpec("tokenizer", optional=True),
        "text_encoder": ComponentSpec("model", CLIPTextModel, ("CLIPTextModel",), optional=True),
        "decoder": ComponentSpec("model", WuerstchenDiffNeXt, ("WuerstchenDiffNeXt",)),
        "scheduler": ComponentSpec("scheduler"),
        "vqgan": ComponentSpec("model", PaellaVQModel, ("PaellaVQModel",), optional=True),
    }
    _config = {"latent_dim_scale": 10.67}
    _denoiser = "decoder"

    def _decoder_name(self) -> str:
        return "vqgan"

    def latent_size(self, embedding_size: tuple[int, int], name: str = "image_embeddings") -> tuple[int, int]:
        """The stage B latents' (h, w) for embeddings of ``embedding_size``: each side times ``latent_dim_scale``,
        rounded down. A ValueError (naming ``name``) when the DiffNeXt cannot take them: it patches them by
        ``patch_size`` and halves them once per further level, so they must be multiples of that product."""
        cfg = self.decoder.config
        multiple = cfg.patch_size * 2 ** (len(cfg.c_hidden) - 1)
        scale = self.config["latent_dim_scale"]
        sides = tuple(int(side * scale) for side in embedding_size)
        if any(side < multiple or side % multiple for side in sides):
            fits = [n for n in range(1, 4 * max(embedding_size) + 8) if int(n * scale) % multiple == 0][:8]
            raise ValueError(
                f"`{name}` gives stage B latents of {sides[0]}x{sides[1]} (embeddings {embedding_size[0]}x"
                f"{embedding_size[1]} times latent_dim_scale {scale}, rounded down), but the decoder takes sides that"
                f" are multiples of {multiple}: embedding sides that work are {fits}, ... (at 42.67 px each: height"
                f" and width {[int(n * RESOLUTION_MULTIPLE) for n in fits[:4]]}, ...)"
            )
        return sides

    def image_embeddings_rows(self, image_embeddings: Any) -> np.ndarray:
        """``image_embeddings`` (an array (B, h, w, C) channels last, or a list of such) -> float32 numpy,
        checked against the decoder's ``effnet_embd`` channels."""
        if isinstance(image_embeddings, (list, tuple)):
            image_embeddings = np.concatenate([np.asarray(sharding.gather_rows(x) if isinstance(x, jax.Array) else x)
                                               for x in image_embeddings])
        elif isinstance(image_embeddings, jax.Array):
            image_embeddings = sharding.gather_rows(image_embeddings)
        if image_embeddings is None or not hasattr(image_embeddings, "shape"):
            raise TypeError(f"'image_embeddings' must be an array or a list of arrays, but got {type(image_embeddings)}.")
        channels = self.decoder.config.effnet_embd
        if np.ndim(image_embeddings) != 4 or np.shape(image_embeddings)[-1] != channels:
            raise ValueError(f"`image_embeddings` must be (batch, height, width, {channels}) channels last (the prior's"
                             f" output), got shape {tuple(np.shape(image_embeddings))}")
        return np.asarray(image_embeddings, np.float32)

    def begin(self, kwargs: dict, embeddings_shape: tuple[int, ...], prompt: Any, negative_prompt: Any, *,
              num_images_per_prompt: Any, guidance_scale: Any, output_type: Any, num_inference_steps: Any,
              timesteps: Any, latents: Any) -> tuple[Batch, tuple[int, ...], int, Any]:
        """The checks a call starts with, before anything is encoded or compiled (the combined pipeline runs them
        before its prior). Returns (the rows, the latents' shape, each prompt's embedding rows, the scheduler
        state)."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps, timesteps=timesteps)
        if not isinstance(prompt, (str, list)):
            raise TypeError(f"'prompt' must be of type 'list' or 'str', but got {type(prompt)}.")
        count = embeddings_shape[0]
        prompts = 1 if isinstance(prompt, str) else len(prompt)
        if prompts == 0 or count % prompts:
            raise ValueError(f"`prompt` has {prompts} prompts, which does not divide the {count} image embeddings"
                             " (one prompt for all, or one per prompt the prior was given)")
        if guidance_scale > 1.0:
            checks.negative_prompts(negative_prompt, prompt, prompts)
        total = count * num_images_per_prompt
        shape = (total, *self.latent_size(embeddings_shape[1:3]), self.decoder.config.c_in)
        checks.check_latents(latents, shape)
        batch = Batch(count, num_images_per_prompt, sharding.padded_size(total, self.mesh))
        state = self.prepare_timesteps(num_inference_steps, timesteps, None, (batch.rows, *shape[1:]))
        return batch, shape, count // prompts, state

    def __call__(
        self,
        image_embeddings: Any,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 12,
        timesteps: list[float] | None = None,
        guidance_scale: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, float, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """Images from the prior's ``image_embeddings`` (B, h, w, 16), ``num_images_per_prompt`` per embedding,
        4 * int(10.67 h) x 4 * int(10.67 w) px. ``prompt``: one for all, or one per prompt the prior was given
        (each embedding row takes its prompt in order); ``latents``: the initial noise (B * n, int(10.67 h),
        int(10.67 w), 4), channels last; ``output_type``: "pil", "np" or "latent" (stage B latents)."""
        effnet = self.image_embeddings_rows(image_embeddings)
        batch, shape, rows_per_prompt, state = self.begin(
            kwargs, effnet.shape, prompt, negative_prompt, num_images_per_prompt=num_images_per_prompt,
            guidance_scale=guidance_scale, output_type=output_type, num_inference_steps=num_inference_steps,
            timesteps=timesteps, latents=latents)

        guided = guidance_scale > 1.0
        text, negative = self.encode_prompt(prompt, rows_per_prompt * num_images_per_prompt, guided, negative_prompt)
        noise_key, step_key = jax.random.split(as_key(rng))
        latents = self.initial_noise(latents, noise_key, shape) * self.scheduler.init_noise_sigma
        module, params = unbind(self.decoder)
        effnet = np.repeat(effnet, num_images_per_prompt, axis=0)
        cond = {"effnet": self.guidance_rows(effnet, np.zeros_like(effnet) if guided else None, batch.rows, module.dtype),
                "clip": self.guidance_rows(text, negative, batch.rows, module.dtype)}
        latents = self.denoise(WuerstchenDenoiser(module), params, latents, state, cond, guidance_scale, step_key,
                               batch, callback=callback, callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Stage B latents on the mesh -> images in [-1, 1], float32 NHWC (Paella's decode)."""
        module, params = unbind(self.vqgan)
        with self._mesh_context():
            return _decode_vqgan(module, params, latents)

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None, call: Any) -> dict[str, Any]:
        """``warmup``: zero embeddings for ``height`` x ``width`` images (1024 by default) at the prior's 42.67 px."""
        size = [math.ceil((side or 1024) / RESOLUTION_MULTIPLE) for side in (height, width)]
        return {"image_embeddings": np.zeros((batch_size, *size, self.decoder.config.effnet_embd), np.float32)}


class WuerstchenCombinedPipeline(PriorDecoderPipeline):
    """Würstchen text to image, stage C then stages B and A: ``pipe(prompt) -> ImagePipelineOutput(images)``
    (512 x 512 by default, as diffusers). ``from_pretrained("warp-ai/wuerstchen")`` finds the prior the
    decoder's README.md names (or takes ``prior=``); components as diffusers' (the prior's with ``prior_``)."""

    _prior_class = WuerstchenPriorPipeline
    _decoder_class = WuerstchenDecoderPipeline

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int = 512,
        width: int = 512,
        prior_num_inference_steps: int = 60,
        prior_timesteps: list[float] | None = None,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 12,
        decoder_timesteps: list[float] | None = None,
        decoder_guidance_scale: float = 0.0,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        prior_callback: Callable[[int, float, Any], None] | None = None,
        prior_callback_steps: int = 1,
        callback: Callable[[int, float, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments: the prior runs ``prior_num_inference_steps`` (or ``prior_timesteps``) with
        ``prior_guidance_scale``, ``negative_prompt`` and ``latents`` (its initial noise); the decoder
        ``num_inference_steps`` (or ``decoder_timesteps``) with ``decoder_guidance_scale``. Both stages' checks
        run before the prior does (a size the decoder cannot take is refused up front)."""
        prompts = checks.prompt_batch_size(prompt, prompt_embeds)
        checks.check_run_options(num_images_per_prompt=num_images_per_prompt)
        checks.check_size(height, width)
        checks.check_latents(latents, (prompts * num_images_per_prompt, *self.prior_pipe.embedding_size(height, width),
                                       self.prior_pipe.prior.config.c_in))
        checks.check_timesteps("prior_timesteps", prior_timesteps)
        self.prior_pipe.scheduler.set_timesteps(prior_num_inference_steps, timesteps=prior_timesteps)  # host-side checks
        decoder_prompt = prompt if prompt is not None else ""
        embeddings_shape = (prompts * num_images_per_prompt, *self.prior_pipe.embedding_size(height, width))
        self.decoder_pipe.begin(
            kwargs, embeddings_shape, decoder_prompt, negative_prompt, num_images_per_prompt=1,
            guidance_scale=decoder_guidance_scale, output_type=output_type, num_inference_steps=num_inference_steps,
            timesteps=decoder_timesteps, latents=None)

        prior_key, decoder_key = jax.random.split(as_key(rng))
        embeddings = self.prior_pipe(
            prompt=prompt if prompt_embeds is None else None, height=height, width=width,
            num_inference_steps=prior_num_inference_steps, timesteps=prior_timesteps,
            guidance_scale=prior_guidance_scale, negative_prompt=negative_prompt if negative_prompt_embeds is None else None,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            num_images_per_prompt=num_images_per_prompt, rng=prior_key, latents=latents, output_type="pt",
            return_dict=False, callback=prior_callback, callback_steps=prior_callback_steps)[0]
        return self.decoder_pipe(
            embeddings, prompt=decoder_prompt, num_inference_steps=num_inference_steps, timesteps=decoder_timesteps,
            guidance_scale=decoder_guidance_scale, negative_prompt=negative_prompt, rng=decoder_key,
            output_type=output_type, return_dict=return_dict, callback=callback, callback_steps=callback_steps, **kwargs)

    def warmup(self, height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
               batch_size: int = 1, prior_num_inference_steps: int | None = None, **kwargs: Any) -> float:
        """Compile the prior's and the decoder's programs for ``height`` x ``width`` (512 by default) ahead;
        returns the seconds it took."""
        height, width = height or 512, width or 512
        return super().warmup(height, width, num_inference_steps, batch_size, prior_num_inference_steps, **kwargs)


def cli_generate(args: Any, call: dict, dtype: Any, save: Callable) -> list:
    """``jaxgen generate`` for Würstchen: the combined pipeline from ``--model`` (the decoder, warp-ai/wuerstchen)
    and ``--prior-model`` (default: the prior its README.md names). ``--steps`` and ``--guidance`` are the
    decoder's, ``--prior-steps`` and ``--prior-guidance`` the prior's; ``--height``/``--width`` the image's."""
    unknown = sorted(set(call) & {"image", "mask_image", "strength", "hint"})
    if unknown:
        raise ValueError(f"--model {args.model}: Würstchen generates from text only; it does not take {unknown}")
    if "guidance_scale" in call:
        call["decoder_guidance_scale"] = call.pop("guidance_scale")
    from jaxgen.cli import load_options

    pipe = WuerstchenCombinedPipeline.from_pretrained(args.model, prior=args.prior_model, dtype=dtype,
                                                      **load_options(args))
    return pipe(args.prompt, **call, **prior_options(args)).images
