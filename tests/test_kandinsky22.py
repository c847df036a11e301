"""Kandinsky 2.2's pipelines against diffusers (PyTorch, CPU, float32) on tiny random-weight checkpoints.

As ``test_kandinsky.py`` (whose tiny prior, MoVQ, scheduler and noise helpers this reuses): every
checkpoint is saved by diffusers' ``save_pretrained`` and loaded by jaxgen's ``from_pretrained``;
decoders run DDIM with the same noise on both sides (diffusers' ``randn_tensor`` is handed ours where
it draws its own); the priors run the UnCLIP scheduler with the same per-step noise.
"""

from __future__ import annotations

import diffusers
import jax
import numpy as np
import PIL.Image
import pytest
import torch

import jaxgen
from jaxgen.pipelines.pipeline_utils import DeferredModel
from tests.conftest import count_compiles, perturb_, rel_l2
from tests.test_kandinsky import (
    EMBED, IMAGE_TOL, SIZE, STEPS, TOL, _ddim, _embeds, _feed_torch_noise, _movq, _noise, _pil, _prior, _torch,
    _unclip_noise, with_jaxgen_pipes,
)

PROMPTS = ["a photo of a cat", "the quick brown fox"]
HINT = 8 * 8  # the hint is 8x the latents' side (8 for 16 px images with the tiny 2x MoVQ)


def _unet(in_channels: int, addition: str) -> diffusers.UNet2DConditionModel:
    """2.2's UNet: image embeddings only (``image_proj`` as the context, ``image`` / ``image_hint`` added)."""
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=8, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        attention_head_dim=8, norm_num_groups=8, cross_attention_dim=24, encoder_hid_dim=EMBED,
        encoder_hid_dim_type="image_proj", addition_embed_type=addition, resnet_time_scale_shift="scale_shift",
    )


def _decoder(cls, folder, in_channels: int, addition: str, seed: int, movq_levels: int):
    torch.manual_seed(seed)
    pipe = cls(unet=perturb_(_unet(in_channels, addition), seed=seed), scheduler=_ddim(),
               movq=perturb_(_movq(movq_levels), scale=0.02, seed=seed + 1))
    pipe.save_pretrained(folder)
    return pipe


def build_tiny_kandinsky22(root, movq_levels: int = 2) -> tuple[dict, dict]:
    """Tiny Kandinsky 2.2 checkpoints saved by diffusers under ``root``: ``prior``, ``decoder``, ``inpaint``
    and ``controlnet`` (each decoder's README.md names the prior). Returns (folders, the diffusers pipelines)."""
    folders = {name: root / name for name in ("prior", "decoder", "inpaint", "controlnet")}
    torch_pipes = {
        "prior": _prior(folders["prior"], 30, diffusers.KandinskyV22PriorPipeline),
        "decoder": _decoder(diffusers.KandinskyV22Pipeline, folders["decoder"], 4, "image", 40, movq_levels),
        "inpaint": _decoder(diffusers.KandinskyV22InpaintPipeline, folders["inpaint"], 9, "image", 50, movq_levels),
        "controlnet": _decoder(diffusers.KandinskyV22ControlnetPipeline, folders["controlnet"], 8, "image_hint", 60,
                               movq_levels),
    }
    for name in ("decoder", "inpaint", "controlnet"):
        (folders[name] / "README.md").write_text(f"---\nprior:\n- {folders['prior']}\n---\n# tiny\n")
    return folders, torch_pipes


@pytest.fixture(scope="module")
def k22(tmp_path_factory):
    """The tiny 2.2 checkpoints' folders, the diffusers pipelines, and jaxgen's."""
    folders, torch_pipes = build_tiny_kandinsky22(tmp_path_factory.mktemp("kandinsky22"))
    classes = {"prior": jaxgen.KandinskyV22PriorPipeline, "decoder": jaxgen.KandinskyV22Pipeline,
               "inpaint": jaxgen.KandinskyV22InpaintPipeline, "controlnet": jaxgen.KandinskyV22ControlnetPipeline}
    return with_jaxgen_pipes(folders, torch_pipes, classes)


def _same_parts(ours, torch_pipes, name: str, jax_cls, torch_cls):
    """Another pipeline class on the same loaded components, both sides."""
    pipe, ref = jax_cls(**ours[name].components), torch_cls(**torch_pipes[name].components)
    pipe.set_progress_bar_config(disable=True)
    ref.set_progress_bar_config(disable=True)
    return pipe, ref


def _compare(name: str, out, ref, tol: float = IMAGE_TOL) -> None:
    ours, theirs = (getattr(x, "images", x) for x in (out, ref))
    assert np.shape(ours) == np.shape(theirs), (np.shape(ours), np.shape(theirs))
    err = rel_l2(ours, theirs)
    print(f"{name} vs diffusers: rel L2 {err:.2e}")
    assert err < tol


def _hint(seed: int, rows: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, HINT, HINT, 3)).astype(np.float32)


# --------------------------------------------------------------------------- the priors


def test_prior_matches_diffusers_with_a_deferred_image_encoder(k22, monkeypatch):
    """Text to embeddings (the zero-image negative): the bigG image encoder is not resident after loading."""
    _, torch_pipes, ours = k22
    pipe = ours["prior"]
    assert isinstance(pipe.image_encoder, DeferredModel) and "zero_image_embeds" in pipe.image_encoder.outputs
    latents = _noise(1, (4, EMBED))
    _unclip_noise(monkeypatch, STEPS, 4)
    common = dict(prompt=PROMPTS, num_images_per_prompt=2, num_inference_steps=STEPS, guidance_scale=4.0, output_type="np")
    out = pipe(latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["prior"](latents=torch.from_numpy(latents), **common)
    for field in ("image_embeds", "negative_image_embeds"):
        _compare(f"prior {field}", getattr(out, field), getattr(ref, field), TOL)
    assert isinstance(pipe.image_encoder, DeferredModel)  # text to image did not load it


def test_prior_interpolate_matches_diffusers_per_image(k22, monkeypatch):
    """2.2's interpolate: an image's embedding repeated per image, summed per image -> (n, D); the image
    encoder is loaded for it and stays."""
    _, torch_pipes, ours = k22
    pipe = jaxgen.KandinskyV22PriorPipeline(**ours["prior"].components)
    pipe.set_progress_bar_config(disable=True)
    _unclip_noise(monkeypatch, STEPS, 2)
    latents = _noise(2, (2, EMBED))
    image = _pil(5, 24)
    common = dict(num_inference_steps=STEPS, guidance_scale=4.0, num_images_per_prompt=2)
    out = pipe.interpolate(["a photo of a cat", image], [0.3, 0.7], latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["prior"].interpolate(["a photo of a cat", image], [0.3, 0.7],
                                               latents=torch.from_numpy(latents), **common)
    assert out.image_embeds.shape == (2, EMBED)
    _compare("interpolate image_embeds", out.image_embeds, ref.image_embeds, TOL)
    _compare("interpolate negative_image_embeds", out.negative_image_embeds, ref.negative_image_embeds, TOL)
    assert not isinstance(pipe.image_encoder, DeferredModel)


def test_emb2emb_matches_diffusers(k22, monkeypatch):
    """The image's CLIP embedding, tiled to the prompts, noised by the UnCLIP scheduler at the first of the
    last ``strength`` steps, sampled from there."""
    _, torch_pipes, ours = k22
    steps, strength = 6, 0.5
    pipe = jaxgen.KandinskyV22PriorEmb2EmbPipeline(**ours["prior"].components)
    ref_pipe = diffusers.KandinskyV22PriorEmb2EmbPipeline(**torch_pipes["prior"].components)
    for p in (pipe, ref_pipe):
        p.set_progress_bar_config(disable=True)
    noise = _noise(3, (2, EMBED))
    _unclip_noise(monkeypatch, steps, 2, start=steps - int(steps * strength))
    _feed_torch_noise(monkeypatch, "diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_prior_emb2emb", noise)
    common = dict(prompt=PROMPTS, image=_pil(6, 24), strength=strength, num_inference_steps=steps, guidance_scale=4.0,
                  output_type="np")
    out = pipe(latents=noise, **common)
    with torch.no_grad():
        ref = ref_pipe(**common)
    for field in ("image_embeds", "negative_image_embeds"):
        _compare(f"emb2emb {field}", getattr(out, field), getattr(ref, field), TOL)


# --------------------------------------------------------------------------- the decoders


def test_text_to_image_matches_diffusers(k22):
    _, torch_pipes, ours = k22
    latents = _noise(7, (4, 8, 8, 4))
    embeds, negative = _embeds(8, 2), _embeds(9, 2)
    common = dict(num_inference_steps=STEPS, num_images_per_prompt=2, height=SIZE, width=SIZE, guidance_scale=4.0,
                  output_type="np")
    out = ours["decoder"](embeds, negative, latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["decoder"](torch.from_numpy(embeds), torch.from_numpy(negative), latents=_torch(latents), **common)
    _compare("KandinskyV22Pipeline", out, ref)


def test_img2img_matches_diffusers(k22, monkeypatch):
    """The images resized (24 -> 16 px, bicubic), MoVQ-encoded, noised by DDIM's add_noise at the start step."""
    _, torch_pipes, ours = k22
    pipe, ref_pipe = _same_parts(ours, torch_pipes, "decoder", jaxgen.KandinskyV22Img2ImgPipeline,
                                 diffusers.KandinskyV22Img2ImgPipeline)
    noise = _noise(10, (4, 8, 8, 4))
    embeds, negative = _embeds(11, 2), _embeds(12, 2)
    _feed_torch_noise(monkeypatch, "diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_img2img", noise)
    common = dict(image=[_pil(13, 24), _pil(14, 24)], num_inference_steps=5, strength=0.6, num_images_per_prompt=2,
                  height=SIZE, width=SIZE, guidance_scale=4.0, output_type="np")
    out = pipe(image_embeds=embeds, negative_image_embeds=negative, latents=noise, **common)
    with torch.no_grad():
        ref = ref_pipe(image_embeds=torch.from_numpy(embeds), negative_image_embeds=torch.from_numpy(negative), **common)
    _compare("KandinskyV22Img2ImgPipeline", out, ref)


def test_inpaint_matches_diffusers(k22):
    """Mask channels into the UNet and, after every step, the kept region re-noised to the next timestep."""
    _, torch_pipes, ours = k22
    latents = _noise(15, (2, 8, 8, 4))
    embeds, negative = _embeds(16, 1), _embeds(17, 1)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[2:9, 5:12] = 1
    common = dict(image=_pil(18), mask_image=mask, num_inference_steps=STEPS, num_images_per_prompt=2, height=SIZE,
                  width=SIZE, guidance_scale=4.0, output_type="np")
    out = ours["inpaint"](image_embeds=embeds, negative_image_embeds=negative, latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["inpaint"](image_embeds=torch.from_numpy(embeds), negative_image_embeds=torch.from_numpy(negative),
                                     latents=_torch(latents), **common)
    _compare("KandinskyV22InpaintPipeline", out, ref)


def test_controlnet_matches_diffusers(k22):
    _, torch_pipes, ours = k22
    latents = _noise(19, (2, 8, 8, 4))
    embeds, negative, hint = _embeds(20, 1), _embeds(21, 1), _hint(22)
    common = dict(num_inference_steps=STEPS, num_images_per_prompt=2, height=SIZE, width=SIZE, guidance_scale=4.0,
                  output_type="np")
    out = ours["controlnet"](embeds, negative, hint, latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["controlnet"](torch.from_numpy(embeds), torch.from_numpy(negative), _torch(hint),
                                        latents=_torch(latents), **common)
    _compare("KandinskyV22ControlnetPipeline", out, ref)


def test_controlnet_img2img_matches_diffusers(k22, monkeypatch):
    _, torch_pipes, ours = k22
    pipe, ref_pipe = _same_parts(ours, torch_pipes, "controlnet", jaxgen.KandinskyV22ControlnetImg2ImgPipeline,
                                 diffusers.KandinskyV22ControlnetImg2ImgPipeline)
    noise = _noise(23, (2, 8, 8, 4))
    embeds, negative, hint = _embeds(24, 2), _embeds(25, 2), _hint(26, 2)
    _feed_torch_noise(monkeypatch, "diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_controlnet_img2img", noise)
    common = dict(image=[_pil(27), _pil(28)], num_inference_steps=5, strength=0.5, height=SIZE, width=SIZE,
                  guidance_scale=4.0, output_type="np")
    out = pipe(image_embeds=embeds, negative_image_embeds=negative, hint=hint, latents=noise, **common)
    with torch.no_grad():
        ref = ref_pipe(image_embeds=torch.from_numpy(embeds), negative_image_embeds=torch.from_numpy(negative),
                       hint=_torch(hint), **common)
    _compare("KandinskyV22ControlnetImg2ImgPipeline", out, ref)


def test_controlnet_without_guidance_repeats_the_hint_per_image(k22):
    """diffusers fails here (the hint is repeated per image only with guidance); jaxgen repeats it: each
    image is the one the guided-off call makes for its own noise row."""
    _, _, ours = k22
    latents = _noise(29, (2, 8, 8, 4))
    embeds, hint = _embeds(30, 1), _hint(31)
    common = dict(num_inference_steps=STEPS, height=SIZE, width=SIZE, guidance_scale=1.0, output_type="np")
    both = ours["controlnet"](embeds, embeds, hint, num_images_per_prompt=2, latents=latents, **common).images
    second = ours["controlnet"](embeds, embeds, hint, latents=latents[1:], **common).images
    np.testing.assert_allclose(both[1:], second, atol=1e-5)


# --------------------------------------------------------------------------- combined, Auto, CLI


def test_combined_pipelines_are_prior_then_decoder(k22):
    """Each combined pipeline = the 2.2 prior on the first key, its decoder on the second; the prior's image
    encoder stays deferred for text and image to image."""
    folders, _, ours = k22
    image, mask = _pil(32), np.zeros((SIZE, SIZE), np.float32)
    mask[:8] = 1
    prior_key, decoder_key = jax.random.split(jax.random.key(3))
    embeds = ours["prior"]("a hat", num_inference_steps=STEPS, rng=prior_key)
    common = dict(num_inference_steps=STEPS, height=SIZE, width=SIZE, guidance_scale=4.0, output_type="np")
    cases = (
        (jaxgen.KandinskyV22CombinedPipeline, "decoder", {}, jaxgen.KandinskyV22Pipeline),
        (jaxgen.KandinskyV22Img2ImgCombinedPipeline, "decoder", dict(image=image, strength=0.7),
         jaxgen.KandinskyV22Img2ImgPipeline),
        (jaxgen.KandinskyV22InpaintCombinedPipeline, "inpaint", dict(image=image, mask_image=mask),
         jaxgen.KandinskyV22InpaintPipeline),
    )
    for combined_cls, name, inputs, decoder_cls in cases:
        decoder = decoder_cls(**ours[name].components)
        decoder.set_progress_bar_config(disable=True)
        if combined_cls is jaxgen.KandinskyV22CombinedPipeline:  # the prior from the decoder's README.md
            combined = combined_cls.from_pretrained(folders[name], unet=decoder.unet, movq=decoder.movq)
            assert isinstance(combined.prior_pipe.image_encoder, DeferredModel)
        else:
            combined = combined_cls.from_pipes(ours["prior"], decoder)
        combined.set_progress_bar_config(disable=True)
        out = combined("a hat", prior_num_inference_steps=STEPS, rng=3, **inputs, **common)
        by_hand = decoder(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                          rng=decoder_key, **inputs, **common)
        np.testing.assert_allclose(out.images, by_hand.images, atol=1e-6, err_msg=combined_cls.__name__)
        assert set(combined.components) >= {"unet", "movq", "prior_prior", "prior_image_encoder"}


def test_auto_pipelines_map_kandinsky22_as_diffusers(k22):
    folders, _, _ = k22
    assert jaxgen.AutoPipelineForText2Image.pipeline_class_for(folders["decoder"]) is jaxgen.KandinskyV22CombinedPipeline
    assert (jaxgen.AutoPipelineForImage2Image.pipeline_class_for(folders["decoder"])
            is jaxgen.KandinskyV22Img2ImgCombinedPipeline)
    assert (jaxgen.AutoPipelineForInpainting.pipeline_class_for(folders["inpaint"])
            is jaxgen.KandinskyV22InpaintCombinedPipeline)
    with pytest.raises(ValueError, match="KandinskyV22ControlnetPipeline"):  # as diffusers: no Auto mapping
        jaxgen.AutoPipelineForText2Image.pipeline_class_for(folders["controlnet"])


def test_cli_runs_the_controlnet_with_a_hint_img2img_and_inpainting(k22, tmp_path, one_device):
    from jaxgen.cli import main

    folders, _, _ = k22
    hint = tmp_path / "depth.png"
    PIL.Image.fromarray((_hint(33)[0] * 255).astype(np.uint8)).save(hint)
    image = tmp_path / "in.png"
    _pil(34).save(image)
    base = ["--steps", str(STEPS), "--prior-steps", str(STEPS), "--height", str(SIZE), "--width", str(SIZE)]
    out = tmp_path / "c.png"
    assert main(["generate", "a cat", "--model", str(folders["controlnet"]), "--hint", str(hint), "--out", str(out),
                 *base]) == 0
    assert PIL.Image.open(out).size == (SIZE, SIZE)
    out = tmp_path / "i.png"
    assert main(["generate", "a cat", "--model", str(folders["decoder"]), "--image", str(image), "--strength", "0.5",
                 "--out", str(out), *base]) == 0
    assert PIL.Image.open(out).size == (SIZE, SIZE)
    mask = tmp_path / "mask.png"
    PIL.Image.fromarray(np.tile((np.arange(SIZE) < SIZE // 2).astype(np.uint8) * 255, (SIZE, 1))).save(mask)
    out = tmp_path / "m.png"  # inpainting: the Auto pipeline's prior + inpainting decoder
    assert main(["generate", "a hat", "--model", str(folders["inpaint"]), "--image", str(image), "--mask", str(mask),
                 "--out", str(out), *base]) == 0
    assert PIL.Image.open(out).size == (SIZE, SIZE)
    assert main(["generate", "a hat", "--model", str(folders["inpaint"]), "--mask", str(mask), *base]) == 2


def test_warmup_compiles_what_the_controlnet_call_runs(k22):
    pipe = k22[2]["controlnet"]
    pipe.warmup(height=SIZE, width=SIZE, num_inference_steps=STEPS, batch_size=1, output_type="np")
    embeds = np.zeros((1, EMBED), np.float32)
    with count_compiles() as compiled:
        pipe(embeds, embeds, _hint(35), height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="np")
    assert compiled() == 0


# --------------------------------------------------------------------------- bad input


def _bad_inputs():
    e = lambda rows, width=EMBED: np.zeros((rows, width), np.float32)
    img = np.full((1, SIZE, SIZE, 3), 0.5, np.float32)
    return [
        ("controlnet", dict(image_embeds=e(1), negative_image_embeds=e(1), hint=_hint(0)[:, :32]), "hint"),
        ("controlnet", dict(image_embeds=e(1), negative_image_embeds=e(1), hint=_hint(0)[..., :1]), "hint"),
        ("controlnet", dict(image_embeds=e(1), negative_image_embeds=e(1), hint=None), "hint"),
        ("controlnet", dict(image_embeds=e(1), negative_image_embeds=e(1), hint=_hint(0, 3)), "hint"),
        ("decoder", dict(image_embeds=e(1, 7), negative_image_embeds=e(1, 7)), "width 7"),
        ("decoder", dict(image_embeds=e(1), negative_image_embeds=e(2)), "negative_image_embeds"),
        ("img2img", dict(image=img, image_embeds=e(1), negative_image_embeds=e(1), strength=1.5), "strength"),
        ("emb2emb", dict(prompt="a cat", image=_pil(0), strength=-0.1), "strength"),
        ("emb2emb", dict(prompt="a cat", image=_pil(0), strength=1.2), "strength"),
        ("emb2emb", dict(prompt="a cat", image=e(1, 7)), "image"),
        ("emb2emb", dict(prompt="a cat", image=[_pil(0), _pil(1)]), "image"),
    ]


@pytest.mark.parametrize("name,kwargs,message", _bad_inputs(), ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(_bad_inputs())])
def test_bad_input_fails_before_compiling(k22, name, kwargs, message):
    _, _, ours = k22
    call = {"num_inference_steps": STEPS, **kwargs}
    if name == "emb2emb":
        pipe = jaxgen.KandinskyV22PriorEmb2EmbPipeline(**ours["prior"].components)
    else:
        pipe = ours["controlnet" if name == "controlnet" else "decoder"]
        pipe = jaxgen.KandinskyV22Img2ImgPipeline(**pipe.components) if name == "img2img" else pipe
        call.update(height=SIZE, width=SIZE)
    with count_compiles() as compiled, pytest.raises(ValueError, match=message):
        pipe(**call)
    assert compiled() == 0


def test_a_hint_unet_is_refused_by_the_plain_decoder(k22):
    e = np.zeros((1, EMBED), np.float32)
    pipe = jaxgen.KandinskyV22Pipeline(**k22[2]["controlnet"].components)
    with count_compiles() as compiled, pytest.raises(ValueError, match="KandinskyV22ControlnetPipeline"):
        pipe(e, e, height=SIZE, width=SIZE, num_inference_steps=STEPS)
    assert compiled() == 0
