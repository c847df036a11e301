"""Kandinsky 2.2's decoders: text-to-image, image-to-image, inpainting and the depth ControlNet's two,
from the prior's image embeddings alone (2.2's UNet reads no text).

They reuse 2.1's parts (``jaxgen.pipelines.kandinsky.common``: the UNet adapter, the MoVQ, the checks,
the sampling run); what is 2.2's own: no text encoder, diffusers' scheduler noising for
image-to-image (``add_noise`` at the first timestep, not 2.1's fixed schedule), inpainting that puts
the re-noised known region back after every step as well as feeding the mask channels, and the
ControlNet's ``hint`` (a depth map) that the UNet encodes and joins to the latents.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from jaxgen.models.unet_2d_condition import UNet2DConditionModel
from jaxgen.models.vq_model import VQModel
from jaxgen.pipelines import checks, tasks
from jaxgen.pipelines.kandinsky.common import HINT_FACTOR, KandinskyDecoderBase, latent_size
from jaxgen.pipelines.kandinsky.decoder import InpaintingParts, masked_image_channels
from jaxgen.pipelines.outputs import ImagePipelineOutput
from jaxgen.pipelines.pipeline_utils import Batch, ComponentSpec
from jaxgen.pipelines.sampling import PostStep

__all__ = [
    "KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline", "KandinskyV22InpaintPipeline",
    "KandinskyV22ControlnetPipeline", "KandinskyV22ControlnetImg2ImgPipeline", "KeepNoisedKnown",
]

class KandinskyV22DecoderBase(KandinskyDecoderBase):
    """What Kandinsky 2.2's decoders share: components ``unet``, ``scheduler`` (DDIM) and ``movq``; the
    call's rows are the rows of ``image_embeds`` (no prompt); the hint; image-to-image's start."""

    _components = {
        "unet": ComponentSpec("model", UNet2DConditionModel, ("UNet2DConditionModel",)),
        "scheduler": ComponentSpec("scheduler"),
        "movq": ComponentSpec("model", VQModel, ("VQModel",), optional=True),
    }
    _takes_hint = False

    def begin(self, *args: Any, **kwargs: Any) -> tuple[Batch, tuple]:
        """``KandinskyDecoderBase.begin``, after checking that the UNet and this pipeline agree on the hint."""
        if (self.unet.config.addition_embed_type == "image_hint") != self._takes_hint:
            raise ValueError(
                f"{type(self).__name__} {'needs' if self._takes_hint else 'cannot run'} a UNet conditioned on a"
                f" hint (addition_embed_type 'image_hint'); this UNet's is {self.unet.config.addition_embed_type!r}:"
                f" use {'KandinskyV22Pipeline' if self._takes_hint else 'KandinskyV22ControlnetPipeline'} (or its"
                " Img2Img form) for it"
            )
        return super().begin(*args, **kwargs)

    def preprocess_hint(self, hint: Any, batch: Batch, height: int, width: int) -> np.ndarray:
        """``hint`` (the depth map: PIL image(s), resized; or arrays (N, H, W, 3) in [0, 1] of the size the
        UNet needs: 8x the latents', i.e. the image size rounded up to 64) -> float32 (B * n, H, W, 3),
        one or one per prompt, repeated per image."""
        if hint is None:
            raise ValueError("`hint` must be given: the ControlNet's condition, (N, H, W, 3) in [0, 1] (a depth map)")
        count = checks.image_batch_size("hint", hint)
        if count not in (1, batch.prompts):
            raise ValueError(f"`hint` has {count} images: expected 1 or one per row of `image_embeds` ({batch.prompts})")
        size = tuple(HINT_FACTOR * s for s in latent_size(height, width, self.movq_scale_factor))
        out = self.preprocess_image(hint, *size, name="hint", normalize=False)
        return np.repeat(np.broadcast_to(out, (batch.prompts, *out.shape[1:])), batch.per_prompt, axis=0)

    def _placeholder_embeds(self, batch_size: int, guided: bool, call: Any) -> dict[str, Any]:
        return {}  # no prompt: ``_placeholder_images`` gives the image embeddings


class KandinskyV22Pipeline(KandinskyV22DecoderBase):
    """Kandinsky 2.2 text to image: ``pipe(image_embeds, negative_image_embeds) -> ImagePipelineOutput``;
    the embeddings (B, 1280) from ``KandinskyV22PriorPipeline``."""

    def __call__(
        self,
        image_embeds: Any,
        negative_image_embeds: Any,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments (``generator`` is ``rng``); ``latents``: the initial noise (B * n, h, w, 4),
        channels last; images ``height`` x ``width`` rounded up to multiples of 64."""
        batch, embeds = self.begin(kwargs, None, image_embeds, negative_image_embeds, height, width,
                                   num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                                   output_type=output_type, num_inference_steps=num_inference_steps)
        shape = self.latents_shape(batch, height, width, self.unet.config.in_channels)
        checks.check_latents(latents, shape)

        latents = self.sample_from_noise(latents, shape, num_inference_steps, guidance_scale, rng, batch, embeds,
                                         callback=callback, callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)


class KandinskyV22Img2ImgPipeline(KandinskyV22DecoderBase):
    """Kandinsky 2.2 image to image: ``pipe(image_embeds, image, negative_image_embeds, strength=0.3)``."""

    def __call__(
        self,
        image_embeds: Any,
        image: Any,
        negative_image_embeds: Any,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """``image``: PIL image(s) (resized to ``width`` x ``height``, bicubic) or NHWC arrays in [0, 1] of that
        size, one per row of ``image_embeds``. ``latents`` (a jaxgen addition): the noise added to the
        encoded images, (B * n, height/8, width/8, 4)."""
        batch, embeds = self.begin(kwargs, None, image_embeds, negative_image_embeds, height, width,
                                   num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                                   output_type=output_type, num_inference_steps=num_inference_steps,
                                   images={"image": image})
        checks.check_strength(strength)
        init = self.preprocess_image(image, height, width)
        shape = self.latents_shape(batch, height, width)
        checks.check_latents(latents, shape)

        latents = self.sample_from_image(init, latents, shape, strength, num_inference_steps, guidance_scale, rng,
                                         batch, embeds, callback=callback, callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)


class KandinskyV22InpaintPipeline(InpaintingParts, KandinskyV22DecoderBase):
    """Kandinsky 2.2 inpainting: ``pipe(image_embeds, image, mask_image, negative_image_embeds)``; white
    (>= 0.5) in ``mask_image`` is repainted. The UNet sees the mask channels, and after every step the
    kept region is put back, noised to the next timestep (``KeepNoisedKnown``)."""

    def __call__(
        self,
        image_embeds: Any,
        image: Any,
        mask_image: Any,
        negative_image_embeds: Any,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """``image``: one per row of ``image_embeds``; ``mask_image``: one or one per row (PIL, or arrays (H, W)
        / (N, H, W) in [0, 1] of the image's size). ``latents``: the initial noise (B * n, h, w, 4)."""
        batch, embeds = self.begin(kwargs, None, image_embeds, negative_image_embeds, height, width,
                                   num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                                   output_type=output_type, num_inference_steps=num_inference_steps,
                                   images={"image": image, "mask_image": mask_image})
        init = self.preprocess_image(image, height, width)
        mask = self.preprocess_mask(mask_image, height, width)
        tasks.check_mask_size(mask, init, "image")
        shape = self.latents_shape(batch, height, width)
        checks.check_latents(latents, shape)
        self.check_unet_channels(shape[-1])

        image_latents, keep = self.masked_image_latents(init, mask)
        per_image = {name: np.repeat(x, num_images_per_prompt, axis=0) for name, x in (
            ("extra_channels", masked_image_channels(image_latents, keep)), ("known", image_latents), ("keep", keep))}
        latents = self.sample_from_noise(latents, shape, num_inference_steps, guidance_scale, rng, batch, embeds,
                                         per_image=per_image, noise_to_cond=True, post_step=KeepNoisedKnown(),
                                         callback=callback, callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)


@dataclasses.dataclass(frozen=True)
class KeepNoisedKnown(PostStep):
    """Inpainting after each step (Kandinsky 2.2, as Stable Diffusion's): where ``cond["keep"]`` is 1 the
    latents become the known image's latents ``cond["known"]`` noised to the next step's timestep with
    the initial noise ``cond["noise"]`` (clean after the last step); elsewhere they keep the step.
    Every row uses its own image and mask (diffusers uses the first image's for all rows)."""

    def __call__(self, latents: Any, previous: Any, cond: Any, scheduler: Any, state: Any) -> Any:
        i, n = state.step_index, state.timesteps.shape[0]
        known = cond["known"].astype(jnp.float32)
        t = jnp.broadcast_to(state.timesteps[jnp.minimum(i, n - 1)], (known.shape[0],))
        known = jnp.where(i < n, scheduler.add_noise(state, known, cond["noise"], t), known)
        keep = cond["keep"].astype(latents.dtype)
        return keep * known.astype(latents.dtype) + (1 - keep) * latents


class KandinskyV22ControlnetPipeline(KandinskyV22DecoderBase):
    """Kandinsky 2.2 with the depth ControlNet: ``pipe(image_embeds, negative_image_embeds, hint)``; ``hint``
    is the depth map (B or 1, H, W, 3) in [0, 1] (or PIL), H x W the image size rounded up to 64."""

    _takes_hint = True

    def __call__(
        self,
        image_embeds: Any,
        negative_image_embeds: Any,
        hint: Any,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments; the hint is repeated per image whether or not guidance is on (diffusers
        repeats it only with guidance, and then fails for ``num_images_per_prompt`` > 1)."""
        batch, embeds = self.begin(kwargs, None, image_embeds, negative_image_embeds, height, width,
                                   num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                                   output_type=output_type, num_inference_steps=num_inference_steps)
        hint = self.preprocess_hint(hint, batch, height, width)
        shape = self.latents_shape(batch, height, width)
        checks.check_latents(latents, shape)

        latents = self.sample_from_noise(latents, shape, num_inference_steps, guidance_scale, rng, batch, embeds,
                                         per_image={"hint": hint}, callback=callback, callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)


class KandinskyV22ControlnetImg2ImgPipeline(KandinskyV22DecoderBase):
    """Kandinsky 2.2 image to image with the depth ControlNet: ``pipe(image_embeds, image, negative_image_embeds,
    hint, strength=0.3)``."""

    _takes_hint = True

    def __call__(
        self,
        image_embeds: Any,
        image: Any,
        negative_image_embeds: Any,
        hint: Any,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> ImagePipelineOutput | tuple:
        """As ``KandinskyV22Img2ImgPipeline`` plus ``hint`` (as ``KandinskyV22ControlnetPipeline``)."""
        batch, embeds = self.begin(kwargs, None, image_embeds, negative_image_embeds, height, width,
                                   num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                                   output_type=output_type, num_inference_steps=num_inference_steps,
                                   images={"image": image})
        checks.check_strength(strength)
        hint = self.preprocess_hint(hint, batch, height, width)
        init = self.preprocess_image(image, height, width)
        shape = self.latents_shape(batch, height, width)
        checks.check_latents(latents, shape)

        latents = self.sample_from_image(init, latents, shape, strength, num_inference_steps, guidance_scale, rng,
                                         batch, embeds, per_image={"hint": hint}, callback=callback,
                                         callback_steps=callback_steps)
        return self.output(latents, batch, output_type, return_dict)
