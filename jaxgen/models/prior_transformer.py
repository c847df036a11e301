"""The unCLIP prior: diffusers' ``PriorTransformer`` (Kandinsky 2.1/2.2's prior; also Shap-E's).

A causal transformer over the token sequence ``[text tokens (L), proj_embedding (K), timestep (1),
hidden_states (N), prd (1)]`` that predicts a CLIP image embedding. Kandinsky feeds one image
embedding (N = 1), the pooled text embedding (K = 1) and the 77 CLIP text tokens, and reads the
prediction at the final ``prd`` token. As in diffusers, the causal mask is only applied together
with an ``attention_mask``: without one, attention is bidirectional.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.embeddings import TimestepEmbedding, Timesteps, get_activation
from jaxgen.nn.linear import Dense
from jaxgen.nn.transformer import TRANSFORMER_PARAM_AXES, BasicTransformerBlock, layer_norm

__all__ = ["PriorTransformerConfig", "PriorTransformer", "PriorTransformerOutput"]

_MASKED = -10000.0  # diffusers' additive value for padded and future tokens
_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by every norm of the model


@dataclasses.dataclass(frozen=True)
class PriorTransformerConfig(ModelConfig):
    """diffusers' ``PriorTransformer`` config.json keys and defaults.

    ``dropout`` is accepted and ignored (inference only). Unsupported values of the ``*_type`` keys
    or ``time_embed_act_fn`` raise a ValueError naming the field, as diffusers does.
    """

    num_attention_heads: int = 32
    attention_head_dim: int = 64
    num_layers: int = 20
    embedding_dim: int = 768
    num_embeddings: int = 77
    additional_embeddings: int = 4
    dropout: float = 0.0
    time_embed_act_fn: str = "silu"
    norm_in_type: str | None = None
    embedding_proj_norm_type: str | None = None
    encoder_hid_proj_type: str | None = "linear"
    added_emb_type: str | None = "prd"
    time_embed_dim: int | None = None
    embedding_proj_dim: int | None = None
    clip_embed_dim: int | None = None

    def __post_init__(self):
        for field, allowed in (("norm_in_type", (None, "layer")), ("embedding_proj_norm_type", (None, "layer")),
                               ("encoder_hid_proj_type", (None, "linear")), ("added_emb_type", (None, "prd"))):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"PriorTransformer: unsupported {field}={value!r}; expected one of {allowed}")
        try:
            get_activation(self.time_embed_act_fn)
        except ValueError as e:
            raise ValueError(f"PriorTransformer: unsupported time_embed_act_fn={self.time_embed_act_fn!r}: {e}") from None
        for field in ("num_attention_heads", "attention_head_dim", "embedding_dim", "num_embeddings"):
            if getattr(self, field) < 1:
                raise ValueError(f"PriorTransformer: {field} must be positive, got {getattr(self, field)}")
        if self.additional_embeddings < 0 or self.num_layers < 0:
            raise ValueError("PriorTransformer: additional_embeddings and num_layers must be >= 0, got "
                             f"additional_embeddings={self.additional_embeddings}, num_layers={self.num_layers}")

    @property
    def inner_dim(self) -> int:
        """Width of the token stream: heads * head_dim."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def resolved_time_embed_dim(self) -> int:
        """Hidden width of the timestep MLP: ``time_embed_dim`` or ``inner_dim``."""
        return self.time_embed_dim or self.inner_dim

    @property
    def resolved_embedding_proj_dim(self) -> int:
        """Width of ``proj_embedding``: ``embedding_proj_dim`` or ``embedding_dim``."""
        return self.embedding_proj_dim or self.embedding_dim

    @property
    def resolved_clip_embed_dim(self) -> int:
        """Width of the output (and of ``clip_mean``/``clip_std``): ``clip_embed_dim`` or ``embedding_dim``."""
        return self.clip_embed_dim or self.embedding_dim

    @property
    def num_positions(self) -> int:
        """Rows of the positional table and side of the causal mask: num_embeddings + additional_embeddings."""
        return self.num_embeddings + self.additional_embeddings

    @classmethod
    def tiny(cls, **overrides: Any) -> "PriorTransformerConfig":
        """A 2-layer, 16-wide Kandinsky-style prior for tests (embedding width 12, 5 text tokens)."""
        values = dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=12,
                      num_embeddings=5, additional_embeddings=4)
        return cls(**{**values, **overrides})


@flax.struct.dataclass
class PriorTransformerOutput:
    """``predicted_image_embedding``: (B, clip_embed_dim) with a ``prd`` token, else (B, N, clip_embed_dim)."""

    predicted_image_embedding: jax.Array


def _positions(table: jax.Array, length: int, front: int, back: int) -> jax.Array:
    """The (1, length, D) positional table, zero-padded as diffusers when it is shorter than the sequence."""
    if table.shape[1] < length:
        # diffusers: the table may leave out the tokens before hidden_states and the prd token
        table = jnp.pad(table, ((0, 0), (front, back), (0, 0)))
    if table.shape[1] != length:
        raise ValueError(f"PriorTransformer: {length} tokens do not fit the positional table of {table.shape[1]} "
                         "rows (num_embeddings + additional_embeddings)")
    return table


def _attention_bias(attention_mask: jax.Array, config: PriorTransformerConfig, length: int) -> jax.Array:
    """(B, L) 0/1 or bool text mask -> (B, 1, T, T) float32 additive bias, as diffusers builds it.

    Padded text keys get -10000; the ``additional_embeddings`` tokens after the text are never
    padded; on top comes the causal mask (-10000 above the diagonal). Kept in float32 for the logits.
    """
    size = config.num_positions
    if attention_mask.ndim != 2 or attention_mask.shape[1] + config.additional_embeddings != size or length != size:
        raise ValueError(
            f"PriorTransformer: attention_mask must be (batch, num_embeddings={config.num_embeddings}) for a sequence "
            f"of num_embeddings + additional_embeddings = {size} tokens; got mask {attention_mask.shape} "
            f"and {length} tokens")
    padding = (1.0 - attention_mask.astype(jnp.float32)) * _MASKED
    padding = jnp.pad(padding, ((0, 0), (0, config.additional_embeddings)))
    causal = np.triu(np.full((size, size), _MASKED, np.float32), 1)
    return (padding[:, None, :] + causal[None])[:, None]


class PriorTransformer(nn.Module, PretrainedModel):
    """diffusers' ``PriorTransformer``.

    ``__call__(hidden_states, timestep, proj_embedding, encoder_hidden_states=None, attention_mask=None)``:
      hidden_states: (B, embedding_dim) noisy image embedding, or (B, N, embedding_dim) tokens.
      timestep: a scalar, (1,) or (B,) int/float.
      proj_embedding: (B, embedding_proj_dim) (or (B, K, embedding_proj_dim)) conditioning embedding.
      encoder_hidden_states: (B, L, embedding_dim) text tokens; needed when encoder_hid_proj_type is
        "linear" (with None, given ones must already be inner_dim wide).
      attention_mask: (B, L) 0/1 or bool text mask; switches on the padding and causal masks, and
        then needs L + additional_embeddings = num_embeddings + additional_embeddings tokens.
    Returns ``PriorTransformerOutput``: (B, clip_embed_dim) read at the prd token, or without one
    (B, N, clip_embed_dim) read at the hidden_states tokens (diffusers' shapes).
    ``post_process_latents(latents)``: ``latents * clip_std + clip_mean`` (un-normalised CLIP embedding).
    """

    config: PriorTransformerConfig
    dtype: Any = jnp.float32

    config_class = PriorTransformerConfig
    param_axes = TRANSFORMER_PARAM_AXES  # jaxgen.sharding: attention heads and feed-forward width split

    def init_args(self) -> tuple:
        cfg = self.config
        # hidden_states as num_positions tokens: a sequence every config's positional table fits
        # (zero-padded at the front and back, as diffusers allows).
        text = jnp.zeros((1, cfg.num_embeddings, cfg.embedding_dim), self.dtype) if cfg.encoder_hid_proj_type else None
        return (
            jnp.zeros((1, cfg.num_positions, cfg.embedding_dim), self.dtype),
            jnp.zeros((1,), jnp.int32),
            jnp.zeros((1, cfg.resolved_embedding_proj_dim), self.dtype),
            text,
        )

    def _embed(self, hidden_states: jax.Array, timestep: jax.Array, proj_embedding: jax.Array,
               encoder_hidden_states: jax.Array | None) -> tuple[jax.Array, int]:
        """The input token sequence (B, S, inner_dim) with positions, and the number of tokens before hidden_states."""
        cfg, dim, dtype = self.config, self.config.inner_dim, self.dtype
        batch = hidden_states.shape[0]
        timestep = jnp.broadcast_to(jnp.reshape(jnp.asarray(timestep), (-1,)), (batch,))
        time_emb = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)(timestep).astype(dtype)
        time_emb = TimestepEmbedding(cfg.resolved_time_embed_dim, act_fn=cfg.time_embed_act_fn, out_dim=dim,
                                     dtype=dtype, name="time_embedding")(time_emb)

        proj_embedding = proj_embedding.astype(dtype)
        if cfg.embedding_proj_norm_type == "layer":
            proj_embedding = layer_norm(_LAYER_NORM_EPS, True, dtype, "embedding_proj_norm")(proj_embedding)
        proj_embedding = Dense(dim, dtype=dtype, name="embedding_proj")(proj_embedding)
        if cfg.encoder_hid_proj_type == "linear":
            if encoder_hidden_states is None:
                raise ValueError("`encoder_hidden_states_proj` requires `encoder_hidden_states` to be set")
            encoder_hidden_states = Dense(dim, dtype=dtype, name="encoder_hidden_states_proj")(
                encoder_hidden_states.astype(dtype))
        hidden_states = Dense(dim, dtype=dtype, name="proj_in")(hidden_states.astype(dtype))

        as_tokens = lambda x: x[:, None, :] if x.ndim == 2 else x
        tokens = [] if encoder_hidden_states is None else [encoder_hidden_states.astype(dtype)]
        tokens += [as_tokens(proj_embedding), time_emb[:, None, :], as_tokens(hidden_states)]
        if cfg.added_emb_type == "prd":
            prd = self.param("prd_embedding", nn.initializers.zeros_init(), (1, 1, dim))
            tokens.append(jnp.broadcast_to(prd.astype(dtype), (batch, 1, dim)))
        sequence = jnp.concatenate(tokens, axis=1)

        # tokens before hidden_states: text, proj_embedding, time
        before = sum(t.shape[1] for t in tokens[:-2 if cfg.added_emb_type == "prd" else -1])
        table = self.param("positional_embedding", nn.initializers.zeros_init(), (1, cfg.num_positions, dim))
        table = _positions(table.astype(dtype), sequence.shape[1], before, 1 if cfg.added_emb_type == "prd" else 0)
        return sequence + table, before

    @nn.compact
    def __call__(self, hidden_states: jax.Array, timestep: jax.Array | int | float, proj_embedding: jax.Array,
                 encoder_hidden_states: jax.Array | None = None,
                 attention_mask: jax.Array | None = None) -> PriorTransformerOutput:
        cfg, dtype = self.config, self.dtype
        sequence, before = self._embed(hidden_states, timestep, proj_embedding, encoder_hidden_states)
        bias = None if attention_mask is None else _attention_bias(jnp.asarray(attention_mask), cfg, sequence.shape[1])

        if cfg.norm_in_type == "layer":
            sequence = layer_norm(_LAYER_NORM_EPS, True, dtype, "norm_in")(sequence)
        for i in range(cfg.num_layers):
            block = BasicTransformerBlock(cfg.num_attention_heads, cfg.attention_head_dim, activation_fn="gelu",
                                          attention_bias=True, dtype=dtype, name=f"transformer_blocks.{i}")
            sequence = block(sequence, attention_bias=bias)
        sequence = layer_norm(_LAYER_NORM_EPS, True, dtype, "norm_out")(sequence)
        sequence = sequence[:, -1] if cfg.added_emb_type == "prd" else sequence[:, before:]
        out = Dense(cfg.resolved_clip_embed_dim, dtype=dtype, name="proj_to_clip_embeddings")(sequence)

        # created here so that init makes them; post_process_latents reads them
        clip_dim = (1, cfg.resolved_clip_embed_dim)
        self.param("clip_mean", nn.initializers.zeros_init(), clip_dim)
        self.param("clip_std", nn.initializers.zeros_init(), clip_dim)
        return PriorTransformerOutput(predicted_image_embedding=out)

    def post_process_latents(self, prior_latents: jax.Array) -> jax.Array:
        """Un-normalise predicted CLIP image embeddings: (B, clip_embed_dim) -> ``x * clip_std + clip_mean``.

        Call as ``module.apply({"params": params}, latents, method=PriorTransformer.post_process_latents)``.
        """
        mean = self.get_variable("params", "clip_mean")
        std = self.get_variable("params", "clip_std")
        return prior_latents * std.astype(prior_latents.dtype) + mean.astype(prior_latents.dtype)
