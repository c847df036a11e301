"""diffusers' ``AutoencoderKL`` (the KL-regularised VAE of latent diffusion) in Flax, channels last.

``encode(x)`` maps images (B, H, W, in_channels) in [-1, 1] to ``AutoencoderKLOutput(latent_dist)``,
a diagonal Gaussian over latents (B, H/f, W/f, latent_channels) with f = 2 ** (len(block_out_channels) - 1);
``decode(z)`` maps latents back to ``DecoderOutput(sample=(B, H, W, out_channels))``. Pipelines scale
latents by ``config.scaling_factor`` (``latents / scaling_factor`` before ``decode``).
Module names mirror diffusers' (``encoder.down_blocks.0.resnets.1.conv1``), so diffusers' safetensors
convert with the default key rule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.modeling import ModelConfig, PretrainedModel
# The encoder, decoder and their blocks are shared with VQModel; re-exported here (their old home).
from jaxgen.nn.autoencoder_blocks import (
    Decoder, DecoderOutput, DownEncoderBlock2D, Encoder, UNetMidBlock2D, UpDecoderBlock2D, VAEAttention,
)
from jaxgen.nn.resnet import conv2d, get_activation

__all__ = [
    "AutoencoderKLConfig", "AutoencoderKL", "AutoencoderKLOutput", "DecoderOutput", "DiagonalGaussianDistribution",
    "Encoder", "Decoder", "UNetMidBlock2D", "DownEncoderBlock2D", "UpDecoderBlock2D", "VAEAttention",
    "tiled_decode", "tile_sizes",
]

# The shared Encoder/Decoder also build the attention variants (VQModel uses them); AutoencoderKL's
# configs are held to the plain blocks, the only ones its checkpoints use and its tests cover.
_DOWN_BLOCKS = ("DownEncoderBlock2D",)
_UP_BLOCKS = ("UpDecoderBlock2D",)


def _check_block_types(field: str, types: tuple[str, ...], supported: tuple[str, ...]) -> None:
    for t in types:
        if t not in supported:
            raise ValueError(f"{field}: block type {t!r} is not supported by jaxgen's AutoencoderKL (supported: {supported})")


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig(ModelConfig):
    """config.json of diffusers' ``AutoencoderKL`` (same keys and defaults)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        _check_block_types("down_block_types", self.down_block_types, _DOWN_BLOCKS)
        _check_block_types("up_block_types", self.up_block_types, _UP_BLOCKS)
        n = len(self.block_out_channels)
        for field in ("down_block_types", "up_block_types"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} has {len(getattr(self, field))} entries, block_out_channels has {n}")
        get_activation(self.act_fn)

    @classmethod
    def tiny(cls) -> "AutoencoderKLConfig":
        """A two-level VAE with 8/16 channels, for tests."""
        return cls(
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=16,
        )


@flax.struct.dataclass
class DiagonalGaussianDistribution:
    """The VAE posterior N(mean, exp(logvar)) from the encoder's moments (B, h, w, 2 * latent_channels).

    The channel axis (last) holds the mean then the log-variance; the log-variance is clamped to
    [-30, 20] as in diffusers. ``deterministic=True`` makes std and var zero.
    """

    parameters: jax.Array
    deterministic: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def mean(self) -> jax.Array:
        return jnp.split(self.parameters, 2, axis=-1)[0]

    @property
    def logvar(self) -> jax.Array:
        return jnp.clip(jnp.split(self.parameters, 2, axis=-1)[1], -30.0, 20.0)

    @property
    def std(self) -> jax.Array:
        return jnp.zeros_like(self.mean) if self.deterministic else jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.zeros_like(self.mean) if self.deterministic else jnp.exp(self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """A draw mean + std * eps with eps ~ N(0, I) from the ``jax.random`` key."""
        mean = self.mean
        return mean + self.std * jax.random.normal(key, mean.shape, mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> jax.Array:
        """KL(self || other), or KL(self || N(0, I)), summed over (h, w, c): shape (B,)."""
        if self.deterministic:
            return jnp.zeros((1,), self.parameters.dtype)
        if other is None:
            terms = jnp.square(self.mean) + self.var - 1.0 - self.logvar
        else:
            terms = (jnp.square(self.mean - other.mean) / other.var + self.var / other.var
                     - 1.0 - self.logvar + other.logvar)
        return 0.5 * jnp.sum(terms, axis=(1, 2, 3))

    def nll(self, sample: jax.Array, dims: tuple[int, ...] = (1, 2, 3)) -> jax.Array:
        """Negative log-likelihood of ``sample`` summed over ``dims``."""
        if self.deterministic:
            return jnp.zeros((1,), self.parameters.dtype)
        terms = np.log(2.0 * np.pi) + self.logvar + jnp.square(sample - self.mean) / self.var
        return 0.5 * jnp.sum(terms, axis=dims)


@flax.struct.dataclass
class AutoencoderKLOutput:
    """``encode``'s output: ``latent_dist``, the posterior over latents."""

    latent_dist: DiagonalGaussianDistribution


class AutoencoderKL(nn.Module, PretrainedModel):
    """diffusers' ``AutoencoderKL`` on NHWC arrays: ``encode``, ``decode`` and the forward ``__call__``.

    ``module.apply(v, x, method="encode")`` -> ``AutoencoderKLOutput(latent_dist)``;
    ``module.apply(v, z, method="decode")`` -> ``DecoderOutput(sample)``;
    ``module.apply(v, z, method="tiled_decode")``: the same in overlapping tiles (diffusers' tiling).
    """

    config: AutoencoderKLConfig
    dtype: Any = jnp.float32

    config_class: ClassVar[type[AutoencoderKLConfig]] = AutoencoderKLConfig

    def setup(self) -> None:
        c = self.config
        self.encoder = Encoder(
            out_channels=c.latent_channels, down_block_types=c.down_block_types,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups, act_fn=c.act_fn, double_z=True,
            mid_block_add_attention=c.mid_block_add_attention, dtype=self.dtype,
        )
        self.decoder = Decoder(
            out_channels=c.out_channels, up_block_types=c.up_block_types, block_out_channels=c.block_out_channels,
            layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups, act_fn=c.act_fn,
            mid_block_add_attention=c.mid_block_add_attention, dtype=self.dtype,
        )
        self.quant_conv = conv2d(2 * c.latent_channels, 1, dtype=self.dtype) if c.use_quant_conv else None
        self.post_quant_conv = conv2d(c.latent_channels, 1, dtype=self.dtype) if c.use_post_quant_conv else None

    def encode(self, x: jax.Array) -> AutoencoderKLOutput:
        """Images (B, H, W, in_channels) -> ``AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution)``."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(moments))

    def decode(self, z: jax.Array) -> DecoderOutput:
        """Latents (B, h, w, latent_channels) -> ``DecoderOutput(sample=(B, h * f, w * f, out_channels))``."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return DecoderOutput(sample=self.decoder(z))

    def tiled_decode(self, z: jax.Array, tile_sample_min_size: int | None = None,
                     tile_latent_min_size: int | None = None, tile_overlap_factor: float = 0.25) -> DecoderOutput:
        """``decode`` in overlapping tiles, blended: diffusers' ``tiled_decode`` (see the function of that name)."""
        module = self.clone(parent=None)  # unbound: applied per tile under lax.map
        return tiled_decode(module, self.variables["params"], z, tile_sample_min_size=tile_sample_min_size,
                            tile_latent_min_size=tile_latent_min_size, tile_overlap_factor=tile_overlap_factor)

    def __call__(self, sample: jax.Array, sample_posterior: bool = False, rng: jax.Array | None = None) -> DecoderOutput:
        """Encode then decode: the posterior's mode, or a draw with ``rng`` (default: the "sample" rng stream)."""
        posterior = self.encode(sample).latent_dist
        if sample_posterior:
            z = posterior.sample(rng if rng is not None else self.make_rng("sample"))
        else:
            z = posterior.mode()
        return self.decode(z)

    def init_args(self) -> tuple:
        # The smallest size that survives every stride-2 downsampling; param shapes do not depend on it.
        size = 2 ** (len(self.config.block_out_channels) - 1)
        return (jnp.zeros((1, size, size, self.config.in_channels), self.dtype),)


# --------------------------------------------------------------------------- tiled decoding


def tile_sizes(config: AutoencoderKLConfig) -> tuple[int, int]:
    """diffusers' default tile sizes: (tile_sample_min_size, tile_latent_min_size) = (sample_size,
    sample_size / 2 ** (levels - 1)); the first entry of a (height, width) ``sample_size``."""
    size = config.sample_size[0] if isinstance(config.sample_size, (tuple, list)) else config.sample_size
    return int(size), int(size / 2 ** (len(config.block_out_channels) - 1))


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """The first ``extent`` rows (axis 1) or columns (axis 2) of ``b`` faded in from the last ones of
    ``a``: a * (1 - k / extent) + b * (k / extent), diffusers' ``blend_v`` / ``blend_h``."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent == 0:
        return b
    shape = [1] * b.ndim
    shape[axis] = extent
    k = np.arange(extent) / extent  # float64, as Python computes diffusers' weights, then float32
    w_a, w_b = (jnp.asarray(w.astype(np.float32).reshape(shape)) for w in (1 - k, k))
    tail = jax.lax.slice_in_dim(a, a.shape[axis] - extent, a.shape[axis], axis=axis)
    head = jax.lax.slice_in_dim(b, 0, extent, axis=axis)
    blended = (tail * w_a + head * w_b).astype(b.dtype)
    return jax.lax.dynamic_update_slice_in_dim(b, blended, 0, axis=axis)


def tiled_decode(
    module: AutoencoderKL,
    params: Any,
    z: jax.Array,
    *,
    tile_sample_min_size: int | None = None,
    tile_latent_min_size: int | None = None,
    tile_overlap_factor: float = 0.25,
) -> DecoderOutput:
    """Latents (B, h, w, C) -> ``DecoderOutput(sample=(B, h * f, w * f, out_channels))``, decoded in
    overlapping tiles and blended linearly: diffusers' ``AutoencoderKL.tiled_decode``, value for value.

    Tiles of ``tile_latent_min_size`` latents start every ``tile_latent_min_size * (1 -
    tile_overlap_factor)``; each decoded tile is faded over ``tile_sample_min_size *
    tile_overlap_factor`` pixels into the (already blended) tiles above and to its left, then cropped
    to ``tile_sample_min_size - blend`` pixels. Sizes default to ``tile_sizes(module.config)``.
    Memory holds one tile's activations: the tiles of each shape are decoded one after another
    (``lax.map``), so attention in the mid block stays (tile size)^2 instead of (h * w)^2. Works
    under ``jit`` (shapes are static).
    """
    sample_default, latent_default = tile_sizes(module.config)
    sample_tile = tile_sample_min_size or sample_default
    latent_tile = tile_latent_min_size or latent_default
    overlap = int(latent_tile * (1 - tile_overlap_factor))
    blend_extent = int(sample_tile * tile_overlap_factor)
    row_limit = sample_tile - blend_extent
    if overlap < 1:
        raise ValueError(f"tile_latent_min_size={latent_tile} with tile_overlap_factor={tile_overlap_factor} leaves no stride")
    height, width = z.shape[1], z.shape[2]
    starts_h, starts_w = range(0, height, overlap), range(0, width, overlap)
    # tiles grouped by shape (full tiles, and the smaller ones at the bottom and right edges)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i in starts_h:
        for j in starts_w:
            shape = (min(latent_tile, height - i), min(latent_tile, width - j))
            groups.setdefault(shape, []).append((i, j))

    def decode_one(tile: jax.Array) -> jax.Array:
        return module.apply({"params": params}, tile, method="decode").sample

    decoded: dict[tuple[int, int], jax.Array] = {}
    for (th, tw), positions in groups.items():
        tiles = jnp.stack([z[:, i : i + th, j : j + tw] for i, j in positions])
        out = jax.lax.map(decode_one, tiles)
        decoded.update({pos: out[k] for k, pos in enumerate(positions)})

    rows = []
    for i in starts_h:
        row = []
        for j in starts_w:
            tile = decoded[(i, j)]
            # in place in diffusers: the neighbours read here are already blended
            if i > 0:
                tile = _blend(decoded[(i - overlap, j)], tile, blend_extent, axis=1)
            if j > 0:
                tile = _blend(decoded[(i, j - overlap)], tile, blend_extent, axis=2)
            decoded[(i, j)] = tile
            row.append(tile[:, :row_limit, :row_limit])
        rows.append(jnp.concatenate(row, axis=2))
    return DecoderOutput(sample=jnp.concatenate(rows, axis=1))
