"""diffusers' ``diffusers.utils`` helpers that notebooks and scripts use around a pipeline: ``make_image_grid`` and
``load_image`` (local files; the Hub and URLs are not reached from here)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps

from jaxgen.image_processing import image_array, numpy_to_pil

__all__ = ["make_image_grid", "load_image"]


def make_image_grid(images: Sequence[Any], rows: int, cols: int, resize: int | None = None) -> PIL.Image.Image:
    """``rows`` x ``cols`` images (PIL, or arrays (H, W, 3) / (N, H, W, 3), uint8 or float in [0, 1]) pasted
    row by row into one RGB PIL image, each first resized to ``resize`` x ``resize`` if given; as diffusers'
    ``make_image_grid`` (a ValueError, not an assert, when the count is not rows x cols)."""
    pil = []
    for image in images:
        if isinstance(image, PIL.Image.Image):
            pil.append(image)
        else:
            pil.extend(numpy_to_pil(np.clip(image_array(image, "images"), 0.0, 1.0)))
    if len(pil) != rows * cols:
        raise ValueError(f"`images` has {len(pil)} images: expected rows x cols = {rows} x {cols} = {rows * cols}")
    if resize is not None:
        pil = [image.resize((resize, resize)) for image in pil]
    width, height = pil[0].size
    grid = PIL.Image.new("RGB", size=(cols * width, rows * height))
    for i, image in enumerate(pil):
        grid.paste(image, box=(i % cols * width, i // cols * height))
    return grid


def load_image(image: str | os.PathLike | PIL.Image.Image) -> PIL.Image.Image:
    """A local image file (or a PIL image) -> an RGB PIL image with its EXIF orientation applied, as diffusers'
    ``load_image`` returns it. URLs are refused: download the file first."""
    if isinstance(image, (str, os.PathLike)):
        if str(image).startswith(("http://", "https://")):
            raise ValueError(f"jaxgen.utils.load_image reads local files; download {image} first")
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image file {os.fspath(image)!r} does not exist")
        image = PIL.Image.open(image)
    elif not isinstance(image, PIL.Image.Image):
        raise TypeError(f"`image` must be a file path or a PIL image, got {type(image).__name__}")
    return PIL.ImageOps.exif_transpose(image).convert("RGB")
