"""UniDiffuserModel (UniDiffuser's U-ViT) against diffusers (PyTorch, CPU, float32): a tiny perturbed model through
save_pretrained -> from_pretrained, the real config's key coverage, size and partition rules, bad input."""

from __future__ import annotations

import functools
import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.unidiffuser.modeling_uvit import UniDiffuserModel as TorchUniDiffuserModel

import convert
from convert.engine import check_coverage, convert_state_dict
from jaxgen import sharding
from jaxgen.models.unidiffuser_model import UniDiffuserModel, UniDiffuserModelConfig, _per_row
from tests.conftest import REAL_CONFIGS, nchw_to_nhwc, perturb_, rel_l2

TOL = 1e-5
NAME = "UniDiffuserModel"
GEN = torch.Generator().manual_seed(1)
LATENT = torch.randn(2, 4, 8, 8, generator=GEN)
CLIP = torch.randn(2, 1, 12, generator=GEN)
TEXT = torch.randn(2, 5, 8, generator=GEN)
T_IMG, T_TEXT, DATA_TYPE = torch.tensor([10.0, 999.0]), torch.tensor([500.0, 0.0]), torch.tensor([1, 0])


def _torch_model(cfg: UniDiffuserModelConfig, seed: int) -> torch.nn.Module:
    """Every weight perturbed: ``data_type_pos_embed_token`` starts at zero."""
    torch.manual_seed(seed)
    return perturb_(TorchUniDiffuserModel(**cfg.to_dict()), scale=0.05, seed=seed)


def _jax_inputs(*extra) -> tuple:
    return (jnp.asarray(nchw_to_nhwc(LATENT)), jnp.asarray(CLIP.numpy()), jnp.asarray(TEXT.numpy()),
            *(jnp.asarray(x.numpy()) for x in extra))


def _torch_forward(model: torch.nn.Module, *args, **kwargs) -> tuple:
    with torch.no_grad():
        vae, clip, text = model(LATENT, CLIP, TEXT, *args, **kwargs)
    return nchw_to_nhwc(vae), clip.numpy(), text.numpy()


def _errors(out: tuple, ref: tuple) -> list[float]:
    assert [o.shape for o in out] == [r.shape for r in ref]
    return [rel_l2(o, r) for o, r in zip(out, ref)]


@pytest.fixture(scope="module")
def uvit(tmp_path_factory):
    """(torch model, jaxgen module, params, jitted apply): the released layout (data-type token) in miniature."""
    model = _torch_model(UniDiffuserModelConfig.tiny(), seed=0)
    folder = tmp_path_factory.mktemp("unidiffuser_model")
    model.save_pretrained(folder)
    module, params = UniDiffuserModel.from_pretrained(folder)
    return model, module, params, jax.jit(module.apply)


def test_matches_diffusers(uvit):
    """Per-row timesteps and data types (both data types, t up to 999)."""
    model, _, params, apply = uvit
    out = apply({"params": params}, *_jax_inputs(T_IMG, T_TEXT, DATA_TYPE))
    errors = _errors(out, _torch_forward(model, T_IMG, T_TEXT, DATA_TYPE))
    print(f"\nUniDiffuserModel tiny parity (img_vae, img_clip, text): rel L2 {', '.join(f'{e:.2e}' for e in errors)}")
    assert out[0].shape == (2, 8, 8, 4) and out[1].shape == (2, 1, 12) and out[2].shape == (2, 5, 8)
    assert max(errors) < TOL
    # the data type is not ignored: row 1 changes with it
    flipped = apply({"params": params}, *_jax_inputs(T_IMG, T_TEXT, torch.tensor([1, 1])))
    assert rel_l2(flipped[0][1], out[0][1]) > 1e-3


def test_python_scalars_match_diffusers(uvit):
    """diffusers turns Python-number timesteps into torch.long (250.7 -> 250) and broadcasts them; so does
    ``_per_row``. Compared through the compiled (B,) path; data_type defaults to 1 in both."""
    model, _, params, apply = uvit
    assert inspect.signature(UniDiffuserModel.__call__).parameters["data_type"].default == 1
    rows = [_per_row(v, 2, "t", dtype) for v, dtype in ((250.7, jnp.float32), (3, jnp.float32), (1.0, jnp.int32))]
    np.testing.assert_array_equal(np.asarray(rows[0]), [250.0, 250.0])
    kept = _per_row(jnp.asarray([250.7]), 2, "t", jnp.float32)  # arrays keep fractional timesteps
    np.testing.assert_array_equal(np.asarray(kept), np.float32([250.7, 250.7]))
    out = apply({"params": params}, *_jax_inputs(), *rows)
    errors = _errors(out, _torch_forward(model, 250.7, 3))
    print(f"\nUniDiffuserModel scalar arguments: rel L2 {', '.join(f'{e:.2e}' for e in errors)}")
    assert max(errors) < TOL


def test_without_data_type_embedding_matches_diffusers():
    """diffusers' default (UniDiffuser-v0 layout): no data-type token; geglu; 2 skips, so their U order matters
    (num_layers 5 is 2 in-, 1 mid-, 2 out-blocks, as diffusers rounds down)."""
    cfg = UniDiffuserModelConfig.tiny(use_data_type_embedding=False, activation_fn="geglu", num_layers=5)
    model = _torch_model(cfg, seed=2)
    module = UniDiffuserModel(cfg)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    params = convert_state_dict(state, module.param_shapes(), convert.key_rule(NAME, cfg),
                                ignore=convert.ignored_keys(NAME, cfg))
    out = jax.jit(module.apply)({"params": params}, *_jax_inputs(T_IMG, T_TEXT), 0)
    errors = _errors(out, _torch_forward(model, T_IMG, T_TEXT, 0))
    print(f"\nUniDiffuserModel without data type: rel L2 {', '.join(f'{e:.2e}' for e in errors)}")
    assert max(errors) < TOL


def test_real_config_key_coverage_size_and_partition_rules():
    """thu-ml/unidiffuser-v1 ``unet``: every key maps to a param of its shape (but the inner transformer's unused
    patch conv), 952.5M parameters; attention and MLP split over the mesh's model axis."""
    raw = json.loads((REAL_CONFIGS / "thu-ml__unidiffuser-v1" / "unet" / "config.json").read_text())
    cfg = UniDiffuserModelConfig.from_dict(raw)
    assert cfg == UniDiffuserModelConfig.v1()
    with torch.device("meta"):
        model = TorchUniDiffuserModel.from_config(raw)
    torch_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    module = UniDiffuserModel.from_config(raw)
    shapes = module.param_shapes()
    check_coverage(torch_shapes, shapes, convert.key_rule(NAME, cfg), ignore=convert.ignored_keys(NAME, cfg))
    torch_count = sum(int(np.prod(s)) for s in torch_shapes.values())
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    unused = sum(int(np.prod(s)) for k, s in torch_shapes.items() if k.startswith("transformer.pos_embed."))
    print(f"\nUniDiffuser-v1 U-ViT: {torch_count:,} PyTorch parameters, {count:,} in jaxgen "
          f"({unused:,} in the unused inner patch conv)")
    assert torch_count == 952_535_632 and count == torch_count - unused
    assert len(jax.tree_util.tree_leaves(shapes)) == len(torch_shapes) - 2
    assert shapes["pos_embed"].shape == (1, 2 + 77 + 1 + 32 * 32, 1536)
    axes = sharding.param_logical_axes(module, shapes)["transformer"]
    assert axes["transformer_in_blocks.0"]["attn1"]["to_q"]["kernel"] == ("embed", "heads")
    assert axes["transformer_mid_block"]["attn1"]["to_out.0"]["kernel"] == ("heads", "embed")
    assert axes["transformer_out_blocks.14.block"]["ff"]["net.0"]["proj"]["kernel"] == ("embed", "mlp")
    assert axes["transformer_out_blocks.14.block"]["ff"]["net.2"]["kernel"] == ("mlp", "embed")
    assert axes["transformer_out_blocks.14.skip"]["skip_linear"]["kernel"] == (None, None)


def test_bfloat16_shapes_and_bad_input():
    module = UniDiffuserModel(UniDiffuserModelConfig.tiny(), dtype=jnp.bfloat16)
    params = jax.eval_shape(module.init_params)
    good = dict(latent_image_embeds=jnp.zeros((1, 8, 8, 4)), image_embeds=jnp.zeros((1, 1, 12)),
                prompt_embeds=jnp.zeros((1, 5, 8)), timestep_img=jnp.zeros((1,)), timestep_text=0)
    out = jax.eval_shape(module.apply, {"params": params}, **good)
    assert [o.shape for o in out] == [(1, 8, 8, 4), (1, 1, 12), (1, 5, 8)]
    assert all(o.dtype == jnp.bfloat16 for o in out)
    bad = {
        "latent_image_embeds": jnp.zeros((1, 4, 8, 8)),  # NCHW
        "image_embeds": jnp.zeros((1, 12)),
        "prompt_embeds": jnp.zeros((2, 5, 8)),  # batch differs
        "timestep_img": jnp.zeros((3,)),
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            jax.eval_shape(module.apply, {"params": params}, **{**good, name: value})
    for value in (None, 2):
        with pytest.raises(ValueError, match="data_type"):
            jax.eval_shape(functools.partial(module.apply, data_type=value), {"params": params}, **good)
    for name, value in (("pre_layer_norm", True), ("block_type", "utransformer"), ("use_timestep_embedding", True),
                        ("use_patch_pos_embed", True), ("cross_attention_dim", 16)):
        with pytest.raises(NotImplementedError, match=name):
            UniDiffuserModelConfig.tiny(**{name: value})
    with pytest.raises(ValueError, match="in_channels"):
        UniDiffuserModelConfig.tiny(in_channels=None)
