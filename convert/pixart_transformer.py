"""Key map of ``PixArtTransformer2DModel`` (diffusers' PyTorch state dict -> jaxgen params).

jaxgen's modules carry diffusers' names (``pos_embed.proj``, ``adaln_single.emb.timestep_embedder.linear_1``,
``transformer_blocks.N.attn1.to_out.0``, ``ff.net.0.proj``, the ``scale_shift_table`` parameters), so
the default rule maps every key: linear weights are transposed, the patch conv goes OIHW -> HWIO.
diffusers' model holds exactly these keys: the sin-cos ``pos_embed.pos_embed`` buffer is not
persistent, and the original PixArt checkpoints' ``y_embedding`` (the null caption) is dropped by
diffusers' conversion script, so nothing is ignored.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, default_rule

__all__ = ["key_rule", "ignored_keys"]


def key_rule(config: Any) -> KeyRule:
    """The key map for a ``PixArtTransformer2DModelConfig``: diffusers' names throughout."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """No PyTorch key of diffusers' model is left unused."""
    return ()
