"""DeepFloyd IF's six pipelines end to end against diffusers: tiny random-weight pipelines saved with
save_pretrained and loaded by jaxgen, the same noise on both sides, image for image with DDIM.

Sizes: stage I 8x8 pixels, stage II 8 -> 32 (x4, as 64 -> 256); 2-level UNets of the IF-I / IF-II kinds
(added-KV attention, text pooling, scale-shift, learned range; noise-level class embedding), so that
the few compiled loops (stage I: DDIM, DDPM, DDIM inpainting; stage II: DDIM, DDIM inpainting) stay cheap.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch

from tests.conftest import REAL_CONFIGS, make_t5_tokenizer, nchw_to_nhwc, nhwc_to_nchw, perturb_, rel_l2

STEPS = 3  # every DDIM run: one compiled loop per (stage, inpainting or not)
TOL = 1e-4
PROMPTS = ["a photo of a cat", "an astronaut riding a horse"]


def _unet_config(stage2: bool) -> dict:
    from jaxgen.models.unet_2d_condition import UNet2DConditionModelConfig

    levels = dict(
        block_out_channels=(16, 32), down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    )
    if not stage2:  # IF-I: 3 -> 6 channels (epsilon, learned-range variance)
        return UNet2DConditionModelConfig.tiny(**levels).to_dict()
    return UNet2DConditionModelConfig.tiny(  # IF-II: image ++ upscaled image, noise level as class label
        sample_size=32, in_channels=6, out_channels=6, layers_per_block=(1, 2), class_embed_type="timestep",
        only_cross_attention=True, time_embedding_dim=32, time_embedding_act_fn="gelu", resnet_skip_time_act=True,
        resnet_out_scale_factor=1 / 0.7071, mid_block_scale_factor=1 / 0.7071, **levels,
    ).to_dict()


def _ddpm(repo: str, name: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(json.loads((REAL_CONFIGS / repo / name / "scheduler_config.json").read_text()))


def _build(folder: Path, stage2: bool, seed: int):
    """A tiny diffusers IF (stage I or II) pipeline, perturbed, saved with save_pretrained; returns it."""
    import diffusers
    import transformers
    from diffusers.pipelines.deepfloyd_if.safety_checker import IFSafetyChecker
    from diffusers.pipelines.deepfloyd_if.watermark import IFWatermarker

    torch.manual_seed(seed)
    tokenizer = make_t5_tokenizer(folder / "_spm")
    text_encoder = perturb_(transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=24, d_kv=8, d_ff=48, num_layers=1, num_heads=3,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )), seed=seed)
    unet = perturb_(diffusers.UNet2DConditionModel(**_unet_config(stage2)), seed=seed + 1)
    checker = perturb_(IFSafetyChecker(transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                         vocab_size=50, max_position_embeddings=8, bos_token_id=0, eos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                           image_size=16, patch_size=8, projection_dim=8),
        projection_dim=8,
    )), seed=seed + 2)
    with torch.no_grad():  # random heads would black out random images: nothing is flagged here
        checker.p_head.bias.fill_(-10.0)
        checker.w_head.bias.fill_(-10.0)
    watermarker = IFWatermarker()
    watermarker.watermark_image.copy_(torch.rand((62, 62, 4), generator=torch.Generator().manual_seed(seed)) * 255)
    components = dict(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, safety_checker=checker, watermarker=watermarker,
        feature_extractor=transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
    )
    if stage2:
        pipe = diffusers.IFSuperResolutionPipeline(
            scheduler=_ddpm("DeepFloyd__IF-II-L-v1.0", "scheduler"),
            image_noising_scheduler=_ddpm("DeepFloyd__IF-II-L-v1.0", "image_noising_scheduler"), **components,
        )
    else:
        pipe = diffusers.IFPipeline(scheduler=_ddpm("DeepFloyd__IF-I-XL-v1.0", "scheduler"), **components)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """(folder, torch IFPipeline, jaxgen IFPipeline)."""
    from jaxgen import IFPipeline

    folder = tmp_path_factory.mktemp("if_stage1")
    torch_pipe = _build(folder, stage2=False, seed=0)
    pipe = IFPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, torch_pipe, pipe


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """(folder, torch IFSuperResolutionPipeline, jaxgen IFSuperResolutionPipeline)."""
    from jaxgen import IFSuperResolutionPipeline

    folder = tmp_path_factory.mktemp("if_stage2")
    torch_pipe = _build(folder, stage2=True, seed=10)
    pipe = IFSuperResolutionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, torch_pipe, pipe


def _ddim_pair(torch_pipe, pipe):
    """DDIM swapped in on both sides. diffusers' IF reads `variance_type` from any scheduler's config and
    hands a DDIM made from IF's config (learned_range kept) the variance too, which DDIM cannot take:
    there it needs "fixed_small"; jaxgen's IFDenoiser asks the scheduler itself (see IFDenoiser)."""
    from diffusers import DDIMScheduler as TorchDDIM

    from jaxgen import DDIMScheduler

    config = {**torch_pipe.scheduler.config, "variance_type": "fixed_small"}
    return TorchDDIM.from_config(config), DDIMScheduler.from_config(pipe.scheduler.config)


def _torch(cls_name: str, torch_pipe, scheduler):
    import diffusers

    other = getattr(diffusers, cls_name)(**{**torch_pipe.components, "scheduler": scheduler})
    other.set_progress_bar_config(disable=True)
    return other


def _jax(cls_name: str, pipe, scheduler):
    import jaxgen

    other = getattr(jaxgen, cls_name)(**{**pipe.components, "scheduler": scheduler})
    other.set_progress_bar_config(disable=True)
    return other


def _noise(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _feed_torch_noise(monkeypatch, module_name: str, *arrays: np.ndarray) -> list:
    """diffusers draws its noise with ``randn_tensor`` in the pipeline module: hand it ours (NHWC), in order."""
    import importlib

    module = importlib.import_module(f"diffusers.pipelines.deepfloyd_if.{module_name}")
    queue = [torch.from_numpy(nhwc_to_nchw(a).copy()) for a in arrays]

    def randn_tensor(shape, **kwargs):
        noise = queue.pop(0)
        assert tuple(noise.shape) == tuple(shape), (noise.shape, shape)
        return noise

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)
    return queue


def _pil(seed: int, size: tuple[int, int], mode: str = "RGB") -> PIL.Image.Image:
    channels = 3 if mode == "RGB" else 1
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return PIL.Image.fromarray(array if channels == 3 else array[..., 0], mode)


# --------------------------------------------------------------------------- stage I


def test_text_to_image_ddim_matches_diffusers(stage1, monkeypatch):
    _, torch_pipe, pipe = stage1
    torch_ddim, ddim = _ddim_pair(torch_pipe, pipe)
    ref_pipe, ours_pipe = _torch("IFPipeline", torch_pipe, torch_ddim), _jax("IFPipeline", pipe, ddim)
    latents = _noise(0, (4, 8, 16, 3))  # 8x16: the img2img test's size, so that both run one compiled loop
    monkeypatch.setattr(ref_pipe, "prepare_intermediate_images", lambda *a, **k: torch.from_numpy(nhwc_to_nchw(latents).copy()))
    common = dict(prompt=PROMPTS, negative_prompt=["", "a dog"], num_inference_steps=STEPS, num_images_per_prompt=2,
                  height=8, width=16, output_type="np")
    ours = ours_pipe(latents=latents, **common)
    with torch.no_grad():
        ref = ref_pipe(**common)
    assert ours.images.shape == ref.images.shape == (4, 8, 16, 3) and ours.images.dtype == np.float32
    err = rel_l2(ours.images, ref.images)
    print(f"IFPipeline DDIM vs diffusers: rel L2 {err:.2e}")
    assert err < TOL
    assert ours.nsfw_detected == ref.nsfw_detected == [False] * 4
    assert ours.watermark_detected == ref.watermark_detected == [False] * 4


def test_img2img_ddim_matches_diffusers(stage1, monkeypatch):
    """IFImg2ImgPipeline: IF's resize of a PIL image (12x8 -> 16x8), strength -> the schedule's last
    steps, the image noised at the first of them; the loop of the text-to-image test (start traced)."""
    _, torch_pipe, pipe = stage1
    torch_ddim, ddim = _ddim_pair(torch_pipe, pipe)
    ref_pipe, ours_pipe = _torch("IFImg2ImgPipeline", torch_pipe, torch_ddim), _jax("IFImg2ImgPipeline", pipe, ddim)
    image = _pil(1, (12, 8))
    noise = _noise(1, (2, 8, 16, 3))
    _feed_torch_noise(monkeypatch, "pipeline_if_img2img", noise)
    common = dict(prompt="a photo of a cat", image=image, strength=0.7, num_inference_steps=STEPS,
                  num_images_per_prompt=2, output_type="np")
    ours = ours_pipe(latents=noise, **common)
    with torch.no_grad():
        ref = ref_pipe(**common)
    assert ours.images.shape == ref.images.shape == (2, 8, 16, 3)
    err = rel_l2(ours.images, ref.images)
    print(f"IFImg2ImgPipeline DDIM vs diffusers: rel L2 {err:.2e}")
    assert err < TOL


def test_inpainting_ddim_matches_diffusers(stage1, monkeypatch):
    """IFInpaintingPipeline: mask binarized at 0.5 (1 = repaint), the known pixels blended back after
    every step inside the compiled loop; one mask for two prompts; strength 0.7: the last 2 of 3 steps."""
    _, torch_pipe, pipe = stage1
    torch_ddim, ddim = _ddim_pair(torch_pipe, pipe)
    ref_pipe, ours_pipe = _torch("IFInpaintingPipeline", torch_pipe, torch_ddim), _jax("IFInpaintingPipeline", pipe, ddim)
    image = [_pil(2, (8, 8)), _pil(3, (8, 8))]
    mask = _pil(4, (8, 8), mode="L")
    noise = _noise(2, (2, 8, 8, 3))
    _feed_torch_noise(monkeypatch, "pipeline_if_inpainting", noise)
    common = dict(prompt=PROMPTS, image=image, mask_image=mask, strength=0.7, num_inference_steps=STEPS,
                  output_type="np")
    seen = []
    ours = ours_pipe(latents=noise, callback=lambda i, t, x: seen.append((int(i), int(t), x.shape)), **common)
    jax.effects_barrier()
    with torch.no_grad():
        ref = ref_pipe(**common)
    # int(3 * 0.7) = 2 steps: the last two of DDIM's [666, 333, 0], counted from 0 as diffusers' callback
    assert sorted(seen) == [(0, 333, (2, 8, 8, 3)), (1, 0, (2, 8, 8, 3))]
    err = rel_l2(ours.images, ref.images)
    print(f"IFInpaintingPipeline DDIM vs diffusers: rel L2 {err:.2e}")
    assert ours.images.shape == (2, 8, 8, 3) and err < TOL
    # the pixels outside the mask are the input image's
    keep = (np.asarray(mask)[..., None] / 255.0 < 0.5).repeat(3, axis=-1)
    original = np.stack([np.asarray(i) for i in image]).astype(np.float32) / 255.0
    np.testing.assert_allclose(ours.images[:, keep], original[:, keep], atol=2e-3)


def test_ddpm_seeds_and_outputs(stage1):
    """The IF-I scheduler config (DDPM, learned range, dynamic thresholding): same rng, same image;
    other rng, other image; "pil", "np" and "latent" outputs of one run agree."""
    _, _, pipe = stage1
    common = dict(prompt="a photo of a cat", num_inference_steps=2)
    a = pipe(rng=0, output_type="np", **common)
    b = pipe(rng=jax.random.key(0), output_type="np", **common)
    c = pipe(rng=1, output_type="np", **common)
    np.testing.assert_array_equal(a.images, b.images)
    assert np.isfinite(a.images).all() and not np.allclose(a.images, c.images)
    raw = pipe(rng=0, output_type="latent", **common)
    assert raw.images.shape == (1, 8, 8, 3) and raw.nsfw_detected is None and raw.watermark_detected is None
    np.testing.assert_allclose(np.clip(np.asarray(raw.images) / 2 + 0.5, 0, 1), a.images, atol=1e-6)
    pil, nsfw, watermark = pipe(rng=0, output_type="pil", return_dict=False, **common)
    assert len(pil) == 1 and pil[0].size == (8, 8) and pil[0].mode == "RGB" and nsfw == watermark == [False]
    np.testing.assert_array_equal(np.asarray(pil[0]), np.round(a.images[0] * 255).astype(np.uint8))


def test_encode_prompt_matches_diffusers(stage1):
    _, torch_pipe, pipe = stage1
    ours = pipe.encode_prompt(PROMPTS, True, num_images_per_prompt=2, negative_prompt=["a dog", ""], clean_caption=True)
    with torch.no_grad():
        ref = torch_pipe.encode_prompt(PROMPTS, True, num_images_per_prompt=2, negative_prompt=["a dog", ""], clean_caption=True)
    for a, b in zip(ours, ref):
        assert a.shape == tuple(b.shape) == (4, 77, 24)
        assert rel_l2(a, b.numpy()) < 1e-5
    embeds, negative = pipe.encode_prompt("a photo of a cat", False)
    assert embeds.shape == (1, 77, 24) and negative is None


# --------------------------------------------------------------------------- stage II


def test_upscale_and_noise_matches_diffusers(stage2):
    """Stage II's conditioning image: bilinear with aligned corners (x4 and an odd ratio), noised by the
    image-noising scheduler at noise_level."""
    import torch.nn.functional as F

    from jaxgen.pipelines.deepfloyd_if import upscale_and_noise

    _, torch_pipe, pipe = stage2
    for (h, w), (height, width), level in (((8, 8), (32, 32), 250), ((5, 7), (32, 24), 999)):
        image = np.random.default_rng(h).uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
        noise = _noise(w, (2, height, width, 3))
        levels = np.full((2,), level, np.int32)
        ours = upscale_and_noise(jnp.asarray(image), jnp.asarray(noise), jnp.asarray(levels), height=height,
                                 width=width, scheduler=pipe.image_noising_scheduler)
        up = F.interpolate(torch.from_numpy(nhwc_to_nchw(image).copy()), (height, width), mode="bilinear", align_corners=True)
        ref = torch_pipe.image_noising_scheduler.add_noise(up, torch.from_numpy(nhwc_to_nchw(noise).copy()),
                                                           torch.from_numpy(levels).long())
        err = rel_l2(ours, nchw_to_nhwc(ref))
        print(f"upscale_and_noise {h}x{w} -> {height}x{width}: rel L2 {err:.2e}")
        assert err < 1e-6


def _stage2_noise(seed: int, shape) -> tuple[np.ndarray, np.ndarray]:
    """(the initial noise we pass as latents, the upscaled image's noise jaxgen draws from rng=seed)."""
    from jaxgen.pipelines.deepfloyd_if import _split_rng

    return _noise(seed, shape), np.asarray(jax.random.normal(_split_rng(seed)[1], shape))


def test_super_resolution_ddim_matches_diffusers(stage2, monkeypatch):
    _, torch_pipe, pipe = stage2
    torch_ddim, ddim = _ddim_pair(torch_pipe, pipe)
    ref_pipe, ours_pipe = _torch("IFSuperResolutionPipeline", torch_pipe, torch_ddim), _jax("IFSuperResolutionPipeline", pipe, ddim)
    low_res = np.random.default_rng(5).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)  # [-1, 1], as diffusers takes arrays
    latents, up_noise = _stage2_noise(5, (2, 32, 32, 3))
    _feed_torch_noise(monkeypatch, "pipeline_if_superresolution", latents, up_noise)
    common = dict(prompt=PROMPTS, image=low_res, num_inference_steps=STEPS, noise_level=100, output_type="np")
    ours = ours_pipe(latents=latents, rng=5, **common)
    with torch.no_grad():
        ref = ref_pipe(**common)
    err = rel_l2(ours.images, ref.images)
    print(f"IFSuperResolutionPipeline DDIM vs diffusers: rel L2 {err:.2e}")
    assert ours.images.shape == ref.images.shape == (2, 32, 32, 3) and err < TOL
    # a stage I "np" output ([0, 1]) is the same image as its [-1, 1] form
    same = ours_pipe(latents=latents, rng=5, **{**common, "image": low_res / 2 + 0.5})
    assert rel_l2(same.images, ours.images) < TOL
    # the cascade's way: stage II loaded without T5, given the embeddings
    embeds, negative = ours_pipe.encode_prompt(PROMPTS)
    no_t5 = _jax("IFSuperResolutionPipeline", ours_pipe, ddim)
    no_t5.text_encoder = no_t5.tokenizer = None
    common.pop("prompt")
    again = no_t5(prompt_embeds=embeds, negative_prompt_embeds=negative, latents=latents, rng=5, **common)
    np.testing.assert_array_equal(again.images, ours.images)
    with pytest.raises(ValueError, match="prompt_embeds"):
        no_t5(prompt=PROMPTS, latents=latents, rng=5, **common)


def test_img2img_super_resolution_ddim_matches_diffusers(stage2, monkeypatch):
    _, torch_pipe, pipe = stage2
    torch_ddim, ddim = _ddim_pair(torch_pipe, pipe)
    name = "IFImg2ImgSuperResolutionPipeline"
    ref_pipe, ours_pipe = _torch(name, torch_pipe, torch_ddim), _jax(name, pipe, ddim)
    low_res = [_pil(6, (8, 8))]
    original = _pil(7, (40, 40))  # IF's resize to the stage II sample size: 32x32
    latents, up_noise = _stage2_noise(6, (1, 32, 32, 3))
    _feed_torch_noise(monkeypatch, "pipeline_if_img2img_superresolution", latents, up_noise)
    common = dict(prompt="a photo of a cat", image=low_res, original_image=original, strength=0.7,
                  num_inference_steps=STEPS, output_type="np")
    ours = ours_pipe(latents=latents, rng=6, **common)
    with torch.no_grad():
        ref = ref_pipe(**common)
    err = rel_l2(ours.images, ref.images)
    print(f"IFImg2ImgSuperResolutionPipeline DDIM vs diffusers: rel L2 {err:.2e}")
    assert ours.images.shape == (1, 32, 32, 3) and err < TOL


def test_inpainting_super_resolution_ddim_matches_diffusers(stage2, monkeypatch):
    _, torch_pipe, pipe = stage2
    torch_ddim, ddim = _ddim_pair(torch_pipe, pipe)
    name = "IFInpaintingSuperResolutionPipeline"
    ref_pipe, ours_pipe = _torch(name, torch_pipe, torch_ddim), _jax(name, pipe, ddim)
    low_res = np.random.default_rng(8).uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    original = _pil(9, (32, 32))
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 4:20] = 1.0
    latents, up_noise = _stage2_noise(8, (1, 32, 32, 3))
    _feed_torch_noise(monkeypatch, "pipeline_if_inpainting_superresolution", latents, up_noise)
    common = dict(prompt="a photo of a cat", image=low_res, original_image=original, mask_image=mask,
                  num_inference_steps=STEPS, noise_level=20, output_type="np")
    ours = ours_pipe(latents=latents, rng=8, **common)
    with torch.no_grad():
        ref = ref_pipe(**{**common, "image": low_res[None], "mask_image": [mask]})  # diffusers: lists of 2-D masks
    err = rel_l2(ours.images, ref.images)
    print(f"IFInpaintingSuperResolutionPipeline DDIM vs diffusers: rel L2 {err:.2e}")
    assert ours.images.shape == (1, 32, 32, 3) and err < TOL


def test_pil_outputs_are_watermarked(stage2):
    """"pil" output: the checked images as PIL, with IF's logo pasted (a 1-pixel logo at 32x32);
    "np" leaves them unmarked."""
    _, _, pipe = stage2
    from jaxgen import DDIMScheduler

    ours_pipe = _jax("IFSuperResolutionPipeline", pipe, DDIMScheduler.from_config(pipe.scheduler.config))
    common = dict(prompt="a photo of a cat", image=_pil(10, (8, 8)), num_inference_steps=STEPS, rng=3)
    array = ours_pipe(output_type="np", **common).images
    pil = ours_pipe(output_type="pil", **common).images
    assert len(pil) == 1 and pil[0].size == (32, 32)
    marked = np.asarray(pil[0]).astype(int) - np.round(array[0] * 255).astype(int)
    assert marked[-1, -1].any() and not marked[:-1].any() and not marked[:, :-1].any()


# --------------------------------------------------------------------------- components, loading, safety


def test_components_build_the_other_pipelines(stage1, stage2):
    import jaxgen

    _, _, pipe = stage1
    for name in ("IFImg2ImgPipeline", "IFInpaintingPipeline"):
        other = getattr(jaxgen, name)(**pipe.components)
        assert other.unet is pipe.unet and other.scheduler is pipe.scheduler and other.mesh is pipe.mesh
    _, _, sr = stage2
    for name in ("IFImg2ImgSuperResolutionPipeline", "IFInpaintingSuperResolutionPipeline"):
        other = getattr(jaxgen, name)(**sr.components)
        assert other.image_noising_scheduler is sr.image_noising_scheduler
    assert pipe.config["requires_safety_checker"] is True


def test_timestep_lists_match_diffusers(stage1):
    from diffusers.pipelines.deepfloyd_if import timesteps as reference

    from jaxgen.pipelines import deepfloyd_if, if_timesteps

    for name, values in if_timesteps.TIMESTEPS.items():
        assert values == getattr(reference, f"{name}_timesteps") == getattr(deepfloyd_if, f"{name}_timesteps")
    _, _, pipe = stage1
    state = pipe.prepare_timesteps(None, if_timesteps.fast27_timesteps, None, (1, 8, 8, 3))
    assert np.asarray(state.timesteps).tolist() == if_timesteps.fast27_timesteps


def test_safety_checker_on_by_default_and_off_with_none(stage1, caplog):
    from jaxgen import IFPipeline

    folder, _, pipe = stage1
    assert pipe.safety_checker is not None and pipe.watermarker is not None and pipe.feature_extractor is not None
    images = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    checked, nsfw, watermark = pipe.run_safety_checker(images)
    np.testing.assert_array_equal(checked, images)
    assert nsfw == watermark == [False, False]
    # heads that flag everything: black images, as diffusers
    module, variables = pipe.safety_checker.unbind()
    flagging = dict(variables["params"])
    flagging["p_head"] = {**flagging["p_head"], "bias": flagging["p_head"]["bias"] + 20.0}
    flagged = IFPipeline(**{**pipe.components, "safety_checker": (module, flagging)})
    checked, nsfw, watermark = flagged.run_safety_checker(images)
    assert nsfw == [True, True] and watermark == [False, False] and not checked.any()
    # off, as diffusers allows: a warning (requires_safety_checker), no flags
    with caplog.at_level(logging.WARNING, logger="jaxgen.pipelines.deepfloyd_if"):
        off = IFPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None, watermarker=None)
    assert "disabled the safety checker" in caplog.text
    checked, nsfw, watermark = off.run_safety_checker(images)
    assert checked is images and nsfw is None and watermark is None
    with pytest.raises(ValueError, match="feature extractor"):
        IFPipeline(**{**pipe.components, "feature_extractor": None})


def test_auto_pipelines_and_components_saved_as_none(stage1, tmp_path):
    from jaxgen import (
        AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image, IFImg2ImgPipeline,
        IFInpaintingPipeline, IFPipeline,
    )

    folder, _, pipe = stage1
    parts = dict(text_encoder=pipe.text_encoder, unet=pipe.unet, safety_checker=pipe.safety_checker)
    assert type(AutoPipelineForText2Image.from_pretrained(folder, **parts)) is IFPipeline
    assert type(AutoPipelineForImage2Image.from_pretrained(folder, **parts)) is IFImg2ImgPipeline
    assert type(AutoPipelineForInpainting.from_pretrained(folder, **parts)) is IFInpaintingPipeline
    # diffusers writes a component saved as None as [null, null]: not loaded
    copy = tmp_path / "if_without_safety"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("_spm"))
    index = json.loads((copy / "model_index.json").read_text())
    index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (copy / "model_index.json").write_text(json.dumps(index))
    loaded = IFPipeline.from_pretrained(copy, text_encoder=pipe.text_encoder, unet=pipe.unet)
    assert loaded.safety_checker is None and loaded.feature_extractor is None and loaded.watermarker is not None
    assert loaded.config["requires_safety_checker"] is False


# --------------------------------------------------------------------------- bad input


def _bad_inputs():
    img = np.zeros((1, 8, 8, 3), np.float32)
    return [
        ("IFInpaintingPipeline", dict(image=img, mask_image=np.ones((16, 16), np.float32)), "mask_image"),
        ("IFInpaintingPipeline", dict(image=img, mask_image=np.ones((2, 8, 8), np.float32)), "mask_image batch size"),
        ("IFImg2ImgPipeline", dict(image=img, strength=1.5), "strength"),
        ("IFImg2ImgPipeline", dict(image=img, strength=-0.1), "strength"),
        ("IFImg2ImgPipeline", dict(image=img, strength=0.2), "strength parameter"),  # int(3 * 0.2) = 0 steps
        ("IFImg2ImgPipeline", dict(image=[img[0], img[0]]), "image batch size"),
        ("IFImg2ImgPipeline", dict(image=img, latents=np.zeros((1, 3, 8, 8), np.float32)), "latents"),
        ("IFPipeline", dict(output_type="pt"), "output_type"),
        ("IFPipeline", dict(callback_steps=0), "callback_steps"),
        ("IFPipeline", dict(prompt=None), "Provide either `prompt` or `prompt_embeds`"),
        ("IFPipeline", dict(timesteps=[10, 500]), "descending"),
        ("IFSuperResolutionPipeline", dict(image=np.zeros((1, 64, 64, 3), np.float32)), "`image` is 64x64, larger"),
        ("IFSuperResolutionPipeline", dict(image=np.zeros((1, 8, 8, 4), np.float32)), "channels"),
        ("IFSuperResolutionPipeline", dict(image=img, noise_level=1000), "noise_level"),
        ("IFSuperResolutionPipeline", dict(image=img, noise_level=-1), "noise_level"),
        ("IFImg2ImgSuperResolutionPipeline", dict(image=img, original_image=np.zeros((1, 32, 32, 3)), strength=2.0), "strength"),
        ("IFImg2ImgSuperResolutionPipeline", dict(image=img, original_image=np.zeros((1, 32, 32, 3)), noise_level=1000), "noise_level"),
        ("IFInpaintingSuperResolutionPipeline", dict(image=img, original_image=np.zeros((1, 32, 32, 3)),
                                                     mask_image=np.ones((16, 32))), "mask_image"),
    ]


@pytest.mark.parametrize("name,kwargs,message", _bad_inputs(), ids=[f"{n}-{m}" for n, _, m in _bad_inputs()])
def test_bad_input_fails_before_compiling(stage1, stage2, name, kwargs, message):
    import jaxgen
    from jaxgen.models import safety_checker
    from jaxgen.pipelines import deepfloyd_if, sampling
    from jaxgen.text import encoding

    pipe = stage2[2] if "SuperResolution" in name else stage1[2]
    other = getattr(jaxgen, name)(**pipe.components)
    jitted = (sampling.denoise, encoding._encode, deepfloyd_if.upscale_and_noise, safety_checker.check_safety)
    before = [f._cache_size() for f in jitted]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        other(**{"prompt": "a photo of a cat", "num_inference_steps": STEPS, **kwargs})
    assert [f._cache_size() for f in jitted] == before


def test_generator_is_refused_with_a_pointer_to_rng(stage1):
    with pytest.raises(TypeError, match="rng"):
        stage1[2]("a cat", generator=torch.Generator())


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    """The folder of a tiny x4 upscaler (stage III)."""
    from tests.test_stable_diffusion_upscale import build_tiny_upscale

    folder = tmp_path_factory.mktemp("if_stage3")
    build_tiny_upscale(folder)
    return folder


def test_cli_runs_the_cascade_and_writes_each_stage(stage1, stage2, stage3, tmp_path, one_device):
    """`jaxgen generate --model <IF stage I>` runs stages I, II and III (here: tiny ones) in one command."""
    from jaxgen.cli import main

    folder1, _, _ = stage1
    folder2, _, _ = stage2
    out = tmp_path / "cascade.png"
    argv = ["generate", PROMPTS[0], "--model", str(folder1), "--stage2-model", str(folder2), "--stage3-model",
            str(stage3), "--steps", "2", "--seed", "3", "--height", "16", "--width", "16", "--save-stages",
            "--noise-level", "20", "--out", str(out)]
    assert main(argv) == 0
    sizes = {p.name: PIL.Image.open(p).size for p in tmp_path.glob("cascade*.png")}
    assert sizes == {"cascade-stage1.png": (16, 16), "cascade-stage2.png": (32, 32), "cascade.png": (64, 64)}
    assert main(argv[:-2] + ["--stages", "4", "--out", str(tmp_path / "x.png")]) == 2
    # the library function the command runs gives the same images
    from jaxgen.pipelines.deepfloyd_if import generate_cascade

    images = generate_cascade(PROMPTS[0], folder1, folder2, stage3, num_inference_steps=2, rng=3, height=16,
                              width=16, noise_level=20)
    np.testing.assert_array_equal(np.asarray(images[0]), np.asarray(PIL.Image.open(out)))


def test_cascade_frees_each_stage_before_loading_the_next_and_finds_every_stage_first(stage1, stage2, monkeypatch):
    import gc
    import weakref

    import jaxgen
    from jaxgen.pipelines.deepfloyd_if import generate_cascade

    folder1, folder2 = stage1[0], stage2[0]
    alive = []
    load_1, load_2 = jaxgen.IFPipeline.from_pretrained.__func__, jaxgen.IFSuperResolutionPipeline.from_pretrained.__func__

    def stage_1_loader(cls, *args, **kwargs):
        pipe = load_1(cls, *args, **kwargs)
        alive.extend(weakref.ref(x) for x in [pipe] + jax.tree_util.tree_leaves(pipe.unet.variables))
        return pipe

    def stage_2_loader(cls, *args, **kwargs):
        gc.collect()
        alive.append(sum(ref() is not None for ref in alive))  # stage I's pipeline and UNet params still alive
        return load_2(cls, *args, **kwargs)

    monkeypatch.setattr(jaxgen.IFPipeline, "from_pretrained", classmethod(stage_1_loader))
    monkeypatch.setattr(jaxgen.IFSuperResolutionPipeline, "from_pretrained", classmethod(stage_2_loader))
    images = generate_cascade(PROMPTS[0], folder1, folder2, None, num_inference_steps=2, rng=0)
    assert len(images) == 1 and images[0].size == (32, 32)
    assert alive[-1] == 0 and len(alive) > 2
    # a stage II that cannot be found fails before stage I loads or samples
    alive.clear()
    with pytest.raises(FileNotFoundError, match="no-such-stage-2"):
        generate_cascade(PROMPTS[0], folder1, str(folder1.parent / "no-such-stage-2"), None)
    assert alive == []


def _warmup_cases():
    img = lambda h, w, c=3: np.random.default_rng(h * w).uniform(0, 1, (1, h, w, c)).astype(np.float32)
    return [
        ("IFPipeline", dict(height=8, width=8), {}),
        ("IFImg2ImgPipeline", dict(height=8, width=8), dict(image=img(8, 8), strength=0.5)),
        ("IFInpaintingPipeline", dict(height=8, width=8), dict(image=img(8, 8), mask_image=img(8, 8, 1))),
        ("IFSuperResolutionPipeline", dict(height=32, width=32), dict(image=img(8, 8))),
        ("IFImg2ImgSuperResolutionPipeline", dict(height=32, width=32), dict(image=img(8, 8), original_image=img(32, 32))),
        ("IFInpaintingSuperResolutionPipeline", dict(height=32, width=32),
         dict(image=img(8, 8), original_image=img(32, 32), mask_image=img(32, 32, 1))),
    ]


@pytest.mark.parametrize("name,size,inputs", _warmup_cases(), ids=[c[0] for c in _warmup_cases()])
def test_warmup_compiles_what_the_call_runs(stage1, stage2, name, size, inputs):
    """Every IF pipeline's warmup (the IF config's DDPM, 2 steps) compiles all its call runs: the call
    after it compiles nothing, whatever the inputs' values."""
    import jaxgen
    from tests.conftest import count_compiles

    pipe = getattr(jaxgen, name)(**(stage2 if "SuperResolution" in name else stage1)[2].components)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.warmup(**size, num_inference_steps=2, batch_size=1, output_type="np") > 0
    takes = set(inspect.signature(pipe.__call__).parameters)
    call = {k: v for k, v in size.items() if k in takes}
    with count_compiles() as compiled:
        images = pipe(prompt=PROMPTS[1], num_inference_steps=2, output_type="np", rng=5, **call, **inputs).images
    assert compiled() == 0
    assert images.shape[1:3] == (size["height"], size["width"]) and np.isfinite(images).all()
    with pytest.raises(TypeError, match="_compile_only"):  # no private switch in the public arguments
        pipe(prompt=PROMPTS[1], _compile_only=True, **inputs)
