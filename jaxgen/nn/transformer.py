"""Pieces of diffusers' ``BasicTransformerBlock`` (``models/attention.py``): feed-forward, its activations, and
the pre-LayerNorm block (whose self-attention also takes diffusers' additive float masks, as the Kandinsky
prior's causal + padding mask).

Names mirror diffusers: ``ff.net.0.proj`` (the activation module's projection) and ``ff.net.2`` (the
output projection); ``norm1``/``attn1``/``norm2``/``attn2``/``norm3``/``ff`` in the block. Sequences
are (batch, length, width). Dropout is an identity (inference only).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.linear import Dense
from jaxgen.nn.attention import Attention

__all__ = ["layer_norm", "GELU", "GEGLU", "ApproximateGELU", "FeedForward", "BasicTransformerBlock",
           "TRANSFORMER_PARAM_AXES"]

TRANSFORMER_PARAM_AXES = (
    # diffusers' Attention (to_q/to_k/to_v/to_out.0) and FeedForward (net.0 proj, net.2)
    (r"(.*/)?to_[qkv]/kernel", ("embed", "heads")),
    (r"(.*/)?to_[qkv]/bias", ("heads",)),
    (r"(.*/)?to_out\.0/kernel", ("heads", "embed")),
    (r"(.*/)?ff/net\.0/proj/kernel", ("embed", "mlp")),
    (r"(.*/)?ff/net\.0/proj/bias", ("mlp",)),
    (r"(.*/)?ff/net\.2/kernel", ("mlp", "embed")),
)
"""Logical axes (``jaxgen.sharding``) of the attention and feed-forward params, wherever they sit in a model:
heads and the feed-forward width split over the mesh's ``model`` axis, Megatron style."""


def layer_norm(eps: float, elementwise_affine: bool, dtype: Any, name: str) -> nn.LayerNorm:
    """``torch.nn.LayerNorm(dim, eps, elementwise_affine)`` as Flax: two-pass variance, as torch computes it."""
    return nn.LayerNorm(epsilon=eps, use_scale=elementwise_affine, use_bias=elementwise_affine,
                        use_fast_variance=False, dtype=dtype, name=name)


class GELU(nn.Module):
    """diffusers' ``GELU``: ``proj`` then gelu (exact, or tanh when ``approximate="tanh"``). (..., in) -> (..., dim_out)."""

    dim_out: int
    approximate: str = "none"
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        if self.approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate={self.approximate!r}; expected 'none' or 'tanh'")
        x = Dense(self.dim_out, use_bias=self.bias, dtype=self.dtype, name="proj")(hidden_states)
        return jax.nn.gelu(x, approximate=self.approximate == "tanh")


class GEGLU(nn.Module):
    """diffusers' ``GEGLU``: ``proj`` to 2 * dim_out, then ``x * gelu(gate)`` (exact gelu). (..., in) -> (..., dim_out)."""

    dim_out: int
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        x = Dense(2 * self.dim_out, use_bias=self.bias, dtype=self.dtype, name="proj")(hidden_states)
        x, gate = jnp.split(x, 2, axis=-1)
        return x * jax.nn.gelu(gate, approximate=False)


class ApproximateGELU(nn.Module):
    """diffusers' ``ApproximateGELU``: ``proj`` then ``x * sigmoid(1.702 x)``. (..., in) -> (..., dim_out)."""

    dim_out: int
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        x = Dense(self.dim_out, use_bias=self.bias, dtype=self.dtype, name="proj")(hidden_states)
        return x * jax.nn.sigmoid(1.702 * x)


class FeedForward(nn.Module):
    """diffusers' ``FeedForward``: ``net.0`` (activation with its projection to inner_dim), ``net.2`` (linear out).

    ``activation_fn``: ``gelu``, ``gelu-approximate`` (tanh), ``geglu`` or ``geglu-approximate``.
    inner_dim defaults to ``dim * mult``. Takes (..., dim); returns (..., dim_out or dim).
    """

    dim_out: int | None = None
    mult: int = 4
    activation_fn: str = "geglu"
    inner_dim: int | None = None
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        dim = hidden_states.shape[-1]
        inner = self.inner_dim if self.inner_dim is not None else int(dim * self.mult)
        kw = dict(bias=self.bias, dtype=self.dtype, name="net.0")
        if self.activation_fn == "gelu":
            act = GELU(inner, **kw)
        elif self.activation_fn == "gelu-approximate":
            act = GELU(inner, approximate="tanh", **kw)
        elif self.activation_fn == "geglu":
            act = GEGLU(inner, **kw)
        elif self.activation_fn == "geglu-approximate":
            act = ApproximateGELU(inner, **kw)
        else:
            raise ValueError(
                f"activation_fn={self.activation_fn!r} is not supported; "
                "expected 'gelu', 'gelu-approximate', 'geglu' or 'geglu-approximate'"
            )
        x = act(hidden_states)
        return Dense(self.dim_out or dim, use_bias=self.bias, dtype=self.dtype, name="net.2")(x)


class BasicTransformerBlock(nn.Module):
    """diffusers' ``BasicTransformerBlock`` with ``norm_type="layer_norm"`` (pre-norm residual block).

    norm1 -> attn1 (self-attention, or cross-attention when ``only_cross_attention``) -> + x;
    norm2 -> attn2 (cross-attention; self-attention when ``double_self_attention``), present when
    ``cross_attention_dim`` is set or ``double_self_attention``; norm3 -> ff -> + x.
    Takes hidden_states (B, L, dim), encoder_hidden_states (B, S, cross_attention_dim), 0/1
    key-padding masks ``attention_mask`` (B, L or S) / ``encoder_attention_mask`` (B, S), and an
    optional additive ``attention_bias`` for attn1 broadcastable to (B, heads, L, L or S) (diffusers'
    float self-attention mask, e.g. causal); returns (B, L, dim).
    """

    num_attention_heads: int
    attention_head_dim: int
    cross_attention_dim: int | None = None
    activation_fn: str = "geglu"
    attention_bias: bool = False
    only_cross_attention: bool = False
    double_self_attention: bool = False
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    ff_inner_dim: int | None = None
    ff_bias: bool = True
    attention_out_bias: bool = True
    dtype: Any = jnp.float32

    def _attention(self, name: str) -> Attention:
        return Attention(self.num_attention_heads, self.attention_head_dim, bias=self.attention_bias,
                         out_bias=self.attention_out_bias, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, hidden_states: jax.Array, attention_mask: jax.Array | None = None,
                 encoder_hidden_states: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None,
                 attention_bias: jax.Array | None = None) -> jax.Array:
        norm = lambda name: layer_norm(self.norm_eps, self.norm_elementwise_affine, self.dtype, name)
        x = norm("norm1")(hidden_states)
        context = encoder_hidden_states if self.only_cross_attention else None
        hidden_states = hidden_states + self._attention("attn1")(x, context, attention_mask, attention_bias)
        if self.cross_attention_dim is not None or self.double_self_attention:
            x = norm("norm2")(hidden_states)
            hidden_states = hidden_states + self._attention("attn2")(x, encoder_hidden_states, encoder_attention_mask)
        x = norm("norm3")(hidden_states)
        ff = FeedForward(activation_fn=self.activation_fn, inner_dim=self.ff_inner_dim, bias=self.ff_bias,
                         dtype=self.dtype, name="ff")
        return hidden_states + ff(x)
