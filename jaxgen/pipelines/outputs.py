"""The pipelines' output classes, with diffusers' names and fields.

An output indexes like a tuple (``out[0]`` is ``images``), as diffusers' ``BaseOutput``, and
``to_tuple()`` is what ``return_dict=False`` returns. ``from_checked(images, nsfw, watermark)``
builds one from the shared decode -> safety check -> postprocess path of ``DiffusionPipeline``,
keeping the fields the class has.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "BaseOutput", "ImagePipelineOutput", "IFPipelineOutput", "ImageTextPipelineOutput", "StableDiffusionPipelineOutput",
]


@dataclasses.dataclass
class BaseOutput:
    """Base of the output dataclasses: tuple-like indexing and ``to_tuple()`` (no copies)."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def __getitem__(self, index: int) -> Any:
        return self.to_tuple()[index]

    @classmethod
    def from_checked(cls, images: Any, nsfw: list[bool] | None, watermark: list[bool] | None) -> "BaseOutput":
        """The output for ``images`` and the safety checker's flags (None without a checker)."""
        return cls(images)


@dataclasses.dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: a list of PIL images, a float32 NHWC numpy array in [0, 1], or latents (NHWC)."""

    images: Any


@dataclasses.dataclass
class IFPipelineOutput(BaseOutput):
    """diffusers' ``IFPipelineOutput``: ``images`` (PIL list, float32 NHWC numpy in [0, 1], or the raw
    NHWC images for ``output_type="latent"``), ``nsfw_detected`` and ``watermark_detected`` (lists of
    bools, None without a safety checker or for "latent")."""

    images: Any
    nsfw_detected: list[bool] | None
    watermark_detected: list[bool] | None

    @classmethod
    def from_checked(cls, images: Any, nsfw: list[bool] | None, watermark: list[bool] | None) -> "IFPipelineOutput":
        return cls(images, nsfw, watermark)


@dataclasses.dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """``images`` (list of PIL images, float32 NHWC numpy in [0, 1], or NHWC latents) and
    ``nsfw_content_detected`` (one bool per image, None without a safety checker), as diffusers."""

    images: Any
    nsfw_content_detected: list[bool] | None

    @classmethod
    def from_checked(cls, images: Any, nsfw: list[bool] | None, watermark: list[bool] | None) -> "StableDiffusionPipelineOutput":
        return cls(images, nsfw)


@dataclasses.dataclass
class ImageTextPipelineOutput(BaseOutput):
    """diffusers' ``ImageTextPipelineOutput`` (UniDiffuser): ``images`` (PIL list, float32 NHWC numpy in [0, 1],
    or NHWC latents; None when no image was generated) and ``text`` (one string per sample; None when no text
    was generated)."""

    images: Any
    text: list[str] | None = None

    @classmethod
    def from_checked(cls, images: Any, nsfw: list[bool] | None, watermark: list[bool] | None) -> "ImageTextPipelineOutput":
        return cls(images, None)
