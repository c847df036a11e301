"""Shared test helpers: comparison metric, layout changes, torch seeding, and shared paths."""

from __future__ import annotations

import os

# Before anything imports jax: the suite (and CI) runs on 8 CPU devices, so that sharding and
# multi-device sampling are tested everywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Tests compile afresh and write nothing under ~/.cache (tests/test_sharding.py checks the cache).
os.environ.setdefault("JAXGEN_COMPILATION_CACHE", "off")
from pathlib import Path

import numpy as np
import pytest

SHARED_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "configs"
if not SHARED_CONFIGS.is_dir():  # CI clones the repo with shared/ beside it
    SHARED_CONFIGS = Path(os.environ.get("JAXGEN_SHARED_CONFIGS", "../shared/configs")).resolve()


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
def shared_configs() -> Path:
    """The folder of real-size config.json files (../shared/configs)."""
    if not SHARED_CONFIGS.is_dir():
        pytest.fail(f"shared configs folder not found at {SHARED_CONFIGS}; set JAXGEN_SHARED_CONFIGS")
    return SHARED_CONFIGS


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


def perturb_(model, scale: float = 0.05, seed: int = 0):
    """Add seeded noise to every parameter, so zero-initialised layers cannot hide a bug."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def build_tiny_pixart(folder: Path, *, sample_size: int = 128, vae_levels: int = 2, seed: int = 0):
    """Build, perturb and ``save_pretrained`` a tiny diffusers PixArtAlphaPipeline; returns the torch pipeline."""
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = make_t5_tokenizer(Path(folder) / "_spm")
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ))
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size, num_layers=2, patch_size=2, attention_head_dim=12, num_attention_heads=2,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6,
    )
    channels = (8, 16, 16, 16)[:vae_levels]
    vae = AutoencoderKL(
        block_out_channels=channels, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * vae_levels,
        up_block_types=("UpDecoderBlock2D",) * vae_levels, sample_size=32,
    )
    for i, m in enumerate((text_encoder, transformer, vae)):
        perturb_(m, seed=seed + i)
    scheduler = DPMSolverMultistepScheduler()
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)
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
