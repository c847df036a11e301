"""Attention: one entry point, the kernel chosen per backend.

``dot_product_attention`` is the only place that computes softmax(q k^T) v. It takes
(batch, length, heads, head_dim) arrays and an optional boolean mask (True = attend) and additive
bias (T5's relative positions), and picks:
  * GPU, half precision: cuDNN flash attention through ``jax.nn.dot_product_attention``;
  * elsewhere (CPU, float32, TPU until splash attention lands): plain XLA, with float32 logits and
    softmax so that bfloat16 inputs do not lose the softmax's precision.
Masks work on every path. ``Attention`` is the projection module around it, shaped like diffusers'
``Attention`` (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.linear import Dense

__all__ = ["dot_product_attention", "Attention", "key_padding_mask"]

_MASKED = -1e30  # finite, so a row that masks everything gives a uniform average rather than NaN


def key_padding_mask(mask: jax.Array) -> jax.Array:
    """(batch, key_length) 0/1 or bool padding mask -> boolean mask broadcastable to (batch, heads, q, k)."""
    return mask.astype(bool)[:, None, None, :]


def _xla_attention(q, k, v, mask, bias, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, _MASKED)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32).astype(q.dtype)


def _use_cudnn(q: jax.Array, k: jax.Array) -> bool:
    return (
        jax.default_backend() == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and q.shape[-1] <= 128
        and q.shape[-1] % 8 == 0
    )


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    *,
    bias: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Scaled dot-product attention.

    Args:
      query: (batch, q_len, heads, head_dim).
      key, value: (batch, k_len, heads, head_dim).
      mask: boolean, broadcastable to (batch, heads, q_len, k_len); True where attention is allowed.
        ``key_padding_mask`` makes one from a (batch, k_len) tokenizer mask.
      bias: additive logits bias broadcastable to (batch, heads, q_len, k_len), or None.
      scale: logits scale; default ``head_dim ** -0.5`` (T5 uses 1.0).
    Returns:
      (batch, q_len, heads, head_dim) in query's dtype.
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if mask is not None:
        mask = jnp.broadcast_to(mask.astype(bool), (query.shape[0], query.shape[2], query.shape[1], key.shape[1]))
    if _use_cudnn(query, key):
        try:
            return jax.nn.dot_product_attention(
                query, key, value, bias=None if bias is None else bias.astype(query.dtype),
                mask=mask, scale=scale, implementation="cudnn",
            )
        except Exception:  # shapes or layouts cuDNN does not take: fall back to XLA
            pass
    return _xla_attention(query, key, value, mask, bias, scale)


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

    Takes hidden_states (batch, q_len, query_dim), optional encoder_hidden_states (batch, k_len,
    cross_attention_dim) for cross-attention, and an optional boolean/0-1 ``attention_mask``
    (batch, k_len) over the keys. Returns (batch, q_len, out_dim or query_dim).
    """

    heads: int
    dim_head: int
    out_dim: int | None = None
    bias: bool = False
    out_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, encoder_hidden_states: jax.Array | None = None,
                 attention_mask: jax.Array | None = None) -> jax.Array:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        inner = self.heads * self.dim_head
        dense = lambda features, use_bias, name: Dense(features, use_bias=use_bias, dtype=self.dtype, name=name)
        b, lq, _ = hidden_states.shape
        q = dense(inner, self.bias, "to_q")(hidden_states).reshape(b, lq, self.heads, self.dim_head)
        k = dense(inner, self.bias, "to_k")(context).reshape(b, context.shape[1], self.heads, self.dim_head)
        v = dense(inner, self.bias, "to_v")(context).reshape(b, context.shape[1], self.heads, self.dim_head)
        mask = None if attention_mask is None else key_padding_mask(attention_mask)
        out = dot_product_attention(q, k, v, mask).reshape(b, lq, inner)
        return dense(self.out_dim or hidden_states.shape[-1], self.out_bias, "to_out.0")(out)
