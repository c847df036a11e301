"""UniDiffuserPipeline against diffusers (PyTorch, CPU, float32) on a tiny random-weight checkpoint saved by
diffusers and loaded through from_pretrained: every mode (text2img, img2text, joint, img, text) with the same
initial latents and the same per-step data-free guidance noise (diffusers' ``randn_tensor`` fed jaxgen's draws),
images and text latents and captions; mode inference as diffusers'; bad input before compiling."""

from __future__ import annotations

import importlib
import json
import shutil

import diffusers
import jax
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from diffusers.pipelines.deprecated.unidiffuser.modeling_text_decoder import UniDiffuserTextDecoder as TorchDecoder
from diffusers.pipelines.deprecated.unidiffuser.modeling_uvit import UniDiffuserModel as TorchUViT

from jaxgen import sharding
from jaxgen.models.unidiffuser_model import UniDiffuserModelConfig
from jaxgen.models.unidiffuser_text_decoder import UniDiffuserTextDecoderConfig
from jaxgen.pipelines.unidiffuser import UniDiffuserPipeline
from tests.conftest import count_compiles, make_clip_tokenizer, nhwc_to_nchw, perturb_, rel_l2
from tests.test_unidiffuser_text_decoder import _save as save_decoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-4
STEPS = 20  # as the README example: the same compiled loops (the step count sets their shapes)
SEQ, HIDDEN, CLIP_DIM, SIDE = 5, 16, 12, 8  # text tokens and CLIP width; CLIP image embedding; latent side
PIPELINE_MODULE = "diffusers.pipelines.deprecated.unidiffuser.pipeline_unidiffuser"
VAE_MODULE = "diffusers.models.autoencoders.vae"


def _gpt2_tokenizer(folder):
    """A byte-level BPE GPT-2 tokenizer of exactly the tiny decoder's 60 tokens; ``<|endoftext|>`` (0) is EOS."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["<|endoftext|>", *letters, "\u0120", *("\u0120" + c for c in letters), "!", ".", ",", "th", "\u0120th", "he"]
    assert len(vocab) == 60
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    merges = ["t h", "h e", *(f"\u0120 {c}" for c in letters), "\u0120t h"]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def build_tiny_unidiffuser(folder):
    """Build, perturb and save a tiny diffusers UniDiffuserPipeline (the decoder's tied head saved by hand)."""
    torch.manual_seed(0)
    clip_tokenizer = make_clip_tokenizer(folder / "_clip_tok", max_length=SEQ)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        hidden_size=HIDDEN, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(clip_tokenizer), max_position_embeddings=SEQ, eos_token_id=1, pad_token_id=1, bos_token_id=0))
    image_encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, projection_dim=CLIP_DIM, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=16, patch_size=4))
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16)
    unet = TorchUViT(**UniDiffuserModelConfig.tiny(text_dim=8, clip_img_dim=CLIP_DIM, num_text_tokens=SEQ).to_dict())
    decoder = TorchDecoder(**UniDiffuserTextDecoderConfig.tiny(prefix_length=SEQ, prefix_inner_dim=HIDDEN,
                                                               prefix_hidden_dim=8).to_dict())
    for i, m in enumerate((text_encoder, image_encoder, vae, unet, decoder)):
        perturb_(m, scale=0.05, seed=i)
    pipe = diffusers.UniDiffuserPipeline(
        vae=vae, text_encoder=text_encoder, image_encoder=image_encoder, clip_image_processor=processor,
        clip_tokenizer=clip_tokenizer, text_decoder=decoder, text_tokenizer=_gpt2_tokenizer(folder / "_gpt2"),
        unet=unet, scheduler=diffusers.DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    untied = pipe.text_decoder
    pipe.text_decoder = None  # diffusers' save_pretrained refuses the tied head: saved by hand below
    pipe.register_to_config(text_decoder=(None, None))
    pipe.save_pretrained(folder)
    pipe.text_decoder = untied
    pipe.register_to_config(text_decoder=("diffusers", "UniDiffuserTextDecoder"))
    (folder / "text_decoder").mkdir()
    save_decoder(untied, folder / "text_decoder")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_decoder"] = ["unidiffuser", "UniDiffuserTextDecoder"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return pipe


@pytest.fixture(scope="module")
def unidiffuser(tmp_path_factory):
    """(diffusers pipeline, jaxgen pipeline on one device)."""
    folder = tmp_path_factory.mktemp("unidiffuser")
    torch_pipe = build_tiny_unidiffuser(folder)
    ours = UniDiffuserPipeline.from_pretrained(folder, mesh=sharding.make_mesh(1, 1, devices=jax.devices()[:1]))
    ours.set_progress_bar_config(disable=True)
    ours.folder = folder
    return torch_pipe, ours


def _noise(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _guidance_noise(rng: int, rows: int, parts: tuple[str, ...]) -> list[np.ndarray]:
    """The data-free guidance noise jaxgen draws, in diffusers' order per step, NCHW for the VAE part: step i's
    key is fold_in(loop key, i), split in 3 (VAE, CLIP, text)."""
    loop_key = jax.random.split(jax.random.key(rng))[1]
    shapes = {0: (rows, SIDE, SIDE, 4), 1: (rows, 1, CLIP_DIM), 2: (rows, SEQ, 8)}
    out = []
    for i in range(STEPS):
        keys = jax.random.split(jax.random.fold_in(loop_key, i), 3)
        for p in parts:
            x = np.asarray(jax.random.normal(keys[p], shapes[p]))
            out.append(nhwc_to_nchw(x) if p == 0 else x)
    return out


def _feed_torch_noise(monkeypatch, noise: list[np.ndarray], vae_noise: np.ndarray | None = None) -> list:
    """diffusers' pipeline draws the guidance noise with ``randn_tensor``: hand it ``noise`` in order (and the
    VAE's posterior draw ``vae_noise``, NHWC). Returns the queue (empty once all were used)."""
    queue = [torch.from_numpy(np.array(n)) for n in noise]

    def randn(shape, **kwargs):
        out = queue.pop(0)
        assert tuple(out.shape) == tuple(shape), (out.shape, shape)
        return out

    monkeypatch.setattr(importlib.import_module(PIPELINE_MODULE), "randn_tensor", randn)
    if vae_noise is not None:
        first = torch.from_numpy(nhwc_to_nchw(vae_noise).copy())
        monkeypatch.setattr(importlib.import_module(VAE_MODULE), "randn_tensor", lambda shape, **kw: first)
    return queue


def _last_latents(store: dict):
    def callback(i, t, latents):
        store["latents"] = latents
    return callback


def _image(seed: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_text_to_image_matches_diffusers(unidiffuser, monkeypatch):
    """Two prompts, guidance 3 (a text-noise call per step), the same image latents; images compared."""
    torch_pipe, ours = unidiffuser
    vae, clip = _noise(0, (2, SIDE, SIDE, 4)), _noise(1, (2, 1, CLIP_DIM))
    queue = _feed_torch_noise(monkeypatch, _guidance_noise(3, 2, (2,)))
    common = dict(prompt=["a cat", "the hat"], num_inference_steps=STEPS, guidance_scale=3.0, output_type="np")
    out = ours(vae_latents=vae, clip_latents=clip, rng=3, **common)
    with torch.no_grad():
        ref = torch_pipe(vae_latents=torch.from_numpy(nhwc_to_nchw(vae)), clip_latents=torch.from_numpy(clip), **common)
    assert not queue and out.text is None and ref.text is None
    err = rel_l2(out.images, ref.images)
    print(f"\nUniDiffuser text2img vs diffusers: images rel L2 {err:.2e}")
    assert out.images.shape == (2, 16, 16, 3) and err < TOL


def test_image_to_text_matches_diffusers(unidiffuser, monkeypatch):
    """One image, guidance 3 (an image-noise call per step), the VAE's posterior draw shared: text latents and
    captions compared."""
    torch_pipe, ours = unidiffuser
    text = _noise(2, (1, SEQ, HIDDEN))
    noise_key = jax.random.split(jax.random.key(4))[0]
    vae_draw = np.asarray(jax.random.normal(jax.random.split(noise_key, 4)[3], (1, SIDE, SIDE, 4)))
    queue = _feed_torch_noise(monkeypatch, _guidance_noise(4, 1, (0, 1)), vae_draw)
    mine, theirs = {}, {}
    common = dict(image=_image(0), num_inference_steps=STEPS, guidance_scale=3.0)
    out = ours(prompt_latents=text, rng=4, callback=_last_latents(mine), **common)
    with torch.no_grad():
        ref = torch_pipe(prompt_latents=torch.from_numpy(text), callback=_last_latents(theirs), **common)
    assert not queue and out.images is None and ref.images is None
    err = rel_l2(mine["latents"]["text"], theirs["latents"].numpy())
    print(f"\nUniDiffuser img2text vs diffusers: text latents rel L2 {err:.2e}, captions {out.text} / {ref.text}")
    assert err < TOL and out.text == ref.text and len(out.text) == 1


def test_joint_matches_diffusers(unidiffuser, monkeypatch):
    """Joint sampling of two samples from the three parts' latents, guidance 2 (two noise calls per step)."""
    torch_pipe, ours = unidiffuser
    vae, clip, text = _noise(5, (2, SIDE, SIDE, 4)), _noise(6, (2, 1, CLIP_DIM)), _noise(7, (2, SEQ, HIDDEN))
    queue = _feed_torch_noise(monkeypatch, _guidance_noise(8, 2, (0, 1, 2)))
    common = dict(num_inference_steps=STEPS, guidance_scale=2.0, output_type="np")
    out = ours(vae_latents=vae, clip_latents=clip, prompt_latents=text, rng=8, **common)
    with torch.no_grad():
        ref = torch_pipe(vae_latents=torch.from_numpy(nhwc_to_nchw(vae)), clip_latents=torch.from_numpy(clip),
                         prompt_latents=torch.from_numpy(text), **common)
    assert not queue
    err = rel_l2(out.images, ref.images)
    print(f"\nUniDiffuser joint vs diffusers: images rel L2 {err:.2e}, captions {out.text} / {ref.text}")
    assert out.images.shape == (2, 16, 16, 3) and err < TOL and out.text == ref.text
    # the three parts as one `latents` (the VAE part flattened channels last): the same samples
    full = np.concatenate([vae.reshape(2, -1), clip.reshape(2, -1), text.reshape(2, -1)], axis=1)
    again = ours(latents=full, rng=8, **common)
    np.testing.assert_array_equal(again.images, out.images)
    assert again.text == out.text


@pytest.mark.parametrize("mode", ["img", "text"])
def test_marginal_modes_match_diffusers(unidiffuser, mode):
    """The unguided marginal modes (set by the mode setters), all latents given."""
    torch_pipe, ours = unidiffuser
    vae, clip, text = _noise(9, (1, SIDE, SIDE, 4)), _noise(10, (1, 1, CLIP_DIM)), _noise(11, (1, SEQ, HIDDEN))
    for pipe in (ours, torch_pipe):
        getattr(pipe, "set_image_mode" if mode == "img" else "set_text_mode")()
    try:
        common = dict(num_inference_steps=STEPS, output_type="np", num_images_per_prompt=2, num_prompts_per_image=2)
        out = ours(vae_latents=vae, clip_latents=clip, prompt_latents=text, **common)
        with torch.no_grad():
            ref = torch_pipe(vae_latents=torch.from_numpy(nhwc_to_nchw(vae)), clip_latents=torch.from_numpy(clip),
                             prompt_latents=torch.from_numpy(text), **common)
    finally:
        ours.reset_mode()
        torch_pipe.reset_mode()
    if mode == "img":
        err = rel_l2(out.images, ref.images)
        print(f"\nUniDiffuser img vs diffusers: images rel L2 {err:.2e}")
        assert out.images.shape == (2, 16, 16, 3) and err < TOL and out.text is None
    else:
        print(f"\nUniDiffuser text vs diffusers: captions {out.text} / {ref.text}")
        assert out.images is None and out.text == ref.text and len(out.text) == 2


def test_mode_inference_matches_diffusers(unidiffuser):
    """_infer_mode for every combination of inputs, with and without a set mode."""
    torch_pipe, ours = unidiffuser
    x = object()
    names = ("prompt", "prompt_embeds", "image", "latents", "prompt_latents", "vae_latents", "clip_latents")
    cases = [dict(), dict(prompt=x), dict(prompt_embeds=x), dict(image=x), dict(prompt=x, image=x), dict(latents=x),
             dict(prompt_latents=x), dict(vae_latents=x), dict(vae_latents=x, clip_latents=x),
             dict(prompt_latents=x, vae_latents=x, clip_latents=x), dict(prompt_latents=x, vae_latents=x)]
    for setter in (None, "set_text_mode", "set_image_to_text_mode", "set_joint_mode"):
        for pipe in (ours, torch_pipe):
            pipe.reset_mode()
            if setter:
                getattr(pipe, setter)()
        for case in cases:
            args = [case.get(n) for n in names]
            assert ours._infer_mode(*args) == torch_pipe._infer_mode(*args), (setter, case)
    ours.reset_mode()
    torch_pipe.reset_mode()


def test_bad_input_raises_before_compiling(unidiffuser):
    """A set mode the inputs contradict, bad counts, latents of the wrong shape, a bad size: ValueError, nothing
    compiled."""
    _, ours = unidiffuser
    with count_compiles() as compiled:
        _bad_calls(ours)
    assert compiled() == 0


def _bad_calls(ours) -> None:
    with pytest.raises(ValueError, match="requires an image"):
        ours.set_image_to_text_mode()
        try:
            ours(prompt="a cat")
        finally:
            ours.reset_mode()
    with pytest.raises(ValueError, match="Provide either `prompt` or `prompt_embeds`"):
        ours.set_text_to_image_mode()
        try:
            ours(image=_image(1))
        finally:
            ours.reset_mode()
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        ours("a cat", num_images_per_prompt=0)
    with pytest.raises(ValueError, match="num_prompts_per_image"):
        ours(image=_image(1), num_prompts_per_image=0)
    with pytest.raises(ValueError, match=r"`vae_latents` should have shape \(batch_size, 8, 8, 4\)"):
        ours("a cat", vae_latents=np.zeros((1, 4, SIDE, SIDE), np.float32))
    with pytest.raises(ValueError, match="`prompt_latents` should have shape"):
        ours(prompt_latents=np.zeros((1, SEQ, 8), np.float32))
    with pytest.raises(ValueError, match="divisible by 2"):
        ours("a cat", height=15, width=16)
    with pytest.raises(TypeError, match="rng"):
        ours("a cat", generator=0)


def test_released_processor_name(unidiffuser, tmp_path):
    """thu-ml/unidiffuser-v1's model_index.json names the CLIP image processor ``image_processor``: read from there."""
    _, ours = unidiffuser
    index = json.loads((ours.folder / "model_index.json").read_text())
    index["image_processor"] = index.pop("clip_image_processor")
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    shutil.copytree(ours.folder / "clip_image_processor", tmp_path / "image_processor")
    given = {k: v for k, v in ours.components.items() if k != "clip_image_processor"}
    loaded = UniDiffuserPipeline.from_pretrained(tmp_path, mesh=ours.mesh, **given)
    assert type(loaded.clip_image_processor) is type(ours.clip_image_processor)
    assert loaded.clip_image_processor.crop_size == ours.clip_image_processor.crop_size


def test_array_image_input_equals_pil(unidiffuser):
    """img2text from an array in [0, 1] (N, H, W, 3): the CLIP embedding of the same picture as a PIL image (the
    processor must not divide the array by 255 again), and the same caption (the command line's settings: its
    compiled loop)."""
    _, ours = unidiffuser
    pil = _image(5)
    array = np.asarray(pil, np.float32)[None] / 255.0
    np.testing.assert_allclose(np.asarray(ours.encode_image_clip_latents(array, 1)),
                               np.asarray(ours.encode_image_clip_latents(pil, 1)), rtol=0, atol=1e-6)
    common = dict(num_inference_steps=STEPS, guidance_scale=3.0, rng=6)
    assert ours(image=array, **common).text == ours(image=pil, **common).text


def test_same_samples_on_one_and_eight_devices(unidiffuser):
    """Joint sampling with guidance (noise drawn for the real rows only) on the default 8-device mesh, 2 samples
    padded to 8 rows: the images and captions of the one-device pipeline."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS in tests/conftest.py)")
    _, ours = unidiffuser
    eight = UniDiffuserPipeline.from_pretrained(ours.folder)
    eight.set_progress_bar_config(disable=True)
    assert eight.mesh.devices.size == 8
    common = dict(num_inference_steps=STEPS, guidance_scale=2.0, output_type="np", num_images_per_prompt=2,
                  num_prompts_per_image=2, rng=12)  # the one-device call: the joint parity test's program
    for pipe in (ours, eight):
        pipe.set_joint_mode()
    try:
        out, ref = eight(**common), ours(**common)
    finally:
        ours.reset_mode()
    np.testing.assert_allclose(out.images, ref.images, rtol=0, atol=1e-5)
    assert out.images.shape == (2, 16, 16, 3) and out.text == ref.text


def test_warmup_then_call_compiles_nothing(unidiffuser):
    """``warmup`` (text to image, its default prompt placeholders) compiles what the call with a prompt and the
    same settings runs."""
    _, ours = unidiffuser
    ours.warmup(num_inference_steps=STEPS, guidance_scale=3.0)
    with count_compiles() as compiled:
        images = ours("a red hat", num_inference_steps=STEPS, guidance_scale=3.0, rng=2, output_type="np").images
    assert images.shape == (1, 16, 16, 3) and compiled() == 0


def test_command_line(unidiffuser, tmp_path, one_device, capsys):
    """``jaxgen generate PROMPT`` (text to image), ``jaxgen generate`` without a prompt (joint: each image with
    its caption in a .txt) and ``jaxgen caption IMAGE``: the pipeline's outputs for the same settings (those of
    the tests above: their compiled loops)."""
    from jaxgen.cli import main

    _, ours = unidiffuser
    model = ["--model", str(ours.folder), "--steps", str(STEPS), "--seed", "3"]
    assert main(["generate", "a cat", *model, "--guidance", "3", "--out", str(tmp_path / "cat.png")]) == 0
    expected = ours("a cat", num_inference_steps=STEPS, guidance_scale=3.0, rng=3).images[0]
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "cat.png")), np.asarray(expected))

    assert main(["generate", *model, "--guidance", "2", "--num-images", "2", "--out", str(tmp_path / "joint")]) == 0
    ours.set_joint_mode()
    try:
        joint = ours(num_inference_steps=STEPS, guidance_scale=2.0, num_images_per_prompt=2, num_prompts_per_image=2,
                     rng=3)
    finally:
        ours.reset_mode()
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "joint" / f"image-{i}.png")),
                                      np.asarray(joint.images[i]))
        assert (tmp_path / "joint" / f"image-{i}.txt").read_text(encoding="utf-8") == joint.text[i] + "\n"

    _image(7).save(tmp_path / "in.png")
    capsys.readouterr()
    assert main(["caption", str(tmp_path / "in.png"), *model, "--guidance", "3"]) == 0
    caption = ours(image=_image(7), num_inference_steps=STEPS, guidance_scale=3.0, rng=3).text
    assert capsys.readouterr().out.splitlines() == caption


def test_command_line_refusals(unidiffuser, tmp_path, capsys):
    """A missing image, no captions from another family, no prompt for a text-to-image family, an --out that cannot
    be written: exit 2, one line."""
    from jaxgen.cli import main

    _, ours = unidiffuser
    assert main(["caption", str(tmp_path / "missing.png"), "--model", str(ours.folder)]) == 2
    assert "missing.png" in capsys.readouterr().err
    _image(1).save(tmp_path / "in.png")
    assert main(["caption", str(tmp_path / "in.png"), "--model", str(ours.folder), "--num-captions", "0"]) == 2
    assert "--num-captions" in capsys.readouterr().err
    pixart = tmp_path / "pixart"
    pixart.mkdir()
    (pixart / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    assert main(["caption", str(tmp_path / "in.png"), "--model", str(pixart)]) == 2
    assert "does not write captions" in capsys.readouterr().err
    assert main(["generate", "--model", str(pixart)]) == 2
    assert "the prompt is required" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["generate", "a cat", "--model", str(pixart), "--out", str(tmp_path / "a-file" / "x.png")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err  # before any model loads
