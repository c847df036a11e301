"""The image autoencoders' encoder and decoder (diffusers' ``vae.Encoder`` / ``vae.Decoder``), channels last.

One code path for both of diffusers' autoencoders that use them:

* ``AutoencoderKL``: group norm everywhere, ``Encoder(double_z=True)`` (mean and log-variance);
* ``VQModel`` (MoVQ, Kandinsky 2.x / 3): ``Encoder(double_z=False)`` and ``Decoder(norm_type="spatial")``,
  where every norm of the decoder (resnets, attention, output) is a ``SpatialNorm`` conditioned on
  the quantized latents. Both also use the attention variants of the blocks
  (``AttnDownEncoderBlock2D`` / ``AttnUpDecoderBlock2D``).

Module names mirror diffusers' (``encoder.down_blocks.0.resnets.1.conv1``,
``decoder.up_blocks.0.attentions.0.spatial_norm.conv_y``), so diffusers' state dicts convert with
the default key rule. Everything takes and returns NHWC arrays.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import dot_product_attention
from jaxgen.nn.linear import Dense
from jaxgen.nn.resnet import Downsample2D, ResnetBlock2D, SpatialNorm, Upsample2D, conv2d, group_norm

__all__ = [
    "DecoderOutput", "VAEAttention", "UNetMidBlock2D", "DownEncoderBlock2D", "UpDecoderBlock2D", "Encoder",
    "Decoder", "ENCODER_BLOCKS", "DECODER_BLOCKS", "NORM_TYPES", "attention_flags",
]

# block type -> whether it has attention after each resnet
ENCODER_BLOCKS = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
DECODER_BLOCKS = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
NORM_TYPES = ("group", "spatial")


def attention_flags(field: str, types: tuple[str, ...], blocks: dict[str, bool]) -> tuple[bool, ...]:
    """Block type names -> whether each block has attention; ValueError naming ``field`` for unknown types."""
    unknown = [t for t in types if t not in blocks]
    if unknown:
        raise ValueError(f"{field}: block types {unknown} are not supported (supported: {tuple(blocks)})")
    return tuple(blocks[t] for t in types)


@flax.struct.dataclass
class DecoderOutput:
    """``decode``'s output: ``sample`` (B, H, W, C) images; ``commit_loss`` only for VQ models."""

    sample: jax.Array
    commit_loss: jax.Array | None = None


class VAEAttention(nn.Module):
    """diffusers' ``Attention`` as the autoencoders use it: spatial self-attention over H*W positions.

    (spatial_norm) -> (group_norm) -> to_q/to_k/to_v -> attention -> to_out.0, plus the residual
    (the input before any norm), divided by ``rescale_output_factor``. ``spatial_norm=True`` (MoVQ
    decoder) adds a ``SpatialNorm`` conditioned on ``temb``, the quantized latents (B, h, w, C_zq).
    Takes and returns (B, H, W, C).
    """

    heads: int
    dim_head: int
    norm_num_groups: int | None = None
    spatial_norm: bool = False
    eps: float = 1e-6
    rescale_output_factor: float = 1.0
    residual_connection: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        residual = hidden_states
        b, h, w, c = hidden_states.shape
        if self.spatial_norm:
            if temb is None:
                raise ValueError("VAEAttention: spatial_norm needs `temb`, the quantized latents")
            hidden_states = SpatialNorm(dtype=self.dtype, name="spatial_norm")(hidden_states, temb)
        if self.norm_num_groups is not None:
            hidden_states = group_norm(self.norm_num_groups, self.eps, self.dtype, "group_norm")(hidden_states)
        hidden_states = hidden_states.reshape(b, h * w, c)
        inner = self.heads * self.dim_head

        def project(name: str) -> jax.Array:
            y = Dense(inner, dtype=self.dtype, name=name)(hidden_states)
            return y.reshape(b, h * w, self.heads, self.dim_head)

        out = dot_product_attention(project("to_q"), project("to_k"), project("to_v")).reshape(b, h * w, inner)
        out = Dense(c, dtype=self.dtype, name="to_out.0")(out).reshape(b, h, w, c)
        if self.residual_connection:
            out = out + residual
        return out / self.rescale_output_factor


class UNetMidBlock2D(nn.Module):
    """diffusers' ``UNetMidBlock2D``: resnet, then ``num_layers`` x (attention, resnet), at constant width.

    ``attention_head_dim`` defaults to the width (one head, as in the VAE).
    ``resnet_time_scale_shift="spatial"`` (MoVQ decoder): the resnets and attention norms are
    ``SpatialNorm`` layers conditioned on ``temb`` (B, h, w, C_zq), and the attention has no group norm.
    Takes (B, H, W, C) and an optional ``temb`` ((B, temb_channels), or the quantized latents with
    "spatial"); returns (B, H, W, C).
    """

    temb_channels: int | None = None
    num_layers: int = 1
    resnet_eps: float = 1e-6
    resnet_time_scale_shift: str = "default"
    resnet_act_fn: str = "swish"
    resnet_groups: int | None = 32
    attn_groups: int | None = None
    add_attention: bool = True
    attention_head_dim: int | None = None
    output_scale_factor: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        channels = hidden_states.shape[-1]
        spatial = self.resnet_time_scale_shift == "spatial"
        groups = self.resnet_groups if self.resnet_groups is not None else min(channels // 4, 32)
        attn_groups = self.attn_groups
        if attn_groups is None and self.resnet_time_scale_shift == "default":
            attn_groups = groups
        head_dim = self.attention_head_dim or channels

        def resnet(i: int) -> ResnetBlock2D:
            return ResnetBlock2D(
                out_channels=channels, temb_channels=self.temb_channels, eps=self.resnet_eps, groups=groups,
                time_embedding_norm=self.resnet_time_scale_shift, non_linearity=self.resnet_act_fn,
                output_scale_factor=self.output_scale_factor, dtype=self.dtype, name=f"resnets.{i}",
            )

        hidden_states = resnet(0)(hidden_states, temb)
        for i in range(self.num_layers):
            if self.add_attention:
                hidden_states = VAEAttention(
                    heads=channels // head_dim, dim_head=head_dim, norm_num_groups=attn_groups, spatial_norm=spatial,
                    eps=self.resnet_eps, rescale_output_factor=self.output_scale_factor, dtype=self.dtype,
                    name=f"attentions.{i}",
                )(hidden_states, temb)
            hidden_states = resnet(i + 1)(hidden_states, temb)
        return hidden_states


class DownEncoderBlock2D(nn.Module):
    """diffusers' ``DownEncoderBlock2D`` (``add_attention=True``: ``AttnDownEncoderBlock2D``).

    ``num_layers`` resnets (no time embedding), each followed by a group-normed self-attention when
    ``add_attention`` (heads of ``attention_head_dim``, default: one head over all channels), then an
    optional stride-2 conv (``downsamplers.0``). (B, H, W, C_in) -> (B, H/2, W/2, out_channels).
    """

    out_channels: int
    num_layers: int = 1
    resnet_eps: float = 1e-6
    resnet_act_fn: str = "swish"
    resnet_groups: int = 32
    output_scale_factor: float = 1.0
    add_downsample: bool = True
    downsample_padding: int = 1
    add_attention: bool = False
    attention_head_dim: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        head_dim = self.attention_head_dim or self.out_channels
        for i in range(self.num_layers):
            hidden_states = ResnetBlock2D(
                out_channels=self.out_channels, temb_channels=None, eps=self.resnet_eps, groups=self.resnet_groups,
                non_linearity=self.resnet_act_fn, output_scale_factor=self.output_scale_factor, dtype=self.dtype,
                name=f"resnets.{i}",
            )(hidden_states)
            if self.add_attention:
                hidden_states = VAEAttention(
                    heads=self.out_channels // head_dim, dim_head=head_dim, norm_num_groups=self.resnet_groups,
                    eps=self.resnet_eps, rescale_output_factor=self.output_scale_factor, dtype=self.dtype,
                    name=f"attentions.{i}",
                )(hidden_states)
        if self.add_downsample:
            hidden_states = Downsample2D(
                use_conv=True, out_channels=self.out_channels, padding=self.downsample_padding, dtype=self.dtype,
                name="downsamplers.0",
            )(hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    """diffusers' ``UpDecoderBlock2D`` (``add_attention=True``: ``AttnUpDecoderBlock2D``).

    ``num_layers`` resnets, each followed by a self-attention when ``add_attention`` (heads of
    ``attention_head_dim``, default one head), then an optional nearest 2x + conv (``upsamplers.0``).
    ``resnet_time_scale_shift`` is the norm choice: "default"/"group" group norms, "spatial"
    ``SpatialNorm`` layers conditioned on ``temb``, the quantized latents (B, h, w, C_zq).
    (B, H, W, C_in) -> (B, 2H, 2W, out_channels).
    """

    out_channels: int
    num_layers: int = 1
    resnet_eps: float = 1e-6
    resnet_act_fn: str = "swish"
    resnet_groups: int = 32
    output_scale_factor: float = 1.0
    add_upsample: bool = True
    temb_channels: int | None = None
    resnet_time_scale_shift: str = "default"
    add_attention: bool = False
    attention_head_dim: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        spatial = self.resnet_time_scale_shift == "spatial"
        head_dim = self.attention_head_dim or self.out_channels
        for i in range(self.num_layers):
            hidden_states = ResnetBlock2D(
                out_channels=self.out_channels, temb_channels=None if spatial else self.temb_channels,
                eps=self.resnet_eps, groups=self.resnet_groups, non_linearity=self.resnet_act_fn,
                time_embedding_norm=self.resnet_time_scale_shift, output_scale_factor=self.output_scale_factor,
                dtype=self.dtype, name=f"resnets.{i}",
            )(hidden_states, temb)
            if self.add_attention:
                hidden_states = VAEAttention(
                    heads=self.out_channels // head_dim, dim_head=head_dim,
                    norm_num_groups=None if spatial else self.resnet_groups, spatial_norm=spatial,
                    eps=self.resnet_eps, rescale_output_factor=self.output_scale_factor, dtype=self.dtype,
                    name=f"attentions.{i}",
                )(hidden_states, temb)
        if self.add_upsample:
            hidden_states = Upsample2D(use_conv=True, out_channels=self.out_channels, dtype=self.dtype,
                                       name="upsamplers.0")(hidden_states)
        return hidden_states


class Encoder(nn.Module):
    """diffusers' VAE ``Encoder``: conv_in, down blocks, mid block, GroupNorm + SiLU, conv_out.

    ``down_block_types``: "DownEncoderBlock2D" or "AttnDownEncoderBlock2D" per level.
    (B, H, W, in_channels) -> (B, H/f, W/f, 2 * out_channels if double_z else out_channels),
    f = 2 ** (levels - 1).
    """

    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    act_fn: str = "silu"
    double_z: bool = True
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sample: jax.Array) -> jax.Array:
        attention = attention_flags("down_block_types", self.down_block_types, ENCODER_BLOCKS)
        channels = self.block_out_channels
        sample = conv2d(channels[0], 3, padding=1, dtype=self.dtype, name="conv_in")(sample)
        for i, add_attention in enumerate(attention):
            sample = DownEncoderBlock2D(
                out_channels=channels[i], num_layers=self.layers_per_block, resnet_eps=1e-6,
                resnet_act_fn=self.act_fn, resnet_groups=self.norm_num_groups,
                add_downsample=i != len(channels) - 1, downsample_padding=0, add_attention=add_attention,
                attention_head_dim=channels[i], dtype=self.dtype, name=f"down_blocks.{i}",
            )(sample)
        sample = UNetMidBlock2D(
            resnet_eps=1e-6, resnet_act_fn=self.act_fn, output_scale_factor=1.0, attention_head_dim=channels[-1],
            resnet_groups=self.norm_num_groups, add_attention=self.mid_block_add_attention, dtype=self.dtype,
            name="mid_block",
        )(sample)
        sample = nn.silu(group_norm(self.norm_num_groups, 1e-6, self.dtype, "conv_norm_out")(sample))
        out = 2 * self.out_channels if self.double_z else self.out_channels
        return conv2d(out, 3, padding=1, dtype=self.dtype, name="conv_out")(sample)


class Decoder(nn.Module):
    """diffusers' VAE ``Decoder``: conv_in, mid block, up blocks, norm + SiLU, conv_out.

    ``norm_type="group"``: GroupNorm everywhere (AutoencoderKL). ``"spatial"`` (MoVQ): every norm
    after conv_in is a ``SpatialNorm`` conditioned on ``latent_embeds``, the quantized latents
    (B, h, w, C_zq), which the call then requires. ``up_block_types``: "UpDecoderBlock2D" or
    "AttnUpDecoderBlock2D" per level. (B, h, w, latent channels) -> (B, h * f, w * f, out_channels).
    """

    out_channels: int = 3
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    act_fn: str = "silu"
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sample: jax.Array, latent_embeds: jax.Array | None = None) -> jax.Array:
        attention = attention_flags("up_block_types", self.up_block_types, DECODER_BLOCKS)
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type: {self.norm_type!r} is not supported (supported: {NORM_TYPES})")
        spatial = self.norm_type == "spatial"
        if spatial and latent_embeds is None:
            raise ValueError("Decoder: norm_type='spatial' needs `latent_embeds`, the quantized latents")
        temb = latent_embeds if spatial else None
        reversed_channels = tuple(reversed(self.block_out_channels))
        sample = conv2d(reversed_channels[0], 3, padding=1, dtype=self.dtype, name="conv_in")(sample)
        sample = UNetMidBlock2D(
            resnet_eps=1e-6, resnet_act_fn=self.act_fn, output_scale_factor=1.0,
            resnet_time_scale_shift="spatial" if spatial else "default", attention_head_dim=reversed_channels[0],
            resnet_groups=self.norm_num_groups, add_attention=self.mid_block_add_attention, dtype=self.dtype,
            name="mid_block",
        )(sample, temb)
        for i, add_attention in enumerate(attention):
            sample = UpDecoderBlock2D(
                out_channels=reversed_channels[i], num_layers=self.layers_per_block + 1, resnet_eps=1e-6,
                resnet_act_fn=self.act_fn, resnet_groups=self.norm_num_groups,
                add_upsample=i != len(reversed_channels) - 1, resnet_time_scale_shift=self.norm_type,
                add_attention=add_attention, attention_head_dim=reversed_channels[i], dtype=self.dtype,
                name=f"up_blocks.{i}",
            )(sample, temb)
        if spatial:
            sample = SpatialNorm(dtype=self.dtype, name="conv_norm_out")(sample, temb)
        else:
            sample = group_norm(self.norm_num_groups, 1e-6, self.dtype, "conv_norm_out")(sample)
        return conv2d(self.out_channels, 3, padding=1, dtype=self.dtype, name="conv_out")(nn.silu(sample))
