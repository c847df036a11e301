"""Shared test helpers: comparison metric, layout changes, torch seeding, the real-size configs."""

from __future__ import annotations

import contextlib
import functools
import os

# Before anything imports jax: the suite (and CI) runs on 8 CPU devices, so that sharding and
# multi-device sampling are tested everywhere; at XLA:CPU's backend optimisation level 0, because the suite's tiny
# models are compile-bound (a third less wall time on 2 cores; their run time is noise).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
# Tests compile afresh and write nothing under ~/.cache (tests/test_sharding.py checks the cache).
os.environ.setdefault("JAXGEN_COMPILATION_CACHE", "off")
from pathlib import Path

import numpy as np
import pytest

REAL_CONFIGS = Path(__file__).resolve().parent / "configs"
"""The real checkpoints' config.json files (no weights), with their provenance: tests/configs/README.md."""


_BACKEND_COMPILES = [0]


def _count_backend_compiles(event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _BACKEND_COMPILES[0] += 1


@contextlib.contextmanager
def count_compiles():
    """``with count_compiles() as compiled: ...``; ``compiled()`` is how many XLA programs were compiled
    inside the block (any jitted function or eager op), read from jax's compile events."""
    import jax

    if not getattr(count_compiles, "_registered", False):
        jax.monitoring.register_event_duration_secs_listener(_count_backend_compiles)
        count_compiles._registered = True
    start = _BACKEND_COMPILES[0]
    yield lambda: _BACKEND_COMPILES[0] - start


@pytest.fixture
def one_device(monkeypatch):
    """Default meshes on one device for this test (``jax.local_devices`` cut to the first): for command lines and
    examples, which build their pipelines themselves; on the session's 8 CPU devices one image would be padded to
    8 rows, 8 times the work on 2 cores. The images are the same on 1 or 8 devices (test_sharding.py)."""
    import jax

    local = jax.local_devices
    monkeypatch.setattr(jax, "local_devices", lambda *args, **kwargs: local(*args, **kwargs)[:1])


@pytest.fixture(scope="module")
def one_torch_thread():
    """diffusers' beam search and tiny models run many small forwards: on a busy 2-core machine torch's thread pool
    makes them much slower than one thread. Use as ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_l2(a, b) -> float:
    """Relative L2 error ||a - b|| / ||b|| in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def nchw_to_nhwc(x) -> np.ndarray:
    """A torch NCHW tensor or array -> numpy NHWC."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.transpose(x, (0, 2, 3, 1))


def nhwc_to_nchw(x) -> np.ndarray:
    """numpy/jax NHWC -> numpy NCHW."""
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


@pytest.fixture(scope="session")
def real_configs() -> Path:
    """The folder of real-size config.json files (tests/configs)."""
    return REAL_CONFIGS


CORPUS = [
    "a photo of a cat", "a small cactus with a happy face in the sahara desert",
    "an astronaut riding a horse on the moon", "the quick brown fox jumps over the lazy dog",
    "a painting of a city at night with neon lights",
]


def make_t5_tokenizer(folder: Path):
    """A tiny T5 tokenizer (sentencepiece unigram, 48 pieces) trained here: the Hub is not reachable."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"), vocab_size=48, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2, hard_vocab_limit=False,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    return T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], extra_ids=0)


def make_clip_tokenizer(folder: Path, max_length: int = 12):
    """A tiny byte-level BPE CLIP tokenizer: letters, their word-final forms and a few merges; ``<|endoftext|>``
    (id 1) is EOS and pad."""
    import json

    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["<|startoftext|>", "<|endoftext|>", "!", *letters, *(c + "</w>" for c in letters),
             "th", "the</w>", "ca", "cat</w>", "at</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\nc a\nca t</w>\na t</w>\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def perturb_(model, scale: float = 0.05, seed: int = 0):
    """Add seeded noise to every parameter, so zero-initialised layers cannot hide a bug."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def build_tiny_pixart(folder: Path, *, sample_size: int = 128, vae_levels: int = 2, seed: int = 0, patch_size: int = 2,
                      vae_channels: tuple[int, ...] = (8, 16, 16, 16), vae_mid_attention: bool = True,
                      sigma: bool = False):
    """Build, perturb and ``save_pretrained`` a tiny diffusers PixArtAlphaPipeline; returns the torch pipeline.

    ``patch_size`` 8 with 4 VAE levels keeps the real checkpoints' pixel geometry (sample_size 128 is 1024 px)
    at a few hundred tokens (the README examples run on such a model). ``sigma``: a PixArtSigmaPipeline as the
    Σ checkpoints are (a transformer without micro-conditions whatever its size, the SDXL VAE's scaling factor)."""
    import torch
    from diffusers import (
        AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = make_t5_tokenizer(Path(folder) / "_spm")
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ))
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size, num_layers=2, patch_size=patch_size, attention_head_dim=12, num_attention_heads=2,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, **({"use_additional_conditions": False} if sigma else {}),
    )
    channels = tuple(vae_channels)[:vae_levels]
    vae = AutoencoderKL(
        block_out_channels=channels, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * vae_levels,
        up_block_types=("UpDecoderBlock2D",) * vae_levels, sample_size=32, mid_block_add_attention=vae_mid_attention,
        **({"scaling_factor": 0.13025, "force_upcast": True} if sigma else {}),
    )
    for i, m in enumerate((text_encoder, transformer, vae)):
        perturb_(m, seed=seed + i)
    scheduler = DPMSolverMultistepScheduler()
    pipe = (PixArtSigmaPipeline if sigma else PixArtAlphaPipeline)(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="session")
def tiny_pixart(tmp_path_factory):
    """(folder, torch pipeline) of a tiny PixArt pipeline with micro-conditions (sample_size 128)."""
    folder = tmp_path_factory.mktemp("tiny_pixart")
    return folder, build_tiny_pixart(folder)


@pytest.fixture(scope="session")
def tiny_pixart_256(tmp_path_factory):
    """(folder, torch pipeline): tiny PixArt with sample_size 32 (256 bins, no micro-conditions), VAE factor 8."""
    folder = tmp_path_factory.mktemp("tiny_pixart_256")
    return folder, build_tiny_pixart(folder, sample_size=32, vae_levels=4, seed=10)


def make_xlm_roberta_tokenizer(folder: Path):
    """A tiny XLM-RoBERTa tokenizer (``XLMRobertaTokenizerFast``; a sentencepiece unigram model trained here on
    CORPUS: the Hub is not reachable), laid out as XLM-R's: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
    then the pieces, ``<mask>`` last. It round-trips through ``save_pretrained``/``from_pretrained``."""
    import sentencepiece as spm
    from transformers import XLMRobertaTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("\n".join(CORPUS * 20))
    # sentencepiece's own specials are <unk> 0, <s> 1, </s> 2; XLM-R (fairseq) puts its four first instead
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "sentencepiece.bpe"), vocab_size=48,
        model_type="unigram", character_coverage=1.0, minloglevel=2, hard_vocab_limit=False,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.bpe.model"))
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(sp.id_to_piece(i), sp.get_score(i)) for i in range(3, sp.get_piece_size())]
    vocab.append(("<mask>", 0.0))
    return XLMRobertaTokenizerFast(vocab=vocab, model_max_length=512)


@pytest.fixture(scope="session")
def tiny_hub(tmp_path_factory) -> dict[str, Path]:
    """Hub id -> the folder of a tiny model standing in for it: one of every family's checkpoints (the README
    examples and the notebooks run on them; test_bad_input.py loads every pipeline from them)."""
    return build_tiny_hub(tmp_path_factory.mktemp("tiny_hub"))


def build_tiny_hub(root: Path, only=None) -> dict[str, Path]:
    """Build tiny random-weight stand-ins of every family's Hub checkpoints under ``root`` (diffusers'
    ``save_pretrained`` layout); returns Hub id -> folder. ``only``: Hub ids to build (default all); a checkpoint
    built together with others (Kandinsky's prior and decoders, Würstchen's prior and decoder) brings them along,
    and they are returned too (docs/examples/tiny_models.py builds one family at a time this way)."""
    from tests.test_deepfloyd_if import _build as build_if
    from tests.test_stable_diffusion_upscale import build_tiny_upscale

    from tests.test_kandinsky import build_tiny_kandinsky
    from tests.test_kandinsky22 import build_tiny_kandinsky22
    from tests.test_kandinsky3 import build_tiny_kandinsky3
    from tests.test_unidiffuser import build_tiny_unidiffuser
    from tests.test_wuerstchen import build_tiny_wuerstchen

    root = Path(root)
    geometry = dict(patch_size=8, vae_levels=4, vae_channels=(4, 8, 8, 8), vae_mid_attention=False)
    models = {
        "PixArt-alpha/PixArt-XL-2-1024-MS": lambda f: build_tiny_pixart(f, sample_size=128, seed=20, **geometry),
        "PixArt-alpha/PixArt-XL-2-512x512": lambda f: build_tiny_pixart(f, sample_size=64, seed=30, **geometry),
        "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": lambda f: build_tiny_pixart(f, sample_size=128, seed=35, sigma=True,
                                                                             **geometry),
        "DeepFloyd/IF-I-XL-v1.0": lambda f: build_if(f, stage2=False, seed=40),
        "DeepFloyd/IF-II-L-v1.0": lambda f: build_if(f, stage2=True, seed=50),
        "stabilityai/stable-diffusion-x4-upscaler": build_tiny_upscale,
    }

    def kandinsky() -> dict[str, Path]:  # a MoVQ of 4 levels (8x, as the real one), so that 512 px is 64 x 64 latents
        built, _ = build_tiny_kandinsky(root / "kandinsky", movq_levels=4)
        return {f"kandinsky-community/{repo}": built[name] for name, repo in (
            ("prior", "kandinsky-2-1-prior"), ("decoder", "kandinsky-2-1"), ("inpaint", "kandinsky-2-1-inpaint"))}

    def kandinsky22() -> dict[str, Path]:
        built, _ = build_tiny_kandinsky22(root / "kandinsky22", movq_levels=4)
        return {f"kandinsky-community/{repo}": built[name] for name, repo in (
            ("prior", "kandinsky-2-2-prior"), ("decoder", "kandinsky-2-2-decoder"),
            ("inpaint", "kandinsky-2-2-decoder-inpaint"), ("controlnet", "kandinsky-2-2-controlnet-depth"))}

    def kandinsky3() -> dict[str, Path]:
        build_tiny_kandinsky3(root / "kandinsky3", movq_levels=4, unet_levels=4)
        return {"kandinsky-community/kandinsky-3": root / "kandinsky3"}

    def wuerstchen() -> dict[str, Path]:  # the real sizes: 42.67 and 10.67 px per pixel
        built, _ = build_tiny_wuerstchen(root / "wuerstchen")
        return {"warp-ai/wuerstchen-prior": built["prior"], "warp-ai/wuerstchen": built["decoder"]}

    def unidiffuser() -> dict[str, Path]:  # its own 16 px: the README names no size
        build_tiny_unidiffuser(root / "unidiffuser")
        return {"thu-ml/unidiffuser-v1": root / "unidiffuser"}

    def one(repo: str, build) -> dict[str, Path]:
        build(root / repo.replace("/", "__"))
        return {repo: root / repo.replace("/", "__")}

    groups = {(repo,): functools.partial(one, repo, build) for repo, build in models.items()}
    groups.update({
        ("kandinsky-community/kandinsky-2-1-prior", "kandinsky-community/kandinsky-2-1",
         "kandinsky-community/kandinsky-2-1-inpaint"): kandinsky,
        ("kandinsky-community/kandinsky-2-2-prior", "kandinsky-community/kandinsky-2-2-decoder",
         "kandinsky-community/kandinsky-2-2-decoder-inpaint", "kandinsky-community/kandinsky-2-2-controlnet-depth"):
            kandinsky22,
        ("kandinsky-community/kandinsky-3",): kandinsky3,
        ("warp-ai/wuerstchen-prior", "warp-ai/wuerstchen"): wuerstchen,
        ("thu-ml/unidiffuser-v1",): unidiffuser,
    })
    wanted = None if only is None else {only} if isinstance(only, str) else set(only)
    unknown = set() if wanted is None else wanted - {repo for repos in groups for repo in repos}
    if unknown:
        raise KeyError(f"no tiny stand-in for {sorted(unknown)}")
    folders = {}
    for repos, build in groups.items():
        if wanted is None or wanted & set(repos):
            folders.update(build())
    return folders
