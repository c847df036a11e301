"""jaxgen.utils against diffusers.utils: make_image_grid pixel for pixel, load_image's orientation and refusals."""

from __future__ import annotations

import diffusers.utils
import numpy as np
import PIL.Image
import pytest

import jaxgen


def _images(n: int) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("resize", [None, 8])
def test_make_image_grid_matches_diffusers(resize):
    images = _images(6)
    ours = jaxgen.utils.make_image_grid(images, rows=2, cols=3, resize=resize)
    theirs = diffusers.utils.make_image_grid(images, rows=2, cols=3, resize=resize)
    assert ours.size == theirs.size and ours.mode == theirs.mode
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    # a pipeline's output_type="np" batch, float in [0, 1]: the same grid
    batch = np.stack([np.asarray(i, np.float32) / 255.0 for i in images])
    np.testing.assert_array_equal(np.asarray(jaxgen.utils.make_image_grid([batch], 2, 3, resize)), np.asarray(theirs))
    with pytest.raises(ValueError, match="rows x cols"):
        jaxgen.utils.make_image_grid(images, rows=2, cols=2)


def test_load_image(tmp_path):
    image = _images(1)[0]
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotated: shown turned 90 degrees
    image.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    ours, theirs = jaxgen.utils.load_image(tmp_path / "photo.jpg"), diffusers.utils.load_image(str(tmp_path / "photo.jpg"))
    assert ours.size == theirs.size == (12, 20) and ours.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        jaxgen.utils.load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="local files"):
        jaxgen.utils.load_image("https://example.com/cat.png")
