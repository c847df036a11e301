"""WuerstchenPrior (Würstchen's stage C) against diffusers (PyTorch, CPU, float32): a tiny perturbed model through
save_pretrained -> from_pretrained, the real config's key coverage and partition rules, bfloat16 shapes, bad input."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.wuerstchen.modeling_wuerstchen_prior import WuerstchenPrior as TorchPrior

import convert
from convert.engine import check_coverage
from jaxgen import sharding
from jaxgen.models.wuerstchen_prior import WuerstchenPrior, WuerstchenPriorConfig, r_embedding
from tests.conftest import REAL_CONFIGS, nchw_to_nhwc, nhwc_to_nchw, perturb_, rel_l2

TOL = 1e-5


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    """(torch model, jaxgen module, params): every weight perturbed (the GRN gammas and betas start at zero), then
    the output convolution scaled down: the output divides by |1 - b| + 1e-5, and with b spread over [-2, 2] (as
    the perturbed model has it) an element where b is near 1 amplifies float32 rounding a hundredfold (diffusers'
    own float32 was 9e-4 from its float64 there)."""
    torch.manual_seed(0)
    model = perturb_(TorchPrior(**WuerstchenPriorConfig.tiny().to_dict()), scale=0.05, seed=0)
    with torch.no_grad():
        model.out[1].weight.mul_(0.1)
        model.out[1].bias.mul_(0.1)
    folder = tmp_path_factory.mktemp("wuerstchen_prior")
    model.save_pretrained(folder)
    module, params = WuerstchenPrior.from_pretrained(folder)
    return model, module, params


def test_matches_diffusers(prior):
    """Two rows at different noise ratios, 6x5 embeddings, 7 text tokens."""
    model, module, params = prior
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 16)).astype(np.float32)
    r = np.array([0.93, 0.18], np.float32)
    c = rng.standard_normal((2, 7, 24)).astype(np.float32)
    out = np.asarray(jax.jit(module.apply)({"params": params}, jnp.asarray(x), jnp.asarray(r), jnp.asarray(c)))
    with torch.no_grad():
        ref = nchw_to_nhwc(model(torch.from_numpy(nhwc_to_nchw(x)), torch.from_numpy(r), torch.from_numpy(c)).numpy())
    err = rel_l2(out, ref)
    print(f"\nWuerstchenPrior tiny parity: rel L2 {err:.2e}")
    assert out.shape == (2, 6, 5, 16) and err < TOL


def test_r_embedding_matches_diffusers(prior):
    model, _, _ = prior
    r = np.linspace(0, 1, 5).astype(np.float32)
    for c_r in (8, 9):
        model.c_r = c_r
        ref = model.gen_r_embedding(torch.from_numpy(r)).numpy()
        np.testing.assert_allclose(np.asarray(r_embedding(jnp.asarray(r), c_r)), ref, rtol=1e-5, atol=2e-5)
    model.c_r = 8


def test_real_config_key_coverage_and_partition_rules():
    """Every key of the released stage C (warp-ai/wuerstchen-prior ``prior``, 0.99B) maps to a param of the same
    shape; the attention and the 4x MLPs split over the mesh's model axis."""
    raw = json.loads((REAL_CONFIGS / "warp-ai__wuerstchen-prior" / "prior" / "config.json").read_text())
    cfg = WuerstchenPriorConfig.from_dict(raw)
    with torch.device("meta"):
        model = TorchPrior.from_config(raw)
    torch_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    module = WuerstchenPrior.from_config(raw)
    shapes = module.param_shapes()
    check_coverage(torch_shapes, shapes, convert.key_rule("WuerstchenPrior", cfg),
                   ignore=convert.ignored_keys("WuerstchenPrior", cfg))
    assert len(jax.tree_util.tree_leaves(shapes)) == len(torch_shapes)
    assert 0.99e9 < sum(int(np.prod(s)) for s in torch_shapes.values()) < 1.0e9
    axes = sharding.param_logical_axes(module, shapes)
    assert axes["blocks.2"]["attention"]["to_q"]["kernel"] == ("embed", "heads")
    assert axes["blocks.0"]["channelwise.0"]["kernel"] == ("embed", "mlp")
    assert axes["blocks.0"]["channelwise.4"]["kernel"] == ("mlp", "embed")


def test_bfloat16_shapes_and_bad_input():
    module = WuerstchenPrior(WuerstchenPriorConfig.tiny(), dtype=jnp.bfloat16)
    params = jax.eval_shape(module.init_params)
    out = jax.eval_shape(module.apply, {"params": params}, jnp.zeros((1, 4, 4, 16), jnp.bfloat16), jnp.zeros((1,)),
                         jnp.zeros((1, 3, 24), jnp.bfloat16))
    assert out.shape == (1, 4, 4, 16) and out.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="16 channels"):
        jax.eval_shape(module.apply, {"params": params}, jnp.zeros((1, 4, 4, 8)), jnp.zeros((1,)), jnp.zeros((1, 3, 24)))
    with pytest.raises(ValueError, match="nhead"):
        WuerstchenPriorConfig.tiny(nhead=5)
