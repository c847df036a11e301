"""Timestep, positional, patch and caption embeddings, named and computed as in diffusers' ``embeddings.py``.

Everything is channels last: ``PatchEmbed`` takes NHWC latents. Frequencies and 2-D positional
tables are constants of the (static) shapes, so they are computed once in numpy on the host, in the
same precision as diffusers, and enter the traced program as literals.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.nn.linear import Conv, Dense

__all__ = [
    "get_activation",
    "get_timestep_embedding",
    "get_1d_sincos_pos_embed_from_grid",
    "get_2d_sincos_pos_embed_from_grid",
    "get_2d_sincos_pos_embed",
    "Timesteps",
    "TimestepEmbedding",
    "PatchEmbed",
    "PixArtAlphaTextProjection",
    "PixArtAlphaCombinedTimestepSizeEmbeddings",
]

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


def get_activation(act_fn: str) -> Callable[[jax.Array], jax.Array]:
    """diffusers' ``get_activation``: an activation name (``silu``, ``swish``, ``mish``, ``gelu``, ``relu``) -> function."""
    try:
        return _ACTIVATIONS[act_fn.lower()]
    except KeyError:
        raise ValueError(f"activation function {act_fn!r} not found; known: {sorted(_ACTIVATIONS)}") from None


def _timestep_frequencies(half_dim: int, downscale_freq_shift: float, max_period: float) -> np.ndarray:
    # The exponent in float32 exactly as torch computes it; exp in float64 rounded once to float32
    # (torch's float32 exp is within one ulp of that).
    exponent = np.float32(-math.log(max_period)) * np.arange(half_dim, dtype=np.float32)
    exponent = exponent / np.float32(half_dim - downscale_freq_shift)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def get_timestep_embedding(
    timesteps: jax.Array,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1,
    scale: float = 1,
    max_period: int = 10000,
) -> jax.Array:
    """Sinusoidal timestep embeddings (DDPM), as diffusers' ``get_timestep_embedding``.

    Args:
      timesteps: (N,) timesteps, may be fractional.
      embedding_dim: output width; an odd width gets a zero last column.
      flip_sin_to_cos: order ``cos, sin`` instead of ``sin, cos``.
      downscale_freq_shift: frequencies are ``exp(-log(max_period) * i / (half_dim - shift))``.
      scale: multiplies the arguments of sin/cos.
      max_period: the longest period.
    Returns:
      (N, embedding_dim) float32.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps should be a 1-d array, got shape {timesteps.shape}")
    half_dim = embedding_dim // 2
    freqs = jnp.asarray(_timestep_frequencies(half_dim, downscale_freq_shift, max_period))
    emb = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    if scale != 1:
        emb = jnp.float32(scale) * emb
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half_dim:], emb[:, :half_dim]], axis=-1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray, flip_sin_to_cos: bool = False) -> np.ndarray:
    """(M,) positions -> (M, embed_dim) float64 ``[sin, cos]`` embeddings (diffusers' function, in numpy)."""
    if embed_dim % 2 != 0:
        raise ValueError("embed_dim must be divisible by 2")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.outer(np.reshape(pos, -1).astype(np.float64), omega)
    emb = np.concatenate([np.sin(out), np.cos(out)], axis=1)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, embed_dim // 2:], emb[:, : embed_dim // 2]], axis=1)
    return emb


def get_2d_sincos_pos_embed_from_grid(embed_dim: int, grid: np.ndarray) -> np.ndarray:
    """A (2, 1, ., .) grid of positions -> (positions, embed_dim) float64: half from ``grid[0]``, half from ``grid[1]``."""
    if embed_dim % 2 != 0:
        raise ValueError("embed_dim must be divisible by 2")
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def get_2d_sincos_pos_embed(
    embed_dim: int,
    grid_size: int | tuple[int, int],
    cls_token: bool = False,
    extra_tokens: int = 0,
    interpolation_scale: float = 1.0,
    base_size: int = 16,
) -> np.ndarray:
    """2-D sin-cos positional table as diffusers' ``get_2d_sincos_pos_embed``, in numpy.

    Positions are ``arange(n) / (n / base_size) / interpolation_scale`` in float32 (as diffusers), the
    sines and cosines in float64. Returns (grid_h * grid_w [+ extra_tokens], embed_dim) float64,
    rows in row-major (h, w) order; cast it to the compute dtype where it is used.
    """
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    gh, gw = grid_size
    grid_h = np.arange(gh, dtype=np.float32) / np.float32(gh / base_size) / np.float32(interpolation_scale)
    grid_w = np.arange(gw, dtype=np.float32) / np.float32(gw / base_size) / np.float32(interpolation_scale)
    grid = np.stack(np.meshgrid(grid_w, grid_h, indexing="xy"), axis=0)  # w first, as diffusers
    grid = grid.reshape(2, 1, gw, gh)
    pos_embed = get_2d_sincos_pos_embed_from_grid(embed_dim, grid)
    if cls_token and extra_tokens > 0:
        pos_embed = np.concatenate([np.zeros((extra_tokens, embed_dim)), pos_embed], axis=0)
    return pos_embed


class Timesteps(nn.Module):
    """diffusers' ``Timesteps``: (N,) timesteps -> (N, num_channels) sinusoidal embeddings (no params)."""

    num_channels: int
    flip_sin_to_cos: bool
    downscale_freq_shift: float
    scale: float = 1

    def __call__(self, timesteps: jax.Array) -> jax.Array:
        return get_timestep_embedding(
            timesteps, self.num_channels, flip_sin_to_cos=self.flip_sin_to_cos,
            downscale_freq_shift=self.downscale_freq_shift, scale=self.scale,
        )


class TimestepEmbedding(nn.Module):
    """diffusers' ``TimestepEmbedding``: ``linear_1`` -> act -> ``linear_2`` [-> post_act].

    Takes sample (..., in_channels) and an optional ``condition`` (..., cond_proj_dim) added through
    ``cond_proj``; returns (..., out_dim or time_embed_dim).
    """

    time_embed_dim: int
    act_fn: str | None = "silu"
    out_dim: int | None = None
    post_act_fn: str | None = None
    cond_proj_dim: int | None = None
    sample_proj_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, sample: jax.Array, condition: jax.Array | None = None) -> jax.Array:
        if self.cond_proj_dim is not None and condition is not None:
            sample = sample + Dense(sample.shape[-1], use_bias=False, dtype=self.dtype, name="cond_proj")(condition)
        sample = Dense(self.time_embed_dim, use_bias=self.sample_proj_bias, dtype=self.dtype, name="linear_1")(sample)
        if self.act_fn is not None:
            sample = get_activation(self.act_fn)(sample)
        out_dim = self.out_dim if self.out_dim is not None else self.time_embed_dim
        sample = Dense(out_dim, use_bias=self.sample_proj_bias, dtype=self.dtype, name="linear_2")(sample)
        if self.post_act_fn is not None:
            sample = get_activation(self.post_act_fn)(sample)
        return sample


class PatchEmbed(nn.Module):
    """diffusers' ``PatchEmbed`` (sin-cos variant): conv ``proj`` with kernel = stride = patch_size, + 2-D pos embed.

    ``height``/``width`` are the training size in pixels of the input (a latent): they fix
    ``base_size = height // patch_size``. The positional table is computed for the actual input
    size, as diffusers does when the size differs from the training one. Takes (B, H, W, C) NHWC;
    returns (B, H/p * W/p, embed_dim) when ``flatten``, else (B, H/p, W/p, embed_dim).
    """

    height: int = 224
    width: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    layer_norm: bool = False
    flatten: bool = True
    bias: bool = True
    interpolation_scale: float = 1
    pos_embed_type: str | None = "sincos"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latent: jax.Array) -> jax.Array:
        if self.pos_embed_type not in (None, "sincos"):
            raise ValueError(f"Unsupported pos_embed_type: {self.pos_embed_type!r}")
        p = self.patch_size
        h, w = latent.shape[1] // p, latent.shape[2] // p
        x = Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", use_bias=self.bias,
                    dtype=self.dtype, name="proj")(latent)
        if self.layer_norm:
            x = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, use_fast_variance=False,
                             dtype=self.dtype, name="norm")(x)
        if self.pos_embed_type is not None:
            table = get_2d_sincos_pos_embed(
                self.embed_dim, (h, w), base_size=self.height // p, interpolation_scale=self.interpolation_scale
            )
            x = (x + jnp.asarray(table.astype(np.float32)).reshape(1, h, w, self.embed_dim)).astype(x.dtype)
        if self.flatten:
            x = x.reshape(x.shape[0], h * w, self.embed_dim)
        return x


class PixArtAlphaTextProjection(nn.Module):
    """diffusers' ``PixArtAlphaTextProjection``: ``linear_1`` -> gelu(tanh) / silu -> ``linear_2``.

    Takes caption (..., in_features); returns (..., out_features or hidden_size).
    """

    hidden_size: int
    out_features: int | None = None
    act_fn: str = "gelu_tanh"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, caption: jax.Array) -> jax.Array:
        if self.act_fn == "gelu_tanh":
            act = lambda x: jax.nn.gelu(x, approximate=True)
        elif self.act_fn == "silu":
            act = jax.nn.silu
        elif self.act_fn == "silu_fp32":
            act = lambda x: jax.nn.silu(x.astype(jnp.float32)).astype(x.dtype)
        else:
            raise ValueError(f"Unknown activation function: act_fn={self.act_fn!r}")
        x = Dense(self.hidden_size, dtype=self.dtype, name="linear_1")(caption)
        x = act(x)
        return Dense(self.out_features or self.hidden_size, dtype=self.dtype, name="linear_2")(x)


class PixArtAlphaCombinedTimestepSizeEmbeddings(nn.Module):
    """diffusers' ``PixArtAlphaCombinedTimestepSizeEmbeddings`` (PixArt-α's t and micro-condition embedder).

    Takes timestep (B,), and with ``use_additional_conditions`` resolution (B, 2) and aspect_ratio
    (B, 1); returns (B, embedding_dim): ``timestep_embedder`` of the 256-wide sinusoidal embedding,
    plus the concatenated ``resolution_embedder`` (2 * size_emb_dim) and ``aspect_ratio_embedder``
    (size_emb_dim) outputs.
    """

    embedding_dim: int
    size_emb_dim: int
    use_additional_conditions: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, timestep: jax.Array, resolution: jax.Array | None = None,
                 aspect_ratio: jax.Array | None = None) -> jax.Array:
        def proj(t: jax.Array) -> jax.Array:
            return get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).astype(self.dtype)

        batch_size = timestep.shape[0]
        emb = TimestepEmbedding(self.embedding_dim, dtype=self.dtype, name="timestep_embedder")(proj(timestep))
        if not self.use_additional_conditions:
            return emb
        if resolution is None or aspect_ratio is None:
            raise ValueError("resolution and aspect_ratio are needed when use_additional_conditions is True")
        res = TimestepEmbedding(self.size_emb_dim, dtype=self.dtype, name="resolution_embedder")(
            proj(jnp.reshape(resolution, -1))).reshape(batch_size, -1)
        ar = TimestepEmbedding(self.size_emb_dim, dtype=self.dtype, name="aspect_ratio_embedder")(
            proj(jnp.reshape(aspect_ratio, -1))).reshape(batch_size, -1)
        return emb + jnp.concatenate([res, ar], axis=1)
