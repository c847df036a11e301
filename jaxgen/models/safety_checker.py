"""DeepFloyd IF's safety checker: diffusers' ``IFSafetyChecker`` in Flax.

A CLIP vision tower with projection (``vision_model``) embeds the CLIP-preprocessed images; two
linear heads score them, ``p_head`` for NSFW content and ``w_head`` for watermarks. An image whose
score passes a threshold is replaced by a black image. Its config.json is a CLIPModel-style dict
(``text_config`` / ``vision_config``); only the vision tower is used.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.modeling import PretrainedModel
from jaxgen.nn.linear import Dense
from jaxgen.text.clip import CLIPVisionConfig, CLIPVisionModelWithProjection

__all__ = ["IFSafetyChecker", "check_safety"]

logger = logging.getLogger(__name__)

_NSFW_WARNING = (
    "Potential NSFW content was detected in one or more images. A black image will be returned instead."
    " Try again with a different prompt and/or seed."
)
_WATERMARK_WARNING = (
    "Potential watermarked content was detected in one or more images. A black image will be returned instead."
    " Try again with a different prompt and/or seed."
)


def _warn(nsfw_detected: np.ndarray, watermark_detected: np.ndarray) -> None:
    if np.any(nsfw_detected):
        logger.warning(_NSFW_WARNING)
    if np.any(watermark_detected):
        logger.warning(_WATERMARK_WARNING)


class IFSafetyChecker(nn.Module, PretrainedModel):
    """diffusers' ``IFSafetyChecker``.

    ``__call__(clip_input, images, p_threshold=0.5, w_threshold=0.5)`` takes ``clip_input``
    (B, image_size, image_size, 3), the CLIP image processor's ``pixel_values`` channels last, and
    ``images`` (B, ...) (the pipeline's NHWC images). Returns ``(images, nsfw_detected,
    watermark_detected)``: the images with every flagged one replaced by zeros, and two (B,) bool
    arrays (diffusers returns lists; ``.tolist()`` gives them). It logs diffusers' warnings when
    something is flagged, under ``jit`` too. ``scores(clip_input)`` gives the heads' raw outputs.
    """

    config: CLIPVisionConfig
    dtype: Any = jnp.float32

    config_class = CLIPVisionConfig

    def setup(self) -> None:
        self.vision_model = CLIPVisionModelWithProjection(self.config, dtype=self.dtype)
        self.p_head = Dense(1, dtype=self.dtype)
        self.w_head = Dense(1, dtype=self.dtype)

    def init_args(self) -> tuple:
        cfg = self.config
        return (jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32),
                jnp.zeros((1, 8, 8, 3), jnp.float32))

    def scores(self, clip_input: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The NSFW and watermark heads' raw outputs, each (B,) float32."""
        image_embeds = self.vision_model(clip_input).image_embeds
        nsfw = self.p_head(image_embeds).reshape(-1).astype(jnp.float32)
        watermark = self.w_head(image_embeds).reshape(-1).astype(jnp.float32)
        return nsfw, watermark

    def __call__(self, clip_input: jax.Array, images: jax.Array, p_threshold: float = 0.5,
                 w_threshold: float = 0.5) -> tuple[jax.Array, jax.Array, jax.Array]:
        nsfw, watermark = self.scores(clip_input)
        nsfw_detected = nsfw > p_threshold
        watermark_detected = watermark > w_threshold
        jax.debug.callback(_warn, nsfw_detected, watermark_detected)
        images = jnp.asarray(images)
        flagged = (nsfw_detected | watermark_detected).reshape((-1,) + (1,) * (images.ndim - 1))
        return jnp.where(flagged, jnp.zeros_like(images), images), nsfw_detected, watermark_detected


@functools.partial(jax.jit, static_argnames=("module",))
def check_safety(module: IFSafetyChecker, params: Any, clip_input: jax.Array, images: jax.Array):
    """The checker compiled once per module and shapes: ``module.apply`` on (clip_input NHWC, images)."""
    return module.apply({"params": params}, clip_input, images)
