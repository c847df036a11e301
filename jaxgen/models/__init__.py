"""jaxgen's models, by their diffusers/transformers class names (text encoders live in jaxgen.text)."""

from jaxgen.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussianDistribution
from jaxgen.models.pixart_transformer import PixArtTransformer2DModel, PixArtTransformer2DModelConfig
from jaxgen.models.safety_checker import IFSafetyChecker
from jaxgen.models.unet_2d_condition import UNet2DConditionModel, UNet2DConditionModelConfig
from jaxgen.models.watermark import IFWatermarker
from jaxgen.text import (
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection,
    T5Config, T5EncoderModel,
)

__all__ = [
    "AutoencoderKL", "AutoencoderKLConfig", "DiagonalGaussianDistribution",
    "PixArtTransformer2DModel", "PixArtTransformer2DModelConfig",
    "IFSafetyChecker", "IFWatermarker", "UNet2DConditionModel", "UNet2DConditionModelConfig",
    "CLIPTextConfig", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionConfig",
    "CLIPVisionModelWithProjection", "T5Config", "T5EncoderModel",
]
