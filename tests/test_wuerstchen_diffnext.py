"""WuerstchenDiffNeXt (Würstchen's stage B) against diffusers (PyTorch, CPU, float32): a tiny perturbed model through
save_pretrained -> from_pretrained, the antialiased bicubic resize of its effnet conditioning against torch, the real
config's key coverage and partition rules, bad input, a bfloat16 smoke run."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.pipelines.deprecated.wuerstchen.modeling_wuerstchen_diffnext import WuerstchenDiffNeXt as TorchDiffNeXt

import convert
from convert.engine import check_coverage
from jaxgen import sharding
from jaxgen.image_processing import bicubic_antialias_weights, resize_bicubic_antialias
from jaxgen.models.wuerstchen_diffnext import WuerstchenDiffNeXt, WuerstchenDiffNeXtConfig
from tests.conftest import REAL_CONFIGS, nchw_to_nhwc, nhwc_to_nchw, perturb_, rel_l2

TOL = 1e-5
SIZE = 16  # the tiny model's levels are 8, 4 and 2 pixels (patch 2)


def _torch_model(cfg: WuerstchenDiffNeXtConfig, seed: int = 0) -> TorchDiffNeXt:
    """Every weight perturbed: ``clf.1``, the TimestepBlock mappers and the GRN gammas and betas start at zero."""
    torch.manual_seed(seed)
    return perturb_(TorchDiffNeXt(**cfg.to_dict()), scale=0.05, seed=seed)


def _load(model: TorchDiffNeXt, folder) -> tuple[WuerstchenDiffNeXt, dict]:
    model.save_pretrained(folder)
    return WuerstchenDiffNeXt.from_pretrained(folder)


def _inputs(seed: int = 0, batch: int = 2, effnet_hw: tuple[int, int] = (6, 5)) -> tuple[np.ndarray, ...]:
    """x (B, 16, 16, 4), r, effnet (B, 6, 5, 16): resized up to 8 px and down to 4 and 2, clip (B, 7, 24)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, SIZE, SIZE, 4)).astype(np.float32)
    r = np.array([0.93, 0.18][:batch], np.float32)
    effnet = rng.standard_normal((batch, *effnet_hw, 16)).astype(np.float32)
    clip = rng.standard_normal((batch, 7, 24)).astype(np.float32)
    return x, r, effnet, clip


def _reference(model: TorchDiffNeXt, x, r, effnet, clip) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(nhwc_to_nchw(x)), torch.from_numpy(r), torch.from_numpy(nhwc_to_nchw(effnet)),
                    None if clip is None else torch.from_numpy(clip))
    return nchw_to_nhwc(out.numpy())


@pytest.fixture(scope="module")
def diffnext(tmp_path_factory):
    """(torch model, jaxgen module, params, jitted apply) of the tiny config."""
    model = _torch_model(WuerstchenDiffNeXtConfig.tiny())
    module, params = _load(model, tmp_path_factory.mktemp("wuerstchen_diffnext"))
    return model, module, params, jax.jit(module.apply)


def test_matches_diffusers(diffnext):
    """Two rows at different noise ratios; the effnet conditioning and the ratio both change the output."""
    model, module, params, apply = diffnext
    x, r, effnet, clip = _inputs()
    v = {"params": params}
    out = np.asarray(apply(v, x, r, effnet, clip))
    err = rel_l2(out, _reference(model, x, r, effnet, clip))
    print(f"\nWuerstchenDiffNeXt tiny parity: rel L2 {err:.2e}")
    assert out.shape == (2, SIZE, SIZE, 4) and out.dtype == np.float32 and err < TOL
    assert rel_l2(np.asarray(apply(v, x, r, effnet * 0.5, clip)), out) > 1e-3
    assert rel_l2(np.asarray(apply(v, x, r[::-1].copy(), effnet, clip)), out) > 1e-3


def test_without_clip_matches_diffusers(tmp_path):
    """``clip=None`` where diffusers takes it: a config without attention blocks (one row, r as a scalar)."""
    cfg = WuerstchenDiffNeXtConfig.tiny(level_config=("CT", "CT", "CT"), blocks=(1, 1, 1))
    model = _torch_model(cfg, seed=1)
    module, params = _load(model, tmp_path)
    x, r, effnet, _ = _inputs(seed=1, batch=1)
    out = np.asarray(jax.jit(module.apply)({"params": params}, x, float(r[0]), effnet))
    err = rel_l2(out, _reference(model, x, r, effnet, None))
    print(f"\nWuerstchenDiffNeXt tiny parity without clip: rel L2 {err:.2e}")
    assert err < TOL


@pytest.mark.parametrize("align_corners", [True, False])
def test_bicubic_antialias_resize_matches_torch(align_corners):
    """Up (6->16, 5->9, 24->128), down (24->16, 24->7, 9->4) and the same size: the weights are torch's bit for bit
    (read back from torch resizing one-hot rows), the resized images agree to a few float32 ulp."""
    rng = np.random.default_rng(0)
    for size_in, size_out in ((6, 16), (5, 9), (24, 128), (24, 16), (24, 7), (9, 4), (7, 7)):
        x = rng.standard_normal((2, size_in, size_in + 1, 3)).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(nhwc_to_nchw(x)), size=(size_out, size_out + 2), mode="bicubic",
                            antialias=True, align_corners=align_corners)
        out = np.asarray(resize_bicubic_antialias(jnp.asarray(x), size_out, size_out + 2, align_corners))
        np.testing.assert_allclose(out, nchw_to_nhwc(ref), rtol=0, atol=1e-6, err_msg=f"{size_in}->{size_out}")
        one_hot = torch.eye(size_in)[:, None, :, None].repeat(1, 1, 1, 3)  # batch j: row j lit, 3 columns
        torch_w = F.interpolate(one_hot, size=(size_out, 3), mode="bicubic", antialias=True,
                                align_corners=align_corners)[:, 0, :, 1].T.numpy()
        np.testing.assert_array_equal(bicubic_antialias_weights(size_in, size_out, align_corners), torch_w)
    x = jnp.asarray(rng.standard_normal((1, 5, 4, 2)).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(resize_bicubic_antialias(x, 5, 4)), np.asarray(x))


def test_real_config_key_coverage_and_partition_rules(monkeypatch):
    """Every key of the released stage B (warp-ai/wuerstchen ``decoder``, 1.06B) maps to a param of the same shape;
    the attention and the 4x MLPs (the ones taking skips too) split over the mesh's model axis."""
    raw = json.loads((REAL_CONFIGS / "warp-ai__wuerstchen" / "decoder" / "config.json").read_text())
    cfg = WuerstchenDiffNeXtConfig.from_dict(raw)
    assert cfg == WuerstchenDiffNeXtConfig()  # the defaults are the released model's
    # diffusers' init loops over every block for every module (quadratic: ~10 s on meta tensors); shapes suffice
    monkeypatch.setattr(TorchDiffNeXt, "_init_weights", lambda self, m: None)
    with torch.device("meta"):
        model = TorchDiffNeXt.from_config(raw)
    torch_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    module = WuerstchenDiffNeXt.from_config(raw)
    assert module.transposed_conv_names() == ["up_blocks.0.12.1", "up_blocks.1.42.1", "up_blocks.2.12.1"]
    shapes = module.param_shapes()
    check_coverage(torch_shapes, shapes, convert.key_rule("WuerstchenDiffNeXt", cfg),
                   ignore=convert.ignored_keys("WuerstchenDiffNeXt", cfg))
    assert len(jax.tree_util.tree_leaves(shapes)) == len(torch_shapes)
    count = sum(int(np.prod(s)) for s in torch_shapes.values())
    print(f"\nWuerstchenDiffNeXt real config: {count:,} parameters")
    assert count == sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
    assert 1.055e9 < count < 1.056e9
    axes = sharding.param_logical_axes(module, shapes)
    assert axes["down_blocks.1.3"]["attention"]["to_q"]["kernel"] == ("embed", "heads")
    assert axes["down_blocks.1.3"]["attention"]["to_out.0"]["kernel"] == ("heads", "embed")
    assert axes["up_blocks.1.0"]["channelwise.0"]["kernel"] == ("embed", "mlp")  # skip + effnet inputs
    assert shapes["up_blocks.1.0"]["channelwise.0"]["kernel"].shape == (1280 + 1280 + 1024, 4 * 1280)
    assert axes["down_blocks.0.0"]["channelwise.4"]["kernel"] == ("mlp", "embed")
    assert axes["effnet_mappers.1"]["kernel"] == (None, None, None, None)


def test_bad_input_is_refused(diffnext):
    _, module, params, _ = diffnext
    x, r, effnet, clip = _inputs()

    def run(x=x, effnet=effnet, clip=clip):
        return jax.eval_shape(module.apply, {"params": params}, x, r, effnet, clip)

    with pytest.raises(ValueError, match="x must be NHWC with 4 channels"):
        run(x=x[..., :3])
    with pytest.raises(ValueError, match="x's height and width must be multiples of 8"):
        run(x=x[:, :12])
    with pytest.raises(ValueError, match="effnet must be NHWC .* 16"):
        run(effnet=effnet[..., :8])
    with pytest.raises(ValueError, match="clip must be"):
        run(clip=clip[..., :8])
    with pytest.raises(ValueError, match="clip .* is required"):
        run(clip=None)
    with pytest.raises(ValueError, match="one entry per level"):
        WuerstchenDiffNeXtConfig.tiny(blocks=(1, 1))
    with pytest.raises(ValueError, match="nhead=3"):
        WuerstchenDiffNeXtConfig.tiny(nhead=(-1, 3, 4))
    with pytest.raises(ValueError, match="blocks are C, T or A"):
        WuerstchenDiffNeXtConfig.tiny(level_config=("CT", "CTX", "CTA"))


def test_bfloat16_runs(diffnext):
    """bfloat16 params and activations: the shapes, dtype and finite values; close to float32 (loosely)."""
    _, module, params, apply = diffnext
    x, r, effnet, clip = _inputs()
    bf16 = WuerstchenDiffNeXt(module.config, dtype=jnp.bfloat16)
    p16 = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(jnp.bfloat16), params)  # on the host: no compiles
    out = jax.jit(bf16.apply)({"params": p16}, jnp.asarray(x, jnp.bfloat16), r, jnp.asarray(effnet, jnp.bfloat16),
                              jnp.asarray(clip, jnp.bfloat16))
    assert out.shape == (2, SIZE, SIZE, 4) and out.dtype == jnp.bfloat16
    out = np.asarray(out.astype(jnp.float32))
    assert np.isfinite(out).all()
    assert rel_l2(out, np.asarray(apply({"params": params}, x, r, effnet, clip))) < 0.05
