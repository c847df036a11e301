"""CLIP towers: parity with transformers' CLIPTextModel, CLIPTextModelWithProjection and
CLIPVisionModelWithProjection; config reading; key coverage of the real configs."""

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
from convert.engine import check_coverage
from jaxgen.text import (
    CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection,
)
from tests.conftest import perturb_, rel_l2

LENGTH = 12
LEGACY_EOT = 99  # configs with eos_token_id=2 pool at the largest id: the tokenizer's EOT (and pad) token
NEW_EOS = 49  # other configs pool at the first eos_token_id


def _text_inputs(eos: int, pad: int):
    """Three rows: full length, right-padded (true length 6), left-padded (3 pads); EOS ends each text."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 98, size=(3, LENGTH)).astype(np.int64)
    ids[ids == NEW_EOS] = 50
    ids[:, 0] = 0  # BOS
    mask = np.ones_like(ids)
    ids[0, -1] = eos
    ids[1, 5], ids[1, 6:], mask[1, 6:] = eos, pad, 0
    ids[2, :3], mask[2, :3], ids[2, -1] = pad, 0, eos
    return ids, mask


def _save(tmodel, folder):
    tmodel.save_pretrained(folder)
    return tmodel


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    """kind -> (torch model, folder, module, params, jitted apply with hidden states)."""
    built = {}
    specs = {
        # legacy pooling, quick_gelu, no projection
        "plain": (transformers.CLIPTextModel, CLIPTextModel, CLIPTextConfig.tiny(eos_token_id=2)),
        # first-EOS pooling, gelu, projection
        "projection": (transformers.CLIPTextModelWithProjection, CLIPTextModelWithProjection,
                       CLIPTextConfig.tiny(eos_token_id=NEW_EOS, hidden_act="gelu")),
    }
    for seed, (kind, (tcls, jcls, cfg)) in enumerate(specs.items()):
        folder = tmp_path_factory.mktemp(f"clip_text_{kind}")
        torch.manual_seed(seed)
        tmodel = _save(perturb_(tcls(transformers.CLIPTextConfig(**cfg.to_dict())), seed=seed), folder)
        module, params = jcls.from_pretrained(folder)
        apply = jax.jit(lambda p, ids, mask, m=module: m.apply({"params": p}, ids, mask, output_hidden_states=True))
        built[kind] = tmodel, folder, module, params, apply
    return built


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_vision")
    torch.manual_seed(3)
    cfg = CLIPVisionConfig.tiny(hidden_act="gelu")
    tmodel = _save(perturb_(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**cfg.to_dict())),
                            seed=3), folder)
    module, params = CLIPVisionModelWithProjection.from_pretrained(folder)
    apply = jax.jit(lambda p, x: module.apply({"params": p}, x, output_hidden_states=True))
    return tmodel, folder, module, params, apply


def _torch_text(tmodel, ids, mask):
    with torch.no_grad():
        return tmodel(input_ids=torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask),
                      output_hidden_states=True)


def _check_hidden_states(ours, ref, num_layers, label):
    assert len(ours) == len(ref) == num_layers + 1
    for i in (0, -2, -1):
        err = rel_l2(ours[i], ref[i].numpy())
        print(f"{label} hidden_states[{i}]: rel L2 {err:.2e}")
        assert err < 1e-5, (i, err)


def test_text_model_parity(text_models):
    tmodel, _, _, params, apply = text_models["plain"]
    ids, mask = _text_inputs(LEGACY_EOT, LEGACY_EOT)
    ref = _torch_text(tmodel, ids, mask)
    out = apply(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    assert out.last_hidden_state.shape == (3, LENGTH, 32) and out.pooler_output.shape == (3, 32)
    for name in ("last_hidden_state", "pooler_output"):
        err = rel_l2(getattr(out, name), getattr(ref, name).numpy())
        print(f"CLIPTextModel {name}: rel L2 {err:.2e}")
        assert err < 1e-5, (name, err)
    _check_hidden_states(out.hidden_states, ref.hidden_states, 2, "CLIPTextModel")
    # pooled at the first largest id: the EOT of each row, not a later pad
    np.testing.assert_allclose(np.asarray(out.pooler_output[1]), np.asarray(out.last_hidden_state[1, 5]))
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out.last_hidden_state))  # tuple-style indexing
    # the padding mask matters (causal attention already hides right padding; left padding it does not)
    unmasked = _torch_text(tmodel, ids, None).last_hidden_state.numpy()
    assert rel_l2(unmasked[2, 3:], ref.last_hidden_state[2, 3:].numpy()) > 1e-3


def test_text_model_without_mask(text_models):
    tmodel, _, module, params, _ = text_models["plain"]
    ids, _ = _text_inputs(LEGACY_EOT, LEGACY_EOT)
    ref = _torch_text(tmodel, ids, None)
    out = module.apply({"params": params}, jnp.asarray(ids, jnp.int32))
    assert out.hidden_states is None
    assert rel_l2(out.last_hidden_state, ref.last_hidden_state.numpy()) < 1e-5
    assert rel_l2(out.pooler_output, ref.pooler_output.numpy()) < 1e-5


def test_text_model_with_projection_parity(text_models):
    tmodel, _, _, params, apply = text_models["projection"]
    ids, mask = _text_inputs(NEW_EOS, 1)
    ref = _torch_text(tmodel, ids, mask)
    out = apply(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    assert out.text_embeds.shape == (3, 24)
    for name in ("text_embeds", "last_hidden_state"):
        err = rel_l2(getattr(out, name), getattr(ref, name).numpy())
        print(f"CLIPTextModelWithProjection {name}: rel L2 {err:.2e}")
        assert err < 1e-5, (name, err)
    _check_hidden_states(out.hidden_states, ref.hidden_states, 2, "CLIPTextModelWithProjection")


def test_vision_model_parity(vision_model):
    tmodel, _, _, params, apply = vision_model
    pixels = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(pixels), output_hidden_states=True)
    out = apply(params, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
    assert out.image_embeds.shape == (2, 24) and out.last_hidden_state.shape == (2, 17, 32)
    for name in ("image_embeds", "last_hidden_state"):
        err = rel_l2(getattr(out, name), getattr(ref, name).numpy())
        print(f"CLIPVisionModelWithProjection {name}: rel L2 {err:.2e}")
        assert err < 1e-5, (name, err)
    _check_hidden_states(out.hidden_states, ref.hidden_states, 2, "CLIPVisionModelWithProjection")
    with pytest.raises(ValueError, match="doesn't match model"):
        apply(params, jnp.zeros((1, 32, 32, 3)))


def test_bfloat16_vision_close_to_float32(vision_model):
    tmodel, folder, _, _, _ = vision_model
    module, params = CLIPVisionModelWithProjection.from_pretrained(folder, dtype=jnp.bfloat16)
    pixels = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out = module.apply({"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1))).image_embeds
    assert out.dtype == jnp.bfloat16
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(pixels)).image_embeds.numpy()
    assert rel_l2(np.asarray(out.astype(jnp.float32)), ref) < 3e-2


def test_hub_layout_and_legacy_buffers_load(text_models, tmp_path):
    """transformers 5 saves CLIPTextModel without the ``text_model.`` prefix; the Hub's checkpoints have it
    (and, before transformers 4.31, a ``position_ids`` buffer): both load to the same params."""
    _, folder, _, params, _ = text_models["plain"]
    state = load_file(str(folder / "model.safetensors"))
    assert "embeddings.token_embedding.weight" in state
    hub_state = {f"text_model.{k}": v for k, v in state.items()}
    hub_state["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    save_file(hub_state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    _, loaded = CLIPTextModel.from_pretrained(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


def test_config_reading():
    clip_model_style = {
        "projection_dim": 12,
        "text_config": {"hidden_size": 16, "num_attention_heads": 2, "eos_token_id": 2},
        "vision_config": {"hidden_size": 32, "num_attention_heads": 4, "patch_size": 14, "projection_dim": 24},
    }
    text = CLIPTextConfig.from_dict(clip_model_style)
    vision = CLIPVisionConfig.from_dict(clip_model_style)
    assert (text.hidden_size, text.eos_token_id, text.projection_dim) == (16, 2, 512)
    assert (vision.hidden_size, vision.patch_size, vision.projection_dim, vision.image_size) == (32, 14, 24, 224)
    # the legacy *_config_dict overrides *_config, as in transformers
    assert CLIPVisionConfig.from_dict({"vision_config": {"hidden_size": 64}, "vision_config_dict": {"hidden_size": 96}}).hidden_size == 96
    for ours, ref in ((CLIPTextConfig(), transformers.CLIPTextConfig()), (CLIPVisionConfig(), transformers.CLIPVisionConfig())):
        ref_dict = ref.to_dict()
        assert all(ref_dict[k] == v for k, v in ours.to_dict().items()), ours
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act="mish")
    with pytest.raises(ValueError, match="num_attention_heads"):
        CLIPVisionConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(TypeError, match="eos_token_id"):  # a list where the config takes one int
        CLIPTextConfig.from_dict({"eos_token_id": [2, 3]})
    with pytest.raises(ValueError, match="max_position_embeddings"):
        CLIPTextModel(CLIPTextConfig.tiny()).init(jax.random.key(0), jnp.zeros((1, 17), jnp.int32))


def _coverage(cls, torch_model, cfg_dict):
    name = cls.__name__
    module = cls.from_config(cfg_dict)
    torch_shapes = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
    torch_shapes = convert.prepare_state_dict(name, module.config, torch_shapes)
    check_coverage(torch_shapes, module.param_shapes(), convert.key_rule(name, module.config),
                   ignore=convert.ignored_keys(name, module.config))
    return module, torch_shapes


@pytest.mark.parametrize(
    "repo,component,cls,tcls,expected",
    [
        ("stabilityai__stable-diffusion-x4-upscaler", "text_encoder", CLIPTextModel, transformers.CLIPTextModel,
         dict(hidden_size=1024, num_hidden_layers=23, hidden_act="gelu", eos_token_id=2)),
        ("kandinsky-community__kandinsky-2-1-prior", "text_encoder", CLIPTextModelWithProjection,
         transformers.CLIPTextModelWithProjection,
         dict(hidden_size=768, num_hidden_layers=12, projection_dim=768)),
        ("kandinsky-community__kandinsky-2-1-prior", "image_encoder", CLIPVisionModelWithProjection,
         transformers.CLIPVisionModelWithProjection,
         dict(hidden_size=1024, num_hidden_layers=24, patch_size=14, projection_dim=768)),
        ("kandinsky-community__kandinsky-2-2-prior", "text_encoder", CLIPTextModelWithProjection,
         transformers.CLIPTextModelWithProjection,
         dict(hidden_size=1280, num_hidden_layers=32, hidden_act="gelu", projection_dim=1280)),
        ("kandinsky-community__kandinsky-2-2-prior", "image_encoder", CLIPVisionModelWithProjection,  # ViT-bigG
         transformers.CLIPVisionModelWithProjection,
         dict(hidden_size=1664, num_hidden_layers=48, patch_size=14, hidden_act="gelu", projection_dim=1280)),
        ("warp-ai__wuerstchen-prior", "text_encoder", CLIPTextModel, transformers.CLIPTextModel,  # ViT-bigG
         dict(hidden_size=1280, num_hidden_layers=32, hidden_act="gelu", eos_token_id=2)),
        ("warp-ai__wuerstchen", "text_encoder", CLIPTextModel, transformers.CLIPTextModel,  # ViT-H
         dict(hidden_size=1024, num_hidden_layers=24, hidden_act="gelu")),
        ("thu-ml__unidiffuser-v1", "text_encoder", CLIPTextModel, transformers.CLIPTextModel,  # ViT-L/14
         dict(hidden_size=768, num_hidden_layers=12, hidden_act="quick_gelu", eos_token_id=2)),
        ("thu-ml__unidiffuser-v1", "image_encoder", CLIPVisionModelWithProjection,
         transformers.CLIPVisionModelWithProjection,
         dict(hidden_size=768, num_hidden_layers=12, patch_size=32, projection_dim=512)),
    ],
)
def test_key_coverage_real_configs(real_configs, repo, component, cls, tcls, expected):
    """Every key of the real-size model (meta device) maps onto the Flax params with the right shape."""
    cfg_dict = json.loads((real_configs / repo / component / "config.json").read_text())
    with torch.device("meta"):
        tmodel = tcls(tcls.config_class(**cfg_dict))
    module, torch_shapes = _coverage(cls, tmodel, cfg_dict)
    assert {k: getattr(module.config, k) for k in expected} == expected
    if cls is CLIPTextModel:  # the Hub's layout (transformers 4): every key under text_model.
        assert all(k.startswith("text_model.") for k in torch_shapes)
        check_coverage({k: v for k, v in torch_shapes.items()}, module.param_shapes(),
                       convert.key_rule(cls.__name__, module.config),
                       ignore=convert.ignored_keys(cls.__name__, module.config))
