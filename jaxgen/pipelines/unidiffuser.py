"""UniDiffuser: ``UniDiffuserPipeline``, one model for text to image, image to text, unconditional image, text
and joint image-text generation, with diffusers' arguments, defaults, mode inference, checks and outputs.

What is UniDiffuser's own: the U-ViT (``UniDiffuserModel``) denoises three parts at once (the VAE latent of the
image, its CLIP image embedding, and a text latent: the CLIP text encoder's hidden states through the text
decoder's ``encode`` bottleneck), each with its own timestep. A mode says which parts are sampled and which
are fixed: ``text2img`` samples the image parts given the prompt's text latent (timestep 0 for the text),
``img2text`` the text latent given an image's VAE and CLIP latents, ``img`` / ``text`` one modality with the
other at the last timestep (pure noise), ``joint`` all three with one timestep. Guidance is data-free:
the unconditional prediction is the model with the condition replaced by fresh Gaussian noise at the last
timestep (``max_timestep``), drawn anew each step, and combined as diffusers' ``g * cond + (1 - g) * uncond``
(``sampling.guide``'s uncond + g (cond - uncond)); ``sampling.SeparateUnconditional`` calls it with the
step's key. Text comes out of the text decoder's beam search (``generate_captions``).

The sampled parts are the pytree ``{"img_vae" (B, h, w, C) NHWC, "img_clip" (B, 1, clip_img_dim), "text"
(B, L, text_dim)}`` restricted to the mode's parts; the shared loop steps the scheduler on their rows
flattened (diffusers concatenates them in another order; the scheduler is elementwise).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen import hub, sharding
from jaxgen.image_processing import preprocess
from jaxgen.models.autoencoder_kl import AutoencoderKL
from jaxgen.models.unidiffuser_model import UniDiffuserModel
from jaxgen.models.unidiffuser_text_decoder import UniDiffuserTextDecoder, decode_captions
from jaxgen.pipelines import checks
from jaxgen.pipelines.outputs import ImageTextPipelineOutput
from jaxgen.pipelines.pipeline_utils import Batch, ComponentSpec, DiffusionPipeline, as_key, unbind
from jaxgen.pipelines.sampling import Denoiser, NoGuidance, SeparateUnconditional
from jaxgen.text.clip import CLIPTextModel, CLIPVisionModelWithProjection

__all__ = ["UniDiffuserPipeline", "UniDiffuserDenoiser", "MODES", "cli_caption"]

logger = logging.getLogger(__name__)

MODES = ("text2img", "img2text", "img", "text", "joint")
_SAMPLED = {"text2img": ("img_vae", "img_clip"), "img": ("img_vae", "img_clip"), "img2text": ("text",),
            "text": ("text",), "joint": ("img_vae", "img_clip", "text")}


@dataclasses.dataclass(frozen=True)
class UniDiffuserDenoiser(Denoiser):
    """The U-ViT as ``sampling.denoise`` calls it in one ``mode``, on the pytree of the parts it samples.

    ``cond`` holds the fixed parts (text2img, img: ``text``; img2text, text: ``img_vae``, ``img_clip``; joint:
    none). ``predict_unconditional``: diffusers' data-free guidance, the condition replaced by standard normal
    noise from the step's key (``jax.random.split(key, 3)``: the VAE, CLIP and text parts' keys) at
    ``max_timestep``, for the ``real_rows`` first rows (zeros on the padding rows)."""

    unet: Any
    mode: str
    max_timestep: int
    data_type: int = 1
    real_rows: int | None = None  # the noise is drawn for these rows, zeros on the padding: same on any mesh

    def _run(self, params: Any, vae: jax.Array, clip: jax.Array, text: jax.Array, t_img: Any, t_text: Any):
        n = vae.shape[0]
        as_rows = lambda t: jnp.broadcast_to(jnp.asarray(t), (n,))
        dtype = self.unet.dtype
        return self.unet.apply({"params": params}, vae.astype(dtype), clip.astype(dtype), text.astype(dtype),
                               as_rows(t_img), as_rows(t_text), jnp.full((n,), self.data_type, jnp.int32))

    def predict(self, params: Any, x: Any, timestep: jax.Array, cond: Any) -> Any:
        mode, top = self.mode, self.max_timestep
        if mode in ("text2img", "img"):
            t_text = 0 if mode == "text2img" else top
            vae, clip, _ = self._run(params, x["img_vae"], x["img_clip"], cond["text"], timestep, t_text)
            return {"img_vae": vae, "img_clip": clip}
        if mode in ("img2text", "text"):
            t_img = 0 if mode == "img2text" else top
            return {"text": self._run(params, cond["img_vae"], cond["img_clip"], x["text"], t_img, timestep)[2]}
        vae, clip, text = self._run(params, x["img_vae"], x["img_clip"], x["text"], timestep, timestep)
        return {"img_vae": vae, "img_clip": clip, "text": text}

    def predict_unconditional(self, params: Any, x: Any, timestep: jax.Array, cond: Any, key: jax.Array) -> Any:
        mode, top = self.mode, self.max_timestep
        keys = jax.random.split(key, 3)

        def noise(i: int, like: jax.Array) -> jax.Array:
            rows = like.shape[0] if self.real_rows is None else self.real_rows
            drawn = jax.random.normal(keys[i], (rows,) + like.shape[1:], jnp.float32)
            return jnp.pad(drawn, ((0, like.shape[0] - rows),) + ((0, 0),) * (like.ndim - 1))

        if mode == "text2img":
            vae, clip, _ = self._run(params, x["img_vae"], x["img_clip"], noise(2, cond["text"]), timestep, top)
            return {"img_vae": vae, "img_clip": clip}
        if mode == "img2text":
            text = self._run(params, noise(0, cond["img_vae"]), noise(1, cond["img_clip"]), x["text"], top, timestep)[2]
            return {"text": text}
        if mode == "joint":
            text = self._run(params, noise(0, x["img_vae"]), noise(1, x["img_clip"]), x["text"], top, timestep)[2]
            vae, clip, _ = self._run(params, x["img_vae"], x["img_clip"], noise(2, x["text"]), timestep, top)
            return {"img_vae": vae, "img_clip": clip, "text": text}
        raise TypeError(f"UniDiffuser mode {mode!r} has no guidance")


_text_bottleneck = jax.jit(lambda module, params, prefix: module.apply({"params": params}, prefix, method="encode"),
                           static_argnums=0)
_vae_sample = jax.jit(lambda module, params, image, key: module.apply({"params": params}, image, method="encode")
                      .latent_dist.sample(key) * module.config.scaling_factor, static_argnums=0)
_image_embeds = jax.jit(lambda module, params, pixels: module.apply({"params": params}, pixels).image_embeds,
                        static_argnums=0)


class UniDiffuserPipeline(DiffusionPipeline):
    """UniDiffuser (thu-ml/unidiffuser-v1): ``pipe(prompt)`` -> images, ``pipe(image=...)`` -> captions,
    ``pipe()`` -> joint samples, as ``ImageTextPipelineOutput(images, text)``.

    Components, diffusers' names: ``vae`` (``AutoencoderKL``), ``text_encoder`` (``CLIPTextModel``),
    ``image_encoder`` (``CLIPVisionModelWithProjection``), ``clip_image_processor`` (transformers'
    ``CLIPImageProcessor``; the released model_index.json calls it ``image_processor``: read from there too),
    ``clip_tokenizer``, ``text_decoder`` (``UniDiffuserTextDecoder``), ``text_tokenizer`` (GPT-2), ``unet``
    (``UniDiffuserModel``), ``scheduler`` (``DPMSolverMultistepScheduler`` in the release).

    The mode is inferred from the inputs (``_infer_mode``, diffusers' rules) unless set with
    ``set_text_mode`` / ``set_image_mode`` / ``set_text_to_image_mode`` / ``set_image_to_text_mode`` /
    ``set_joint_mode``; ``reset_mode`` goes back to inferring.
    """

    _components = {
        "vae": ComponentSpec("model", AutoencoderKL, ("AutoencoderKL",)),
        "text_encoder": ComponentSpec("model", CLIPTextModel, ("CLIPTextModel",)),
        "image_encoder": ComponentSpec("model", CLIPVisionModelWithProjection, ("CLIPVisionModelWithProjection",)),
        "clip_image_processor": ComponentSpec("processor", optional=True),
        "clip_tokenizer": ComponentSpec("tokenizer"),
        "text_decoder": ComponentSpec("model", UniDiffuserTextDecoder, ("UniDiffuserTextDecoder",)),
        "text_tokenizer": ComponentSpec("tokenizer"),
        "unet": ComponentSpec("model", UniDiffuserModel, ("UniDiffuserModel",)),
        "scheduler": ComponentSpec("scheduler"),
    }
    _output_class = ImageTextPipelineOutput
    draws_noise_every_step = True  # data-free guidance: fresh noise for the condition at every step (jaxgen batch)

    def __init__(self, *, mesh: Any = None, **components: Any) -> None:
        super().__init__(mesh=mesh, **components)
        encoder, decoder = self.text_encoder, self.text_decoder
        if encoder.config.hidden_size != decoder.config.prefix_inner_dim:
            raise ValueError(
                f"The text encoder hidden size and text decoder prefix inner dim must be the same, but"
                f" `text_encoder.config.hidden_size`: {encoder.config.hidden_size} and `text_decoder.prefix_inner_dim`:"
                f" {decoder.config.prefix_inner_dim}"
            )
        self.mode: str | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, dtype: Any = jnp.float32,
                        variant: str | None = None, mesh: Any = None, **components: Any) -> "UniDiffuserPipeline":
        """As ``DiffusionPipeline.from_pretrained``; the CLIP image processor is read from ``image_processor`` when
        model_index.json names it so (thu-ml/unidiffuser-v1) rather than ``clip_image_processor``."""
        if "clip_image_processor" not in components:
            root = hub.resolve_checkpoint(pretrained_model_name_or_path, allow_patterns=["*.json"], variant=variant)
            index = hub.load_model_index(root)
            entry = index.get("image_processor")
            if index.get("clip_image_processor") is None and entry is not None and entry[1] is not None:
                from jaxgen.pipelines.loading import _load_image_processor

                root = hub.resolve_checkpoint(pretrained_model_name_or_path, subfolder="image_processor",
                                              kind="processor", variant=variant)
                components["clip_image_processor"] = _load_image_processor(
                    hub.component_folder(root, "image_processor"), entry[1])
        return super().from_pretrained(pretrained_model_name_or_path, dtype=dtype, variant=variant, mesh=mesh,
                                       **components)

    # -- sizes ---------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The CLIP tokenizer, under the name the shared text encoding reads."""
        return self.clip_tokenizer

    @property
    def num_channels_latents(self) -> int:
        return self.vae.config.latent_channels

    @property
    def text_encoder_seq_len(self) -> int:
        return self.text_encoder.config.max_position_embeddings

    @property
    def text_encoder_hidden_size(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def image_encoder_projection_dim(self) -> int:
        return self.image_encoder.config.projection_dim

    @property
    def text_intermediate_dim(self) -> int:
        hidden = self.text_decoder.config.prefix_hidden_dim
        return self.text_encoder_hidden_size if hidden is None else hidden

    # -- modes ---------------------------------------------------------------------------------

    def set_text_mode(self) -> None:
        """Unconditional ("marginal") text generation."""
        self.mode = "text"

    def set_image_mode(self) -> None:
        """Unconditional ("marginal") image generation."""
        self.mode = "img"

    def set_text_to_image_mode(self) -> None:
        """Text-conditioned image generation."""
        self.mode = "text2img"

    def set_image_to_text_mode(self) -> None:
        """Image-conditioned text generation."""
        self.mode = "img2text"

    def set_joint_mode(self) -> None:
        """Unconditional joint image-text generation."""
        self.mode = "joint"

    def reset_mode(self) -> None:
        """Infer the mode from the inputs again."""
        self.mode = None

    def _infer_mode(self, prompt, prompt_embeds, image, latents, prompt_latents, vae_latents, clip_latents) -> str:
        """diffusers' rules: the set mode; else a prompt -> text2img, an image -> img2text; else from the latents
        given (all -> joint, text only -> text, vae and clip -> img), joint otherwise. Same warnings."""
        prompt_available = prompt is not None or prompt_embeds is not None
        image_available = image is not None
        text_lat, vae_lat, clip_lat = prompt_latents is not None, vae_latents is not None, clip_latents is not None
        if self.mode is not None:
            mode = self.mode
        elif prompt_available:
            mode = "text2img"
        elif image_available:
            mode = "img2text"
        elif latents is not None or (text_lat and vae_lat and clip_lat):
            mode = "joint"
        elif text_lat:
            mode = "text"
        elif vae_lat and clip_lat:
            mode = "img"
        else:
            mode = "joint"
        if self.mode is None and prompt_available and image_available:
            logger.warning("You have supplied both a text prompt and image to the pipeline and mode has not been set"
                           " manually, defaulting to mode '%s'.", mode)
        if self.mode is None and not (prompt_available or image_available):
            if vae_lat != clip_lat:
                logger.warning("You have supplied exactly one of `vae_latents` and `clip_latents`, whereas either both"
                               " or none are expected to be supplied. Defaulting to mode '%s'.", mode)
            elif not (text_lat or vae_lat or clip_lat):
                logger.warning("No inputs or latents have been supplied, and mode has not been manually set,"
                               " defaulting to mode '%s'.", mode)
        return mode

    def _infer_batch_size(self, mode, prompt, prompt_embeds, image, num_images_per_prompt, num_prompts_per_image,
                          latents, prompt_latents, vae_latents, clip_latents) -> tuple[int, int]:
        """(batch size, multiplier) as diffusers: prompts x images per prompt, images x prompts per image, the
        latents' rows x either for the unconditional modes (joint: the smaller of the two)."""
        n_img = 1 if num_images_per_prompt is None else num_images_per_prompt
        n_txt = 1 if num_prompts_per_image is None else num_prompts_per_image
        first = lambda *xs: next((int(np.shape(x)[0]) for x in xs if x is not None), 1)
        if mode == "text2img":
            return checks.prompt_batch_size(prompt, prompt_embeds), n_img
        if mode == "img2text":
            return checks.image_batch_size("image", image), n_txt
        if mode == "img":
            return first(vae_latents, clip_latents), n_img
        if mode == "text":
            return first(prompt_latents), n_txt
        if n_img != n_txt:
            logger.warning("You are using mode `joint` and `num_images_per_prompt`: %s and num_prompts_per_image: %s"
                           " are not equal. Using min(num_images_per_prompt, num_prompts_per_image).", n_img, n_txt)
        return first(latents, prompt_latents, vae_latents, clip_latents), min(n_img, n_txt)

    # -- checks --------------------------------------------------------------------------------

    def check_inputs(self, mode, prompt, image, height, width, callback_steps, negative_prompt=None,
                     prompt_embeds=None, negative_prompt_embeds=None, latents=None, prompt_latents=None,
                     vae_latents=None, clip_latents=None) -> None:
        """diffusers' checks and messages; the latents channels last: ``vae_latents`` (B, h, w, C), ``latents``
        (B, h * w * C + clip_img_dim + seq_len * hidden_size), the VAE part flattened channels last."""
        factor = self.vae_scale_factor
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        if height % factor != 0 or width % factor != 0:
            raise ValueError(f"`height` and `width` have to be divisible by {factor} but are {height} and {width}.")
        if callback_steps is None or not isinstance(callback_steps, int) or callback_steps <= 0:
            raise ValueError(f"`callback_steps` has to be a positive integer but is {callback_steps} of type"
                             f" {type(callback_steps)}.")
        if mode == "text2img":
            if prompt is not None and prompt_embeds is not None:
                raise ValueError(f"Cannot forward both `prompt`: {prompt} and `prompt_embeds`: {prompt_embeds}. Please"
                                 " make sure to only forward one of the two.")
            if prompt is None and prompt_embeds is None:
                raise ValueError("Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and"
                                 " `prompt_embeds` undefined.")
            if prompt is not None and not isinstance(prompt, (str, list)):
                raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
            if negative_prompt is not None and negative_prompt_embeds is not None:
                raise ValueError(f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`:"
                                 f" {negative_prompt_embeds}. Please make sure to only forward one of the two.")
            if prompt_embeds is not None and negative_prompt_embeds is not None \
                    and np.shape(prompt_embeds) != np.shape(negative_prompt_embeds):
                raise ValueError(
                    "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                    f" got: `prompt_embeds` {np.shape(prompt_embeds)} != `negative_prompt_embeds`"
                    f" {np.shape(negative_prompt_embeds)}.")
        if mode == "img2text" and image is None:
            raise ValueError("`img2text` mode requires an image to be provided.")
        h, w = height // factor, width // factor
        seq, hidden, clip = self.text_encoder_seq_len, self.text_encoder_hidden_size, self.image_encoder_projection_dim
        if latents is not None:
            if any(x is not None for x in (prompt_latents, vae_latents, clip_latents)):
                logger.warning("You have supplied both `latents` and at least one of `prompt_latents`, `vae_latents`,"
                               " and `clip_latents`. The value of `latents` will override the value of any"
                               " individually supplied latents.")
            _check_latents_shape("latents", latents, (h * w * self.num_channels_latents + clip + seq * hidden,))
        if prompt_latents is not None:
            _check_latents_shape("prompt_latents", prompt_latents, (seq, hidden))
        if vae_latents is not None:
            _check_latents_shape("vae_latents", vae_latents, (h, w, self.num_channels_latents))
        if clip_latents is not None:
            _check_latents_shape("clip_latents", clip_latents, (1, clip))
        if mode in ("text2img", "img") and vae_latents is not None and clip_latents is not None \
                and np.shape(vae_latents)[0] != np.shape(clip_latents)[0]:
            raise ValueError(f"Both `vae_latents` and `clip_latents` are supplied, but their batch dimensions are not"
                             f" equal: {np.shape(vae_latents)[0]} != {np.shape(clip_latents)[0]}.")
        if mode == "joint" and all(x is not None for x in (prompt_latents, vae_latents, clip_latents)):
            b = [np.shape(x)[0] for x in (prompt_latents, vae_latents, clip_latents)]
            if b[0] != b[1] or b[0] != b[2]:
                raise ValueError(f"All of `prompt_latents`, `vae_latents`, and `clip_latents` are supplied, but their"
                                 f" batch dimensions are not equal: {b[0]} != {b[1]} != {b[2]}.")

    # -- encoders ------------------------------------------------------------------------------

    def encode_prompt(self, prompt: Any, num_images_per_prompt: int = 1, prompt_embeds: Any = None) -> jax.Array:
        """The CLIP text encoder's last hidden states (B * n, seq_len, hidden_size), each prompt's row repeated
        ``num_images_per_prompt`` times (no attention mask, as diffusers). diffusers also encodes the negative
        prompt, which its data-free guidance never reads: not done here."""
        if prompt_embeds is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            (prompt_embeds,), _ = self.encode_texts(texts, self.clip_tokenizer.model_max_length, use_mask=False,
                                                    warn_truncation=True, encoder_name="CLIP")
        return jnp.repeat(jnp.asarray(prompt_embeds, self.embeds_dtype()), num_images_per_prompt, axis=0)

    def encode_image_vae_latents(self, image: np.ndarray, total: int, key: jax.Array) -> jax.Array:
        """Preprocessed images (N, H, W, 3) in [-1, 1] -> a draw of the VAE's latent distribution times its
        scaling factor (diffusers samples, with the generator), tiled to ``total`` rows."""
        module, params = unbind(self.vae)
        with self._mesh_context():
            latents = _vae_sample(module, params, jnp.asarray(image, module.dtype), key).astype(jnp.float32)
        return _tile_rows(latents, total, "image")

    def encode_image_clip_latents(self, image: Any, total: int) -> jax.Array:
        """``image`` through the CLIP image processor and the image encoder -> image embeddings (total, 1, dim)."""
        if self.clip_image_processor is None:
            raise ValueError("img2text needs the pipeline's `clip_image_processor` (transformers' CLIPImageProcessor)")
        if all(isinstance(i, PIL.Image.Image) for i in (image if isinstance(image, (list, tuple)) else [image])):
            pixels = self.clip_image_processor(image, return_tensors="np").pixel_values
        else:  # arrays in [0, 1]: the processor's rescale would divide them by 255 a second time
            arrays = preprocess(image, vae_scale_factor=1, do_normalize=False)
            pixels = self.clip_image_processor(list(arrays), return_tensors="np", do_rescale=False).pixel_values
        pixels = np.asarray(pixels, np.float32)
        module, params = unbind(self.image_encoder)
        with self._mesh_context():
            embeds = _image_embeds(module, params, jnp.asarray(np.transpose(pixels, (0, 2, 3, 1)), module.dtype))
        return _tile_rows(embeds.astype(jnp.float32), total, "image")[:, None]

    def encode_text_latents(self, prefix: jax.Array) -> jax.Array:
        """The text decoder's ``encode`` bottleneck: (B, L, hidden_size) -> (B, L, text_intermediate_dim)."""
        module, params = unbind(self.text_decoder)
        with self._mesh_context():
            return _text_bottleneck(module, params, jnp.asarray(prefix, module.dtype)).astype(jnp.float32)

    def decode_text_latents(self, text_latents: jax.Array) -> list[str]:
        """Text latents (B, L, text_intermediate_dim) -> captions: the decoder's beam search, the best beam."""
        module, params = unbind(self.text_decoder)
        with self._mesh_context():
            tokens, lengths = module.generate_captions(params, jnp.asarray(text_latents), self.text_tokenizer.eos_token_id)
        return decode_captions(self.text_tokenizer, tokens, lengths)

    # -- the call ------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        height: int | None = None,
        width: int | None = None,
        data_type: int | None = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 8.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int | None = 1,
        num_prompts_per_image: int | None = 1,
        eta: float = 0.0,
        rng: Any = None,
        latents: Any = None,
        prompt_latents: Any = None,
        vae_latents: Any = None,
        clip_latents: Any = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> ImageTextPipelineOutput | tuple:
        """diffusers' arguments (``generator`` is ``rng``), channels last: ``vae_latents`` (B, h, w, C),
        ``clip_latents`` (B, 1, clip_img_dim), ``prompt_latents`` (B, seq_len, hidden_size) (the text noise
        before the decoder's bottleneck, as diffusers), ``latents`` the three flattened and concatenated in that
        order (the VAE part channels last); given latents are tiled ``multiplier`` times, as diffusers repeats
        them. ``image``: a PIL image (or a list), or arrays (N, H, W, 3) in [0, 1]. The negative prompt
        arguments are checked but, as in diffusers, unused (guidance is data-free). Returns
        ``ImageTextPipelineOutput(images, text)``; the modes without images (or text) give None there."""
        mode = self._infer_mode(prompt, prompt_embeds, image, latents, prompt_latents, vae_latents, clip_latents)
        batch, size, pixels, given = self.begin(
            kwargs, mode, prompt, image, height, width, data_type, guidance_scale, negative_prompt,
            num_images_per_prompt, num_prompts_per_image, num_inference_steps, output_type, callback_steps,
            prompt_embeds, negative_prompt_embeds, latents, prompt_latents, vae_latents, clip_latents)

        noise_key, loop_key = jax.random.split(as_key(rng))
        parts = self.initial_parts(mode, batch, size, prompt, prompt_embeds, image, pixels, given, noise_key)
        out = self.sample(mode, parts, batch, num_inference_steps, guidance_scale, data_type, eta, loop_key,
                          callback, callback_steps)
        images = texts = None
        if "img_vae" in out:
            images = self.output(out["img_vae"], batch, output_type, True).images
        if "text" in out:
            texts = self.decode_text_latents(sharding.gather_rows(out["text"], batch.total))
        result = ImageTextPipelineOutput(images=images, text=texts)
        return result if return_dict else result.to_tuple()

    def begin(self, kwargs: dict, mode: str, prompt: Any, image: Any, height: int | None, width: int | None,
              data_type: Any, guidance_scale: float, negative_prompt: Any, num_images_per_prompt: Any,
              num_prompts_per_image: Any, num_inference_steps: Any, output_type: Any, callback_steps: Any,
              prompt_embeds: Any, negative_prompt_embeds: Any, latents: Any, prompt_latents: Any, vae_latents: Any,
              clip_latents: Any) -> tuple[Batch, tuple[int, int], np.ndarray | None, dict[str, Any]]:
        """The checks a call starts with, before anything is encoded or compiled. Returns (the rows, the image's
        (height, width), the preprocessed image for img2text or None, the given latents by part name)."""
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_call(kwargs, num_images_per_prompt=1 if num_images_per_prompt is None else num_images_per_prompt,
                        guidance_scale=guidance_scale, output_type=output_type, num_inference_steps=num_inference_steps)
        if not checks._positive_int(1 if num_prompts_per_image is None else num_prompts_per_image):
            raise ValueError(f"`num_prompts_per_image` has to be a positive integer but is {num_prompts_per_image}.")
        if data_type not in (0, 1) and self.unet.config.use_data_type_embedding:
            raise ValueError(f"`data_type` must be 0 or 1, got {data_type!r}")
        self.check_inputs(mode, prompt, image, height, width, callback_steps, negative_prompt, prompt_embeds,
                          negative_prompt_embeds, latents, prompt_latents, vae_latents, clip_latents)
        batch_size, multiplier = self._infer_batch_size(mode, prompt, prompt_embeds, image, num_images_per_prompt,
                                                        num_prompts_per_image, latents, prompt_latents, vae_latents,
                                                        clip_latents)
        if latents is not None:
            vae_latents, clip_latents, prompt_latents = self._split_joint(latents, height, width)
        given = {"img_vae": vae_latents, "img_clip": clip_latents, "text": prompt_latents}
        names = {"img_vae": "vae_latents", "img_clip": "clip_latents", "text": "prompt_latents"}
        for part, x in given.items():
            if x is not None and np.shape(x)[0] != batch_size:
                raise ValueError(f"`{names[part]}` has {np.shape(x)[0]} rows: expected the batch size {batch_size}"
                                 f" (they are repeated {multiplier} times)")
        pixels = None
        if mode == "img2text":
            pixels = preprocess(image, vae_scale_factor=self.vae_scale_factor)
            height, width = pixels.shape[1:3]
            if pixels.shape[0] != batch_size:
                raise ValueError(f"`image` gave {pixels.shape[0]} images, expected {batch_size}")
        self._check_size(height, width, "image" if mode == "img2text" else "height` and `width")
        total = batch_size * multiplier
        checks.check_images_fit(total, height, width, f"{batch_size} inputs x {multiplier} samples each")
        return Batch(batch_size, multiplier, sharding.padded_size(total, self.mesh)), (height, width), pixels, given

    def _check_size(self, height: int, width: int, name: str) -> None:
        """The U-ViT's position table fixes the image size: ``sample_size`` times the VAE's factor."""
        side = self.unet.config.sample_size
        if (height // self.vae_scale_factor, width // self.vae_scale_factor) != (side, side):
            size = side * self.vae_scale_factor
            raise ValueError(f"`{name}` must be {size}x{size} (the U-ViT's sample_size times the VAE's factor), got"
                             f" {height}x{width}")

    def initial_parts(self, mode: str, batch: Batch, size: tuple[int, int], prompt: Any, prompt_embeds: Any,
                      image: Any, pixels: np.ndarray | None, given: dict[str, Any], key: jax.Array) -> dict[str, Any]:
        """The three parts at the start, (total, ...) each: the prompt's text latent (text2img) or the image's VAE
        and CLIP latents (img2text), and noise (the given latents tiled per image, else drawn) for the others."""
        total, multiplier = batch.total, batch.per_prompt
        keys = jax.random.split(key, 4)  # text, VAE, CLIP noise; the img2text VAE draw
        sigma = getattr(self.scheduler, "init_noise_sigma", 1.0)

        def noise(part: str, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
            x = given[part]
            if x is None:
                return sigma * jax.random.normal(key, shape, jnp.float32)
            return sigma * jnp.tile(jnp.asarray(x, jnp.float32), (multiplier,) + (1,) * (len(shape) - 1))

        if mode == "text2img":
            text = self.encode_prompt(prompt, multiplier, prompt_embeds)
        else:
            text = noise("text", keys[0], (total, self.text_encoder_seq_len, self.text_encoder_hidden_size))
        if self.text_intermediate_dim < self.text_encoder_hidden_size or self.mode != "text2img":
            text = self.encode_text_latents(text)  # diffusers reads the *set* mode here
        if mode == "img2text":
            return {"img_vae": self.encode_image_vae_latents(pixels, total, keys[3]),
                    "img_clip": self.encode_image_clip_latents(image, total), "text": text}
        h, w = size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor
        return {"img_vae": noise("img_vae", keys[1], (total, h, w, self.num_channels_latents)),
                "img_clip": noise("img_clip", keys[2], (total, 1, self.image_encoder_projection_dim)), "text": text}

    def sample(self, mode: str, parts: dict[str, Any], batch: Batch, num_inference_steps: int, guidance_scale: float,
               data_type: Any, eta: float, key: jax.Array, callback: Any, callback_steps: int) -> dict[str, Any]:
        """The mode's parts denoised in the shared loop (the others fixed in ``cond``); data-free guidance when
        guidance_scale > 1 in the conditional and joint modes. Returns the sampled parts on the mesh."""
        sampled = {k: parts[k] for k in _SAMPLED[mode]}
        fixed = () if mode == "joint" else tuple(k for k in parts if k not in sampled)
        cond = {k: self.shard_rows(parts[k], batch.rows) for k in fixed}
        module, params = unbind(self.unet)
        max_timestep = int(self.scheduler.config["num_train_timesteps"])
        denoiser = UniDiffuserDenoiser(module, mode, max_timestep, int(data_type or 0), batch.total)
        guided = guidance_scale > 1.0 and mode in ("text2img", "img2text", "joint")
        flat = sum(int(np.prod(v.shape[1:])) for v in sampled.values())
        state = self.prepare_timesteps(num_inference_steps, None, None, (batch.rows, flat))
        return self.denoise(denoiser, params, sampled, state, cond, guidance_scale, key, batch,
                            guidance=SeparateUnconditional() if guided else NoGuidance(), eta=eta,
                            callback=callback, callback_steps=callback_steps)

    def _split_joint(self, latents: Any, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full ``latents`` (B, D) -> (vae_latents (B, h, w, C), clip_latents (B, 1, dim), prompt_latents
        (B, seq_len, hidden_size))."""
        x = np.asarray(latents, np.float32)
        h, w, c = height // self.vae_scale_factor, width // self.vae_scale_factor, self.num_channels_latents
        a, b = h * w * c, h * w * c + self.image_encoder_projection_dim
        return (x[:, :a].reshape(-1, h, w, c), x[:, a:b].reshape(-1, 1, self.image_encoder_projection_dim),
                x[:, b:].reshape(-1, self.text_encoder_seq_len, self.text_encoder_hidden_size))

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None, call: Any) -> dict[str, Any]:
        return {}


def cli_caption(args: Any, dtype: Any) -> list[str]:
    """``jaxgen caption IMAGE... --model REPO``: img2text on each image file, resized to the U-ViT's size (512 x 512)
    as diffusers' examples do; ``--num-captions`` each, ``--steps``, ``--guidance``, ``--seed``. Returns the
    captions in diffusers' order (all images once, then again for each further caption)."""
    from jaxgen.cli import load_options

    pipe = UniDiffuserPipeline.from_pretrained(args.model, dtype=dtype, **load_options(args))
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = [PIL.Image.open(path).convert("RGB").resize((side, side)) for path in args.images]
    call = {k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance)) if v is not None}
    return pipe(image=images, num_prompts_per_image=args.num_captions, rng=args.seed, **call).text


def _check_latents_shape(name: str, latents: Any, expected: tuple[int, ...]) -> None:
    """diffusers' ``check_latents_shape``: (batch_size, *expected), same messages."""
    shape = tuple(np.shape(latents))
    text = ", ".join(str(d) for d in expected)
    if len(shape) != len(expected) + 1:
        raise ValueError(f"`{name}` should have shape (batch_size, {text}), but the current shape {shape} has"
                         f" {len(shape)} dimensions.")
    for i in range(1, len(shape)):
        if shape[i] != expected[i - 1]:
            raise ValueError(f"`{name}` should have shape (batch_size, {text}), but the current shape {shape} has"
                             f" {shape[i]} != {expected[i - 1]} at dimension {i}.")


def _tile_rows(x: jax.Array, total: int, name: str) -> jax.Array:
    """(N, ...) -> (total, ...) by repeating the whole batch (diffusers' ``torch.cat([x] * k)``)."""
    n = x.shape[0]
    if total % n:
        raise ValueError(f"Cannot duplicate `{name}` of batch size {n} to {total} text prompts.")
    return jnp.tile(x, (total // n,) + (1,) * (x.ndim - 1))
