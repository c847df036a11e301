"""Key map of diffusers' ``WuerstchenDiffNeXt`` (Würstchen's stage B).

jaxgen's modules carry diffusers' names (``clip_mapper``, ``effnet_mappers.i``, ``embedding.1``,
``down_blocks.i.0.1`` (the stride-2 convolution between levels), ``down_blocks.i.j`` / ``up_blocks.k.j`` ResBlocks
(``depthwise``, ``channelwise.0`` / ``.2`` (GRN ``gamma``/``beta``) / ``.4``), TimestepBlocks (``mapper``) and
AttnBlocks (``kv_mapper.1``, ``attention.to_q``...), ``clf.1``), so the default rule maps every key: convolutions
OIHW -> HWIO (the depthwise ones (C, 1, k, k) -> (k, k, 1, C)), linear weights transposed. The up path's
``nn.ConvTranspose2d`` weights (in, out, 2, 2) become (2, 2, in, out) kernels by ``conv_transpose``, named by
``WuerstchenDiffNeXt.transposed_conv_names``. The effnet mappers of levels without ``inject_effnet`` are None
in diffusers' ``ModuleList``: they have no keys and no params. The model has no buffers: nothing is ignored.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, with_transposed_convs

__all__ = ["key_rule", "ignored_keys"]


def key_rule(config: Any) -> KeyRule:
    """The key map for a ``WuerstchenDiffNeXtConfig``: the default rule, transposed convolutions by their layout."""
    from jaxgen.models.wuerstchen_diffnext import WuerstchenDiffNeXt

    return with_transposed_convs(WuerstchenDiffNeXt(config).transposed_conv_names())


def ignored_keys(config: Any) -> tuple[str, ...]:
    """Nothing: every key is a param."""
    return ()
