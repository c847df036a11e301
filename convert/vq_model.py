"""Key map of diffusers' ``VQModel`` (MoVQ).

jaxgen's VQModel names its modules as diffusers does (``encoder.down_blocks.3.attentions.0.to_q``,
``decoder.up_blocks.0.resnets.1.norm1.conv_y``, ``quantize.embedding``), so the default rule maps
every param: conv kernels OIHW -> HWIO, linear weights transposed, GroupNorm weights to ``scale``,
the (num_vq_embeddings, vq_embed_dim) codebook ``quantize.embedding.weight`` copied as it is.
Pre-0.14 attention names (``query``/``key``/``value``/``proj_attn``) are renamed as for AutoencoderKL.
"""

from __future__ import annotations

from typing import Any

from convert.autoencoder_kl import rename_legacy_keys
from convert.engine import KeyRule, default_rule

__all__ = ["key_rule", "ignored_keys", "rename_legacy_keys"]


def key_rule(config: Any) -> KeyRule:
    """The default rule: module names mirror diffusers' keys."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """No PyTorch key of VQModel is left unused (diffusers builds its quantizer without the ``used`` remap buffer)."""
    return ()
