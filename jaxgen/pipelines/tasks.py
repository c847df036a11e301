"""Tasks as parts a family combines: image-to-image, inpainting, super-resolution conditioning.

Text-to-image is the base case (``DiffusionPipeline.initial_noise`` times the scheduler's
``init_noise_sigma``, from the first timestep). The others change where sampling starts, what
happens after each step, or what the model sees besides the latents:

- image-to-image: ``strength`` picks the first step (``start_at_strength``, diffusers'
  ``get_timesteps``) and the init latents are noised to it (``noised_to_start``);
- inpainting: the mask is binarized and repeated per image (``repeat_mask``); either the known
  region is put back after every step (``KeepUnmasked``, DeepFloyd IF) or the mask and the masked
  image go to the model as extra channels (``cond["extra_channels"]``, see ``sampling.Denoiser``);
- super-resolution: the low-resolution image, noised to ``noise_level``, joins the latents as extra
  channels and the noise level is the model's class label (``noise_level_condition``).

A family's img2img or inpainting pipeline is then its own checks, encoding and preprocessing plus
these calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.pipelines.sampling import PostStep

__all__ = [
    "start_at_strength", "noised_to_start", "KeepUnmasked", "repeat_mask", "check_mask_size",
    "noise_level_condition",
]


def start_at_strength(state: Any, strength: float, order: int = 1) -> Any:
    """img2img: begin the schedule at its last ``strength`` fraction (diffusers' ``get_timesteps``):
    the state with ``step_index`` at ``N - int(N * strength)`` steps (times the scheduler's ``order``).
    Raises diffusers' error when no step would be left."""
    n = int(state.timesteps.shape[0])
    begin = max(n - min(int(n * strength), n), 0) * order
    if begin >= n:
        raise ValueError(
            f"After adjusting the num_inference_steps by strength parameter: {strength}, the number of pipeline"
            f" steps is {n - begin} which is < 1 and not appropriate for this pipeline."
        )
    step_index = jnp.asarray(begin, jnp.int32)
    if isinstance(state.step_index, jax.Array):  # placed as before, so text-to-image's compiled loop is reused
        step_index = jax.device_put(step_index, state.step_index.sharding)
    return state.replace(step_index=step_index)


def noised_to_start(scheduler: Any, state: Any, init: Any, noise: jax.Array) -> jax.Array:
    """The init latents (or pixels) (N, ...) noised to the timestep sampling starts at (the state's
    ``step_index``): ``scheduler.add_noise``, q(x_t | x_0)."""
    first = np.asarray(state.timesteps)[int(state.step_index)]
    timesteps = jnp.full((noise.shape[0],), first, jnp.asarray(state.timesteps).dtype)
    return scheduler.add_noise(state, jnp.asarray(init), noise, timesteps)


@dataclasses.dataclass(frozen=True)
class KeepUnmasked(PostStep):
    """Inpainting by blending after every step: where ``cond["mask"]`` is 0 the latents go back to
    what they were before the step, where it is 1 they take the step (DeepFloyd IF's inpainting)."""

    def __call__(self, latents: Any, previous: Any, cond: Any, scheduler: Any, state: Any) -> Any:
        mask = cond["mask"].astype(latents.dtype)
        return (1 - mask) * previous + mask * latents


def repeat_mask(mask: np.ndarray, total: int, num_images_per_prompt: int) -> np.ndarray:
    """A preprocessed mask batch (1 or B, H, W, 1) -> one row per image: one mask for all, else each
    prompt's mask repeated ``num_images_per_prompt`` times."""
    return np.repeat(mask, total, axis=0) if mask.shape[0] == 1 else np.repeat(mask, num_images_per_prompt, axis=0)


def check_mask_size(mask: np.ndarray, image: np.ndarray, image_name: str) -> None:
    """The mask and the image it applies to must have the same height and width (after preprocessing)."""
    if mask.shape[1:3] != image.shape[1:3]:
        raise ValueError(
            f"`mask_image` is {mask.shape[1]}x{mask.shape[2]} but `{image_name}` is {image.shape[1]}x{image.shape[2]}"
            " (after preprocessing): they must have the same size"
        )


def noise_level_condition(noised_image: Any, noise_level: int, total: int) -> dict[str, np.ndarray]:
    """Super-resolution conditioning for ``total`` rows: the low-resolution image already noised to
    ``noise_level`` (and resized to the latents' size) as extra input channels, and the noise level
    as the model's class label (the x4 upscaler, DeepFloyd IF stage II)."""
    return {"extra_channels": np.asarray(noised_image), "class_labels": np.full((total,), noise_level, np.int32)}
