"""Key map of diffusers' ``PaellaVQModel`` (Würstchen's stage A).

jaxgen's modules carry diffusers' names (``in_block.1``, ``down_blocks.0.depthwise.1``,
``down_blocks.0.channelwise.0``, ``down_blocks.0.gammas``, ``down_blocks.3.0`` / ``.1`` (the latent
convolution and its BatchNorm), ``vquantizer.embedding``, ``up_blocks.0.0``, ``out_block.0``), so the default
rule maps every key: convolutions OIHW -> HWIO (the depthwise one (C, 1, 3, 3) -> (3, 3, 1, C)), linear
weights transposed, BatchNorm weight -> ``scale`` and its running statistics copied. The up path's
``nn.ConvTranspose2d`` weights (in, out, 4, 4) become (4, 4, in, out) kernels by ``conv_transpose``,
named by ``PaellaVQModel.transposed_conv_names``. The BatchNorm's ``num_batches_tracked`` counter is unused.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, with_transposed_convs

__all__ = ["key_rule", "ignored_keys"]


def key_rule(config: Any) -> KeyRule:
    """The key map for a ``PaellaVQModelConfig``: the default rule, transposed convolutions by their layout."""
    from jaxgen.models.paella_vq_model import PaellaVQModel

    return with_transposed_convs(PaellaVQModel(config).transposed_conv_names())


def ignored_keys(config: Any) -> tuple[str, ...]:
    """The latent BatchNorm's step counter (not used in inference)."""
    index = 2 * config.levels - 1  # after a block per level and a strided convolution between levels
    return (rf"down_blocks\.{index}\.1\.num_batches_tracked",)
