"""Würstchen's pipelines (prior, decoder, combined) against diffusers' (PyTorch, CPU, float32), image for image:
tiny random-weight checkpoints saved by diffusers (every weight perturbed), the same initial noise, and the
DDPM steps' noise handed to diffusers' ``randn_tensor`` in the order it draws it. Also: the sizes the stages
cannot take, the schedules and embeddings they refuse (before anything compiles), the Auto pipeline and CLI."""

from __future__ import annotations

import importlib

import diffusers
import jax
import numpy as np
import pytest
import torch
import transformers
from diffusers.pipelines.deprecated.wuerstchen import (
    PaellaVQModel as TorchPaella, WuerstchenDiffNeXt as TorchDiffNeXt, WuerstchenPrior as TorchPrior,
)

import jaxgen
from jaxgen.models.paella_vq_model import PaellaVQModelConfig
from jaxgen.models.wuerstchen_diffnext import WuerstchenDiffNeXtConfig
from jaxgen.models.wuerstchen_prior import WuerstchenPriorConfig
from jaxgen.pipelines.wuerstchen import DEFAULT_STAGE_C_TIMESTEPS
from tests.conftest import count_compiles, make_clip_tokenizer, nchw_to_nhwc, nhwc_to_nchw, perturb_, rel_l2

TOL = 1e-5
TEXT_LEN = 12
HEIGHT = WIDTH = 128  # embeddings 3 x 3 (42.67 px each), stage B latents 32 x 32 (10.67 per embedding pixel)
EMBED_SIDE, LATENT_SIDE = 3, 32
PROMPT_STEPS = [1.0, 0.8, 0.5, 0.2, 0.0]  # 4 prior steps
DECODER_STEPS = 3


def _clip(tokenizer, seed: int) -> transformers.CLIPTextModel:
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        hidden_size=24, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer),
        max_position_embeddings=TEXT_LEN, eos_token_id=1, pad_token_id=1, bos_token_id=0, hidden_act="gelu")
    return perturb_(transformers.CLIPTextModel(config), seed=seed)


def build_tiny_wuerstchen(root) -> tuple[dict, dict]:
    """Tiny Würstchen checkpoints saved by diffusers under ``root``: ``prior`` and ``decoder`` (whose README.md
    names the prior, as the Hub's model card does). Returns (folders, the diffusers pipelines)."""
    tokenizer = make_clip_tokenizer(root / "_tok", max_length=TEXT_LEN)
    folders = {"prior": root / "prior", "decoder": root / "decoder"}
    torch.manual_seed(0)
    prior = perturb_(TorchPrior(**WuerstchenPriorConfig.tiny().to_dict()), scale=0.05, seed=1)
    with torch.no_grad():  # keep |1 - b| away from 0 in the prior's output division (see test_wuerstchen_prior)
        prior.out[1].weight.mul_(0.1)
        prior.out[1].bias.mul_(0.1)
    prior_pipe = diffusers.WuerstchenPriorPipeline(tokenizer=tokenizer, text_encoder=_clip(tokenizer, 2), prior=prior,
                                                   scheduler=diffusers.DDPMWuerstchenScheduler())
    decoder = perturb_(TorchDiffNeXt(**WuerstchenDiffNeXtConfig.tiny().to_dict()), scale=0.05, seed=3)
    vqgan = perturb_(TorchPaella(**PaellaVQModelConfig.tiny().to_dict()), scale=0.05, seed=4)
    decoder_pipe = diffusers.WuerstchenDecoderPipeline(tokenizer=tokenizer, text_encoder=_clip(tokenizer, 5),
                                                       decoder=decoder, scheduler=diffusers.DDPMWuerstchenScheduler(),
                                                       vqgan=vqgan)
    prior_pipe.save_pretrained(folders["prior"])
    decoder_pipe.save_pretrained(folders["decoder"])
    (folders["decoder"] / "README.md").write_text(f"---\nprior:\n- {folders['prior']}\n---\n# tiny\n")
    return folders, {"prior": prior_pipe, "decoder": decoder_pipe}


@pytest.fixture(scope="module")
def wuerstchen(tmp_path_factory):
    """(folders, the diffusers pipelines, jaxgen's prior, decoder and combined pipelines), no progress bars."""
    folders, torch_pipes = build_tiny_wuerstchen(tmp_path_factory.mktemp("wuerstchen"))
    prior = jaxgen.WuerstchenPriorPipeline.from_pretrained(folders["prior"])
    decoder = jaxgen.WuerstchenDecoderPipeline.from_pretrained(folders["decoder"])
    ours = {"prior": prior, "decoder": decoder, "combined": jaxgen.WuerstchenCombinedPipeline.from_pipes(prior, decoder)}
    for pipe in (*ours.values(), *torch_pipes.values()):
        pipe.set_progress_bar_config(disable=True)
    return folders, torch_pipes, ours


def _noise(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _step_noise(step_key: jax.Array, steps: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    """The DDPM steps' noise jaxgen draws, NCHW: step i's is normal(fold_in(fold_in(loop key, i), i)) over the
    rows flattened channels last (the loop folds the step in, the scheduler's ``draw_noise`` its step index)."""
    rows = shape[0]
    flat = lambda i: jax.random.normal(jax.random.fold_in(jax.random.fold_in(step_key, i), i), (rows, int(np.prod(shape[1:]))))
    return [nhwc_to_nchw(np.asarray(flat(i)).reshape(shape)) for i in range(steps)]


def _feed_torch_noise(monkeypatch, noise: list[np.ndarray], pipeline_module: str | None = None,
                      initial: np.ndarray | None = None) -> None:
    """diffusers' scheduler draws each step's noise with ``randn_tensor``: hand it ``noise`` in order (and the
    pipeline module's initial latents ``initial``, NHWC, when given)."""
    queue = [torch.from_numpy(n.copy()) for n in noise]

    def step_randn(shape, **kwargs):
        out = queue.pop(0)
        assert tuple(out.shape) == tuple(shape), (out.shape, shape)
        return out

    monkeypatch.setattr(importlib.import_module("diffusers.schedulers.scheduling_ddpm_wuerstchen"), "randn_tensor",
                        step_randn)
    if initial is not None:
        first = torch.from_numpy(nhwc_to_nchw(initial).copy())
        monkeypatch.setattr(importlib.import_module(pipeline_module), "randn_tensor", lambda shape, **kw: first)


def _keys(rng: int) -> tuple[jax.Array, jax.Array]:
    """(initial noise key, loop key) of a pipeline call with ``rng``."""
    return tuple(jax.random.split(jax.random.key(rng)))


def test_prior_matches_diffusers(wuerstchen, monkeypatch):
    """Two prompts, two images each, guidance 4 with the default "" negative prompt, custom timesteps."""
    _, torch_pipes, ours = wuerstchen
    shape = (4, EMBED_SIDE, EMBED_SIDE, 16)
    latents = _noise(1, shape)
    _feed_torch_noise(monkeypatch, _step_noise(_keys(0)[1], len(PROMPT_STEPS) - 1, shape))
    common = dict(prompt=["the cat", "a hat"], height=HEIGHT, width=WIDTH, timesteps=PROMPT_STEPS, guidance_scale=4.0,
                  num_images_per_prompt=2)
    out = ours["prior"](latents=latents, rng=0, output_type="np", **common).image_embeddings
    with torch.no_grad():
        ref = torch_pipes["prior"](latents=torch.from_numpy(nhwc_to_nchw(latents)), output_type="pt",
                                   **common).image_embeddings.numpy()
    err = rel_l2(out, nchw_to_nhwc(ref))
    print(f"\nWuerstchenPriorPipeline vs diffusers: rel L2 {err:.2e}")
    assert out.shape == shape and err < TOL


def test_decoder_matches_diffusers(wuerstchen, monkeypatch):
    """Two image embeddings, one prompt, guidance 2 (zero embeddings and "" on the unconditional rows), 3 steps."""
    _, torch_pipes, ours = wuerstchen
    embeddings = _noise(2, (2, EMBED_SIDE, EMBED_SIDE, 16))
    shape = (2, LATENT_SIDE, LATENT_SIDE, 4)
    latents = _noise(3, shape)
    noise_key, step_key = _keys(7)
    _feed_torch_noise(monkeypatch, _step_noise(step_key, DECODER_STEPS, shape),
                      "diffusers.pipelines.deprecated.wuerstchen.pipeline_wuerstchen", latents)
    common = dict(prompt="the cat", num_inference_steps=DECODER_STEPS, guidance_scale=2.0, output_type="np")
    out = ours["decoder"](embeddings, latents=latents, rng=7, **common).images
    with torch.no_grad():
        ref = torch_pipes["decoder"](torch.from_numpy(nhwc_to_nchw(embeddings)), **common).images
    err = rel_l2(out, ref)
    print(f"WuerstchenDecoderPipeline vs diffusers: images rel L2 {err:.2e}")
    assert out.shape == (2, 4 * LATENT_SIDE, 4 * LATENT_SIDE, 3) and err < TOL


def test_combined_matches_diffusers(wuerstchen, monkeypatch):
    """One prompt, two images, the prior on custom timesteps with guidance 4, the decoder unguided."""
    _, torch_pipes, ours = wuerstchen
    prior_shape, decoder_shape = (2, EMBED_SIDE, EMBED_SIDE, 16), (2, LATENT_SIDE, LATENT_SIDE, 4)
    prior_key, decoder_key = _keys(5)
    decoder_noise_key, decoder_step_key = jax.random.split(decoder_key)
    latents = _noise(4, prior_shape)
    decoder_latents = np.asarray(jax.random.normal(decoder_noise_key, decoder_shape))
    noise = _step_noise(jax.random.split(prior_key)[1], len(PROMPT_STEPS) - 1, prior_shape) + \
        _step_noise(decoder_step_key, DECODER_STEPS, decoder_shape)
    _feed_torch_noise(monkeypatch, noise, "diffusers.pipelines.deprecated.wuerstchen.pipeline_wuerstchen",
                      decoder_latents)
    common = dict(prompt="a cat", height=HEIGHT, width=WIDTH, prior_timesteps=PROMPT_STEPS, prior_guidance_scale=4.0,
                  num_inference_steps=DECODER_STEPS, num_images_per_prompt=2, output_type="np")
    out = ours["combined"](latents=latents, rng=5, **common).images
    torch_combined = diffusers.WuerstchenCombinedPipeline(
        **torch_pipes["decoder"].components, **{"prior_" + k: v for k, v in torch_pipes["prior"].components.items()})
    torch_combined.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = torch_combined(latents=torch.from_numpy(nhwc_to_nchw(latents)), **common).images
    err = rel_l2(out, ref)
    print(f"WuerstchenCombinedPipeline vs diffusers: images rel L2 {err:.2e}")
    assert out.shape == (2, 4 * LATENT_SIDE, 4 * LATENT_SIDE, 3) and err < 2 * TOL  # two samplers chained: 1.1e-5 at the suite's XLA:CPU optimisation level 0


def test_default_stage_c_timesteps_are_diffusers():
    from diffusers.pipelines.deprecated.wuerstchen import DEFAULT_STAGE_C_TIMESTEPS as REF

    np.testing.assert_allclose(DEFAULT_STAGE_C_TIMESTEPS, [float(t) for t in REF], rtol=0, atol=1e-12)
    assert len(DEFAULT_STAGE_C_TIMESTEPS) == 30


@pytest.mark.parametrize("call, message", [
    (dict(height=544), r"multiples of 8"),  # 544 px -> 13 embedding pixels -> 138 latent pixels
    (dict(width=0), r"positive integers"),
    (dict(prior_timesteps=[1.0, 0.5, 0.7, 0.0]), r"descending order"),
    (dict(prior_timesteps=[1.2, 0.5, 0.0]), r"within \[0, 1\]"),
    (dict(decoder_timesteps=[0.5]), r"at least two"),
    (dict(output_type="pt"), r"output_type"),
    (dict(prompt=["a", "b"], negative_prompt=["c"], decoder_guidance_scale=2.0), r"negative_prompt"),
])
def test_combined_refuses_bad_input_before_compiling(wuerstchen, call, message):
    _, _, ours = wuerstchen
    args = dict(prompt="a cat", height=HEIGHT, width=WIDTH, prior_num_inference_steps=2, num_inference_steps=2)
    with count_compiles() as compiled, pytest.raises(ValueError, match=message):
        ours["combined"](**{**args, **call})
    assert compiled() == 0


@pytest.mark.parametrize("embeddings, message", [
    (np.zeros((1, 3, 3, 8), np.float32), r"\(batch, height, width, 16\)"),
    (np.zeros((3, 3, 16), np.float32), r"\(batch, height, width, 16\)"),
    (np.zeros((1, 13, 13, 16), np.float32), r"multiples of 8"),
    (np.zeros((3, 3, 3, 16), np.float32), r"does not divide the 3 image embeddings"),
])
def test_decoder_refuses_bad_embeddings_before_compiling(wuerstchen, embeddings, message):
    _, _, ours = wuerstchen
    prompt = ["a", "b"] if embeddings.shape[0] == 3 else "a"
    with count_compiles() as compiled, pytest.raises(ValueError, match=message):
        ours["decoder"](embeddings, prompt=prompt, num_inference_steps=2)
    assert compiled() == 0


def test_auto_pipeline_and_cli(wuerstchen, tmp_path, one_device):
    """The decoder checkpoint -> the combined pipeline with the prior its README.md names; the CLI runs it."""
    from jaxgen.cli import main

    folders, _, _ = wuerstchen
    assert jaxgen.AutoPipelineForText2Image.pipeline_class_for(folders["decoder"]) is jaxgen.WuerstchenCombinedPipeline
    out = tmp_path / "w.png"
    assert main(["generate", "a cat", "--model", str(folders["decoder"]), "--height", str(HEIGHT), "--width", str(WIDTH),
                 "--steps", "2", "--prior-steps", "2", "--out", str(out)]) == 0
    assert out.is_file()


def test_warmup_then_call_compiles_nothing(wuerstchen):
    """``warmup`` compiles the prior's and the decoder's programs (their loops with zero steps); the call that
    follows, with a real prompt and other step counts, compiles nothing."""
    _, _, ours = wuerstchen
    combined = ours["combined"]
    combined.warmup(height=HEIGHT, width=WIDTH, num_inference_steps=DECODER_STEPS, prior_num_inference_steps=3)
    with count_compiles() as compiled:
        images = combined("the cat", height=HEIGHT, width=WIDTH, prior_num_inference_steps=3,
                          num_inference_steps=DECODER_STEPS, rng=1, output_type="np").images
    assert images.shape == (1, 4 * LATENT_SIDE, 4 * LATENT_SIDE, 3) and compiled() == 0


def test_float16_warns_to_use_bfloat16(wuerstchen, caplog):
    import jax.numpy as jnp

    folders, _, _ = wuerstchen
    with caplog.at_level("WARNING", logger="jaxgen.pipelines.wuerstchen"):
        pipe = jaxgen.WuerstchenPriorPipeline.from_pretrained(folders["prior"], dtype=jnp.float16)
    assert pipe.prior.dtype == jnp.float16 and "use dtype=jnp.bfloat16" in caplog.text
