"""Attention: one entry point, the kernel chosen per backend.

``dot_product_attention`` is the only place that computes softmax(q k^T) v. It takes
(batch, length, heads, head_dim) arrays, an optional boolean mask (True = attend) and an optional
additive bias (T5's relative positions), and runs one of three implementations:

* ``"cudnn"``: cuDNN flash attention through ``jax.nn.dot_product_attention``; CUDA GPUs,
  bfloat16/float16, head_dim a multiple of 8 and at most 128 (256 on Hopper and later). The mask
  and bias are handed to cuDNN as one additive bias in the inputs' dtype.
* ``"splash"``: Pallas splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) on
  TPU. Sequences are zero-padded to multiples of the block sizes and head_dim to a multiple of
  128; padded keys and masked keys are hidden with segment ids (queries 1; keys 1 where
  attended, 0 where masked or padded), so only masks over keys (a (batch, key_length) padding
  mask, as T5's and PixArt's captions have) fit; no additive bias. On other backends an explicit
  ``implementation="splash"`` runs the same kernel in Pallas interpret mode (slow; for tests).
  XLA cannot partition a Pallas call: under a mesh context (``jax.set_mesh``) with axes "data"
  and/or "model", the kernel runs per shard (``shard_map``: batch over "data", heads over
  "model", where they divide); without one, sharded inputs are gathered for it.
* ``"xla"``: plain XLA everywhere, with float32 logits and softmax so that bfloat16 inputs keep
  the softmax's precision.

``implementation=None`` picks cuDNN or splash where the backend, dtypes and shapes allow and XLA
otherwise; the decision is made from shapes and dtypes at trace time (``choose_implementation``),
never by catching a kernel's error. An explicit ``implementation`` that cannot take the inputs
raises a ValueError saying why. All paths agree with XLA to bfloat16 rounding. A query row whose
keys are all masked has no defined result (XLA and cuDNN average all values; splash averages the
padded ones too): padding masks always leave at least one key (T5's EOS).

``Attention`` is the projection module around it, shaped like diffusers' ``Attention``
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxgen.nn.linear import Dense

__all__ = ["dot_product_attention", "choose_implementation", "key_padding_mask", "Attention", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("xla", "cudnn", "splash")

_MASKED = -1e30  # finite, so a row that masks everything gives a uniform average rather than NaN
_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_LANES = 128  # TPU vector lane width: splash block sizes and (here) head_dim are multiples of it
_SPLASH_MAX_BLOCK = 512


def key_padding_mask(mask: jax.Array) -> jax.Array:
    """(batch, key_length) 0/1 or bool padding mask -> boolean mask broadcastable to (batch, heads, q, k)."""
    return mask.astype(bool)[:, None, None, :]


def _as_4d(x: Any) -> Any:
    """Leading 1s up to rank 4 (mask and bias broadcast against (batch, heads, q_len, k_len))."""
    if x is None:
        return None
    shape = (1,) * (4 - len(x.shape)) + tuple(x.shape)
    return jax.ShapeDtypeStruct(shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x.reshape(shape)


def _platform() -> str:
    """"cuda", "rocm", "tpu" or "cpu": the default backend, with GPUs told apart (cuDNN is CUDA-only)."""
    backend = jax.default_backend()
    if backend == "gpu":
        version = jax.extend.backend.get_backend().platform_version.lower()
        return "rocm" if "rocm" in version else "cuda"
    return backend


def _cudnn_max_head_dim(platform: str) -> int:
    if platform == "cuda" and jax.default_backend() == "gpu":
        capability = getattr(jax.devices()[0], "compute_capability", "0.0")
        if tuple(int(c) for c in capability.split(".")[:2]) >= (9, 0):  # Hopper and later
            return 256
    return 128


def _why_not(implementation: str, query, key, value, mask, bias, platform: str) -> str | None:
    """Why ``implementation`` cannot run these inputs on ``platform``, or None if it can."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} or None; got {implementation!r}")
    if implementation == "xla":
        return None
    head_dim = query.shape[-1]
    if not (key.shape[-1] == value.shape[-1] == head_dim and query.shape[2] == key.shape[2] == value.shape[2]):
        return f"needs equal heads and head_dim for q, k, v; got {query.shape}, {key.shape}, {value.shape}"
    if implementation == "cudnn":
        if platform != "cuda":
            return f"cuDNN flash attention needs a CUDA GPU; the backend is {platform!r}"
        dtypes = {jnp.dtype(x.dtype) for x in (query, key, value)}
        if len(dtypes) != 1 or dtypes.pop() not in _HALF:
            return f"cuDNN flash attention needs q, k, v all bfloat16 or all float16; got {query.dtype}, {key.dtype}, {value.dtype}"
        max_dim = _cudnn_max_head_dim(platform)
        if head_dim % 8 or head_dim > max_dim:
            return f"cuDNN flash attention needs head_dim a multiple of 8 and <= {max_dim}; got {head_dim}"
        return None
    if implementation == "splash":  # any platform: off TPU it runs in interpret mode
        if bias is not None:
            return "splash attention takes no additive bias (T5's relative positions)"
        if mask is not None and (mask.shape[1] != 1 or mask.shape[2] != 1):
            return f"splash attention takes only masks over keys, shaped (batch, 1, 1, k_len); got {mask.shape}"
    return None


def choose_implementation(
    query: Any,
    key: Any,
    value: Any,
    mask: Any = None,
    *,
    bias: Any = None,
    implementation: str | None = None,
    platform: str | None = None,
) -> str:
    """The implementation ``dot_product_attention`` runs for these inputs: "cudnn", "splash" or "xla".

    Arguments are arrays or ``jax.ShapeDtypeStruct``s shaped as for ``dot_product_attention``.
    ``implementation=None`` picks cuDNN on CUDA and splash on TPU when they can take the inputs,
    XLA otherwise; an explicit one is checked and returned, or a ValueError says why it cannot run.
    ``platform`` ("cuda", "rocm", "tpu", "cpu") defaults to the default backend's.
    """
    platform = _platform() if platform is None else platform
    mask, bias = _as_4d(mask), _as_4d(bias)
    if implementation is not None:
        reason = _why_not(implementation, query, key, value, mask, bias, platform)
        if reason is not None:
            raise ValueError(f"implementation={implementation!r} cannot run these inputs: {reason}")
        return implementation
    preferred = {"cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")
    if _why_not(preferred, query, key, value, mask, bias, platform) is None:
        return preferred
    return "xla"


def _xla_attention(q, k, v, mask, bias, scale):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, _MASKED)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32).astype(q.dtype)


def _cudnn_attention(q, k, v, mask, bias, scale):
    # cuDNN takes bias/mask with full (q_len, k_len) trailing dims; batch and heads may broadcast.
    lq, lk = q.shape[1], k.shape[1]
    if mask is not None:
        mask = jnp.broadcast_to(mask, (mask.shape[0], mask.shape[1], lq, lk))
    if bias is not None:
        bias = jnp.broadcast_to(bias, (bias.shape[0], bias.shape[1], lq, lk)).astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="cudnn")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def splash_layout(q_len: int, k_len: int, head_dim: int) -> tuple[int, int, int, int, int]:
    """(block_q, block_kv, padded q_len, padded k_len, padded head_dim) used by the splash path.

    Blocks are multiples of 128 of at most 512; lengths are padded up to a multiple of their block.
    """
    block_q = min(_SPLASH_MAX_BLOCK, _round_up(q_len, _LANES))
    block_kv = min(_SPLASH_MAX_BLOCK, _round_up(k_len, _LANES))
    return block_q, block_kv, _round_up(q_len, block_q), _round_up(k_len, block_kv), _round_up(head_dim, _LANES)


def splash_segment_ids(mask: jax.Array | None, batch: int, q_pad: int, k_len: int, k_pad: int) -> tuple[jax.Array, jax.Array] | None:
    """Segment ids that make splash attend exactly where ``mask`` (batch|1, 1, 1, k_len) allows.

    Returns (q_ids (batch, q_pad) all 1, kv_ids (batch, k_pad): 1 for attended keys, 0 for masked
    and padded ones), or None when no key is masked or padded.
    """
    if mask is None and k_pad == k_len:
        return None
    keep = jnp.ones((batch, k_len), jnp.int32) if mask is None else jnp.broadcast_to(mask[:, 0, 0, :], (batch, k_len)).astype(jnp.int32)
    kv_ids = jnp.pad(keep, ((0, 0), (0, k_pad - k_len)))
    return jnp.ones((batch, q_pad), jnp.int32), kv_ids


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, q_pad: int, k_pad: int, block_q: int, block_kv: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    mask = splash.MultiHeadMask([splash.FullMask((q_pad, k_pad))] * heads)
    # Backward blocks as well, so that the kernel can be differentiated (fine-tuning).
    blocks = splash.BlockSizes(
        block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
        block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
        block_q_dq=block_q, block_kv_dq=block_kv,
    )
    # Built once per shape and cached: its mask tables must be concrete arrays, not a trace's tracers.
    with jax.ensure_compile_time_eval():
        return splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_attention(q, k, v, mask, scale, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    b, lq, heads, d = q.shape
    lk = k.shape[1]
    block_q, block_kv, q_pad, k_pad, d_pad = splash_layout(lq, lk, d)
    # The kernel does not scale: fold the scale into q (in float32, one rounding to q's dtype).
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)

    def heads_first(x, length):  # (B, L, H, D) -> zero-padded (B, H, L_pad, D_pad)
        x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, d_pad - d)))
        return jnp.transpose(x, (0, 2, 1, 3))

    q, k, v = heads_first(q, q_pad), heads_first(k, k_pad), heads_first(v, k_pad)
    ids = splash_segment_ids(mask, b, q_pad, lk, k_pad)
    data, model = _splash_mesh_axes(b, heads)

    def local(q, k, v, *ids):  # one device's (batch, heads) block
        kernel = _splash_kernel(q.shape[1], q_pad, k_pad, block_q, block_kv, interpret)
        if not ids:
            return jax.vmap(kernel)(q, k, v)
        return jax.vmap(lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=SegmentIds(qi, ki)))(q, k, v, *ids)

    args = (q, k, v) if ids is None else (q, k, v, *ids)
    if data is not None or model is not None:
        # A Pallas call is opaque to XLA's partitioner, which would gather the whole batch onto
        # every device: under a mesh context, run it per shard instead (batch over "data", heads over "model").
        qkv_spec = PartitionSpec(data, model, None, None)
        specs = (qkv_spec,) * 3 + ((PartitionSpec(data, None),) * 2 if ids is not None else ())
        local = jax.shard_map(local, in_specs=specs, out_specs=qkv_spec, check_vma=False)
        if _explicit_mesh():  # with sharding in types, the inputs must already have shard_map's specs
            args = tuple(jax.reshard(x, spec) for x, spec in zip(args, specs))
    out = local(*args)
    return jnp.transpose(out, (0, 2, 1, 3))[:, :lq, :, :d]


def _explicit_mesh() -> bool:
    return all(t == jax.sharding.AxisType.Explicit for t in jax.sharding.get_abstract_mesh().axis_types)


def _splash_mesh_axes(batch: int, heads: int) -> tuple[str | None, str | None]:
    """Mesh axes to split splash's batch and heads over: those of the mesh context (``jax.set_mesh``)
    named "data" and "model" (jaxgen.sharding's names) that divide them; (None, None) without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None, None
    sizes = dict(mesh.shape)
    data = "data" if sizes.get("data", 1) > 1 and batch % sizes["data"] == 0 else None
    model = "model" if sizes.get("model", 1) > 1 and heads % sizes["model"] == 0 else None
    return data, model


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    *,
    bias: jax.Array | None = None,
    scale: float | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """Scaled dot-product attention.

    Args:
      query: (batch, q_len, heads, head_dim).
      key, value: (batch, k_len, heads, head_dim).
      mask: boolean, broadcastable to (batch, heads, q_len, k_len); True where attention is allowed.
        ``key_padding_mask`` makes one from a (batch, k_len) tokenizer mask.
      bias: additive logits bias broadcastable to (batch, heads, q_len, k_len), or None.
      scale: logits scale; default ``head_dim ** -0.5`` (T5 uses 1.0).
      implementation: "xla", "cudnn", "splash", or None to choose by backend, dtypes and shapes
        (see ``choose_implementation``).
    Returns:
      (batch, q_len, heads, head_dim) in query's dtype.
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    mask = None if mask is None else _as_4d(jnp.asarray(mask).astype(bool))
    bias = _as_4d(bias)
    platform = _platform()
    chosen = choose_implementation(query, key, value, mask, bias=bias, implementation=implementation, platform=platform)
    if chosen == "cudnn":
        return _cudnn_attention(query, key, value, mask, bias, scale)
    if chosen == "splash":
        return _splash_attention(query, key, value, mask, scale, interpret=platform != "tpu")
    return _xla_attention(query, key, value, mask, bias, scale)


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

    Takes hidden_states (batch, q_len, query_dim), optional encoder_hidden_states (batch, k_len,
    cross_attention_dim) for cross-attention, an optional boolean/0-1 ``attention_mask``
    (batch, k_len) over the keys, and an optional additive ``attention_bias`` broadcastable to
    (batch, heads, q_len, k_len) (diffusers' float masks: 0 attended, -10000 masked, e.g. the Kandinsky
    prior's causal + padding mask; added to the float32 logits). Returns (batch, q_len, out_dim or query_dim).
    ``implementation`` is passed to ``dot_product_attention`` (None: chosen per backend).
    """

    heads: int
    dim_head: int
    out_dim: int | None = None
    bias: bool = False
    out_bias: bool = True
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, hidden_states: jax.Array, encoder_hidden_states: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, attention_bias: jax.Array | None = None) -> jax.Array:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        inner = self.heads * self.dim_head
        dense = lambda features, use_bias, name: Dense(features, use_bias=use_bias, dtype=self.dtype, name=name)
        b, lq, _ = hidden_states.shape
        q = dense(inner, self.bias, "to_q")(hidden_states).reshape(b, lq, self.heads, self.dim_head)
        k = dense(inner, self.bias, "to_k")(context).reshape(b, context.shape[1], self.heads, self.dim_head)
        v = dense(inner, self.bias, "to_v")(context).reshape(b, context.shape[1], self.heads, self.dim_head)
        mask = None if attention_mask is None else key_padding_mask(attention_mask)
        out = dot_product_attention(q, k, v, mask, bias=attention_bias, implementation=self.implementation)
        out = out.reshape(b, lq, inner)
        return dense(self.out_dim or hidden_states.shape[-1], self.out_bias, "to_out.0")(out)
