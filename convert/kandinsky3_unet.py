"""Key map of diffusers' ``Kandinsky3UNet`` (Kandinsky 3's denoiser).

jaxgen's modules carry diffusers' names throughout (``time_embedding.linear_1``,
``add_time_condition.attention.to_q``, ``encoder_hid_proj.projection_linear``,
``down_blocks.N.attentions.M.in_norm.context_mlp.1``, ``down_blocks.N.attentions.M.feed_forward.0``,
``up_blocks.N.resnets_in.M.resnet_blocks.K.projection``, ``...shortcut_projection``,
``...shortcut_down_sample``, ``conv_norm_out``, ``conv_out``), so the default rule maps every key:
linear weights transposed, convolutions OIHW -> HWIO, norms copied. The one different layout is the
up path's ``nn.ConvTranspose2d`` (``resnet_blocks.1.up_sample`` and ``shortcut_up_sample``), whose
weight is (in, out, 2, 2): it becomes the (2, 2, in, out) kernel by ``conv_transpose``, named
explicitly below (in == out there, so a wrong transpose would pass every shape check).
The conditional norms' GroupNorms have no affine params; the model has no buffers, so nothing is ignored.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, with_transposed_convs

__all__ = ["key_rule", "ignored_keys"]

_TRANSPOSED_CONVS = ("up_sample", "shortcut_up_sample")  # the module names of its ConvTranspose (2x2, stride 2)


def key_rule(config: Any) -> KeyRule:
    """The key map for a ``Kandinsky3UNetConfig``: diffusers' names, transposed convolutions by their own layout."""
    return with_transposed_convs(_TRANSPOSED_CONVS)


def ignored_keys(config: Any) -> tuple[str, ...]:
    """No PyTorch key of diffusers' model is left unused."""
    return ()
