"""diffusers' ``Kandinsky3UNet`` in Flax, channels last: Kandinsky 3's denoiser (3B parameters at the real size).

``Kandinsky3UNet.from_pretrained(folder, subfolder="unet")`` returns ``(module, params)``;
``module.apply({"params": params}, sample, timestep, encoder_hidden_states, encoder_attention_mask)``
takes NHWC latents and returns ``Kandinsky3UNetOutput(sample=(B, H, W, in_channels))``.

The architecture is its own, not ``UNet2DConditionModel``'s (names as in diffusers):

* the time embedding (``time_proj`` sin/cos without flip, shift 1 -> ``time_embedding`` MLP) is
  enriched by ``add_time_condition``: one attention query, the mean of the projected text tokens,
  pools the text (padding masked) into the time embedding;
* the text goes through ``encoder_hid_proj`` (linear without bias, then LayerNorm);
* every norm is a *conditional* GroupNorm (no affine params; scale and shift come from the time
  embedding through ``context_mlp.1``);
* a resnet (``Kandinsky3ResNetBlock``) is four norm-SiLU-conv blocks (kernels 1, 3, 3, 1, half the
  width inside); the up path upsamples with 2x2 transposed convolutions inside its first resnet,
  the down path downsamples with 2x2 stride-2 convolutions inside its last resnet;
* the attention blocks (``Kandinsky3AttentionBlock``) are norm -> attention -> residual, norm ->
  1x1-conv feed-forward (4x, SiLU, no biases) -> residual; the first level has none, the others
  have self-attention once per block and cross-attention after every input resnet.

diffusers fixes the expansion ratio (4), the compression ratio (2) and which levels attend
(``(False, True, True, True)``); so does this port. The text mask: diffusers adds -10000 to the
logits of padded tokens, whose weights then underflow to exactly 0 in float32, i.e. a boolean mask,
which is what jaxgen passes (so cuDNN and splash attention can take it). A row whose mask is all
zero (Kandinsky 3's pipeline passes one for the unconditional half) gets -10000 on every logit,
which masks nothing: jaxgen passes such rows unmasked, the same function without the float32
rounding of logits near -10000 (which moves diffusers' float32 result by ~1e-4 relative there).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.attention import Attention
from jaxgen.nn.embeddings import TimestepEmbedding, Timesteps
from jaxgen.nn.linear import Dense
from jaxgen.nn.resnet import ConvTranspose, conv2d, group_norm
from jaxgen.nn.transformer import TRANSFORMER_PARAM_AXES, layer_norm

__all__ = [
    "Kandinsky3UNetConfig", "Kandinsky3UNet", "Kandinsky3UNetOutput", "Kandinsky3ConditionalGroupNorm",
    "Kandinsky3Block", "Kandinsky3ResNetBlock", "Kandinsky3AttentionBlock",
    "Kandinsky3AttentionPooling", "Kandinsky3EncoderProj", "Kandinsky3DownSampleBlock", "Kandinsky3UpSampleBlock",
]

_EPS = 1e-5  # torch's default GroupNorm/LayerNorm eps: every norm of the model
_EXPANSION_RATIO = 4  # feed-forward width of the attention blocks
_COMPRESSION_RATIO = 2  # inner width of the resnets: max(in, out) // 2
_ADD_ATTENTION = (False, True, True, True)  # per level, both self- and cross-attention (diffusers' fixed tuples)


@dataclasses.dataclass(frozen=True)
class Kandinsky3UNetConfig(ModelConfig):
    """config.json of diffusers' ``Kandinsky3UNet`` (same keys and defaults: the real model's values).

    diffusers accepts tuples for ``layers_per_block`` and ``cross_attention_dim`` in its signature but
    builds only from ints; so does this port (ValueError otherwise). Also refused, naming the field:
    more than 4 levels (diffusers' fixed per-level tuples would silently drop some), ``layers_per_block``
    under 2 (the up blocks would not return their ``out`` width), widths that ``groups`` or
    ``attention_head_dim`` do not divide.
    """

    in_channels: int = 4
    time_embedding_dim: int = 1536
    groups: int = 32
    attention_head_dim: int = 64
    layers_per_block: int = 3
    block_out_channels: tuple[int, ...] = (384, 768, 1536, 3072)
    cross_attention_dim: int = 4096
    encoder_hid_dim: int = 4096

    def __post_init__(self) -> None:
        for field in ("layers_per_block", "cross_attention_dim"):
            if not isinstance(getattr(self, field), int):
                raise ValueError(f"Kandinsky3UNet: {field} must be an int (diffusers builds only from ints), "
                                 f"got {getattr(self, field)!r}")
        if not 1 <= len(self.block_out_channels) <= len(_ADD_ATTENTION):
            raise ValueError(f"Kandinsky3UNet: block_out_channels must have 1 to {len(_ADD_ATTENTION)} levels, "
                             f"got {self.block_out_channels}")
        if self.layers_per_block < 2:
            raise ValueError(f"Kandinsky3UNet: layers_per_block must be >= 2, got {self.layers_per_block}")
        for width in (self.init_channels, *self.block_out_channels):
            if width % self.groups or (width // _COMPRESSION_RATIO) % self.groups:
                raise ValueError(f"Kandinsky3UNet: groups={self.groups} must divide every width and half-width; "
                                 f"block_out_channels={self.block_out_channels} (first level at half width)")
        for width in self.attention_widths():
            if width % self.attention_head_dim:
                raise ValueError(f"Kandinsky3UNet: attention_head_dim={self.attention_head_dim} must divide "
                                 f"time_embedding_dim and every attention block's width, got {width}")

    @property
    def init_channels(self) -> int:
        """Width after ``conv_in`` (and of the sinusoidal time features): block_out_channels[0] // 2."""
        return self.block_out_channels[0] // 2

    @property
    def num_levels(self) -> int:
        """Number of down (and up) blocks."""
        return len(self.block_out_channels)

    def level_dims(self) -> tuple[tuple[int, int], ...]:
        """diffusers' (in_dim, out_dim) per down level: (init_channels, boc[0]), (boc[0], boc[1]), ..."""
        dims = (self.init_channels,) + tuple(self.block_out_channels)
        return tuple(zip(dims[:-1], dims[1:]))

    def attends(self, index: int, up: bool = False) -> bool:
        """Whether down (or up) block ``index`` has attention blocks. diffusers zips its fixed 4-tuple
        reversed for the up blocks, so with fewer than 4 levels every up block attends."""
        return _ADD_ATTENTION[-1 - index] if up else _ADD_ATTENTION[index]

    def attention_widths(self) -> set[int]:
        """Widths of all attention outputs (the pooling's: time_embedding_dim), each split into heads."""
        widths = {self.time_embedding_dim}
        for i, (in_dim, out_dim) in enumerate(self.level_dims()):
            if self.attends(i):
                widths |= {in_dim, out_dim}
        for i, (out_dim, in_dim) in enumerate(reversed(self.level_dims())):
            if self.attends(i, up=True):  # the first cross-attention sees the skip state concatenated
                widths |= {in_dim, out_dim, 2 * in_dim if i else in_dim}
        return widths

    @classmethod
    def tiny(cls, **overrides: Any) -> "Kandinsky3UNetConfig":
        """A 3-level, 16/32/32-wide UNet for tests (text width 20 -> 24, time width 32, 8-wide heads)."""
        values = dict(in_channels=4, time_embedding_dim=32, groups=4, attention_head_dim=8, layers_per_block=2,
                      block_out_channels=(16, 32, 32), cross_attention_dim=24, encoder_hid_dim=20)
        return cls(**{**values, **overrides})


@flax.struct.dataclass
class Kandinsky3UNetOutput:
    """``sample``: (B, H, W, in_channels) NHWC."""

    sample: jax.Array


# ----------------------------------------------------------------------------- blocks


class Kandinsky3ConditionalGroupNorm(nn.Module):
    """GroupNorm without affine params, scaled and shifted by the time embedding.

    ``norm(x) * (1 + scale) + shift`` with ``scale, shift`` = halves of ``context_mlp.1(silu(t))``.
    Call: ``(x (B, H, W, C), time_embed (B, T)) -> (B, H, W, C)``.
    """

    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, time_embed: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        context = Dense(2 * channels, dtype=self.dtype, name="context_mlp.1")(jax.nn.silu(time_embed))
        scale, shift = context[:, None, None, :channels], context[:, None, None, channels:]
        return group_norm(self.groups, _EPS, self.dtype, "norm", affine=False)(x) * (scale + 1.0) + shift


class Kandinsky3Block(nn.Module):
    """Conditional ``group_norm`` -> SiLU -> [``up_sample``] -> ``projection`` conv -> [``down_sample``].

    ``resample``: "up" (2x2 transposed conv before the projection), "down" (2x2 stride-2 conv after
    it) or None. Call: ``(x (B, H, W, C), time_embed (B, T)) -> (B, H', W', out_channels)``.
    """

    out_channels: int
    kernel_size: int
    groups: int
    resample: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, time_embed: jax.Array) -> jax.Array:
        x = Kandinsky3ConditionalGroupNorm(self.groups, self.dtype, name="group_norm")(x, time_embed)
        x = jax.nn.silu(x)
        if self.resample == "up":
            x = ConvTranspose(x.shape[-1], 2, 2, dtype=self.dtype, name="up_sample")(x)
        x = conv2d(self.out_channels, self.kernel_size, padding=int(self.kernel_size > 1), dtype=self.dtype,
                   name="projection")(x)
        if self.resample == "down":
            x = conv2d(self.out_channels, 2, stride=2, dtype=self.dtype, name="down_sample")(x)
        return x


class Kandinsky3ResNetBlock(nn.Module):
    """Four ``resnet_blocks`` (kernels 1, 3, 3, 1; inner width max(in, out) // 2) plus the shortcut.

    ``resample="up"`` upsamples in block 1 and in ``shortcut_up_sample`` (transposed convs);
    ``"down"`` downsamples in block 2 and in ``shortcut_down_sample``. ``shortcut_projection`` (1x1)
    exists when the width changes. Call: ``(x (B, H, W, C), time_embed (B, T)) -> (B, H', W', out_channels)``.
    """

    out_channels: int
    groups: int
    resample: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, time_embed: jax.Array) -> jax.Array:
        in_channels = x.shape[-1]
        hidden = max(in_channels, self.out_channels) // _COMPRESSION_RATIO
        widths = (hidden, hidden, hidden, self.out_channels)
        where = {"up": 1, "down": 2}.get(self.resample)
        out = x
        for i, (width, kernel) in enumerate(zip(widths, (1, 3, 3, 1))):
            out = Kandinsky3Block(width, kernel, self.groups, self.resample if i == where else None, self.dtype,
                                  name=f"resnet_blocks.{i}")(out, time_embed)
        if self.resample == "up":
            x = ConvTranspose(in_channels, 2, 2, dtype=self.dtype, name="shortcut_up_sample")(x)
        if in_channels != self.out_channels:
            x = conv2d(self.out_channels, 1, dtype=self.dtype, name="shortcut_projection")(x)
        if self.resample == "down":
            x = conv2d(self.out_channels, 2, stride=2, dtype=self.dtype, name="shortcut_down_sample")(x)
        return x + out


class Kandinsky3AttentionBlock(nn.Module):
    """``in_norm`` -> ``attention`` (self, or cross over the text) -> residual;
    ``out_norm`` -> ``feed_forward`` -> residual.

    The attention has C // head_dim heads of head_dim, no biases; the feed-forward is 1x1 convs
    ``feed_forward.0`` (C -> 4C), SiLU, ``feed_forward.2`` (4C -> C), no biases.
    Call: ``(x (B, H, W, C), time_embed (B, T), context (B, L, D) or None (self-attention),
    context_mask (B, L) bool (True: attend) or None) -> (B, H, W, C)``.
    """

    head_dim: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, time_embed: jax.Array, context: jax.Array | None = None,
                 context_mask: jax.Array | None = None) -> jax.Array:
        b, h, w, c = x.shape
        out = Kandinsky3ConditionalGroupNorm(self.groups, self.dtype, name="in_norm")(x, time_embed)
        out = out.reshape(b, h * w, c)
        out = Attention(c // self.head_dim, self.head_dim, out_dim=c, out_bias=False, dtype=self.dtype,
                        name="attention")(out, context, context_mask)
        x = x + out.reshape(b, h, w, c)
        out = Kandinsky3ConditionalGroupNorm(self.groups, self.dtype, name="out_norm")(x, time_embed)
        out = conv2d(_EXPANSION_RATIO * c, 1, use_bias=False, dtype=self.dtype, name="feed_forward.0")(out)
        out = conv2d(c, 1, use_bias=False, dtype=self.dtype, name="feed_forward.2")(jax.nn.silu(out))
        return x + out


class Kandinsky3AttentionPooling(nn.Module):
    """``add_time_condition``: the mean text token attends over the text; the result is added to the time embedding.

    ``attention``: query/key/value width D -> T (T // head_dim heads), ``to_out.0`` T -> T, no biases.
    The mean runs over all L tokens, padding included (diffusers), or over the ``in_context`` ones (B, L)
    bool (jaxgen's shape padding left out); the attention masks the padding.
    Call: ``(time_embed (B, T), context (B, L, D), context_mask (B, L) bool or None, in_context) -> (B, T)``.
    """

    head_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, time_embed: jax.Array, context: jax.Array, context_mask: jax.Array | None = None,
                 in_context: jax.Array | None = None) -> jax.Array:
        t = time_embed.shape[-1]
        if in_context is None:
            query = jnp.mean(context, axis=1, keepdims=True)
        else:
            weights = in_context[..., None].astype(context.dtype)
            query = jnp.sum(context * weights, axis=1, keepdims=True) / jnp.sum(weights, axis=1, keepdims=True)
        pooled = Attention(t // self.head_dim, self.head_dim, out_dim=t, out_bias=False, dtype=self.dtype,
                           name="attention")(query, context, context_mask)
        return time_embed + pooled[:, 0]


class Kandinsky3EncoderProj(nn.Module):
    """``encoder_hid_proj``: ``projection_linear`` (no bias), then LayerNorm ``projection_norm``.

    Call: ``(B, L, encoder_hid_dim) -> (B, L, cross_attention_dim)``.
    """

    cross_attention_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Dense(self.cross_attention_dim, use_bias=False, dtype=self.dtype, name="projection_linear")(x)
        return layer_norm(_EPS, True, self.dtype, "projection_norm")(x)


class Kandinsky3DownSampleBlock(nn.Module):
    """One down level: [self-attention ``attentions.0``], then per layer ``resnets_in.k`` ->
    [cross-attention ``attentions.{k+1}``] -> ``resnets_out.k`` (the last one halves H and W with
    ``down_sample``). Call: ``(x (B, H, W, C_in), time_embed, context, context_mask) -> (B, H', W', out_channels)``.
    """

    out_channels: int
    num_blocks: int
    head_dim: int
    groups: int
    attention: bool
    down_sample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, time_embed: jax.Array, context: jax.Array,
                 context_mask: jax.Array | None) -> jax.Array:
        attention = lambda name: Kandinsky3AttentionBlock(self.head_dim, self.groups, self.dtype, name=name)
        resnet = lambda resample, name: Kandinsky3ResNetBlock(self.out_channels, self.groups, resample, self.dtype,
                                                              name=name)
        if self.attention:
            x = attention("attentions.0")(x, time_embed)
        for k in range(self.num_blocks):
            x = resnet(None, f"resnets_in.{k}")(x, time_embed)
            if self.attention:
                x = attention(f"attentions.{k + 1}")(x, time_embed, context, context_mask)
            last = k == self.num_blocks - 1
            x = resnet("down" if last and self.down_sample else None, f"resnets_out.{k}")(x, time_embed)
        return x


class Kandinsky3UpSampleBlock(nn.Module):
    """One up level, on the sample concatenated with its skip state: per layer ``resnets_in.k`` (the
    first doubles H and W when ``up_sample``) -> [cross-attention ``attentions.{k+1}``] ->
    ``resnets_out.k`` (to ``in_channels``, the last to ``out_channels``); then [self-attention
    ``attentions.0``]. ``in_channels``: the sample's width before the concatenation.
    Call: ``(x (B, H, W, in_channels + skip), time_embed, context, context_mask) -> (B, H', W', out_channels)``.
    """

    in_channels: int
    out_channels: int
    num_blocks: int
    head_dim: int
    groups: int
    attention: bool
    up_sample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, time_embed: jax.Array, context: jax.Array,
                 context_mask: jax.Array | None) -> jax.Array:
        attention = lambda name: Kandinsky3AttentionBlock(self.head_dim, self.groups, self.dtype, name=name)
        for k in range(self.num_blocks):
            resample = "up" if k == 0 and self.up_sample else None
            x = Kandinsky3ResNetBlock(x.shape[-1], self.groups, resample, self.dtype, name=f"resnets_in.{k}")(
                x, time_embed)
            if self.attention:
                x = attention(f"attentions.{k + 1}")(x, time_embed, context, context_mask)
            width = self.out_channels if k == self.num_blocks - 1 else self.in_channels
            x = Kandinsky3ResNetBlock(width, self.groups, None, self.dtype, name=f"resnets_out.{k}")(x, time_embed)
        if self.attention:
            x = attention("attentions.0")(x, time_embed)
        return x


# ----------------------------------------------------------------------------- the model


def _resnet_pair_axes() -> tuple:
    """Megatron pairs inside each resnet: blocks 0 and 2 split their output channels, blocks 1 and 3 their input."""
    block = r"(.*/)?resnet_blocks\.{}/projection/{}"
    return (
        (block.format("[02]", "kernel"), (None, None, "embed", "mlp")),
        (block.format("[02]", "bias"), ("mlp",)),
        (block.format("[13]", "kernel"), (None, None, "mlp", "embed")),
    )


class Kandinsky3UNet(nn.Module, PretrainedModel):
    """diffusers' ``Kandinsky3UNet``, channels last.

    ``__call__(sample, timestep, encoder_hidden_states, encoder_attention_mask=None)``:
      sample: (B, H, W, in_channels) NHWC latents; H and W divisible by 2 ** (levels - 1).
      timestep: a scalar, (1,) or (B,) int/float.
      encoder_hidden_states: (B, L, encoder_hid_dim) text embeddings (Flan-UL2's encoder); required
        (diffusers fails without them too).
      encoder_attention_mask: (B, L) 0/1 or bool; padded tokens are hidden from the pooling and the
        cross-attention; an all-zero row masks nothing (as diffusers' -10000 bias). None masks
        nothing (diffusers requires a mask).
      context_length: jaxgen's own, optional: (B,) or a scalar count of leading tokens that are the text;
        those after it are padding added for a fixed shape (one compiled program for every prompt
        length): masked out, left out of the pooling's mean, and outside what an all-zero row attends to.
        The output equals diffusers' on the first ``context_length`` tokens alone.
    Returns ``Kandinsky3UNetOutput(sample=(B, H, W, in_channels))``.
    """

    config: Kandinsky3UNetConfig
    dtype: Any = jnp.float32

    config_class = Kandinsky3UNetConfig
    # logical axes of the params (jaxgen.sharding): attention heads and the 4x feed-forward split,
    # and each resnet's four convolutions as two Megatron pairs (most of the 3B parameters)
    param_axes = TRANSFORMER_PARAM_AXES + (
        (r"(.*/)?feed_forward\.0/kernel", (None, None, "embed", "mlp")),
        (r"(.*/)?feed_forward\.2/kernel", (None, None, "mlp", "embed")),
    ) + _resnet_pair_axes()

    def init_args(self) -> tuple:
        cfg = self.config
        side = 2 ** (cfg.num_levels - 1)
        return (jnp.zeros((1, side, side, cfg.in_channels), self.dtype), jnp.zeros((1,), jnp.int32),
                jnp.zeros((1, 1, cfg.encoder_hid_dim), self.dtype))

    @nn.compact
    def __call__(self, sample: jax.Array, timestep: jax.Array | float | int,
                 encoder_hidden_states: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None,
                 context_length: jax.Array | int | None = None) -> Kandinsky3UNetOutput:
        cfg, dtype = self.config, self.dtype
        if sample.ndim != 4:
            raise ValueError(f"sample must be NHWC (batch, height, width, channels), got shape {sample.shape}")
        if encoder_hidden_states is None:
            raise ValueError("Kandinsky3UNet needs encoder_hidden_states (the text embeddings)")
        batch, tokens = sample.shape[0], encoder_hidden_states.shape[1]
        in_context = None
        if context_length is not None:
            lengths = jnp.reshape(jnp.asarray(context_length), (-1, 1))
            in_context = jnp.broadcast_to(jnp.arange(tokens)[None] < lengths, (batch, tokens))
        mask = in_context
        if encoder_attention_mask is not None:
            mask = jnp.asarray(encoder_attention_mask).astype(bool)
            if mask.ndim != 2:
                raise ValueError(f"encoder_attention_mask must be a 0/1 (batch, tokens) mask, got shape {mask.shape}")
            mask = mask | ~jnp.any(mask, axis=1, keepdims=True)  # all-zero rows: diffusers' -10000 everywhere
            mask = mask if in_context is None else mask & in_context

        timesteps = jnp.broadcast_to(jnp.reshape(jnp.asarray(timestep), (-1,)), (batch,))
        time_embed = Timesteps(cfg.init_channels, flip_sin_to_cos=False, downscale_freq_shift=1)(timesteps)
        time_embed = TimestepEmbedding(cfg.time_embedding_dim, act_fn="silu", dtype=dtype, name="time_embedding")(
            time_embed.astype(dtype))
        context = Kandinsky3EncoderProj(cfg.cross_attention_dim, dtype, name="encoder_hid_proj")(
            jnp.asarray(encoder_hidden_states).astype(dtype))
        time_embed = Kandinsky3AttentionPooling(cfg.attention_head_dim, dtype, name="add_time_condition")(
            time_embed, context, mask, in_context)

        common = dict(num_blocks=cfg.layers_per_block, head_dim=cfg.attention_head_dim, groups=cfg.groups, dtype=dtype)
        x = conv2d(cfg.init_channels, 3, padding=1, dtype=dtype, name="conv_in")(sample.astype(dtype))
        skips = []
        last = cfg.num_levels - 1
        for i, (_, out_dim) in enumerate(cfg.level_dims()):
            x = Kandinsky3DownSampleBlock(out_dim, attention=cfg.attends(i), down_sample=i < last,
                                          name=f"down_blocks.{i}", **common)(x, time_embed, context, mask)
            if i < last:
                skips.append(x)
        for i, (out_dim, in_dim) in enumerate(reversed(cfg.level_dims())):
            if i:
                x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = Kandinsky3UpSampleBlock(in_dim, out_dim, attention=cfg.attends(i, up=True), up_sample=i > 0,
                                        name=f"up_blocks.{i}", **common)(x, time_embed, context, mask)

        x = group_norm(cfg.groups, _EPS, dtype, "conv_norm_out")(x)
        x = conv2d(cfg.in_channels, 3, padding=1, dtype=dtype, name="conv_out")(jax.nn.silu(x))
        return Kandinsky3UNetOutput(sample=x)
