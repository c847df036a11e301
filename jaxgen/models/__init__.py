"""jaxgen's models, by their diffusers/transformers class names (text encoders live in jaxgen.text)."""

from jaxgen.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussianDistribution
from jaxgen.models.pixart_transformer import PixArtTransformer2DModel, PixArtTransformer2DModelConfig
from jaxgen.text import T5Config, T5EncoderModel

__all__ = [
    "AutoencoderKL", "AutoencoderKLConfig", "DiagonalGaussianDistribution",
    "PixArtTransformer2DModel", "PixArtTransformer2DModelConfig",
    "T5Config", "T5EncoderModel",
]
