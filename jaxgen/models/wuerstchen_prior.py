"""diffusers' ``WuerstchenPrior`` (Würstchen's stage C, 1.0B parameters) in Flax, channels last.

It denoises the 16-channel image embeddings (B, H, W, 16) (24 x 24 for a 1024 px image) given the noise
ratio r in [0, 1] (B,) and CLIP-bigG text hidden states (B, 77, 1280). ``depth`` times: a ``ResBlock``, a
``TimestepBlock`` on the sinusoidal embedding of r, an ``AttnBlock`` over the pixels and the mapped text
(``jaxgen.nn.wuerstchen_blocks``). Its output is not the noise but a rescaled sample: with ``a, b`` the halves
of ``out``, ``(x - a) / (|1 - b| + 1e-5)``, as diffusers returns it.

``WuerstchenPrior.from_pretrained(folder, subfolder="prior")`` returns ``(module, params)``;
``module.apply({"params": p}, x, r, c)`` returns the (B, H, W, c_in) array (diffusers returns a bare tensor).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.linear import Dense
from jaxgen.nn.resnet import conv2d
from jaxgen.nn.transformer import layer_norm
from jaxgen.nn.wuerstchen_blocks import WUERSTCHEN_PARAM_AXES, AttnBlock, ResBlock, TimestepBlock

__all__ = ["WuerstchenPriorConfig", "WuerstchenPrior", "r_embedding"]


@dataclasses.dataclass(frozen=True)
class WuerstchenPriorConfig(ModelConfig):
    """config.json of diffusers' ``WuerstchenPrior`` (same keys and defaults; ``dropout`` is training-only)."""

    c_in: int = 16
    c: int = 1280
    c_cond: int = 1024
    c_r: int = 64
    depth: int = 16
    nhead: int = 16
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.c % self.nhead:
            raise ValueError(f"WuerstchenPrior c={self.c} must split into nhead={self.nhead} heads")
        if self.c_r < 4:
            raise ValueError(f"WuerstchenPrior c_r={self.c_r}: the ratio embedding needs at least 4 channels")

    @classmethod
    def tiny(cls, **overrides: Any) -> "WuerstchenPriorConfig":
        """16 channels in, width 32, text width 24, ratio embedding 8, 2 blocks of 4 heads: for tests."""
        return cls(**{**dict(c_in=16, c=32, c_cond=24, c_r=8, depth=2, nhead=4), **overrides})


def r_embedding(r: jax.Array, c_r: int, max_positions: int = 10000) -> jax.Array:
    """diffusers' ``gen_r_embedding``: ratios (B,) -> (B, c_r) [sin, cos] of ``r * max_positions`` at c_r / 2
    frequencies ``exp(-log(max_positions) * i / (c_r / 2 - 1))``, zero-padded when c_r is odd; float32."""
    half = c_r // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(max_positions) / (half - 1)))
    angles = (jnp.asarray(r, jnp.float32) * max_positions)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
    return jnp.pad(emb, ((0, 0), (0, c_r % 2)))


class WuerstchenPrior(nn.Module, PretrainedModel):
    """diffusers' ``WuerstchenPrior``. Call: ``(x (B, H, W, c_in), r (B,) or a scalar, c (B, L, c_cond))`` ->
    (B, H, W, c_in)."""

    config: WuerstchenPriorConfig
    dtype: Any = jnp.float32

    config_class: ClassVar[type[WuerstchenPriorConfig]] = WuerstchenPriorConfig
    param_axes: ClassVar[tuple] = WUERSTCHEN_PARAM_AXES

    @nn.compact
    def __call__(self, x: jax.Array, r: jax.Array | float, c: jax.Array) -> jax.Array:
        cfg, dtype = self.config, self.dtype
        if x.ndim != 4 or x.shape[-1] != cfg.c_in:
            raise ValueError(f"x must be NHWC with {cfg.c_in} channels, got shape {x.shape}")
        if c.ndim != 3 or c.shape[-1] != cfg.c_cond:
            raise ValueError(f"c must be (batch, tokens, {cfg.c_cond}) text hidden states, got shape {c.shape}")
        x_in = x
        r_embed = r_embedding(jnp.broadcast_to(jnp.reshape(jnp.asarray(r), (-1,)), (x.shape[0],)), cfg.c_r)
        h = conv2d(cfg.c, 1, dtype=dtype, name="projection")(x.astype(dtype))
        cond = Dense(cfg.c, dtype=dtype, name="cond_mapper.0")(c.astype(dtype))
        cond = Dense(cfg.c, dtype=dtype, name="cond_mapper.2")(jax.nn.leaky_relu(cond, 0.2))
        for i in range(cfg.depth):
            h = ResBlock(dtype=dtype, name=f"blocks.{3 * i}")(h)
            h = TimestepBlock(dtype, name=f"blocks.{3 * i + 1}")(h, r_embed)
            h = AttnBlock(cfg.nhead, dtype=dtype, name=f"blocks.{3 * i + 2}")(h, cond)
        out = conv2d(2 * cfg.c_in, 1, dtype=dtype, name="out.1")(layer_norm(1e-6, False, dtype, name="out.0")(h))
        out = out.astype(jnp.float32)
        a, b = jnp.split(out, 2, axis=-1)
        return ((x_in.astype(jnp.float32) - a) / (jnp.abs(1 - b) + 1e-5)).astype(dtype)

    def init_args(self) -> tuple:
        cfg = self.config
        return (jnp.zeros((1, 1, 1, cfg.c_in), self.dtype), jnp.zeros((1,), jnp.float32),
                jnp.zeros((1, 1, cfg.c_cond), self.dtype))
