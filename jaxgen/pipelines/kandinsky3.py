"""Kandinsky 3: ``Kandinsky3Pipeline`` (text to image) and ``Kandinsky3Img2ImgPipeline``, with diffusers'
arguments, defaults, checks and outputs.

What is Kandinsky 3's own: the prompt encoding (Flan-UL2's T5 encoder on 128 tokens with its padding
mask; the embeddings zeroed on padding and cut to the longest prompt plus one token, diffusers'
``cut_context``), an unconditional half of zero embeddings with an all-zero mask instead of a second
text pass (unless a negative prompt is given), guidance written ``(g + 1) * cond - g * uncond``
(classifier-free guidance of scale g + 1, on when g > 1), and the ``Kandinsky3UNet``. The UNet sees the
cut context padded back to 128 masked tokens with its length (``padded_context``; the same output), so
one compiled loop serves every prompt length. The MoVQ (its
encode and decode, image preprocessing, the runs from noise and from an image) is Kandinsky 2.x's
(``kandinsky.common.MoVQParts``); the loop is the shared one.

Memory: Flan-UL2's encoder is 8.7B parameters (17.4 GB in bfloat16), more than a 16 GB chip holds, the
UNet 3.0B (6.0 GB). ``from_pretrained`` decides where the encoder lives from the chip's memory
(``text_encoder_plan``): on the chip with the others when all fit, else in host memory and on the chip
only while it encodes (``loading.HostModel``), and quantized to int8 while loading (on the host: the
full-precision weights never reach the chip) when even that does not fit. Peaks per plan, from XLA's
buffer assignment at real size: ``benchmarks/RESULTS.md`` (Kandinsky 3 memory); in bfloat16 at 1024 px
a 16 GiB chip runs the int8 plan at 14.6 GiB (the text phase; the denoising 7.3, the decode 11.2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import hub, sharding
from jaxgen.models.kandinsky3_unet import Kandinsky3UNet
from jaxgen.models.vq_model import VQModel
from jaxgen.pipelines import checks
from jaxgen.pipelines.kandinsky.common import MoVQParts, latent_size
from jaxgen.pipelines.loading import HostModel, config_param_bytes, quantized_components, read_on_host
from jaxgen.pipelines.outputs import ImagePipelineOutput
from jaxgen.pipelines.pipeline_utils import Batch, ComponentSpec, DiffusionPipeline, _per_image, unbind
from jaxgen.pipelines.sampling import ClassifierFreeGuidance, Denoiser, NoGuidance
from jaxgen.text.t5 import T5EncoderModel

__all__ = ["Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline", "Kandinsky3Denoiser", "text_encoder_plan",
           "padded_context", "MAX_LENGTH"]

logger = logging.getLogger(__name__)

MAX_LENGTH = 128  # diffusers' Kandinsky 3 pads and truncates prompts to 128 tokens
PARAMS_SHARE = 0.8  # of a chip's memory for all params resident: the rest for the UNet's and the decode's activations
VISIT_SHARE = 0.95  # for the T5 visiting the resident UNet and MoVQ: its own activations are small (< 0.2 GiB)


def text_encoder_plan(text_encoder_bytes: int, others_bytes: int, device_bytes: int | None) -> tuple[bool, bool]:
    """Where Kandinsky 3's T5 goes, ``(offload, int8)``, from its params' bytes per chip, the UNet's and
    MoVQ's, and a chip's memory (None: unknown, the CPU backend). All resident (False, False) when they fit
    in ``PARAMS_SHARE`` of the chip; else the T5 in host memory, visiting the chip (next to the resident
    UNet and MoVQ) only while it encodes (True, False), when that fits in ``VISIT_SHARE``: the UNet's
    steps and the decode then run without it; else the same with int8 weights (True, True)."""
    if device_bytes is None or text_encoder_bytes + others_bytes <= PARAMS_SHARE * device_bytes:
        return False, False
    return True, text_encoder_bytes + others_bytes > VISIT_SHARE * device_bytes


def padded_context(embeds: Any, mask: Any) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    """Text embeddings (N, L, D) and their mask (N, L) padded with masked zero tokens to a multiple of 128,
    so that one compiled loop serves every prompt length (the context is cut to the longest prompt + 1).
    Returns (embeddings, mask, the context length L per row (N,)): the UNet's ``context_length`` leaves the
    padding out, so its output is what diffusers' gives on the L tokens."""
    mask = np.asarray(sharding.gather_rows(mask) if isinstance(mask, jax.Array) else mask).astype(np.int32)
    rows, length = mask.shape
    pad = -(-length // MAX_LENGTH) * MAX_LENGTH - length
    return (jnp.pad(jnp.asarray(embeds), ((0, 0), (0, pad), (0, 0))), np.pad(mask, ((0, 0), (0, pad))),
            np.full((rows,), length, np.int32))


def _component_bytes(root: Any, name: str, model_class: Any, dtype: Any) -> int:
    """A component's params' bytes in ``dtype``, from its config alone; 0 if the checkpoint has none."""
    folder = hub.component_folder(root, name)
    if not (folder / model_class.config_name).is_file():
        return 0
    return config_param_bytes(model_class, folder, dtype)[1]


@dataclasses.dataclass(frozen=True)
class Kandinsky3Denoiser(Denoiser):
    """``Kandinsky3UNet`` as ``sampling.denoise`` calls it: (N, h, w, 4) latents -> epsilon (N, h, w, 4).
    cond: ``encoder_hidden_states`` (N, L, D), ``encoder_attention_mask`` (N, L) of 0/1 and, optionally,
    ``context_length`` (N,) (``padded_context``)."""

    unet: Any

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        return self.unet.apply({"params": params}, model_input.astype(self.unet.dtype), timestep,
                               cond["encoder_hidden_states"], cond["encoder_attention_mask"],
                               context_length=cond.get("context_length")).sample


class _Kandinsky3Base(MoVQParts, DiffusionPipeline):
    """What the two Kandinsky 3 pipelines share: components (diffusers' names: ``tokenizer`` (T5),
    ``text_encoder`` (``T5EncoderModel``, Flan-UL2's encoder), ``unet`` (``Kandinsky3UNet``), ``scheduler``
    (``DDPMScheduler``; any jaxgen scheduler may be swapped in), ``movq`` (``VQModel``)), the checks, the
    prompt encoding and the sampling run."""

    _components = {
        "tokenizer": ComponentSpec("tokenizer", optional=True),
        "text_encoder": ComponentSpec("model", T5EncoderModel, ("T5EncoderModel",), optional=True),
        "unet": ComponentSpec("model", Kandinsky3UNet, ("Kandinsky3UNet",)),
        "scheduler": ComponentSpec("scheduler"),
        "movq": ComponentSpec("model", VQModel, ("VQModel",), optional=True),
    }
    _cut_context = True  # encode_prompt's default (diffusers: False in the text-to-image pipeline's method)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, dtype: Any = jnp.float32,
                        variant: str | None = None, mesh: Any = None, text_encoder_offload: bool | None = None,
                        text_encoder_int8: bool | None = None, text_encoder_quantization: str | None = None,
                        model_cpu_offload: bool = False, **components: Any) -> "_Kandinsky3Base":
        """As ``DiffusionPipeline.from_pretrained``, and where the T5 lives. ``text_encoder_offload``: keep it
        in host memory, on the chips only while encoding (``pipe.text_encoder`` is then a ``HostModel``);
        ``text_encoder_int8`` (or ``text_encoder_quantization="int8"``, every pipeline's name for it): quantize its
        weights to int8 (``jaxgen.quantize``) while loading, on the host. None (default): ``text_encoder_plan``
        decides from the first chip's memory (on CPU: resident, full precision); a ``mesh`` with a ``model``
        axis divides the T5 over it. ``model_cpu_offload=True`` (every model in host memory, as after
        ``enable_model_cpu_offload()``) implies the T5's offload (``text_encoder_offload=False`` is then a ValueError)
        and holds it as the others are (an ``OffloadedModel``); the int8 default is then decided by the T5 alone on
        a chip, the UNet and MoVQ waiting on the host."""
        if model_cpu_offload and text_encoder_offload is False:
            raise ValueError("text_encoder_offload=False contradicts model_cpu_offload=True (every model in host memory)")
        if text_encoder_quantization is not None:
            quantized_components(cls._components, text_encoder_quantization, cls.__name__)  # a known kind
            if text_encoder_int8 is False:
                raise ValueError("text_encoder_int8=False contradicts text_encoder_quantization='int8'")
            text_encoder_int8 = True
        if "text_encoder" not in components and (text_encoder_offload is not False or text_encoder_int8):
            root = hub.resolve_checkpoint(pretrained_model_name_or_path, allow_patterns=["*.json"], variant=variant)
            if (hub.load_model_index(root).get("text_encoder") or [None, None])[1] is not None:
                shards = mesh.shape.get("model", 1) if mesh is not None else 1
                others = 0 if model_cpu_offload else (  # offloaded, the T5 is alone on the chip when it runs
                    _component_bytes(root, "unet", Kandinsky3UNet, dtype) + _component_bytes(root, "movq", VQModel, dtype))
                plan = text_encoder_plan(_component_bytes(root, "text_encoder", T5EncoderModel, dtype) // shards,
                                         others, sharding.device_memory_bytes())
                offload = plan[0] if text_encoder_offload is None else text_encoder_offload
                int8 = plan[1] if text_encoder_int8 is None else text_encoder_int8
                if plan[1] and text_encoder_int8 is None:
                    logger.warning("jaxgen: Kandinsky 3's T5 does not fit on one chip in %s: its weights are quantized"
                                   " to int8 while loading (text_encoder_int8=False keeps them)", jnp.dtype(dtype).name)
                if offload and not model_cpu_offload:  # with it, the base reads every model to the host
                    components["text_encoder"] = HostModel(*read_on_host(
                        T5EncoderModel, pretrained_model_name_or_path, subfolder="text_encoder", dtype=dtype,
                        variant=variant, int8=int8))
                elif int8:  # quantized on the host while loading, then placed (or held there, model_cpu_offload)
                    text_encoder_quantization = "int8"
        return super().from_pretrained(pretrained_model_name_or_path, dtype=dtype, variant=variant, mesh=mesh,
                                       text_encoder_quantization=text_encoder_quantization,
                                       model_cpu_offload=model_cpu_offload, **components)

    # -- checks --------------------------------------------------------------------------------

    def check_inputs(self, prompt, callback_steps, negative_prompt=None, prompt_embeds=None,
                     negative_prompt_embeds=None, callback_on_step_end_tensor_inputs=None, attention_mask=None,
                     negative_attention_mask=None) -> None:
        """diffusers' checks, same messages: the prompt arguments, and embeddings given with their masks."""
        checks.check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                      self.prompt_embeds_width)
        pairs = (("prompt_embeds", prompt_embeds, "attention_mask", attention_mask),
                 ("negative_prompt_embeds", negative_prompt_embeds, "negative_attention_mask", negative_attention_mask))
        for embeds_name, embeds, mask_name, mask in pairs:
            if embeds is None:
                continue
            if mask is None:
                raise ValueError(f"Please provide `{mask_name}` along with `{embeds_name}`")
            if tuple(np.shape(embeds)[:2]) != tuple(np.shape(mask)):
                raise ValueError(
                    f"`{embeds_name}` and `{mask_name}` must have the same batch_size and token length when passed"
                    f" directly, but got: `{embeds_name}` {tuple(np.shape(embeds)[:2])} != `{mask_name}`"
                    f" {tuple(np.shape(mask))}."
                )

    def begin(self, kwargs: dict, prompt: Any, callback_steps: Any, negative_prompt: Any, prompt_embeds: Any,
              negative_prompt_embeds: Any, attention_mask: Any, negative_attention_mask: Any, *,
              num_images_per_prompt: Any, guidance_scale: Any, output_type: Any, num_inference_steps: Any,
              image_size: tuple[int, int] | None = None) -> Batch:
        """The checks a call starts with, before anything is encoded or compiled; returns the call's rows
        (``image_size``: the output's (height, width) where known, for ``batch``'s memory check)."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type=output_type, num_inference_steps=num_inference_steps)
        self.check_inputs(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds, None,
                          attention_mask, negative_attention_mask)
        return self.batch(prompt, prompt_embeds, num_images_per_prompt, image_size)

    # -- text ----------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        do_classifier_free_guidance: bool = True,
        num_images_per_prompt: int = 1,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        _cut_context: bool | None = None,
        attention_mask: Any = None,
        negative_attention_mask: Any = None,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array, jax.Array | None]:
        """Flan-UL2 embeddings of the prompts and, with guidance, the unconditional half.

        Prompts are padded to 128 tokens and encoded with their mask; the embeddings are zeroed on padding
        and (``_cut_context``, the pipelines' choice) cut to the longest prompt's tokens plus one. The
        unconditional half is zeros with an all-zero mask when no ``negative_prompt`` is given, else the
        negative prompts encoded and cut to the prompts' length. Given embeddings are used as they are.
        Returns diffusers' ``(prompt_embeds (B*n, L, D), negative_prompt_embeds or None, attention_mask
        (B*n, L), negative_attention_mask or None)``, each prompt's rows repeated ``num_images_per_prompt`` times.
        """
        if prompt is not None and negative_prompt is not None and type(prompt) is not type(negative_prompt):
            raise TypeError(
                f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} !="
                f" {type(prompt)}."
            )
        batch_size = checks.prompt_batch_size(prompt, prompt_embeds)
        if prompt_embeds is None:
            cut = self._cut_context if _cut_context is None else _cut_context
            prompt_embeds, attention_mask = self._encode([prompt] if isinstance(prompt, str) else list(prompt),
                                                         None if cut else MAX_LENGTH)
        n, dtype = num_images_per_prompt, self.embeds_dtype()
        prompt_embeds = _per_image(prompt_embeds, "prompt_embeds", n, dtype)
        attention_mask = _per_image(attention_mask, "attention_mask", n)
        if not do_classifier_free_guidance:
            return prompt_embeds, None, attention_mask, None
        if negative_prompt_embeds is None and negative_prompt is None:  # Kandinsky 3's unconditional half
            return prompt_embeds, jnp.zeros_like(prompt_embeds), attention_mask, jnp.zeros_like(attention_mask)
        if negative_prompt_embeds is None:
            texts = checks.negative_prompts(negative_prompt, prompt, batch_size)
            negative_prompt_embeds, negative_attention_mask = self._encode(texts, prompt_embeds.shape[1])
        return (prompt_embeds, _per_image(negative_prompt_embeds, "negative_prompt_embeds", n, dtype), attention_mask,
                _per_image(negative_attention_mask, "negative_attention_mask", n))

    def _encode(self, texts: list[str], length: int | None) -> tuple[jax.Array, jax.Array]:
        """T5 on ``texts`` padded to 128 tokens -> (embeddings zeroed on padding (N, L, D), mask (N, L)),
        cut to ``length`` tokens, or (None) to the longest text's tokens plus one."""
        (embeds,), mask = self.encode_texts(texts, MAX_LENGTH, warn_truncation=True)
        if length is None:
            length = min(int(np.asarray(mask).sum(-1).max()) + 1, MAX_LENGTH)
        mask = mask[:, :length]
        return embeds[:, :length] * mask[..., None].astype(embeds.dtype), mask

    # -- the run -------------------------------------------------------------------------------

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the UNet denoises (4)."""
        return self.unet.config.in_channels

    @property
    def prompt_embeds_width(self) -> int:
        """Flan-UL2's width, which the UNet's text projection takes (4096)."""
        return self.unet.config.encoder_hid_dim

    def sample(self, latents: Any, state: Any, embeds: tuple, guidance_scale: float, key: jax.Array, batch: Batch, *,
               callback: Callable | None = None, callback_steps: int = 1) -> jax.Array:
        """The UNet in the shared loop; ``embeds``: ``encode_prompt``'s four values (negatives None: no guidance)."""
        module, params = unbind(self.unet)
        positive = padded_context(embeds[0], embeds[2])
        negative = padded_context(embeds[1], embeds[3]) if embeds[1] is not None else (None, None, None)
        cond = {name: self.guidance_rows(pos, neg, batch.rows, dtype) for name, pos, neg, dtype in zip(
            ("encoder_hidden_states", "encoder_attention_mask", "context_length"), positive, negative,
            (module.dtype, jnp.int32, jnp.int32))}
        guidance = NoGuidance() if embeds[1] is None else ClassifierFreeGuidance()
        # diffusers' (g + 1) * cond - g * uncond is uncond + (g + 1) * (cond - uncond)
        return self.denoise(Kandinsky3Denoiser(module), params, latents, state, cond, guidance_scale + 1.0, key, batch,
                            guidance=guidance, callback=callback, callback_steps=callback_steps)

    def _placeholder_embeds(self, batch_size: int, guided: bool, call: Any) -> dict[str, Any]:
        embeds = np.zeros((batch_size, 2, self.unet.config.encoder_hid_dim), np.float32)
        mask = np.ones((batch_size, 2), np.int32)
        negative = dict(negative_prompt_embeds=embeds, negative_attention_mask=0 * mask) if guided else {}
        return dict(prompt_embeds=embeds, attention_mask=mask, **negative)


class Kandinsky3Pipeline(_Kandinsky3Base):
    """Kandinsky 3 text to image: ``pipe(prompt) -> ImagePipelineOutput(images)`` (1024 x 1024 by default).
    Components as diffusers' (see ``_Kandinsky3Base``)."""

    _cut_context = False  # diffusers' encode_prompt default here; __call__ cuts

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        height: int = 1024,
        width: int = 1024,
        rng: Any = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        attention_mask: Any = None,
        negative_attention_mask: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        latents: Any = None,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments (``generator`` is ``rng``); images ``height`` x ``width`` rounded up to multiples
        of 64; ``latents``: the initial noise (B * n, height / 8, width / 8, 4), channels last."""
        checks.check_size(height, width)
        batch = self.begin(kwargs, prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           attention_mask, negative_attention_mask, num_images_per_prompt=num_images_per_prompt,
                           guidance_scale=guidance_scale, output_type=output_type,
                           num_inference_steps=num_inference_steps, image_size=(height, width))
        shape = (batch.total, *latent_size(height, width, self.movq_scale_factor), self.latent_channels)
        checks.check_latents(latents, shape)

        embeds = self.encode_prompt(prompt, guidance_scale > 1.0, num_images_per_prompt, negative_prompt, prompt_embeds,
                                    negative_prompt_embeds, True, attention_mask, negative_attention_mask)
        latents = self.sample_from_noise(latents, shape, num_inference_steps, guidance_scale, rng, batch, embeds,
                                         callback=callback, callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)


class Kandinsky3Img2ImgPipeline(_Kandinsky3Base):
    """Kandinsky 3 image to image: ``pipe(prompt, image, strength=0.3) -> ImagePipelineOutput(images)``, the
    image's size. Components as ``Kandinsky3Pipeline``."""

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        strength: float = 0.3,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        prompt_embeds: Any = None,
        negative_prompt_embeds: Any = None,
        attention_mask: Any = None,
        negative_attention_mask: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        latents: Any = None,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """Transform ``image`` (PIL, rounded down to multiples of 8 as diffusers; or arrays (N, H, W, 3) in
        [0, 1]; one, or one per prompt) by the prompt: its MoVQ latents noised to the last ``strength`` of the
        schedule, then denoised. ``latents``: the noise added (B * n, H / 8, W / 8, 4), channels last."""
        batch = self.begin(kwargs, prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           attention_mask, negative_attention_mask, num_images_per_prompt=num_images_per_prompt,
                           guidance_scale=guidance_scale, output_type=output_type,
                           num_inference_steps=num_inference_steps)
        checks.check_strength(strength)
        init = self.preprocess_init_image(image, batch)
        checks.check_images_fit(batch.total, *init.shape[1:3],
                                f"{batch.prompts} prompts x `num_images_per_prompt` = {num_images_per_prompt}")
        factor = self.movq_scale_factor
        shape = (batch.total, init.shape[1] // factor, init.shape[2] // factor, self.latent_channels)
        checks.check_latents(latents, shape)

        embeds = self.encode_prompt(prompt, guidance_scale > 1.0, num_images_per_prompt, negative_prompt, prompt_embeds,
                                    negative_prompt_embeds, True, attention_mask, negative_attention_mask)
        latents = self.sample_from_image(init, latents, shape, strength, num_inference_steps, guidance_scale, rng,
                                         batch, embeds, callback=callback, callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)

    def preprocess_init_image(self, image: Any, batch: Batch) -> np.ndarray:
        """``image`` -> float32 (B, H, W, 3) in [-1, 1], one row per prompt. H and W must be multiples of
        the MoVQ's factor times the UNet's (64: the MoVQ halves three times, the UNet three more); a
        ValueError names the size otherwise."""
        if image is None:
            raise ValueError("`image` must be given: the image to transform (PIL, or (N, H, W, 3) in [0, 1])")
        count = checks.image_batch_size("image", image)
        if count not in (1, batch.prompts):
            raise ValueError(f"`image` has {count} images: expected 1 or one per prompt ({batch.prompts})")
        out = self.preprocess_image(image, None, None)
        multiple = self.movq_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        height, width = out.shape[1:3]
        if height % multiple or width % multiple:
            fit = lambda n: max(multiple, n // multiple * multiple)
            raise ValueError(
                f"`image` is {height}x{width} (height x width) after preprocessing, but Kandinsky 3 takes sides that"
                f" are multiples of {multiple} (the MoVQ and the UNet halve it {multiple.bit_length() - 1} times):"
                f" resize or crop it, e.g. to {fit(height)}x{fit(width)}"
            )
        return np.broadcast_to(out, (batch.prompts, *out.shape[1:])).copy()

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None, call: Any) -> dict[str, Any]:
        """``warmup``: a gray image of ``height`` x ``width`` (1024 by default)."""
        return {"image": np.full((batch_size, height or 1024, width or 1024, 3), 0.5, np.float32)}
