"""The down, mid and up blocks of diffusers' ``UNet2DConditionModel`` (``unets/unet_2d_blocks.py``), channels last.

Two kinds of attention live in these blocks:
  * ``Transformer2DModel`` (continuous input): GroupNorm -> ``proj_in`` (1x1 conv, or linear with
    ``use_linear_projection``) -> ``BasicTransformerBlock``s -> ``proj_out`` -> + input. Used by
    ``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D`` / ``UNetMidBlock2DCrossAttn`` (Stable Diffusion,
    the x4 upscaler).
  * ``AddedKVAttention`` (diffusers' ``Attention`` with ``added_kv_proj_dim`` run by
    ``AttnAddedKVProcessor``): GroupNorm on the image tokens, the text projected by ``add_k_proj`` /
    ``add_v_proj`` and put before the image's own keys and values (or alone with
    ``only_cross_attention``), + input. Used by the ``SimpleCrossAttn`` blocks (DeepFloyd IF,
    Kandinsky 2.x).

Module names mirror diffusers' (``resnets.0``, ``attentions.1``, ``downsamplers.0``,
``upsamplers.0``, ``transformer_blocks.0``, ``add_k_proj`` ...), so the default conversion rule
maps every PyTorch key. Every block takes the same call arguments, so the UNet drives them alike:
down blocks return ``(hidden_states, skip states)``, up blocks consume skip states.
Dropout is omitted (inference only).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import dot_product_attention, key_padding_mask
from jaxgen.nn.linear import Dense
from jaxgen.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D, conv2d, group_norm
from jaxgen.nn.transformer import BasicTransformerBlock, layer_norm

__all__ = [
    "ResnetSettings", "TransformerSettings", "AddedKVSettings",
    "AddedKVAttention", "Transformer2DModel",
    "DownBlock2D", "ResnetDownsampleBlock2D", "CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
    "UNetMidBlock2D", "UNetMidBlock2DCrossAttn", "UNetMidBlock2DSimpleCrossAttn",
    "UpBlock2D", "ResnetUpsampleBlock2D", "CrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
]

Array = jax.Array


# ----------------------------------------------------------------------------- settings shared by blocks


@dataclasses.dataclass(frozen=True)
class ResnetSettings:
    """How a block builds its ``ResnetBlock2D``s (diffusers' ``resnet_*`` block arguments)."""

    eps: float = 1e-6
    groups: int = 32
    act_fn: str = "swish"
    time_scale_shift: str = "default"
    skip_time_act: bool = False
    output_scale_factor: float = 1.0

    def block(self, out_channels: int, dtype: Any, name: str, *, up: bool = False, down: bool = False) -> ResnetBlock2D:
        """A ``ResnetBlock2D`` with these settings (``up``/``down``: the parameter-free resampling resnet)."""
        return ResnetBlock2D(
            out_channels=out_channels, groups=self.groups, eps=self.eps, non_linearity=self.act_fn,
            skip_time_act=self.skip_time_act, time_embedding_norm=self.time_scale_shift,
            output_scale_factor=self.output_scale_factor, up=up, down=down, dtype=dtype, name=name,
        )


@dataclasses.dataclass(frozen=True)
class TransformerSettings:
    """The ``Transformer2DModel`` of a cross-attention block.

    ``num_attention_heads`` heads of width ``channels // num_attention_heads`` (diffusers' reading of
    the UNet's ``attention_head_dim``); ``layers``: transformer blocks per ``Transformer2DModel``, one
    entry per resnet of the block.
    """

    num_attention_heads: int
    cross_attention_dim: int | None
    layers: tuple[int, ...]
    norm_num_groups: int = 32
    use_linear_projection: bool = False
    only_cross_attention: bool = False


@dataclasses.dataclass(frozen=True)
class AddedKVSettings:
    """The added-KV attention of a ``SimpleCrossAttn`` block: heads of width ``attention_head_dim``."""

    attention_head_dim: int
    norm_num_groups: int = 32
    only_cross_attention: bool = False
    cross_attention_norm: str | None = None


# ----------------------------------------------------------------------------- attention modules


class AddedKVAttention(nn.Module):
    """diffusers' ``Attention(added_kv_proj_dim=..., norm_num_groups=..., bias=True)`` with ``AttnAddedKVProcessor``.

    hidden_states (B, H, W, C) is group-normalised (``group_norm``) and projected to queries; the
    encoder states (B, L, D), optionally normalised by ``norm_cross`` (GroupNorm with 32 groups over D,
    or LayerNorm), give keys/values through ``add_k_proj``/``add_v_proj``; unless
    ``only_cross_attention`` the image's own ``to_k``/``to_v`` keys/values follow them. The output
    projection ``to_out.0`` is added to the input (the processor's residual). ``attention_mask`` is a
    0/1 (B, L) mask over the encoder tokens; the image tokens are always attended.
    Without encoder states the block attends to the (un-normalised) input itself, as diffusers does.
    Returns (B, H, W, C).
    """

    heads: int
    dim_head: int
    norm_num_groups: int | None = 32
    eps: float = 1e-5
    only_cross_attention: bool = False
    cross_attention_norm: str | None = None
    cross_attention_norm_num_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None) -> Array:
        if self.cross_attention_norm not in (None, "group_norm", "layer_norm"):
            raise ValueError(f"unknown cross_attention_norm {self.cross_attention_norm!r}; "
                             "expected None, 'layer_norm' or 'group_norm'")
        residual = hidden_states
        b, h, w, c = hidden_states.shape
        x = hidden_states.reshape(b, h * w, c)
        if encoder_hidden_states is None:
            context = x
        elif self.cross_attention_norm == "group_norm":
            # GroupNorm over the feature axis of (B, L, D): channels last with L as the "spatial" axis.
            context = group_norm(self.cross_attention_norm_num_groups, 1e-5, self.dtype, "norm_cross")(encoder_hidden_states)
        elif self.cross_attention_norm == "layer_norm":
            context = layer_norm(1e-5, True, self.dtype, "norm_cross")(encoder_hidden_states)
        else:
            context = encoder_hidden_states
        if self.norm_num_groups is not None:
            x = group_norm(self.norm_num_groups, self.eps, self.dtype, "group_norm")(x)

        inner = self.heads * self.dim_head
        dense = lambda name: Dense(inner, use_bias=True, dtype=self.dtype, name=name)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, self.dim_head)
        query = split(dense("to_q")(x))
        key = split(dense("add_k_proj")(context))
        value = split(dense("add_v_proj")(context))
        mask = None if attention_mask is None else attention_mask.astype(bool)
        if not self.only_cross_attention:
            key = jnp.concatenate([key, split(dense("to_k")(x))], axis=1)
            value = jnp.concatenate([value, split(dense("to_v")(x))], axis=1)
            if mask is not None:
                mask = jnp.concatenate([mask, jnp.ones((b, h * w), bool)], axis=1)
        out = dot_product_attention(query, key, value, None if mask is None else key_padding_mask(mask))
        out = Dense(c, use_bias=True, dtype=self.dtype, name="to_out.0")(out.reshape(b, h * w, inner))
        return out.reshape(b, h, w, c) + residual


class Transformer2DModel(nn.Module):
    """diffusers' ``Transformer2DModel`` for continuous (image) input, as the UNet blocks build it.

    GroupNorm(``norm_num_groups``, eps 1e-6) -> ``proj_in`` -> ``num_layers`` ``BasicTransformerBlock``s
    (geglu feed-forward, no attention bias) -> ``proj_out`` -> + input. ``proj_in``/``proj_out`` are
    1x1 convolutions, or linear layers with ``use_linear_projection`` (diffusers applies them before
    and after flattening respectively; on NHWC both are the same per-pixel matmul).
    Takes (B, H, W, C), encoder_hidden_states (B, L, D), 0/1 masks ``attention_mask`` (B, keys of
    attn1) and ``encoder_attention_mask`` (B, L); returns (B, H, W, C).
    """

    num_attention_heads: int
    attention_head_dim: int
    num_layers: int = 1
    cross_attention_dim: int | None = None
    norm_num_groups: int = 32
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None) -> Array:
        b, h, w, c = hidden_states.shape
        inner = self.num_attention_heads * self.attention_head_dim
        residual = hidden_states
        x = group_norm(self.norm_num_groups, 1e-6, self.dtype, "norm")(hidden_states)
        if self.use_linear_projection:
            x = Dense(inner, dtype=self.dtype, name="proj_in")(x)
        else:
            x = conv2d(inner, 1, dtype=self.dtype, name="proj_in")(x)
        x = x.reshape(b, h * w, inner)
        for i in range(self.num_layers):
            x = BasicTransformerBlock(
                self.num_attention_heads, self.attention_head_dim, cross_attention_dim=self.cross_attention_dim,
                only_cross_attention=self.only_cross_attention, dtype=self.dtype, name=f"transformer_blocks.{i}",
            )(x, attention_mask, encoder_hidden_states, encoder_attention_mask)
        x = x.reshape(b, h, w, inner)
        if self.use_linear_projection:
            x = Dense(c, dtype=self.dtype, name="proj_out")(x)
        else:
            x = conv2d(c, 1, dtype=self.dtype, name="proj_out")(x)
        return x + residual


def _transformer(settings: TransformerSettings, channels: int, layer: int, dtype: Any, name: str) -> Transformer2DModel:
    heads = settings.num_attention_heads
    return Transformer2DModel(
        heads, channels // heads, num_layers=settings.layers[layer], cross_attention_dim=settings.cross_attention_dim,
        norm_num_groups=settings.norm_num_groups, use_linear_projection=settings.use_linear_projection,
        only_cross_attention=settings.only_cross_attention, dtype=dtype, name=name,
    )


def _added_kv(settings: AddedKVSettings, channels: int, dtype: Any, name: str) -> AddedKVAttention:
    return AddedKVAttention(
        heads=channels // settings.attention_head_dim, dim_head=settings.attention_head_dim,
        norm_num_groups=settings.norm_num_groups, only_cross_attention=settings.only_cross_attention,
        cross_attention_norm=settings.cross_attention_norm, dtype=dtype, name=name,
    )


def _simple_mask(attention_mask: Array | None, encoder_hidden_states: Array | None,
                 encoder_attention_mask: Array | None) -> Array | None:
    # diffusers' SimpleCrossAttn blocks: an explicit attention_mask wins (UnCLIP passes its text mask
    # that way); otherwise the encoder mask when there is an encoder.
    if attention_mask is not None:
        return attention_mask
    return None if encoder_hidden_states is None else encoder_attention_mask


# ----------------------------------------------------------------------------- down blocks
#
# Call: (hidden_states (B, H, W, C_in), temb (B, T), encoder_hidden_states=None, attention_mask=None,
#        encoder_attention_mask=None) -> (hidden_states (B, H', W', C_out), skip states: one per resnet
#        plus one after the downsampler).


class DownBlock2D(nn.Module):
    """diffusers' ``DownBlock2D``: resnets, then a stride-2 conv ``downsamplers.0`` (not on the last level)."""

    out_channels: int
    num_layers: int
    resnet: ResnetSettings
    add_downsample: bool = True
    downsample_padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, temb: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None):
        outputs = []
        for i in range(self.num_layers):
            hidden_states = self.resnet.block(self.out_channels, self.dtype, f"resnets.{i}")(hidden_states, temb)
            outputs.append(hidden_states)
        if self.add_downsample:
            hidden_states = Downsample2D(use_conv=True, out_channels=self.out_channels, padding=self.downsample_padding,
                                         dtype=self.dtype, name="downsamplers.0")(hidden_states)
            outputs.append(hidden_states)
        return hidden_states, tuple(outputs)


class ResnetDownsampleBlock2D(nn.Module):
    """diffusers' ``ResnetDownsampleBlock2D``: resnets, then a resnet with 2x2 average pooling, ``downsamplers.0``."""

    out_channels: int
    num_layers: int
    resnet: ResnetSettings
    add_downsample: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, temb: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None):
        outputs = []
        for i in range(self.num_layers):
            hidden_states = self.resnet.block(self.out_channels, self.dtype, f"resnets.{i}")(hidden_states, temb)
            outputs.append(hidden_states)
        if self.add_downsample:
            downsampler = self.resnet.block(self.out_channels, self.dtype, "downsamplers.0", down=True)
            hidden_states = downsampler(hidden_states, temb)
            outputs.append(hidden_states)
        return hidden_states, tuple(outputs)


class CrossAttnDownBlock2D(nn.Module):
    """diffusers' ``CrossAttnDownBlock2D``: (resnet, ``Transformer2DModel``) pairs, then a stride-2 conv."""

    out_channels: int
    num_layers: int
    resnet: ResnetSettings
    transformer: TransformerSettings
    add_downsample: bool = True
    downsample_padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, temb: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None):
        outputs = []
        for i in range(self.num_layers):
            hidden_states = self.resnet.block(self.out_channels, self.dtype, f"resnets.{i}")(hidden_states, temb)
            hidden_states = _transformer(self.transformer, self.out_channels, i, self.dtype, f"attentions.{i}")(
                hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)
            outputs.append(hidden_states)
        if self.add_downsample:
            hidden_states = Downsample2D(use_conv=True, out_channels=self.out_channels, padding=self.downsample_padding,
                                         dtype=self.dtype, name="downsamplers.0")(hidden_states)
            outputs.append(hidden_states)
        return hidden_states, tuple(outputs)


class SimpleCrossAttnDownBlock2D(nn.Module):
    """diffusers' ``SimpleCrossAttnDownBlock2D``: (resnet, added-KV attention) pairs, then a downsampling resnet."""

    out_channels: int
    num_layers: int
    resnet: ResnetSettings
    attention: AddedKVSettings
    add_downsample: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, temb: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None):
        mask = _simple_mask(attention_mask, encoder_hidden_states, encoder_attention_mask)
        outputs = []
        for i in range(self.num_layers):
            hidden_states = self.resnet.block(self.out_channels, self.dtype, f"resnets.{i}")(hidden_states, temb)
            hidden_states = _added_kv(self.attention, self.out_channels, self.dtype, f"attentions.{i}")(
                hidden_states, encoder_hidden_states, mask)
            outputs.append(hidden_states)
        if self.add_downsample:
            downsampler = self.resnet.block(self.out_channels, self.dtype, "downsamplers.0", down=True)
            hidden_states = downsampler(hidden_states, temb)
            outputs.append(hidden_states)
        return hidden_states, tuple(outputs)


# ----------------------------------------------------------------------------- mid blocks
#
# Call: (hidden_states (B, h, w, C), temb (B, T), encoder_hidden_states=None, attention_mask=None,
#        encoder_attention_mask=None) -> (B, h, w, C).


class UNetMidBlock2D(nn.Module):
    """diffusers' ``UNetMidBlock2D`` as the UNet builds it (``num_layers=0``, no attention): one resnet."""

    resnet: ResnetSettings
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, temb: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None) -> Array:
        return self.resnet.block(hidden_states.shape[-1], self.dtype, "resnets.0")(hidden_states, temb)


class UNetMidBlock2DCrossAttn(nn.Module):
    """diffusers' ``UNetMidBlock2DCrossAttn``: resnet, then (``Transformer2DModel``, resnet) x num_layers."""

    resnet: ResnetSettings
    transformer: TransformerSettings
    num_layers: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, temb: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None) -> Array:
        channels = hidden_states.shape[-1]
        hidden_states = self.resnet.block(channels, self.dtype, "resnets.0")(hidden_states, temb)
        for i in range(self.num_layers):
            hidden_states = _transformer(self.transformer, channels, i, self.dtype, f"attentions.{i}")(
                hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)
            hidden_states = self.resnet.block(channels, self.dtype, f"resnets.{i + 1}")(hidden_states, temb)
        return hidden_states


class UNetMidBlock2DSimpleCrossAttn(nn.Module):
    """diffusers' ``UNetMidBlock2DSimpleCrossAttn``: resnet, then (added-KV attention, resnet) x num_layers."""

    resnet: ResnetSettings
    attention: AddedKVSettings
    num_layers: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, temb: Array, encoder_hidden_states: Array | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None) -> Array:
        channels = hidden_states.shape[-1]
        mask = _simple_mask(attention_mask, encoder_hidden_states, encoder_attention_mask)
        hidden_states = self.resnet.block(channels, self.dtype, "resnets.0")(hidden_states, temb)
        for i in range(self.num_layers):
            hidden_states = _added_kv(self.attention, channels, self.dtype, f"attentions.{i}")(
                hidden_states, encoder_hidden_states, mask)
            hidden_states = self.resnet.block(channels, self.dtype, f"resnets.{i + 1}")(hidden_states, temb)
        return hidden_states


# ----------------------------------------------------------------------------- up blocks
#
# Call: (hidden_states (B, h, w, C_prev), res_hidden_states_tuple (the down path's skip states, the
#        last popped first: one per resnet), temb (B, T), encoder_hidden_states=None,
#        upsample_size=None, attention_mask=None, encoder_attention_mask=None) -> (B, H, W, C_out).
# ``upsample_size`` (height, width) replaces the 2x of a nearest-neighbour upsampler when the input
# size is not a multiple of the UNet's overall factor (the resampling resnets always double).


def _pop_and_concat(hidden_states: Array, res: tuple[Array, ...]) -> tuple[Array, tuple[Array, ...]]:
    return jnp.concatenate([hidden_states, res[-1]], axis=-1), res[:-1]


class UpBlock2D(nn.Module):
    """diffusers' ``UpBlock2D``: resnets over (input ++ skip), then nearest 2x + conv ``upsamplers.0``."""

    out_channels: int
    num_layers: int
    resnet: ResnetSettings
    add_upsample: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, res_hidden_states_tuple: tuple[Array, ...], temb: Array,
                 encoder_hidden_states: Array | None = None, upsample_size: tuple[int, int] | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None) -> Array:
        res = tuple(res_hidden_states_tuple)
        for i in range(self.num_layers):
            hidden_states, res = _pop_and_concat(hidden_states, res)
            hidden_states = self.resnet.block(self.out_channels, self.dtype, f"resnets.{i}")(hidden_states, temb)
        if self.add_upsample:
            hidden_states = Upsample2D(use_conv=True, out_channels=self.out_channels, dtype=self.dtype,
                                       name="upsamplers.0")(hidden_states, upsample_size)
        return hidden_states


class ResnetUpsampleBlock2D(nn.Module):
    """diffusers' ``ResnetUpsampleBlock2D``: resnets over (input ++ skip), then an upsampling resnet ``upsamplers.0``."""

    out_channels: int
    num_layers: int
    resnet: ResnetSettings
    add_upsample: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, res_hidden_states_tuple: tuple[Array, ...], temb: Array,
                 encoder_hidden_states: Array | None = None, upsample_size: tuple[int, int] | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None) -> Array:
        res = tuple(res_hidden_states_tuple)
        for i in range(self.num_layers):
            hidden_states, res = _pop_and_concat(hidden_states, res)
            hidden_states = self.resnet.block(self.out_channels, self.dtype, f"resnets.{i}")(hidden_states, temb)
        if self.add_upsample:
            hidden_states = self.resnet.block(self.out_channels, self.dtype, "upsamplers.0", up=True)(hidden_states, temb)
        return hidden_states


class CrossAttnUpBlock2D(nn.Module):
    """diffusers' ``CrossAttnUpBlock2D``: (resnet over input ++ skip, ``Transformer2DModel``) pairs, then upsampling conv."""

    out_channels: int
    num_layers: int
    resnet: ResnetSettings
    transformer: TransformerSettings
    add_upsample: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, res_hidden_states_tuple: tuple[Array, ...], temb: Array,
                 encoder_hidden_states: Array | None = None, upsample_size: tuple[int, int] | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None) -> Array:
        res = tuple(res_hidden_states_tuple)
        for i in range(self.num_layers):
            hidden_states, res = _pop_and_concat(hidden_states, res)
            hidden_states = self.resnet.block(self.out_channels, self.dtype, f"resnets.{i}")(hidden_states, temb)
            hidden_states = _transformer(self.transformer, self.out_channels, i, self.dtype, f"attentions.{i}")(
                hidden_states, encoder_hidden_states, attention_mask, encoder_attention_mask)
        if self.add_upsample:
            hidden_states = Upsample2D(use_conv=True, out_channels=self.out_channels, dtype=self.dtype,
                                       name="upsamplers.0")(hidden_states, upsample_size)
        return hidden_states


class SimpleCrossAttnUpBlock2D(nn.Module):
    """diffusers' ``SimpleCrossAttnUpBlock2D``: (resnet over input ++ skip, added-KV attention) pairs, then an
    upsampling resnet."""

    out_channels: int
    num_layers: int
    resnet: ResnetSettings
    attention: AddedKVSettings
    add_upsample: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: Array, res_hidden_states_tuple: tuple[Array, ...], temb: Array,
                 encoder_hidden_states: Array | None = None, upsample_size: tuple[int, int] | None = None,
                 attention_mask: Array | None = None, encoder_attention_mask: Array | None = None) -> Array:
        mask = _simple_mask(attention_mask, encoder_hidden_states, encoder_attention_mask)
        res = tuple(res_hidden_states_tuple)
        for i in range(self.num_layers):
            hidden_states, res = _pop_and_concat(hidden_states, res)
            hidden_states = self.resnet.block(self.out_channels, self.dtype, f"resnets.{i}")(hidden_states, temb)
            hidden_states = _added_kv(self.attention, self.out_channels, self.dtype, f"attentions.{i}")(
                hidden_states, encoder_hidden_states, mask)
        if self.add_upsample:
            hidden_states = self.resnet.block(self.out_channels, self.dtype, "upsamplers.0", up=True)(hidden_states, temb)
        return hidden_states
