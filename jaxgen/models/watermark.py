"""DeepFloyd IF's watermarker: diffusers' ``IFWatermarker``, post-processing of PIL images.

It pastes a small RGBA logo (the checkpoint's ``watermark_image`` buffer, 62x62x4 with values in
[0, 255]) into the bottom-right corner of each image, scaled with the image's area, through the
logo's alpha channel. Not a Flax model: numpy and PIL only.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import PIL.Image

from jaxgen import hub

__all__ = ["IFWatermarker"]


class IFWatermarker:
    """diffusers' ``IFWatermarker``: ``apply_watermark(images, sample_size=None)`` marks PIL images in place.

    ``IFWatermarker(watermark_image)`` takes the (h, w, 4) RGBA buffer (diffusers' default is zeros
    of (62, 62, 4), a fully transparent logo); ``from_pretrained`` reads it from a watermarker folder.
    """

    config_name = "config.json"

    def __init__(self, watermark_image: np.ndarray | None = None) -> None:
        if watermark_image is None:
            watermark_image = np.zeros((62, 62, 4), np.float32)
        watermark_image = np.asarray(watermark_image)
        if watermark_image.ndim != 3 or watermark_image.shape[-1] != 4:
            raise ValueError(f"watermark_image should be (height, width, 4) RGBA, got shape {watermark_image.shape}")
        self.watermark_image = watermark_image
        # as torch's ``.to(torch.uint8)`` on values in [0, 255]: truncation toward zero
        rgba = np.clip(np.asarray(watermark_image, np.float32), 0, 255).astype(np.uint8)
        self.watermark_image_as_pil = PIL.Image.fromarray(rgba)  # (h, w, 4) uint8 -> RGBA

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        dtype: Any = None, variant: str | None = None, mesh: Any = None) -> "IFWatermarker":
        """Read ``watermark_image`` from a watermarker folder's safetensors (``dtype`` and ``mesh`` are
        accepted for a uniform loading call and ignored: the buffer stays on the host). From the Hub,
        only ``subfolder``'s config and weights of ``variant`` are downloaded."""
        root = hub.resolve_checkpoint(pretrained_model_name_or_path, subfolder=subfolder, kind="object", variant=variant)
        folder = hub.component_folder(root, subfolder) if subfolder else root
        state = hub.load_state_dict(folder, variant=variant)
        if set(state) != {"watermark_image"}:
            raise hub.CheckpointError(
                f"{folder}: a watermarker checkpoint holds exactly one tensor, 'watermark_image'; found {sorted(state)}"
            )
        return cls(np.array(state["watermark_image"], np.float32))

    def apply_watermark(self, images: Sequence[PIL.Image.Image], sample_size: int | None = None) -> Sequence[PIL.Image.Image]:
        """Paste the logo onto every image (all the size of the first), in place; returns ``images``.

        ``sample_size`` (the stage's UNet ``sample_size``; default the image height) sets the
        reference resolution: images smaller than it are treated as upscaled to it.
        """
        h, w = images[0].height, images[0].width
        sample_size = sample_size or h
        coef = min(h / sample_size, w / sample_size)
        img_h, img_w = (int(h / coef), int(w / coef)) if coef < 1 else (h, w)
        # the logo is 62 px at 1024x1024 and scales with the side of the (possibly notional) image
        k = ((img_w * img_h) / 1024**2) ** 0.5
        wm_size, wm_x, wm_y = int(k * 62), img_w - int(14 * k), img_h - int(14 * k)
        if wm_size < 1:  # images under ~17 px: the logo is under a pixel (diffusers fails in PIL's resize)
            return images
        logo = self.watermark_image_as_pil.resize((wm_size, wm_size), PIL.Image.Resampling.BICUBIC, reducing_gap=None)
        for image in images:
            image.paste(logo, box=(wm_x - wm_size, wm_y - wm_size, wm_x, wm_y), mask=logo.split()[-1])
        return images
