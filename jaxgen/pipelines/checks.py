"""The argument checks every pipeline shares, with diffusers' messages where diffusers has one.

Each raises before anything is encoded, compiled or allocated, naming the argument and what was
expected. Pipelines call them from their ``check_inputs`` (diffusers' per-pipeline checks) and
through ``DiffusionPipeline.check_call`` (the run options every ``__call__`` takes).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
import PIL.Image

from jaxgen.image_processing import OUTPUT_TYPES

__all__ = [
    "check_call_kwargs", "check_run_options", "check_embeddings_output_type", "check_prompt_arguments",
    "prompt_batch_size", "negative_prompts", "check_strength", "check_size", "image_batch_size",
    "check_image_argument", "check_mask_argument", "check_latents",
]


def check_call_kwargs(pipeline: str, kwargs: Mapping[str, Any]) -> None:
    """The ``**kwargs`` of a ``__call__`` after the ones it knows were taken: ``generator`` gets a pointer
    to ``rng``; anything else is an unexpected argument (TypeError, as Python would raise)."""
    if "generator" in kwargs:
        raise TypeError("jaxgen pipelines take `rng` (an int seed or a jax.random key) instead of `generator`")
    if kwargs:
        raise TypeError(f"{pipeline}.__call__() got unexpected keyword arguments {sorted(kwargs)}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def check_run_options(
    *,
    num_images_per_prompt: Any = 1,
    guidance_scale: Any = 1.0,
    output_type: Any = "pil",
    num_inference_steps: Any = 1,
    timesteps: Any = None,
    sigmas: Any = None,
    cross_attention_kwargs: Any = None,
) -> None:
    """The options every pipeline's ``__call__`` takes."""
    if cross_attention_kwargs:
        raise ValueError(f"`cross_attention_kwargs` are not supported by jaxgen (got keys {sorted(cross_attention_kwargs)})")
    if not _positive_int(num_images_per_prompt):
        raise ValueError(f"`num_images_per_prompt` has to be a positive integer but is {num_images_per_prompt}.")
    if guidance_scale < 0:
        raise ValueError(f"`guidance_scale` has to be >= 0 (1 or less turns guidance off) but is {guidance_scale}.")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(
            f"`output_type` has to be one of 'pil', 'np', 'latent' (the NHWC latents; diffusers' 'pt') but is"
            f" {output_type!r}."
        )
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is None and sigmas is None and not _positive_int(num_inference_steps):
        raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps}.")


def check_embeddings_output_type(output_type: Any) -> None:
    """The output types of pipelines that return embeddings (priors): "pt" (jax arrays here) or "np"."""
    if output_type not in ("pt", "np"):
        raise ValueError(f"Only the output types `pt` and `np` are supported not output_type={output_type}")


def check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds) -> None:
    """The prompt checks diffusers' text-to-image pipelines share, with their messages."""
    if callback_steps is None or not _positive_int(callback_steps):
        raise ValueError(
            f"`callback_steps` has to be a positive integer but is {callback_steps} of type {type(callback_steps)}."
        )
    if prompt is not None and prompt_embeds is not None:
        raise ValueError(
            f"Cannot forward both `prompt`: {prompt} and `prompt_embeds`: {prompt_embeds}. Please make sure to"
            " only forward one of the two."
        )
    if prompt is None and prompt_embeds is None:
        raise ValueError(
            "Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined."
        )
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError(
            f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`:"
            f" {negative_prompt_embeds}. Please make sure to only forward one of the two."
        )
    if prompt_embeds is not None and negative_prompt_embeds is not None:
        if np.shape(prompt_embeds) != np.shape(negative_prompt_embeds):
            raise ValueError(
                "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                f" got: `prompt_embeds` {np.shape(prompt_embeds)} != `negative_prompt_embeds`"
                f" {np.shape(negative_prompt_embeds)}."
            )


def prompt_batch_size(prompt: Any, prompt_embeds: Any) -> int:
    """How many prompts a call has: 1 for a string, a list's length, else ``prompt_embeds``' rows."""
    if prompt is None and prompt_embeds is None:
        raise ValueError(
            "Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined."
        )
    if prompt is not None:
        return 1 if isinstance(prompt, str) else len(prompt)
    return int(np.shape(prompt_embeds)[0])


def negative_prompts(negative_prompt: str | list[str] | None, prompt: Any, batch_size: int) -> list[str]:
    """The unconditional texts for a batch, as diffusers' encode_prompt makes them: "" for None, a string
    repeated, or a list of the batch's length (else diffusers' error)."""
    if negative_prompt is None:
        return [""] * batch_size
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch_size
    if batch_size != len(negative_prompt):
        raise ValueError(
            f"`negative_prompt`: {negative_prompt} has batch size {len(negative_prompt)}, but `prompt`:"
            f" {prompt} has batch size {batch_size}. Please make sure that passed `negative_prompt` matches"
            " the batch size of `prompt`."
        )
    return list(negative_prompt)


def check_strength(strength: Any) -> None:
    """img2img's ``strength``: a number in [0, 1] (diffusers' message)."""
    if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 <= strength <= 1:
        raise ValueError(f"The value of strength should in [0.0, 1.0] but is {strength}")


def check_size(height: Any, width: Any, multiple: int = 1) -> None:
    """``height`` and ``width``: positive integers, divisible by ``multiple`` (diffusers' message for 8)."""
    if not (_positive_int(height) and _positive_int(width)):
        raise ValueError(f"`height` and `width` have to be positive integers but are {height} and {width}.")
    if height % multiple or width % multiple:
        raise ValueError(f"`height` and `width` have to be divisible by {multiple} but are {height} and {width}.")


def _is_image(x: Any) -> bool:
    return isinstance(x, (PIL.Image.Image, np.ndarray, jax.Array))


def image_batch_size(name: str, image: Any) -> int:
    """diffusers' type check of an image argument; returns its batch size (an array of rank <= 3 is one image)."""
    first = image[0] if isinstance(image, (list, tuple)) and len(image) else image
    if not _is_image(first):
        raise ValueError(
            f"`{name}` has to be of type `PIL.Image.Image`, `np.ndarray`, `jax.Array`, or list[...] but is {type(first)}"
        )
    if isinstance(image, (list, tuple)):
        return len(image)
    if isinstance(image, PIL.Image.Image) or np.ndim(image) <= 3:
        return 1
    return int(np.shape(image)[0])


def check_image_argument(name: str, image: Any, batch_size: int) -> None:
    """An image argument that takes one image per prompt (diffusers' IF message)."""
    if image is None:
        raise ValueError(f"`{name}` must be given")
    image_batch = image_batch_size(name, image)
    if batch_size != image_batch:
        raise ValueError(f"{name} batch size: {image_batch} must be same as prompt batch size {batch_size}")


def check_mask_argument(mask_image: Any, batch_size: int) -> None:
    """``mask_image``: one mask for all prompts or one per prompt (diffusers' IF message)."""
    if mask_image is None:
        raise ValueError("`mask_image` must be given")
    mask_batch = image_batch_size("mask_image", mask_image)
    if isinstance(mask_image, (np.ndarray, jax.Array)) and np.ndim(mask_image) == 3 and np.shape(mask_image)[-1] != 1:
        mask_batch = int(np.shape(mask_image)[0])  # (N, H, W)
    if mask_batch != 1 and batch_size != mask_batch:
        raise ValueError(f"mask_image batch size: {mask_batch} must be `1` or the same as prompt batch size {batch_size}")


def check_latents(latents: Any, shape: tuple[int, ...]) -> None:
    """Given initial noise must have the shape the pipeline draws (diffusers' message; channels last)."""
    if latents is not None and tuple(np.shape(latents)) != tuple(shape):
        raise ValueError(
            f"Unexpected latents shape, got {tuple(np.shape(latents))}, expected {tuple(shape)} (channels last)"
        )
