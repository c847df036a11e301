"""PaellaVQModel (Würstchen's stage A) against diffusers (PyTorch, CPU, float32): a tiny perturbed model through
save_pretrained -> from_pretrained (encode, decode with and without quantization, forward), the real config's
key coverage, the building blocks' layouts, bad input."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel as TorchPaella

import convert
from convert.engine import check_coverage
from jaxgen.models.paella_vq_model import PaellaVQModel, PaellaVQModelConfig, pixel_shuffle, pixel_unshuffle
from tests.conftest import REAL_CONFIGS, nchw_to_nhwc, nhwc_to_nchw, perturb_, rel_l2

TOL = 1e-5
SIZE = 16  # the tiny model's factor is 4: 4x4 latents


@pytest.fixture(scope="module")
def paella(tmp_path_factory):
    """(torch model, jaxgen module, params): every weight perturbed (the gammas start at zero), BatchNorm
    statistics random, the codebook spread over the encoder's latents."""
    torch.manual_seed(0)
    model = perturb_(TorchPaella(**PaellaVQModelConfig.tiny().to_dict()), scale=0.1, seed=0)
    with torch.no_grad():
        norm = model.down_blocks[-1][1]
        norm.running_mean.normal_(0, 0.3)
        norm.running_var.uniform_(0.5, 2.0)
        model.vquantizer.embedding.weight.normal_(0, 1.0)
    folder = tmp_path_factory.mktemp("paella")
    model.save_pretrained(folder)
    module, params = PaellaVQModel.from_pretrained(folder)
    return model, module, params


def _images(seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


def test_encode_decode_and_forward_match_diffusers(paella):
    model, module, params = paella
    x = _images()
    v = {"params": params}
    latents = module.apply(v, jnp.asarray(x), method="encode").latents
    with torch.no_grad():
        ref_latents = model.encode(torch.from_numpy(nhwc_to_nchw(x))).latents
        ref_plain = model.decode(ref_latents).sample
        ref_quant = model.decode(ref_latents, force_not_quantize=False).sample
        ref_forward = model(torch.from_numpy(nhwc_to_nchw(x))).sample
    checks = {
        "encode": (latents, ref_latents),
        "decode": (module.apply(v, latents, method="decode").sample, ref_plain),
        "decode quantized": (module.apply(v, latents, force_not_quantize=False, method="decode").sample, ref_quant),
        "forward": (module.apply(v, jnp.asarray(x)).sample, ref_forward),
    }
    assert latents.shape == (2, SIZE // 4, SIZE // 4, 4)
    for name, (ours, theirs) in checks.items():
        err = rel_l2(np.asarray(ours), nchw_to_nhwc(theirs.numpy()))
        print(f"\nPaellaVQModel {name}: rel L2 {err:.2e}")
        assert err < TOL, name
    # quantization changed something: the codebook is not the identity on these latents
    assert rel_l2(np.asarray(checks["decode"][0]), np.asarray(checks["decode quantized"][0])) > 1e-3


def test_pixel_shuffles_match_torch():
    x = np.random.default_rng(1).standard_normal((2, 8, 6, 12)).astype(np.float32)
    ref = nchw_to_nhwc(torch.nn.PixelShuffle(2)(torch.from_numpy(nhwc_to_nchw(x))).numpy())
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), 2)), ref)
    back = nchw_to_nhwc(torch.nn.PixelUnshuffle(2)(torch.from_numpy(nhwc_to_nchw(ref))).numpy())
    np.testing.assert_array_equal(np.asarray(pixel_unshuffle(jnp.asarray(ref), 2)), back)


def test_real_config_and_key_coverage():
    """Every key of the released stage A (warp-ai/wuerstchen ``vqgan``) maps to a param of the same shape."""
    raw = json.loads((REAL_CONFIGS / "warp-ai__wuerstchen" / "vqgan" / "config.json").read_text())
    cfg = PaellaVQModelConfig.from_dict(raw)
    assert cfg == PaellaVQModelConfig()  # the defaults are the released model's
    with torch.device("meta"):
        model = TorchPaella.from_config(raw)
    torch_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    module = PaellaVQModel.from_config(raw)
    assert module.transposed_conv_names() == ["up_blocks.13"]
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule("PaellaVQModel", cfg),
                   ignore=convert.ignored_keys("PaellaVQModel", cfg))
    count = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(module.param_shapes()))
    assert count == sum(int(np.prod(s)) for k, s in torch_shapes.items() if not k.endswith("num_batches_tracked"))


def test_sizes_it_cannot_take_are_refused(paella):
    _, module, params = paella
    with pytest.raises(ValueError, match="multiples of 4"):
        module.apply({"params": params}, jnp.zeros((1, 18, 16, 3)), method="encode")
    with pytest.raises(ValueError, match="embed_dim"):
        PaellaVQModelConfig.tiny(embed_dim=15)
