"""diffusers' ``WuerstchenDiffNeXt`` (Würstchen's stage B, 1.1B parameters) in Flax, channels last.

It denoises stage A's latents (B, H, W, 4) (256 x 256 for a 1024 px image) given the noise ratio r in [0, 1] (B,),
stage C's image embeddings ``effnet`` (B, h, w, 16) (24 x 24) and, optionally, CLIP text hidden states ``clip``
(B, L, 1024). A U-Net over ``len(c_hidden)`` levels (``jaxgen.nn.wuerstchen_blocks``), names as in diffusers:

* ``embedding``: pixel unshuffle by ``patch_size``, a 1x1 convolution, a LayerNorm over channels;
* ``down_blocks.i``: (from level 1 on) LayerNorm + 2x2 stride-2 convolution (``down_blocks.i.0.1``), then
  ``blocks[i]`` repeats of ``level_config[i]``: ``C`` a ``ResBlock``, ``T`` a ``TimestepBlock`` on r's embedding,
  ``A`` an ``AttnBlock`` over the pixels and the mapped text;
* ``up_blocks.k`` (k = 0 the bottom level): the same blocks, then LayerNorm + 2x2 stride-2 transposed convolution;
  the first ``ResBlock`` of each level but the bottom one also takes the down path's output of that level;
* where ``inject_effnet[i]``, every ``ResBlock`` of level i also takes ``effnet`` resized to the level's size
  (torch's antialiased bicubic, ``jaxgen.image_processing.resize_bicubic_antialias``) and mapped by a 1x1
  convolution (``effnet_mappers.i`` down, ``effnet_mappers.{2L-1-i}`` up);
* ``clf``: LayerNorm, a 1x1 convolution to ``2 * c_out * patch_size**2`` channels, pixel shuffle.

The output is not the noise but a rescaled sample: with ``a, b`` the halves of ``clf``'s output and
``b' = sigmoid(b) * (1 - 2 eps) + eps`` (eps = 1e-3), ``(x - a) / b'``, as diffusers returns it.

``WuerstchenDiffNeXt.from_pretrained(folder, subfolder="decoder")`` returns ``(module, params)``;
``module.apply({"params": p}, x, r, effnet, clip)`` returns the (B, H, W, c_out) array.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.image_processing import resize_bicubic_antialias
from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.models.paella_vq_model import pixel_shuffle, pixel_unshuffle
from jaxgen.models.wuerstchen_prior import r_embedding
from jaxgen.nn.linear import Dense
from jaxgen.nn.resnet import ConvTranspose, conv2d
from jaxgen.nn.transformer import layer_norm
from jaxgen.nn.wuerstchen_blocks import WUERSTCHEN_PARAM_AXES, AttnBlock, ResBlock, TimestepBlock

__all__ = ["WuerstchenDiffNeXtConfig", "WuerstchenDiffNeXt"]

EffnetFeatures = Callable[[int, int, tuple[int, int]], "jax.Array | None"]
"""(level, mapper index, (height, width)) -> the mapped effnet conditioning at that size, None where not injected."""

EPS = 1e-3
"""diffusers' default ``eps`` of the output's denominator ``sigmoid(b) * (1 - 2 eps) + eps``."""


@dataclasses.dataclass(frozen=True)
class WuerstchenDiffNeXtConfig(ModelConfig):
    """config.json of diffusers' ``WuerstchenDiffNeXt`` (same keys and defaults: the released stage B).

    ``c_hidden``, ``nhead``, ``blocks``, ``level_config`` and ``inject_effnet`` have one entry per level, the
    full-resolution level first; ``level_config`` strings are made of ``C`` (ResBlock), ``T`` (TimestepBlock) and
    ``A`` (AttnBlock; ``nhead`` is unused at levels without one). ``dropout`` is training-only."""

    c_in: int = 4
    c_out: int = 4
    c_r: int = 64
    patch_size: int = 2
    c_cond: int = 1024
    c_hidden: tuple[int, ...] = (320, 640, 1280, 1280)
    nhead: tuple[int, ...] = (-1, 10, 20, 20)
    blocks: tuple[int, ...] = (4, 4, 14, 4)
    level_config: tuple[str, ...] = ("CT", "CTA", "CTA", "CTA")
    inject_effnet: tuple[bool, ...] = (False, True, True, True)
    effnet_embd: int = 16
    clip_embd: int = 1024
    kernel_size: int = 3
    dropout: float | tuple[float, ...] = 0.1

    def __post_init__(self) -> None:
        levels = len(self.c_hidden)
        if levels < 1:
            raise ValueError("WuerstchenDiffNeXt c_hidden must name at least one level")
        for name in ("nhead", "blocks", "level_config", "inject_effnet"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"WuerstchenDiffNeXt {name}={getattr(self, name)} needs one entry per level "
                                 f"({levels}, as c_hidden={self.c_hidden})")
        for name in ("c_in", "c_out", "patch_size", "c_cond", "effnet_embd", "clip_embd", "kernel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"WuerstchenDiffNeXt {name}={getattr(self, name)}: must be positive")
        if self.c_r < 4:
            raise ValueError(f"WuerstchenDiffNeXt c_r={self.c_r}: the ratio embedding needs at least 4 channels")
        for i, (c, heads, kinds) in enumerate(zip(self.c_hidden, self.nhead, self.level_config)):
            if set(kinds) - set("CTA"):
                raise ValueError(f"WuerstchenDiffNeXt level_config[{i}]={kinds!r}: blocks are C, T or A")
            if "A" in kinds and (heads < 1 or c % heads):
                raise ValueError(f"WuerstchenDiffNeXt level {i}: c_hidden={c} must split into nhead={heads} heads")

    @property
    def levels(self) -> int:
        """Number of resolution levels (``len(c_hidden)``)."""
        return len(self.c_hidden)

    @property
    def downscale(self) -> int:
        """What H and W of ``x`` must be multiples of: the unshuffle's factor times 2 per extra level."""
        return self.patch_size * 2 ** (self.levels - 1)

    @classmethod
    def tiny(cls, **overrides: Any) -> "WuerstchenDiffNeXtConfig":
        """Three levels 16, 32, 32 wide (attention at the two lower ones), effnet injected there: for tests."""
        return cls(**{**dict(c_hidden=(16, 32, 32), nhead=(-1, 2, 4), blocks=(1, 1, 2),
                             level_config=("CT", "CTA", "CTA"), inject_effnet=(False, True, True),
                             effnet_embd=16, clip_embd=24, c_cond=24, c_r=8), **overrides})


def _block(kind: str, cfg: WuerstchenDiffNeXtConfig, level: int, dtype: Any, name: str) -> nn.Module:
    """One ``level_config`` letter of ``level`` as its Flax block."""
    if kind == "C":
        return ResBlock(cfg.kernel_size, dtype, name=name)
    if kind == "T":
        return TimestepBlock(dtype, name=name)
    return AttnBlock(cfg.nhead[level], dtype=dtype, name=name)


class WuerstchenDiffNeXt(nn.Module, PretrainedModel):
    """diffusers' ``WuerstchenDiffNeXt``. Call: ``(x (B, H, W, c_in), r (B,) or a scalar, effnet (B, h, w,
    effnet_embd), clip (B, L, clip_embd) or None)`` -> (B, H, W, c_out) in the module's dtype. H and W must be
    multiples of ``config.downscale``; ``clip`` may be None only for a config without attention blocks (diffusers
    fails there too). diffusers' training-time ``x_cat`` and ``return_noise=False`` are not ported."""

    config: WuerstchenDiffNeXtConfig
    dtype: Any = jnp.float32

    config_class: ClassVar[type[WuerstchenDiffNeXtConfig]] = WuerstchenDiffNeXtConfig
    param_axes: ClassVar[tuple] = WUERSTCHEN_PARAM_AXES

    @nn.compact
    def __call__(self, x: jax.Array, r: jax.Array | float, effnet: jax.Array,
                 clip: jax.Array | None = None) -> jax.Array:
        cfg, dtype = self.config, self.dtype
        self._check_inputs(x, effnet, clip)
        r_embed = r_embedding(jnp.broadcast_to(jnp.reshape(jnp.asarray(r), (-1,)), (x.shape[0],)), cfg.c_r)
        cond = None
        if clip is not None:
            cond = Dense(cfg.c_cond, dtype=dtype, name="clip_mapper")(clip.astype(dtype))
            cond = layer_norm(1e-6, False, dtype, name="seq_norm")(cond)
        h = pixel_unshuffle(x.astype(dtype), cfg.patch_size)
        h = conv2d(cfg.c_hidden[0], 1, dtype=dtype, name="embedding.1")(h)
        h = layer_norm(1e-6, False, dtype, name="embedding.2")(h)
        resized: dict[int, jax.Array] = {}  # effnet at each level's size, shared by the down and up paths

        def effnet_features(level: int, mapper: int, size: tuple[int, int]) -> jax.Array | None:
            # made even at a level without ResBlocks (its result unused), as torch has the mapper's weights
            if not cfg.inject_effnet[level]:
                return None
            if level not in resized:  # diffusers resizes in float32, then casts to the model's dtype
                resized[level] = resize_bicubic_antialias(effnet.astype(jnp.float32), *size).astype(dtype)
            return conv2d(cfg.c_cond, 1, dtype=dtype, name=f"effnet_mappers.{mapper}")(resized[level])

        level_outputs = self._down(h, r_embed, cond, effnet_features)
        h = self._up(level_outputs, r_embed, cond, effnet_features)
        h = layer_norm(1e-6, False, dtype, name="clf.0")(h)
        out = conv2d(2 * cfg.c_out * cfg.patch_size**2, 1, dtype=dtype, name="clf.1")(h)
        a, b = jnp.split(pixel_shuffle(out, cfg.patch_size).astype(jnp.float32), 2, axis=-1)
        b = jax.nn.sigmoid(b) * (1 - 2 * EPS) + EPS  # keeps the division away from zero
        return ((x.astype(jnp.float32) - a) / b).astype(dtype)

    def _check_inputs(self, x: jax.Array, effnet: jax.Array, clip: jax.Array | None) -> None:
        """ValueErrors naming the argument, before anything is traced."""
        cfg, f = self.config, self.config.downscale
        if x.ndim != 4 or x.shape[-1] != cfg.c_in:
            raise ValueError(f"x must be NHWC with {cfg.c_in} channels, got shape {x.shape}")
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"x's height and width must be multiples of {f} (patch_size {cfg.patch_size} times "
                             f"2 per level below the first), got {x.shape[1]} x {x.shape[2]}")
        if effnet.ndim != 4 or effnet.shape[-1] != cfg.effnet_embd or effnet.shape[0] != x.shape[0]:
            raise ValueError(f"effnet must be NHWC (batch {x.shape[0]}, h, w, {cfg.effnet_embd}) image embeddings, "
                             f"got shape {effnet.shape}")
        if clip is None:
            if any("A" in kinds for kinds in cfg.level_config):
                raise ValueError("clip (text hidden states) is required: this config has attention blocks")
        elif clip.ndim != 3 or clip.shape[-1] != cfg.clip_embd or clip.shape[0] != x.shape[0]:
            raise ValueError(f"clip must be (batch {x.shape[0]}, tokens, {cfg.clip_embd}) text hidden states, "
                             f"got shape {clip.shape}")

    def _run_block(self, block: nn.Module, kind: str, h: jax.Array, skip: jax.Array | None, r_embed: jax.Array,
                   cond: jax.Array | None) -> jax.Array:
        if kind == "C":
            return block(h, skip)
        if kind == "T":
            return block(h, r_embed)
        return block(h, cond)

    def _down(self, h: jax.Array, r_embed: jax.Array, cond: jax.Array | None, effnet_features: EffnetFeatures) -> list[jax.Array]:
        """The down path: each level's output, the bottom level's first (diffusers' ``level_outputs``)."""
        cfg, dtype = self.config, self.dtype
        outputs: list[jax.Array] = []
        for i in range(cfg.levels):
            index = 0
            if i > 0:
                h = layer_norm(1e-6, False, dtype, name=f"down_blocks.{i}.0.0")(h)
                h = conv2d(cfg.c_hidden[i], 2, stride=2, dtype=dtype, name=f"down_blocks.{i}.0.1")(h)
                index = 1
            effnet_c = effnet_features(i, i, h.shape[1:3])  # once per level, from the level's size
            for kind in cfg.level_config[i] * cfg.blocks[i]:
                block = _block(kind, cfg, i, dtype, f"down_blocks.{i}.{index}")
                h = self._run_block(block, kind, h, effnet_c, r_embed, cond)
                index += 1
            outputs.insert(0, h)
        return outputs

    def _up(self, level_outputs: list[jax.Array], r_embed: jax.Array, cond: jax.Array | None,
            effnet_features: EffnetFeatures) -> jax.Array:
        """The up path from the bottom level's output; returns the full-resolution features (B, H/p, W/p, C0)."""
        cfg, dtype, levels = self.config, self.dtype, self.config.levels
        h = level_outputs[0]
        for k in range(levels):
            level = levels - 1 - k
            effnet_c = effnet_features(level, levels + k, h.shape[1:3])
            kinds = cfg.level_config[level] * cfg.blocks[level]
            for j, kind in enumerate(kinds):
                # diffusers: the level's skip goes only to block 0 (when it is a ResBlock), before the effnet features
                parts = [level_outputs[k]] if (j == 0 and k > 0) else []
                parts += [effnet_c] if effnet_c is not None else []
                skip = jnp.concatenate(parts, axis=-1) if parts else None
                block = _block(kind, cfg, level, dtype, f"up_blocks.{k}.{j}")
                h = self._run_block(block, kind, h, skip, r_embed, cond)
            if level > 0:
                h = layer_norm(1e-6, False, dtype, name=f"up_blocks.{k}.{len(kinds)}.0")(h)
                h = ConvTranspose(cfg.c_hidden[level - 1], 2, 2, dtype=dtype, name=f"up_blocks.{k}.{len(kinds)}.1")(h)
        return h

    def transposed_conv_names(self) -> list[str]:
        """The names of the up path's ``ConvTranspose`` modules (``up_blocks.k.N.1``), for the key map."""
        cfg = self.config
        return [f"up_blocks.{k}.{len(cfg.level_config[level]) * cfg.blocks[level]}.1"
                for k, level in enumerate(reversed(range(cfg.levels))) if level > 0]

    def init_args(self) -> tuple:
        cfg, f = self.config, self.config.downscale
        return (jnp.zeros((1, f, f, cfg.c_in), self.dtype), jnp.zeros((1,), jnp.float32),
                jnp.zeros((1, 2, 2, cfg.effnet_embd), self.dtype), jnp.zeros((1, 1, cfg.clip_embd), self.dtype))
