"""Kandinsky3UNet (Kandinsky 3's denoiser) against diffusers (PyTorch, CPU, float32)."""

from __future__ import annotations

import copy
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
from jaxgen.models.kandinsky3_unet import Kandinsky3UNet, Kandinsky3UNetConfig
from tests.conftest import nchw_to_nhwc, perturb_, rel_l2

TOL = 1e-5
# XLA's cheap CPU backend settings: same arithmetic, compiled several times faster
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
REAL = "kandinsky-community__kandinsky-3"

GEN = torch.Generator().manual_seed(5)
SAMPLE = torch.randn(2, 4, 8, 12, generator=GEN)  # not square: catches height/width mix-ups
TEXT = torch.randn(2, 6, 20, generator=GEN)
TIMESTEPS = torch.tensor([3, 700])
MASK = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # row 0: two padding tokens
# Kandinsky 3's pipeline masks the unconditional half with zeros: diffusers' -10000 on every logit masks nothing
ZERO_ROW = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, jaxgen module, params, compiled apply) of a tiny perturbed 3-level model, loaded
    through ``from_pretrained`` from diffusers' ``save_pretrained`` folder."""
    torch.manual_seed(0)
    # perturbed: the conditional norms' context_mlp starts at zero in diffusers
    model = perturb_(diffusers.Kandinsky3UNet(**Kandinsky3UNetConfig.tiny().to_dict()), scale=0.05, seed=0)
    folder = tmp_path_factory.mktemp("kandinsky3_unet")
    model.save_pretrained(folder)
    module, params = Kandinsky3UNet.from_pretrained(folder)
    args = ({"params": params}, *_jax(SAMPLE, TIMESTEPS, TEXT, MASK))
    compiled = jax.jit(module.apply).lower(*args).compile(compiler_options=FAST_COMPILE)
    return model, module, params, compiled


def _jax(sample, timesteps, text, mask):
    return jnp.asarray(nchw_to_nhwc(sample)), jnp.asarray(timesteps.numpy()), jnp.asarray(text.numpy()), \
        jnp.asarray(mask.numpy())


def _torch(model, mask, dtype=torch.float32):
    if dtype != torch.float32:
        model = copy.deepcopy(model).double()
    with torch.no_grad():
        return nchw_to_nhwc(model(SAMPLE.to(dtype), TIMESTEPS, TEXT.to(dtype), encoder_attention_mask=mask).sample)


def test_parity_with_padding_mask(tiny):
    model, _, params, compiled = tiny
    ref = _torch(model, MASK)
    out = np.asarray(compiled({"params": params}, *_jax(SAMPLE, TIMESTEPS, TEXT, MASK)).sample)
    assert out.shape == (2, 8, 12, 4)
    err = rel_l2(out, ref)
    print(f"\nKandinsky3UNet tiny parity, padded mask: rel L2 {err:.2e} (diffusers float32 vs float64: "
          f"{rel_l2(ref, _torch(model, MASK, torch.float64)):.2e})")
    assert err < TOL
    # the mask matters: unpadded, diffusers' padded row moves by far more than TOL
    unmasked = _torch(model, torch.ones_like(MASK))
    assert rel_l2(unmasked[0], ref[0]) > 1e-3


def test_all_zero_mask_row_masks_nothing(tiny):
    """As diffusers' additive -10000 on every logit. Compared in float64: in float32 diffusers rounds the
    logits near -10000 (its own float32 result is ~1e-4 away from its float64 one in such a row)."""
    model, _, params, compiled = tiny
    out = np.asarray(compiled({"params": params}, *_jax(SAMPLE, TIMESTEPS, TEXT, ZERO_ROW)).sample)
    full = np.asarray(compiled({"params": params}, *_jax(SAMPLE, TIMESTEPS, TEXT, MASK)).sample)
    ref64 = _torch(model, ZERO_ROW, torch.float64)
    err = rel_l2(out, ref64)
    print(f"\nKandinsky3UNet tiny, all-zero mask row vs diffusers float64: rel L2 {err:.2e} "
          f"(diffusers float32: {rel_l2(_torch(model, ZERO_ROW), ref64):.2e})")
    assert err < TOL
    np.testing.assert_array_equal(out[1], full[1])  # the all-zero row is the unmasked row


def test_context_length_leaves_shape_padding_out(tiny):
    """jaxgen's ``context_length``: the text padded with extra zero tokens (masked) and its length give the
    unpadded output, for a padded-mask row and for an all-zero-mask row (which attends to the L tokens)."""
    _, module, params, compiled = tiny
    sample, timesteps, text, _ = _jax(SAMPLE, TIMESTEPS, TEXT, MASK)
    length, pad = text.shape[1], ((0, 0), (0, 7))
    lengths = jnp.full((2,), length)
    padded_args = (sample, timesteps, jnp.pad(text, pad + ((0, 0),)), jnp.pad(jnp.asarray(MASK.numpy()), pad))
    padded = jax.jit(module.apply).lower({"params": params}, *padded_args, context_length=lengths).compile(
        compiler_options=FAST_COMPILE)
    for mask in (MASK, ZERO_ROW):
        mask = jnp.asarray(mask.numpy())
        ref = np.asarray(compiled({"params": params}, sample, timesteps, text, mask).sample)
        out = padded({"params": params}, sample, timesteps, padded_args[2], jnp.pad(mask, pad), context_length=lengths)
        err = rel_l2(np.asarray(out.sample), ref)
        print(f"\ncontext_length {length} of {length + 7} tokens vs unpadded: rel L2 {err:.2e}")
        assert err < TOL  # float32 rounding: softmax and mean over other lengths


def test_bfloat16_shapes_and_dtypes():
    module = Kandinsky3UNet(Kandinsky3UNetConfig.tiny(), dtype=jnp.bfloat16)
    params = jax.eval_shape(module.init_params)
    out = jax.eval_shape(module.apply, {"params": params}, *module.init_args())
    assert out.sample.shape == (1, 4, 4, 4) and out.sample.dtype == jnp.bfloat16


def test_missing_text_raises():
    module = Kandinsky3UNet(Kandinsky3UNetConfig.tiny())
    sample, timestep, _ = module.init_args()
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        jax.eval_shape(module.init, jax.random.key(0), sample, timestep)


def test_real_config_and_key_coverage(real_configs):
    raw = json.loads((real_configs / REAL / "unet" / "config.json").read_text())
    cfg = Kandinsky3UNetConfig.from_dict(raw)
    assert cfg == Kandinsky3UNetConfig()  # the defaults are the real model's
    with torch.device("meta"):
        ref_model = diffusers.Kandinsky3UNet.from_config(raw)
    torch_shapes = {k: tuple(v.shape) for k, v in ref_model.state_dict().items()}
    module = Kandinsky3UNet.from_config(raw)
    shapes = module.param_shapes()
    check_coverage(torch_shapes, shapes, convert.key_rule("Kandinsky3UNet", cfg),
                   ignore=convert.ignored_keys("Kandinsky3UNet", cfg))
    assert len(jax.tree_util.tree_leaves(shapes)) == len(torch_shapes)
    assert sum(int(np.prod(s)) for s in torch_shapes.values()) > 2.9e9
    axes = sharding.param_logical_axes(module, shapes)
    block = axes["down_blocks.2"]["attentions.1"]
    assert block["attention"]["to_k"]["kernel"] == ("embed", "heads")
    assert block["feed_forward.2"]["kernel"] == (None, None, "mlp", "embed")
    resnet = axes["up_blocks.1"]["resnets_in.0"]  # the up path's first resnet: upsampling, transposed convs
    assert resnet["resnet_blocks.0"]["projection"]["kernel"] == (None, None, "embed", "mlp")
    assert resnet["resnet_blocks.3"]["projection"]["kernel"] == (None, None, "mlp", "embed")
    assert resnet["resnet_blocks.1"]["up_sample"]["kernel"] == (None,) * 4


@pytest.mark.parametrize("field,value", [
    ("layers_per_block", (3, 3, 3, 3)), ("layers_per_block", 1), ("cross_attention_dim", (24, 24, 24)),
    ("block_out_channels", (16, 32, 32, 32, 32)), ("groups", 3), ("attention_head_dim", 12),
])
def test_unsupported_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Kandinsky3UNetConfig.tiny(**{field: value})
