"""Key map of diffusers' ``WuerstchenPrior`` (Würstchen's stage C).

jaxgen's modules carry diffusers' names (``projection``, ``cond_mapper.0`` / ``.2``, ``blocks.3i`` ResBlock with
``depthwise``, ``channelwise.0`` / ``.2`` (GRN ``gamma``/``beta``) / ``.4``, ``blocks.3i+1.mapper``,
``blocks.3i+2.kv_mapper.1`` and ``attention.to_q``..., ``out.1``), so the default rule maps every key:
convolutions OIHW -> HWIO (the depthwise ones (C, 1, 3, 3) -> (3, 3, 1, C)), linear weights transposed,
the GRN params copied. The model has no buffers: nothing is ignored.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, default_rule

__all__ = ["key_rule", "ignored_keys"]


def key_rule(config: Any) -> KeyRule:
    """The default rule: module names mirror diffusers' keys."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """Nothing: every key is a param."""
    return ()
