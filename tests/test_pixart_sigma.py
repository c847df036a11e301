"""PixArtSigmaPipeline: parity with diffusers' image for image (DPM-Solver, the same noise, Σ's binning), what Σ sets
otherwise than α (300 tokens, no micro-conditions at 1024 px, the 2048 px bins), and how users reach it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import build_tiny_pixart, nhwc_to_nchw, rel_l2


@pytest.fixture(scope="module")
def tiny_sigma(tmp_path_factory):
    """(folder, torch pipeline): a tiny PixArt-Σ at the 1024 px model's geometry (sample_size 128, VAE factor 8,
    patch 8: 256 tokens), whose transformer takes no micro-conditions."""
    folder = tmp_path_factory.mktemp("tiny_sigma")
    pipe = build_tiny_pixart(folder, sample_size=128, vae_levels=4, patch_size=8, seed=60, sigma=True,
                             vae_channels=(4, 8, 8, 8), vae_mid_attention=False)
    return folder, pipe


@pytest.fixture(scope="module")
def sigma_pipe(tiny_sigma):
    import jaxgen

    pipe = jaxgen.PixArtSigmaPipeline.from_pretrained(tiny_sigma[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "prompt,height,width,guidance_scale,n",
    [
        (["a photo of a cat", "an astronaut riding a horse on the moon"], 1024, 768, 4.5, 1),  # binned to 1.33's
        ("a small cactus with a happy face", 600, 1300, 1.0, 2),  # binned to 0.46's... and resized back
    ],
    ids=["tall-cfg-2prompts", "wide-nocfg-2images"],
)
def test_pipeline_matches_diffusers_with_binning(tiny_sigma, sigma_pipe, prompt, height, width, guidance_scale, n):
    import torch

    _, torch_pipe = tiny_sigma
    (binned_h, binned_w), _ = sigma_pipe.generation_size(height, width, True)
    assert (binned_h, binned_w) != (height, width)  # binning is exercised, and the resize back
    rows = (1 if isinstance(prompt, str) else len(prompt)) * n
    latents = np.random.default_rng(7).standard_normal((rows, binned_h // 8, binned_w // 8, 4)).astype(np.float32)
    common = dict(prompt=prompt, height=height, width=width, guidance_scale=guidance_scale, num_inference_steps=3,
                  num_images_per_prompt=n, output_type="np")
    ours = np.asarray(sigma_pipe(latents=latents, **common).images)
    with torch.no_grad():
        ref = torch_pipe(latents=torch.from_numpy(nhwc_to_nchw(latents).copy()), **common).images
    assert ours.shape == ref.shape == (rows, height, width, 3)
    assert rel_l2(ours, ref) < 1e-4


def test_what_sigma_sets_otherwise_than_alpha(tiny_sigma, sigma_pipe):
    """300 T5 tokens by default (diffusers' Σ default; α's is 120), no micro-conditions even at sample_size 128,
    and the 2K model's 2048 px bins, which α's pipeline refuses as diffusers' does."""
    import torch
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN
    from diffusers.image_processor import PixArtImageProcessor

    import jaxgen
    from jaxgen.pipelines.aspect_ratio_bins import bins_for_sample_size

    embeds, mask, negative, negative_mask = sigma_pipe.encode_prompt("a photo of a cat")
    _, torch_pipe = tiny_sigma
    with torch.no_grad():
        ref = torch_pipe.encode_prompt("a photo of a cat", device="cpu")
    assert embeds.shape[1] == mask.shape[1] == negative.shape[1] == ref[0].shape[1] == 300
    assert rel_l2(np.asarray(embeds), ref[0].numpy()) < 1e-5
    cond = sigma_pipe._conditioning(embeds, mask, negative, negative_mask, batch=sigma_pipe.batch("a", None, 1), height=1024,
                                    width=1024)
    assert "added_cond_kwargs" not in cond
    for height, width in ((2048, 2048), (1500, 3000), (4000, 900)):
        ours = jaxgen.pipelines.aspect_ratio_bins.classify_height_width_bin(
            height, width, ratios=bins_for_sample_size(256, jaxgen.PixArtSigmaPipeline.aspect_ratio_bins))
        assert ours == PixArtImageProcessor.classify_height_width_bin(height, width, ASPECT_RATIO_2048_BIN)
    with pytest.raises(ValueError, match="Invalid sample size"):
        bins_for_sample_size(256, jaxgen.PixArtAlphaPipeline.aspect_ratio_bins)


def test_users_reach_it_by_the_checkpoints_class_name(tiny_sigma, sigma_pipe, tmp_path):
    """``AutoPipelineForText2Image`` and ``jaxgen generate`` pick PixArtSigmaPipeline from the folder's
    model_index.json; ``Other(**pipe.components)`` builds α on the same weights without reloading."""
    import PIL.Image

    import jaxgen
    from jaxgen import registry
    from jaxgen.cli import main

    auto = jaxgen.AutoPipelineForText2Image.from_pretrained(tiny_sigma[0])
    assert type(auto) is jaxgen.PixArtSigmaPipeline
    assert registry.command_line_pipeline("text-to-image", "PixArtSigmaPipeline") == "PixArtSigmaPipeline"
    out = tmp_path / "sigma.png"
    assert main(["generate", "a cat", "--model", str(tiny_sigma[0]), "--steps", "1", "--height", "256", "--width",
                 "384", "--no-resolution-binning", "--out", str(out)]) == 0
    assert PIL.Image.open(out).size == (384, 256)
    alpha = jaxgen.PixArtAlphaPipeline(**sigma_pipe.components)
    assert alpha.default_max_sequence_length == 120 and alpha.transformer is sigma_pipe.transformer


def test_the_2k_models_attention_takes_the_flash_kernels():
    """PixArt-Σ-2K at 2048 px: self-attention over 16,384 tokens (16 heads of 72) on the guidance batch of 2, and
    cross-attention to 300 caption tokens under a padding mask; cuDNN takes both on a CUDA GPU in bfloat16, splash
    on a TPU (head_dim padded to 128), so no 16,384^2 score matrix is formed (XLA's would be 16 GiB a layer)."""
    import jax
    import jax.numpy as jnp

    from jaxgen.nn.attention import choose_implementation

    q = jax.ShapeDtypeStruct((2, 16384, 16, 72), jnp.bfloat16)
    caption = jax.ShapeDtypeStruct((2, 300, 16, 72), jnp.bfloat16)
    mask = jax.ShapeDtypeStruct((2, 1, 1, 300), jnp.bool_)  # over keys, as the transformer builds it
    for platform, kernel in (("cuda", "cudnn"), ("tpu", "splash")):
        assert choose_implementation(q, q, q, platform=platform) == kernel
        assert choose_implementation(q, caption, caption, mask, platform=platform) == kernel
