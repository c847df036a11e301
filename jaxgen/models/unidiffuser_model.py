"""UniDiffuser's U-ViT: diffusers' ``UniDiffuserModel`` (``pipelines/deprecated/unidiffuser/modeling_uvit.py``) in Flax.

One transformer denoises three things at once: the VAE latent of the image (B, 64, 64, 4), channels last
here, cut into 2x2 patches; the CLIP image embedding (B, 1, 512); and the text latent (B, 77, 64) (the
CLIP text hidden states reduced by the caption decoder's encoder). Each has its own timestep,
``t_img`` and ``t_text``, given as sinusoidal tokens; UniDiffuser-v1 adds a learned data-type token.
The token sequence is

    [t_img, t_text, (data_type), text (L), clip_img (1), vae_img patches (N)]

plus a learned position table ``pos_embed`` (1, 2 + L + 1 + N, dim), into which v1 splices
``data_type_pos_embed_token`` at index 2. The blocks are U-ViT's: ``num_layers // 2`` in-blocks whose
outputs are kept, a mid-block, ``num_layers // 2`` out-blocks each preceded by a ``SkipBlock``
(concat with the matching in-block's output -> linear -> LayerNorm), then ``norm_out``. The blocks are
post-LayerNorm with the norms on the residual stream (``UniDiffuserBlock``). Three linear heads map the
token groups back: patches -> unpatchified latent (B, H, W, C), clip token -> (B, 1, clip_img_dim),
text tokens -> (B, L, text_dim).

``UniDiffuserModel.from_pretrained(folder, subfolder="unet")`` returns ``(module, params)``;
``module.apply({"params": p}, latent_image_embeds, image_embeds, prompt_embeds, timestep_img,
timestep_text, data_type)`` returns ``(img_vae_out, img_clip_out, text_out)`` as diffusers' forward.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.attention import Attention
from jaxgen.nn.embeddings import PatchEmbed, get_timestep_embedding
from jaxgen.nn.linear import Dense
from jaxgen.nn.transformer import TRANSFORMER_PARAM_AXES, FeedForward, layer_norm

__all__ = ["UniDiffuserModelConfig", "UniDiffuserModel", "UniDiffuserBlock", "SkipBlock", "UTransformerBlocks"]

_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default: every norm of the U-ViT uses it
_ACTIVATIONS = ("gelu", "gelu-approximate", "geglu", "geglu-approximate")


@dataclasses.dataclass(frozen=True)
class UniDiffuserModelConfig(ModelConfig):
    """config.json of diffusers' ``UniDiffuserModel`` (same keys, same defaults).

    Supported: the released U-ViT's options (``block_type="unidiffuser"``, post-LayerNorm, affine
    ``layer_norm``, no timestep MLP, no patch position table, self-attention only, no upcast) with or without
    the data-type token, any activation of ``FeedForward``, with or without q/k/v biases. Other values raise
    here (NotImplementedError). ``dropout``/``ff_final_dropout`` are training-only; ``norm_num_groups``, ``num_vector_embeds``,
    ``use_linear_projection`` are unused by diffusers too, and ``num_embeds_ada_norm`` is only read with
    ``norm_type="ada_norm"``.
    """

    text_dim: int = 768
    clip_img_dim: int = 512
    num_text_tokens: int = 77
    num_attention_heads: int = 16
    attention_head_dim: int = 88
    in_channels: int | None = None
    out_channels: int | None = None
    num_layers: int = 1
    dropout: float = 0.0
    norm_num_groups: int = 32
    cross_attention_dim: int | None = None
    attention_bias: bool = False
    sample_size: int | None = None
    num_vector_embeds: int | None = None
    patch_size: int | None = None
    activation_fn: str = "geglu"
    num_embeds_ada_norm: int | None = None
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False
    norm_type: str = "layer_norm"
    block_type: str = "unidiffuser"
    pre_layer_norm: bool = False
    use_timestep_embedding: bool = False
    norm_elementwise_affine: bool = True
    use_patch_pos_embed: bool = False
    ff_final_dropout: bool = True
    use_data_type_embedding: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "sample_size", "patch_size"):
            if getattr(self, name) is None:  # diffusers cannot build the model without them either
                raise ValueError(f"UniDiffuserModel needs {name} (it is None)")
        if self.sample_size % self.patch_size:
            raise ValueError(f"UniDiffuserModel sample_size={self.sample_size} must be a multiple of "
                             f"patch_size={self.patch_size}")
        if self.activation_fn not in _ACTIVATIONS:
            raise ValueError(f"UniDiffuserModel activation_fn={self.activation_fn!r}; supported: {_ACTIVATIONS}")
        unsupported = {
            "block_type": (self.block_type, "unidiffuser"),  # UTransformerBlock (norms inside the branches)
            "pre_layer_norm": (self.pre_layer_norm, False),
            "norm_type": (self.norm_type, "layer_norm"),
            "norm_elementwise_affine": (self.norm_elementwise_affine, True),
            "use_timestep_embedding": (self.use_timestep_embedding, False),
            "use_patch_pos_embed": (self.use_patch_pos_embed, False),
            "cross_attention_dim": (self.cross_attention_dim, None),
            "only_cross_attention": (self.only_cross_attention, False),
            "upcast_attention": (self.upcast_attention, False),
        }
        for name, (value, supported) in unsupported.items():
            if value != supported:
                raise NotImplementedError(f"UniDiffuserModel {name}={value!r} is not supported; only {supported!r} "
                                          "(the released UniDiffuser U-ViT's value)")

    @property
    def inner_dim(self) -> int:
        """Width of the token stream: heads * head_dim."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def num_patches(self) -> int:
        """Image tokens: (sample_size / patch_size) ** 2."""
        return (self.sample_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Rows of ``pos_embed``: t_img, t_text, text tokens, clip token, patches (not the data-type token)."""
        return 1 + 1 + self.num_text_tokens + 1 + self.num_patches

    @classmethod
    def tiny(cls, **overrides: Any) -> "UniDiffuserModelConfig":
        """2 layers (3 blocks), width 32 in 4 heads, 8x8x4 latents in 2x2 patches, 5 text tokens: for tests."""
        values = dict(
            text_dim=8, clip_img_dim=12, num_text_tokens=5, num_attention_heads=4, attention_head_dim=8,
            in_channels=4, out_channels=4, num_layers=2, sample_size=8, patch_size=2, activation_fn="gelu",
            num_embeds_ada_norm=1000, use_data_type_embedding=True,
        )
        return cls(**{**values, **overrides})

    @classmethod
    def v1(cls) -> "UniDiffuserModelConfig":
        """thu-ml/unidiffuser-v1 ``unet``: 31 blocks of 24 x 64, 64x64x4 latents, 77 x 64 text, data-type token."""
        return cls(
            text_dim=64, clip_img_dim=512, num_text_tokens=77, num_attention_heads=24, attention_head_dim=64,
            in_channels=4, out_channels=4, num_layers=30, sample_size=64, patch_size=2, activation_fn="gelu",
            num_embeds_ada_norm=1000, use_data_type_embedding=True,
        )


class UniDiffuserBlock(nn.Module):
    """diffusers' ``UniDiffuserBlock`` (post-LayerNorm, self-attention only): the norms sit on the residual stream.

    ``h = norm1(attn1(h) + h); h = norm3(ff(h) + h)`` (unlike ``BasicTransformerBlock``, which normalises
    the branch inputs). Takes (B, N, dim); returns (B, N, dim).
    """

    num_attention_heads: int
    attention_head_dim: int
    activation_fn: str = "geglu"
    attention_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        attn = Attention(self.num_attention_heads, self.attention_head_dim, bias=self.attention_bias,
                         dtype=self.dtype, name="attn1")
        hidden_states = layer_norm(_LAYER_NORM_EPS, True, self.dtype, "norm1")(attn(hidden_states) + hidden_states)
        ff = FeedForward(activation_fn=self.activation_fn, dtype=self.dtype, name="ff")
        return layer_norm(_LAYER_NORM_EPS, True, self.dtype, "norm3")(ff(hidden_states) + hidden_states)


class SkipBlock(nn.Module):
    """diffusers' ``SkipBlock``: ``norm(skip_linear(concat([x, skip], -1)))``; (B, N, dim) x 2 -> (B, N, dim)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, skip: jax.Array) -> jax.Array:
        dim = hidden_states.shape[-1]
        x = Dense(dim, dtype=self.dtype, name="skip_linear")(jnp.concatenate([hidden_states, skip], axis=-1))
        return layer_norm(_LAYER_NORM_EPS, True, self.dtype, "norm")(x)


class UTransformerBlocks(nn.Module):
    """The part of diffusers' ``UTransformer2DModel`` that ``UniDiffuserModel`` runs (``hidden_states_is_embedding``,
    no unpatchify): in-blocks, mid-block, skip + out-blocks, ``norm_out``. (B, N, dim) -> (B, N, dim).

    diffusers' ``UTransformer2DModel`` also builds a patch embedding (``pos_embed.proj``) that this path never
    calls; its checkpoint keys are ignored (``convert/unidiffuser_model.py``).
    """

    config: UniDiffuserModelConfig
    dtype: Any = jnp.float32

    def _block(self, name: str) -> UniDiffuserBlock:
        cfg = self.config
        return UniDiffuserBlock(cfg.num_attention_heads, cfg.attention_head_dim, cfg.activation_fn,
                                cfg.attention_bias, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        depth = self.config.num_layers // 2  # num_layers 30 -> 15 in, 1 mid, 15 out: 31 blocks
        skips = []
        for i in range(depth):
            hidden_states = self._block(f"transformer_in_blocks.{i}")(hidden_states)
            skips.append(hidden_states)
        hidden_states = self._block("transformer_mid_block")(hidden_states)
        for i in range(depth):
            # the first out-block takes the last in-block's output (a U)
            hidden_states = SkipBlock(self.dtype, name=f"transformer_out_blocks.{i}.skip")(hidden_states, skips.pop())
            hidden_states = self._block(f"transformer_out_blocks.{i}.block")(hidden_states)
        return layer_norm(_LAYER_NORM_EPS, True, self.dtype, "norm_out")(hidden_states)


def _per_row(value: Any, batch: int, name: str, dtype: Any) -> jax.Array:
    """A scalar or (B,)/(1,) value -> (B,) of ``dtype``. A Python number is truncated to an integer first, as
    diffusers turns it into a ``torch.long``/``torch.int`` tensor; arrays keep their (possibly fractional) values."""
    if isinstance(value, (int, float)):
        value = int(value)
    arr = jnp.asarray(value)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] not in (1, batch)):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got shape {arr.shape}")
    return jnp.broadcast_to(arr.reshape(-1), (batch,)).astype(dtype)


class UniDiffuserModel(nn.Module, PretrainedModel):
    """diffusers' ``UniDiffuserModel`` (the U-ViT of UniDiffuser), channels last.

    ``__call__(latent_image_embeds, image_embeds, prompt_embeds, timestep_img, timestep_text, data_type=1)``:
      latent_image_embeds: (B, sample_size, sample_size, in_channels) NHWC VAE latent.
      image_embeds: (B, 1, clip_img_dim) CLIP image embedding.
      prompt_embeds: (B, num_text_tokens, text_dim) text latent.
      timestep_img, timestep_text: (B,) or scalars (see ``_per_row``: Python numbers are truncated to ints).
      data_type: (B,) or a scalar, 0 or 1 (v1: 1 = the weights trained on the non-public data); read only
        when the config has ``use_data_type_embedding``.
    Returns ``(img_vae_out (B, H, W, out_channels) NHWC, img_clip_out (B, 1, clip_img_dim),
    text_out (B, num_text_tokens, text_dim))``, diffusers' order. diffusers' ``encoder_hidden_states`` and
    ``cross_attention_kwargs`` are left out: without cross-attention (the only supported case) they change nothing.
    The position table has one row per token, so the sizes are those of the config.
    """

    config: UniDiffuserModelConfig
    dtype: Any = jnp.float32

    config_class: ClassVar[type[UniDiffuserModelConfig]] = UniDiffuserModelConfig
    param_axes: ClassVar[tuple] = TRANSFORMER_PARAM_AXES  # attention heads and feed-forward width split

    def init_args(self) -> tuple:
        cfg = self.config
        return (jnp.zeros((1, cfg.sample_size, cfg.sample_size, cfg.in_channels), self.dtype),
                jnp.zeros((1, 1, cfg.clip_img_dim), self.dtype),
                jnp.zeros((1, cfg.num_text_tokens, cfg.text_dim), self.dtype),
                jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32), jnp.ones((1,), jnp.int32))

    def _check_inputs(self, latent_image_embeds: Any, image_embeds: Any, prompt_embeds: Any, data_type: Any) -> None:
        cfg = self.config
        want = {
            "latent_image_embeds": (latent_image_embeds, (cfg.sample_size, cfg.sample_size, cfg.in_channels),
                                    "(batch, sample_size, sample_size, in_channels) NHWC"),
            "image_embeds": (image_embeds, (1, cfg.clip_img_dim), "(batch, 1, clip_img_dim)"),
            "prompt_embeds": (prompt_embeds, (cfg.num_text_tokens, cfg.text_dim), "(batch, num_text_tokens, text_dim)"),
        }
        batch = latent_image_embeds.shape[0] if getattr(latent_image_embeds, "ndim", 0) == 4 else None
        for name, (x, tail, layout) in want.items():
            shape = tuple(getattr(x, "shape", ()))
            if len(shape) != len(tail) + 1 or shape[1:] != tail or (batch is not None and shape[0] != batch):
                raise ValueError(f"{name} must be {layout} = (batch, {', '.join(map(str, tail))}) with one batch "
                                 f"for all inputs; got shape {shape}")
        if cfg.use_data_type_embedding:
            if data_type is None:
                raise ValueError("data_type must be supplied: the model uses a data type embedding")
            if isinstance(data_type, (int, float)) and int(data_type) not in (0, 1):
                raise ValueError(f"data_type must be 0 or 1, got {data_type!r}")

    def _tokens(self, latent_image_embeds: jax.Array, image_embeds: jax.Array, prompt_embeds: jax.Array,
                timestep_img: Any, timestep_text: Any, data_type: Any) -> jax.Array:
        """All inputs as one (B, num_tokens [+1], dim) sequence, positions added."""
        cfg, dtype = self.config, self.dtype
        dim, batch = cfg.inner_dim, latent_image_embeds.shape[0]
        vae = PatchEmbed(height=cfg.sample_size, width=cfg.sample_size, patch_size=cfg.patch_size, embed_dim=dim,
                         pos_embed_type=None, dtype=dtype, name="vae_img_in")(latent_image_embeds.astype(dtype))
        clip = Dense(dim, dtype=dtype, name="clip_img_in")(image_embeds.astype(dtype))
        text = Dense(dim, dtype=dtype, name="text_in")(prompt_embeds.astype(dtype))

        def time_token(t: Any, name: str) -> jax.Array:  # Timesteps(dim, flip_sin_to_cos, shift 0), no MLP
            t = _per_row(t, batch, name, jnp.float32)
            return get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0).astype(dtype)[:, None]

        tokens = [time_token(timestep_img, "timestep_img"), time_token(timestep_text, "timestep_text")]
        # trunc_normal(0.02) in diffusers; the checkpoint overwrites it
        pos_embed = self.param("pos_embed", nn.initializers.truncated_normal(0.02), (1, cfg.num_tokens, dim))
        pos_embed = pos_embed.astype(dtype)
        if cfg.use_data_type_embedding:
            labels = _per_row(data_type, batch, "data_type", jnp.int32)
            tokens.append(nn.Embed(2, dim, dtype=dtype, name="data_type_token_embedding")(labels)[:, None])
            # the data-type token sits after the two time tokens, and so does its position
            dt_pos = self.param("data_type_pos_embed_token", nn.initializers.zeros_init(), (1, 1, dim)).astype(dtype)
            pos_embed = jnp.concatenate([pos_embed[:, :2], dt_pos, pos_embed[:, 2:]], axis=1)
        tokens += [text, clip, vae]
        return jnp.concatenate(tokens, axis=1) + pos_embed

    def _unpatchify(self, patches: jax.Array) -> jax.Array:
        """(B, h * w, p * p * C) rows of (p, q, C) patches -> (B, h * p, w * p, C) NHWC (diffusers' einsum
        ``nhwpqc->nchpwq`` without the move to channels first). The grid is square, as diffusers assumes."""
        cfg = self.config
        p, c, side = cfg.patch_size, cfg.out_channels, cfg.sample_size // cfg.patch_size
        x = patches.reshape(-1, side, side, p, p, c)
        return jnp.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(-1, side * p, side * p, c)

    @nn.compact
    def __call__(self, latent_image_embeds: jax.Array, image_embeds: jax.Array, prompt_embeds: jax.Array,
                 timestep_img: jax.Array | float | int, timestep_text: jax.Array | float | int,
                 data_type: jax.Array | float | int | None = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
        cfg, dtype = self.config, self.dtype
        self._check_inputs(latent_image_embeds, image_embeds, prompt_embeds, data_type)
        hidden_states = self._tokens(latent_image_embeds, image_embeds, prompt_embeds, timestep_img, timestep_text,
                                     data_type)
        hidden_states = UTransformerBlocks(cfg, dtype=dtype, name="transformer")(hidden_states)

        # token groups: t_img, t_text, [data_type], text, clip, patches; the leading tokens' outputs are dropped
        start = 3 if cfg.use_data_type_embedding else 2
        text_end = start + cfg.num_text_tokens
        text_out = hidden_states[:, start:text_end]
        img_clip_out = hidden_states[:, text_end:text_end + 1]
        img_vae_out = hidden_states[:, text_end + 1:]

        patch_dim = cfg.patch_size ** 2 * cfg.out_channels
        img_vae_out = self._unpatchify(Dense(patch_dim, dtype=dtype, name="vae_img_out")(img_vae_out))
        img_clip_out = Dense(cfg.clip_img_dim, dtype=dtype, name="clip_img_out")(img_clip_out)
        text_out = Dense(cfg.text_dim, dtype=dtype, name="text_out")(text_out)
        return img_vae_out, img_clip_out, text_out
