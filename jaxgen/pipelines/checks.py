"""The argument checks every pipeline shares, with diffusers' messages where diffusers has one.

Each raises before anything is encoded, compiled or allocated, naming the argument and what was
expected. Pipelines call them from their ``check_inputs`` (diffusers' per-pipeline checks) and
through ``DiffusionPipeline.check_call`` (the run options every ``__call__`` takes).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
import PIL.Image

from jaxgen.image_processing import OUTPUT_TYPES

__all__ = [
    "check_call_kwargs", "check_images_fit", "check_run_options", "check_embeddings_output_type", "check_prompt_arguments",
    "prompt_batch_size", "negative_prompts", "check_strength", "check_size", "image_batch_size",
    "check_image_argument", "check_mask_argument", "check_latents", "check_finite", "check_timesteps",
    "check_fits", "host_memory_bytes", "check_max_sequence_length", "check_rng", "check_named_arguments",
    "checking_named_arguments", "check_schedule_options",
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_finite(name: str, value: Any) -> None:
    """An array argument (embeddings, latents) must be numbers without NaN or infinity."""
    if value is None:
        return
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == jax.numpy.bfloat16):
        raise TypeError(f"`{name}` must be an array of numbers, got {type(value).__name__} of dtype {array.dtype}")
    if not np.isfinite(array.astype(np.float32)).all():
        raise ValueError(f"`{name}` has NaN or infinite values")


def check_timesteps(name: str, values: Any) -> None:
    """Custom ``timesteps`` or ``sigmas``: a non-empty sequence of finite, non-negative numbers in the order they
    are run, strictly decreasing (out of order, a schedule samples garbage without an error)."""
    if values is None:
        return
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"`{name}` must be a list of numbers, got {type(values).__name__}")
    values = list(values)
    if not values or not all(_is_number(v) for v in values):
        raise TypeError(f"`{name}` must be a non-empty list of numbers, got {values!r}")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"`{name}` must be finite and non-negative, got {values}")
    if any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"`{name}` must be in descending order (strictly decreasing: the order they run in), got {values}")


def host_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(what: str, nbytes: int, arguments: str) -> None:
    """Refuse a call whose ``what`` alone (``nbytes``) exceeds this machine's memory, from its byte count, before
    anything is allocated; ``arguments`` names what sets the size."""
    memory = host_memory_bytes()
    if memory is not None and nbytes > memory:
        raise ValueError(f"{arguments} ask for {what} of {nbytes / 2**30:,.1f} GiB, more than this machine's"
                         f" {memory / 2**30:,.1f} GiB of memory")


def check_images_fit(count: int, height: int, width: int, arguments: str) -> None:
    """Refuse a call whose ``count`` float32 RGB images of ``height`` x ``width`` alone exceed this machine's memory."""
    check_fits(f"{count} float32 images", count * height * width * 3 * 4, arguments)


def check_run_options(
    *,
    num_images_per_prompt: Any = 1,
    guidance_scale: Any = 1.0,
    output_type: Any = "pil",
    num_inference_steps: Any = 1,
    timesteps: Any = None,
    sigmas: Any = None,
    cross_attention_kwargs: Any = None,
    eta: Any = 0.0,
    callback: Any = None,
) -> None:
    """The options every pipeline's ``__call__`` takes."""
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` has to be callable as callback(step, timestep, latents), got {type(callback).__name__}")
    if not _is_number(eta) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"`eta` has to be a finite number >= 0 (DDIM's noise; 0 is deterministic) but is {eta!r}")
    if cross_attention_kwargs:
        raise ValueError(f"`cross_attention_kwargs` are not supported by jaxgen (got keys {sorted(cross_attention_kwargs)})")
    if not _positive_int(num_images_per_prompt):
        raise ValueError(f"`num_images_per_prompt` has to be a positive integer but is {num_images_per_prompt}.")
    if not _is_number(guidance_scale):
        raise TypeError(f"`guidance_scale` has to be a number but is {type(guidance_scale).__name__} {guidance_scale!r}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"`guidance_scale` has to be finite and >= 0 (1 or less turns guidance off) but is"
                         f" {guidance_scale}.")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(
            f"`output_type` has to be one of 'pil', 'np', 'latent' (the NHWC latents; diffusers' 'pt') but is"
            f" {output_type!r}."
        )
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is None and sigmas is None and not _positive_int(num_inference_steps):
        raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps}.")
    check_timesteps("timesteps", timesteps)
    check_timesteps("sigmas", sigmas)


def check_max_sequence_length(value: Any, attention_heads: int | None) -> None:
    """A text encoder's ``max_sequence_length``: a positive integer whose (L, L) attention scores (``attention_heads``
    of them, float32) fit in this machine's memory."""
    if not _positive_int(value):
        raise ValueError(f"`max_sequence_length` has to be a positive integer but is {value!r}")
    if attention_heads is not None:
        check_fits("one prompt's attention scores", int(value) ** 2 * attention_heads * 4,
                   f"`max_sequence_length` = {value}")


def check_rng(rng: Any) -> None:
    """``rng``: None, an int seed, or one ``jax.random`` key (new style, or raw uint32 of shape (2,))."""
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return
    if isinstance(rng, jax.Array) and rng.ndim == 0 and jax.numpy.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return
    if isinstance(rng, jax.Array) and rng.shape == (2,) and rng.dtype == jax.numpy.uint32:
        return
    raise TypeError(f"`rng` must be an int seed or one jax.random key, got {type(rng).__name__} {np.shape(rng)}")


def check_named_arguments(arguments: Mapping[str, Any]) -> None:
    """The arguments pipelines share by name, checked from a call's bound arguments before it runs: ``rng``,
    ``callback`` (callable), ``eta`` (finite, >= 0), and ``**kwargs`` left over (``generator``: use ``rng``)."""
    if "rng" in arguments:
        check_rng(arguments["rng"])
    prompt, negative = arguments.get("prompt"), arguments.get("negative_prompt")
    _check_texts("prompt", prompt)
    _check_texts("negative_prompt", negative)
    embeds = arguments.get("prompt_embeds")
    if isinstance(negative, list) and (isinstance(prompt, (str, list)) or np.ndim(embeds) == 3):
        negative_prompts(negative, prompt, prompt_batch_size(prompt, embeds))  # diffusers: only after encoding
    options = {k: arguments[k] for k in ("callback", "eta") if arguments.get(k) is not None}
    if options:
        check_run_options(**options)
    if "generator" in arguments.get("kwargs", {}):
        check_call_kwargs("", arguments["kwargs"])


def check_embeddings_output_type(output_type: Any) -> None:
    """The output types of pipelines that return embeddings (priors): "pt" (jax arrays here) or "np"."""
    if output_type not in ("pt", "np"):
        raise ValueError(f"Only the output types `pt` and `np` are supported not output_type={output_type}")


def check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           embeds_width: int | None = None) -> None:
    """The prompt checks diffusers' text-to-image pipelines share, with their messages; given embeddings must be
    finite and (with ``embeds_width``) that wide."""
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
    # the prompts' types and a negative-prompt list's length: checked by name as the call began (check_named_arguments)
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError(
            f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`:"
            f" {negative_prompt_embeds}. Please make sure to only forward one of the two."
        )
    for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if embeds is None:
            continue
        if np.ndim(embeds) != 3 or (embeds_width is not None and np.shape(embeds)[-1] != embeds_width):
            width = "embedding width" if embeds_width is None else str(embeds_width)
            raise ValueError(f"`{name}` must be (batch, tokens, {width}), got shape {tuple(np.shape(embeds))}")
        check_finite(name, embeds)
    if prompt_embeds is not None and negative_prompt_embeds is not None:
        if np.shape(prompt_embeds) != np.shape(negative_prompt_embeds):
            raise ValueError(
                "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                f" got: `prompt_embeds` {np.shape(prompt_embeds)} != `negative_prompt_embeds`"
                f" {np.shape(negative_prompt_embeds)}."
            )


def _check_texts(name: str, texts: Any) -> None:
    """A prompt argument: None, a string, or a non-empty list of strings."""
    if texts is None or isinstance(texts, str):
        return
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        kinds = sorted({type(t).__name__ for t in texts}) if isinstance(texts, (list, tuple)) else type(texts).__name__
        raise TypeError(f"`{name}` has to be a string or a list of strings, got {kinds}")
    if not texts:
        raise ValueError(f"`{name}` is an empty list: pass at least one prompt")


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
    check_fits("one float32 image", int(height) * int(width) * 3 * 4, f"`height` x `width` = {height} x {width}")


def _is_image(x: Any) -> bool:
    return isinstance(x, (PIL.Image.Image, np.ndarray, jax.Array))


def image_batch_size(name: str, image: Any) -> int:
    """diffusers' type check of an image argument; returns its batch size (an array of rank <= 3 is one image)."""
    if isinstance(image, (list, tuple)) and not image:
        raise ValueError(f"`{name}` is an empty list: pass at least one image")
    first = image[0] if isinstance(image, (list, tuple)) else image
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
    check_finite("latents", latents)


def checking_named_arguments(call: Any) -> Any:
    """``__call__`` -> the same call that first checks the arguments every pipeline names alike (``rng``,
    ``callback``, ``eta``, the prompts' types: ``check_named_arguments``), before its own code encodes or compiles anything."""
    signature = inspect.signature(call)

    @functools.wraps(call)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "generator" in kwargs:  # torch's: named even where the call takes no **kwargs
            check_call_kwargs(type(self).__name__, {"generator": kwargs["generator"]})
        try:
            named = signature.bind_partial(self, *args, **kwargs).arguments
        except TypeError:  # a wrong call: Python's own error, from the call itself
            named = {}
        check_named_arguments(named)
        return call(self, *args, **kwargs)

    return checked


def check_schedule_options(scheduler: Any, **options: Any) -> None:
    """The step count against the scheduler's training timesteps, and custom ``timesteps`` within them: checked
    here, before the text encoder runs, rather than in ``set_timesteps``."""
    if scheduler is None:
        return
    if options.get("timesteps") is None and options.get("sigmas") is None \
            and hasattr(scheduler, "_check_num_inference_steps"):
        scheduler._check_num_inference_steps(options.get("num_inference_steps", 1))
    n_train = getattr(scheduler, "config", {}).get("num_train_timesteps")
    if options.get("timesteps") is not None and n_train is not None and max(options["timesteps"]) >= n_train:
        raise ValueError(f"`timesteps` must lie in [0, {n_train}) (the scheduler's `num_train_timesteps`), got"
                         f" {list(options['timesteps'])}")
