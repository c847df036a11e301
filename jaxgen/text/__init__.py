"""Flax text encoders (transformers' names and outputs)."""

from jaxgen.text.clip import (
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection,
)
from jaxgen.text.t5 import T5Config, T5EncoderModel

__all__ = [
    "CLIPTextConfig", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionConfig",
    "CLIPVisionModelWithProjection",
    "T5Config", "T5EncoderModel",
]
