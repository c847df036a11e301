"""Kandinsky 2.1's pipelines against diffusers (PyTorch, CPU, float32) on tiny random-weight checkpoints.

The prior, the three decoders and the combined pipelines are saved with diffusers' ``save_pretrained``
and loaded through jaxgen's ``from_pretrained``; decoders run DDIM (deterministic) with the same
initial noise on both sides; the prior runs its UnCLIP scheduler with the same per-step noise.
"""

from __future__ import annotations

import importlib

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

import jaxgen
from tests.conftest import count_compiles, make_clip_tokenizer, make_xlm_roberta_tokenizer, nchw_to_nhwc, nhwc_to_nchw, perturb_, rel_l2

TOL = 1e-5
# Whole decoder runs: guidance (x4) over the steps and a random-weight MoVQ decoder amplify float32 rounding
# (the sampled latents agree to ~1e-6, each component to ~1e-7 in its own test), so images get 3e-5.
IMAGE_TOL = 3e-5
STEPS = 3
PROMPTS = ["a photo of a cat", "the quick brown fox"]
EMBED = 32  # CLIP projection = prior embedding = UNet cross-attention width
TEXT_LEN = 12  # the tiny CLIP tokenizer's max length = the prior's num_embeddings
SIZE = 16  # image height/width: MoVQ factor 2 -> 8x8 latents


def _unet(in_channels: int) -> diffusers.UNet2DConditionModel:
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=8, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        attention_head_dim=8, norm_num_groups=8, cross_attention_dim=EMBED, encoder_hid_dim=24,
        encoder_hid_dim_type="text_image_proj", addition_embed_type="text_image", resnet_time_scale_shift="scale_shift",
    )


def _movq(levels: int) -> diffusers.VQModel:
    """A MoVQ with Kandinsky's block types; ``levels`` - 1 halvings (the real one: 4 levels, 8x). Its
    spatial norms are GroupNorms of 32 groups (fixed in diffusers): 32 channels at least."""
    return diffusers.VQModel(
        in_channels=3, out_channels=3, block_out_channels=(32,) * levels, layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * (levels - 1) + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * (levels - 1), norm_num_groups=8,
        num_vq_embeddings=32, vq_embed_dim=4, norm_type="spatial",
    )


def _ddim() -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                   set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                                   timestep_spacing="leading")


def _decoder(cls, folder, in_channels: int, tokenizer, seed: int, movq_levels: int = 2):
    torch.manual_seed(seed)
    text_encoder = MultilingualCLIP(MCLIPConfig(
        transformerDimSize=24, imageDimSize=EMBED, hidden_size=24, num_attention_heads=4, intermediate_size=37,
        num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=81, pad_token_id=1,
        type_vocab_size=1, layer_norm_eps=1e-5))
    pipe = cls(text_encoder=perturb_(text_encoder, seed=seed), tokenizer=tokenizer,
               unet=perturb_(_unet(in_channels), seed=seed + 1), scheduler=_ddim(), movq=perturb_(_movq(movq_levels), scale=0.02, seed=seed + 2))
    pipe.save_pretrained(folder)
    return pipe


def _prior(folder, seed: int, cls=diffusers.KandinskyPriorPipeline):
    torch.manual_seed(seed)
    tokenizer = make_clip_tokenizer(folder / "_tok", max_length=TEXT_LEN)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        hidden_size=EMBED, projection_dim=EMBED, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=TEXT_LEN, eos_token_id=1, pad_token_id=1, bos_token_id=0))
    vision = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=EMBED, projection_dim=EMBED, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=16, patch_size=4))
    prior = diffusers.PriorTransformer(num_attention_heads=2, attention_head_dim=16, num_layers=2, embedding_dim=EMBED,
                                       num_embeddings=TEXT_LEN, additional_embeddings=4)
    with torch.no_grad():  # post_process_latents would be the identity with the default mean 0 / std 1
        prior.clip_mean.normal_(0, 0.5)
        prior.clip_std.uniform_(0.5, 1.5)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    scheduler = diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample=True,
                                          clip_sample_range=10.0, num_train_timesteps=1000)
    pipe = cls(prior=perturb_(prior, seed=seed), image_encoder=perturb_(vision, seed=seed + 1),
               text_encoder=perturb_(text, seed=seed + 2), tokenizer=tokenizer, scheduler=scheduler,
               image_processor=processor)
    pipe.save_pretrained(folder)
    return pipe


def build_tiny_kandinsky(root, movq_levels: int = 2) -> tuple[dict, dict]:
    """Tiny Kandinsky 2.1 checkpoints saved by diffusers under ``root``: ``prior``, ``decoder`` and
    ``inpaint`` (each decoder's README.md names the prior, as the Hub's model cards do). Returns
    (folders, the diffusers pipelines)."""
    tokenizer = make_xlm_roberta_tokenizer(root / "xlmr")
    folders = {name: root / name for name in ("prior", "decoder", "inpaint")}
    torch_pipes = {
        "prior": _prior(folders["prior"], 0),
        "decoder": _decoder(diffusers.KandinskyPipeline, folders["decoder"], 4, tokenizer, 10, movq_levels),
        "inpaint": _decoder(diffusers.KandinskyInpaintPipeline, folders["inpaint"], 9, tokenizer, 20, movq_levels),
    }
    for name in ("decoder", "inpaint"):
        (folders[name] / "README.md").write_text(f"---\nprior:\n- {folders['prior']}\n---\n# tiny\n")
    return folders, torch_pipes


@pytest.fixture(scope="module")
def kandinsky(tmp_path_factory):
    """The tiny checkpoints' folders, the diffusers pipelines, and the jaxgen ones."""
    folders, torch_pipes = build_tiny_kandinsky(tmp_path_factory.mktemp("kandinsky"))
    classes = {"prior": jaxgen.KandinskyPriorPipeline, "decoder": jaxgen.KandinskyPipeline,
               "inpaint": jaxgen.KandinskyInpaintPipeline}
    return with_jaxgen_pipes(folders, torch_pipes, classes)


def with_jaxgen_pipes(folders: dict, torch_pipes: dict, classes: dict) -> tuple[dict, dict, dict]:
    """(folders, the diffusers pipelines, jaxgen's: ``classes[name].from_pretrained(folders[name])``), all
    without progress bars."""
    ours = {name: cls.from_pretrained(folders[name]) for name, cls in classes.items()}
    for pipe in (*ours.values(), *torch_pipes.values()):
        pipe.set_progress_bar_config(disable=True)
    return folders, torch_pipes, ours


def _noise(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(nhwc_to_nchw(x).copy() if x.ndim == 4 else x.copy())


def _feed_torch_noise(monkeypatch, module_name: str, *arrays: np.ndarray) -> None:
    """diffusers draws noise with ``randn_tensor`` in ``module_name``: hand it ours (NHWC), in order."""
    module = importlib.import_module(module_name)
    queue = [_torch(a) for a in arrays]

    def randn_tensor(shape, **kwargs):
        noise = queue.pop(0)
        assert tuple(noise.shape) == tuple(shape), (noise.shape, shape)
        return noise

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)


def _pil(seed: int, size: int = SIZE) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _embeds(seed: int, rows: int) -> np.ndarray:
    return _noise(seed, (rows, EMBED))


# --------------------------------------------------------------------------- the prior


def _unclip_noise(monkeypatch, steps: int, rows: int, rng: int = 0, start: int = 0) -> None:
    """diffusers' UnCLIP steps get the variance noise jaxgen's draw: the prior's loop key is the second of
    ``split(key(rng))``, step i's noise normal(fold_in(fold_in(loop key, i), i)) (the loop folds the step
    in, the scheduler's ``draw_noise`` its step index; ``start``: the first step run, emb2emb's). diffusers
    draws at every step but the last (t > 0); each call of the prior (``interpolate`` makes several)
    starts the table again."""
    loop_key = jax.random.split(jax.random.key(rng))[1]
    table = [np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(loop_key, i), i), (rows, EMBED)))
             for i in range(start, steps - 1)]
    calls = []

    def torch_randn(shape, **kwargs):
        noise = table[len(calls) % len(table)]
        calls.append(None)
        assert tuple(shape) == noise.shape, (shape, noise.shape)
        return torch.from_numpy(noise.copy())

    monkeypatch.setattr(importlib.import_module("diffusers.schedulers.scheduling_unclip"), "randn_tensor", torch_randn)


@pytest.mark.parametrize("negative_prompt", [None, ["a dog", "blurry"]], ids=["zero-image", "negative-prompt"])
def test_prior_matches_diffusers(kandinsky, monkeypatch, negative_prompt):
    _, torch_pipes, ours = kandinsky
    rows = 2 * len(PROMPTS) * (2 if negative_prompt else 1)
    latents = _noise(1, (rows, EMBED))
    _unclip_noise(monkeypatch, STEPS, rows)
    common = dict(prompt=PROMPTS, negative_prompt=negative_prompt, num_images_per_prompt=2, num_inference_steps=STEPS,
                  guidance_scale=4.0, output_type="np")
    out = ours["prior"](latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["prior"](latents=torch.from_numpy(latents), **common)
    for name in ("image_embeds", "negative_image_embeds"):
        err = rel_l2(getattr(out, name), getattr(ref, name))
        print(f"prior {name} vs diffusers: rel L2 {err:.2e}")
        assert getattr(out, name).shape == getattr(ref, name).shape == (rows // (2 if negative_prompt else 1), EMBED)
        assert err < TOL


def test_prior_interpolate_matches_diffusers(kandinsky, monkeypatch):
    _, torch_pipes, ours = kandinsky
    _unclip_noise(monkeypatch, STEPS, 1)
    latents = _noise(2, (1, EMBED))
    image = _pil(5, 24)
    common = dict(num_inference_steps=STEPS, guidance_scale=4.0)
    out = ours["prior"].interpolate(["a photo of a cat", image], [0.3, 0.7], latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["prior"].interpolate(["a photo of a cat", image], [0.3, 0.7],
                                               latents=torch.from_numpy(latents), **common)
    assert out.image_embeds.shape == (1, EMBED)
    assert rel_l2(out.image_embeds, ref.image_embeds) < TOL
    assert rel_l2(out.negative_image_embeds, ref.negative_image_embeds) < TOL


# --------------------------------------------------------------------------- the decoders


def test_text_to_image_matches_diffusers(kandinsky):
    _, torch_pipes, ours = kandinsky
    latents = _noise(3, (4, 8, 8, 4))
    embeds, negative = _embeds(4, 2), _embeds(5, 2)
    common = dict(prompt=PROMPTS, negative_prompt=["", "a dog"], num_inference_steps=STEPS, num_images_per_prompt=2,
                  height=SIZE, width=SIZE, guidance_scale=4.0, output_type="np")
    out = ours["decoder"](image_embeds=embeds, negative_image_embeds=negative, latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["decoder"](image_embeds=torch.from_numpy(embeds), negative_image_embeds=torch.from_numpy(negative),
                                     latents=_torch(latents), **common)
    assert out.images.shape == ref.images.shape == (4, SIZE, SIZE, 3)
    err = rel_l2(out.images, ref.images)
    print(f"KandinskyPipeline vs diffusers: rel L2 {err:.2e}")
    assert err < IMAGE_TOL


def test_img2img_matches_diffusers(kandinsky, monkeypatch):
    """The image resized (24 -> 16 px, bicubic), MoVQ-encoded, noised by Kandinsky's own fixed schedule."""
    _, torch_pipes, ours = kandinsky
    torch_pipe = diffusers.KandinskyImg2ImgPipeline(**torch_pipes["decoder"].components)
    torch_pipe.set_progress_bar_config(disable=True)
    pipe = jaxgen.KandinskyImg2ImgPipeline(**ours["decoder"].components)
    pipe.set_progress_bar_config(disable=True)
    noise = _noise(6, (4, 8, 8, 4))
    embeds, negative = _embeds(7, 2), _embeds(8, 2)
    images = [_pil(9, 24), _pil(10, 24)]
    _feed_torch_noise(monkeypatch, "diffusers.pipelines.kandinsky.pipeline_kandinsky_img2img", noise)
    common = dict(prompt=PROMPTS, image=images, num_inference_steps=5, strength=0.6, num_images_per_prompt=2,
                  height=SIZE, width=SIZE, guidance_scale=4.0, output_type="np")
    out = pipe(image_embeds=embeds, negative_image_embeds=negative, latents=noise, **common)
    with torch.no_grad():
        ref = torch_pipe(image_embeds=torch.from_numpy(embeds), negative_image_embeds=torch.from_numpy(negative), **common)
    err = rel_l2(out.images, ref.images)
    print(f"KandinskyImg2ImgPipeline vs diffusers: rel L2 {err:.2e}")
    assert err < IMAGE_TOL


def test_inpaint_matches_diffusers(kandinsky):
    _, torch_pipes, ours = kandinsky
    latents = _noise(11, (2, 8, 8, 4))
    embeds, negative = _embeds(12, 1), _embeds(13, 1)
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[2:9, 5:12] = 1
    common = dict(prompt="a hat", image=_pil(14), mask_image=mask, num_inference_steps=STEPS, num_images_per_prompt=2,
                  height=SIZE, width=SIZE, guidance_scale=4.0, output_type="np")
    out = ours["inpaint"](image_embeds=embeds, negative_image_embeds=negative, latents=latents, **common)
    with torch.no_grad():
        ref = torch_pipes["inpaint"](image_embeds=torch.from_numpy(embeds), negative_image_embeds=torch.from_numpy(negative),
                                     latents=_torch(latents), **common)
    err = rel_l2(out.images, ref.images)
    print(f"KandinskyInpaintPipeline vs diffusers: rel L2 {err:.2e}")
    assert err < IMAGE_TOL


def test_shrink_kept_region_matches_diffusers():
    from diffusers.pipelines.kandinsky.pipeline_kandinsky_inpaint import prepare_mask

    from jaxgen.pipelines.kandinsky.decoder import shrink_kept_region

    keep = (np.random.default_rng(0).random((2, 9, 7, 1)) > 0.3).astype(np.float32)
    ref = prepare_mask(_torch(keep)).numpy()
    np.testing.assert_array_equal(shrink_kept_region(keep), nchw_to_nhwc(ref))


# --------------------------------------------------------------------------- combined, Auto, CLI


def test_combined_is_prior_then_decoder_and_finds_its_prior(kandinsky):
    folders, _, ours = kandinsky
    combined = jaxgen.KandinskyCombinedPipeline.from_pretrained(folders["decoder"])  # prior from README.md
    assert isinstance(combined.prior_pipe, jaxgen.KandinskyPriorPipeline)
    combined.set_progress_bar_config(disable=True)
    common = dict(num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="np")
    out = combined("a photo of a cat", prior_num_inference_steps=STEPS, rng=7, **common)
    # the same by hand: the prior on the first key, the decoder on the second
    prior_key, decoder_key = jax.random.split(jax.random.key(7))
    embeds = ours["prior"]("a photo of a cat", num_inference_steps=STEPS, rng=prior_key)
    by_hand = ours["decoder"]("a photo of a cat", embeds.image_embeds, embeds.negative_image_embeds, rng=decoder_key,
                              **common)
    np.testing.assert_allclose(out.images, by_hand.images, atol=1e-6)
    # from two loaded pipelines, nothing reloaded; components under diffusers' names
    again = jaxgen.KandinskyCombinedPipeline.from_pipes(ours["prior"], ours["decoder"])
    assert again.unet is ours["decoder"].unet and again.prior_prior is ours["prior"].prior
    assert set(again.components) >= {"unet", "movq", "text_encoder", "prior_prior", "prior_text_encoder"}


def test_image_combined_pipelines_are_prior_then_decoder(kandinsky):
    """Img2img and inpainting combined: the prompt's embeddings from the prior, one image per prompt repeated
    for each of its images, the same keys as the decoders by hand."""
    folders, _, ours = kandinsky
    image, mask = _pil(15), np.zeros((SIZE, SIZE), np.float32)
    mask[:8] = 1
    prior_key, decoder_key = jax.random.split(jax.random.key(3))
    embeds = ours["prior"]("a hat", num_inference_steps=STEPS, rng=prior_key)
    common = dict(num_inference_steps=STEPS, height=SIZE, width=SIZE, guidance_scale=4.0, output_type="np")
    cases = (
        (jaxgen.KandinskyImg2ImgCombinedPipeline, ours["decoder"], dict(image=image, strength=0.7), jaxgen.KandinskyImg2ImgPipeline),
        (jaxgen.KandinskyInpaintCombinedPipeline, ours["inpaint"], dict(image=image, mask_image=mask), None),
    )
    for combined_cls, decoder, inputs, decoder_cls in cases:
        decoder = decoder_cls(**decoder.components) if decoder_cls else decoder
        decoder.set_progress_bar_config(disable=True)
        combined = combined_cls.from_pretrained(folders["decoder" if decoder_cls else "inpaint"], prior=ours["prior"],
                                                unet=decoder.unet, movq=decoder.movq, text_encoder=decoder.text_encoder)
        combined.set_progress_bar_config(disable=True)
        out = combined("a hat", prior_num_inference_steps=STEPS, rng=3, **inputs, **common)
        by_hand = decoder("a hat", image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                          rng=decoder_key, **inputs, **common)
        np.testing.assert_allclose(out.images, by_hand.images, atol=1e-6, err_msg=combined_cls.__name__)


def test_warmup_compiles_what_the_call_runs(kandinsky):
    _, _, ours = kandinsky
    pipe = ours["decoder"]
    pipe.warmup(height=SIZE, width=SIZE, num_inference_steps=STEPS, batch_size=1, output_type="np")
    embeds = np.zeros((1, EMBED), np.float32)
    with count_compiles() as compiled:
        pipe("a cat", embeds, embeds, height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="np")
    assert compiled() == 0


def test_auto_pipelines_map_kandinsky_as_diffusers(kandinsky):
    folders, _, _ = kandinsky
    assert jaxgen.AutoPipelineForText2Image.pipeline_class_for(folders["decoder"]) is jaxgen.KandinskyCombinedPipeline
    assert jaxgen.AutoPipelineForImage2Image.pipeline_class_for(folders["decoder"]) is jaxgen.KandinskyImg2ImgCombinedPipeline
    assert jaxgen.AutoPipelineForInpainting.pipeline_class_for(folders["inpaint"]) is jaxgen.KandinskyInpaintCombinedPipeline
    pipe = jaxgen.AutoPipelineForInpainting.from_pretrained(folders["inpaint"])
    assert isinstance(pipe.decoder_pipe, jaxgen.KandinskyInpaintPipeline)


def test_cli_runs_prior_and_decoder(kandinsky, tmp_path, capsys, one_device):
    from jaxgen.cli import main

    folders, _, _ = kandinsky
    out = tmp_path / "k.png"
    assert main(["generate", "a photo of a cat", "--model", str(folders["decoder"]), "--prior-model",
                 str(folders["prior"]), "--steps", str(STEPS), "--prior-steps", str(STEPS), "--prior-guidance", "2",
                 "--height", str(SIZE), "--width", str(SIZE), "--out", str(out)]) == 0
    assert PIL.Image.open(out).size == (SIZE, SIZE)


# --------------------------------------------------------------------------- bad input


def _bad_inputs():
    e = lambda rows, width=EMBED: np.zeros((rows, width), np.float32)
    img = np.full((1, SIZE, SIZE, 3), 0.5, np.float32)
    return [
        ("decoder", dict(image_embeds=e(1, 7), negative_image_embeds=e(1, 7)), "width 7"),
        ("decoder", dict(image_embeds=e(3), negative_image_embeds=e(3)), "3 rows"),
        ("decoder", dict(image_embeds=e(1), negative_image_embeds=e(2)), "negative_image_embeds"),
        ("decoder", dict(image_embeds=e(1), negative_image_embeds=e(1), height=0), "height"),
        ("img2img", dict(image=img, image_embeds=e(1), negative_image_embeds=e(1), strength=1.5), "strength"),
        ("img2img", dict(image=img, image_embeds=e(1), negative_image_embeds=e(1), strength=-0.1), "strength"),
        ("img2img", dict(image=img, image_embeds=e(1), negative_image_embeds=e(1), height=18), "divisible by 4"),
        ("img2img", dict(image=np.zeros((1, 8, 8, 3)), image_embeds=e(1), negative_image_embeds=e(1)), "image"),
        ("inpaint", dict(image=img, mask_image=np.ones((8, 8), np.float32), image_embeds=e(1),
                         negative_image_embeds=e(1)), "mask_image"),
    ]


@pytest.mark.parametrize("name,kwargs,message", _bad_inputs(), ids=[f"{n}-{m}" for n, _, m in _bad_inputs()])
def test_bad_input_fails_before_compiling(kandinsky, name, kwargs, message):
    _, _, ours = kandinsky
    pipe = ours["inpaint"] if name == "inpaint" else ours["decoder"]
    if name == "img2img":
        pipe = jaxgen.KandinskyImg2ImgPipeline(**pipe.components)
    call = {"prompt": "a photo of a cat", "num_inference_steps": STEPS, "height": SIZE, "width": SIZE, **kwargs}
    with count_compiles() as compiled, pytest.raises(ValueError, match=message):
        pipe(**call)
    assert compiled() == 0


def test_interpolate_weights_must_match(kandinsky):
    with count_compiles() as compiled, pytest.raises(ValueError, match="weights"):
        kandinsky[2]["prior"].interpolate(["a cat", "a dog"], [1.0])
    assert compiled() == 0


def test_generator_is_refused_with_a_pointer_to_rng(kandinsky):
    with pytest.raises(TypeError, match="rng"):
        kandinsky[2]["prior"]("a cat", generator=torch.Generator())
