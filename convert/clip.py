"""Key map of transformers' CLIP towers and of diffusers' ``IFSafetyChecker``.

jaxgen's CLIP modules carry the names checkpoints store (``text_model.encoder.layers.N.self_attn.q_proj``,
``text_projection``, ``vision_model.embeddings.class_embedding``, ``visual_projection``; the safety
checker nests the projected vision model under ``vision_model`` beside ``p_head`` and ``w_head``),
so the default rule maps every param of ``CLIPTextModel``, ``CLIPTextModelWithProjection``,
``CLIPVisionModelWithProjection`` and ``IFSafetyChecker``: linear weights transposed, the patch
convolution OIHW -> HWIO, norms, embeddings and ``class_embedding`` copied.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, default_rule

_TEXT_TOWER = ("embeddings.", "encoder.", "final_layer_norm.")


def key_rule(config: Any) -> KeyRule:
    """The default rule: module names mirror the checkpoints' keys."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """``position_ids`` buffers (persistent in checkpoints written before transformers 4.31) are
    ``arange``s the model makes itself."""
    return (r"(.*\.)?position_ids",)


def rename_legacy_keys(state_dict: dict) -> dict:
    """transformers 5 saves ``CLIPTextModel`` without its ``text_model.`` prefix (``embeddings.token_embedding.weight``);
    the Hub's checkpoints, and jaxgen, keep it. Other layouts pass unchanged."""
    if "embeddings.token_embedding.weight" not in state_dict:
        return state_dict
    return {(f"text_model.{k}" if k.startswith(_TEXT_TOWER) else k): v for k, v in state_dict.items()}
