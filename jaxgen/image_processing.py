"""Image pre- and post-processing shared by the pipelines, channels last (NHWC).

These reproduce diffusers' `VaeImageProcessor` (preprocess, postprocess, numpy_to_pil, the mask
processor's settings) and `PixArtImageProcessor.resize_and_crop_tensor` value for value, so a
jaxgen pipeline sees and returns the same pixels as its diffusers counterpart.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image

# diffusers' PIL_INTERPOLATION names.
_RESAMPLE = {
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "nearest": PIL.Image.Resampling.NEAREST,
}

OUTPUT_TYPES = ("pil", "np", "latent")


# --------------------------------------------------------------------------- resizing


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear resize (align_corners=False, no antialias).

    The source position (i + 0.5) * scale - 0.5, scale = in/out in float32, is clamped at 0 and the
    upper neighbour at the last pixel. torch's CPU build evaluates it as one fused multiply-add
    rounded once to float32; float64 reproduces that exactly (the product is exact in float64).
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    position = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    position = np.maximum(position, np.float32(0))
    lower = position.astype(np.int64)
    upper = np.where(lower < in_size - 1, lower + 1, lower)
    w_upper = np.clip(position - lower.astype(np.float32), np.float32(0), np.float32(1))
    w_lower = np.float32(1) - w_upper
    return lower, upper, w_lower, w_upper


def _resize_bilinear(images: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of NHWC images as torch's F.interpolate(mode="bilinear", align_corners=False)
    on NCHW: the same taps and weights, gathered.

    jax.image.resize(antialias=False) computes its weights differently and agrees only to ~1e-6.
    torch's generic CPU kernel (used when out_h + out_w > 128) computes t0 * w0 + t1 * w1 along
    width, then along height; XLA on CPU contracts the same expression the same way, so float32
    results are bit-equal there (within 1 ulp on torch's other kernel and on other backends).
    Half-precision inputs are blended in float32 and rounded back (within 1 ulp of torch).
    """
    dtype = images.dtype
    compute = jnp.promote_types(dtype, jnp.float32)

    def weights(w: np.ndarray, shape: tuple[int, ...]) -> jax.Array:
        return jnp.asarray(w, compute).reshape(shape)

    w0_idx, w1_idx, w0, w1 = _bilinear_taps(images.shape[2], width)
    h0_idx, h1_idx, h0, h1 = _bilinear_taps(images.shape[1], height)
    w0, w1 = weights(w0, (-1, 1)), weights(w1, (-1, 1))
    h0, h1 = weights(h0, (-1, 1, 1)), weights(h1, (-1, 1, 1))
    images = images.astype(compute)
    rows = jnp.take(images, w0_idx, axis=2) * w0 + jnp.take(images, w1_idx, axis=2) * w1
    out = jnp.take(rows, h0_idx, axis=1) * h0 + jnp.take(rows, h1_idx, axis=1) * h1
    return out.astype(dtype)


@functools.partial(jax.jit, static_argnames=("new_width", "new_height"))
def resize_and_crop(images: jax.Array, new_width: int, new_height: int) -> jax.Array:
    """Resizes NHWC images to cover (new_height, new_width), keeping the aspect ratio, then crops
    the centre: diffusers' `PixArtImageProcessor.resize_and_crop_tensor` (bilinear, no antialias).

    images: (N, H, W, C). Returns (N, new_height, new_width, C), same dtype. Sizes are static.
    """
    orig_height, orig_width = images.shape[1], images.shape[2]
    if orig_height == new_height and orig_width == new_width:
        return images
    ratio = max(new_height / orig_height, new_width / orig_width)
    resized_width = int(orig_width * ratio)
    resized_height = int(orig_height * ratio)
    images = _resize_bilinear(images, resized_height, resized_width)
    start_x = (resized_width - new_width) // 2
    start_y = (resized_height - new_height) // 2
    return images[:, start_y : start_y + new_height, start_x : start_x + new_width, :]


def _bilinear_aligned_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear resize with align_corners=True (CPU, float32).

    Source position i * (in - 1) / (out - 1), the scale and the product each rounded to float32; the
    lower index floor(position), the upper one the next pixel (the same at the last).
    """
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    position = (scale * np.arange(out_size, dtype=np.float32)).astype(np.float32)
    lower = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
    upper = np.where(lower < in_size - 1, lower + 1, lower)
    w_upper = np.clip(position - lower.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    return lower, upper, (np.float32(1) - w_upper).astype(np.float32), w_upper


def resize_bilinear_align_corners(images: jax.Array, height: int, width: int) -> jax.Array:
    """NHWC images (N, h, w, C) -> (N, height, width, C): torch's
    ``F.interpolate(mode="bilinear", align_corners=True)`` on NCHW, the same taps, width then height."""
    dtype = images.dtype
    x = images.astype(jnp.promote_types(dtype, jnp.float32))
    w0_idx, w1_idx, w0, w1 = _bilinear_aligned_taps(x.shape[2], width)
    h0_idx, h1_idx, h0, h1 = _bilinear_aligned_taps(x.shape[1], height)
    x = jnp.take(x, w0_idx, axis=2) * w0[:, None] + jnp.take(x, w1_idx, axis=2) * w1[:, None]
    x = jnp.take(x, h0_idx, axis=1) * h0[:, None, None] + jnp.take(x, h1_idx, axis=1) * h1[:, None, None]
    return x.astype(dtype)


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, as a fused multiply-add (the float32 product is exact in float64)."""
    return (np.asarray(a, np.float64) * b + c).astype(np.float32)


def _keys_cubic_aa(x: np.ndarray) -> np.ndarray:
    """ATen's antialiasing bicubic filter (Keys, a = -0.5) on float32 ``x``. torch's CPU kernels are built with
    FMA contraction (AVX2 / AVX-512), which moves the small outer taps by a few ulp: this evaluates the same
    fused steps, so the weights come out bit-equal to torch's."""
    a, x = np.float32(-0.5), np.abs(x).astype(np.float32)
    inner = _fma32(_fma32(a + 2, x, -(a + 3)) * x, x, np.float32(1))
    outer = _fma32(_fma32(_fma32(a, x, -5 * a), x, 8 * a), x, -4 * a)
    return np.where(x < 1, inner, np.where(x < 2, outer, np.float32(0))).astype(np.float32)


@functools.lru_cache(maxsize=128)
def bicubic_antialias_weights(in_size: int, out_size: int, align_corners: bool = True) -> np.ndarray:
    """(out_size, in_size) float32 matrix of torch's antialiased bicubic resize along one axis (ATen's
    ``_compute_indices_min_size_weights_aa`` for float32, its float/double promotions step by step).

    scale = (in - 1) / (out - 1) with ``align_corners`` (0 for one output), in / out without; output i reads the
    window around center = scale * (i + 0.5) (the half-pixel center even with ``align_corners``: the aa kernels
    only change the scale) of half-width support = 2 * max(scale, 1), weights filter((src - center + 0.5) /
    max(scale, 1)), normalized to sum 1. Read-only (cached)."""
    f32 = np.float32
    if align_corners:
        scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    else:
        scale = f32(in_size) / f32(out_size)
    support = f32(2.0 * float(scale)) if scale >= 1 else f32(2)
    invscale = f32(1.0 / float(scale)) if scale >= 1 else f32(1)
    max_taps = int(np.ceil(support)) * 2 + 1
    center = (float(scale) * (np.arange(out_size) + 0.5)).astype(f32)
    # C++'s int64 casts truncate toward zero (astype does too)
    xmin = np.maximum(((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    xmax = np.minimum(((center + support).astype(np.float64) + 0.5).astype(np.int64), in_size)
    xsize = np.clip(xmax - xmin, 0, max_taps)
    src = xmin[:, None] + np.arange(max_taps)[None, :]
    valid = np.arange(max_taps)[None, :] < xsize[:, None]
    arg = (((src.astype(f32) - center[:, None]).astype(np.float64) + 0.5) * float(invscale)).astype(f32)
    taps = np.where(valid, _keys_cubic_aa(arg), f32(0))
    total = np.zeros(out_size, f32)
    for j in range(max_taps):  # summed in order in float32, as ATen's loop
        total = (total + taps[:, j]).astype(f32)
    taps = np.where(total[:, None] != 0, taps / np.where(total == 0, f32(1), total)[:, None], taps).astype(f32)
    weights = np.zeros((out_size, in_size), f32)
    rows = np.broadcast_to(np.arange(out_size)[:, None], src.shape)
    weights[rows[valid], src[valid]] = taps[valid]
    weights.setflags(write=False)
    return weights


def resize_bicubic_antialias(images: jax.Array, height: int, width: int, align_corners: bool = True) -> jax.Array:
    """NHWC images (N, h, w, C) -> (N, height, width, C): torch's ``F.interpolate(size=(height, width),
    mode="bicubic", antialias=True, align_corners=align_corners)`` on NCHW (Würstchen's stage B resizes its
    EfficientNet conditioning so), computed in float32 and returned in the input's dtype.

    Two precomputed weight matrices (``bicubic_antialias_weights``, static shapes) applied as einsums, width first
    then height, as ATen's separable kernel; an axis whose size does not change is left alone, as ATen does.
    The weights are torch's bit for bit; the sums agree to about an ulp. (torch's CPU kernel mishandles a
    1-pixel-wide image whose width stays 1, repeating its first output row down the height; this does not.)
    """
    dtype = images.dtype
    x = images.astype(jnp.promote_types(dtype, jnp.float32))
    if width != x.shape[2]:
        w = jnp.asarray(bicubic_antialias_weights(x.shape[2], width, align_corners), x.dtype)
        x = jnp.einsum("ow,nhwc->nhoc", w, x, precision=jax.lax.Precision.HIGHEST)
    if height != x.shape[1]:
        w = jnp.asarray(bicubic_antialias_weights(x.shape[1], height, align_corners), x.dtype)
        x = jnp.einsum("oh,nhwc->nowc", w, x, precision=jax.lax.Precision.HIGHEST)
    return x.astype(dtype)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch's nearest resize: floor(i * in/out) in float32, at most in - 1."""
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


def _resize_nearest(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resize of NHWC numpy images as torch's F.interpolate(size=...) default mode."""
    images = np.take(images, _nearest_indices(images.shape[1], height), axis=1)
    return np.take(images, _nearest_indices(images.shape[2], width), axis=2)


# --------------------------------------------------------------------------- conversions


def numpy_to_pil(images: Any) -> list[PIL.Image.Image]:
    """(N, H, W, C) or (H, W, C) images in [0, 1] -> list of PIL images.

    Pixels are (x * 255).round() cast to uint8, as diffusers' `numpy_to_pil`; one channel gives
    mode "L" images.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None, ...]
    images = (images * 255).round().astype("uint8")
    if images.shape[-1] == 1:
        return [PIL.Image.fromarray(image[..., 0]) for image in images]
    return [PIL.Image.fromarray(image) for image in images]


def as_image_list(image: Any, name: str = "image") -> list:
    """An image argument (one image, an array batch, or a list/tuple of them) as a list; an empty list or an
    empty image (0 pixels) is a ValueError naming the argument ``name``."""
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    if not images:
        raise ValueError(f"`{name}` is an empty list: pass at least one image")
    for i in images:
        size = (i.height, i.width) if isinstance(i, PIL.Image.Image) else np.shape(i)
        if 0 in tuple(size):
            raise ValueError(f"`{name}` has an empty image (shape {tuple(size)})")
    return images


def image_array(x: Any, name: str = "image") -> np.ndarray:
    """One image array as the pipelines take them -> float32: uint8 is read as 0-255 (divided by 255); floats
    must be finite and within [0, 1] (or [-1, 1]: already normalised, as diffusers takes them); other dtypes
    are a TypeError. Errors name the argument ``name``."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"`{name}` arrays must be uint8 (0-255) or float (in [0, 1]), got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` has NaN or infinite values")
    if x.size and (x.max() > 1.0 or x.min() < -1.0):
        raise ValueError(f"`{name}` float arrays must be in [0, 1] (or [-1, 1] when already normalised), got values"
                         f" in [{x.min():g}, {x.max():g}]; pass uint8 arrays for 0-255 pixels")
    return x


def stack_image_arrays(images: list, name: str) -> np.ndarray:
    """A list of arrays (H, W), (H, W, C) or (N, H, W, C) (uint8, or float in [0, 1]: ``image_array``) -> one
    float32 (N, H, W, C) array (a ValueError naming the argument ``name`` otherwise)."""
    arrays = [image_array(i, name) for i in images]
    out = np.concatenate(arrays, axis=0) if arrays[0].ndim == 4 else np.stack(arrays, axis=0)
    if out.ndim == 3:  # (N, H, W): one channel
        out = out[..., None]
    if out.ndim != 4:
        raise ValueError(f"`{name}` arrays must be (H, W), (H, W, C) or (N, H, W, C), got shape {arrays[0].shape}")
    return out


def stack_mask_arrays(masks: list, name: str = "mask_image") -> np.ndarray:
    """Mask arrays ((H, W), (N, H, W), (H, W, 1), (N, H, W, 1); uint8, bool or float in [0, 1]) -> float32
    (N, H, W, C), not binarized."""
    arrays = [np.asarray(m) for m in masks]
    if len(arrays) == 1 and arrays[0].ndim == 3:  # one (H, W, 1) mask, or (N, H, W) masks
        arrays = [arrays[0][..., 0]] if arrays[0].shape[-1] == 1 else [arrays[0][..., None]]
    return stack_image_arrays(arrays, name)


def to_signed_range(array: np.ndarray) -> np.ndarray:
    """Image arrays in [0, 1] -> [-1, 1]; an array with a negative value is taken as already in [-1, 1]
    (as ``output_type="latent"`` returns pixel-space images and diffusers takes arrays)."""
    array = np.asarray(array, np.float32)
    return array if array.size and array.min() < 0 else array * 2.0 - 1.0


def pil_to_array(images: PIL.Image.Image | Sequence[PIL.Image.Image]) -> np.ndarray:
    """PIL image(s) of one size -> float32 (N, H, W, C) array in [0, 1] (C = 1 for mode "L")."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    array = np.stack([np.array(image).astype(np.float32) / 255.0 for image in images], axis=0)
    if array.ndim == 3:
        array = array[..., None]
    return array


def _default_height_width(height: int | None, width: int | None, image_hw: tuple[int, int], multiple: int):
    height = image_hw[0] if height is None else height
    width = image_hw[1] if width is None else width
    return height - height % multiple, width - width % multiple


def _as_image_list(image: Any, do_convert_grayscale: bool, name: str = "image") -> list:
    """The accepted inputs -> a list of PIL images or of float32 numpy arrays (2-D, 3-D or 4-D: ``image_array``)."""
    if isinstance(image, jax.Array):
        image = np.asarray(image)
    if isinstance(image, (list, tuple)):
        image = [np.asarray(i) if isinstance(i, jax.Array) else i for i in image]
    # A 3-D grayscale array is (N, H, W) or (H, W, 1): add the missing axis as diffusers does.
    if do_convert_grayscale and isinstance(image, np.ndarray) and image.ndim == 3:
        image = image[None] if image.shape[-1] == 1 else image[..., None]
    if not isinstance(image, (list, tuple)):
        image = [image]
    if len(image) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one image.")
    is_pil = all(isinstance(i, PIL.Image.Image) for i in image)
    is_array = all(isinstance(i, np.ndarray) for i in image)
    valid_arrays = is_array and (
        (len(image) == 1 and image[0].ndim in (2, 3, 4))
        or all(i.ndim in (2, 3) for i in image)
        or all(i.ndim == 4 for i in image)
    )
    if not (is_pil or valid_arrays):
        raise ValueError(
            f"`{name}` is in incorrect format. Currently, we only support PIL.Image.Image, np.ndarray and jax.Array "
            "images (2-D, 3-D, or 4-D NHWC), or lists of them."
        )
    images = as_image_list(image, name)
    return images if is_pil else [image_array(i, name) for i in images]


def preprocess(
    image: Any,
    height: int | None = None,
    width: int | None = None,
    *,
    vae_scale_factor: int = 8,
    resample: str = "lanczos",
    reducing_gap: int | None = None,
    do_resize: bool = True,
    do_normalize: bool = True,
    do_binarize: bool = False,
    do_convert_rgb: bool = False,
    do_convert_grayscale: bool = False,
    name: str = "image",
) -> np.ndarray:
    """Images for a VAE encoder: diffusers' `VaeImageProcessor(...).preprocess(image, height, width)`
    with the same settings, channels last.

    image: a PIL image, a numpy/jax array (H, W), (H, W, C) or (N, H, W, C) in [0, 1] (uint8 arrays: 0-255),
    or a list of these; bad input is a ValueError or TypeError naming the argument `name`. Height and width default to the image's, rounded down to multiples of
    `vae_scale_factor`; PIL images are resized with `resample` (diffusers' default "lanczos"),
    arrays with nearest-neighbour (as diffusers resizes tensors). Returns a float32 numpy array
    (N, height, width, C) in [-1, 1] (in [0, 1] without `do_normalize`; 0/1 with `do_binarize`).
    Arrays with negative values are taken as already normalised: a warning, no normalisation.
    """
    if do_convert_rgb and do_convert_grayscale:
        raise ValueError("`do_convert_rgb` and `do_convert_grayscale` can not both be set to `True`.")
    if resample not in _RESAMPLE:
        raise ValueError(f"resample={resample!r} is not one of {sorted(_RESAMPLE)}")
    images = _as_image_list(image, do_convert_grayscale, name)

    if isinstance(images[0], PIL.Image.Image):
        if do_resize:
            height, width = _default_height_width(
                height, width, (images[0].height, images[0].width), vae_scale_factor
            )
            images = [
                i.resize((width, height), resample=_RESAMPLE[resample], reducing_gap=reducing_gap) for i in images
            ]
        if do_convert_rgb:
            images = [i.convert("RGB") for i in images]
        elif do_convert_grayscale:
            images = [i.convert("L") for i in images]
        array = pil_to_array(images)
    else:
        if images[0].ndim == 4:
            array = np.concatenate(images, axis=0)
        else:
            array = np.stack(images, axis=0)
        if array.ndim == 3:  # (N, H, W): one channel
            array = array[..., None]
        array = array.astype(np.float32)
        if do_resize:
            height, width = _default_height_width(height, width, array.shape[1:3], vae_scale_factor)
            array = _resize_nearest(array, height, width)

    if do_normalize and array.min() < 0:
        warnings.warn(
            "Images are expected in [0, 1]; got values in "
            f"[{array.min()}, {array.max()}], taken as already normalised to [-1, 1] (not normalised again).",
            UserWarning,
            stacklevel=2,
        )
        do_normalize = False
    if do_normalize:
        array = 2.0 * array - 1.0
    if do_binarize:
        array = array.copy()
        array[array < 0.5] = 0
        array[array >= 0.5] = 1
    return array


def preprocess_mask(
    mask: Any,
    height: int | None = None,
    width: int | None = None,
    *,
    vae_scale_factor: int = 8,
    resample: str = "lanczos",
    reducing_gap: int | None = None,
) -> np.ndarray:
    """Inpainting masks as diffusers' mask processor (`VaeImageProcessor(do_normalize=False,
    do_binarize=True, do_convert_grayscale=True)`): grayscale, resized, 0/1.

    Returns a float32 numpy array (N, height, width, 1).
    """
    return preprocess(
        mask,
        height,
        width,
        vae_scale_factor=vae_scale_factor,
        resample=resample,
        reducing_gap=reducing_gap,
        do_normalize=False,
        do_binarize=True,
        do_convert_grayscale=True,
        name="mask_image",
    )


def postprocess(
    images: Any,
    output_type: str = "pil",
    do_denormalize: Sequence[bool] | None = None,
) -> list[PIL.Image.Image] | np.ndarray | Any:
    """Decoded NHWC images in [-1, 1] -> what the pipeline returns, as diffusers'
    `VaeImageProcessor.postprocess`.

    "np": float32 numpy (N, H, W, C) of (x / 2 + 0.5).clip(0, 1), computed in the input's dtype
    and then cast, as diffusers does. "pil": those as a list of PIL images (`numpy_to_pil`).
    "latent": `images` unchanged. `do_denormalize` (one bool per image, default all True) leaves
    the images marked False as they are.
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(
            f"Only the output types `pil`, `np` and `latent` are supported not output_type={output_type}"
        )
    if output_type == "latent":
        return images
    array = np.asarray(images)
    if array.ndim != 4:
        raise ValueError(f"Expected images of shape (batch, height, width, channels), got shape {array.shape}")
    if do_denormalize is None:
        do_denormalize = [True] * array.shape[0]
    if len(do_denormalize) != array.shape[0]:
        raise ValueError(f"`do_denormalize` has {len(do_denormalize)} entries for {array.shape[0]} images")
    # Constants in the array's dtype: numpy would promote bfloat16 * 0.5 to float32.
    half, zero, one = (np.asarray(v, dtype=array.dtype) for v in (0.5, 0, 1))
    array = np.stack([np.clip(x * half + half, zero, one) if d else x for x, d in zip(array, do_denormalize)])
    array = array.astype(np.float32)
    if output_type == "np":
        return array
    return numpy_to_pil(array)
