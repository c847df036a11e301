"""CLIP text and vision towers: transformers' ``CLIPTextModel``, ``CLIPTextModelWithProjection`` and
``CLIPVisionModelWithProjection`` in Flax.

The x4 upscaler, Würstchen and UniDiffuser encode prompts with the CLIP text tower; Kandinsky's
priors and UniDiffuser use the projected text and image embeddings; IF's safety checker runs the
vision tower. Both towers are pre-norm transformers (``layer_norm1`` -> ``self_attn`` -> residual,
``layer_norm2`` -> ``mlp`` -> residual); the text tower is causal with a final norm and pools at the
EOS token, the vision tower embeds patches plus a class token, norms them (``pre_layrnorm``) and
pools the class token (``post_layernorm``).

Module names mirror transformers' state-dict keys as checkpoints store them
(``text_model.embeddings.token_embedding``, ``text_model.encoder.layers.3.self_attn.q_proj``,
``text_model.final_layer_norm``, ``text_projection``, ``vision_model.embeddings.class_embedding``,
``vision_model.pre_layrnorm``, ``visual_projection``), so ``convert.engine``'s default rule fills
every param. Images are channels last: ``pixel_values`` (batch, height, width, channels).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.attention import dot_product_attention
from jaxgen.nn.linear import Conv, Dense
from jaxgen.nn.transformer import layer_norm
from jaxgen.quantize import QuantizedDense

__all__ = [
    "CLIPTextConfig", "CLIPVisionConfig", "CLIPTextModel", "CLIPTextModelWithProjection",
    "CLIPVisionModelWithProjection", "BaseModelOutputWithPooling", "CLIPTextModelOutput", "CLIPVisionModelOutput",
]

# transformers' ACT2FN names used by CLIP configs -> JAX functions.
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _sub_config(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The tower's own dict: ``config[key]`` (updated by the legacy ``key + "_dict"``) in a CLIPModel-style
    config (``CLIPConfig``, ``IFSafetyChecker``), else the config itself (a single-tower config.json)."""
    if key in config or f"{key}_dict" in config:
        return {**(config.get(key) or {}), **(config.get(f"{key}_dict") or {})}
    return config


def _check_common(config: "CLIPTextConfig | CLIPVisionConfig") -> None:
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"hidden_size={config.hidden_size} is not a multiple of num_attention_heads={config.num_attention_heads}"
        )
    if config.hidden_act not in _ACTIVATIONS:
        raise ValueError(f"hidden_act={config.hidden_act!r} is not supported; supported: {sorted(_ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(ModelConfig):
    """transformers' ``CLIPTextConfig`` (field names and defaults).

    ``from_dict`` reads a text tower's config.json, or the ``text_config`` of a CLIPModel-style one.
    ``eos_token_id`` decides the pooling as transformers does: 2 (the value of configs written before
    transformers 4.31) pools at the largest token id, anything else at the first ``eos_token_id``.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int | None = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.eos_token_id, int) or isinstance(self.eos_token_id, bool):
            raise ValueError(f"eos_token_id={self.eos_token_id!r}: the pooled output needs a single integer EOS id")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> "CLIPTextConfig":
        """From a CLIP text config.json, or a CLIPModel-style dict (its ``text_config``)."""
        return super().from_dict(_sub_config(config, "text_config"), **overrides)

    @classmethod
    def tiny(cls, eos_token_id: int = 2, hidden_act: str = "quick_gelu") -> "CLIPTextConfig":
        """A few-kilobyte config for tests (legacy EOS pooling unless ``eos_token_id`` says otherwise)."""
        return cls(vocab_size=100, hidden_size=32, intermediate_size=64, projection_dim=24, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act,
                   bos_token_id=0, eos_token_id=eos_token_id)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(ModelConfig):
    """transformers' ``CLIPVisionConfig`` (field names and defaults).

    ``from_dict`` reads a vision tower's config.json, or the ``vision_config`` of a CLIPModel-style
    one (the IF safety checker's): the tower's own ``projection_dim`` counts, not the top level's,
    as in transformers.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self) -> None:
        _check_common(self)
        for name in ("image_size", "patch_size"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"{name}={getattr(self, name)!r}: only square images and patches (an int) are supported")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> "CLIPVisionConfig":
        """From a CLIP vision config.json, or a CLIPModel-style dict (its ``vision_config``)."""
        return super().from_dict(_sub_config(config, "vision_config"), **overrides)

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def tiny(cls, hidden_act: str = "quick_gelu") -> "CLIPVisionConfig":
        """A few-kilobyte config for tests: 16x16 images of 4x4 patches."""
        return cls(hidden_size=32, intermediate_size=64, projection_dim=24, num_hidden_layers=2,
                   num_attention_heads=4, image_size=16, patch_size=4, hidden_act=hidden_act)


class _IndexableOutput:
    """Index like transformers' ``ModelOutput``: ``out[0]`` is the first field that is not None."""

    def __getitem__(self, index: int) -> Any:
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return tuple(v for v in values if v is not None)[index]


@struct.dataclass
class BaseModelOutputWithPooling(_IndexableOutput):
    """``CLIPTextModel``'s output: ``last_hidden_state`` (B, L, D) after the final norm (with ``clip_skip``
    = k, layer -(k + 1)'s output through it), ``pooler_output`` (B, D) at the EOS token of the last layer,
    and ``hidden_states`` (embeddings then every layer's output, the last one before the final norm)
    when asked for."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class CLIPTextModelOutput(_IndexableOutput):
    """``CLIPTextModelWithProjection``'s output: ``text_embeds`` (B, projection_dim), ``last_hidden_state``
    (B, L, D), ``hidden_states`` when asked for."""

    text_embeds: jax.Array
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None


@struct.dataclass
class CLIPVisionModelOutput(_IndexableOutput):
    """``CLIPVisionModelWithProjection``'s output: ``image_embeds`` (B, projection_dim),
    ``last_hidden_state`` (B, 1 + patches, D) (not post-normed), ``hidden_states`` when asked for."""

    image_embeds: jax.Array
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None


def _dense(quantized: bool, features: int, **kwargs: Any) -> nn.Module:
    """A projection: float ``Dense``, or int8 ``QuantizedDense`` (same param names plus ``scale``) when ``quantized``."""
    return (QuantizedDense if quantized else Dense)(features, **kwargs)


class CLIPAttention(nn.Module):
    """Multi-head self-attention (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, all with bias).

    (B, L, D) and a boolean mask broadcastable to (B, heads, L, L) or None -> (B, L, D).
    """

    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg = self.config
        b, length, dim = hidden_states.shape
        heads = cfg.num_attention_heads
        q, k, v = (
            _dense(self.quantized, dim, dtype=self.dtype, name=n)(hidden_states).reshape(b, length, heads, dim // heads)
            for n in ("q_proj", "k_proj", "v_proj")
        )
        out = dot_product_attention(q, k, v, mask)
        if mask is not None:
            # a query that sees no key (a left-padded position) gets zeros, as torch's SDPA (transformers'
            # default) gives it, rather than dot_product_attention's uniform average
            sees_any = jnp.broadcast_to(mask, (b, heads, length, length)).any(axis=-1)  # (B, heads, L)
            out = jnp.where(jnp.transpose(sees_any, (0, 2, 1))[..., None], out, 0)
        out = out.reshape(b, length, dim)
        return _dense(self.quantized, dim, dtype=self.dtype, name="out_proj")(out)


class CLIPMLP(nn.Module):
    """``fc2(act(fc1(x)))``: (B, L, D) -> (B, L, D)."""

    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        cfg = self.config
        h = _dense(self.quantized, cfg.intermediate_size, dtype=self.dtype, name="fc1")(hidden_states)
        return _dense(self.quantized, cfg.hidden_size, dtype=self.dtype, name="fc2")(_ACTIVATIONS[cfg.hidden_act](h))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm block: ``x + self_attn(layer_norm1(x))``, then ``x + mlp(layer_norm2(x))``."""

    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array | None) -> jax.Array:
        eps = self.config.layer_norm_eps
        h = layer_norm(eps, True, self.dtype, "layer_norm1")(hidden_states)
        hidden_states = hidden_states + CLIPAttention(self.config, dtype=self.dtype, quantized=self.quantized, name="self_attn")(h, mask)
        h = layer_norm(eps, True, self.dtype, "layer_norm2")(hidden_states)
        return hidden_states + CLIPMLP(self.config, dtype=self.dtype, quantized=self.quantized, name="mlp")(h)


class CLIPEncoder(nn.Module):
    """The stack of ``layers.N``: (B, L, D) -> (last output, (input, each layer's output))."""

    config: CLIPTextConfig | CLIPVisionConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array | None):
        states = [hidden_states]
        for i in range(self.config.num_hidden_layers):
            hidden_states = CLIPEncoderLayer(self.config, dtype=self.dtype, quantized=self.quantized, name=f"layers.{i}")(hidden_states, mask)
            states.append(hidden_states)
        return hidden_states, tuple(states)


class CLIPTextEmbeddings(nn.Module):
    """``token_embedding(input_ids) + position_embedding(position_ids)``: (B, L) ints -> (B, L, D)."""

    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, position_ids: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[-1]
        if length > cfg.max_position_embeddings:
            raise ValueError(
                f"Sequence length must be less than max_position_embeddings (got `sequence length`: {length} "
                f"and max_position_embeddings: {cfg.max_position_embeddings}"
            )
        if position_ids is None:
            position_ids = jnp.arange(length)[None]
        embed = lambda n, name: nn.Embed(n, cfg.hidden_size, dtype=self.dtype, name=name)
        return embed(cfg.vocab_size, "token_embedding")(input_ids) + embed(
            cfg.max_position_embeddings, "position_embedding")(position_ids)


def check_clip_skip(clip_skip: int | None, num_hidden_layers: int) -> None:
    """``clip_skip`` = k picks ``hidden_states[-(k + 1)]``, one of the num_hidden_layers + 1 states: 0 <= k <= layers.

    diffusers does not check it; a negative k would silently pick a state from the wrong end.
    """
    if clip_skip is None:
        return
    if not isinstance(clip_skip, (int, np.integer)) or isinstance(clip_skip, bool) or not 0 <= clip_skip <= num_hidden_layers:
        raise ValueError(
            f"clip_skip={clip_skip!r}: expected an int from 0 to num_hidden_layers={num_hidden_layers} (the number of"
            " layers to skip from the end) or None"
        )


def causal_padding_mask(attention_mask: jax.Array | None, length: int) -> jax.Array:
    """Query i sees keys j <= i that are not padding: (B, L) 0/1 mask or None -> bool (B or 1, 1, L, L)."""
    causal = jnp.asarray(np.tril(np.ones((length, length), bool)))[None, None]
    if attention_mask is None:
        return causal
    return causal & attention_mask.astype(bool)[:, None, None, :]


class CLIPTextTransformer(nn.Module):
    """The text tower (``text_model``): embeddings, causal encoder, ``final_layer_norm``, EOS pooling.

    ``clip_skip`` = k (diffusers' ``encode_prompt``) makes ``last_hidden_state`` the output of the layer
    k before the last, put through this tower's own ``final_layer_norm``; the pooled output stays the
    last layer's, since diffusers' clip skip replaces only the sequence embeddings (SDXL still pools
    from the full forward pass).
    """

    config: CLIPTextConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None, output_hidden_states: bool = False,
                 clip_skip: int | None = None):
        cfg = self.config
        check_clip_skip(clip_skip, cfg.num_hidden_layers)
        hidden = CLIPTextEmbeddings(cfg, dtype=self.dtype, name="embeddings")(input_ids, position_ids)
        mask = causal_padding_mask(attention_mask, input_ids.shape[-1])
        hidden, states = CLIPEncoder(cfg, dtype=self.dtype, quantized=self.quantized, name="encoder")(hidden, mask)
        # one module, so the clip-skipped states go through the same params as the last layer's
        final_layer_norm = layer_norm(cfg.layer_norm_eps, True, self.dtype, "final_layer_norm")
        last = final_layer_norm(hidden)
        if cfg.eos_token_id == 2:
            # configs written before transformers 4.31 carry a wrong eos id: pool at the largest id (EOT)
            eos_index = jnp.argmax(input_ids, axis=-1)
        else:
            eos_index = jnp.argmax((input_ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = jnp.take_along_axis(last, eos_index[:, None, None], axis=1)[:, 0]
        if clip_skip is not None:
            # after pooling: only the sequence output is clip-skipped (under jit, the skipped layers are
            # dropped from the graph when nothing uses the pooled output)
            last = final_layer_norm(states[-(clip_skip + 1)])
        return BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=pooled, hidden_states=states if output_hidden_states else None
        )


class CLIPVisionEmbeddings(nn.Module):
    """Patches (a stride-``patch_size`` conv without bias) after a learned ``class_embedding``, plus
    ``position_embedding``: (B, H, W, C) -> (B, 1 + (H / patch)^2, D)."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        cfg = self.config
        b, height, width, _ = pixel_values.shape
        if height != cfg.image_size or width != cfg.image_size:
            raise ValueError(f"Input image size ({height}*{width}) doesn't match model ({cfg.image_size}*{cfg.image_size}).")
        p = cfg.patch_size
        patches = Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                       name="patch_embedding")(pixel_values.astype(self.dtype))
        patches = patches.reshape(b, -1, cfg.hidden_size)  # row-major over the grid, as torch's flatten(2)
        class_embedding = self.param("class_embedding", nn.initializers.normal(1.0), (cfg.hidden_size,), jnp.float32)
        cls_tokens = jnp.broadcast_to(class_embedding.astype(patches.dtype), (b, 1, cfg.hidden_size))
        positions = nn.Embed(cfg.num_positions, cfg.hidden_size, dtype=self.dtype, name="position_embedding")(
            jnp.arange(cfg.num_positions)[None])
        return jnp.concatenate([cls_tokens, patches], axis=1) + positions


class CLIPVisionTransformer(nn.Module):
    """The vision tower (``vision_model``): embeddings, ``pre_layrnorm``, encoder; pools the class token
    through ``post_layernorm``. Returns (last_hidden_state, pooled, hidden states)."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    @nn.compact
    def __call__(self, pixel_values: jax.Array):
        cfg = self.config
        hidden = CLIPVisionEmbeddings(cfg, dtype=self.dtype, name="embeddings")(pixel_values)
        hidden = layer_norm(cfg.layer_norm_eps, True, self.dtype, "pre_layrnorm")(hidden)
        last, states = CLIPEncoder(cfg, dtype=self.dtype, quantized=self.quantized, name="encoder")(hidden, None)
        pooled = layer_norm(cfg.layer_norm_eps, True, self.dtype, "post_layernorm")(last[:, 0])
        return last, pooled, states


def _dummy_ids(config: CLIPTextConfig) -> jax.Array:
    return jnp.zeros((1, min(8, config.max_position_embeddings)), jnp.int32)


class CLIPTextModel(nn.Module, PretrainedModel):
    """transformers' ``CLIPTextModel``.

    ``__call__(input_ids (B, L) int, attention_mask (B, L) 0/1 or None, position_ids (B, L) or None,
    output_hidden_states=False, clip_skip=None)`` returns ``BaseModelOutputWithPooling``: ``last_hidden_state``
    (B, L, hidden_size), ``pooler_output`` (B, hidden_size) at the EOS token, ``hidden_states``
    (num_hidden_layers + 1 arrays) when asked for. Attention is causal; the mask also hides padded keys.
    ``clip_skip`` = k (0 <= k <= num_hidden_layers; not a transformers argument) makes ``last_hidden_state``
    ``text_model.final_layer_norm(hidden_states[-(k + 1)])``, diffusers' clip skip; the pooled output is
    unchanged.
    """

    config: CLIPTextConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    config_class = CLIPTextConfig

    def init_args(self) -> tuple:
        return (_dummy_ids(self.config),)

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None, output_hidden_states: bool = False,
                 clip_skip: int | None = None) -> BaseModelOutputWithPooling:
        return CLIPTextTransformer(self.config, dtype=self.dtype, quantized=self.quantized, name="text_model")(
            input_ids, attention_mask, position_ids, output_hidden_states, clip_skip)


class CLIPTextModelWithProjection(nn.Module, PretrainedModel):
    """transformers' ``CLIPTextModelWithProjection``: the text tower and ``text_projection`` (no bias).

    Same arguments as ``CLIPTextModel`` (``clip_skip`` included); returns ``CLIPTextModelOutput`` with
    ``text_embeds`` (B, projection_dim), the projected pooled output (of the last layer, whatever
    ``clip_skip``), and ``last_hidden_state`` (B, L, hidden_size).
    """

    config: CLIPTextConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    config_class = CLIPTextConfig

    def init_args(self) -> tuple:
        return (_dummy_ids(self.config),)

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 position_ids: jax.Array | None = None, output_hidden_states: bool = False,
                 clip_skip: int | None = None) -> CLIPTextModelOutput:
        cfg = self.config
        out = CLIPTextTransformer(cfg, dtype=self.dtype, quantized=self.quantized, name="text_model")(
            input_ids, attention_mask, position_ids, output_hidden_states, clip_skip)
        text_embeds = _dense(self.quantized, cfg.projection_dim, use_bias=False, dtype=self.dtype, name="text_projection")(out.pooler_output)
        return CLIPTextModelOutput(text_embeds=text_embeds, last_hidden_state=out.last_hidden_state,
                                   hidden_states=out.hidden_states)


class CLIPVisionModelWithProjection(nn.Module, PretrainedModel):
    """transformers' ``CLIPVisionModelWithProjection``: the vision tower and ``visual_projection`` (no bias).

    ``__call__(pixel_values (B, image_size, image_size, num_channels) channels last, output_hidden_states=False)``
    returns ``CLIPVisionModelOutput``: ``image_embeds`` (B, projection_dim), ``last_hidden_state``
    (B, 1 + patches, hidden_size), ``hidden_states`` (embeddings after ``pre_layrnorm``, then every
    layer's output) when asked for.
    """

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    quantized: bool = False  # int8 weight-only Dense layers (jaxgen.quantize.quantize_encoder)

    config_class = CLIPVisionConfig

    def init_args(self) -> tuple:
        cfg = self.config
        return (jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32),)

    @nn.compact
    def __call__(self, pixel_values: jax.Array, output_hidden_states: bool = False) -> CLIPVisionModelOutput:
        cfg = self.config
        last, pooled, states = CLIPVisionTransformer(cfg, dtype=self.dtype, quantized=self.quantized, name="vision_model")(pixel_values)
        image_embeds = _dense(self.quantized, cfg.projection_dim, use_bias=False, dtype=self.dtype, name="visual_projection")(pooled)
        return CLIPVisionModelOutput(image_embeds=image_embeds, last_hidden_state=last,
                                     hidden_states=states if output_hidden_states else None)
