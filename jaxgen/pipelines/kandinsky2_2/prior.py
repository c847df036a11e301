"""Kandinsky 2.2's priors: text (or texts and images) -> CLIP ViT-bigG image embeddings, and emb2emb.

The sampling is Kandinsky 2.1's (``jaxgen.pipelines.kandinsky.prior``: an unCLIP ``PriorTransformer``
with the ``UnCLIPScheduler``); 2.2 changes the towers (CLIP ViT-bigG, 1280 wide), ``interpolate``'s
rows (per image), and adds emb2emb: sampling that starts from an image's embedding noised to a
``strength`` fraction of the schedule.

Memory: the bigG image encoder (1.8B parameters) is only needed for image inputs and for the
zero-image embedding (the default negative). ``from_pretrained`` loads it alone first, computes that
embedding, and lets it go (``DeferredModel``) before the prior and text encoder load; an image input
loads it again, and then it stays.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

from jaxgen import hub
from jaxgen.pipelines import checks
from jaxgen.pipelines.kandinsky.prior import (
    KandinskyPriorPipeline, KandinskyPriorPipelineOutput, _as_list, _zero_image_embeds,
)
from jaxgen.pipelines.pipeline_utils import DeferredModel, as_key
from jaxgen.text.clip import CLIPVisionModelWithProjection

__all__ = ["KandinskyV22PriorPipeline", "KandinskyV22PriorEmb2EmbPipeline", "defer_image_encoder"]


def defer_image_encoder(pretrained_model_name_or_path: str | os.PathLike, *, dtype: Any, variant: str | None,
                        mesh: Any) -> DeferredModel | None:
    """The checkpoint's ``image_encoder`` as a ``DeferredModel`` whose zero-image embedding is already
    computed (the encoder loaded alone, on ``mesh`` or one device, then let go); None when it has none."""
    root = hub.resolve_checkpoint(pretrained_model_name_or_path, allow_patterns=["model_index.json"])
    entry = hub.load_model_index(root).get("image_encoder")
    if entry is None or entry[1] is None:
        return None
    deferred = DeferredModel(CLIPVisionModelWithProjection, pretrained_model_name_or_path, "image_encoder",
                             dtype=dtype, variant=variant)
    context = (lambda: jax.set_mesh(mesh)) if mesh is not None else contextlib.nullcontext
    deferred.outputs["zero_image_embeds"] = _zero_image_embeds(deferred.load(mesh), context)
    return deferred


class KandinskyV22PriorPipeline(KandinskyPriorPipeline):
    """Kandinsky 2.2's prior: ``pipe(prompt) -> KandinskyPriorPipelineOutput(image_embeds, negative_image_embeds)``,
    each (B * n, 1280). Components and arguments as ``KandinskyPriorPipeline`` (diffusers' names);
    ``interpolate`` returns (n, 1280). The image encoder is deferred by ``from_pretrained`` (module docstring)."""

    _interpolate_per_image = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, dtype: Any = jnp.float32,
                        variant: str | None = None, mesh: Any = None, **components: Any) -> "KandinskyV22PriorPipeline":
        """As ``DiffusionPipeline.from_pretrained``; the image encoder, unless given, is not kept resident:
        ``pipe.image_encoder`` is a ``DeferredModel`` until an image input needs it."""
        if "image_encoder" not in components:
            deferred = defer_image_encoder(pretrained_model_name_or_path, dtype=dtype, variant=variant, mesh=mesh)
            if deferred is not None:
                components["image_encoder"] = deferred
        return super().from_pretrained(pretrained_model_name_or_path, dtype=dtype, variant=variant, mesh=mesh,
                                       **components)


class KandinskyV22PriorEmb2EmbPipeline(KandinskyV22PriorPipeline):
    """Kandinsky 2.2 emb2emb: ``pipe(prompt, image, strength=0.3)`` -> image embeddings that start from
    ``image``'s CLIP embedding noised to the last ``strength`` fraction of the prior's schedule."""

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        strength: float = 0.3,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        rng: Any = None,
        guidance_scale: float = 4.0,
        output_type: str = "pt",
        return_dict: bool = True,
        latents: Any = None,
        **kwargs: Any,
    ) -> KandinskyPriorPipelineOutput | tuple:
        """``image``: PIL image(s) (through ``image_processor``), pixel values (N, S, S, 3), or image
        embeddings (N, 1280) used as they are; N is 1 or one per prompt. ``latents`` (a jaxgen addition):
        the noise added to the image embeddings, (B * n, 1280) (twice the rows with ``negative_prompt``,
        whose embeddings the prior samples too, as diffusers). Returns ``KandinskyPriorPipelineOutput``."""
        self.check_call(kwargs, num_images_per_prompt=num_images_per_prompt, guidance_scale=guidance_scale,
                        output_type="np", num_inference_steps=num_inference_steps)
        checks.check_embeddings_output_type(output_type)
        checks.check_strength(strength)
        prompts, negatives = _as_list(prompt, "prompt"), _as_list(negative_prompt, "negative_prompt")
        if negatives is not None:  # diffusers samples the negative prompts too, guided by themselves
            prompts, negatives = prompts + negatives, 2 * negatives
        batch = self.batch(prompts, None, num_images_per_prompt)
        self._check_image_rows(image, num_images_per_prompt, batch.total)

        init = self.init_image_embeds(image, num_images_per_prompt, batch.total)
        embeds = self.sample_embeds(prompts, negatives, num_images_per_prompt, num_inference_steps, rng, latents,
                                    guidance_scale, batch, init_embeds=init, strength=strength)
        return self.prior_output(embeds, negatives is not None, output_type, return_dict)

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None, call: Any) -> dict[str, Any]:
        """``warmup``: zero image embeddings as the ``image`` to start from."""
        return {"image": np.zeros((batch_size, self.prior.config.embedding_dim), np.float32)}

    def _check_image_rows(self, image: Any, num_images_per_prompt: int, total: int) -> None:
        count = checks.image_batch_size("image", image)
        if _is_embeds(image) and np.shape(image)[-1] != self.prior.config.embedding_dim:
            raise ValueError(f"`image` as image embeddings must be (N, {self.prior.config.embedding_dim}), got shape"
                             f" {tuple(np.shape(image))}")
        arrays = [x for x in (image if isinstance(image, (list, tuple)) else [image]) if not isinstance(x, PIL.Image.Image)]
        if arrays and not _is_embeds(image):  # CLIP pixel values, already normalised: any range, the encoder's size
            side = self.image_encoder.config.image_size
            for x in arrays:
                if not np.issubdtype(np.asarray(x).dtype, np.floating):
                    raise TypeError(f"`image` arrays are CLIP pixel values (float), got dtype {np.asarray(x).dtype}")
                if np.shape(x)[-3:] != (side, side, 3):
                    raise ValueError(f"`image` arrays are CLIP pixel values ([N,] {side}, {side}, 3), got shape"
                                     f" {tuple(np.shape(x))}")
                checks.check_finite("image", x)
        rows = count * num_images_per_prompt
        if rows > total or total % rows:
            raise ValueError(f"Cannot duplicate `image` of batch size {count} to {total} text prompts.")

    def init_image_embeds(self, image: Any, num_images_per_prompt: int, total: int) -> np.ndarray:
        """``image`` -> the embeddings sampling starts from, (total, D): each image's row repeated per image,
        the whole tiled to ``total`` rows (as diffusers' ``prepare_latents``)."""
        if _is_embeds(image):
            embeds = np.asarray(image, np.float32)
        else:
            images = image if isinstance(image, (list, tuple)) else [image]
            embeds = np.concatenate([np.asarray(self.image_embeds(self._pixel_values(x))) for x in images])
        embeds = np.repeat(embeds, num_images_per_prompt, axis=0)
        return np.tile(embeds, (total // embeds.shape[0], 1))

    def _interpolation_negative(self, run: Any, negative_prompt: str, image_embeds: jax.Array, rng: Any) -> jax.Array:
        # diffusers' emb2emb interpolate returns random normal "negative" embeddings (randn_like)
        return jax.random.normal(jax.random.fold_in(as_key(rng), 1), image_embeds.shape, jnp.float32)


def _is_embeds(image: Any) -> bool:
    return isinstance(image, (np.ndarray, jax.Array)) and np.ndim(image) == 2
