"""UniDiffuser's caption decoder: diffusers' ``UniDiffuserTextDecoder`` in Flax.

A GPT-2 language model (transformers' ``GPT2LMHeadModel``: pre-LN blocks ``ln_1`` -> ``attn`` ->
residual, ``ln_2`` -> ``mlp`` -> residual, then ``ln_f``; learned positions ``wpe``; logits through
the tied token embedding ``wte``) conditioned on a prefix: the U-ViT's text latents (B, prefix_length,
prefix_hidden_dim) go through ``decode_prefix`` (a Linear to n_embd) and are prepended to the token
embeddings. ``encode`` (``encode_prefix``, a Linear prefix_inner_dim -> prefix_hidden_dim) makes those
latents from CLIP text embeddings.

Captions come from diffusers' beam search (``generate_captions`` / ``generate_beam``), run here as
one compiled ``lax.while_loop`` over a fixed-size key/value cache (prefix_length + entry_length
positions per beam): the prefix is encoded once, then each step feeds one token per beam and
reorders the cache rows by the surviving beams. Every row of a batch searches independently (as
diffusers' per-row loop); a row whose beams have all stopped is frozen, as diffusers ``break``s.

Param names mirror the PyTorch keys (``transformer.transformer.h.N.attn.c_attn``, ``transformer.
transformer.wte``, ``encode_prefix``); only ``decode_prefix`` is named ``decode_prefix_linear`` here,
since ``decode_prefix`` is the method. There is no ``lm_head`` param: GPT-2 ties it to ``wte``
(``convert/unidiffuser_text_decoder.py`` says how checkpoints holding either or both load).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.attention import dot_product_attention
from jaxgen.nn.linear import Dense
from jaxgen.nn.transformer import layer_norm
from jaxgen.text.clip import _ACTIVATIONS as CLIP_ACTIVATIONS, causal_padding_mask

__all__ = ["UniDiffuserTextDecoderConfig", "UniDiffuserTextDecoder", "CausalLMOutput", "decode_captions"]

# transformers' ACT2FN names -> JAX ("gelu" is the exact erf GELU; "gelu_new" the tanh approximation)
# transformers' ACT2FN names: CLIP's table, plus the ones GPT-2 configs may also name
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    **CLIP_ACTIVATIONS,
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}

KVCache = tuple[tuple[jax.Array, jax.Array], ...]
"""Per layer (keys, values), each (batch, cache_length, n_head, head_dim)."""


@dataclasses.dataclass(frozen=True)
class UniDiffuserTextDecoderConfig(ModelConfig):
    """diffusers' ``UniDiffuserTextDecoder`` config (field names and defaults; the GPT-2 ones are ``GPT2Config``'s).

    ``prefix_hidden_dim`` None makes ``encode_prefix`` and ``decode_prefix`` identities (then
    ``prefix_inner_dim`` must equal ``n_embd``). Dropouts and ``use_cache`` do not change inference;
    ``reorder_and_upcast_attn`` only changes half-precision rounding (the attention logits and
    softmax are float32 here whatever it says).
    """

    prefix_length: int
    prefix_inner_dim: int
    prefix_hidden_dim: int | None = None
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    use_cache: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False

    def __post_init__(self) -> None:
        if self.prefix_inner_dim != self.n_embd and self.prefix_hidden_dim is None:
            raise ValueError(
                f"`prefix_hidden_dim` cannot be `None` when `prefix_inner_dim`: {self.prefix_inner_dim} and"
                f" `n_embd`: {self.n_embd} are not equal."
            )
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        if self.activation_function not in _ACTIVATIONS:
            raise ValueError(
                f"activation_function={self.activation_function!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
        if self.prefix_length > self.n_positions:
            raise ValueError(f"prefix_length={self.prefix_length} exceeds n_positions={self.n_positions}")

    @property
    def inner_dim(self) -> int:
        """The MLP width: ``n_inner``, or 4 * n_embd when None (GPT-2's rule)."""
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def tiny(cls, **overrides: Any) -> "UniDiffuserTextDecoderConfig":
        """A few-kilobyte config for tests: 2 layers of 32 wide, 4 heads, 60 tokens, a 5-token prefix."""
        values = dict(prefix_length=5, prefix_inner_dim=16, prefix_hidden_dim=8, vocab_size=60, n_positions=96,
                      n_embd=32, n_layer=2, n_head=4, n_inner=None, activation_function="gelu")
        return cls(**{**values, **overrides})


@struct.dataclass
class CausalLMOutput:
    """transformers' ``CausalLMOutputWithCrossAttentions``, the part inference uses: ``logits``
    (B, prefix_length + T, vocab_size)."""

    logits: jax.Array


class GPT2Attention(nn.Module):
    """Causal self-attention: fused ``c_attn`` (n_embd -> 3 n_embd, Conv1D layout (in, out)) and ``c_proj``.

    (B, T, D), a boolean mask broadcastable to (B, 1, T, S) and, when decoding, the layer's cache
    ((B, S, heads, head_dim) keys and values) with the position ``index`` where these T go ->
    ((B, T, D), the updated cache or None). Without a cache, S = T.
    """

    config: UniDiffuserTextDecoderConfig
    layer_idx: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array, cache: tuple[jax.Array, jax.Array] | None = None,
                 index: jax.Array | int = 0):
        cfg = self.config
        b, length, dim = hidden_states.shape
        qkv = Dense(3 * dim, dtype=self.dtype, name="c_attn")(hidden_states)
        q, k, v = (x.reshape(b, length, cfg.n_head, cfg.head_dim) for x in jnp.split(qkv, 3, axis=-1))
        if cache is not None:
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, index, 0, 0))
            cache = (k, v)
        scale = cfg.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_idx + 1)
        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, scale=scale)
        # a query that sees no key (a padded first position) gets zeros, as torch's SDPA gives it
        sees_any = jnp.broadcast_to(mask, (mask.shape[0], 1, length, k.shape[1])).any(axis=-1)  # (B|1, 1, T)
        out = jnp.where(jnp.transpose(sees_any, (0, 2, 1))[..., None], out, 0)
        out = Dense(dim, dtype=self.dtype, name="c_proj")(out.reshape(b, length, dim))
        return out, cache


class GPT2MLP(nn.Module):
    """``c_proj(act(c_fc(x)))`` (Conv1D layouts): (B, T, D) -> (B, T, D)."""

    config: UniDiffuserTextDecoderConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        cfg = self.config
        h = Dense(cfg.inner_dim, dtype=self.dtype, name="c_fc")(hidden_states)
        return Dense(cfg.n_embd, dtype=self.dtype, name="c_proj")(_ACTIVATIONS[cfg.activation_function](h))


class GPT2Block(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``. Returns (hidden, layer cache)."""

    config: UniDiffuserTextDecoderConfig
    layer_idx: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, mask: jax.Array, cache: tuple[jax.Array, jax.Array] | None = None,
                 index: jax.Array | int = 0):
        eps = self.config.layer_norm_epsilon
        h = layer_norm(eps, True, self.dtype, "ln_1")(hidden_states)
        h, cache = GPT2Attention(self.config, self.layer_idx, dtype=self.dtype, name="attn")(h, mask, cache, index)
        hidden_states = hidden_states + h
        h = layer_norm(eps, True, self.dtype, "ln_2")(hidden_states)
        return hidden_states + GPT2MLP(self.config, dtype=self.dtype, name="mlp")(h), cache


class GPT2Model(nn.Module):
    """transformers' ``GPT2Model`` from input embeddings: ``wpe`` added, the blocks ``h.N``, ``ln_f``.

    ``__call__(inputs_embeds (B, T, D), position_ids (T,) or (B, T), mask (B|1, 1, T, S), cache, index)``
    -> (hidden (B, T, D) after ``ln_f``, updated cache or None). ``embed(ids)`` is ``wte``;
    ``attend(hidden)`` the tied LM head (hidden @ wte^T).
    """

    config: UniDiffuserTextDecoderConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        cfg = self.config
        self.wte = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=self.dtype)
        self.wpe = nn.Embed(cfg.n_positions, cfg.n_embd, dtype=self.dtype)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.wte(input_ids)

    def attend(self, hidden_states: jax.Array) -> jax.Array:
        return self.wte.attend(hidden_states)

    @nn.compact
    def __call__(self, inputs_embeds: jax.Array, position_ids: jax.Array, mask: jax.Array,
                 cache: KVCache | None = None, index: jax.Array | int = 0):
        cfg = self.config
        hidden = inputs_embeds.astype(self.dtype) + self.wpe(position_ids)
        new_cache = []
        for i in range(cfg.n_layer):
            hidden, layer_cache = GPT2Block(cfg, i, dtype=self.dtype, name=f"h.{i}")(
                hidden, mask, None if cache is None else cache[i], index)
            new_cache.append(layer_cache)
        hidden = layer_norm(cfg.layer_norm_epsilon, True, self.dtype, "ln_f")(hidden)
        return hidden, (None if cache is None else tuple(new_cache))


class GPT2LMHeadModel(nn.Module):
    """transformers' ``GPT2LMHeadModel`` (the ``transformer`` of the decoder): ``GPT2Model`` and the LM head
    tied to ``wte`` (no param of its own). Same call as ``GPT2Model``, returning (logits (B, T, V), cache)."""

    config: UniDiffuserTextDecoderConfig
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.transformer = GPT2Model(self.config, dtype=self.dtype)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return self.transformer.embed(input_ids)

    def __call__(self, inputs_embeds: jax.Array, position_ids: jax.Array, mask: jax.Array,
                 cache: KVCache | None = None, index: jax.Array | int = 0, last_only: bool = False):
        hidden, cache = self.transformer(inputs_embeds, position_ids, mask, cache, index)
        if last_only:
            hidden = hidden[:, -1:]
        return self.transformer.attend(hidden), cache


class UniDiffuserTextDecoder(nn.Module, PretrainedModel):
    """diffusers' ``UniDiffuserTextDecoder``.

    ``__call__(input_ids (B, T) int, prefix_embeds (B, prefix_length, prefix_inner_dim), attention_mask
    (B, prefix_length + T) 0/1 or None)`` returns, as diffusers' ``forward``, ``(CausalLMOutput, hidden)``
    with ``hidden`` = ``encode(prefix_embeds)`` (B, prefix_length, prefix_hidden_dim) when
    ``prefix_hidden_dim`` is set, else the ``CausalLMOutput`` alone; ``.logits`` is
    (B, prefix_length + T, vocab_size). Attention is causal; the mask also hides padded keys.

    Methods (``module.apply(v, x, method=...)``): ``encode`` (B, L, prefix_inner_dim) -> (B, L,
    prefix_hidden_dim); ``decode_prefix`` (B, L, prefix_hidden_dim) -> (B, L, n_embd). Caption
    generation: ``generate_captions(params, features, eos_token_id)`` and ``generate_beam``, plain
    Python methods running one compiled beam search.
    """

    config: UniDiffuserTextDecoderConfig
    dtype: Any = jnp.float32

    config_class = UniDiffuserTextDecoderConfig
    param_axes = ()  # 0.16B parameters: replicated (jaxgen.sharding)

    def setup(self) -> None:
        cfg = self.config
        if cfg.prefix_hidden_dim is not None:
            self.encode_prefix = Dense(cfg.prefix_hidden_dim, dtype=self.dtype)
            self.decode_prefix_linear = Dense(cfg.n_embd, dtype=self.dtype)
        self.transformer = GPT2LMHeadModel(cfg, dtype=self.dtype)

    def init_args(self) -> tuple:
        cfg = self.config
        return jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1, cfg.prefix_inner_dim), jnp.float32)  # shapes only

    def encode(self, prefix: jax.Array) -> jax.Array:
        """``encode_prefix``: (B, L, prefix_inner_dim) -> (B, L, prefix_hidden_dim) (identity without a hidden dim)."""
        _check_last_dim(prefix, self.config.prefix_inner_dim, "prefix")
        return self.encode_prefix(prefix) if self.config.prefix_hidden_dim is not None else prefix

    def decode_prefix(self, hidden: jax.Array) -> jax.Array:
        """(B, L, prefix_hidden_dim) -> (B, L, n_embd) (identity without a hidden dim)."""
        cfg = self.config
        _check_last_dim(hidden, cfg.prefix_hidden_dim or cfg.n_embd, "prefix hidden states")
        return self.decode_prefix_linear(hidden) if cfg.prefix_hidden_dim is not None else hidden

    def __call__(self, input_ids: jax.Array, prefix_embeds: jax.Array,
                 attention_mask: jax.Array | None = None) -> tuple[CausalLMOutput, jax.Array] | CausalLMOutput:
        cfg = self.config
        _check_prefix(prefix_embeds, cfg, cfg.prefix_inner_dim, "prefix_embeds")
        total = prefix_embeds.shape[1] + input_ids.shape[1]
        if total > cfg.n_positions:
            raise ValueError(f"prefix_length + sequence length = {total} exceeds n_positions={cfg.n_positions}")
        if attention_mask is not None and tuple(attention_mask.shape) != (input_ids.shape[0], total):
            raise ValueError(f"attention_mask must be (batch, prefix_length + T) = {(input_ids.shape[0], total)}; "
                             f"got {tuple(attention_mask.shape)}")
        hidden = self.encode(prefix_embeds)
        embeds = jnp.concatenate([self.decode_prefix(hidden).astype(self.dtype),
                                  self.transformer.embed(input_ids)], axis=1)
        logits, _ = self.transformer(embeds, jnp.arange(total), causal_padding_mask(attention_mask, total))
        out = CausalLMOutput(logits=logits)
        return (out, hidden) if cfg.prefix_hidden_dim is not None else out

    def prefill(self, features: jax.Array, cache_length: int, temperature: jax.Array):
        """Beam search's first pass: text latents (B, prefix_length, prefix_hidden_dim) -> (log-probs of the
        next token (B, V) float32, a cache of ``cache_length`` positions holding the prefix's)."""
        cfg = self.config
        b, length = features.shape[:2]
        shape = (b, cache_length, cfg.n_head, cfg.head_dim)
        cache = tuple((jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in range(cfg.n_layer))
        mask = (jnp.arange(cache_length)[None, :] <= jnp.arange(length)[:, None])[None, None]  # (1, 1, P, S)
        logits, cache = self.transformer(self.decode_prefix(features), jnp.arange(length), mask, cache, 0,
                                         last_only=True)
        return _log_probs(logits[:, 0], temperature), cache

    def step(self, token_ids: jax.Array, position: jax.Array, cache: KVCache, temperature: jax.Array):
        """One decoding step: (N,) tokens at ``position`` -> (log-probs of the next token (N, V) float32, cache)."""
        cache_length = cache[0][0].shape[1]
        mask = (jnp.arange(cache_length) <= position)[None, None, None]  # (1, 1, 1, S)
        embeds = self.transformer.embed(token_ids[:, None])
        logits, cache = self.transformer(embeds, position[None], mask, cache, position)
        return _log_probs(logits[:, 0], temperature), cache

    @nn.nowrap
    def generate_beam(self, params: Any, features: jax.Array, eos_token_id: int, beam_size: int = 5,
                      entry_length: int = 67, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
        """diffusers' ``generate_beam`` from text latents, for every row of a batch at once.

        Args:
          params: this module's params.
          features: (B, prefix_length, prefix_hidden_dim) text latents (what the U-ViT produces; each row
            goes through ``decode_prefix`` as diffusers' ``generate_captions`` does).
          eos_token_id: the stop token. beam_size, entry_length (the most steps), temperature: diffusers'.
        Returns:
          tokens (B, beam_size, entry_length) int32 and seq_lengths (B, beam_size) int32, beams sorted by
          length-normalised score, best first. Steps after a row's search ended (all beams stopped, where
          diffusers breaks) hold 0, as a stopped beam's continuation does.
        """
        cfg = self.config
        _check_prefix(features, cfg, cfg.prefix_hidden_dim or cfg.n_embd, "features")
        if not 1 <= beam_size <= cfg.vocab_size:
            raise ValueError(f"beam_size={beam_size} must be between 1 and vocab_size={cfg.vocab_size}")
        if entry_length < 1 or features.shape[1] + entry_length > cfg.n_positions:
            raise ValueError(f"entry_length={entry_length}: prefix length {features.shape[1]} + entry_length must be "
                             f"within n_positions={cfg.n_positions}")
        search = _beam_search_fn(type(self), cfg, jnp.dtype(self.dtype).name, int(beam_size), int(entry_length))
        scale = temperature if temperature > 0 else 1.0  # diffusers' rule
        # Python scalars: traced (weakly typed), so another eos or temperature reuses the compiled search
        return search(params, features, int(eos_token_id), float(scale))

    @nn.nowrap
    def generate_captions(self, params: Any, features: jax.Array, eos_token_id: int, beam_size: int = 5,
                          entry_length: int = 67, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
        """diffusers' ``generate_captions``: the best beam of each row.

        features (B, prefix_length, prefix_hidden_dim) -> (tokens (B, entry_length) int32, zero after the
        row's search ended, and seq_lengths (B,) int32: ``tokens[b, :seq_lengths[b]]`` is the caption,
        ending with ``eos_token_id`` when it stopped). ``decode_captions`` turns them into text.
        """
        return _best_beam(*self.generate_beam(params, features, eos_token_id, beam_size, entry_length, temperature))


def _check_last_dim(x: jax.Array, dim: int, name: str) -> None:
    if x.shape[-1] != dim:
        raise ValueError(f"{name} must end in {dim} features; got shape {tuple(x.shape)}")


def _check_prefix(x: jax.Array, cfg: UniDiffuserTextDecoderConfig, dim: int, name: str) -> None:
    """(batch, prefix tokens, dim); diffusers takes any prefix length (the config's prefix_length is the usual one)."""
    if x.ndim != 3 or x.shape[-1] != dim or not 1 <= x.shape[1] <= cfg.n_positions:
        raise ValueError(f"{name} must be (batch, prefix_length (e.g. {cfg.prefix_length}), {dim}); got {tuple(x.shape)}")


def _log_probs(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    """diffusers' ``(logits / temperature).softmax(-1).log()`` in float32 (log of softmax, not log_softmax)."""
    return jnp.log(jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1))


def _pick(x: jax.Array, source: jax.Array) -> jax.Array:
    """Per row, the beams ``source`` (B, K) of x (B, K, ...)."""
    return jnp.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_step(module: UniDiffuserTextDecoder, variables: Any, state: tuple, eos: jax.Array,
               temperature: jax.Array) -> tuple:
    """One step of diffusers' beam search (its ``else`` branch) for all rows; rows already done are kept."""
    i, tokens, scores, lengths, stopped, cache = state
    b, k, _ = tokens.shape
    prefix = cache[0][0].shape[1] - tokens.shape[2]  # the cache holds prefix + entry_length positions
    last = jax.lax.dynamic_index_in_dim(tokens, i - 1, axis=2, keepdims=False)  # (B, K)
    logp, new_cache = module.apply(variables, last.reshape(-1), prefix + i - 1, cache, temperature, method="step")
    logp = logp.reshape(b, k, -1)
    vocab = logp.shape[-1]
    # a stopped beam proposes only token 0, at its unchanged score
    only_zero = jnp.where(jnp.arange(vocab) == 0, 0.0, -jnp.inf).astype(logp.dtype)
    logp = jnp.where(stopped[..., None], only_zero, logp)
    total = scores[..., None] + logp
    grown = lengths + (~stopped).astype(lengths.dtype)
    average = total / grown[..., None]
    best, flat = jax.lax.top_k(average.reshape(b, k * vocab), k)
    source, token = flat // vocab, (flat % vocab).astype(tokens.dtype)
    new_lengths = _pick(grown, source)
    new_tokens = jax.lax.dynamic_update_index_in_dim(_pick(tokens, source), token, i, axis=2)
    new_scores = best * new_lengths
    new_stopped = _pick(stopped, source) | (token == eos)
    rows = (jnp.arange(b)[:, None] * k + source).reshape(-1)
    new_cache = jax.tree_util.tree_map(lambda c: c[rows], new_cache)
    active = ~jnp.all(stopped, axis=-1)  # diffusers breaks out of a row's loop once all its beams stopped

    def keep(new: jax.Array, old: jax.Array) -> jax.Array:
        return jnp.where(active.reshape((b,) + (1,) * (new.ndim - 1)), new, old)

    return (i + 1, keep(new_tokens, tokens), keep(new_scores, scores), keep(new_lengths, lengths),
            keep(new_stopped, stopped), new_cache)


@functools.lru_cache(maxsize=16)
def _beam_search_fn(cls: type, config: UniDiffuserTextDecoderConfig, dtype: str, beam_size: int,
                    entry_length: int) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The jitted beam search for one config and search size: (params, features, eos, temperature) -> (tokens, lengths)."""
    module = cls(config=config, dtype=jnp.dtype(dtype))
    k, n = beam_size, entry_length

    def search(params: Any, features: jax.Array, eos: jax.Array, temperature: jax.Array):
        variables = {"params": params}
        b = features.shape[0]
        logp, cache = module.apply(variables, features, features.shape[1] + n, temperature, method="prefill")
        scores, first = jax.lax.top_k(logp, k)  # (B, K)
        first = first.astype(jnp.int32)
        cache = jax.tree_util.tree_map(lambda c: jnp.repeat(c, k, axis=0), cache)  # rows b*K + beam
        tokens = jnp.zeros((b, k, n), jnp.int32).at[:, :, 0].set(first)
        state = (jnp.asarray(1, jnp.int32), tokens, scores, jnp.ones((b, k), jnp.int32), first == eos, cache)

        def cond(state: tuple) -> jax.Array:
            return (state[0] < n) & ~jnp.all(state[4])

        state = jax.lax.while_loop(cond, lambda s: _beam_step(module, variables, s, eos, temperature), state)
        _, tokens, scores, lengths, _, _ = state
        order = jnp.argsort(-(scores / lengths), axis=-1, stable=True)
        return _pick(tokens, order), _pick(lengths, order)

    return jax.jit(search)


@jax.jit
def _best_beam(tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, K, L), (B, K) -> the first (best) beam: (B, L), (B,)."""
    return tokens[:, 0], lengths[:, 0]


def decode_captions(tokenizer: Any, tokens: Any, seq_lengths: Any) -> list[str]:
    """diffusers' ``decode_text_latents``: ``tokenizer.decode(tokens[:length], skip_special_tokens=True)`` per row.

    tokens (B, L) and seq_lengths (B,) as ``generate_captions`` returns them; ``tokenizer`` is the
    pipeline's GPT-2 tokenizer.
    """
    rows: Sequence[np.ndarray] = np.asarray(tokens)
    return [tokenizer.decode(row[: int(length)], skip_special_tokens=True)
            for row, length in zip(rows, np.asarray(seq_lengths))]
