"""PixArt-Σ real-size configs (tests/configs/PixArt-alpha__PixArt-Sigma-XL-2-*): they load in diffusers, resolve as
diffusers resolves them, and every PyTorch key of the real-size models maps onto a jaxgen param of the same shape.

The models are built on torch's meta device (no weights) and the key map runs on shapes alone
(``convert.engine.check_coverage``), as in tests/test_pixart_transformer.py and tests/test_autoencoder_kl.py.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import convert  # noqa: E402
from convert.engine import check_coverage  # noqa: E402
from jaxgen.models import AutoencoderKL, PixArtTransformer2DModel  # noqa: E402

# repo folder -> (sample_size in latents, interpolation_scale) as scripts/convert_pixart_sigma_to_diffusers.py sets
# them: sample_size = image_size // 8, interpolation_scale = {256: 0.5, 512: 1, 1024: 2, 2048: 4}[image_size]
SIGMA = {
    "PixArt-alpha__PixArt-Sigma-XL-2-512-MS": (64, 1),
    "PixArt-alpha__PixArt-Sigma-XL-2-1024-MS": (128, 2),
    "PixArt-alpha__PixArt-Sigma-XL-2-2K-MS": (256, 4),
}


def _coverage(module, torch_model, name: str) -> None:
    """Every key of ``torch_model``'s state dict (after the architecture's legacy renames) maps onto a param of
    ``module`` of the same shape, and no param is left without a key."""
    cfg = module.config
    torch_shapes = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
    torch_shapes = convert.prepare_state_dict(name, cfg, torch_shapes)
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule(name, cfg),
                   ignore=convert.ignored_keys(name, cfg))


@pytest.mark.parametrize("repo", sorted(SIGMA))
def test_sigma_model_index(real_configs, repo):
    index = json.loads((real_configs / repo / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtSigmaPipeline"
    assert hasattr(diffusers, index["_class_name"])
    for component in ("transformer", "vae", "text_encoder", "scheduler"):
        assert (real_configs / repo / component).is_dir(), component


@pytest.mark.parametrize("repo", sorted(SIGMA))
def test_sigma_transformer_config_and_key_coverage(real_configs, repo):
    folder = real_configs / repo / "transformer"
    raw = json.loads((folder / "config.json").read_text())
    assert raw["_class_name"] == "PixArtTransformer2DModel"
    sample_size, interpolation_scale = SIGMA[repo]
    assert raw["sample_size"] == sample_size
    with torch.device("meta"):
        tm = diffusers.PixArtTransformer2DModel.from_config(raw)
    assert tm.use_additional_conditions is False
    assert tm.pos_embed.interpolation_scale == interpolation_scale

    module = PixArtTransformer2DModel.from_config_file(folder)
    cfg = module.config
    assert cfg.sample_size == sample_size
    assert cfg.resolved_use_additional_conditions is False
    assert cfg.resolved_interpolation_scale == interpolation_scale
    assert cfg.resolved_use_additional_conditions == tm.use_additional_conditions
    assert cfg.resolved_interpolation_scale == tm.pos_embed.interpolation_scale
    assert (cfg.num_layers, cfg.num_attention_heads, cfg.attention_head_dim, cfg.caption_channels) == (28, 16, 72, 4096)
    _coverage(module, tm, "PixArtTransformer2DModel")


@pytest.mark.parametrize("repo", sorted(SIGMA))
def test_sigma_sdxl_vae_config_and_key_coverage(real_configs, repo):
    folder = real_configs / repo / "vae"
    raw = json.loads((folder / "config.json").read_text())
    assert raw["_class_name"] == "AutoencoderKL"
    with torch.device("meta"):
        tm = diffusers.AutoencoderKL.from_config(raw)
    assert tm.config.scaling_factor == 0.13025
    module = AutoencoderKL.from_config_file(folder)
    assert module.config.scaling_factor == raw["scaling_factor"] == 0.13025
    assert tuple(module.config.block_out_channels) == (128, 256, 512, 512)
    assert module.config.latent_channels == 4
    _coverage(module, tm, "AutoencoderKL")
