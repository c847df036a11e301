"""Prompt encoding for every pipeline family: tokenization (diffusers' calls and truncation warning)
and one jitted call of the text encoder that returns the output fields a pipeline names.

T5 (PixArt, DeepFloyd IF, Kandinsky 3's Flan-UL2) pads to ``max_length`` and passes the padding mask;
the CLIP text towers (the x4 upscaler, Würstchen, Kandinsky 2.2's prior, UniDiffuser) are called
without one where diffusers' pipelines call them without one, and take diffusers' ``clip_skip``::

    ids, mask = tokenize(pipe.tokenizer, prompts, 120, warn_truncation=True)
    (embeds,) = encode(module, params, ids, mask)
    ids, _ = tokenize(pipe.tokenizer, prompts, 77, warn_truncation=True, encoder_name="CLIP")
    (embeds,) = encode(module, params, ids, clip_skip=2)
    text_embeds, hidden = encode(module, params, ids, mask, outputs=("text_embeds", "last_hidden_state"))

``clip_skip`` goes through the model (``CLIPTextModel(..., clip_skip=k)``), which applies its own
``text_model.final_layer_norm`` to ``hidden_states[-(k + 1)]``: nothing here reads params or
re-implements a layer.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from typing import Any, Sequence

import jax
import numpy as np

__all__ = ["tokenize", "encode"]

logger = logging.getLogger(__name__)


def tokenize(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    *,
    warn_truncation: bool = False,
    encoder_name: str = "T5",
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize as diffusers' pipelines do: padded to ``max_length``, truncated, special tokens added.

    Args:
        tokenizer: a transformers tokenizer (``T5Tokenizer(Fast)``, ``CLIPTokenizer(Fast)``, ...).
        texts: N prompts, already preprocessed by the pipeline (PixArt's caption cleaning, IF's lower-casing).
            A single string counts as one prompt.
        max_length: the padded and truncated length L (e.g. ``tokenizer.model_max_length``, PixArt's 120).
        warn_truncation: log diffusers' warning (with the text cut off) when a prompt is longer than L.
        encoder_name: the encoder the warning names ("T5", "CLIP", ...), as diffusers' pipelines word it.

    Returns:
        ``(input_ids (N, L) int32, attention_mask (N, L) int32)``, 1 on real tokens and 0 on padding.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    inputs = tokenizer(
        texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
        # explicit: a tokenizer whose model_input_names leave the mask out must still return it
        return_attention_mask=True, return_tensors="np",
    )
    ids = np.asarray(inputs.input_ids, np.int32)
    mask = np.asarray(inputs.attention_mask, np.int32)
    if warn_truncation:
        # diffusers' check, verbatim: tokenize again without truncation and compare
        untruncated = tokenizer(texts, padding="longest", return_tensors="np").input_ids
        if untruncated.shape[-1] >= ids.shape[-1] and not np.array_equal(ids, untruncated):
            removed = tokenizer.batch_decode(untruncated[:, max_length - 1 : -1])
            logger.warning(
                f"The following part of your input was truncated because {encoder_name} can only handle sequences up to"
                f" {max_length} tokens: {removed}"
            )
    return ids, mask


def _accepts(module: Any, argument: str) -> bool:
    """Whether the module's ``__call__`` takes ``argument`` (T5 takes neither ``clip_skip`` nor hidden states)."""
    return argument in inspect.signature(type(module).__call__).parameters


@functools.partial(jax.jit, static_argnames=("module", "outputs", "clip_skip"))
def _encode(
    module: Any, params: Any, input_ids: jax.Array, attention_mask: jax.Array | None, *,
    outputs: tuple[str, ...], clip_skip: int | None,
) -> tuple[Any, ...]:
    kwargs: dict[str, Any] = {}
    if attention_mask is not None:
        # only when given: diffusers calls CLIP towers without a mask unless their config asks for one
        kwargs["attention_mask"] = attention_mask
    if clip_skip is not None:
        kwargs["clip_skip"] = clip_skip
    if "hidden_states" in outputs:
        kwargs["output_hidden_states"] = True
    out = module.apply({"params": params}, input_ids, **kwargs)
    fields = [f.name for f in dataclasses.fields(out)]
    missing = [name for name in outputs if name not in fields]
    if missing:
        raise ValueError(f"{type(module).__name__} has no output {missing}; its outputs: {fields}")
    # fields not asked for are dropped here, so XLA prunes what computes only them
    return tuple(getattr(out, name) for name in outputs)


def encode(
    module: Any,
    params: Any,
    input_ids: Any,
    attention_mask: Any = None,
    *,
    outputs: Sequence[str] | str = ("last_hidden_state",),
    clip_skip: int | None = None,
) -> tuple[Any, ...]:
    """Run a text encoder once, jitted, and return the named output fields in order.

    Args:
        module, params: the ``(module, params)`` pair of ``from_pretrained`` (``T5EncoderModel``,
            ``CLIPTextModel``, ``CLIPTextModelWithProjection``, or any module whose output has the
            named fields). ``module`` is static: one compilation per module, shapes, outputs and clip_skip.
        input_ids: (B, L) int token ids, e.g. from ``tokenize``.
        attention_mask: (B, L) 0/1, passed to the encoder only when given (T5 pipelines pass it; the
            x4 upscaler's CLIP is called without one, as in diffusers).
        outputs: output field names, e.g. ``("last_hidden_state",)`` -> (B, L, D),
            ``("pooler_output",)`` -> (B, D), ``("text_embeds", "last_hidden_state")`` for a CLIP with
            projection -> ((B, projection_dim), (B, L, D)); ``"hidden_states"`` -> the tuple of
            num_layers + 1 (B, L, D) states (SDXL-style skips, without the final norm).
        clip_skip: CLIP only: k (0 <= k <= num_hidden_layers) makes ``last_hidden_state`` the output of
            the layer k before the last through the model's own final layer norm (diffusers' clip skip).

    Returns:
        A tuple with one array (or, for ``hidden_states``, a tuple of arrays) per name in ``outputs``.
    """
    outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)  # a static arg must be hashable
    if not outputs:
        raise ValueError("outputs is empty: name at least one output field, e.g. ('last_hidden_state',)")
    if clip_skip is not None and not _accepts(module, "clip_skip"):
        raise ValueError(f"clip_skip={clip_skip!r}: {type(module).__name__} does not take clip_skip (CLIP text towers do)")
    if "hidden_states" in outputs and not _accepts(module, "output_hidden_states"):
        raise ValueError(f"{type(module).__name__} does not return hidden_states")
    return _encode(module, params, input_ids, attention_mask, outputs=outputs, clip_skip=clip_skip)
