"""AutoencoderKL and the shared conv blocks (ResnetBlock2D, Downsample2D, Upsample2D) against diffusers."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import convert  # noqa: E402
from convert.autoencoder_kl import rename_legacy_keys  # noqa: E402
from convert.engine import check_coverage, convert_state_dict, flatten_paths  # noqa: E402
from jaxgen.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, DiagonalGaussianDistribution  # noqa: E402
from jaxgen.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D, group_norm  # noqa: E402
from tests.conftest import nchw_to_nhwc, nhwc_to_nchw, rel_l2  # noqa: E402

TOL = 1e-5


def _perturb(module: "torch.nn.Module", seed: int) -> "torch.nn.Module":
    """Add noise to every parameter so zero- or one-initialised layers cannot hide a bug."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02 + (0.1 * torch.randn_like(p) if p.ndim == 1 else 0))
    return module.eval()


def _flax_params(torch_module: "torch.nn.Module", flax_module, *args) -> dict:
    """Convert a torch module's state dict with the default rule onto ``flax_module``'s param shapes."""
    shapes = jax.eval_shape(lambda: flax_module.init(jax.random.key(0), *args))["params"]
    state = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
    return convert_state_dict(state, shapes)


# ---------------------------------------------------------------------------------------------
# The whole VAE, through save_pretrained -> AutoencoderKL.from_pretrained


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    cfg = AutoencoderKLConfig.tiny()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**cfg.to_dict())
    _perturb(model, 1)
    folder = tmp_path_factory.mktemp("tiny_vae")
    model.save_pretrained(folder, safe_serialization=True)
    module, params = AutoencoderKL.from_pretrained(folder)
    image = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    return model, module, params, image, folder


def test_tiny_config_matches_torch(tiny_vae):
    model, module, _, _, _ = tiny_vae
    assert module.config == AutoencoderKLConfig.from_dict(dict(model.config))
    assert module.config.block_out_channels == (8, 16)


def test_encode_parity(tiny_vae):
    model, module, params, image, _ = tiny_vae
    with torch.no_grad():
        ref = model.encode(torch.from_numpy(nhwc_to_nchw(image))).latent_dist
    out = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode"))(params, image)
    dist = out.latent_dist
    assert isinstance(dist, DiagonalGaussianDistribution)
    assert dist.mean.shape == (2, 8, 8, 4)
    assert rel_l2(dist.mean, nchw_to_nhwc(ref.mean)) < TOL
    assert rel_l2(dist.std, nchw_to_nhwc(ref.std)) < TOL
    assert rel_l2(dist.logvar, nchw_to_nhwc(ref.logvar)) < TOL
    np.testing.assert_array_equal(np.asarray(dist.mode()), np.asarray(dist.mean))


def test_decode_parity(tiny_vae):
    model, module, params, _, _ = tiny_vae
    z = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        ref = model.decode(torch.from_numpy(nhwc_to_nchw(z))).sample
    out = jax.jit(lambda p, z: module.apply({"params": p}, z, method="decode"))(params, z)
    assert out.sample.shape == (2, 16, 16, 3)
    assert out.commit_loss is None
    assert rel_l2(out.sample, nchw_to_nhwc(ref)) < TOL


def test_forward_parity(tiny_vae):
    model, module, params, image, _ = tiny_vae
    with torch.no_grad():
        ref = model(torch.from_numpy(nhwc_to_nchw(image))).sample
    out = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, image)
    assert rel_l2(out.sample, nchw_to_nhwc(ref)) < TOL


def test_legacy_attention_names_convert(tiny_vae):
    model, module, params, _, _ = tiny_vae
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, value in model.state_dict().items():
        for new, old in legacy_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = value.numpy()
    assert any(".proj_attn." in k for k in legacy)
    with pytest.raises(convert.ConversionError, match="proj_attn"):
        convert_state_dict(legacy, module.param_shapes(), convert.key_rule("AutoencoderKL", module.config))
    renamed = convert_state_dict(rename_legacy_keys(legacy), module.param_shapes(),
                                 convert.key_rule("AutoencoderKL", module.config))
    for path, value in flatten_paths(params).items():
        np.testing.assert_array_equal(flatten_paths(renamed)[path], np.asarray(value))


def test_legacy_attention_names_load_through_from_pretrained(tiny_vae, tmp_path):
    from safetensors.numpy import save_file

    model, module, params, _, folder = tiny_vae
    legacy = {}
    for key, value in model.state_dict().items():
        for new, old in {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = value.numpy()
    save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    _, loaded = AutoencoderKL.from_pretrained(tmp_path)
    for path, value in flatten_paths(params).items():
        np.testing.assert_array_equal(np.asarray(flatten_paths(loaded)[path]), np.asarray(value))


# ---------------------------------------------------------------------------------------------
# The posterior


def test_diagonal_gaussian_sample_is_keyed_and_distributed():
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((2, 32, 32, 4)).astype(np.float32)
    logvar = rng.uniform(-3, 1, (2, 32, 32, 4)).astype(np.float32)
    dist = DiagonalGaussianDistribution(jnp.asarray(np.concatenate([mean, logvar], axis=-1)))
    sample = jax.jit(lambda d, k: d.sample(k))  # the distribution is a pytree
    a, b = sample(dist, jax.random.key(0)), sample(dist, jax.random.key(0))
    c = sample(dist, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    eps = (np.asarray(a) - mean) / np.exp(0.5 * logvar)
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1.0) < 0.05
    np.testing.assert_allclose(np.asarray(dist.var), np.exp(logvar), rtol=1e-6)


def test_diagonal_gaussian_clamps_logvar_and_deterministic():
    params = jnp.concatenate([jnp.zeros((1, 2, 2, 2)), jnp.full((1, 2, 2, 2), 50.0)], axis=-1)
    dist = DiagonalGaussianDistribution(params)
    np.testing.assert_allclose(np.asarray(dist.logvar), 20.0)
    det = DiagonalGaussianDistribution(params, deterministic=True)
    np.testing.assert_array_equal(np.asarray(det.sample(jax.random.key(3))), np.asarray(det.mean))


# ---------------------------------------------------------------------------------------------
# Real-size key coverage and configs


@pytest.mark.parametrize("repo", ["PixArt-alpha__PixArt-XL-2-1024-MS", "stabilityai__stable-diffusion-x4-upscaler",
                                  "thu-ml__unidiffuser-v1"])
def test_key_coverage_real_configs(real_configs, repo):
    cfg = json.loads((real_configs / repo / "vae" / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderKL"
    with torch.device("meta"):
        model = diffusers.AutoencoderKL.from_config(cfg)
    torch_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    module = AutoencoderKL.from_config(cfg)
    assert module.config.scaling_factor == cfg["scaling_factor"]
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule("AutoencoderKL", module.config),
                   ignore=convert.ignored_keys("AutoencoderKL", module.config))


@pytest.mark.parametrize("field, value", [
    ("down_block_types", ("AttnDownEncoderBlock2D",)),
    ("up_block_types", ("AttnUpDecoderBlock2D",)),
])
def test_unsupported_block_types_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AutoencoderKLConfig(**{field: value})


# ---------------------------------------------------------------------------------------------
# Shared blocks


def test_group_norm_matches_torch():
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 16)).astype(np.float32) * 3 + 1
    ref_mod = _perturb(torch.nn.GroupNorm(4, 16, eps=1e-6), 0)
    norm = group_norm(4, 1e-6, jnp.float32, "norm")
    params = {"scale": ref_mod.weight.detach().numpy(), "bias": ref_mod.bias.detach().numpy()}
    with torch.no_grad():
        ref = ref_mod(torch.from_numpy(nhwc_to_nchw(x)))
    out = norm.apply({"params": params}, x)
    assert rel_l2(out, nchw_to_nhwc(ref)) < 1e-6
    # bfloat16 inputs: statistics in float32, output in bfloat16
    norm_bf16 = group_norm(4, 1e-6, jnp.bfloat16, "norm")
    out_bf16 = norm_bf16.apply({"params": params}, jnp.asarray(x, jnp.bfloat16))
    assert out_bf16.dtype == jnp.bfloat16
    assert rel_l2(np.asarray(out_bf16, np.float32), nchw_to_nhwc(ref)) < 1e-2


@pytest.mark.parametrize("norm, in_ch, out_ch, up, down, skip_time_act", [
    ("default", 8, 16, False, False, False),
    ("scale_shift", 16, 16, False, False, True),
    ("default", 8, 8, True, False, False),
    ("scale_shift", 8, 16, False, True, False),
])
def test_resnet_block_parity(norm, in_ch, out_ch, up, down, skip_time_act):
    from diffusers.models.resnet import ResnetBlock2D as TorchResnetBlock2D

    torch.manual_seed(0)
    ref_mod = _perturb(TorchResnetBlock2D(
        in_channels=in_ch, out_channels=out_ch, temb_channels=12, groups=4, eps=1e-5, time_embedding_norm=norm,
        output_scale_factor=1.5, up=up, down=down, skip_time_act=skip_time_act,
    ), 1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 6, in_ch)).astype(np.float32)
    temb = rng.standard_normal((2, 12)).astype(np.float32)
    block = ResnetBlock2D(out_channels=out_ch, temb_channels=12, groups=4, eps=1e-5, time_embedding_norm=norm,
                          output_scale_factor=1.5, up=up, down=down, skip_time_act=skip_time_act)
    params = _flax_params(ref_mod, block, x, temb)
    with torch.no_grad():
        ref = ref_mod(torch.from_numpy(nhwc_to_nchw(x)), torch.from_numpy(temb))
    out = block.apply({"params": params}, x, temb)
    assert out.shape == nchw_to_nhwc(ref).shape
    assert rel_l2(out, nchw_to_nhwc(ref)) < TOL


@pytest.mark.parametrize("use_conv, padding, size", [(True, 0, 7), (True, 1, 7), (True, 1, 8), (False, 1, 7)])
def test_downsample_parity(use_conv, padding, size):
    from diffusers.models.downsampling import Downsample2D as TorchDownsample2D

    torch.manual_seed(0)
    ref_mod = _perturb(TorchDownsample2D(8, use_conv=use_conv, out_channels=8, padding=padding, name="op"), 1)
    x = np.random.default_rng(0).standard_normal((2, size, size, 8)).astype(np.float32)
    mod = Downsample2D(use_conv=use_conv, out_channels=8, padding=padding)
    params = _flax_params(ref_mod, mod, x) if use_conv else {}
    with torch.no_grad():
        ref = ref_mod(torch.from_numpy(nhwc_to_nchw(x)))
    assert rel_l2(mod.apply({"params": params}, x), nchw_to_nhwc(ref)) < TOL


@pytest.mark.parametrize("use_conv, output_size", [(True, None), (True, (9, 11)), (False, None)])
def test_upsample_parity(use_conv, output_size):
    from diffusers.models.upsampling import Upsample2D as TorchUpsample2D

    torch.manual_seed(0)
    ref_mod = _perturb(TorchUpsample2D(8, use_conv=use_conv, out_channels=16 if use_conv else 8), 1)
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 8)).astype(np.float32)
    mod = Upsample2D(use_conv=use_conv, out_channels=16 if use_conv else 8)
    params = _flax_params(ref_mod, mod, x) if use_conv else {}
    with torch.no_grad():
        ref = ref_mod(torch.from_numpy(nhwc_to_nchw(x)), output_size=output_size)
    assert rel_l2(mod.apply({"params": params}, x, output_size), nchw_to_nhwc(ref)) < TOL
