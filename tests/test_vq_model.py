"""VQModel (MoVQ) against diffusers: tiny random-weight models through save_pretrained -> from_pretrained,
the real Kandinsky configs' key coverage, bfloat16, and config validation."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import convert  # noqa: E402
from convert.engine import check_coverage, convert_state_dict, flatten_paths  # noqa: E402
from jaxgen.models.vq_model import QuantizerOutput, VQEncoderOutput, VQModel, VQModelConfig  # noqa: E402
from tests.conftest import nchw_to_nhwc, nhwc_to_nchw, perturb_, rel_l2  # noqa: E402

TOL = 1e-5
KANDINSKY_MOVQ = [
    "kandinsky-community__kandinsky-2-1", "kandinsky-community__kandinsky-2-1-inpaint",
    "kandinsky-community__kandinsky-2-2-decoder", "kandinsky-community__kandinsky-3",
]


def _t(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(nhwc_to_nchw(x))


def _build(tmp_path_factory, cfg: VQModelConfig, seed: int):
    """A perturbed diffusers VQModel for ``cfg`` with a codebook spread over the encoder's latents
    (no near-ties for the nearest-code search), saved as folder/movq and loaded back in jaxgen."""
    torch.manual_seed(seed)
    model = perturb_(diffusers.VQModel(**cfg.to_dict()), seed=seed)
    image = np.random.default_rng(seed).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        h = model.encode(_t(image)).latents
        mean, std = h.mean(dim=(0, 2, 3)), h.std(dim=(0, 2, 3))
        gen = torch.Generator().manual_seed(seed)
        spread = torch.randn(cfg.num_vq_embeddings, cfg.embed_dim, generator=gen) * std + mean
        model.quantize.embedding.weight.copy_(spread)
    folder = tmp_path_factory.mktemp("vq")
    model.save_pretrained(folder / "movq", safe_serialization=True)
    module, params = VQModel.from_pretrained(folder, subfolder="movq")
    return model, module, params, image, folder


@pytest.fixture(scope="module")
def tiny_movq(tmp_path_factory):
    return _build(tmp_path_factory, VQModelConfig.tiny(), seed=0)


def test_config_and_from_pretrained(tiny_movq):
    model, module, params, _, _ = tiny_movq
    assert module.config == VQModelConfig.from_dict(dict(model.config))
    assert module.config.norm_type == "spatial" and module.config.scale_factor == 2
    codebook = flatten_paths(params)[("quantize", "embedding", "embedding")]
    np.testing.assert_array_equal(np.asarray(codebook), model.quantize.embedding.weight.detach().numpy())
    # the tuple forms, by shape only (nothing compiled)
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    encode = lambda p, x: module.apply({"params": p}, x, return_dict=False, method=VQModel.encode)
    (latents,) = jax.eval_shape(encode, params, x)
    sample, loss = jax.eval_shape(lambda p, x: module.apply({"params": p}, x, return_dict=False), params, x)
    assert latents.shape == (1, 8, 8, 4) and sample.shape == (1, 16, 16, 3) and loss.shape == ()


def test_encode_parity(tiny_movq):
    model, module, params, image, _ = tiny_movq
    with torch.no_grad():
        ref = model.encode(_t(image)).latents
    out = jax.jit(lambda p, x: module.apply({"params": p}, x, method=VQModel.encode))(params, image)
    assert isinstance(out, VQEncoderOutput) and out.latents.shape == (2, 8, 8, 4)
    assert rel_l2(out.latents, nchw_to_nhwc(ref)) < TOL


def test_decode_not_quantized_parity(tiny_movq):
    model, module, params, _, _ = tiny_movq
    z = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        ref = model.decode(_t(z), force_not_quantize=True)
    out = jax.jit(lambda p, z: module.apply({"params": p}, z, force_not_quantize=True, method=VQModel.decode))(params, z)
    assert out.sample.shape == (2, 16, 16, 3)
    assert rel_l2(out.sample, nchw_to_nhwc(ref.sample)) < TOL
    np.testing.assert_array_equal(np.asarray(out.commit_loss), np.zeros(2, np.float32))


def test_quantize_and_quantized_decode_parity(tiny_movq):
    model, module, params, image, _ = tiny_movq
    with torch.no_grad():
        h = model.encode(_t(image)).latents
        quant, loss, (_, _, indices) = model.quantize(h)
        ref = model.decode(h)
    h_nhwc = nchw_to_nhwc(h)
    # the search is well posed: the best code beats the runner-up clearly everywhere
    codebook = model.quantize.embedding.weight.detach().numpy().astype(np.float64)
    dist = np.sort(((h_nhwc.reshape(-1, 1, 4).astype(np.float64) - codebook[None]) ** 2).sum(-1), axis=-1)
    assert (dist[:, 1] - dist[:, 0]).min() > 1e-4

    q = jax.jit(lambda p, h: module.apply({"params": p}, h, method=VQModel.quantize_latents))(params, h_nhwc)
    assert isinstance(q, QuantizerOutput) and q.indices.shape == (2, 8, 8)
    np.testing.assert_array_equal(np.asarray(q.indices).reshape(-1), indices.numpy())
    assert rel_l2(q.quant, nchw_to_nhwc(quant)) < TOL
    assert abs(float(q.commit_loss) - float(loss)) <= 1e-5 * float(loss)

    out = jax.jit(lambda p, h: module.apply({"params": p}, h, method=VQModel.decode))(params, h_nhwc)
    assert rel_l2(out.sample, nchw_to_nhwc(ref.sample)) < TOL
    assert abs(float(out.commit_loss) - float(ref.commit_loss)) <= 1e-5 * float(ref.commit_loss)


def test_forward_parity(tiny_movq):
    model, module, params, image, _ = tiny_movq
    with torch.no_grad():
        ref = model(_t(image))
    out = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, image)
    assert rel_l2(out.sample, nchw_to_nhwc(ref.sample)) < TOL
    assert abs(float(out.commit_loss) - float(ref.commit_loss)) <= 1e-5 * float(ref.commit_loss)


def test_lookup_from_codebook_decodes_indices(tiny_movq):
    """``lookup_from_codebook``: decode(indices, force_not_quantize=True, shape) decodes the codes' vectors."""
    model, module, params, _, _ = tiny_movq
    indices = np.random.default_rng(2).integers(0, 64, (2 * 8 * 8,))
    shape = (2, 8, 8, 4)
    with torch.no_grad():
        vectors = model.quantize.get_codebook_entry(torch.from_numpy(indices), shape)
        ref = model.decode(vectors, force_not_quantize=True).sample
    lookup = module.clone(config=module.config.replace(lookup_from_codebook=True))
    out = jax.jit(lambda p, i: lookup.apply({"params": p}, i, force_not_quantize=True, shape=shape,
                                            method=VQModel.decode))(params, indices)
    assert rel_l2(out.sample, nchw_to_nhwc(ref)) < TOL


def test_bfloat16_load_and_decode(tiny_movq):
    model, _, _, _, folder = tiny_movq
    module, params = VQModel.from_pretrained(folder, subfolder="movq", dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    z = np.random.default_rng(3).standard_normal((1, 8, 8, 4)).astype(np.float32)
    out = jax.jit(lambda p, z: module.apply({"params": p}, z, force_not_quantize=True, method=VQModel.decode))(params, z)
    assert out.sample.shape == (1, 16, 16, 3) and out.sample.dtype == jnp.bfloat16
    with torch.no_grad():
        ref = model.decode(_t(z), force_not_quantize=True).sample
    assert rel_l2(np.asarray(out.sample, np.float32), nchw_to_nhwc(ref)) < 5e-2


def test_group_norm_variant_parity(tmp_path_factory):
    """norm_type="group" (diffusers' default): the same modules with group norms in the decoder."""
    model, module, params, image, _ = _build(tmp_path_factory, VQModelConfig.tiny(norm_type="group"), seed=5)
    with torch.no_grad():
        ref = model(_t(image))
    out = jax.jit(lambda p, x: module.apply({"params": p}, x))(params, image)
    assert rel_l2(out.sample, nchw_to_nhwc(ref.sample)) < TOL


def test_legacy_attention_names_convert(tiny_movq):
    """Pre-0.14 attention names, in the down/up blocks' attentions too, convert after the rename."""
    model, module, params, _, _ = tiny_movq
    legacy = {}
    for key, value in model.state_dict().items():
        for new, old in {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}.items():
            key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value.numpy()
    assert any(k.startswith("encoder.down_blocks.1.attentions.0.proj_attn") for k in legacy)
    state = convert.prepare_state_dict("VQModel", module.config, legacy)
    converted = convert_state_dict(state, module.param_shapes(), convert.key_rule("VQModel", module.config))
    for path, value in flatten_paths(params).items():
        np.testing.assert_array_equal(flatten_paths(converted)[path], np.asarray(value))


@pytest.mark.parametrize("repo", KANDINSKY_MOVQ)
def test_key_coverage_real_configs(real_configs, repo):
    cfg = json.loads((real_configs / repo / "movq" / "config.json").read_text())
    assert cfg["_class_name"] == "VQModel"
    with torch.device("meta"):
        model = diffusers.VQModel.from_config(cfg)
    torch_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    module = VQModel.from_config(cfg)
    assert module.config.norm_type == cfg["norm_type"] and module.config.scale_factor == 8
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule("VQModel", module.config),
                   ignore=convert.ignored_keys("VQModel", module.config))


@pytest.mark.parametrize("field, changes", [
    ("norm_type", {"norm_type": "ada_group"}),
    ("down_block_types", {"down_block_types": ("DownEncoderBlock2D", "CrossAttnDownBlock2D")}),
    ("up_block_types", {"up_block_types": ("UpDecoderBlock2D",)}),
    ("act_fn", {"act_fn": "no_such_activation"}),
    ("norm_num_groups", {"norm_num_groups": 24}),
    ("vq_embed_dim", {"vq_embed_dim": 3}),
    ("block_out_channels", {"block_out_channels": (16, 64)}),
    ("num_vq_embeddings", {"num_vq_embeddings": 0}),
])
def test_bad_config_names_the_field(field, changes):
    with pytest.raises(ValueError, match=field):
        VQModelConfig.tiny().replace(**changes)
