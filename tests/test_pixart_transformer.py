"""PixArtTransformer2DModel and its shared embeddings against diffusers (PyTorch, CPU, float32)."""

from __future__ import annotations

import json

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock as TorchBasicTransformerBlock
from diffusers.models.embeddings import get_2d_sincos_pos_embed as torch_2d_sincos
from diffusers.models.embeddings import get_timestep_embedding as torch_timestep_embedding

import convert
from convert.engine import check_coverage, convert_state_dict, default_rule
from jaxgen.models.pixart_transformer import PixArtTransformer2DModel, PixArtTransformer2DModelConfig
from jaxgen.nn.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding
from jaxgen.nn.transformer import BasicTransformerBlock
from tests.conftest import nchw_to_nhwc, rel_l2

TOL = 1e-5
REAL = {
    "PixArt-alpha__PixArt-XL-2-1024-MS": PixArtTransformer2DModelConfig.xl_2_1024,
    "PixArt-alpha__PixArt-XL-2-512x512": PixArtTransformer2DModelConfig.xl_2_512,
}
LEGACY_KEYS = {"num_vector_embeds": None, "use_linear_projection": False, "only_cross_attention": False,
               "double_self_attention": False}


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


# ---- shared embedding functions -----------------------------------------------------------------


@pytest.mark.parametrize("dim,flip,shift,scale,max_period", [
    (256, True, 0, 1, 10000), (320, False, 1, 1, 10000), (33, True, 1, 2.5, 1000), (8, False, 0, 1, 10000),
])
def test_timestep_embedding_matches_diffusers(dim, flip, shift, scale, max_period):
    t = torch.tensor([0.0, 1.0, 17.0, 250.5, 999.0])
    ref = torch_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift, scale=scale,
                                   max_period=max_period).numpy()
    out = get_timestep_embedding(jnp.asarray(t.numpy()), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift,
                                 scale=scale, max_period=max_period)
    assert out.shape == ref.shape and out.dtype == jnp.float32
    # torch's float32 exp is off by one ulp on a frequency or two (ours is exp in float64, rounded
    # once); at t = 999 that moves sin/cos by ~3e-5, about 1e-6 relative over the table.
    assert rel_l2(out, ref) < 3e-6


@pytest.mark.parametrize("dim,grid,base,interp", [
    (16, 4, 4, 1.0), (16, (4, 6), 4, 1.0), (24, (6, 3), 4, 2.0), (1152, (64, 64), 64, 2), (1152, (48, 80), 64, 2),
])
def test_2d_sincos_pos_embed_matches_diffusers(dim, grid, base, interp):
    ref = torch_2d_sincos(dim, grid, base_size=base, interpolation_scale=interp, output_type="pt").numpy()
    out = get_2d_sincos_pos_embed(dim, grid, base_size=base, interpolation_scale=interp)
    assert out.dtype == np.float64 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out.astype(np.float32), ref.astype(np.float32))


# ---- BasicTransformerBlock (layer_norm), shared with other families -------------------------------


@pytest.mark.parametrize("activation_fn", ["geglu", "gelu"])
def test_basic_transformer_block_matches_diffusers(activation_fn):
    torch.manual_seed(0)
    tb = _perturbed(TorchBasicTransformerBlock(16, 2, 8, cross_attention_dim=12, activation_fn=activation_fn,
                                               attention_bias=True), seed=1)
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        ref = tb(x, encoder_hidden_states=ctx, encoder_attention_mask=(1 - mask[:, None].float()) * -10000.0).numpy()
    block = BasicTransformerBlock(2, 8, cross_attention_dim=12, activation_fn=activation_fn, attention_bias=True)
    args = (jnp.asarray(x.numpy()), None, jnp.asarray(ctx.numpy()), jnp.asarray(mask.numpy()))
    shapes = jax.eval_shape(block.init, jax.random.key(0), *args)["params"]
    params = convert_state_dict({k: v.numpy() for k, v in tb.state_dict().items()}, shapes, default_rule)
    assert rel_l2(block.apply({"params": params}, *args), ref) < TOL


# ---- the model ----------------------------------------------------------------------------------

# 8x12 latent: not the 8x8 sample_size, so diffusers recomputes the positional table.
X = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(3))
CAPTION = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4))
TIMESTEP = torch.tensor([10, 999])
CAPTION_MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
IMAGE_MASK = torch.ones(2, 24, dtype=torch.long).index_fill_(1, torch.tensor([5, 6, 20]), 0)
MICRO = {"resolution": torch.tensor([[64.0, 96.0], [512.0, 768.0]]), "aspect_ratio": torch.tensor([[1.5], [1.5]])}


def _jax_inputs(added=None, caption_mask=None, image_mask=None):
    j = lambda t: None if t is None else jnp.asarray(t.numpy())
    added = None if added is None else {k: j(v) for k, v in added.items()}
    return (jnp.asarray(nchw_to_nhwc(X)), j(CAPTION), j(TIMESTEP), added, j(image_mask), j(caption_mask))


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    """Micro-conditions on, interpolation_scale 2, saved by diffusers and loaded by jaxgen."""
    cfg = PixArtTransformer2DModelConfig.tiny(use_additional_conditions=True, interpolation_scale=2)
    torch.manual_seed(0)
    tm = _perturbed(diffusers.PixArtTransformer2DModel(**cfg.to_dict()), seed=5)
    folder = tmp_path_factory.mktemp("pixart_micro")
    tm.save_pretrained(folder)
    module, params = PixArtTransformer2DModel.from_pretrained(folder)
    return tm, module, params


@pytest.fixture(scope="module")
def legacy_model(tmp_path_factory):
    """A checkpoint whose config.json says Transformer2DModel (as the Hub's PixArt folders): derived values."""
    cfg = PixArtTransformer2DModelConfig.tiny().to_dict()
    del cfg["use_additional_conditions"], cfg["interpolation_scale"]
    legacy = {"_class_name": "Transformer2DModel", **cfg, **LEGACY_KEYS}
    torch.manual_seed(0)
    tm = _perturbed(diffusers.Transformer2DModel.from_config(legacy), seed=6)  # diffusers remaps the class
    assert type(tm).__name__ == "PixArtTransformer2DModel" and not tm.use_additional_conditions
    folder = tmp_path_factory.mktemp("pixart_legacy")
    tm.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(legacy))
    module, params = PixArtTransformer2DModel.from_pretrained(folder)
    return tm, module, params


def _torch_forward(tm, added=None, caption_mask=None, image_mask=None):
    with torch.no_grad():
        return nchw_to_nhwc(tm(X, encoder_hidden_states=CAPTION, timestep=TIMESTEP, added_cond_kwargs=added,
                               attention_mask=image_mask, encoder_attention_mask=caption_mask).sample)


def test_micro_conditions_parity(micro_model):
    tm, module, params = micro_model
    assert module.config.resolved_use_additional_conditions and module.config.resolved_interpolation_scale == 2
    ref = _torch_forward(tm, MICRO, CAPTION_MASK, IMAGE_MASK)
    out = jax.jit(module.apply)({"params": params}, *_jax_inputs(MICRO, CAPTION_MASK, IMAGE_MASK))
    assert out.sample.shape == (2, 8, 12, 8)
    assert rel_l2(out.sample, ref) < TOL


def test_micro_conditions_required(micro_model):
    _, module, params = micro_model
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        module.apply({"params": params}, *_jax_inputs(None))


def test_legacy_config_parity(legacy_model):
    tm, module, params = legacy_model
    assert not module.config.resolved_use_additional_conditions
    assert module.config.resolved_interpolation_scale == 1
    ref = _torch_forward(tm, None, CAPTION_MASK)
    out = jax.jit(module.apply)({"params": params}, *_jax_inputs(None, CAPTION_MASK))
    assert out.sample.shape == (2, 8, 12, 8)
    assert rel_l2(out.sample, ref) < TOL


# ---- real configs: derived values and key coverage ----------------------------------------------


@pytest.mark.parametrize("repo", sorted(REAL))
def test_real_config_and_key_coverage(repo, real_configs):
    raw = json.loads((real_configs / repo / "transformer" / "config.json").read_text())
    assert raw["_class_name"] == "Transformer2DModel"
    cfg = PixArtTransformer2DModelConfig.from_dict(raw)
    assert cfg == REAL[repo]()
    with torch.device("meta"):
        tm = diffusers.PixArtTransformer2DModel.from_config(raw)
    assert cfg.resolved_use_additional_conditions == tm.use_additional_conditions
    assert cfg.resolved_interpolation_scale == tm.pos_embed.interpolation_scale
    torch_shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    module = PixArtTransformer2DModel.from_config(raw)
    name = "PixArtTransformer2DModel"
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule(name, cfg),
                   ignore=convert.ignored_keys(name, cfg))


def test_unsupported_config_is_refused():
    with pytest.raises(ValueError, match="norm_type"):
        PixArtTransformer2DModelConfig.tiny(norm_type="ada_norm_zero")
    with pytest.raises(ValueError, match="attention_type"):
        PixArtTransformer2DModelConfig.tiny(attention_type="gated")
