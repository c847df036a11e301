"""Flax text encoders (transformers' names and outputs)."""

from jaxgen.text.t5 import T5Config, T5EncoderModel

__all__ = ["T5Config", "T5EncoderModel"]
