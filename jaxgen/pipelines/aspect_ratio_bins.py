"""PixArt's aspect-ratio bins and the snapping of a requested size to them.

Each table maps an aspect ratio (height / width, as a string key) to the [height, width] PixArt was
trained at for that ratio, at a base resolution of 2048 (PixArt-Σ only), 1024, 512 or 256 pixels. The
values are diffusers' (pipeline_pixart_alpha.py, pipeline_pixart_sigma.py) so that resolution binning
picks the same sizes.
"""

from __future__ import annotations

from typing import Mapping, Sequence

ASPECT_RATIO_2048_BIN: dict[str, list[float]] = {  # PixArt-Σ-2K's (sample_size 256)
    "0.25": [1024.0, 4096.0], "0.26": [1024.0, 3968.0], "0.27": [1024.0, 3840.0], "0.28": [1024.0, 3712.0],
    "0.32": [1152.0, 3584.0], "0.33": [1152.0, 3456.0], "0.35": [1152.0, 3328.0], "0.4": [1280.0, 3200.0],
    "0.42": [1280.0, 3072.0], "0.48": [1408.0, 2944.0], "0.5": [1408.0, 2816.0], "0.52": [1408.0, 2688.0],
    "0.57": [1536.0, 2688.0], "0.6": [1536.0, 2560.0], "0.68": [1664.0, 2432.0], "0.72": [1664.0, 2304.0],
    "0.78": [1792.0, 2304.0], "0.82": [1792.0, 2176.0], "0.88": [1920.0, 2176.0], "0.94": [1920.0, 2048.0],
    "1.0": [2048.0, 2048.0], "1.07": [2048.0, 1920.0], "1.13": [2176.0, 1920.0], "1.21": [2176.0, 1792.0],
    "1.29": [2304.0, 1792.0], "1.38": [2304.0, 1664.0], "1.46": [2432.0, 1664.0], "1.67": [2560.0, 1536.0],
    "1.75": [2688.0, 1536.0], "2.0": [2816.0, 1408.0], "2.09": [2944.0, 1408.0], "2.4": [3072.0, 1280.0],
    "2.5": [3200.0, 1280.0], "2.89": [3328.0, 1152.0], "3.0": [3456.0, 1152.0], "3.11": [3584.0, 1152.0],
    "3.62": [3712.0, 1024.0], "3.75": [3840.0, 1024.0], "3.88": [3968.0, 1024.0], "4.0": [4096.0, 1024.0],
}

ASPECT_RATIO_1024_BIN: dict[str, list[float]] = {
    "0.25": [512.0, 2048.0],
    "0.28": [512.0, 1856.0],
    "0.32": [576.0, 1792.0],
    "0.33": [576.0, 1728.0],
    "0.35": [576.0, 1664.0],
    "0.4": [640.0, 1600.0],
    "0.42": [640.0, 1536.0],
    "0.48": [704.0, 1472.0],
    "0.5": [704.0, 1408.0],
    "0.52": [704.0, 1344.0],
    "0.57": [768.0, 1344.0],
    "0.6": [768.0, 1280.0],
    "0.68": [832.0, 1216.0],
    "0.72": [832.0, 1152.0],
    "0.78": [896.0, 1152.0],
    "0.82": [896.0, 1088.0],
    "0.88": [960.0, 1088.0],
    "0.94": [960.0, 1024.0],
    "1.0": [1024.0, 1024.0],
    "1.07": [1024.0, 960.0],
    "1.13": [1088.0, 960.0],
    "1.21": [1088.0, 896.0],
    "1.29": [1152.0, 896.0],
    "1.38": [1152.0, 832.0],
    "1.46": [1216.0, 832.0],
    "1.67": [1280.0, 768.0],
    "1.75": [1344.0, 768.0],
    "2.0": [1408.0, 704.0],
    "2.09": [1472.0, 704.0],
    "2.4": [1536.0, 640.0],
    "2.5": [1600.0, 640.0],
    "3.0": [1728.0, 576.0],
    "4.0": [2048.0, 512.0],
}

ASPECT_RATIO_512_BIN: dict[str, list[float]] = {
    "0.25": [256.0, 1024.0],
    "0.28": [256.0, 928.0],
    "0.32": [288.0, 896.0],
    "0.33": [288.0, 864.0],
    "0.35": [288.0, 832.0],
    "0.4": [320.0, 800.0],
    "0.42": [320.0, 768.0],
    "0.48": [352.0, 736.0],
    "0.5": [352.0, 704.0],
    "0.52": [352.0, 672.0],
    "0.57": [384.0, 672.0],
    "0.6": [384.0, 640.0],
    "0.68": [416.0, 608.0],
    "0.72": [416.0, 576.0],
    "0.78": [448.0, 576.0],
    "0.82": [448.0, 544.0],
    "0.88": [480.0, 544.0],
    "0.94": [480.0, 512.0],
    "1.0": [512.0, 512.0],
    "1.07": [512.0, 480.0],
    "1.13": [544.0, 480.0],
    "1.21": [544.0, 448.0],
    "1.29": [576.0, 448.0],
    "1.38": [576.0, 416.0],
    "1.46": [608.0, 416.0],
    "1.67": [640.0, 384.0],
    "1.75": [672.0, 384.0],
    "2.0": [704.0, 352.0],
    "2.09": [736.0, 352.0],
    "2.4": [768.0, 320.0],
    "2.5": [800.0, 320.0],
    "3.0": [864.0, 288.0],
    "4.0": [1024.0, 256.0],
}

ASPECT_RATIO_256_BIN: dict[str, list[float]] = {
    "0.25": [128.0, 512.0],
    "0.28": [128.0, 464.0],
    "0.32": [144.0, 448.0],
    "0.33": [144.0, 432.0],
    "0.35": [144.0, 416.0],
    "0.4": [160.0, 400.0],
    "0.42": [160.0, 384.0],
    "0.48": [176.0, 368.0],
    "0.5": [176.0, 352.0],
    "0.52": [176.0, 336.0],
    "0.57": [192.0, 336.0],
    "0.6": [192.0, 320.0],
    "0.68": [208.0, 304.0],
    "0.72": [208.0, 288.0],
    "0.78": [224.0, 288.0],
    "0.82": [224.0, 272.0],
    "0.88": [240.0, 272.0],
    "0.94": [240.0, 256.0],
    "1.0": [256.0, 256.0],
    "1.07": [256.0, 240.0],
    "1.13": [272.0, 240.0],
    "1.21": [272.0, 224.0],
    "1.29": [288.0, 224.0],
    "1.38": [288.0, 208.0],
    "1.46": [304.0, 208.0],
    "1.67": [320.0, 192.0],
    "1.75": [336.0, 192.0],
    "2.0": [352.0, 176.0],
    "2.09": [368.0, 176.0],
    "2.4": [384.0, 160.0],
    "2.5": [400.0, 160.0],
    "3.0": [432.0, 144.0],
    "4.0": [512.0, 128.0],
}


def classify_height_width_bin(
    height: int, width: int, ratios: Mapping[str, Sequence[float]]
) -> tuple[int, int]:
    """Returns the (height, width) of the bin whose aspect ratio is closest to height / width.

    Ties go to the first such key in `ratios`' order, as in diffusers'
    `PixArtImageProcessor.classify_height_width_bin`.
    """
    aspect = float(height / width)
    closest = min(ratios.keys(), key=lambda ratio: abs(float(ratio) - aspect))
    bin_height, bin_width = ratios[closest]
    return int(bin_height), int(bin_width)


BINS_BY_SAMPLE_SIZE: dict[int, dict[str, list[float]]] = {
    128: ASPECT_RATIO_1024_BIN,
    64: ASPECT_RATIO_512_BIN,
    32: ASPECT_RATIO_256_BIN,
}
"""The bins a PixArt-α transformer was trained with, by its ``sample_size`` (latent side: 8x smaller)."""

SIGMA_BINS_BY_SAMPLE_SIZE: dict[int, dict[str, list[float]]] = {256: ASPECT_RATIO_2048_BIN, **BINS_BY_SAMPLE_SIZE}
"""PixArt-Σ's: α's and the 2K model's 2048 px bins."""


def bins_for_sample_size(sample_size: int, bins: Mapping[int, dict[str, list[float]]] = BINS_BY_SAMPLE_SIZE
                         ) -> dict[str, list[float]]:
    """The aspect-ratio bins of a transformer ``sample_size`` in ``bins`` (α's by default); ValueError (diffusers'
    "Invalid sample size", with what to do) for a size that has none."""
    if sample_size not in bins:
        sizes = ", ".join(f"{s} ({s * 8} px)" for s in bins)
        raise ValueError(
            f"Invalid sample size: the transformer's sample_size is {sample_size}, and resolution binning has bins"
            f" only for sample sizes {sizes}. Pass `use_resolution_binning=False` (command line:"
            " `--no-resolution-binning`) to generate at exactly `height` x `width`."
        )
    return bins[sample_size]
