"""T5 encoder: parity with transformers' T5EncoderModel, key coverage of the real T5-XXL / Flan-UL2 configs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import convert
from convert.engine import ConversionError, check_coverage
from jaxgen.text import T5Config, T5EncoderModel
from jaxgen.text.t5 import relative_position_bucket
from tests.conftest import rel_l2

LENGTH = 20
TRUE_LENGTHS = (LENGTH, 7)


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 100, size=(2, LENGTH)).astype(np.int64)
    mask = np.zeros((2, LENGTH), np.int64)
    for row, n in enumerate(TRUE_LENGTHS):
        mask[row, :n] = 1
    ids[mask == 0] = 0  # pad token
    return ids, mask


def _torch_model(feed_forward_proj: str, folder) -> transformers.T5EncoderModel:
    """A tiny random transformers T5 encoder, every param perturbed, saved to ``folder``."""
    torch.manual_seed(0)
    cfg = transformers.T5Config(**{k: v for k, v in T5Config.tiny(feed_forward_proj).to_dict().items()})
    model = transformers.T5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """proj -> (torch model, folder, jaxgen module, params, jitted apply), built once per FFN variant."""
    cache = {}

    def get(feed_forward_proj: str):
        if feed_forward_proj not in cache:
            folder = tmp_path_factory.mktemp(f"t5_{feed_forward_proj}")
            tmodel = _torch_model(feed_forward_proj, folder)
            module, params = T5EncoderModel.from_pretrained(folder)
            apply = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask).last_hidden_state)
            cache[feed_forward_proj] = tmodel, folder, module, params, apply
        return cache[feed_forward_proj]

    return get


def _torch_out(tmodel, ids, mask):
    with torch.no_grad():
        out = tmodel(input_ids=torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask))
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu", "gated-silu"])
@pytest.mark.parametrize("masked", [True, False])
def test_parity_with_transformers(build, feed_forward_proj, masked):
    tmodel, _, _, params, apply = build(feed_forward_proj)
    ids, mask = _inputs()
    if not masked:
        mask = None
    ref = _torch_out(tmodel, ids, mask)
    ones = np.ones_like(ids) if mask is None else mask
    out = np.asarray(apply(params, jnp.asarray(ids, jnp.int32), jnp.asarray(ones, jnp.int32)))
    assert out.shape == (2, LENGTH, 32)
    err = rel_l2(out, ref)
    print(f"T5 {feed_forward_proj} masked={masked}: rel L2 {err:.2e}")
    assert err < 1e-5, err
    if masked:  # the mask matters: the padded row differs from an unmasked run
        assert rel_l2(_torch_out(tmodel, ids, None)[1], ref[1]) > 1e-3


def test_jit_equals_eager_and_mask_none(build):
    _, _, module, params, apply = build("gated-gelu")
    ids, mask = _inputs()
    jitted = np.asarray(apply(params, jnp.asarray(ids), jnp.asarray(mask)))
    eager = np.asarray(module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)
    # attention_mask=None means attend everywhere, as an all-ones mask does
    no_mask = module.apply({"params": params}, jnp.asarray(ids), None).last_hidden_state
    all_ones = apply(params, jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)))
    np.testing.assert_allclose(np.asarray(no_mask), np.asarray(all_ones), rtol=1e-5, atol=1e-6)


def test_bfloat16_close_to_float32(build):
    tmodel, folder, _, _, _ = build("gated-gelu")
    ids, mask = _inputs()
    module, params = T5EncoderModel.from_pretrained(folder, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree_util.tree_leaves(params))
    out = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out.astype(jnp.float32))
    assert np.isfinite(out).all()
    err = rel_l2(out, _torch_out(tmodel, ids, mask))
    print(f"T5 bfloat16 vs float32: rel L2 {err:.2e}")
    assert err < 2e-2, err


def test_duplicate_embed_tokens_is_ignored(build, tmp_path):
    """Checkpoints that also store the tied ``encoder.embed_tokens.weight`` load the same."""
    _, folder, _, params, _ = build("gated-gelu")
    state = load_file(str(folder / "model.safetensors"))
    assert "encoder.embed_tokens.weight" not in state
    state["encoder.embed_tokens.weight"] = state["shared.weight"].copy()
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    _, loaded = T5EncoderModel.from_pretrained(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    # a key the model does not know is still an error
    state["encoder.block.0.layer.0.SelfAttention.extra.weight"] = state["shared.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match="extra"):
        T5EncoderModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40)])
def test_relative_position_bucket_matches_transformers(num_buckets, max_distance):
    positions = np.arange(600)
    relative = positions[None, :] - positions[:, None]
    ours = relative_position_bucket(relative, num_buckets, max_distance)
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.from_numpy(relative), bidirectional=True, num_buckets=num_buckets, max_distance=max_distance
    ).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_config_derives_activation_like_transformers():
    for proj, act, gated in [("gated-gelu", "gelu_new", True), ("relu", "relu", False),
                             ("gated-silu", "silu", True), ("gelu", "gelu", False)]:
        ours = T5Config(feed_forward_proj=proj)
        ref = transformers.T5Config(feed_forward_proj=proj)
        assert (ours.dense_act_fn, ours.is_gated_act) == (ref.dense_act_fn, ref.is_gated_act) == (act, gated)
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gelu-gated")
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-mish")
    with pytest.raises(ValueError, match="is_decoder"):
        T5Config(is_decoder=True)


@pytest.mark.parametrize(
    "repo,expected",
    [
        ("PixArt-alpha__PixArt-XL-2-1024-MS", dict(d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24, act="gelu_new")),
        ("DeepFloyd__IF-I-XL-v1.0", dict(d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24, act="gelu_new")),
        ("kandinsky-community__kandinsky-3", dict(d_model=4096, d_kv=256, num_heads=16, d_ff=16384, num_layers=32, act="silu")),
    ],
)
def test_key_coverage_real_configs(real_configs, repo, expected):
    """Every key of the real-size model (meta device) maps onto the Flax params with the right shape."""
    cfg_dict = json.loads((real_configs / repo / "text_encoder" / "config.json").read_text())
    config = T5Config.from_dict(cfg_dict)
    got = dict(d_model=config.d_model, d_kv=config.d_kv, num_heads=config.num_heads, d_ff=config.d_ff,
               num_layers=config.num_layers, act=config.dense_act_fn)
    assert got == expected and config.is_gated_act
    with torch.device("meta"):
        tmodel = transformers.T5EncoderModel(transformers.T5Config(**cfg_dict))
    torch_shapes = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
    assert "encoder.embed_tokens.weight" in torch_shapes  # the tied copy is part of the state dict
    module = T5EncoderModel.from_config(cfg_dict)
    name = "T5EncoderModel"
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule(name, config),
                   ignore=convert.ignored_keys(name, config))
    # without the tied copy too
    torch_shapes.pop("encoder.embed_tokens.weight")
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule(name, config),
                   ignore=convert.ignored_keys(name, config))
