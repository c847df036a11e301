"""StableDiffusionUpscalePipeline: the x4 upscaler (stabilityai/stable-diffusion-x4-upscaler), also
DeepFloyd IF's stage III, with diffusers' arguments, defaults and checks.

The low-resolution image (in [-1, 1]) is noised by ``low_res_scheduler`` to ``noise_level``, and
the UNet denoises latents of the image's own size with that noisy image concatenated to them on the
channel axis (4 + 3 = 7 input channels) and ``noise_level`` as its class label; the VAE (x4, three
levels, ``scaling_factor`` 0.08333) decodes the latents to an image 4x the input's size. The loop is
the shared compiled one (``jaxgen.pipelines.sampling``); ``UpscaleDenoiser`` is its model adapter,
and the noised image is the shared super-resolution conditioning (``tasks.noise_level_condition``).
At 1024 pixels the VAE's mid-block attention spans 256 x 256 latents: ``enable_vae_tiling()``
decodes in overlapping tiles instead, as diffusers does.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen.image_processing import preprocess
from jaxgen.models.autoencoder_kl import AutoencoderKL
from jaxgen.models.safety_checker import IFSafetyChecker
from jaxgen.models.unet_2d_condition import UNet2DConditionModel
from jaxgen.models.watermark import IFWatermarker
from jaxgen.pipelines import checks, tasks
from jaxgen.pipelines.loading import HostModel
from jaxgen.pipelines.outputs import StableDiffusionPipelineOutput
from jaxgen.pipelines.pipeline_utils import ComponentSpec, DiffusionPipeline, as_key, unbind
from jaxgen.pipelines.sampling import Denoiser
from jaxgen.text.clip import CLIPTextModel

__all__ = ["StableDiffusionUpscalePipeline", "StableDiffusionPipelineOutput", "UpscaleDenoiser"]

logger = logging.getLogger(__name__)

VAE_SCALING_FACTOR = 0.08333  # the x4 VAE's; diffusers forces it on any other value


@dataclasses.dataclass(frozen=True)
class UpscaleDenoiser(Denoiser):
    """The x4 upscaler's UNet as ``denoise`` calls it. cond: ``encoder_hidden_states`` (N, L, D),
    ``extra_channels`` (N, H, W, 3), the noised low-resolution image, concatenated after the (scaled)
    latents on the channel axis, and ``class_labels`` (N,) int, the noise level."""

    unet: Any

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        return self.unet.apply(
            {"params": params}, self.with_extra_channels(model_input, cond, self.unet.dtype), timestep,
            encoder_hidden_states=cond["encoder_hidden_states"], class_labels=cond["class_labels"],
        ).sample


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
    _output_class = StableDiffusionPipelineOutput

    def __init__(self, *, mesh: Any = None, **components: Any) -> None:
        super().__init__(mesh=mesh, **components)
        if self.vae is not None and self.vae.config.scaling_factor != VAE_SCALING_FACTOR:
            # diffusers rewrites the VAE's config with a deprecation warning: the same here
            logger.warning(
                "The configuration file of the vae does not contain `scaling_factor` or it is set to"
                f" {self.vae.config.scaling_factor}, which seems highly unlikely. If your checkpoint is a fine-tuned"
                " version of `stabilityai/stable-diffusion-x4-upscaler` you should change 'scaling_factor' to"
                f" {VAE_SCALING_FACTOR}."
            )
            config = dataclasses.replace(self.vae.config, scaling_factor=VAE_SCALING_FACTOR)
            if isinstance(self.vae, HostModel):  # offloaded: the same host params under the new config
                self.vae = type(self.vae)(self.vae.module.clone(config=config), self.vae.params, self.vae.mesh)
            else:
                module, variables = self.vae.unbind()
                self.vae = module.clone(config=config).bind(variables)

    @property
    def prompt_embeds_width(self) -> int:
        """The CLIP text encoder's width, the UNet's cross-attention width (1024)."""
        return self.unet.config.cross_attention_dim

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
        = k takes the output of the layer k before the last (through the final layer norm); the
        negative prompt is padded to the prompt's length and never clip-skipped, as diffusers.
        """

        def encode(texts: Any, length: int | None) -> tuple[jax.Array, None]:
            (embeds,), _ = self.encode_texts(
                [texts] if isinstance(texts, str) else list(texts), length or self.tokenizer.model_max_length,
                use_mask=False, clip_skip=clip_skip if length is None else None, warn_truncation=length is None,
                encoder_name="CLIP",
            )
            return embeds, None

        embeds, _, negative, _ = self.encode_prompt_pair(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            do_classifier_free_guidance=do_classifier_free_guidance, num_images_per_prompt=num_images_per_prompt,
            encode=encode,
        )
        return embeds, negative

    def check_inputs(
        self, prompt, image, noise_level, callback_steps, negative_prompt=None, prompt_embeds=None,
        negative_prompt_embeds=None,
    ) -> None:
        """diffusers' checks and messages, plus a noise level inside the low-res schedule; raised before
        anything is encoded or compiled."""
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
        if prompt_embeds is not None and np.ndim(prompt_embeds) != 3:
            raise ValueError(f"`prompt_embeds` must be (batch, tokens, width), got shape {np.shape(prompt_embeds)}")
        if image is None:
            raise ValueError("`image` input cannot be undefined.")
        if not isinstance(image, (PIL.Image.Image, np.ndarray, jax.Array, list)):
            raise ValueError(
                "`image` has to be of type `np.ndarray`, `jax.Array`, `PIL.Image.Image` or `list` but is"
                f" {type(image)}"
            )
        batch_size = checks.prompt_batch_size(prompt, prompt_embeds)
        image_batch_size = checks.image_batch_size("image", image)
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
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps,
                        cross_attention_kwargs=cross_attention_kwargs)
        self.check_inputs(prompt, image, noise_level, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if self.safety_checker is not None and self.feature_extractor is None and output_type != "latent":
            raise ValueError("the safety checker needs a `feature_extractor` (CLIPImageProcessor)")
        image = preprocess(image, vae_scale_factor=self.vae_scale_factor, resample="bicubic")
        upscaled = (image.shape[1] * self.vae_scale_factor, image.shape[2] * self.vae_scale_factor)
        batch = self.batch(prompt, prompt_embeds, num_images_per_prompt, upscaled)  # the output must fit
        latent_shape = (batch.total,) + image.shape[1:3] + (self._latent_channels(image),)
        checks.check_latents(latents, latent_shape)

        embeds = self.encode_prompt(prompt, num_images_per_prompt, guidance_scale > 1.0, negative_prompt,
                                    prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                    clip_skip=clip_skip)
        image_key, latents_key, step_key = jax.random.split(as_key(rng), 3)
        noise = jax.random.normal(image_key, image.shape, jnp.float32)
        noised = self.low_res_scheduler.add_noise(None, jnp.asarray(image), noise, jnp.asarray([noise_level]))
        # diffusers repeats the whole image batch once per image per prompt (torch.cat([image] * n))
        condition = tasks.noise_level_condition(np.tile(np.asarray(noised), (num_images_per_prompt, 1, 1, 1)),
                                                noise_level, batch.total)
        state = self.prepare_timesteps(num_inference_steps, None, None, (batch.rows,) + latent_shape[1:])
        latents = self.initial_noise(latents, latents_key, latent_shape) * self.scheduler.init_noise_sigma

        module, params = unbind(self.unet)
        positive, negative = embeds
        both = lambda x, dtype=None: self.guidance_rows(x, x if negative is not None else None, batch.rows, dtype)
        cond = {"encoder_hidden_states": self.guidance_rows(positive, negative, batch.rows, module.dtype),
                "extra_channels": both(condition["extra_channels"], module.dtype),
                "class_labels": both(condition["class_labels"])}
        latents = self.denoise(UpscaleDenoiser(module), params, latents, state, cond, guidance_scale, step_key, batch,
                               eta=eta, callback=callback, callback_steps=callback_steps)
        del module, params  # an offloaded UNet's device copy goes before the VAE comes
        return self.output(latents, batch, output_type, return_dict)

    def _latent_channels(self, image: np.ndarray) -> int:
        """The VAE's latent channels, checked against the UNet's input (latents + the image's channels)."""
        latent_channels = self.vae.config.latent_channels if self.vae is not None else self.unet.config.out_channels
        unet_channels = self.unet.config.in_channels
        if latent_channels + image.shape[-1] != unet_channels:
            raise ValueError(
                f"Incorrect configuration settings! The config of `pipeline.unet`: {self.unet.config} expects"
                f" {unet_channels} but received `num_channels_latents`: {latent_channels} +"
                f" `num_channels_image`: {image.shape[-1]}  = {latent_channels + image.shape[-1]}. Please verify the"
                " config of `pipeline.unet` or your `image` input."
            )
        return latent_channels

    def _placeholder_embeds(self, batch_size: int, guided: bool, call: Any) -> dict[str, Any]:
        config = self.unet.config
        embeds = np.zeros((batch_size, 77, config.encoder_hid_dim or config.level("cross_attention_dim")[0]), np.float32)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": embeds if guided else None}

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None, call: Any) -> dict[str, Any]:
        """Low-resolution input images of ``height`` x ``width`` (the UNet's sample size by default)."""
        size = self.unet.config.sample_size
        return {"image": np.zeros((batch_size, height or size, width or size, 3), np.float32)}
