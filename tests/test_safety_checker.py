"""DeepFloyd IF's safety checker and watermarker: parity with diffusers' IFSafetyChecker and IFWatermarker."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from diffusers.pipelines.deepfloyd_if.safety_checker import IFSafetyChecker as TorchIFSafetyChecker
from diffusers.pipelines.deepfloyd_if.watermark import IFWatermarker as TorchIFWatermarker

import convert
from convert.engine import check_coverage
from jaxgen.hub import CheckpointError
from jaxgen.models.safety_checker import IFSafetyChecker
from jaxgen.models.watermark import IFWatermarker
from tests.conftest import perturb_, rel_l2

BATCH = 6


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    """(torch checker, jaxgen module, params, jitted scores, jitted call) of a tiny IFSafetyChecker."""
    folder = tmp_path_factory.mktemp("if_safety_checker")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                         vocab_size=50, max_position_embeddings=8, bos_token_id=0, eos_token_id=2),
        # the vision tower's projection_dim (24) is the one used, not the top level's (12)
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                           image_size=16, patch_size=4, projection_dim=24),
        projection_dim=12,
    )
    tmodel = perturb_(TorchIFSafetyChecker(config), scale=0.3)
    tmodel.save_pretrained(folder)
    module, params = IFSafetyChecker.from_pretrained(folder)
    scores = jax.jit(lambda p, x: module.apply({"params": p}, x, method="scores"))
    call = jax.jit(lambda p, x, images, pt, wt: module.apply({"params": p}, x, images, pt, wt))
    return tmodel, module, params, scores, call


def _inputs():
    rng = np.random.default_rng(0)
    clip_input = rng.standard_normal((BATCH, 3, 16, 16)).astype(np.float32)
    images = rng.uniform(0.1, 1.0, (BATCH, 8, 8, 3)).astype(np.float32)
    return clip_input, images


def _torch_scores(tmodel, clip_input):
    with torch.no_grad():
        embeds = tmodel.vision_model(torch.from_numpy(clip_input))[0]
        return tmodel.p_head(embeds).flatten().numpy(), tmodel.w_head(embeds).flatten().numpy()


def _middle(scores: np.ndarray) -> float:
    """A threshold with half the scores above it."""
    s = np.sort(scores)
    return float((s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)


def test_head_outputs_parity(checker):
    tmodel, module, params, scores, _ = checker
    assert module.config.projection_dim == 24
    clip_input, _ = _inputs()
    nsfw, watermark = scores(params, jnp.asarray(clip_input.transpose(0, 2, 3, 1)))
    ref_nsfw, ref_watermark = _torch_scores(tmodel, clip_input)
    for name, ours, ref in (("p_head", nsfw, ref_nsfw), ("w_head", watermark, ref_watermark)):
        err = rel_l2(ours, ref)
        print(f"IFSafetyChecker {name}: rel L2 {err:.2e}")
        assert ours.shape == (BATCH,) and err < 1e-5, (name, err)


def test_flags_and_black_images_match_diffusers(checker, caplog):
    tmodel, _, params, _, call = checker
    clip_input, images = _inputs()
    ref_nsfw, ref_watermark = _torch_scores(tmodel, clip_input)
    # thresholds that flag half the images by each head, and none, and diffusers' defaults (0.5)
    cases = ((_middle(ref_nsfw), _middle(ref_watermark)), (1e9, 1e9), (0.5, 0.5))
    for case, (p_threshold, w_threshold) in enumerate(cases):
        ref_images, ref_nsfw_detected, ref_watermark_detected = tmodel(
            clip_input=torch.from_numpy(clip_input), images=images.copy(), p_threshold=p_threshold, w_threshold=w_threshold)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jaxgen.models.safety_checker"):
            out_images, nsfw_detected, watermark_detected = call(
                params, jnp.asarray(clip_input.transpose(0, 2, 3, 1)), jnp.asarray(images), p_threshold, w_threshold)
            jax.effects_barrier()
        assert nsfw_detected.tolist() == ref_nsfw_detected
        assert watermark_detected.tolist() == ref_watermark_detected
        np.testing.assert_array_equal(np.asarray(out_images), ref_images)
        flagged = np.asarray(nsfw_detected | watermark_detected)
        assert (np.asarray(out_images)[flagged] == 0).all() and (np.asarray(out_images)[~flagged] == images[~flagged]).all()
        assert any("NSFW" in r.message for r in caplog.records) == any(ref_nsfw_detected)
        assert any("watermarked" in r.message for r in caplog.records) == any(ref_watermark_detected)
        if case == 0:  # both outcomes occur for each head
            assert 0 < sum(ref_nsfw_detected) < BATCH and 0 < sum(ref_watermark_detected) < BATCH
            assert not flagged.all()


def test_key_coverage_real_config(real_configs):
    cfg_dict = json.loads((real_configs / "DeepFloyd__IF-I-XL-v1.0" / "safety_checker" / "config.json").read_text())
    with torch.device("meta"):
        tmodel = TorchIFSafetyChecker(transformers.CLIPConfig(**cfg_dict))
    torch_shapes = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
    module = IFSafetyChecker.from_config(cfg_dict)
    cfg = module.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, cfg.projection_dim, cfg.hidden_act) == (
        1024, 24, 14, 768, "quick_gelu")
    name = "IFSafetyChecker"
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule(name, cfg), ignore=convert.ignored_keys(name, cfg))


@pytest.fixture(scope="module")
def watermarkers(tmp_path_factory):
    """(diffusers watermarker, jaxgen watermarker loaded from its save_pretrained folder)."""
    folder = tmp_path_factory.mktemp("if_watermarker")
    ref = TorchIFWatermarker()
    gen = torch.Generator().manual_seed(0)
    logo = torch.rand((62, 62, 4), generator=gen) * 255
    logo[..., 3] = torch.where(logo[..., 3] > 128, logo[..., 3], torch.zeros(()))  # some transparent pixels
    ref.watermark_image.copy_(logo)
    ref.save_pretrained(folder)
    return ref, IFWatermarker.from_pretrained(folder), folder


@pytest.mark.parametrize(
    "height,width,sample_size,visible",
    # images smaller than sample_size are placed as if upscaled to it: the logo then falls outside, as in diffusers
    [(64, 64, 64, True), (256, 256, 256, True), (1024, 1024, None, True), (64, 96, 64, True), (64, 96, 128, False)],
)
def test_watermark_matches_diffusers(watermarkers, height, width, sample_size, visible):
    ref, ours, _ = watermarkers
    rng = np.random.default_rng(height + width)
    arrays = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2)]
    expected = ref.apply_watermark([PIL.Image.fromarray(a) for a in arrays], sample_size)
    images = [PIL.Image.fromarray(a) for a in arrays]
    got = ours.apply_watermark(images, sample_size)
    assert got is images  # in place, as diffusers
    for a, e, g in zip(arrays, expected, got):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
        assert (np.asarray(g) != a).any() == visible


def test_watermarker_loading(watermarkers, tmp_path):
    from safetensors.numpy import save_file

    ref, ours, folder = watermarkers
    np.testing.assert_array_equal(ours.watermark_image, ref.watermark_image.numpy())
    # the default (diffusers' zeros buffer) is a transparent logo: images are unchanged
    image = PIL.Image.fromarray(np.full((64, 64, 3), 7, np.uint8))
    IFWatermarker().apply_watermark([image], 64)
    assert (np.asarray(image) == 7).all()
    save_file({"watermark_image": ours.watermark_image, "extra": np.zeros(1, np.float32)}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="extra"):
        IFWatermarker.from_pretrained(tmp_path)
