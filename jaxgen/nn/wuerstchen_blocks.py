"""The blocks Würstchen's stage C (``WuerstchenPrior``) and stage B (``WuerstchenDiffNeXt``) share, channels last,
with diffusers' names (``modeling_wuerstchen_common.py``). Their ``WuerstchenLayerNorm`` (over channels, no affine
params, eps 1e-6) is ``jaxgen.nn.transformer.layer_norm`` on NHWC features. The blocks:
``TimestepBlock`` (scale and shift from the noise-ratio embedding), ``ResBlock`` (depthwise convolution ->
norm -> (optional skip features concatenated, stage B's ``ResBlockStageB``) -> channelwise MLP with
``GlobalResponseNorm``), and ``AttnBlock`` (self- plus cross-attention over the
mapped conditioning)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import Attention
from jaxgen.nn.linear import Dense
from jaxgen.nn.resnet import DepthwiseConv2d
from jaxgen.nn.transformer import layer_norm

__all__ = ["TimestepBlock", "GlobalResponseNorm", "ResBlock", "AttnBlock", "WUERSTCHEN_PARAM_AXES"]

WUERSTCHEN_PARAM_AXES = (
    # the channelwise MLPs (4x) and the attention, Megatron style over the mesh's model axis
    (r"(.*/)?channelwise\.0/kernel", ("embed", "mlp")),
    (r"(.*/)?channelwise\.0/bias", ("mlp",)),
    (r"(.*/)?channelwise\.4/kernel", ("mlp", "embed")),
    (r"(.*/)?to_[qkv]/kernel", ("embed", "heads")),
    (r"(.*/)?to_[qkv]/bias", ("heads",)),
    (r"(.*/)?to_out\.0/kernel", ("heads", "embed")),
)
"""Logical axes (``jaxgen.sharding``) of the Würstchen blocks' params."""


class TimestepBlock(nn.Module):
    """``x * (1 + a) + b`` with ``a, b`` the halves of ``mapper(t)``. Call: (x (B, H, W, C), t (B, T)) -> (B, H, W, C)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        a, b = jnp.split(Dense(2 * x.shape[-1], dtype=self.dtype, name="mapper")(t.astype(self.dtype)), 2, axis=-1)
        return x * (1 + a[:, None, None, :]) + b[:, None, None, :]


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN on NHWC: ``gamma * (x * n) + beta + x``, n the per-channel L2 norm over H and W divided
    by its mean over channels (+ 1e-6). Params ``gamma``, ``beta`` (1, 1, 1, C) as diffusers stores them."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1, 1, 1, x.shape[-1])
        gamma = self.param("gamma", nn.initializers.zeros_init(), shape)
        beta = self.param("beta", nn.initializers.zeros_init(), shape)
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True))
        scaled = x32 * (norm / (jnp.mean(norm, axis=-1, keepdims=True) + 1e-6))
        return (gamma.astype(jnp.float32) * scaled + beta.astype(jnp.float32) + x32).astype(x.dtype)


class ResBlock(nn.Module):
    """diffusers' Würstchen ``ResBlock`` / ``ResBlockStageB``: ``x + channelwise(cat(norm(depthwise(x)), x_skip))``,
    the depthwise convolution ``kernel_size`` wide (zero padded), the MLP Linear(C + C_skip, 4C) -> GELU -> GRN ->
    Linear(4C, C). Stage C passes no skip (C_skip = 0); stage B concatenates the level's skip features and/or the
    mapped EfficientNet features after the norm, so the depthwise convolution stays C -> C.
    Call: (x (B, H, W, C), x_skip (B, H, W, C_skip) or None) -> (B, H, W, C)."""

    kernel_size: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, x_skip: jax.Array | None = None) -> jax.Array:
        c, k = x.shape[-1], self.kernel_size
        h = DepthwiseConv2d(k, k // 2, self.dtype, name="depthwise")(x)
        h = layer_norm(1e-6, False, self.dtype, name="norm")(h)
        if x_skip is not None:
            h = jnp.concatenate([h, x_skip.astype(h.dtype)], axis=-1)
        h = Dense(4 * c, dtype=self.dtype, name="channelwise.0")(h)
        h = GlobalResponseNorm(self.dtype, name="channelwise.2")(jax.nn.gelu(h, approximate=False))
        return x + Dense(c, dtype=self.dtype, name="channelwise.4")(h)


class AttnBlock(nn.Module):
    """diffusers' Würstchen ``AttnBlock``: ``x + attention(norm(x), kv)`` with ``kv = kv_mapper(cond)`` (SiLU ->
    Linear(c_cond, C)), preceded by the normed pixels themselves when ``self_attn``. ``nhead`` heads of C / nhead,
    biases on every projection. Call: (x (B, H, W, C), cond (B, L, c_cond)) -> (B, H, W, C)."""

    nhead: int
    self_attn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kv = Dense(c, dtype=self.dtype, name="kv_mapper.1")(jax.nn.silu(cond.astype(self.dtype)))
        tokens = layer_norm(1e-6, False, self.dtype, name="norm")(x).reshape(b, h * w, c)
        if self.self_attn:
            kv = jnp.concatenate([tokens, kv.astype(tokens.dtype)], axis=1)
        out = Attention(self.nhead, c // self.nhead, bias=True, dtype=self.dtype, name="attention")(tokens, kv)
        return x + out.reshape(b, h, w, c).astype(x.dtype)
