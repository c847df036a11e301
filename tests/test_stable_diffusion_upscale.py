"""StableDiffusionUpscalePipeline (the x4 upscaler, IF's stage III): parity with diffusers image for
image, tiled VAE decoding, the low-res noise, bad inputs.

One tiny diffusers pipeline (CLIP text model and a tiny BPE tokenizer, an upscaler-like UNet with
7 input channels and 1000 class embeddings, a two-level VAE with scaling_factor 0.08333, the real
checkpoint's DDIM and low-res DDPM scheduler configs) is saved with save_pretrained and loaded by
jaxgen. Every sampling call uses 12x12 low-res images and 3 steps, so the sampling loop compiles
once (with guidance) for the whole file.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import PIL.Image
import pytest

from tests.conftest import make_clip_tokenizer, nchw_to_nhwc, nhwc_to_nchw, perturb_, rel_l2

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

STEPS = 3
SIZE = 12  # low-res side; the VAE (2 levels) decodes to 24
REPO = "stabilityai__stable-diffusion-x4-upscaler"
SAFETY_P_BIAS = 0.0


def build_tiny_upscale(folder: Path):
    """Build, perturb and ``save_pretrained`` a tiny x4-upscaler-like diffusers pipeline; returns it."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.conftest import REAL_CONFIGS

    folder = Path(folder)
    torch.manual_seed(0)
    tokenizer = make_clip_tokenizer(folder / "_tok")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=12, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    unet = UNet2DConditionModel(
        sample_size=SIZE, in_channels=7, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
        cross_attention_dim=32, num_class_embeds=1000, only_cross_attention=(True, True, False),
        use_linear_projection=True, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4, latent_channels=4,
        sample_size=16, scaling_factor=0.08333,  # tiles of 16 pixels / 8 latents
    )
    for i, m in enumerate((text_encoder, unet, vae)):
        perturb_(m, seed=i)
    configs = REAL_CONFIGS / REPO
    scheduler = DDIMScheduler.from_config(json.loads((configs / "scheduler" / "scheduler_config.json").read_text()))
    low_res = DDPMScheduler.from_config(json.loads((configs / "low_res_scheduler" / "scheduler_config.json").read_text()))
    pipe = StableDiffusionUpscalePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          low_res_scheduler=low_res, scheduler=scheduler, max_noise_level=350)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def tiny_upscale(tmp_path_factory, real_configs):
    """(folder, diffusers pipeline, jaxgen pipeline) of a tiny x4-upscaler-like pipeline."""
    import jaxgen

    folder = tmp_path_factory.mktemp("tiny_upscale")
    pipe = build_tiny_upscale(folder)
    ours = jaxgen.StableDiffusionUpscalePipeline.from_pretrained(folder)
    ours.set_progress_bar_config(disable=True)
    return folder, pipe, ours


def _images(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (batch, SIZE, SIZE, 3)).astype(np.float32)


def _run_both(tiny_upscale, monkeypatch, *, prompt, image, num_images_per_prompt=1, seed=0, output_type="np", **kw):
    """Both pipelines on the same latents and the same low-res noise (jaxgen's first draw, handed to
    diffusers through its ``randn_tensor``); returns both outputs (``images`` float32 NHWC)."""
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale as upscale_module

    _, torch_pipe, pipe = tiny_upscale
    batch = (1 if isinstance(prompt, str) else len(prompt))
    latents = np.random.default_rng(seed + 100).standard_normal(
        (batch * num_images_per_prompt, SIZE, SIZE, 4)).astype(np.float32)
    image_key = jax.random.split(jax.random.key(seed), 3)[0]  # the pipeline's first draw: the image noise
    noise = np.asarray(jax.random.normal(image_key, (batch, SIZE, SIZE, 3)))
    draws = []

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        draws.append(tuple(shape))
        return torch.from_numpy(nhwc_to_nchw(noise).copy()).to(dtype)

    monkeypatch.setattr(upscale_module, "randn_tensor", fake_randn)
    common = dict(prompt=prompt, num_inference_steps=STEPS, num_images_per_prompt=num_images_per_prompt,
                  output_type=output_type, **kw)
    ours = pipe(image=image, latents=latents, rng=seed, **common)
    torch_image = image if isinstance(image, (PIL.Image.Image, list)) else image.copy()
    with torch.no_grad():
        ref = torch_pipe(image=torch_image, latents=torch.from_numpy(nhwc_to_nchw(latents).copy()), **common)
    assert draws == [(batch, 3, SIZE, SIZE)]  # only the image noise was drawn
    return ours, ref


def _images_of_both(tiny_upscale, monkeypatch, **kw) -> tuple[np.ndarray, np.ndarray]:
    ours, ref = _run_both(tiny_upscale, monkeypatch, **kw)
    assert ours.nsfw_content_detected is None and ref.nsfw_content_detected is None
    ours, ref = np.asarray(ours.images), np.asarray(ref.images)
    print(f"upscale pipeline vs diffusers: rel L2 {rel_l2(ours, ref):.2e}")
    return ours, ref


def test_pipeline_matches_diffusers(tiny_upscale, monkeypatch):
    ours, ref = _images_of_both(tiny_upscale, monkeypatch, prompt=["a cat", "the mat"], image=_images(2, 0))
    assert ours.shape == ref.shape == (2, 2 * SIZE, 2 * SIZE, 3)
    assert ours.dtype == np.float32
    assert rel_l2(ours, ref) < 1e-4


def test_pil_image_negative_prompt_and_noise_level(tiny_upscale, monkeypatch):
    # a 13x12 PIL image: resized (bicubic) to 12x12 by both; two images per prompt
    image = PIL.Image.fromarray((_images(1, 1)[0] * 255).astype(np.uint8)).resize((SIZE + 1, SIZE))
    ours, ref = _images_of_both(tiny_upscale, monkeypatch, prompt="a white cat", image=image, num_images_per_prompt=2,
                          negative_prompt="blurry", noise_level=150, seed=1)
    assert ours.shape == (2, 2 * SIZE, 2 * SIZE, 3)
    assert rel_l2(ours, ref) < 1e-4


def test_encode_prompt_matches_diffusers_and_clip_skip(tiny_upscale):
    _, torch_pipe, pipe = tiny_upscale
    ours = pipe.encode_prompt(["a cat", "the mat"], 2, True, negative_prompt=["blurry", "dark"])
    with torch.no_grad():
        ref = torch_pipe.encode_prompt(["a cat", "the mat"], "cpu", 2, True, negative_prompt=["blurry", "dark"])
    for a, b in zip(ours, ref):
        assert a.shape == tuple(b.shape) == (4, 12, 32)
        assert rel_l2(a, b.numpy()) < 1e-5
    # clip_skip: a hidden layer through the final norm (diffusers reaches it as text_encoder.text_model,
    # which transformers 5 no longer has, so the reference is computed here)
    skipped, none = pipe.encode_prompt("a white cat", 1, False, clip_skip=1)
    ids = torch.from_numpy(torch_pipe.tokenizer(["a white cat"], padding="max_length", max_length=12,
                                                truncation=True, return_tensors="np").input_ids)
    with torch.no_grad():
        te = torch_pipe.text_encoder
        hidden = te(ids, output_hidden_states=True).hidden_states[-2]
        expected = getattr(te, "text_model", te).final_layer_norm(hidden).numpy()
    assert none is None
    assert rel_l2(skipped, expected) < 1e-5


def test_tiled_vae_decode_matches_diffusers(tiny_upscale, monkeypatch):
    _, torch_pipe, pipe = tiny_upscale
    pipe.enable_vae_tiling()
    torch_pipe.vae.enable_tiling()  # 12 latents > the 8-latent tiles: two tiles a side, blended
    try:
        ours, ref = _images_of_both(tiny_upscale, monkeypatch, prompt=["a cat", "the mat"], image=_images(2, 0))
    finally:
        pipe.disable_vae_tiling()
        torch_pipe.vae.disable_tiling()
    untiled, _ = _images_of_both(tiny_upscale, monkeypatch, prompt=["a cat", "the mat"], image=_images(2, 0))
    assert rel_l2(ours, ref) < 1e-4
    assert rel_l2(untiled, ref) > 1e-3  # tiling did change the image


def test_tiled_decode_model_partial_tiles(tiny_upscale):
    # uneven latents: partial tiles at the bottom and right edges, blended into full ones
    folder, torch_pipe, _ = tiny_upscale
    from jaxgen.models import AutoencoderKL

    module, params = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    z = torch.randn(1, 4, 14, 10, generator=torch.Generator().manual_seed(0))
    torch_pipe.vae.enable_tiling()
    try:
        with torch.no_grad():
            ref = nchw_to_nhwc(torch_pipe.vae.decode(z).sample)
    finally:
        torch_pipe.vae.disable_tiling()
    decode = jax.jit(lambda p, z: module.apply({"params": p}, z, method="tiled_decode").sample)
    ours = np.asarray(decode(params, nchw_to_nhwc(z)))
    assert ours.shape == ref.shape == (1, 28, 20, 3)
    print(f"tiled_decode vs diffusers: rel L2 {rel_l2(ours, ref):.2e}")
    assert rel_l2(ours, ref) < 1e-5


def test_seeds_outputs_and_config(tiny_upscale):
    folder, _, pipe = tiny_upscale
    common = dict(prompt="a cat", image=_images(1, 2), num_inference_steps=STEPS)
    a = pipe(rng=0, output_type="np", **common).images
    b = pipe(rng=jax.random.key(0), output_type="np", **common).images
    c = pipe(rng=1, output_type="np", **common).images
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    pil = pipe(rng=0, **common).images
    assert len(pil) == 1 and pil[0].size == (2 * SIZE, 2 * SIZE)
    np.testing.assert_array_equal(np.asarray(pil[0]), np.round(a[0] * 255).astype(np.uint8))
    images, nsfw = pipe(rng=0, output_type="np", return_dict=False, **common)
    np.testing.assert_array_equal(images, a)
    assert nsfw is None
    assert pipe.config.max_noise_level == 350 and pipe.vae.config.scaling_factor == 0.08333
    assert type(pipe)(**pipe.components).config.max_noise_level == 350


def test_warmup_compiles_what_the_call_runs(tiny_upscale):
    from tests.conftest import count_compiles

    _, _, pipe = tiny_upscale
    assert pipe.warmup(SIZE, SIZE, num_inference_steps=STEPS, batch_size=3, output_type="np") > 0  # a new batch size
    with count_compiles() as compiled:
        images = pipe(prompt=["a cat", "the mat", "a hat"], image=_images(3, 7), num_inference_steps=STEPS, rng=2,
                      output_type="np").images
    assert compiled() == 0 and images.shape == (3, 2 * SIZE, 2 * SIZE, 3)


def test_vae_scaling_factor_forced_as_diffusers(tiny_upscale, caplog):
    import dataclasses

    _, _, pipe = tiny_upscale
    module, variables = pipe.vae.unbind()
    vae = module.clone(config=dataclasses.replace(module.config, scaling_factor=0.18215)).bind(variables)
    with caplog.at_level("WARNING"):
        other = type(pipe)(**{**pipe.components, "vae": vae})
    assert other.vae.config.scaling_factor == 0.08333
    assert "scaling_factor" in caplog.text


def test_stage_iii_with_if_safety_modules(tiny_upscale, monkeypatch):
    # IF's safety checker, CLIP image processor and watermarker passed in, as diffusers documents the cascade
    import transformers
    from diffusers.pipelines.deepfloyd_if.safety_checker import IFSafetyChecker as TorchIFSafetyChecker
    from diffusers.pipelines.deepfloyd_if.watermark import IFWatermarker as TorchIFWatermarker

    from jaxgen import StableDiffusionUpscalePipeline
    from jaxgen.models import IFSafetyChecker, IFWatermarker

    folder, torch_pipe, pipe = tiny_upscale
    torch.manual_seed(0)
    checker = perturb_(TorchIFSafetyChecker(transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                         vocab_size=50, max_position_embeddings=8, bos_token_id=0, eos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                           image_size=16, patch_size=8, projection_dim=8),
    )), scale=0.3)
    with torch.no_grad():  # nothing flagged: diffusers' upscaler fails on a flagged image (a torch/numpy mix-up)
        checker.p_head.bias.fill_(-10.0)
        checker.w_head.bias.fill_(-10.0)
    checker.save_pretrained(folder / "_safety")
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    marker = TorchIFWatermarker()
    marker.watermark_image.copy_(torch.rand(62, 62, 4, generator=torch.Generator().manual_seed(0)) * 255)
    safety = dict(safety_checker=checker, feature_extractor=processor, watermarker=marker)
    module, params = IFSafetyChecker.from_pretrained(folder / "_safety")
    ours_safety = dict(safety_checker=(module, params), feature_extractor=processor,
                       watermarker=IFWatermarker(marker.watermark_image.numpy()))
    stage_3 = StableDiffusionUpscalePipeline(**{**pipe.components, **ours_safety})
    stage_3.set_progress_bar_config(disable=True)
    original = {k: getattr(torch_pipe, k, None) for k in safety}
    torch_pipe.register_modules(**safety)
    try:
        ours, ref = _run_both((folder, torch_pipe, stage_3), monkeypatch, prompt=["a cat", "the mat"],
                              image=_images(2, 0), output_type="pil")
    finally:
        torch_pipe.register_modules(**original)
    assert ours.nsfw_content_detected == ref.nsfw_content_detected == [False, False]
    for a, b in zip(ours.images, ref.images):  # watermarked PIL images
        assert a.size == b.size == (2 * SIZE, 2 * SIZE)
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1

    # an NSFW image comes back black (not denormalised), as diffusers intends
    flagged = jax.tree_util.tree_map(lambda x: x, params)
    flagged["p_head"]["bias"] = flagged["p_head"]["bias"] + 20.0
    stage_3.safety_checker = module.bind({"params": flagged})
    images, nsfw = stage_3(prompt=["a cat", "the mat"], image=_images(2, 0), num_inference_steps=STEPS,
                           output_type="np", return_dict=False)
    assert nsfw == [True, True] and not np.any(images)


BAD_INPUTS = [
    (dict(noise_level=351), r"`noise_level` has to be <= 350 but is 351"),
    (dict(noise_level=-1), r"`noise_level` has to be >= 0"),
    (dict(noise_level=2.5), r"`noise_level` has to be an integer"),
    (dict(image="cat.png"), r"`image` has to be of type"),
    (dict(image=None), r"`image` input cannot be undefined"),
    (dict(image=[PIL.Image.new("RGB", (SIZE, SIZE))] * 2), r"`prompt` has batch size 1 and `image` has batch size 2"),
    (dict(callback_steps=0), r"`callback_steps` has to be a positive integer"),
    (dict(prompt=None), r"Provide either `prompt` or `prompt_embeds`"),
    (dict(latents=np.zeros((1, 24, 24, 4), np.float32)), r"Unexpected latents shape"),
    (dict(prompt=["a cat"], negative_prompt=["a", "b"]), r"`negative_prompt`: .* has batch size 2"),
]
BAD_IDS = ["noise_level-high", "noise_level-negative", "noise_level-float", "image-type", "image-none", "image-batch",
           "callback_steps", "no-prompt", "latents-shape", "negative-batch"]


@pytest.mark.parametrize("kwargs,match", BAD_INPUTS, ids=BAD_IDS)
def test_bad_inputs(tiny_upscale, kwargs, match):
    _, _, pipe = tiny_upscale
    args = {"prompt": "a cat", "image": _images(1, 0), "num_inference_steps": STEPS, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(**args)


def test_noise_level_limit_from_config(tiny_upscale):
    from jaxgen import StableDiffusionUpscalePipeline

    _, _, pipe = tiny_upscale
    strict = StableDiffusionUpscalePipeline(**pipe.components, max_noise_level=10)
    with pytest.raises(ValueError, match="<= 10 but is 20"):
        strict(prompt="a cat", image=_images(1, 0))
    wide = StableDiffusionUpscalePipeline(**pipe.components, max_noise_level=5000)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        wide(prompt="a cat", image=_images(1, 0), noise_level=1000)
