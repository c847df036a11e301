"""Flax text encoders (transformers' names and outputs) and prompt encoding (`tokenize`, `encode`)."""

from jaxgen.text.clip import (
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection,
)
from jaxgen.text.encoding import encode, tokenize
from jaxgen.text.multilingual_clip import MultilingualCLIP, MultilingualCLIPConfig, MultilingualCLIPOutput
from jaxgen.text.t5 import T5Config, T5EncoderModel

__all__ = [
    "CLIPTextConfig", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionConfig",
    "CLIPVisionModelWithProjection",
    "MultilingualCLIP", "MultilingualCLIPConfig", "MultilingualCLIPOutput",
    "T5Config", "T5EncoderModel",
    "encode", "tokenize",
]
