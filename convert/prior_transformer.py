"""Key map of ``PriorTransformer`` (diffusers' PyTorch state dict -> jaxgen params).

jaxgen's prior carries diffusers' names throughout (``time_embedding.linear_1``, ``proj_in``,
``embedding_proj``, ``encoder_hidden_states_proj``, ``transformer_blocks.N.attn1.to_q``,
``ff.net.0.proj``, ``norm_out``, ``proj_to_clip_embeddings``, and the bare parameters
``positional_embedding``, ``prd_embedding``, ``clip_mean``, ``clip_std``), so the default rule maps
every key (linear weights transposed). The ``causal_attention_mask`` buffer is not persistent,
so a checkpoint holds nothing else and nothing is ignored.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, default_rule

__all__ = ["key_rule", "ignored_keys"]


def key_rule(config: Any) -> KeyRule:
    """The key map for a ``PriorTransformerConfig``: diffusers' names throughout."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """No PyTorch key of diffusers' model is left unused."""
    return ()
