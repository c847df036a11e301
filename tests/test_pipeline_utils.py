"""Pipeline utilities against diffusers: caption cleaning, PixArt aspect-ratio bins, image
pre/post-processing (jaxgen NHWC vs diffusers NCHW)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("bs4")
pytest.importorskip("ftfy")

from diffusers.image_processor import PixArtImageProcessor, VaeImageProcessor  # noqa: E402
from diffusers.pipelines.deepfloyd_if.pipeline_if import IFPipeline  # noqa: E402
from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha  # noqa: E402
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import PixArtAlphaPipeline  # noqa: E402

from jaxgen import image_processing as ip  # noqa: E402
from jaxgen.pipelines import aspect_ratio_bins as bins  # noqa: E402
from jaxgen.text import captions  # noqa: E402
from tests.conftest import nchw_to_nhwc  # noqa: E402

MESSY_CAPTIONS = [
    "A photo of a cat https://example.com/cat.jpg and www.google.com/search?q=cats",
    "&lt;b&gt;Bold&lt;/b&gt; text &amp; more &quot;quoted&quot; and &amp;amp; twice",
    "<p>Hello <b>World</b></p> <person> smiling",
    '<a href="http://x.com">link text</a> more text here',
    "Follow @john_doe123 and @jane for more #art #123 #12345678 #1234",
    "日本語のキャプション with 中文 characters and ㈱ symbols ㍿ ䷀ ㇀",
    "Free shipping worldwide! Worldwide free  shipping. Free download now, download free. Click here for details",
    "image_001.png photo-2023.JPG document.pdf, a jpeg images set, page 12",
    "em—dash en–dash ‐ hyphen ― bar 〜 wave and ー katakana",
    "«Quotes» “double” ‘single’ `back` ´acute´ ¨diaeresis",
    "this-is-my-cute-cat_with_many_separators",
    "IP 192.168.0.1 article 1:23   ",
    "Product jc6640 and jc6640vc and 6640vc231 and j2d1a2a3b end",
    "Size 1920x1080 and 10.5×20 and 3х4 pixels",
    "***AUSVERKAUFT*** [tag] {brace} (paren) | pipe \\ backslash / slash ® © ™ • ½",
    '"""Triple quoted""" ... dots.... and . spaced . periods',
    "   Leading and trailing spaces, with, commas,and.periods.here  ",
    "Hello%20World%21+encoded+url%3A+yes",
    "literal \\n newline and real\nnewline",
    "'quoted caption'",
    "- leading dash: and trailing plus+",
    "mojibake: Ã©tÃ© cafÃ© and ﬁ ligature",
    "123456789 and #1 and 99.99.99.99 and 1234567",
    ".hiddenfile",
    "ＡＢＣ fullwidth and emoji 🐱 cat : colon ; semi",
    "A Beautiful SUNSET over the Ocean, 4K, trending on artstation",
]


@pytest.fixture(scope="module")
def if_pipe():
    # Only the caption methods are used: no components are needed.
    return IFPipeline.__new__(IFPipeline)


@pytest.fixture(scope="module")
def pixart_pipe():
    return PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)


# --------------------------------------------------------------------------- captions


@pytest.mark.parametrize("caption", MESSY_CAPTIONS)
def test_clean_caption_matches_diffusers(caption, if_pipe, pixart_pipe):
    assert captions.clean_caption(caption) == if_pipe._clean_caption(caption)
    expected = if_pipe._text_preprocessing(caption, clean_caption=True)
    assert captions.text_preprocessing(caption, clean_caption=True) == expected
    assert pixart_pipe._text_preprocessing(caption, clean_caption=True) == expected


def test_text_preprocessing_batch_and_without_cleaning(if_pipe):
    assert captions.text_preprocessing(MESSY_CAPTIONS, clean_caption=True) == if_pipe._text_preprocessing(
        MESSY_CAPTIONS, clean_caption=True
    )
    for text in ("  A Cat On A MAT  ", MESSY_CAPTIONS, tuple(MESSY_CAPTIONS[:3])):
        assert captions.text_preprocessing(text) == if_pipe._text_preprocessing(text, clean_caption=False)
    assert captions.text_preprocessing("  A Cat  ") == ["a cat"]


def test_bad_punctuation_class_matches_diffusers():
    ours = re.compile(captions._BAD_PUNCT)
    theirs = IFPipeline.bad_punct_regex
    for code in range(0x3000):
        char = chr(code)
        assert bool(ours.fullmatch(char)) == bool(theirs.fullmatch(char)), repr(char)


@pytest.mark.parametrize("missing, package", [("bs4", "beautifulsoup4"), ("ftfy", "ftfy")])
def test_clean_caption_falls_back_with_warning(monkeypatch, missing, package):
    monkeypatch.setattr(captions, "_is_available", lambda module: module != missing)
    with pytest.warns(UserWarning, match=package):
        out = captions.text_preprocessing(["  Visit HTTPS://Example.com NOW  "], clean_caption=True)
    assert out == ["visit https://example.com now"]


# --------------------------------------------------------------------------- aspect-ratio bins


@pytest.mark.parametrize("name", ["ASPECT_RATIO_1024_BIN", "ASPECT_RATIO_512_BIN", "ASPECT_RATIO_256_BIN"])
def test_aspect_ratio_bins_match_diffusers(name):
    ours, theirs = getattr(bins, name), getattr(pipeline_pixart_alpha, name)
    assert ours == theirs
    assert list(ours) == list(theirs)  # order decides ties
    sizes = list(range(64, 2100, 52)) + [256, 512, 768, 1000, 1024, 1080, 1920, 2048]
    for height in sizes:
        for width in sizes:
            expected = PixArtImageProcessor.classify_height_width_bin(height, width, ratios=theirs)
            assert bins.classify_height_width_bin(height, width, ours) == expected, (height, width)


# --------------------------------------------------------------------------- resize_and_crop


@pytest.mark.parametrize(
    "shape, new_hw",
    [
        ((2, 3, 64, 64), (48, 80)),  # up, wider
        ((2, 3, 96, 128), (40, 56)),  # down
        ((1, 4, 50, 70), (64, 48)),  # up, taller, odd sizes
        ((1, 3, 120, 72), (64, 96)),  # mixed
        ((1, 3, 40, 40), (40, 40)),  # no-op
    ],
)
def test_resize_and_crop_matches_diffusers(shape, new_hw):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    new_height, new_width = new_hw
    expected = PixArtImageProcessor.resize_and_crop_tensor(x, new_width, new_height)
    out = ip.resize_and_crop(jnp.asarray(nchw_to_nhwc(x)), new_width, new_height)
    assert out.shape == (shape[0], new_height, new_width, shape[1])
    np.testing.assert_allclose(np.asarray(out), nchw_to_nhwc(expected), rtol=0, atol=1e-6)


def test_resize_and_crop_inside_jit():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 30, 20, 3)), jnp.float32)
    inner = jax.jit(lambda images: ip.resize_and_crop(images, 16, 24) * 2)(x)
    np.testing.assert_array_equal(np.asarray(inner), np.asarray(ip.resize_and_crop(x, 16, 24)) * 2)


# --------------------------------------------------------------------------- postprocess


@pytest.fixture(scope="module")
def decoded():
    # Slightly outside [-1, 1] so that clipping is exercised.
    return torch.rand((2, 3, 12, 16), generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2


def test_postprocess_np_matches_diffusers(decoded):
    expected = VaeImageProcessor().postprocess(decoded, output_type="np")
    out = ip.postprocess(jnp.asarray(nchw_to_nhwc(decoded)), output_type="np")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    expected = VaeImageProcessor().postprocess(decoded, output_type="np", do_denormalize=[True, False])
    out = ip.postprocess(nchw_to_nhwc(decoded), output_type="np", do_denormalize=[True, False])
    np.testing.assert_array_equal(out, expected)
    # Half precision is denormalised in its own dtype, as in torch.
    expected = VaeImageProcessor().postprocess(decoded.bfloat16(), output_type="np")
    out = ip.postprocess(jnp.asarray(nchw_to_nhwc(decoded), jnp.bfloat16), output_type="np")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("channels", [3, 1])
def test_postprocess_pil_matches_diffusers(decoded, channels):
    images = decoded[:, :channels]
    expected = VaeImageProcessor().postprocess(images, output_type="pil")
    out = ip.postprocess(jnp.asarray(nchw_to_nhwc(images)), output_type="pil")
    assert len(out) == len(expected)
    for ours, theirs in zip(out, expected):
        assert ours.mode == theirs.mode and ours.size == theirs.size
        np.testing.assert_array_equal(np.array(ours), np.array(theirs))


def test_postprocess_latent_and_unknown_output_type(decoded):
    latents = jnp.asarray(nchw_to_nhwc(decoded))
    assert ip.postprocess(latents, output_type="latent") is latents
    with pytest.raises(ValueError, match="output_type=pt"):
        ip.postprocess(latents, output_type="pt")


def test_numpy_to_pil_matches_diffusers():
    image = np.random.default_rng(2).uniform(0, 1, (9, 7, 3)).astype(np.float32)
    (ours,) = ip.numpy_to_pil(image)
    (theirs,) = VaeImageProcessor.numpy_to_pil(image)
    np.testing.assert_array_equal(np.array(ours), np.array(theirs))


# --------------------------------------------------------------------------- preprocess


def _pil(seed: int, width: int, height: int, mode: str = "RGB") -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels).convert(mode)


@pytest.mark.parametrize(
    "settings, size",
    [
        ({}, (None, None)),
        ({}, (44, 28)),
        ({"resample": "bicubic", "reducing_gap": 1}, (None, None)),  # Kandinsky's image processor
        ({"vae_scale_factor": 16}, (50, None)),
    ],
)
def test_preprocess_pil_matches_diffusers(settings, size):
    height, width = size
    for image in (_pil(0, 53, 37), [_pil(1, 53, 37), _pil(2, 53, 37)]):
        expected = VaeImageProcessor(**settings).preprocess(image, height=height, width=width)
        out = ip.preprocess(image, height, width, **settings)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, nchw_to_nhwc(expected))


def test_preprocess_arrays_match_diffusers():
    rng = np.random.default_rng(3)
    batch = rng.uniform(0, 1, (2, 37, 53, 3)).astype(np.float32)
    cases = [
        (batch, {}),
        (batch[0], {}),  # HWC
        (batch, {"height": 24, "width": 72}),  # nearest up/down
        ([batch[0], batch[1]], {}),
    ]
    for image, kwargs in cases:
        expected = VaeImageProcessor().preprocess(image, **kwargs)
        out = ip.preprocess(image, **kwargs)
        np.testing.assert_array_equal(out, nchw_to_nhwc(expected))
    # jax arrays are NHWC too.
    np.testing.assert_array_equal(ip.preprocess(jnp.asarray(batch)), ip.preprocess(batch))


def test_preprocess_already_normalised_array_warns():
    image = np.random.default_rng(4).uniform(-1, 1, (1, 16, 24, 3)).astype(np.float32)
    with pytest.warns(FutureWarning):
        expected = VaeImageProcessor().preprocess(image)
    with pytest.warns(UserWarning, match="already normalised"):
        out = ip.preprocess(image)
    np.testing.assert_array_equal(out, nchw_to_nhwc(expected))


def test_preprocess_mask_matches_diffusers():
    mask_processor = VaeImageProcessor(do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    rng = np.random.default_rng(5)
    cases = [
        (_pil(6, 45, 30), {}),
        (_pil(7, 45, 30, mode="L"), {"height": 16, "width": 40}),
        (rng.uniform(0, 1, (2, 30, 45)).astype(np.float32), {}),  # (N, H, W)
        (rng.uniform(0, 1, (30, 45, 1)).astype(np.float32), {}),  # (H, W, 1)
    ]
    for mask, kwargs in cases:
        expected = mask_processor.preprocess(mask, **kwargs)
        out = ip.preprocess_mask(mask, **kwargs)
        assert out.shape[-1] == 1
        np.testing.assert_array_equal(out, nchw_to_nhwc(expected))
