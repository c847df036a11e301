"""Kandinsky 2.1's text encoder: diffusers' ``MultilingualCLIP`` (XLM-RoBERTa + a linear projection) in Flax.

``MultilingualCLIP`` (``diffusers.pipelines.kandinsky.text_encoder``) runs transformers'
``XLMRobertaModel`` (a BERT-style, post-LayerNorm, bidirectional encoder), averages its last hidden
state over the real (unmasked) tokens and projects the mean with ``LinearTransformation`` to the
CLIP image-embedding width. It returns ``(projected (B, numDims), last_hidden_state (B, L, hidden))``;
the Kandinsky 2.1 pipelines use both.

XLM-RoBERTa specifics kept here: position ids count only non-padding tokens and start after
``pad_token_id`` (fairseq's ``make_positions``: a padding token sits at position ``pad_token_id``),
a single token-type embedding (row 0) is added to every token, and every sub-layer is
``LayerNorm(x + sublayer(x))``.

Module names mirror the PyTorch state-dict keys (``transformer.embeddings.word_embeddings``,
``transformer.encoder.layer.3.attention.self.query``, ``transformer.encoder.layer.3.output.LayerNorm``,
``LinearTransformation``), so ``convert.engine``'s default rule fills every param. XLM-RoBERTa's
pooler (``transformer.pooler.dense``), which ``MultilingualCLIP.forward`` never calls, is not built:
its checkpoint keys are listed in ``convert.multilingual_clip.ignored_keys``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.attention import dot_product_attention, key_padding_mask
from jaxgen.nn.linear import Dense
from jaxgen.nn.transformer import layer_norm
# the same transformers ACT2FN names -> JAX functions, and ModelOutput-style indexing, as CLIP's
from jaxgen.text.clip import _ACTIVATIONS, _IndexableOutput

__all__ = ["MultilingualCLIPConfig", "MultilingualCLIP", "MultilingualCLIPOutput", "xlm_roberta_position_ids"]


@dataclasses.dataclass(frozen=True)
class MultilingualCLIPConfig(ModelConfig):
    """diffusers' ``MCLIPConfig`` as saved in config.json: ``XLMRobertaConfig``'s fields plus
    ``transformerDimensions`` (the encoder width the projection takes) and ``numDims`` (its output width).

    ``MCLIPConfig``'s constructor calls these two ``transformerDimSize``/``imageDimSize`` but stores (and
    saves) them under the names used here. Defaults are Kandinsky 2.1's text encoder (XLM-RoBERTa-large,
    projected to 768): diffusers' own defaults (XLM-RoBERTa-base sizes with ``transformerDimSize=1024``)
    do not describe a model that runs, and saved config.json files carry every key anyway.
    Unsupported values raise a ValueError naming the field.
    """

    vocab_size: int = 250002
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    position_embedding_type: str = "absolute"
    is_decoder: bool = False
    add_cross_attention: bool = False
    transformerDimensions: int = 1024
    numDims: int = 768

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
        if self.position_embedding_type != "absolute":
            # relative_key(_query) adds distance embeddings to the attention scores; no M-CLIP uses them
            raise ValueError(f"position_embedding_type={self.position_embedding_type!r} is not supported; only 'absolute'")
        if self.transformerDimensions != self.hidden_size:
            raise ValueError(
                f"transformerDimensions={self.transformerDimensions} must equal hidden_size={self.hidden_size}: "
                "LinearTransformation projects the mean of the encoder's hidden states"
            )
        if not isinstance(self.pad_token_id, int) or isinstance(self.pad_token_id, bool) or self.pad_token_id < 0:
            raise ValueError(f"pad_token_id={self.pad_token_id!r}: XLM-RoBERTa's position ids need an integer pad id")
        if self.type_vocab_size < 1:
            raise ValueError(f"type_vocab_size={self.type_vocab_size}: the token-type embedding needs at least one row")
        for name in ("is_decoder", "add_cross_attention"):
            if getattr(self, name):
                raise ValueError(f"{name}=True is not supported: MultilingualCLIP is a bidirectional encoder")

    @property
    def max_length(self) -> int:
        """The longest sequence the position table takes: positions run up to ``L + pad_token_id``."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @classmethod
    def tiny(cls, vocab_size: int = 64, hidden_act: str = "gelu", max_position_embeddings: int = 79) -> "MultilingualCLIPConfig":
        """A few-kilobyte config for tests (pad id 1, as XLM-R's tokenizer has). The default 79 positions take
        the Kandinsky 2.1 pipelines' 77 tokens (positions run up to L + pad id)."""
        return cls(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, hidden_act=hidden_act, max_position_embeddings=max_position_embeddings,
                   transformerDimensions=32, numDims=24)


@struct.dataclass
class MultilingualCLIPOutput(_IndexableOutput):
    """``MultilingualCLIP``'s output, indexable like diffusers' tuple: ``[0]`` is ``text_embeds``
    (B, numDims), the projected masked mean; ``[1]`` is ``last_hidden_state`` (B, L, hidden_size)."""

    text_embeds: jax.Array
    last_hidden_state: jax.Array


def xlm_roberta_position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """(B, L) ids -> (B, L) position ids: ``pad_token_id + k`` for the k-th non-pad token (k from 1),
    ``pad_token_id`` on pad tokens; as transformers derives them from the ids, not from the mask."""
    not_pad = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=1) * not_pad + pad_token_id


class XLMRobertaEmbeddings(nn.Module):
    """``LayerNorm(word + token_type[0] + position)``: (B, L) ids -> (B, L, hidden_size)."""

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[-1]
        if length > cfg.max_length:
            raise ValueError(
                f"sequence length {length} is longer than max_position_embeddings={cfg.max_position_embeddings} "
                f"allows with pad_token_id={cfg.pad_token_id} (at most {cfg.max_length} tokens)"
            )
        embed = lambda n, name: nn.Embed(n, cfg.hidden_size, dtype=self.dtype, name=name)
        words = embed(cfg.vocab_size, "word_embeddings")(input_ids)
        # token_type_ids default to zeros: every token gets row 0 (looked up once, broadcast)
        token_type = embed(cfg.type_vocab_size, "token_type_embeddings")(jnp.zeros((1, 1), jnp.int32))
        positions = embed(cfg.max_position_embeddings, "position_embeddings")(
            xlm_roberta_position_ids(input_ids, cfg.pad_token_id))
        return layer_norm(cfg.layer_norm_eps, True, self.dtype, "LayerNorm")(words + token_type + positions)


class XLMRobertaSelfAttention(nn.Module):
    """``query``/``key``/``value`` projections and scaled softmax attention: (B, L, D), bool mask -> (B, L, D)."""

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array | None) -> jax.Array:
        b, length, dim = hidden_states.shape
        heads = self.config.num_attention_heads
        q, k, v = (
            Dense(dim, dtype=self.dtype, name=n)(hidden_states).reshape(b, length, heads, dim // heads)
            for n in ("query", "key", "value")
        )
        return dot_product_attention(q, k, v, mask).reshape(b, length, dim)


class XLMRobertaResidualOutput(nn.Module):
    """transformers' ``XLMRobertaSelfOutput`` / ``XLMRobertaOutput``: ``LayerNorm(dense(h) + residual)``."""

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, residual: jax.Array) -> jax.Array:
        cfg = self.config
        h = Dense(cfg.hidden_size, dtype=self.dtype, name="dense")(hidden_states)
        return layer_norm(cfg.layer_norm_eps, True, self.dtype, "LayerNorm")(h + residual)


class XLMRobertaAttention(nn.Module):
    """``attention.self`` then ``attention.output`` (post-norm residual): (B, L, D) -> (B, L, D)."""

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array | None) -> jax.Array:
        attended = XLMRobertaSelfAttention(self.config, dtype=self.dtype, name="self")(hidden_states, mask)
        return XLMRobertaResidualOutput(self.config, dtype=self.dtype, name="output")(attended, hidden_states)


class XLMRobertaIntermediate(nn.Module):
    """``dense`` to intermediate_size, then the activation: (B, L, D) -> (B, L, intermediate_size)."""

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        h = Dense(self.config.intermediate_size, dtype=self.dtype, name="dense")(hidden_states)
        return _ACTIVATIONS[self.config.hidden_act](h)


class XLMRobertaLayer(nn.Module):
    """One encoder layer: ``attention``, then ``intermediate`` (dense + activation) and ``output``
    (dense, residual, LayerNorm). (B, L, D) and a bool mask (B, 1, 1, L) or None -> (B, L, D)."""

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg = self.config
        attended = XLMRobertaAttention(cfg, dtype=self.dtype, name="attention")(hidden_states, mask)
        inner = XLMRobertaIntermediate(cfg, dtype=self.dtype, name="intermediate")(attended)
        return XLMRobertaResidualOutput(cfg, dtype=self.dtype, name="output")(inner, attended)


class XLMRobertaEncoder(nn.Module):
    """The stack of ``layer.N``: (B, L, D), bool mask or None -> (B, L, D)."""

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array | None) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            hidden_states = XLMRobertaLayer(self.config, dtype=self.dtype, name=f"layer.{i}")(hidden_states, mask)
        return hidden_states


class XLMRobertaModel(nn.Module):
    """transformers' ``XLMRobertaModel`` without its pooler (which MultilingualCLIP never calls).

    ``input_ids`` (B, L) int and ``attention_mask`` (B, L) 0/1 or None -> ``last_hidden_state`` (B, L, D).
    Every position is computed, padded ones included, as transformers does; the mask hides padded keys.
    """

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        hidden = XLMRobertaEmbeddings(self.config, dtype=self.dtype, name="embeddings")(input_ids)
        mask = None if attention_mask is None else key_padding_mask(attention_mask)
        return XLMRobertaEncoder(self.config, dtype=self.dtype, name="encoder")(hidden, mask)


class MultilingualCLIP(nn.Module, PretrainedModel):
    """diffusers' ``MultilingualCLIP`` (Kandinsky 2.1's ``text_encoder``).

    ``__call__(input_ids (B, L) int, attention_mask (B, L) 0/1 or None)`` returns ``MultilingualCLIPOutput``:
    ``text_embeds`` (B, numDims) = ``LinearTransformation`` of the mean of ``last_hidden_state`` over the
    tokens the mask keeps, and ``last_hidden_state`` (B, L, hidden_size). ``attention_mask=None`` means no
    padding (every token attended and averaged); diffusers always passes the tokenizer's mask, and a row
    whose mask is all zeros has no mean (NaN, as in diffusers). L is at most
    ``max_position_embeddings - pad_token_id - 1`` (512 for Kandinsky 2.1; its pipelines use 77).
    """

    config: MultilingualCLIPConfig
    dtype: Any = jnp.float32

    config_class = MultilingualCLIPConfig
    # logical axes of the params (jaxgen.sharding): heads and feed-forward width split Megatron style;
    # embeddings' tables, the LayerNorms and the small projection replicate
    param_axes = (
        (r"transformer/encoder/layer\.\d+/attention/self/(query|key|value)/kernel", ("embed", "heads")),
        (r"transformer/encoder/layer\.\d+/attention/self/(query|key|value)/bias", ("heads",)),
        (r"transformer/encoder/layer\.\d+/attention/output/dense/kernel", ("heads", "embed")),
        (r"transformer/encoder/layer\.\d+/intermediate/dense/kernel", ("embed", "mlp")),
        (r"transformer/encoder/layer\.\d+/intermediate/dense/bias", ("mlp",)),
        (r"transformer/encoder/layer\.\d+/output/dense/kernel", ("mlp", "embed")),
        (r"transformer/embeddings/word_embeddings/embedding", ("vocab", "embed")),
    )

    def init_args(self) -> tuple:
        length = min(8, self.config.max_length)
        return jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), jnp.int32)

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> MultilingualCLIPOutput:
        cfg = self.config
        hidden = XLMRobertaModel(cfg, dtype=self.dtype, name="transformer")(input_ids, attention_mask)
        # masked mean in float32: a bfloat16 sum over 77 tokens would lose the small ones
        weights = (jnp.ones(input_ids.shape, jnp.float32) if attention_mask is None
                   else attention_mask.astype(jnp.float32))[..., None]
        mean = (hidden.astype(jnp.float32) * weights).sum(axis=1) / weights.sum(axis=1)
        text_embeds = Dense(cfg.numDims, dtype=self.dtype, name="LinearTransformation")(mean.astype(self.dtype))
        return MultilingualCLIPOutput(text_embeds=text_embeds, last_hidden_state=hidden)
