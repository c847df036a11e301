"""diffusers' ``VQModel`` (the vector-quantized autoencoder; MoVQ in Kandinsky 2.x / 3) in Flax, channels last.

``encode(x)`` maps images (B, H, W, in_channels) to ``VQEncoderOutput(latents=(B, H/f, W/f, vq_embed_dim))``,
f = ``config.scale_factor`` = 2 ** (len(block_out_channels) - 1): the encoder's output after
``quant_conv``, not yet quantized (as diffusers). ``decode(h)`` snaps each latent vector to its
nearest codebook entry (``force_not_quantize=False``) or takes it as it is (``True``, what the
Kandinsky pipelines do), then ``post_quant_conv`` and the decoder give
``DecoderOutput(sample=(B, H, W, out_channels), commit_loss)``. With ``norm_type="spatial"`` (MoVQ)
every norm of the decoder is a ``SpatialNorm`` conditioned on the quantized latents.

The encoder and decoder are the ones ``AutoencoderKL`` uses (``jaxgen.nn.autoencoder_blocks``);
module names mirror diffusers' (``quantize.embedding`` is the (num_vq_embeddings, vq_embed_dim)
codebook), so diffusers' safetensors convert with the default key rule (``convert/vq_model.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxgen.modeling import ModelConfig, PretrainedModel
from jaxgen.nn.autoencoder_blocks import (
    DECODER_BLOCKS, ENCODER_BLOCKS, NORM_TYPES, Decoder, DecoderOutput, Encoder, attention_flags,
)
from jaxgen.nn.resnet import SpatialNorm, conv2d, get_activation

__all__ = ["VQModelConfig", "VQModel", "VQEncoderOutput", "VectorQuantizer", "QuantizerOutput", "DecoderOutput"]


@dataclasses.dataclass(frozen=True)
class VQModelConfig(ModelConfig):
    """config.json of diffusers' ``VQModel`` (same keys and defaults); unsupported values raise ValueError."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int | tuple[int, ...] = 32
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False

    def __post_init__(self) -> None:
        attention_flags("down_block_types", self.down_block_types, ENCODER_BLOCKS)
        attention_flags("up_block_types", self.up_block_types, DECODER_BLOCKS)
        n = len(self.block_out_channels)
        if n == 0:
            raise ValueError("block_out_channels: at least one level is needed")
        for field in ("down_block_types", "up_block_types"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} has {len(getattr(self, field))} entries, block_out_channels has {n}")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type: {self.norm_type!r} is not supported (supported: {NORM_TYPES})")
        try:
            get_activation(self.act_fn)
        except ValueError as e:
            raise ValueError(f"act_fn: {e}") from None
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups: {self.norm_num_groups} does not divide block_out_channels "
                             f"{self.block_out_channels}")
        if self.num_vq_embeddings < 1:
            raise ValueError(f"num_vq_embeddings: must be positive, got {self.num_vq_embeddings}")
        if self.norm_type == "spatial":
            groups = SpatialNorm.num_groups  # fixed by diffusers, whatever norm_num_groups says
            if any(c % groups for c in self.block_out_channels):
                raise ValueError(f"block_out_channels: norm_type='spatial' needs multiples of {groups}, "
                                 f"got {self.block_out_channels}")
            # the decoder's spatial norms read the quantized latents with latent_channels inputs
            if self.embed_dim != self.latent_channels:
                raise ValueError(f"vq_embed_dim: norm_type='spatial' needs vq_embed_dim == latent_channels "
                                 f"({self.latent_channels}), got {self.vq_embed_dim}")

    @property
    def embed_dim(self) -> int:
        """Width of the codebook vectors: ``vq_embed_dim``, or ``latent_channels`` when unset."""
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels

    @property
    def scale_factor(self) -> int:
        """Pixels per latent pixel along each side: 2 ** (len(block_out_channels) - 1)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def tiny(cls, norm_type: str = "spatial") -> "VQModelConfig":
        """A two-level MoVQ-shaped model (attention in the deepest blocks, 32/64 channels), for tests."""
        return cls(
            down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
            up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4, vq_embed_dim=4,
            num_vq_embeddings=64, sample_size=16, norm_type=norm_type,
        )


@flax.struct.dataclass
class VQEncoderOutput:
    """``encode``'s output: ``latents`` (B, h, w, vq_embed_dim), after ``quant_conv`` and before quantization."""

    latents: jax.Array


@flax.struct.dataclass
class QuantizerOutput:
    """The vector quantizer's output: ``quant`` (B, h, w, D) codebook vectors (straight-through:
    their gradient flows to the input), ``commit_loss`` (scalar), ``indices`` (B, h, w) int32 codes."""

    quant: jax.Array
    commit_loss: jax.Array
    indices: jax.Array


class VectorQuantizer(nn.Module):
    """diffusers' ``VectorQuantizer`` (legacy loss, no index remapping): nearest codebook vector per position.

    The codebook is ``embedding`` (num_embeddings, embed_dim). Call: latents (B, h, w, embed_dim) ->
    ``QuantizerOutput``. Distances are taken in float32 (the argmin is torch.cdist's; ties go to the
    lowest index, as torch.argmin).
    """

    num_embeddings: int
    embed_dim: int
    beta: float = 0.25
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.embedding = nn.Embed(self.num_embeddings, self.embed_dim, dtype=self.dtype)

    def __call__(self, z: jax.Array) -> QuantizerOutput:
        codebook = self.embedding.embedding.astype(jnp.float32)
        flat = z.reshape(-1, self.embed_dim).astype(jnp.float32)
        # |z - e|^2 less the per-row constant |z|^2: the same argmin, without a (rows, codes, D) array
        cross = jnp.dot(flat, codebook.T, precision=jax.lax.Precision.HIGHEST)
        indices = jnp.argmin(jnp.sum(jnp.square(codebook), axis=-1)[None, :] - 2.0 * cross, axis=-1)
        z_q = self.get_codebook_entry(indices, z.shape).astype(z.dtype)
        sg = jax.lax.stop_gradient
        # diffusers' legacy weighting: beta on the codebook term
        loss = (jnp.mean(jnp.square(sg(z_q).astype(jnp.float32) - z.astype(jnp.float32)))
                + self.beta * jnp.mean(jnp.square(z_q.astype(jnp.float32) - sg(z).astype(jnp.float32))))
        quant = z + sg(z_q - z)  # straight-through estimator, computed as diffusers does
        return QuantizerOutput(quant=quant, commit_loss=loss, indices=indices.reshape(z.shape[:-1]).astype(jnp.int32))

    def get_codebook_entry(self, indices: jax.Array, shape: tuple[int, ...] | None = None) -> jax.Array:
        """Codebook vectors for integer ``indices`` (any shape) -> (*indices.shape, D), or reshaped to
        ``shape`` = (B, h, w, D) (NHWC, the layout diffusers' ``shape`` argument already has)."""
        z_q = self.embedding(indices.astype(jnp.int32))
        return z_q.reshape(shape) if shape is not None else z_q


class VQModel(nn.Module, PretrainedModel):
    """diffusers' ``VQModel`` on NHWC arrays: ``encode``, ``decode``, ``quantize_latents`` and the forward.

    ``module.apply({"params": p}, x, method=VQModel.encode)`` -> ``VQEncoderOutput(latents)``;
    ``module.apply({"params": p}, z, force_not_quantize=True, method=VQModel.decode)`` -> ``DecoderOutput``;
    ``module.apply({"params": p}, z, method=VQModel.quantize_latents)`` -> ``QuantizerOutput`` (indices).
    """

    config: VQModelConfig
    dtype: Any = jnp.float32

    config_class: ClassVar[type[VQModelConfig]] = VQModelConfig
    # jaxgen.sharding: no partition rules, every param replicated (convolutions of at most 1024
    # channels, a few hundred MB at most: splitting them would cost more in collectives than it saves)
    param_axes: ClassVar[tuple] = ()

    def setup(self) -> None:
        c = self.config
        self.encoder = Encoder(
            out_channels=c.latent_channels, down_block_types=c.down_block_types,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups, act_fn=c.act_fn, double_z=False,
            mid_block_add_attention=c.mid_block_add_attention, dtype=self.dtype,
        )
        self.quant_conv = conv2d(c.embed_dim, 1, dtype=self.dtype)
        self.quantize = VectorQuantizer(c.num_vq_embeddings, c.embed_dim, beta=0.25, dtype=self.dtype)
        self.post_quant_conv = conv2d(c.latent_channels, 1, dtype=self.dtype)
        self.decoder = Decoder(
            out_channels=c.out_channels, up_block_types=c.up_block_types, block_out_channels=c.block_out_channels,
            layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups, act_fn=c.act_fn,
            norm_type=c.norm_type, mid_block_add_attention=c.mid_block_add_attention, dtype=self.dtype,
        )

    def encode(self, x: jax.Array, return_dict: bool = True) -> VQEncoderOutput | tuple[jax.Array]:
        """Images (B, H, W, in_channels) -> ``VQEncoderOutput(latents=(B, H/f, W/f, vq_embed_dim))``, unquantized;
        ``(latents,)`` with ``return_dict=False``."""
        h = self.quant_conv(self.encoder(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    def quantize_latents(self, h: jax.Array) -> QuantizerOutput:
        """Latents (B, h, w, vq_embed_dim) -> their nearest codebook vectors, the commit loss and the indices."""
        return self.quantize(h)

    def get_codebook_entry(self, indices: jax.Array, shape: tuple[int, ...] | None = None) -> jax.Array:
        """Codebook vectors of integer ``indices``, reshaped to ``shape`` (B, h, w, vq_embed_dim) when given."""
        return self.quantize.get_codebook_entry(indices, shape)

    def decode(self, h: jax.Array, force_not_quantize: bool = False, return_dict: bool = True,
               shape: tuple[int, ...] | None = None) -> DecoderOutput | tuple[jax.Array, jax.Array]:
        """Latents (B, h, w, vq_embed_dim) -> ``DecoderOutput(sample=(B, h * f, w * f, out_channels), commit_loss)``.

        ``force_not_quantize=False`` first snaps each latent vector to its nearest codebook vector
        (``commit_loss`` a scalar); ``True`` decodes ``h`` as it is (``commit_loss`` zeros (B,)),
        or, with ``config.lookup_from_codebook``, reads ``h`` as integer codes looked up and
        reshaped to ``shape`` (B, h, w, vq_embed_dim). With ``norm_type="spatial"`` the decoder's
        norms are conditioned on those (quantized) latents. ``return_dict=False``: ``(sample, commit_loss)``.
        """
        if not force_not_quantize:
            out = self.quantize(h)
            quant, commit_loss = out.quant, out.commit_loss
        else:
            quant = self.quantize.get_codebook_entry(h, shape) if self.config.lookup_from_codebook else h
            commit_loss = jnp.zeros((quant.shape[0],), quant.dtype)
        dec = self.decoder(self.post_quant_conv(quant), quant if self.config.norm_type == "spatial" else None)
        return DecoderOutput(sample=dec, commit_loss=commit_loss) if return_dict else (dec, commit_loss)

    def __call__(self, sample: jax.Array, return_dict: bool = True) -> DecoderOutput | tuple[jax.Array, jax.Array]:
        """Encode, then decode with quantization (diffusers' forward): images (B, H, W, in_channels) ->
        ``DecoderOutput(sample=(B, H, W, out_channels), commit_loss)``, or the tuple with ``return_dict=False``."""
        dec = self.decode(self.encode(sample).latents)
        return dec if return_dict else (dec.sample, dec.commit_loss)

    def init_args(self) -> tuple:
        # The smallest size that survives every stride-2 downsampling; param shapes do not depend on it.
        size = self.config.scale_factor
        return (jnp.zeros((1, size, size, self.config.in_channels), self.dtype),)
