"""PriorTransformer (Kandinsky 2.1/2.2's prior) against diffusers (PyTorch, CPU, float32)."""

from __future__ import annotations

import json

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert
from convert.engine import check_coverage
from jaxgen import sharding
from jaxgen.models.prior_transformer import PriorTransformer, PriorTransformerConfig
from tests.conftest import perturb_, rel_l2

TOL = 1e-5
REAL = ("kandinsky-community__kandinsky-2-1-prior", "kandinsky-community__kandinsky-2-2-prior")
# Shap-E's layout: input norms, no text tokens, no prd token (the prediction is read at every
# hidden_states token), a positional table shorter than the sequence (zero-padded), gelu timestep MLP.
SHAP_E_STYLE = dict(norm_in_type="layer", embedding_proj_norm_type="layer", encoder_hid_proj_type=None,
                    added_emb_type=None, additional_embeddings=0, num_embeddings=3, time_embed_act_fn="gelu",
                    time_embed_dim=20, embedding_proj_dim=10, clip_embed_dim=14)

GEN = torch.Generator().manual_seed(7)
HIDDEN = torch.randn(2, 12, generator=GEN)
PROJ = torch.randn(2, 12, generator=GEN)
TEXT = torch.randn(2, 5, 12, generator=GEN)
TIMESTEPS = torch.tensor([3, 700])
TEXT_MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # as Kandinsky's pipelines pass it
LATENTS = torch.randn(2, 12, generator=GEN)


def _save_random_prior(folder, config: PriorTransformerConfig, seed: int) -> diffusers.PriorTransformer:
    """A seeded diffusers prior with every param random (zero-initialised tables and clip stats included),
    saved under ``folder/prior``."""
    torch.manual_seed(seed)
    tm = perturb_(diffusers.PriorTransformer(**config.to_dict()), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in ("positional_embedding", "prd_embedding", "clip_mean", "clip_std"):
            p = getattr(tm, name)
            if p is not None:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    tm.save_pretrained(folder / "prior")
    return tm


@pytest.fixture(scope="module")
def kandinsky_folder(tmp_path_factory):
    """(folder, torch model) of a tiny Kandinsky-style prior (norm_in None, prd token, linear text proj)."""
    folder = tmp_path_factory.mktemp("prior_kandinsky")
    return folder, _save_random_prior(folder, PriorTransformerConfig.tiny(), seed=0)


@pytest.fixture(scope="module")
def kandinsky(kandinsky_folder):
    folder, tm = kandinsky_folder
    module, params = PriorTransformer.from_pretrained(folder, subfolder="prior")
    return tm, module, params


def _j(t):
    return None if t is None else jnp.asarray(t.numpy())


def test_kandinsky_parity_with_mask(kandinsky):
    tm, module, params = kandinsky
    with torch.no_grad():
        ref = tm(HIDDEN, TIMESTEPS, PROJ, encoder_hidden_states=TEXT, attention_mask=TEXT_MASK).predicted_image_embedding
    out = jax.jit(module.apply)({"params": params}, _j(HIDDEN), _j(TIMESTEPS), _j(PROJ), _j(TEXT), _j(TEXT_MASK))
    assert out.predicted_image_embedding.shape == (2, 12)
    assert rel_l2(out.predicted_image_embedding, ref.numpy()) < TOL
    # the padded row really differs from its unpadded self (the mask is honoured, not ignored)
    with torch.no_grad():
        unmasked = tm(HIDDEN, TIMESTEPS, PROJ, encoder_hidden_states=TEXT,
                      attention_mask=torch.ones_like(TEXT_MASK)).predicted_image_embedding
    assert rel_l2(ref[0].numpy(), unmasked[0].numpy()) > 1e-3


def test_kandinsky_parity_without_mask_scalar_timestep(kandinsky):
    # without a mask diffusers applies no causal mask either; a scalar timestep is broadcast
    tm, module, params = kandinsky
    with torch.no_grad():
        ref = tm(HIDDEN, 250, PROJ, encoder_hidden_states=TEXT).predicted_image_embedding.numpy()
    out = jax.jit(module.apply)({"params": params}, _j(HIDDEN), 250, _j(PROJ), _j(TEXT))
    assert rel_l2(out.predicted_image_embedding, ref) < TOL


def test_post_process_latents_parity(kandinsky):
    tm, module, params = kandinsky
    with torch.no_grad():
        ref = tm.post_process_latents(LATENTS).numpy()
    out = module.apply({"params": params}, _j(LATENTS), method=PriorTransformer.post_process_latents)
    assert out.shape == (2, 12)
    assert rel_l2(out, ref) < TOL


def test_missing_encoder_hidden_states_raises(kandinsky):
    _, module, params = kandinsky
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        module.apply({"params": params}, _j(HIDDEN), 1, _j(PROJ))


def test_shap_e_style_variant_parity(tmp_path):
    cfg = PriorTransformerConfig.tiny(**SHAP_E_STYLE)
    tm = _save_random_prior(tmp_path, cfg, seed=3)
    module, params = PriorTransformer.from_pretrained(tmp_path / "prior")
    gen = torch.Generator().manual_seed(11)
    hidden, proj = torch.randn(2, 3, 12, generator=gen), torch.randn(2, 10, generator=gen)
    timesteps = torch.tensor([12.5, 640.0])
    with torch.no_grad():
        ref = tm(hidden, timesteps, proj).predicted_image_embedding.numpy()
    out = jax.jit(module.apply)({"params": params}, _j(hidden), _j(timesteps), _j(proj))
    assert out.predicted_image_embedding.shape == ref.shape == (2, 3, 14)
    assert rel_l2(out.predicted_image_embedding, ref) < TOL


def test_bfloat16(kandinsky_folder):
    folder, tm = kandinsky_folder
    module, params = PriorTransformer.from_pretrained(folder, subfolder="prior", dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    args = (_j(HIDDEN), _j(TIMESTEPS), _j(PROJ), _j(TEXT), _j(TEXT_MASK))
    out = jax.jit(module.apply)({"params": params}, *args).predicted_image_embedding
    with torch.no_grad():
        ref = tm(HIDDEN, TIMESTEPS, PROJ, encoder_hidden_states=TEXT, attention_mask=TEXT_MASK).predicted_image_embedding
    assert out.shape == (2, 12) and out.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out, np.float32)).all()
    assert rel_l2(np.asarray(out, np.float32), ref.numpy()) < 5e-2
    post = module.apply({"params": params}, out, method=PriorTransformer.post_process_latents)
    assert post.shape == (2, 12) and post.dtype == jnp.bfloat16


@pytest.mark.parametrize("repo", REAL)
def test_real_config_and_key_coverage(repo, real_configs):
    raw = json.loads((real_configs / repo / "prior" / "config.json").read_text())
    cfg = PriorTransformerConfig.from_dict(raw)
    assert (cfg.inner_dim, cfg.num_layers, cfg.num_positions, cfg.added_emb_type) == (2048, 20, 81, "prd")
    with torch.device("meta"):
        tm = diffusers.PriorTransformer.from_config(raw)
    torch_shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    module = PriorTransformer.from_config(raw)
    shapes = module.param_shapes()
    check_coverage(torch_shapes, shapes, convert.key_rule("PriorTransformer", cfg),
                   ignore=convert.ignored_keys("PriorTransformer", cfg))
    assert len(jax.tree_util.tree_leaves(shapes)) == len(torch_shapes)
    axes = sharding.param_logical_axes(module, shapes)
    assert axes["transformer_blocks.3"]["attn1"]["to_q"]["kernel"] == ("embed", "heads")
    assert axes["transformer_blocks.3"]["ff"]["net.2"]["kernel"] == ("mlp", "embed")


@pytest.mark.parametrize("field,value", [
    ("norm_in_type", "rms"), ("embedding_proj_norm_type", "group"), ("encoder_hid_proj_type", "mlp"),
    ("added_emb_type", "cls"), ("time_embed_act_fn", "tanhshrink"),
])
def test_unsupported_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PriorTransformerConfig.tiny(**{field: value})
