"""Kandinsky 3's pipelines against diffusers (PyTorch, CPU, float32) on a tiny random-weight checkpoint.

The checkpoint (tiny Flan-UL2-style T5 with gated SiLU, tiny ``Kandinsky3UNet``, a MoVQ with Kandinsky's
block types, Kandinsky 3's DDPM config) is saved by diffusers' ``save_pretrained`` and loaded through
jaxgen's ``from_pretrained``. Both sides then run DDIM (deterministic; made from the DDPM config, as a user
swaps schedulers) with the same initial noise.
"""

from __future__ import annotations

import json

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxgen
from jaxgen.models.kandinsky3_unet import Kandinsky3UNetConfig
from jaxgen.pipelines import sampling
from jaxgen.schedulers import DDIMScheduler
from tests.conftest import REAL_CONFIGS, count_compiles, make_t5_tokenizer, nchw_to_nhwc, perturb_, rel_l2
from tests.test_kandinsky import IMAGE_TOL, SIZE, _feed_torch_noise, _movq, _noise, _pil, _torch

PROMPTS = ["a photo of a cat", "the quick brown fox jumps"]
STEPS = 3
LATENT = SIZE // 2  # the tiny MoVQ halves once: 16 px images, 8x8 latents (the tiny UNet halves twice)
# Guided runs: the first DDIM step divides by sqrt(alpha_bar) of t = 999 (squaredcos: ~1e-2) and guidance
# multiplies by g + 1, so float32 rounding grows. Measured against diffusers run in float64 (the exact
# reference), guidance 3 / 5, three steps, latents: jaxgen 5.0e-5 / 8.6e-5, diffusers float32 2.7e-5 / 6.3e-5.
GUIDED_TOL = 1e-4


def build_tiny_kandinsky3(folder, movq_levels: int = 2, unet_levels: int = 3):
    """A tiny Kandinsky 3 checkpoint saved by diffusers in ``folder``: ``movq_levels`` - 1 MoVQ halvings (the
    real one's 4 levels give 8x); a UNet of ``unet_levels`` (with 4, as the real one, its first level has no
    attention; with fewer, diffusers' fixed tuple makes every up level attend). Returns the diffusers pipeline."""
    torch.manual_seed(0)
    tokenizer = make_t5_tokenizer(folder / "_spm")
    unet_config = Kandinsky3UNetConfig.tiny(block_out_channels=(16, 32, 32, 32)[:unet_levels])
    text_encoder = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=unet_config.encoder_hid_dim, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-silu", relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    scheduler_config = json.loads((REAL_CONFIGS / "kandinsky-community__kandinsky-3" / "scheduler" /
                                   "scheduler_config.json").read_text())
    pipe = diffusers.Kandinsky3Pipeline(
        tokenizer=tokenizer, text_encoder=perturb_(text_encoder, seed=1),
        unet=perturb_(diffusers.Kandinsky3UNet(**unet_config.to_dict()), seed=2),
        scheduler=diffusers.DDPMScheduler.from_config(scheduler_config),
        movq=perturb_(_movq(movq_levels), scale=0.02, seed=3))
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def k3(tmp_path_factory):
    """(folder, diffusers' two pipelines on DDIM, jaxgen's two on DDIM), without progress bars."""
    folder = tmp_path_factory.mktemp("kandinsky3")
    ref = build_tiny_kandinsky3(folder)
    ddim = diffusers.DDIMScheduler.from_config(ref.scheduler.config)
    refs = {"t2i": diffusers.Kandinsky3Pipeline(**{**ref.components, "scheduler": ddim}),
            "i2i": diffusers.Kandinsky3Img2ImgPipeline(**{**ref.components, "scheduler": ddim})}
    t2i = jaxgen.Kandinsky3Pipeline.from_pretrained(folder)
    t2i.scheduler = DDIMScheduler.from_config(t2i.scheduler.config)
    ours = {"t2i": t2i, "i2i": jaxgen.Kandinsky3Img2ImgPipeline(**t2i.components)}
    for pipe in (*refs.values(), *ours.values()):
        pipe.set_progress_bar_config(disable=True)
    return folder, refs, ours


def _compare(name: str, ours, theirs, tol: float = IMAGE_TOL) -> None:
    assert np.shape(ours) == np.shape(theirs), (np.shape(ours), np.shape(theirs))
    err = rel_l2(ours, theirs)
    print(f"\n{name} vs diffusers: rel L2 {err:.2e}")
    assert err < tol


def test_encode_prompt_cuts_the_context_as_diffusers(k3):
    """Embeddings zeroed on padding, cut to the longest prompt + 1 token; zeros and an all-zero mask as the
    unconditional half; a negative prompt encoded and cut to the prompts' length."""
    _, refs, ours = k3
    names = ("prompt_embeds", "negative_prompt_embeds", "attention_mask", "negative_attention_mask")
    for prompts, negative, per_prompt in ((PROMPTS, None, 1), (PROMPTS, ["blurry", "a dark and noisy photo"], 1),
                                          (PROMPTS[0], "blurry", 2)):
        out = ours["t2i"].encode_prompt(prompts, True, per_prompt, negative_prompt=negative, _cut_context=True)
        with torch.no_grad():
            ref = refs["t2i"].encode_prompt(prompts, True, per_prompt, negative_prompt=negative, _cut_context=True)
        for name, a, b in zip(names, out, ref):
            assert a.shape == tuple(b.shape), (name, a.shape, b.shape)
            np.testing.assert_allclose(np.asarray(a, np.float64), b.double().numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        assert out[0].shape[1] < 128  # cut


def test_masks_are_repeated_per_image_like_the_embeddings(k3):
    """Several prompts and images per prompt: each row's mask is its own prompt's. (diffusers tiles the masks
    (``mask.repeat(n, 1)``) but repeats the embeddings per prompt, so its rows get other prompts' masks;
    jaxgen keeps them together.)"""
    _, _, ours = k3
    embeds, _, mask, _ = ours["t2i"].encode_prompt(PROMPTS, True, 2, _cut_context=True)
    one, _, one_mask, _ = ours["t2i"].encode_prompt(PROMPTS, True, 1, _cut_context=True)
    np.testing.assert_array_equal(np.asarray(mask), np.repeat(np.asarray(one_mask), 2, axis=0))
    np.testing.assert_array_equal(np.asarray(embeds), np.repeat(np.asarray(one), 2, axis=0))
    assert not np.array_equal(np.asarray(one_mask[0]), np.asarray(one_mask[1]))  # the two prompts' lengths differ


@pytest.mark.parametrize("prompts, guidance_scale, negative, per_prompt", [
    (PROMPTS, 3.0, None, 1), (PROMPTS, 1.0, None, 1), (PROMPTS[1], 5.0, "low quality", 2)])
def test_text_to_image_matches_diffusers(k3, prompts, guidance_scale, negative, per_prompt):
    """Image for image: zero-embedding guidance (the default), no guidance, and a negative prompt with two
    images per prompt (one prompt: diffusers' masks are only right for one, see the test above; the longest
    prompt, so that all three share the shapes of one compiled loop)."""
    _, refs, ours = k3
    latents = _noise(int(guidance_scale), ((1 if isinstance(prompts, str) else len(prompts)) * per_prompt, LATENT, LATENT, 4))
    common = dict(prompt=prompts, num_inference_steps=STEPS, guidance_scale=guidance_scale, negative_prompt=negative,
                  num_images_per_prompt=per_prompt, height=SIZE, width=SIZE, output_type="np")
    out = ours["t2i"](latents=latents, **common)
    with torch.no_grad():
        ref = refs["t2i"](latents=_torch(latents), **common)
    _compare(f"text to image, guidance {guidance_scale}", out.images, ref.images,
             IMAGE_TOL if guidance_scale <= 1 else GUIDED_TOL)


def test_image_to_image_matches_diffusers(k3, monkeypatch):
    """A PIL image per prompt, strength 0.6 of 3 steps, guidance: diffusers' noise is ours."""
    _, refs, ours = k3
    images = [_pil(1), _pil(2)]
    noise = _noise(7, (len(PROMPTS), LATENT, LATENT, 4))
    common = dict(prompt=PROMPTS, image=images, strength=0.6, num_inference_steps=STEPS, output_type="np")
    out = ours["i2i"](latents=noise, **common)
    _feed_torch_noise(monkeypatch, "diffusers.pipelines.kandinsky3.pipeline_kandinsky3_img2img", noise)
    with torch.no_grad():
        ref = refs["i2i"](**common)
    _compare("image to image", out.images, ref.images, GUIDED_TOL)


def test_prompt_embeds_with_masks_match_prompts(k3):
    """Given embeddings and masks (from encode_prompt) give the images the prompts give."""
    _, _, ours = k3
    pipe = ours["t2i"]
    embeds, negative, mask, negative_mask = pipe.encode_prompt(PROMPTS, True, 1, _cut_context=True)
    latents = _noise(3, (len(PROMPTS), LATENT, LATENT, 4))
    common = dict(num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="latent", latents=latents)
    by_text = pipe(PROMPTS, **common).images
    by_embeds = pipe(prompt_embeds=embeds, attention_mask=mask, negative_prompt_embeds=negative,
                     negative_attention_mask=negative_mask, **common).images
    np.testing.assert_allclose(np.asarray(by_embeds), np.asarray(by_text), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("call, message", [
    (dict(prompt="a cat", image=np.zeros((1, SIZE, SIZE, 3), np.float32), strength=1.5), "strength"),
    (dict(prompt="a cat", image=np.zeros((1, 20, 20, 3), np.float32)), "multiples of 8"),
    (dict(prompt_embeds=np.zeros((1, 4, 20), np.float32), image=np.zeros((1, SIZE, SIZE, 3), np.float32)),
     "attention_mask"),
    (dict(prompt_embeds=np.zeros((1, 4, 20), np.float32), attention_mask=np.ones((1, 5)),
          image=np.zeros((1, SIZE, SIZE, 3), np.float32)), "same batch_size and token length"),
    (dict(prompt="a cat", image=None), "`image` must be given"),
])
def test_bad_input_is_refused_before_compiling(k3, call, message):
    _, _, ours = k3
    with count_compiles() as compiled, pytest.raises(ValueError, match=message):
        ours["i2i"](**call)
    assert compiled() == 0


def test_bad_text_to_image_input_is_refused_before_compiling(k3):
    _, _, ours = k3
    pipe = ours["t2i"]
    with count_compiles() as compiled:
        with pytest.raises(ValueError, match="negative_attention_mask"):
            pipe("a cat", negative_prompt_embeds=np.zeros((1, 4, 20), np.float32))
        with pytest.raises(ValueError, match="height"):
            pipe("a cat", height=0)
        with pytest.raises(ValueError, match="Unexpected latents shape"):
            pipe("a cat", height=SIZE, width=SIZE, latents=np.zeros((1, 4, 4, 4), np.float32))
    assert compiled() == 0


def test_auto_pipelines_and_cli_with_the_default_ddpm(k3, tmp_path, one_device):
    """diffusers' Auto mappings (no inpainting for Kandinsky 3); ``jaxgen generate`` with the checkpoint's DDPM
    (variance noise every step): two seeds, two images. (The CLI's --image path is the generic one through
    ``AutoPipelineForImage2Image``, run for Kandinsky 2.2 in test_kandinsky22.py.)"""
    import PIL.Image

    from jaxgen.cli import main

    folder, _, _ = k3
    assert jaxgen.AutoPipelineForText2Image.pipeline_class_for(folder) is jaxgen.Kandinsky3Pipeline
    assert jaxgen.AutoPipelineForImage2Image.pipeline_class_for(folder) is jaxgen.Kandinsky3Img2ImgPipeline
    with pytest.raises(ValueError, match="inpainting"):
        jaxgen.AutoPipelineForInpainting.pipeline_class_for(folder)
    common = ["generate", "a cat", "--model", str(folder), "--steps", "2", "--height", str(SIZE), "--width", str(SIZE)]
    for seed in ("0", "1"):
        assert main([*common, "--seed", seed, "--out", str(tmp_path / f"seed{seed}.png")]) == 0
    images = [np.asarray(PIL.Image.open(tmp_path / f"seed{seed}.png"), np.float32) for seed in ("0", "1")]
    assert all(image.shape == (SIZE, SIZE, 3) for image in images)
    assert np.abs(images[0] - images[1]).max() > 0


def test_movq_round_trip_matches_diffusers(k3):
    """The MoVQ of the checkpoint, encode then decode (not quantized), against diffusers."""
    _, refs, ours = k3
    images = _noise(11, (2, SIZE, SIZE, 3)).clip(-1, 1)
    latents = ours["i2i"].encode_images(images)
    decoded = np.asarray(ours["i2i"].decode_latents(jnp.asarray(latents)))
    with torch.no_grad():
        ref_latents = refs["i2i"].movq.encode(_torch(images)).latents
        ref_images = refs["i2i"].movq.decode(ref_latents, force_not_quantize=True).sample
    _compare("MoVQ encode", latents, nchw_to_nhwc(ref_latents.numpy()), 1e-5)
    _compare("MoVQ decode", decoded, nchw_to_nhwc(ref_images.numpy()), 1e-5)


def test_text_encoder_plan_for_the_real_sizes():
    """Kandinsky 3's T5 (Flan-UL2 encoder) in bfloat16 against chips of 16, 24, 40 and 80 GiB, from the real
    configs' shapes: int8 and offloaded on 16 GiB, offloaded on 24, resident from 40."""
    from jaxgen.models import Kandinsky3UNet, T5EncoderModel, VQModel
    from jaxgen.pipelines.kandinsky3 import text_encoder_plan
    from jaxgen.quantize import cast_floating, param_bytes

    folder = REAL_CONFIGS / "kandinsky-community__kandinsky-3"
    size = lambda cls, name: param_bytes(cast_floating(cls.from_config(json.loads(
        (folder / name / "config.json").read_text()), dtype=jnp.bfloat16).param_shapes(), jnp.bfloat16))
    t5, others = size(T5EncoderModel, "text_encoder"), size(Kandinsky3UNet, "unet") + size(VQModel, "movq")
    print(f"\nbfloat16 params: T5 {t5 / 2**30:.2f} GiB, UNet + MoVQ {others / 2**30:.2f} GiB")
    assert 16 < t5 / 2**30 < 16.5 and 5.5 < others / 2**30 < 6.5
    gib = 2**30
    assert text_encoder_plan(t5, others, 16 * gib) == (True, True)
    assert text_encoder_plan(t5, others, 24 * gib) == (True, False)
    assert text_encoder_plan(t5, others, 40 * gib) == (False, False)
    assert text_encoder_plan(t5, others, None) == (False, False)  # CPU: nothing to decide


@pytest.mark.parametrize("int8", [False, True])
def test_text_encoder_in_host_memory(k3, int8):
    """``text_encoder_offload=True``: the T5 stays on the host and is placed for each encode (same embeddings);
    with ``text_encoder_int8=True`` its Dense weights are int8 (embeddings within the quantization error)."""
    from jaxgen.pipelines.loading import HostModel

    folder, _, ours = k3
    pipe = jaxgen.Kandinsky3Pipeline.from_pretrained(folder, text_encoder_offload=True, text_encoder_int8=int8,
                                                     unet=ours["t2i"].unet, movq=ours["t2i"].movq)
    assert isinstance(pipe.text_encoder, HostModel) and pipe.text_encoder.module.quantized == int8
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(pipe.text_encoder.params))
    embeds, _, mask, _ = pipe.encode_prompt(PROMPTS, True, 1, _cut_context=True)
    ref, _, ref_mask, _ = ours["t2i"].encode_prompt(PROMPTS, True, 1, _cut_context=True)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(ref_mask))
    err = rel_l2(embeds, ref)
    print(f"\nT5 in host memory, int8={int8}: embeddings rel L2 {err:.2e}")
    assert err < (0.05 if int8 else 1e-7)
    if not int8:
        return
    # resident in int8 (every pipeline's text_encoder_quantization): quantized on the host, then placed
    resident = jaxgen.Kandinsky3Pipeline.from_pretrained(folder, text_encoder_offload=False,
                                                         text_encoder_quantization="int8", unet=ours["t2i"].unet,
                                                         movq=ours["t2i"].movq)
    assert resident.text_encoder.quantized and not isinstance(resident.text_encoder, HostModel)
    assert rel_l2(resident.encode_prompt(PROMPTS, True, 1, _cut_context=True)[0], embeds) < 1e-6
    with pytest.raises(ValueError, match="contradicts"):
        jaxgen.Kandinsky3Pipeline.from_pretrained(folder, text_encoder_int8=False, text_encoder_quantization="int8")


def test_one_compiled_loop_for_every_prompt_length(k3):
    """``warmup`` (placeholder "" prompts: the shortest context), then calls whose prompts cut the context to
    other lengths compile no sampling loop (the context is padded to 128 masked tokens; only small eager ops
    on the cut embeddings compile per length); image to image's placeholder image is ``height`` x ``width``."""
    _, _, ours = k3
    pipe = ours["i2i"]
    pipe.warmup(height=SIZE, width=SIZE, num_inference_steps=STEPS, batch_size=2, strength=0.6)
    loops = sampling.denoise._cache_size()  # compiled sampling loops so far
    for prompts in (PROMPTS, ["a cat", "a dog"], ["a much longer prompt about a cat on a mat", "and a dog"]):
        out = pipe(prompts, image=[_pil(3), _pil(4)], strength=0.6, num_inference_steps=STEPS, output_type="np")
        assert out.images.shape == (2, SIZE, SIZE, 3)
    assert sampling.denoise._cache_size() == loops
