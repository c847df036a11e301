"""Key map of diffusers' ``UNet2DConditionModel`` (DeepFloyd IF, the x4 upscaler, Kandinsky 2.x).

jaxgen's modules carry diffusers' names throughout (``conv_in``, ``time_embedding.linear_1``,
``class_embedding``, ``add_embedding.pool.positional_embedding``, ``encoder_hid_proj``,
``down_blocks.N.resnets.M.time_emb_proj``, ``down_blocks.N.attentions.M.add_k_proj``,
``down_blocks.N.attentions.M.transformer_blocks.K.ff.net.0.proj``, ``up_blocks.N.upsamplers.0.conv``,
``conv_norm_out``, ``conv_out``), so the default rule maps every key: linear weights transposed,
convolutions OIHW -> HWIO (including the 1x1 ``proj_in``/``proj_out`` of non-linear-projection
transformers), norms and embeddings copied. diffusers' model has no buffers, so nothing is ignored.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, default_rule

__all__ = ["key_rule", "ignored_keys"]


def key_rule(config: Any) -> KeyRule:
    """The key map for a ``UNet2DConditionModelConfig``: diffusers' names throughout."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """No PyTorch key of diffusers' model is left unused."""
    return ()
