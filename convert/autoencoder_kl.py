"""Key map of diffusers' ``AutoencoderKL``.

jaxgen's VAE modules carry diffusers' names (``encoder.down_blocks.0.resnets.1.conv1``,
``decoder.mid_block.attentions.0.to_q``, ``quant_conv``), so the default rule maps every param:
conv kernels OIHW -> HWIO, linear weights transposed, GroupNorm weights copied to ``scale``.

Checkpoints saved before diffusers 0.14 name the autoencoder attentions ``query``/``key``/``value``/
``proj_attn`` (diffusers renames them on load); ``rename_legacy_keys`` does the same rename on a
state dict before conversion.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from convert.engine import KeyRule, default_rule

__all__ = ["key_rule", "ignored_keys", "rename_legacy_keys"]

# every attention diffusers marks `_from_deprecated_attn_block`: the mid blocks' and those of the
# Attn{Down,Up}...Block2D (VQModel shares this rename)
_LEGACY_ATTENTION = re.compile(
    r"^((?:encoder|decoder)\.(?:mid_block|down_blocks\.\d+|up_blocks\.\d+)\.attentions\.\d+)"
    r"\.(query|key|value|proj_attn)\.(weight|bias)$"
)
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def key_rule(config: Any) -> KeyRule:
    """The default rule: module names mirror diffusers' keys."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """No PyTorch key of AutoencoderKL is left unused."""
    return ()


def rename_legacy_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of ``state_dict`` with the deprecated VAE attention names renamed as diffusers does on load.

    ``{encoder,decoder}.{mid_block,down_blocks.I,up_blocks.I}.attentions.N.{query,key,value,proj_attn}.*``
    -> ``....attentions.N.{to_q,to_k,to_v,to_out.0}.*``; other keys are unchanged.
    The tensors are not copied.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        m = _LEGACY_ATTENTION.match(key)
        out[f"{m[1]}.{_LEGACY_NAMES[m[2]]}.{m[3]}" if m else key] = value
    return out
