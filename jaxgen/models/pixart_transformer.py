"""PixArt-α's denoiser: diffusers' ``PixArtTransformer2DModel`` (a DiT with adaLN-single and T5 cross-attention).

Latents come in and go out channels last: (B, H, W, C). The checkpoints on the Hub keep the config
of the 2023 conversion (``_class_name: Transformer2DModel``, no ``use_additional_conditions`` /
``interpolation_scale``); diffusers maps such a config to ``PixArtTransformer2DModel`` and derives
the two missing values from ``sample_size``, and so does this config class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.linear import Dense
from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.attention import Attention
from jaxgen.nn.embeddings import PatchEmbed, PixArtAlphaCombinedTimestepSizeEmbeddings, PixArtAlphaTextProjection
from jaxgen.nn.transformer import TRANSFORMER_PARAM_AXES, FeedForward, layer_norm

__all__ = [
    "PixArtTransformer2DModelConfig",
    "PixArtTransformer2DModel",
    "Transformer2DModelOutput",
    "AdaLayerNormSingle",
    "PixArtTransformerBlock",
]


@dataclasses.dataclass(frozen=True)
class PixArtTransformer2DModelConfig(ModelConfig):
    """diffusers' ``PixArtTransformer2DModel`` config.json keys and defaults."""

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = 8
    num_layers: int = 28
    dropout: float = 0.0
    norm_num_groups: int = 32
    cross_attention_dim: int | None = 1152
    attention_bias: bool = True
    sample_size: int = 128
    patch_size: int = 2
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int | None = 1000
    upcast_attention: bool = False
    norm_type: str = "ada_norm_single"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale: float | None = None
    use_additional_conditions: bool | None = None
    caption_channels: int | None = None
    attention_type: str | None = "default"

    def __post_init__(self):
        if self.norm_type != "ada_norm_single":
            raise ValueError(f"PixArtTransformer2DModel needs norm_type='ada_norm_single', got norm_type={self.norm_type!r}")
        if self.num_embeds_ada_norm is None:
            raise ValueError("PixArtTransformer2DModel needs num_embeds_ada_norm (it is None)")
        if self.attention_type not in (None, "default"):
            raise ValueError(f"attention_type={self.attention_type!r} is not supported; only 'default'")
        if self.patch_size is None:
            raise ValueError("PixArtTransformer2DModel needs patch_size (it is None)")

    @property
    def inner_dim(self) -> int:
        """Width of the token stream: heads * head_dim."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def resolved_out_channels(self) -> int:
        """Output channels: ``out_channels``, or ``in_channels`` when it is None."""
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def resolved_use_additional_conditions(self) -> bool:
        """``use_additional_conditions``; when None, True only for the 1024px model (sample_size 128), as diffusers."""
        if self.use_additional_conditions is None:
            return self.sample_size == 128
        return bool(self.use_additional_conditions)

    @property
    def resolved_interpolation_scale(self) -> float:
        """``interpolation_scale``; when None, ``max(sample_size // 64, 1)``, as diffusers."""
        if self.interpolation_scale is None:
            return max(self.sample_size // 64, 1)
        return self.interpolation_scale

    @classmethod
    def tiny(cls, **overrides: Any) -> "PixArtTransformer2DModelConfig":
        """A 2-layer, 24-wide model for tests (inner_dim divisible by 3 for the micro-conditions)."""
        values = dict(
            num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=24, sample_size=8, patch_size=2, caption_channels=32, norm_num_groups=4,
        )
        return cls(**{**values, **overrides})

    @classmethod
    def xl_2_1024(cls) -> "PixArtTransformer2DModelConfig":
        """PixArt-alpha/PixArt-XL-2-1024-MS: 28 layers, 16 x 72, 128x128 latents, micro-conditions."""
        return cls(sample_size=128, caption_channels=4096)

    @classmethod
    def xl_2_512(cls) -> "PixArtTransformer2DModelConfig":
        """PixArt-alpha/PixArt-XL-2-512x512: as 1024-MS with 64x64 latents and no micro-conditions."""
        return cls(sample_size=64, caption_channels=4096)


@flax.struct.dataclass
class Transformer2DModelOutput:
    """``sample``: (B, H, W, out_channels) NHWC."""

    sample: jax.Array


class AdaLayerNormSingle(nn.Module):
    """diffusers' ``AdaLayerNormSingle``: the timestep (and size) embedding ``emb`` and its 6-way ``linear``.

    Returns (``linear(silu(emb))`` (B, 6 * dim), ``emb`` (B, dim)).
    """

    embedding_dim: int
    use_additional_conditions: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, timestep: jax.Array, added_cond_kwargs: Mapping[str, jax.Array] | None = None):
        added = added_cond_kwargs or {}
        emb = PixArtAlphaCombinedTimestepSizeEmbeddings(
            self.embedding_dim, self.embedding_dim // 3, self.use_additional_conditions, dtype=self.dtype, name="emb"
        )(timestep, added.get("resolution"), added.get("aspect_ratio"))
        out = Dense(6 * self.embedding_dim, dtype=self.dtype, name="linear")(jax.nn.silu(emb))
        return out, emb


class PixArtTransformerBlock(nn.Module):
    """diffusers' ``BasicTransformerBlock`` with ``norm_type="ada_norm_single"`` (PixArt-α's block).

    Self-attention and feed-forward are modulated by ``scale_shift_table`` (6, dim) + the shared
    adaLN-single output ``timestep`` (B, 6 * dim) (shift, scale, gate for each); cross-attention
    (on the un-normalised stream, as PixArt) is plain. Takes hidden_states (B, N, dim),
    encoder_hidden_states (B, L, cross_attention_dim), 0/1 masks (B, N) / (B, L); returns (B, N, dim).
    """

    config: PixArtTransformer2DModelConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array | None = None,
                 attention_mask: jax.Array | None = None, encoder_attention_mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        dim = cfg.inner_dim
        table = self.param("scale_shift_table", lambda key: jax.random.normal(key, (6, dim)) / dim**0.5)
        mod = table[None].astype(self.dtype) + timestep.reshape(-1, 6, dim)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=1)

        def attention(name: str) -> Attention:
            return Attention(cfg.num_attention_heads, cfg.attention_head_dim, bias=cfg.attention_bias,
                             dtype=self.dtype, name=name)

        x = layer_norm(cfg.norm_eps, cfg.norm_elementwise_affine, self.dtype, "norm1")(hidden_states)
        x = x * (1 + scale_msa) + shift_msa
        hidden_states = hidden_states + gate_msa * attention("attn1")(x, None, attention_mask)
        if cfg.cross_attention_dim is not None:
            hidden_states = hidden_states + attention("attn2")(hidden_states, encoder_hidden_states, encoder_attention_mask)
        x = layer_norm(cfg.norm_eps, cfg.norm_elementwise_affine, self.dtype, "norm2")(hidden_states)
        x = x * (1 + scale_mlp) + shift_mlp
        ff = FeedForward(activation_fn=cfg.activation_fn, dtype=self.dtype, name="ff")
        return hidden_states + gate_mlp * ff(x)


class PixArtTransformer2DModel(nn.Module, PretrainedModel):
    """PixArt-α's transformer: patchify + sin-cos positions, adaLN-single blocks with caption cross-attention.

    ``__call__(hidden_states, encoder_hidden_states, timestep, added_cond_kwargs, attention_mask,
    encoder_attention_mask)``:
      hidden_states: (B, H, W, in_channels) NHWC latents (H, W multiples of patch_size; any size,
        the positional table follows it).
      encoder_hidden_states: (B, L, caption_channels) caption features (T5).
      timestep: (B,) or a scalar.
      added_cond_kwargs: ``{"resolution": (B, 2), "aspect_ratio": (B, 1)}``, needed when the model
        uses micro-conditions (the 1024px model).
      attention_mask: optional 0/1 (B, H/p * W/p) mask over image tokens (self-attention keys).
      encoder_attention_mask: optional 0/1 (B, L) caption padding mask.
    Returns ``Transformer2DModelOutput(sample=(B, H, W, out_channels))``; with learned sigma
    (out_channels 8) all 8 channels are returned: the pipeline splits them.
    """

    config: PixArtTransformer2DModelConfig
    dtype: Any = jnp.float32

    config_class = PixArtTransformer2DModelConfig
    param_axes = TRANSFORMER_PARAM_AXES  # jaxgen.sharding: attention heads and feed-forward width split

    def init_args(self) -> tuple:
        cfg = self.config
        side = 2 * cfg.patch_size
        width = cfg.caption_channels if cfg.caption_channels is not None else (cfg.cross_attention_dim or cfg.inner_dim)
        added = None
        if cfg.resolved_use_additional_conditions:
            added = {"resolution": jnp.ones((1, 2), jnp.float32), "aspect_ratio": jnp.ones((1, 1), jnp.float32)}
        return (
            jnp.zeros((1, side, side, cfg.in_channels), self.dtype),
            jnp.zeros((1, 1, width), self.dtype),
            jnp.zeros((1,), jnp.int32),
            added,
        )

    @nn.compact
    def __call__(
        self,
        hidden_states: jax.Array,
        encoder_hidden_states: jax.Array | None = None,
        timestep: jax.Array | None = None,
        added_cond_kwargs: Mapping[str, jax.Array] | None = None,
        attention_mask: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
    ) -> Transformer2DModelOutput:
        cfg = self.config
        p, dim, out_channels = cfg.patch_size, cfg.inner_dim, cfg.resolved_out_channels
        use_additional = cfg.resolved_use_additional_conditions
        if use_additional and added_cond_kwargs is None:
            raise ValueError("`added_cond_kwargs` cannot be None when using additional conditions for `adaln_single`.")
        if timestep is None:
            raise ValueError("PixArtTransformer2DModel needs a timestep")
        for name, mask in (("attention_mask", attention_mask), ("encoder_attention_mask", encoder_attention_mask)):
            if mask is not None and mask.ndim != 2:
                raise ValueError(f"{name} must be a 0/1 (batch, key_tokens) mask, got shape {mask.shape}")

        batch, height, width = hidden_states.shape[0], hidden_states.shape[1] // p, hidden_states.shape[2] // p
        hidden_states = PatchEmbed(
            height=cfg.sample_size, width=cfg.sample_size, patch_size=p, embed_dim=dim,
            interpolation_scale=cfg.resolved_interpolation_scale, dtype=self.dtype, name="pos_embed",
        )(hidden_states.astype(self.dtype))

        timestep = jnp.broadcast_to(jnp.asarray(timestep), (batch,))
        timestep, embedded_timestep = AdaLayerNormSingle(dim, use_additional, dtype=self.dtype, name="adaln_single")(
            timestep, added_cond_kwargs
        )

        if cfg.caption_channels is not None:
            encoder_hidden_states = PixArtAlphaTextProjection(dim, dtype=self.dtype, name="caption_projection")(
                encoder_hidden_states.astype(self.dtype)
            ).reshape(batch, -1, dim)

        for i in range(cfg.num_layers):
            hidden_states = PixArtTransformerBlock(cfg, dtype=self.dtype, name=f"transformer_blocks.{i}")(
                hidden_states, timestep, encoder_hidden_states, attention_mask, encoder_attention_mask
            )

        table = self.param("scale_shift_table", lambda key: jax.random.normal(key, (2, dim)) / dim**0.5)
        shift, scale = jnp.split(table[None].astype(self.dtype) + embedded_timestep[:, None], 2, axis=1)
        hidden_states = layer_norm(1e-6, False, self.dtype, "norm_out")(hidden_states)
        hidden_states = hidden_states * (1 + scale) + shift
        hidden_states = Dense(p * p * out_channels, dtype=self.dtype, name="proj_out")(hidden_states)

        # unpatchify: token (h, w) holds a p x p x C patch -> (B, H, W, C)
        hidden_states = hidden_states.reshape(batch, height, width, p, p, out_channels)
        hidden_states = jnp.transpose(hidden_states, (0, 1, 3, 2, 4, 5))
        return Transformer2DModelOutput(sample=hidden_states.reshape(batch, height * p, width * p, out_channels))
