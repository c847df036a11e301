"""PixArtAlphaPipeline end to end: parity with diffusers image for image, inputs, outputs, errors."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from tests.conftest import nchw_to_nhwc, nhwc_to_nchw, rel_l2

STEPS = 4


@pytest.fixture(scope="module")
def jax_pipe(tiny_pixart):
    from jaxgen import PixArtAlphaPipeline

    folder, _ = tiny_pixart
    pipe = PixArtAlphaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_both(tiny_pixart, jax_pipe, *, prompt, height, width, guidance_scale, num_images_per_prompt, seed=0, **kw):
    import torch

    _, torch_pipe = tiny_pixart
    batch = (1 if isinstance(prompt, str) else len(prompt)) * num_images_per_prompt
    latents = np.random.default_rng(seed).standard_normal((batch, height // 2, width // 2, 4)).astype(np.float32)
    common = dict(
        prompt=prompt, height=height, width=width, guidance_scale=guidance_scale, num_inference_steps=STEPS,
        num_images_per_prompt=num_images_per_prompt, output_type="np", use_resolution_binning=False, **kw,
    )
    ours = jax_pipe(latents=latents, **common).images
    with torch.no_grad():
        ref = torch_pipe(latents=torch.from_numpy(nhwc_to_nchw(latents).copy()), **common).images
    return np.asarray(ours), np.asarray(ref)


@pytest.mark.parametrize(
    "prompt,height,width,guidance_scale,n",
    [
        (["a photo of a cat", "an astronaut riding a horse on the moon"], 16, 16, 4.5, 1),
        ("a small cactus with a happy face", 16, 24, 1.0, 2),
        ("the quick brown fox", 24, 16, 4.5, 2),
    ],
    ids=["square-cfg-2prompts", "wide-nocfg-2images", "tall-cfg-2images"],
)
def test_pipeline_matches_diffusers(tiny_pixart, jax_pipe, prompt, height, width, guidance_scale, n):
    ours, ref = _run_both(
        tiny_pixart, jax_pipe, prompt=prompt, height=height, width=width, guidance_scale=guidance_scale,
        num_images_per_prompt=n,
    )
    assert ours.shape == ref.shape == ((1 if isinstance(prompt, str) else len(prompt)) * n, height, width, 3)
    assert ours.dtype == np.float32
    assert rel_l2(ours, ref) < 1e-4


def test_ddim_swapped_in_matches_diffusers(tiny_pixart, jax_pipe):
    import torch
    from diffusers import DDIMScheduler as TorchDDIM

    from jaxgen import DDIMScheduler, PixArtAlphaPipeline

    folder, torch_pipe = tiny_pixart
    pipe = PixArtAlphaPipeline(**jax_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    original = torch_pipe.scheduler
    # both from the saved config, as after from_pretrained (an in-memory diffusers config also
    # lists `_use_default_values`, which from_config drops: jaxgen does the same, tested apart)
    torch_pipe.scheduler = TorchDDIM.from_config(TorchDDIM.load_config(folder, subfolder="scheduler"))
    try:
        ours, ref = _run_both(
            tiny_pixart, pipe, prompt="a photo of a cat", height=16, width=16, guidance_scale=4.5,
            num_images_per_prompt=1, seed=3,
        )
    finally:
        torch_pipe.scheduler = original
    assert rel_l2(ours, ref) < 1e-4
    assert pipe.scheduler.config["timestep_spacing"] == torch_pipe.scheduler.config.timestep_spacing == "linspace"


def test_encode_prompt_matches_diffusers(tiny_pixart, jax_pipe):
    import torch

    _, torch_pipe = tiny_pixart
    ours = jax_pipe.encode_prompt("an astronaut riding a horse", True, negative_prompt="a cat", num_images_per_prompt=2)
    with torch.no_grad():
        ref = torch_pipe.encode_prompt("an astronaut riding a horse", True, negative_prompt="a cat", num_images_per_prompt=2)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(np.asarray(a).shape, tuple(b.shape))
        assert rel_l2(np.asarray(a), b.float().numpy()) < 1e-5
    assert ours[0].shape[1] == 120


def test_prompt_embeds_path_equals_prompt_path(jax_pipe):
    embeds, mask, neg, neg_mask = jax_pipe.encode_prompt("a photo of a cat", True)
    latents = np.random.default_rng(1).standard_normal((1, 8, 8, 4)).astype(np.float32)
    common = dict(height=16, width=16, num_inference_steps=STEPS, output_type="latent", use_resolution_binning=False, latents=latents)
    a = jax_pipe(prompt="a photo of a cat", **common).images
    b = jax_pipe(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg,
        negative_prompt_attention_mask=neg_mask, negative_prompt=None, **common,
    ).images
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == (1, 8, 8, 4)


def test_seeds_and_outputs(jax_pipe):
    common = dict(prompt="a photo of a cat", height=16, width=16, num_inference_steps=2, use_resolution_binning=False)
    pil = jax_pipe(rng=0, **common).images
    assert len(pil) == 1 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    a = jax_pipe(rng=0, output_type="np", **common).images
    b = jax_pipe(rng=jax.random.key(0), output_type="np", **common).images
    c = jax_pipe(rng=1, output_type="np", **common).images
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(np.asarray(pil[0]), np.round(a[0] * 255).astype(np.uint8))
    image, = jax_pipe(rng=0, output_type="np", return_dict=False, **common)
    np.testing.assert_array_equal(image, a)


def test_progress_bar_and_callback(jax_pipe, capsys):
    from jaxgen import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline(**jax_pipe.components)  # progress bar on by default
    seen = []
    pipe("a photo of a cat", height=16, width=16, num_inference_steps=3, use_resolution_binning=False,
         output_type="latent", callback=lambda i, t, latents: seen.append((int(i), int(t), latents.shape)))
    jax.effects_barrier()
    assert [s[0] for s in sorted(seen)] == [0, 1, 2]
    assert "3/3" in capsys.readouterr().err


BAD_INPUTS = [
    (dict(height=20, width=16), "divisible by 8"),
    (dict(prompt=None), "Provide either `prompt` or `prompt_embeds`"),
    (dict(prompt_embeds=np.zeros((1, 120, 32), np.float32), prompt_attention_mask=np.ones((1, 120))), "Cannot forward both `prompt`"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(output_type="tensor"), "output_type"),
    (dict(latents=np.zeros((1, 4, 8, 8), np.float32)), "latents"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(callback_steps=0), "callback_steps"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_fails_before_compiling(jax_pipe, kwargs, message):
    from jaxgen.pipelines import sampling
    from jaxgen.text import encoding

    call = dict(prompt="a photo of a cat", height=16, width=16, use_resolution_binning=False, num_inference_steps=2)
    call.update(kwargs)
    before = (sampling.denoise._cache_size(), encoding._encode._cache_size())
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        jax_pipe(**call)
    assert (sampling.denoise._cache_size(), encoding._encode._cache_size()) == before


def test_negative_embeds_of_another_shape(jax_pipe):
    embeds, mask, neg, neg_mask = jax_pipe.encode_prompt("a photo of a cat", True)
    with pytest.raises(ValueError, match="must have the same shape"):
        jax_pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt=None,
                 negative_prompt_embeds=neg[:, :60], negative_prompt_attention_mask=neg_mask[:, :60], height=16, width=16)


def test_generator_is_refused_with_a_pointer_to_rng(jax_pipe):
    with pytest.raises(TypeError, match="rng"):
        jax_pipe("a cat", generator=0)


def test_components_build_another_pipeline_without_reloading(jax_pipe):
    from jaxgen import PixArtAlphaPipeline

    other = PixArtAlphaPipeline(**jax_pipe.components)
    assert other.transformer is jax_pipe.transformer and other.vae is jax_pipe.vae


def test_auto_pipeline_and_component_none(tiny_pixart):
    from jaxgen import AutoPipelineForImage2Image, AutoPipelineForText2Image, PixArtAlphaPipeline

    folder, _ = tiny_pixart
    pipe = AutoPipelineForText2Image.from_pretrained(folder, text_encoder=None)
    assert isinstance(pipe, PixArtAlphaPipeline) and pipe.text_encoder is None
    with pytest.raises(ValueError, match="prompt_embeds"):
        pipe("a photo of a cat", height=16, width=16, use_resolution_binning=False, num_inference_steps=1)
    with pytest.raises(ValueError, match="image-to-image"):
        AutoPipelineForImage2Image.from_pretrained(folder)


def test_resolution_binning_and_resize_back_match_diffusers(tiny_pixart_256):
    import torch

    from jaxgen import PixArtAlphaPipeline

    folder, torch_pipe = tiny_pixart_256
    pipe = PixArtAlphaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    # 200x300 is binned to the nearest 256-table ratio (0.67 -> 208x304), then resized back
    latents = np.random.default_rng(5).standard_normal((1, 26, 38, 4)).astype(np.float32)
    common = dict(prompt="a painting of a city", height=200, width=300, num_inference_steps=2, output_type="np")
    ours = pipe(latents=latents, **common).images
    with torch.no_grad():
        ref = torch_pipe(latents=torch.from_numpy(nhwc_to_nchw(latents).copy()), **common).images
    assert ours.shape == ref.shape == (1, 200, 300, 3)
    assert rel_l2(ours, ref) < 1e-4


def test_binning_without_bins_names_the_sizes_and_the_way_out(jax_pipe):
    """diffusers' "Invalid sample size" ValueError, saying which sample sizes have bins and what to pass."""
    from jaxgen import PixArtAlphaPipeline
    from jaxgen.pipelines import sampling

    module, variables = jax_pipe.transformer.unbind()
    other = module.clone(config=module.config.replace(sample_size=48))
    pipe = PixArtAlphaPipeline(**{**jax_pipe.components, "transformer": other.bind(variables)})
    before = sampling.denoise._cache_size()
    with pytest.raises(ValueError, match="Invalid sample size") as error:
        pipe("a cat", num_inference_steps=2)
    message = str(error.value)
    assert "sample_size is 48" in message and "128 (1024 px), 64 (512 px), 32 (256 px)" in message
    assert "use_resolution_binning=False" in message and "--no-resolution-binning" in message
    assert sampling.denoise._cache_size() == before


def test_bfloat16_pipeline_is_close_to_float32(tiny_pixart, jax_pipe):
    from jaxgen import PixArtAlphaPipeline

    folder, _ = tiny_pixart
    pipe = PixArtAlphaPipeline.from_pretrained(folder, dtype=jnp.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.variables["params"]["proj_out"]["kernel"].dtype == jnp.bfloat16
    latents = np.random.default_rng(7).standard_normal((1, 8, 8, 4)).astype(np.float32)
    call = dict(prompt="a photo of a cat", height=16, width=16, num_inference_steps=STEPS, output_type="np",
                use_resolution_binning=False, latents=latents)
    low = pipe(**call).images
    high = jax_pipe(**call).images
    assert low.dtype == np.float32 and np.isfinite(low).all()
    assert rel_l2(low, high) < 5e-2


def test_custom_timesteps_match_diffusers_and_unsupported_ones_fail(tiny_pixart, jax_pipe):
    from jaxgen import DDIMScheduler, PixArtAlphaPipeline

    ours, ref = _run_both(
        tiny_pixart, jax_pipe, prompt="a photo of a cat", height=16, width=16, guidance_scale=4.5,
        num_images_per_prompt=1, timesteps=[999, 700, 300],
    )
    assert rel_l2(ours, ref) < 1e-4
    pipe = PixArtAlphaPipeline(**jax_pipe.components)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="does not support custom `timesteps`"):
        pipe("a photo of a cat", timesteps=[999, 500], height=16, width=16, use_resolution_binning=False)
    with pytest.raises(ValueError, match="custom"):
        jax_pipe("a photo of a cat", sigmas=[1.0, 0.5], height=16, width=16, use_resolution_binning=False)
