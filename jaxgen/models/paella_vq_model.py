"""diffusers' ``PaellaVQModel`` (Würstchen's stage A) in Flax, channels last.

A small VQ-GAN: ``encode`` turns images (B, H, W, 3) into latents (B, H/4, W/4, 4) (with the default two
levels: a 2x pixel unshuffle, then one stride-2 convolution), normalized by a BatchNorm in inference mode;
``decode`` maps latents back to images, optionally snapping each latent vector to its codebook entry
first (``force_not_quantize=False``; Würstchen's decoder pipeline decodes without). Blocks (names as in
diffusers, so the default key rule maps them):

* ``MixingResidualBlock``: LayerNorm (no affine) -> depthwise 3x3 convolution on edge-padded input, and
  LayerNorm -> channelwise MLP (4x, GELU), each scaled and shifted by six learned ``gammas``;
* ``in_block``: pixel unshuffle then a 1x1 convolution; ``out_block``: a 1x1 convolution then pixel shuffle;
* the up path widens back with 4x4 stride-2 transposed convolutions (``jaxgen.nn.resnet.ConvTranspose``).

``PaellaVQModel.from_pretrained(folder, subfolder="vqgan")`` returns ``(module, params)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.models.vq_model import VectorQuantizer, VQEncoderOutput
from jaxgen.nn.autoencoder_blocks import DecoderOutput
from jaxgen.nn.linear import Dense
from jaxgen.nn.resnet import ConvTranspose, DepthwiseConv2d, conv2d
from jaxgen.nn.transformer import layer_norm

__all__ = [
    "PaellaVQModelConfig", "PaellaVQModel", "MixingResidualBlock", "BatchNormInference",
    "pixel_shuffle", "pixel_unshuffle",
]


@dataclasses.dataclass(frozen=True)
class PaellaVQModelConfig(ModelConfig):
    """config.json of diffusers' ``PaellaVQModel`` (same keys and defaults: the released stage A)."""

    in_channels: int = 3
    out_channels: int = 3
    up_down_scale_factor: int = 2
    levels: int = 2
    bottleneck_blocks: int = 12
    embed_dim: int = 384
    latent_channels: int = 4
    num_vq_embeddings: int = 8192
    scale_factor: float = 0.3764

    def __post_init__(self) -> None:
        for name in ("levels", "up_down_scale_factor", "bottleneck_blocks", "embed_dim", "latent_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"PaellaVQModel {name}={getattr(self, name)}: must be positive")
        if self.embed_dim % 2 ** (self.levels - 1):
            raise ValueError(f"PaellaVQModel embed_dim={self.embed_dim} must halve {self.levels - 1} times")

    @property
    def channels(self) -> list[int]:
        """Width per level, narrowest (the image side) first: ``embed_dim // 2**i`` reversed."""
        return [self.embed_dim // 2**i for i in reversed(range(self.levels))]

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel: the unshuffle's factor times 2 per extra level (4 for the released model)."""
        return self.up_down_scale_factor * 2 ** (self.levels - 1)

    @classmethod
    def tiny(cls, **overrides: Any) -> "PaellaVQModelConfig":
        """Two levels 8 and 16 wide, 2 bottleneck blocks, 32 codes: for tests."""
        return cls(**{**dict(embed_dim=16, bottleneck_blocks=2, num_vq_embeddings=32), **overrides})


def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
    """``torch.nn.PixelUnshuffle(r)`` on NHWC: (B, H, W, C) -> (B, H/r, W/r, C*r*r), channels ordered (c, i, j)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
    """``torch.nn.PixelShuffle(r)`` on NHWC: (B, H, W, C*r*r) -> (B, H*r, W*r, C), the inverse of ``pixel_unshuffle``."""
    b, h, w, crr = x.shape
    c = crr // (r * r)
    x = x.reshape(b, h, w, c, r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c)


class MixingResidualBlock(nn.Module):
    """Paella's residual block. Call: (B, H, W, C) -> (B, H, W, C).

    ``x + depthwise(norm(x) * (1 + g0) + g1) * g2``, then ``x + channelwise(norm(x) * (1 + g3) + g4) * g5``:
    the depthwise 3x3 convolution pads by replicating the edge (``ReplicationPad2d(1)``), the channelwise MLP
    is Linear(C, 4C) -> GELU -> Linear(4C, C)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        gammas = self.param("gammas", nn.initializers.zeros_init(), (6,)).astype(x.dtype)
        h = layer_norm(1e-6, False, self.dtype, name="norm1")(x) * (1 + gammas[0]) + gammas[1]
        h = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        h = DepthwiseConv2d(3, 0, self.dtype, name="depthwise.1")(h)
        x = x + h * gammas[2]
        h = layer_norm(1e-6, False, self.dtype, name="norm2")(x) * (1 + gammas[3]) + gammas[4]
        h = Dense(4 * c, dtype=self.dtype, name="channelwise.0")(h)
        h = Dense(c, dtype=self.dtype, name="channelwise.2")(jax.nn.gelu(h, approximate=False))
        return x + h * gammas[5]


class BatchNormInference(nn.Module):
    """``torch.nn.BatchNorm2d`` in eval mode: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``,
    the statistics stored as params (``scale`` is torch's ``weight``). Call: (B, H, W, C) -> (B, H, W, C)."""

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        stats = {name: self.param(name, init, (c,)) for name, init in (
            ("scale", nn.initializers.ones_init()), ("bias", nn.initializers.zeros_init()),
            ("running_mean", nn.initializers.zeros_init()), ("running_var", nn.initializers.ones_init()))}
        f32 = {k: v.astype(jnp.float32) for k, v in stats.items()}
        y = (x.astype(jnp.float32) - f32["running_mean"]) * jax.lax.rsqrt(f32["running_var"] + self.eps)
        return (y * f32["scale"] + f32["bias"]).astype(self.dtype)


class PaellaVQModel(nn.Module, PretrainedModel):
    """diffusers' ``PaellaVQModel`` on NHWC arrays.

    ``module.apply(v, x, method="encode")`` -> ``VQEncoderOutput(latents=(B, H/f, W/f, latent_channels))``
    (f = ``config.downscale``); ``module.apply(v, z, method="decode")`` (``force_not_quantize=True`` by
    default, as diffusers) -> ``DecoderOutput(sample=(B, H, W, out_channels))``; the forward is encode then
    decode. H and W must be multiples of f.
    """

    config: PaellaVQModelConfig
    dtype: Any = jnp.float32

    config_class: ClassVar[type[PaellaVQModelConfig]] = PaellaVQModelConfig
    param_axes: ClassVar[tuple] = ()  # 18M parameters: replicated

    def setup(self) -> None:
        cfg, dtype = self.config, self.dtype
        widths, levels = cfg.channels, cfg.levels
        self.in_conv = conv2d(widths[0], 1, dtype=dtype, name="in_block.1")
        down: list[nn.Module] = []
        for i in range(levels):
            if i > 0:
                down.append(conv2d(widths[i], 4, stride=2, padding=1, dtype=dtype, name=f"down_blocks.{len(down)}"))
            down.append(MixingResidualBlock(dtype, name=f"down_blocks.{len(down)}"))
        self.down = down
        self.to_latents = conv2d(cfg.latent_channels, 1, use_bias=False, dtype=dtype, name=f"down_blocks.{len(down)}.0")
        self.latent_norm = BatchNormInference(dtype=dtype, name=f"down_blocks.{len(down)}.1")
        self.vquantizer = VectorQuantizer(cfg.num_vq_embeddings, cfg.latent_channels, dtype=dtype)
        self.from_latents = conv2d(widths[-1], 1, dtype=dtype, name="up_blocks.0.0")
        up: list[nn.Module] = []
        for i in range(levels):
            for _ in range(cfg.bottleneck_blocks if i == 0 else 1):
                up.append(MixingResidualBlock(dtype, name=f"up_blocks.{len(up) + 1}"))
            if i < levels - 1:
                up.append(ConvTranspose(widths[levels - 2 - i], 4, 2, 1, dtype, name=f"up_blocks.{len(up) + 1}"))
        self.up = up
        self.out_conv = conv2d(cfg.out_channels * cfg.up_down_scale_factor**2, 1, dtype=dtype, name="out_block.0")

    def encode(self, x: jax.Array, return_dict: bool = True) -> VQEncoderOutput | tuple[jax.Array]:
        """Images (B, H, W, in_channels) in [-1, 1] -> ``VQEncoderOutput(latents=(B, H/f, W/f, latent_channels))``
        (normalized by the BatchNorm, not quantized); ``(latents,)`` with ``return_dict=False``."""
        f = self.config.downscale
        if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"PaellaVQModel.encode takes NHWC images whose sides are multiples of {f}, got {x.shape}")
        h = self.in_conv(pixel_unshuffle(x.astype(self.dtype), self.config.up_down_scale_factor))
        for block in self.down:
            h = block(h)
        h = self.latent_norm(self.to_latents(h))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def decode(self, h: jax.Array, force_not_quantize: bool = True,
               return_dict: bool = True) -> DecoderOutput | tuple[jax.Array]:
        """Latents (B, h, w, latent_channels) -> ``DecoderOutput(sample=(B, h*f, w*f, out_channels))``; with
        ``force_not_quantize=False`` each latent vector is first replaced by its nearest codebook vector."""
        quant = h if force_not_quantize else self.vquantizer(h).quant
        x = self.from_latents(quant.astype(self.dtype))
        for block in self.up:
            x = block(x)
        dec = pixel_shuffle(self.out_conv(x), self.config.up_down_scale_factor)
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    def __call__(self, sample: jax.Array, return_dict: bool = True) -> DecoderOutput | tuple[jax.Array]:
        """Encode then decode (not quantized, as diffusers' forward): (B, H, W, 3) -> ``DecoderOutput``."""
        dec = self.decode(self.encode(sample).latents).sample
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    def init_args(self) -> tuple:
        f = self.config.downscale
        return (jnp.zeros((1, f, f, self.config.in_channels), self.dtype),)

    def init_params(self, rng: jax.Array | None = None) -> Any:
        """Random params, the codebook included (the forward never quantizes, so ``init`` goes through
        ``_every_param``)."""
        rng = jax.random.key(0) if rng is None else rng
        return self.init(rng, *self.init_args(), method=PaellaVQModel._every_param)["params"]

    def _every_param(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x).latents, force_not_quantize=False).sample

    def transposed_conv_names(self) -> list[str]:
        """The names of the up path's ``ConvTranspose`` modules (``up_blocks.N``), for the key map."""
        cfg, names, index = self.config, [], 0
        for i in range(cfg.levels):
            index += cfg.bottleneck_blocks if i == 0 else 1
            if i < cfg.levels - 1:
                index += 1
                names.append(f"up_blocks.{index}")
        return names
