"""The T5 encoder (T5 v1.1 / Flan-T5 / Flan-UL2): transformers' ``T5EncoderModel`` in Flax.

PixArt-α and DeepFloyd IF encode prompts with T5-v1.1-XXL, Kandinsky 3 with Flan-UL2's encoder.
Pre-norm transformer blocks with T5's RMS norm (no mean, no bias), unscaled attention plus a
relative-position bias that the first block owns and every block reuses, and a (gated) feed-forward.
Module names mirror transformers' state-dict keys (``shared``, ``encoder.block.3.layer.0.SelfAttention.q``,
``encoder.block.3.layer.1.DenseReluDense.wi_0``, ``encoder.final_layer_norm``), so the default key
map of ``convert.engine`` fills every param.

In bfloat16 the residual stream, the norms and the softmax stay in float32, so T5-XXL neither
overflows nor drifts; matmuls run in ``dtype``. ``quantized=True`` builds every Dense layer as an
int8 ``QuantizedDense`` (weight-only, per-channel scales): see ``jaxgen.quantize.quantize_t5``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxgen.nn.linear import Dense
from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.attention import dot_product_attention, key_padding_mask
from jaxgen.quantize import QuantizedDense

__all__ = ["T5Config", "T5EncoderModel", "T5EncoderOutput", "relative_position_bucket"]

# transformers' ACT2FN names used by T5 configs -> JAX functions.
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config(ModelConfig):
    """transformers' ``T5Config`` (field names and defaults); only the encoder's fields matter here.

    ``dense_act_fn`` and ``is_gated_act`` are derived from ``feed_forward_proj`` exactly as
    transformers derives them (its saved values are ignored): ``"gated-gelu"`` -> gated ``gelu_new``,
    ``"gated-silu"`` -> gated ``silu``, ``"relu"`` -> plain ``relu``.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    is_encoder_decoder: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 1
    classifier_dropout: float = 0.0
    is_decoder: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not of the form 'gated-{{act}}' or '{{act}}'"
            )
        if self.dense_act_fn not in _ACTIVATIONS:
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r}: activation {self.dense_act_fn!r} is not supported; "
                f"supported: {sorted(_ACTIVATIONS)}"
            )
        if self.is_decoder:
            raise ValueError("is_decoder=True is not supported: T5EncoderModel is the encoder stack only")

    @property
    def dense_act_fn(self) -> str:
        """The feed-forward activation's transformers name (``gated-gelu`` means ``gelu_new``, for history)."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def is_gated_act(self) -> bool:
        """Whether the feed-forward is gated (``act(wi_0 x) * wi_1 x``) rather than ``act(wi x)``."""
        return self.feed_forward_proj.split("-")[0] == "gated"

    @classmethod
    def tiny(cls, feed_forward_proj: str = "gated-gelu") -> "T5Config":
        """A few-kilobyte config for tests (T5 v1.1 layout unless ``feed_forward_proj`` says otherwise)."""
        return cls(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   feed_forward_proj=feed_forward_proj)


def _dense(features: int, name: str, dtype: Any, quantized: bool) -> nn.Module:
    """T5's bias-free projection: float ``Dense``, or int8 ``QuantizedDense`` when ``quantized``."""
    return (QuantizedDense if quantized else Dense)(features, use_bias=False, dtype=dtype, name=name)


@struct.dataclass
class T5EncoderOutput:
    """transformers' ``BaseModelOutput`` of the encoder: ``last_hidden_state`` (batch, length, d_model)."""

    last_hidden_state: jax.Array


def relative_position_bucket(
    relative_position: np.ndarray, num_buckets: int = 32, max_distance: int = 128
) -> np.ndarray:
    """Bidirectional T5 bucket of each relative position (key position - query position), in numpy.

    Half the buckets hold positive offsets; of each half, the first half are exact small distances
    and the rest log-spaced up to ``max_distance``. Arithmetic in float32 as transformers does it,
    so the bucket boundaries agree exactly. Shapes are static, so this runs once at trace time.
    """
    num_buckets //= 2
    buckets = (relative_position > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative_position)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):  # log(0) only occurs where the exact branch is taken
        scaled = (
            np.log(distance.astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)
        )
    large = max_exact + np.where(np.isfinite(scaled), scaled, 0).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


class T5LayerNorm(nn.Module):
    """T5's RMS norm: ``weight * x / sqrt(mean(x^2) + eps)``, no mean subtraction, no bias; statistics in float32."""

    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x.astype(self.dtype)


class T5RelativePositionBias(nn.Module):
    """The learned bias table (num_buckets, heads) -> bias (1, heads, L, L) for a length-L sequence."""

    config: T5Config

    @nn.compact
    def __call__(self, length: int) -> jax.Array:
        cfg = self.config
        table = self.param(
            "embedding", nn.initializers.normal(1.0), (cfg.relative_attention_num_buckets, cfg.num_heads), jnp.float32
        )
        positions = np.arange(length)
        buckets = relative_position_bucket(
            positions[None, :] - positions[:, None],
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        )
        bias = jnp.take(table.astype(jnp.float32), jnp.asarray(buckets, jnp.int32), axis=0)  # (L, L, heads)
        return jnp.transpose(bias, (2, 0, 1))[None]


class T5Attention(nn.Module):
    """Unscaled multi-head self-attention with an additive relative-position bias.

    Takes x (B, L, d_model), a boolean key mask broadcastable to (B, heads, L, L) or None, and the
    bias (1, heads, L, L) of the first block (None in the first block, which computes it). Returns
    (output (B, L, d_model), the bias, for the next blocks).
    """

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32
    quantized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, position_bias: jax.Array | None):
        cfg = self.config
        b, length, _ = x.shape
        if self.has_relative_attention_bias:
            position_bias = T5RelativePositionBias(cfg, name="relative_attention_bias")(length)
        elif position_bias is None:
            raise ValueError("a T5Attention without relative_attention_bias needs the first block's position_bias")
        dense = lambda features, name: _dense(features, name, self.dtype, self.quantized)
        inner = cfg.num_heads * cfg.d_kv
        q, k, v = (dense(inner, n)(x).reshape(b, length, cfg.num_heads, cfg.d_kv) for n in ("q", "k", "v"))
        # T5 folds 1/sqrt(d) into its initialisation: no scaling of q.k
        out = dot_product_attention(q, k, v, mask, bias=position_bias, scale=1.0)
        return dense(cfg.d_model, "o")(out.reshape(b, length, inner)), position_bias


class T5DenseGatedActDense(nn.Module):
    """Gated feed-forward (T5 v1.1, Flan): ``wo(act(wi_0 x) * wi_1 x)``."""

    config: T5Config
    dtype: Any = jnp.float32
    quantized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = lambda features, name: _dense(features, name, self.dtype, self.quantized)
        act = _ACTIVATIONS[cfg.dense_act_fn]
        h = act(dense(cfg.d_ff, "wi_0")(x)) * dense(cfg.d_ff, "wi_1")(x)
        return dense(cfg.d_model, "wo")(h)


class T5DenseActDense(nn.Module):
    """Plain feed-forward (original T5): ``wo(act(wi x))``."""

    config: T5Config
    dtype: Any = jnp.float32
    quantized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = lambda features, name: _dense(features, name, self.dtype, self.quantized)
        return dense(cfg.d_model, "wo")(_ACTIVATIONS[cfg.dense_act_fn](dense(cfg.d_ff, "wi")(x)))


class T5LayerSelfAttention(nn.Module):
    """``x + SelfAttention(layer_norm(x))``; returns (x, the shared position bias)."""

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32
    quantized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, position_bias: jax.Array | None):
        normed = T5LayerNorm(self.config.layer_norm_epsilon, dtype=self.dtype, name="layer_norm")(x)
        out, position_bias = T5Attention(
            self.config, self.has_relative_attention_bias, dtype=self.dtype, quantized=self.quantized, name="SelfAttention"
        )(normed, mask, position_bias)
        return x + out.astype(x.dtype), position_bias


class T5LayerFF(nn.Module):
    """``x + DenseReluDense(layer_norm(x))``."""

    config: T5Config
    dtype: Any = jnp.float32
    quantized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        ff_cls = T5DenseGatedActDense if cfg.is_gated_act else T5DenseActDense
        normed = T5LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, name="layer_norm")(x)
        return x + ff_cls(cfg, dtype=self.dtype, quantized=self.quantized, name="DenseReluDense")(normed).astype(x.dtype)


class T5Block(nn.Module):
    """One encoder block: ``layer.0`` self-attention, ``layer.1`` feed-forward."""

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: Any = jnp.float32
    quantized: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, position_bias: jax.Array | None):
        x, position_bias = T5LayerSelfAttention(
            self.config, self.has_relative_attention_bias, dtype=self.dtype, quantized=self.quantized, name="layer.0"
        )(x, mask, position_bias)
        return T5LayerFF(self.config, dtype=self.dtype, quantized=self.quantized, name="layer.1")(x), position_bias


class T5Stack(nn.Module):
    """The encoder blocks and final norm: embeddings (B, L, d_model) float32 -> (B, L, d_model) in ``dtype``."""

    config: T5Config
    dtype: Any = jnp.float32
    quantized: bool = False

    @nn.compact
    def __call__(self, hidden_states: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
        cfg = self.config
        mask = None if attention_mask is None else key_padding_mask(attention_mask)
        position_bias = None
        for i in range(cfg.num_layers):
            hidden_states, position_bias = T5Block(
                cfg, has_relative_attention_bias=i == 0, dtype=self.dtype, quantized=self.quantized, name=f"block.{i}"
            )(hidden_states, mask, position_bias)
        return T5LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, name="final_layer_norm")(hidden_states)


class T5EncoderModel(nn.Module, PretrainedModel):
    """transformers' ``T5EncoderModel``.

    ``__call__(input_ids (B, L) int, attention_mask (B, L) 0/1 or None)`` returns ``T5EncoderOutput``
    with ``last_hidden_state`` (B, L, d_model) in ``dtype``. Every position is computed, padded ones
    included (as transformers does); the mask only hides padded keys.
    """

    config: T5Config
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (``jaxgen.quantize.quantize_t5``)

    config_class = T5Config
    # logical axes of the params (jaxgen.sharding); the layer norms and the position bias replicate
    param_axes = (
        (r"encoder/block\.\d+/layer\.0/SelfAttention/[qkv]/kernel", ("embed", "heads")),
        (r"encoder/block\.\d+/layer\.0/SelfAttention/o/kernel", ("heads", "embed")),
        (r"encoder/block\.\d+/layer\.1/DenseReluDense/wi(_0|_1)?/kernel", ("embed", "mlp")),
        (r"encoder/block\.\d+/layer\.1/DenseReluDense/wo/kernel", ("mlp", "embed")),
        (r"shared/embedding", ("vocab", "embed")),
        # int8 T5 (jaxgen.quantize): per-output-channel scales split with their kernel's columns
        (r"encoder/block\.\d+/layer\.0/SelfAttention/[qkv]/scale", ("heads",)),
        (r"encoder/block\.\d+/layer\.1/DenseReluDense/wi(_0|_1)?/scale", ("mlp",)),
    )

    def init_args(self) -> tuple:
        return (jnp.zeros((1, 8), jnp.int32),)

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> T5EncoderOutput:
        cfg = self.config
        embeds = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=self.dtype, name="shared")(input_ids)
        # The residual stream is float32 whatever ``dtype``: T5-XXL's activations grow large.
        hidden = T5Stack(cfg, dtype=self.dtype, quantized=self.quantized, name="encoder")(embeds.astype(jnp.float32), attention_mask)
        return T5EncoderOutput(last_hidden_state=hidden)
