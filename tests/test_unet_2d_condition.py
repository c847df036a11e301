"""UNet2DConditionModel (IF-I, IF-II, x4 upscaler, Kandinsky 2.x shapes) against diffusers (PyTorch, CPU, float32)."""

from __future__ import annotations

import json

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention as TorchAttention
from diffusers.models.attention_processor import AttnAddedKVProcessor2_0

import convert
from convert.engine import check_coverage, convert_state_dict, default_rule
from jaxgen.models.unet_2d_condition import UNet2DConditionModel, UNet2DConditionModelConfig
from jaxgen.nn.unet_blocks import AddedKVAttention, Transformer2DModel
from tests.conftest import nchw_to_nhwc, perturb_, rel_l2

TOL = 1e-5
# The parity tests compile with XLA's cheap CPU backend settings: same arithmetic, compiled ~3x faster
# (the default settings are exercised by test_jit_equals_eager).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Tiny configs with the properties of the real ones (see tests/configs/README.md for IF-II).
IF_I = UNet2DConditionModelConfig.tiny().to_dict()
IF_II = UNet2DConditionModelConfig.tiny(
    in_channels=6, out_channels=6, layers_per_block=(1, 1, 2), class_embed_type="timestep", only_cross_attention=True,
    time_embedding_dim=32, time_embedding_act_fn="gelu", resnet_skip_time_act=True,
    resnet_out_scale_factor=1 / 0.7071, mid_block_scale_factor=1 / 0.7071,
).to_dict()
UPSCALER = UNet2DConditionModelConfig(
    sample_size=10, in_channels=7, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=2, cross_attention_dim=24, num_class_embeds=1000, only_cross_attention=(True, True, False),
    use_linear_projection=True, norm_num_groups=8,
    # uneven transformer depths (as SDXL-style configs write them): per level, per layer, and reversed
    transformer_layers_per_block=(1, 1, (2,)), reverse_transformer_layers_per_block=((2, 1), (1, 1), (1, 1)),
    class_embeddings_concat=True,  # not the upscaler's, but only a model without add_embedding can have it
).to_dict()
KANDINSKY_21 = UNet2DConditionModelConfig.tiny(
    in_channels=4, out_channels=8, block_out_channels=(16, 32), layers_per_block=1, act_fn="silu",
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    attention_head_dim=(8, 16), encoder_hid_dim_type="text_image_proj", addition_embed_type="text_image",
    cross_attention_norm=None,
    # options no real target uses, checked here at no extra compile
    time_cond_proj_dim=8, timestep_post_act="silu", center_input_sample=True,
).to_dict()
KANDINSKY_22_HINT = dict(
    KANDINSKY_21, in_channels=8, attention_head_dim=8, encoder_hid_dim_type="image_proj", addition_embed_type="image_hint",
    time_cond_proj_dim=None, timestep_post_act=None, center_input_sample=False,
    class_embed_type="projection", projection_class_embeddings_input_dim=6,
    mid_block_type="UNetMidBlock2D", conv_in_kernel=1, conv_out_kernel=1,
)


def _save_tiny(tmp_path_factory, name: str, config: dict, seed: int):
    """A perturbed diffusers UNet saved with save_pretrained; returns (torch model, jaxgen module, params)."""
    torch.manual_seed(seed)
    model = perturb_(diffusers.UNet2DConditionModel(**config), scale=0.05, seed=seed)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    module, params = UNet2DConditionModel.from_pretrained(folder)
    return model, module, params


def _fast_jit_apply(module, *args, **kwargs):
    return jax.jit(module.apply).lower(*args, **kwargs).compile(compiler_options=FAST_COMPILE)(*args, **kwargs)


def _to_jax(v):
    """Torch inputs -> jax: 4-D tensors (samples, hints, ControlNet residuals) NCHW -> NHWC; dicts, tuples recursively."""
    if isinstance(v, dict):
        return {k: _to_jax(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return tuple(_to_jax(x) for x in v)
    if isinstance(v, torch.Tensor):
        return jnp.asarray(nchw_to_nhwc(v) if v.ndim == 4 else v.numpy())
    return v


def _compare(model, module, params, sample, timestep, encoder_hidden_states, **kwargs):
    """Run diffusers (NCHW) and jaxgen (NHWC) on the same inputs; returns (jaxgen, diffusers) outputs, NHWC."""
    with torch.no_grad():
        ref = model(sample, timestep, encoder_hidden_states, **kwargs).sample
    out = _fast_jit_apply(module, {"params": params}, *_to_jax((sample, timestep, encoder_hidden_states)),
                          **_to_jax(kwargs)).sample
    return np.asarray(out), nchw_to_nhwc(ref)


def test_if_i_like_parity_with_padding_mask(tmp_path_factory):
    model, module, params = _save_tiny(tmp_path_factory, "if_i", IF_I, 0)
    g = torch.Generator().manual_seed(1)
    sample, text = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 24, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out, ref = _compare(model, module, params, sample, torch.tensor([10, 999]), text, encoder_attention_mask=mask)
    assert out.shape == (2, 8, 8, 6)
    assert rel_l2(out, ref) < TOL
    with torch.no_grad():  # the mask matters: without it diffusers' result moves by far more than TOL
        unmasked = model(sample, torch.tensor([10, 999]), text).sample
    assert rel_l2(nchw_to_nhwc(unmasked), ref) > 1e-3


def test_if_ii_like_parity_noise_level(tmp_path_factory):
    model, module, params = _save_tiny(tmp_path_factory, "if_ii", IF_II, 1)
    assert "to_k" not in params["down_blocks.1"]["attentions.0"]  # only_cross_attention
    g = torch.Generator().manual_seed(2)
    sample, text = torch.randn(2, 6, 8, 8, generator=g), torch.randn(2, 4, 24, generator=g)
    out, ref = _compare(model, module, params, sample, torch.tensor([3, 700]), text, class_labels=torch.tensor([250, 20]))
    assert rel_l2(out, ref) < TOL


def test_upscaler_like_parity_odd_size_and_controlnet_residuals(tmp_path_factory):
    model, module, params = _save_tiny(tmp_path_factory, "upscaler", UPSCALER, 2)
    g = torch.Generator().manual_seed(3)
    sample, text = torch.randn(1, 7, 10, 10, generator=g), torch.randn(1, 6, 24, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    # skip states of a 10x10 input: 10, 10 | 5, 5 | 3, 3 (odd sizes: the upsamplers follow them)
    sizes = [(16, 10), (16, 10), (16, 5), (32, 5), (32, 3), (32, 3)]
    residuals = tuple(torch.randn(1, c, s, s, generator=g) * 0.1 for c, s in sizes)
    out, ref = _compare(model, module, params, sample, torch.tensor([42]), text, class_labels=torch.tensor([20]),
                        encoder_attention_mask=mask, down_block_additional_residuals=residuals,
                        mid_block_additional_residual=torch.randn(1, 32, 3, 3, generator=g) * 0.1)
    assert out.shape == (1, 10, 10, 4)
    assert rel_l2(out, ref) < TOL


def test_kandinsky_21_like_parity_text_image(tmp_path_factory):
    model, module, params = _save_tiny(tmp_path_factory, "k21", KANDINSKY_21, 3)
    g = torch.Generator().manual_seed(4)
    added = {"image_embeds": torch.randn(2, 32, generator=g), "text_embeds": torch.randn(2, 32, generator=g)}
    sample, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 24, generator=g)
    out, ref = _compare(model, module, params, sample, torch.tensor([5, 900]), text, added_cond_kwargs=added,
                        timestep_cond=torch.randn(2, 8, generator=g))
    assert out.shape == (2, 8, 8, 8)
    assert rel_l2(out, ref) < TOL


def test_jit_equals_eager():
    # a one-level UNet: eager execution pays a compile per primitive, so the model is kept minimal
    config = UNet2DConditionModelConfig.tiny(block_out_channels=(16,), down_block_types=("SimpleCrossAttnDownBlock2D",),
                                             up_block_types=("SimpleCrossAttnUpBlock2D",), mid_block_type=None)
    module = UNet2DConditionModel(config)
    rng = np.random.default_rng(1)  # numpy fill: jitting flax's random init costs more than the test
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.2, s.dtype), module.param_shapes())
    keys = jax.random.split(jax.random.key(2), 2)
    args = ({"params": params}, jax.random.normal(keys[0], (2, 4, 4, 3)), jnp.asarray([5, 900]),
            jax.random.normal(keys[1], (2, 5, 24)))
    mask = jnp.asarray([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    eager = module.apply(*args, encoder_attention_mask=mask).sample
    jitted = jax.jit(module.apply)(*args, encoder_attention_mask=mask).sample
    assert rel_l2(jitted, eager) < 1e-6


def test_kandinsky_22_parity_image_embeddings_only(tmp_path_factory):
    """2.2's decoder UNet: no text, the image embedding projected as the context and added to the time embedding."""
    config = dict(KANDINSKY_22_HINT, in_channels=4, addition_embed_type="image", class_embed_type=None,
                  projection_class_embeddings_input_dim=None)
    model, module, params = _save_tiny(tmp_path_factory, "k22i", config, 6)
    g = torch.Generator().manual_seed(7)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    out, ref = _compare(model, module, params, sample, torch.tensor([3, 700]), None,
                        added_cond_kwargs={"image_embeds": torch.randn(2, 24, generator=g)})
    assert rel_l2(out, ref) < TOL


def test_kandinsky_22_like_parity_image_hint_projection_class_scalar_timestep(tmp_path_factory):
    model, module, params = _save_tiny(tmp_path_factory, "k22", KANDINSKY_22_HINT, 4)
    g = torch.Generator().manual_seed(5)
    added = {"image_embeds": torch.randn(1, 24, generator=g), "hint": torch.randn(1, 3, 64, 64, generator=g)}
    sample = torch.randn(1, 4, 8, 8, generator=g)
    # as KandinskyV22ControlnetPipeline calls it: no text, the image embedding is the context
    out, ref = _compare(model, module, params, sample, 7, None, added_cond_kwargs=added,
                        class_labels=torch.randn(1, 6, generator=g))
    assert rel_l2(out, ref) < TOL


# ---- blocks on their own --------------------------------------------------------------------------


def _load_block(torch_module, flax_module, *inputs):
    shapes = jax.eval_shape(flax_module.init, jax.random.key(0), *inputs)["params"]
    state = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
    return convert_state_dict(state, shapes, default_rule)


def test_transformer_2d_conv_projection_matches_diffusers():
    from diffusers.models.transformers.transformer_2d import Transformer2DModel as TorchTransformer2DModel

    torch.manual_seed(0)
    ref_model = perturb_(TorchTransformer2DModel(2, 8, in_channels=16, num_layers=2, cross_attention_dim=12,
                                                 norm_num_groups=4, use_linear_projection=False), seed=6)
    g = torch.Generator().manual_seed(7)
    x, text = torch.randn(2, 16, 3, 5, generator=g), torch.randn(2, 4, 12, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        ref = ref_model(x, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    block = Transformer2DModel(2, 8, num_layers=2, cross_attention_dim=12, norm_num_groups=4)
    inputs = (jnp.asarray(nchw_to_nhwc(x)), jnp.asarray(text.numpy()), None, jnp.asarray(mask.numpy()))
    out = block.apply({"params": _load_block(ref_model, block, *inputs)}, *inputs)
    assert rel_l2(out, nchw_to_nhwc(ref)) < TOL


@pytest.mark.parametrize("norm,only_cross", [("layer_norm", False), ("group_norm", True), (None, False)])
def test_added_kv_attention_matches_diffusers(norm, only_cross):
    torch.manual_seed(0)
    ref_model = perturb_(TorchAttention(query_dim=32, cross_attention_dim=32, heads=4, dim_head=8, added_kv_proj_dim=32,
                                        norm_num_groups=8, bias=True, upcast_softmax=True, only_cross_attention=only_cross,
                                        cross_attention_norm=norm, processor=AttnAddedKVProcessor2_0()), seed=8)
    g = torch.Generator().manual_seed(9)
    x, text = torch.randn(2, 32, 3, 3, generator=g), torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        ref = ref_model(x, encoder_hidden_states=text)
    block = AddedKVAttention(heads=4, dim_head=8, norm_num_groups=8, only_cross_attention=only_cross,
                             cross_attention_norm=norm)
    inputs = (jnp.asarray(nchw_to_nhwc(x)), jnp.asarray(text.numpy()))
    out = block.apply({"params": _load_block(ref_model, block, *inputs)}, *inputs)
    assert rel_l2(out, nchw_to_nhwc(ref)) < TOL


# ---- real configs: key coverage on the meta device, named variants, refusals -----------------------

REAL = {
    "DeepFloyd__IF-I-XL-v1.0": UNet2DConditionModelConfig.if_i_xl,
    "stabilityai__stable-diffusion-x4-upscaler": UNet2DConditionModelConfig.x4_upscaler,
    "kandinsky-community__kandinsky-2-1": None,
    "kandinsky-community__kandinsky-2-1-inpaint": None,
    "kandinsky-community__kandinsky-2-2-decoder": None,
    "kandinsky-community__kandinsky-2-2-controlnet-depth": None,
}


@pytest.mark.parametrize("repo", sorted(REAL))
def test_key_coverage_real_config(real_configs, repo):
    raw = json.loads((real_configs / repo / "unet" / "config.json").read_text())
    with torch.device("meta"):
        ref_model = diffusers.UNet2DConditionModel.from_config(raw)
    torch_shapes = {k: tuple(v.shape) for k, v in ref_model.state_dict().items()}
    config = UNet2DConditionModelConfig.from_dict(raw)
    if REAL[repo] is not None:
        assert config == REAL[repo]().replace(sample_size=config.sample_size)
    module = UNet2DConditionModel(config)
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule("UNet2DConditionModel", config),
                   ignore=convert.ignored_keys("UNet2DConditionModel", config))


def test_bfloat16_shapes_and_dtypes():
    module = UNet2DConditionModel(UNet2DConditionModelConfig.tiny(), dtype=jnp.bfloat16)
    params = jax.eval_shape(module.init_params)
    args = module.init_args()
    out = jax.eval_shape(module.apply, {"params": params}, *args)
    assert out.sample.shape == (1, 4, 4, 6) and out.sample.dtype == jnp.bfloat16


@pytest.mark.parametrize("field,value", [
    ("time_embedding_type", "fourier"), ("addition_embed_type", "text_time"), ("encoder_hid_dim_type", "ip_image_proj"),
    ("attention_type", "gated"), ("mid_block_type", "UNetMidBlock2DSomething"), ("class_embed_type", "nonsense"),
])
def test_unsupported_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        UNet2DConditionModelConfig.tiny(**{field: value})


def test_unsupported_block_type_names_the_field():
    with pytest.raises(ValueError, match="down_block_types"):
        UNet2DConditionModelConfig.tiny(down_block_types=("KDownBlock2D",) * 3)
