"""diffusers' ``UNet2DConditionModel`` in Flax, channels last: DeepFloyd IF stages I and II, the x4 upscaler, Kandinsky 2.x.

``UNet2DConditionModel.from_pretrained(folder, subfolder="unet")`` returns ``(module, params)``;
``module.apply({"params": params}, sample, timestep, encoder_hidden_states, ...)`` takes NHWC
samples and returns ``UNet2DConditionOutput(sample=(B, H, W, out_channels))``. With learned
variance (IF: ``out_channels = 2 * in_channels``) all channels are returned; the pipeline splits them.

This file holds the config dataclass (its fields are config.json's keys), the model (the
``param_axes`` table for sharding, and how it wires its pieces, named as in diffusers) and its output.
The conditioning: ``time_proj`` (sinusoidal) -> ``time_embedding`` (MLP), optionally conditioned by
``timestep_cond``, plus ``class_embedding`` and ``add_embedding``, then ``encoder_hid_proj`` on the
text; those three are built by ``jaxgen.nn.unet_embeddings`` (IF's text pooling, Kandinsky 2.x's image
embeddings and projections). The down/mid/up blocks are in ``jaxgen.nn.unet_blocks``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.embeddings import Timesteps, TimestepEmbedding
from jaxgen.nn.resnet import conv2d, get_activation, group_norm
from jaxgen.nn.transformer import TRANSFORMER_PARAM_AXES
from jaxgen.nn import unet_blocks as blocks
from jaxgen.nn.unet_embeddings import addition_embedding, class_embedding, project_encoder
# the embedding modules lived here before jaxgen.nn.unet_embeddings; still importable from this module
from jaxgen.nn.unet_embeddings import (
    AttentionPooling, ImageHintTimeEmbedding, ImageProjection, ImageTimeEmbedding, TextImageProjection,
    TextImageTimeEmbedding, TextTimeEmbedding,
)

__all__ = [
    "UNet2DConditionModelConfig", "UNet2DConditionModel", "UNet2DConditionOutput",
    "AttentionPooling", "TextTimeEmbedding", "TextImageTimeEmbedding", "ImageTimeEmbedding",
    "ImageHintTimeEmbedding", "TextImageProjection", "ImageProjection",
]

_DOWN_BLOCKS = ("DownBlock2D", "ResnetDownsampleBlock2D", "CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D")
_UP_BLOCKS = ("UpBlock2D", "ResnetUpsampleBlock2D", "CrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D")
_MID_BLOCKS = ("UNetMidBlock2D", "UNetMidBlock2DCrossAttn", "UNetMidBlock2DSimpleCrossAttn", None)
_CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection", "simple_projection")
_ADDITION_EMBED_TYPES = (None, "text", "text_image", "image", "image_hint")
_ENCODER_HID_DIM_TYPES = (None, "text_proj", "text_image_proj", "image_proj")


def _strip_unet_res(block_type: str) -> str:
    return block_type[7:] if block_type.startswith("UNetRes") else block_type


def _per_level(value: Any, n: int, field: str) -> tuple:
    """An int/bool/None broadcast to ``n`` levels, or a per-level sequence checked for length."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"{field} has {len(value)} entries, down_block_types has {n}")
        return tuple(value)
    return (value,) * n


@dataclasses.dataclass(frozen=True)
class UNet2DConditionModelConfig(ModelConfig):
    """config.json of diffusers' ``UNet2DConditionModel`` (same keys and defaults).

    Unsupported values raise ValueError naming the field: ``time_embedding_type="fourier"``,
    ``addition_embed_type="text_time"`` (SDXL), ``encoder_hid_dim_type="ip_image_proj"``,
    ``attention_type`` other than ``"default"`` (GLIGEN), ``dual_cross_attention``,
    ``num_attention_heads`` (diffusers refuses it too), ``norm_num_groups=None``, and block types
    other than Down/ResnetDownsample/CrossAttnDown/SimpleCrossAttnDown (and their Up twins).
    """

    sample_size: int | tuple[int, int] | None = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple = 1
    reverse_transformer_layers_per_block: tuple | None = None
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    projection_class_embeddings_input_dim: int | None = None
    attention_type: str = "default"
    class_embeddings_concat: bool = False
    mid_block_only_cross_attention: bool | None = None
    cross_attention_norm: str | None = None
    addition_embed_type_num_heads: int = 64

    def __post_init__(self) -> None:
        n = len(self.down_block_types)
        if len(self.up_block_types) != n:
            raise ValueError(f"up_block_types has {len(self.up_block_types)} entries, down_block_types has {n}")
        if len(self.block_out_channels) != n:
            raise ValueError(f"block_out_channels has {len(self.block_out_channels)} entries, down_block_types has {n}")
        for field, types, known in (("down_block_types", self.down_block_types, _DOWN_BLOCKS),
                                    ("up_block_types", self.up_block_types, _UP_BLOCKS)):
            for t in types:
                if _strip_unet_res(t) not in known:
                    raise ValueError(f"{field}: block type {t!r} is not supported (supported: {known})")
        checks = (
            ("mid_block_type", self.mid_block_type, _MID_BLOCKS),
            ("class_embed_type", self.class_embed_type, _CLASS_EMBED_TYPES),
            ("addition_embed_type", self.addition_embed_type, _ADDITION_EMBED_TYPES),
            ("encoder_hid_dim_type", self.encoder_hid_dim_type, _ENCODER_HID_DIM_TYPES),
            ("time_embedding_type", self.time_embedding_type, ("positional",)),
            ("attention_type", self.attention_type, ("default",)),
            ("resnet_time_scale_shift", self.resnet_time_scale_shift, ("default", "scale_shift")),
            ("cross_attention_norm", self.cross_attention_norm, (None, "group_norm", "layer_norm")),
        )
        for field, value, known in checks:
            if value not in known:
                raise ValueError(f"{field}={value!r} is not supported (supported: {known})")
        if self.num_attention_heads is not None:
            raise ValueError("num_attention_heads must be None: diffusers reads the head count of cross-attention "
                             "blocks from attention_head_dim (and refuses num_attention_heads)")
        if self.dual_cross_attention:
            raise ValueError("dual_cross_attention=True is not supported")
        if self.norm_num_groups is None:
            raise ValueError("norm_num_groups=None is not supported")
        if self.encoder_hid_dim_type is not None and self.encoder_hid_dim is None:
            raise ValueError(f"encoder_hid_dim has to be defined when encoder_hid_dim_type is {self.encoder_hid_dim_type!r}")
        projection = self.class_embed_type in ("projection", "simple_projection")
        if projection and self.projection_class_embeddings_input_dim is None:
            raise ValueError(f"class_embed_type={self.class_embed_type!r} needs projection_class_embeddings_input_dim")
        if self.addition_embed_type in ("image", "image_hint") and self.encoder_hid_dim is None:
            raise ValueError(f"addition_embed_type={self.addition_embed_type!r} needs encoder_hid_dim")
        for field in ("only_cross_attention", "attention_head_dim", "cross_attention_dim", "layers_per_block",
                      "transformer_layers_per_block"):
            _per_level(getattr(self, field), n, field)
        if isinstance(self.transformer_layers_per_block, tuple) and self.reverse_transformer_layers_per_block is None:
            if any(isinstance(x, tuple) for x in self.transformer_layers_per_block):
                raise ValueError("reverse_transformer_layers_per_block is needed when "
                                 "transformer_layers_per_block is nested")
        get_activation(self.act_fn)

    # ------------------------------------------------------------------ derived values, as diffusers computes them

    @property
    def num_levels(self) -> int:
        """Number of down (and up) blocks."""
        return len(self.down_block_types)

    @property
    def time_embed_dim(self) -> int:
        """Width of the time embedding: ``time_embedding_dim`` or 4 * block_out_channels[0]."""
        return self.time_embedding_dim or self.block_out_channels[0] * 4

    @property
    def resolved_encoder_hid_dim_type(self) -> str | None:
        """``encoder_hid_dim_type``; ``"text_proj"`` when only ``encoder_hid_dim`` is set (as diffusers, e.g. IF)."""
        if self.encoder_hid_dim_type is None and self.encoder_hid_dim is not None:
            return "text_proj"
        return self.encoder_hid_dim_type

    @property
    def resolved_mid_block_only_cross_attention(self) -> bool:
        """``mid_block_only_cross_attention``; when None, ``only_cross_attention`` if that is a bool, else False."""
        if self.mid_block_only_cross_attention is not None:
            return bool(self.mid_block_only_cross_attention)
        return bool(self.only_cross_attention) if isinstance(self.only_cross_attention, bool) else False

    def level(self, field: str) -> tuple:
        """A per-level value (``attention_head_dim``, ``cross_attention_dim``, ...) as a tuple over the down levels."""
        return _per_level(getattr(self, field), self.num_levels, field)

    @property
    def encoder_input_dim(self) -> int:
        """Width of the ``encoder_hidden_states`` the model takes (before ``encoder_hid_proj``)."""
        if self.resolved_encoder_hid_dim_type in ("text_proj", "text_image_proj"):
            return self.encoder_hid_dim
        cross = self.cross_attention_dim
        return cross[0] if isinstance(cross, tuple) else cross

    # ------------------------------------------------------------------ named variants

    @classmethod
    def tiny(cls, **overrides: Any) -> "UNet2DConditionModelConfig":
        """An IF-I-like three-level UNet (16/32/32 channels) for tests: added-KV attention, text pooling, scale-shift."""
        values = dict(
            sample_size=8, in_channels=3, out_channels=6, block_out_channels=(16, 32, 32), layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            act_fn="gelu", norm_num_groups=8, attention_head_dim=8, cross_attention_dim=32, encoder_hid_dim=24,
            addition_embed_type="text", addition_embed_type_num_heads=4, cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
        )
        return cls(**{**values, **overrides})

    @classmethod
    def if_i_xl(cls) -> "UNet2DConditionModelConfig":
        """DeepFloyd/IF-I-XL-v1.0's unet (4.3B parameters, 64x64 pixels, T5-XXL text)."""
        return cls(
            sample_size=64, in_channels=3, out_channels=6, block_out_channels=(704, 1408, 2112, 2816), layers_per_block=3,
            down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
            act_fn="gelu", attention_head_dim=64, cross_attention_dim=2816, encoder_hid_dim=4096,
            addition_embed_type="text", addition_embed_type_num_heads=64, cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
        )

    @classmethod
    def x4_upscaler(cls) -> "UNet2DConditionModelConfig":
        """stabilityai/stable-diffusion-x4-upscaler's unet (473M; 7 input channels: latents ++ low-res image)."""
        return cls(
            sample_size=128, in_channels=7, out_channels=4, block_out_channels=(256, 512, 512, 1024), layers_per_block=2,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
            up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
            attention_head_dim=8, cross_attention_dim=1024, num_class_embeds=1000,
            only_cross_attention=(True, True, True, False), use_linear_projection=True,
        )


@flax.struct.dataclass
class UNet2DConditionOutput:
    """``sample``: (B, H, W, out_channels) NHWC."""

    sample: jax.Array


# ----------------------------------------------------------------------------- the model


class UNet2DConditionModel(nn.Module, PretrainedModel):
    """diffusers' ``UNet2DConditionModel``, channels last.

    ``__call__(sample, timestep, encoder_hidden_states, class_labels=None, timestep_cond=None,
    attention_mask=None, cross_attention_kwargs=None, added_cond_kwargs=None,
    down_block_additional_residuals=None, mid_block_additional_residual=None,
    encoder_attention_mask=None)``:
      sample: (B, H, W, in_channels) NHWC (``in_channels - 4`` with ``image_hint``: the encoded hint is
        concatenated to it).
      timestep: (B,) or a scalar.
      encoder_hidden_states: (B, L, D): the text encoder's output (D = ``encoder_hid_dim`` when the
        model projects it, else ``cross_attention_dim``); may be None with ``encoder_hid_dim_type="image_proj"``
        (Kandinsky 2.2 passes None: the image embedding is the context).
      class_labels: (B,) noise level / class ids (``class_embed_type="timestep"``, ``num_class_embeds``),
        or vectors for the identity/projection class embeddings.
      timestep_cond: (B, time_cond_proj_dim), with ``time_cond_proj_dim``.
      attention_mask: optional 0/1 mask; in the SimpleCrossAttn blocks it replaces the encoder mask
        (diffusers' UnCLIP convention), in the transformer blocks it masks the keys of ``attn1``.
      cross_attention_kwargs: only None/empty is accepted (LoRA scales and processors are PyTorch's).
      added_cond_kwargs: ``image_embeds`` / ``text_embeds`` / ``hint`` (NHWC) for Kandinsky's embeddings.
      down_block_additional_residuals, mid_block_additional_residual: ControlNet residuals (NHWC),
        added to the skip states and the mid block's output; both or neither.
      encoder_attention_mask: optional 0/1 (B, L) mask over the text tokens (cross-attention keys).
    Returns ``UNet2DConditionOutput(sample=(B, H, W, out_channels))``.
    """

    config: UNet2DConditionModelConfig
    dtype: Any = jnp.float32

    config_class = UNet2DConditionModelConfig
    # logical axes of the params (jaxgen.sharding): attention as diffusers' transformers, plus
    param_axes = TRANSFORMER_PARAM_AXES + (
        # added-KV attention (IF's SimpleCrossAttn blocks): the text projections split by heads too
        (r"(.*/)?add_[kv]_proj/kernel", ("embed", "heads")),
        (r"(.*/)?add_[kv]_proj/bias", ("heads",)),
        # resnets as Megatron pairs: conv1 splits its output channels, conv2 its input channels, so
        # the block's output is whole again (most of IF-I-XL's 4.3B parameters are in these convs)
        (r"(.*/)?resnets\.\d+/conv1/kernel", (None, None, "embed", "mlp")),
        (r"(.*/)?resnets\.\d+/conv1/bias", ("mlp",)),
        (r"(.*/)?resnets\.\d+/conv2/kernel", (None, None, "mlp", "embed")),
    )

    def init_args(self) -> tuple:
        cfg = self.config
        side = 2 ** (cfg.num_levels - 1)
        f32 = jnp.float32
        hint_channels = 4 if cfg.addition_embed_type == "image_hint" else 0  # the encoded hint joins the sample
        sample = jnp.zeros((1, side, side, cfg.in_channels - hint_channels), self.dtype)
        encoder = jnp.zeros((1, 1, cfg.encoder_input_dim), self.dtype)
        class_labels = None
        if cfg.class_embed_type is None and cfg.num_class_embeds is not None:
            class_labels = jnp.zeros((1,), jnp.int32)
        elif cfg.class_embed_type == "timestep":
            class_labels = jnp.zeros((1,), f32)
        elif cfg.class_embed_type == "identity":
            class_labels = jnp.zeros((1, cfg.time_embed_dim), f32)
        elif cfg.class_embed_type in ("projection", "simple_projection"):
            class_labels = jnp.zeros((1, cfg.projection_class_embeddings_input_dim), f32)
        timestep_cond = None if cfg.time_cond_proj_dim is None else jnp.zeros((1, cfg.time_cond_proj_dim), f32)
        added = {}
        if cfg.addition_embed_type == "text_image" or cfg.resolved_encoder_hid_dim_type == "text_image_proj":
            cross = cfg.level("cross_attention_dim")[0]  # Kandinsky 2.1 embeds text and image at this width
            added["image_embeds"] = jnp.zeros((1, cross), f32)
            added["text_embeds"] = jnp.zeros((1, cross), f32)
        if cfg.addition_embed_type in ("image", "image_hint") or cfg.resolved_encoder_hid_dim_type == "image_proj":
            added["image_embeds"] = jnp.zeros((1, cfg.encoder_hid_dim), f32)
        if cfg.addition_embed_type == "image_hint":
            added["hint"] = jnp.zeros((1, 8 * side, 8 * side, 3), f32)
        return (sample, jnp.zeros((1,), jnp.int32), encoder, class_labels, timestep_cond, None, None, added or None)

    # ------------------------------------------------------------------ conditioning

    def _conditioning(self, sample: jax.Array, timestep: Any, encoder_hidden_states: jax.Array | None,
                      class_labels: jax.Array | None, timestep_cond: jax.Array | None,
                      added: Mapping[str, jax.Array] | None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """(sample, the embedding the resnets take, the context for cross-attention): ``time_embedding``
        + ``class_embedding`` + ``add_embedding``; the encoded ``image_hint`` joins the sample, and the text
        goes through ``encoder_hid_proj``."""
        cfg, batch = self.config, sample.shape[0]
        time_proj = Timesteps(cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        timesteps = jnp.broadcast_to(jnp.reshape(jnp.asarray(timestep), (-1,)), (batch,))
        cond = None if timestep_cond is None else jnp.asarray(timestep_cond, self.dtype)
        emb = TimestepEmbedding(cfg.time_embed_dim, act_fn=cfg.act_fn, post_act_fn=cfg.timestep_post_act,
                                cond_proj_dim=cfg.time_cond_proj_dim, dtype=self.dtype, name="time_embedding")(
            time_proj(timesteps).astype(self.dtype), cond)
        class_emb = class_embedding(
            class_labels, time_proj, kind=cfg.class_embed_type, num_class_embeds=cfg.num_class_embeds,
            dim=cfg.time_embed_dim, act_fn=cfg.act_fn, batch=batch, dtype=self.dtype)
        if class_emb is not None:
            class_emb = class_emb.astype(self.dtype)
            emb = jnp.concatenate([emb, class_emb], axis=-1) if cfg.class_embeddings_concat else emb + class_emb
        aug_emb, hint = addition_embedding(
            encoder_hidden_states, added, kind=cfg.addition_embed_type, dim=cfg.time_embed_dim,
            num_heads=cfg.addition_embed_type_num_heads, dtype=self.dtype)
        if hint is not None:
            sample = jnp.concatenate([sample, hint.astype(self.dtype)], axis=-1)
        if aug_emb is not None:
            emb = emb + aug_emb
        if cfg.time_embedding_act_fn is not None:
            emb = get_activation(cfg.time_embedding_act_fn)(emb)

        encoder_hidden_states = project_encoder(
            encoder_hidden_states, added, kind=cfg.resolved_encoder_hid_dim_type,
            cross_attention_dim=cfg.level("cross_attention_dim")[0], dtype=self.dtype)
        return sample, emb, encoder_hidden_states

    # ------------------------------------------------------------------ blocks

    def _resnet(self, plain: bool, output_scale_factor: float | None = None) -> blocks.ResnetSettings:
        # Down/Up/CrossAttn blocks get neither skip_time_act nor resnet_out_scale_factor from the UNet
        # (diffusers' get_down_block/get_up_block); the Resnet*/SimpleCrossAttn blocks get both.
        cfg = self.config
        return blocks.ResnetSettings(
            eps=cfg.norm_eps, groups=cfg.norm_num_groups, act_fn=cfg.act_fn, time_scale_shift=cfg.resnet_time_scale_shift,
            skip_time_act=False if plain else cfg.resnet_skip_time_act,
            output_scale_factor=output_scale_factor if output_scale_factor is not None else
            (1.0 if plain else cfg.resnet_out_scale_factor),
        )

    def _transformer_layers(self) -> tuple[tuple, tuple]:
        """Transformer depths per (level, layer) for the down path and the up path, as diffusers expands them."""
        cfg = self.config
        down = cfg.level("transformer_layers_per_block")
        if cfg.reverse_transformer_layers_per_block is not None:
            up = tuple(cfg.reverse_transformer_layers_per_block)
        else:
            up = tuple(reversed(down))
        return down, up

    def _down_block(self, i: int, in_level: dict) -> nn.Module:
        cfg = self.config
        kind = _strip_unet_res(cfg.down_block_types[i])
        common = dict(out_channels=cfg.block_out_channels[i], num_layers=in_level["layers"],
                      add_downsample=i < cfg.num_levels - 1, dtype=self.dtype, name=f"down_blocks.{i}")
        if kind == "DownBlock2D":
            return blocks.DownBlock2D(resnet=self._resnet(True), downsample_padding=cfg.downsample_padding, **common)
        if kind == "ResnetDownsampleBlock2D":
            return blocks.ResnetDownsampleBlock2D(resnet=self._resnet(False), **common)
        if kind == "CrossAttnDownBlock2D":
            return blocks.CrossAttnDownBlock2D(resnet=self._resnet(True), transformer=in_level["transformer"],
                                               downsample_padding=cfg.downsample_padding, **common)
        return blocks.SimpleCrossAttnDownBlock2D(resnet=self._resnet(False), attention=in_level["added_kv"], **common)

    def _up_block(self, i: int, in_level: dict) -> nn.Module:
        cfg = self.config
        kind = _strip_unet_res(cfg.up_block_types[i])
        common = dict(out_channels=cfg.block_out_channels[::-1][i], num_layers=in_level["layers"],
                      add_upsample=i < cfg.num_levels - 1, dtype=self.dtype, name=f"up_blocks.{i}")
        if kind == "UpBlock2D":
            return blocks.UpBlock2D(resnet=self._resnet(True), **common)
        if kind == "ResnetUpsampleBlock2D":
            return blocks.ResnetUpsampleBlock2D(resnet=self._resnet(False), **common)
        if kind == "CrossAttnUpBlock2D":
            return blocks.CrossAttnUpBlock2D(resnet=self._resnet(True), transformer=in_level["transformer"], **common)
        return blocks.SimpleCrossAttnUpBlock2D(resnet=self._resnet(False), attention=in_level["added_kv"], **common)

    def _mid_block(self, transformer_layers: Any) -> nn.Module | None:
        cfg = self.config
        kind = cfg.mid_block_type
        if kind is None:
            return None
        resnet = self._resnet(True, cfg.mid_block_scale_factor)
        name = "mid_block"
        if kind == "UNetMidBlock2D":
            return blocks.UNetMidBlock2D(resnet=resnet, dtype=self.dtype, name=name)
        if kind == "UNetMidBlock2DCrossAttn":
            layers = transformer_layers if isinstance(transformer_layers, tuple) else (transformer_layers,)
            transformer = blocks.TransformerSettings(
                num_attention_heads=cfg.level("attention_head_dim")[-1],
                cross_attention_dim=cfg.level("cross_attention_dim")[-1], layers=layers,
                norm_num_groups=cfg.norm_num_groups, use_linear_projection=cfg.use_linear_projection,
            )
            return blocks.UNetMidBlock2DCrossAttn(resnet=resnet, transformer=transformer, dtype=self.dtype, name=name)
        resnet = dataclasses.replace(resnet, skip_time_act=cfg.resnet_skip_time_act)
        attention = blocks.AddedKVSettings(
            attention_head_dim=cfg.level("attention_head_dim")[-1], norm_num_groups=cfg.norm_num_groups,
            only_cross_attention=cfg.resolved_mid_block_only_cross_attention, cross_attention_norm=cfg.cross_attention_norm,
        )
        return blocks.UNetMidBlock2DSimpleCrossAttn(resnet=resnet, attention=attention, dtype=self.dtype, name=name)

    def _level_settings(self, up: bool) -> list[dict]:
        """Per down (or up) block: resnet count, and the settings of either kind of attention."""
        cfg = self.config
        n = cfg.num_levels
        heads = cfg.level("attention_head_dim")  # heads of Transformer2DModel, head width of added-KV attention
        cross = cfg.level("cross_attention_dim")
        only_cross = cfg.level("only_cross_attention")
        layers = cfg.level("layers_per_block")
        down_t, up_t = self._transformer_layers()
        out = []
        for i in range(n):
            j = n - 1 - i if up else i  # the down level this block mirrors
            num_layers = layers[j] + 1 if up else layers[j]
            depth = up_t[i] if up else down_t[i]
            depth = tuple(depth) if isinstance(depth, tuple) else (depth,) * num_layers
            transformer = blocks.TransformerSettings(
                num_attention_heads=heads[j], cross_attention_dim=cross[j], layers=depth,
                norm_num_groups=cfg.norm_num_groups, use_linear_projection=cfg.use_linear_projection,
                only_cross_attention=bool(only_cross[j]),
            )
            # diffusers gives up block i the *unreversed* attention_head_dim[i] (but reversed heads for transformers).
            added_kv = blocks.AddedKVSettings(
                attention_head_dim=heads[i] if heads[i] is not None else cfg.block_out_channels[j],
                norm_num_groups=cfg.norm_num_groups, only_cross_attention=bool(only_cross[j]),
                cross_attention_norm=cfg.cross_attention_norm,
            )
            out.append(dict(layers=num_layers, transformer=transformer, added_kv=added_kv))
        return out

    # ------------------------------------------------------------------ forward

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timestep: jax.Array | float | int,
        encoder_hidden_states: jax.Array | None,
        class_labels: jax.Array | None = None,
        timestep_cond: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        cross_attention_kwargs: Mapping[str, Any] | None = None,
        added_cond_kwargs: Mapping[str, jax.Array] | None = None,
        down_block_additional_residuals: tuple[jax.Array, ...] | None = None,
        mid_block_additional_residual: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
    ) -> UNet2DConditionOutput:
        cfg = self.config
        if cross_attention_kwargs:
            raise ValueError(f"cross_attention_kwargs are not supported (got keys {sorted(cross_attention_kwargs)})")
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            raise ValueError("down_block_additional_residuals and mid_block_additional_residual go together (ControlNet); "
                             "T2I-Adapter residuals are not supported")
        if sample.ndim != 4:
            raise ValueError(f"sample must be NHWC (batch, height, width, channels), got shape {sample.shape}")
        for name, mask in (("attention_mask", attention_mask), ("encoder_attention_mask", encoder_attention_mask)):
            if mask is not None and mask.ndim != 2:
                raise ValueError(f"{name} must be a 0/1 (batch, key_tokens) mask, got shape {mask.shape}")

        sample = sample.astype(self.dtype)
        if encoder_hidden_states is not None:  # None is allowed where image_embeds replace it (Kandinsky 2.2)
            encoder_hidden_states = jnp.asarray(encoder_hidden_states).astype(self.dtype)
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0

        sample, emb, encoder_hidden_states = self._conditioning(
            sample, timestep, encoder_hidden_states, class_labels, timestep_cond, added_cond_kwargs)
        context = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                       encoder_attention_mask=encoder_attention_mask)

        sample = conv2d(cfg.block_out_channels[0], cfg.conv_in_kernel, padding=(cfg.conv_in_kernel - 1) // 2,
                        dtype=self.dtype, name="conv_in")(sample)

        # down
        skips: tuple[jax.Array, ...] = (sample,)
        for i, level in enumerate(self._level_settings(up=False)):
            sample, res = self._down_block(i, level)(sample, emb, **context)
            skips += res
        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"down_block_additional_residuals has {len(down_block_additional_residuals)} entries, "
                                 f"the UNet has {len(skips)} skip states")
            skips = tuple(s + r.astype(self.dtype) for s, r in zip(skips, down_block_additional_residuals))

        # mid
        mid = self._mid_block(self._transformer_layers()[0][-1])
        if mid is not None:
            sample = mid(sample, emb, **context)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual.astype(self.dtype)

        # up: an odd-sized input makes the nearest upsamplers target the skip state's size
        factor = 2 ** (cfg.num_levels - 1)
        forward_upsample_size = any(d % factor for d in skips[0].shape[1:3])
        for i, level in enumerate(self._level_settings(up=True)):
            n = level["layers"]
            res, skips = skips[-n:], skips[:-n]
            upsample_size = tuple(skips[-1].shape[1:3]) if forward_upsample_size and i < cfg.num_levels - 1 else None
            sample = self._up_block(i, level)(sample, res, emb, upsample_size=upsample_size, **context)

        sample = group_norm(cfg.norm_num_groups, cfg.norm_eps, self.dtype, "conv_norm_out")(sample)
        sample = get_activation(cfg.act_fn)(sample)
        sample = conv2d(cfg.out_channels, cfg.conv_out_kernel, padding=(cfg.conv_out_kernel - 1) // 2,
                        dtype=self.dtype, name="conv_out")(sample)
        return UNet2DConditionOutput(sample=sample)
