"""Kandinsky 2.1's text encoder: parity with diffusers' MultilingualCLIP (XLM-RoBERTa + LinearTransformation),
key coverage of the real config, the XLM-R tokenizer through ``jaxgen.text.encoding``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig
from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP as TorchMultilingualCLIP
from safetensors.numpy import load_file, save_file
from transformers import AutoTokenizer, XLMRobertaTokenizerFast

import convert
from convert.engine import ConversionError, check_coverage
from jaxgen import sharding
from jaxgen.text import MultilingualCLIP, MultilingualCLIPConfig, encode, tokenize
from tests.conftest import make_xlm_roberta_tokenizer, perturb_, rel_l2

LENGTH = 16  # the tiny config's longest sequence: positions run up to LENGTH + pad id + 1 = max_position_embeddings
# a full-length row (truncated), and two padded rows of different lengths
PROMPTS = ["an astronaut riding a horse on the moon", "a photo of a cat", "a cat"]
POOLER_KEYS = {"transformer.pooler.dense.weight", "transformer.pooler.dense.bias"}


def _torch_config(cfg: MultilingualCLIPConfig) -> MCLIPConfig:
    """diffusers' config for ours: its constructor names the two projection sizes differently."""
    fields = {k: v for k, v in cfg.to_dict().items()
              if k not in ("transformerDimensions", "numDims", "position_embedding_type")}
    return MCLIPConfig(transformerDimSize=cfg.transformerDimensions, imageDimSize=cfg.numDims, **fields)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(tokenizer, torch model, folder, module, params): a tiny perturbed MultilingualCLIP saved with save_pretrained."""
    root = tmp_path_factory.mktemp("mclip")
    tokenizer = make_xlm_roberta_tokenizer(root / "_tok")
    cfg = MultilingualCLIPConfig.tiny(vocab_size=len(tokenizer), max_position_embeddings=LENGTH + 2)
    torch.manual_seed(0)
    tmodel = perturb_(TorchMultilingualCLIP(_torch_config(cfg)), scale=0.05, seed=0)
    folder = root / "text_encoder"
    tmodel.save_pretrained(folder)
    module, params = MultilingualCLIP.from_pretrained(root, subfolder="text_encoder")
    return tokenizer, tmodel, folder, module, params


def _inputs(tokenizer):
    ids, mask = tokenize(tokenizer, PROMPTS, LENGTH)
    lengths = mask.sum(axis=1)
    assert lengths[0] == LENGTH and len(set(lengths.tolist())) == 3, lengths  # truncated, and two paddings
    return ids, mask


def _torch_forward(tmodel, ids, mask):
    with torch.no_grad():
        embeds, hidden = tmodel(input_ids=torch.from_numpy(ids.astype(np.int64)),
                                attention_mask=torch.from_numpy(mask.astype(np.int64)))
    return embeds.numpy(), hidden.numpy()


def test_parity_with_diffusers(built):
    tokenizer, tmodel, _, module, params = built
    assert (module.config.transformerDimensions, module.config.numDims, module.config.hidden_size) == (32, 24, 32)
    ids, mask = _inputs(tokenizer)
    ref_embeds, ref_hidden = _torch_forward(tmodel, ids, mask)
    text_embeds, hidden = encode(module, params, ids, mask, outputs=("text_embeds", "last_hidden_state"))
    assert text_embeds.shape == (3, 24) and hidden.shape == (3, LENGTH, 32)
    for name, ours, ref in (("text_embeds", text_embeds, ref_embeds), ("last_hidden_state", hidden, ref_hidden)):
        err = rel_l2(ours, ref)
        print(f"MultilingualCLIP {name}: rel L2 {err:.2e}")
        assert err < 1e-5, (name, err)
    # padding changes nothing for the real tokens: the padded row equals the same prompt at its own length
    short_ids, short_mask = tokenize(tokenizer, PROMPTS[1:2], int(mask[1].sum()))
    (short_embeds,) = encode(module, params, short_ids, short_mask, outputs="text_embeds")
    assert rel_l2(short_embeds[0], text_embeds[1]) < 1e-5


def test_output_indexes_like_diffusers_tuple(built):
    tokenizer, _, _, module, params = built
    ids, mask = _inputs(tokenizer)
    out = jax.jit(module.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    assert out[0] is out.text_embeds and out[1] is out.last_hidden_state


def test_bfloat16_close_to_float32(built):
    tokenizer, tmodel, folder, _, _ = built
    module, params = MultilingualCLIP.from_pretrained(folder, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree_util.tree_leaves(params))
    ids, mask = _inputs(tokenizer)
    text_embeds, hidden = encode(module, params, ids, mask, outputs=("text_embeds", "last_hidden_state"))
    assert text_embeds.dtype == hidden.dtype == jnp.bfloat16
    ref_embeds, ref_hidden = _torch_forward(tmodel, ids, mask)
    for ours, ref in ((text_embeds, ref_embeds), (hidden, ref_hidden)):
        err = rel_l2(np.asarray(ours.astype(jnp.float32)), ref)
        print(f"bfloat16 rel L2 {err:.2e}")
        assert err < 3e-2


def test_pooler_is_ignored_and_legacy_buffers_load(built, tmp_path):
    """The saved checkpoint has XLM-R's unused pooler (not allocated here); checkpoints written before
    transformers 4.31 also carry ``position_ids``/``token_type_ids`` buffers: all load to the same params."""
    _, _, folder, _, params = built
    state = load_file(str(folder / "model.safetensors"))
    assert POOLER_KEYS <= state.keys()
    assert "pooler" not in params["transformer"]
    state["transformer.embeddings.position_ids"] = np.arange(18, dtype=np.int64)[None]
    state["transformer.embeddings.token_type_ids"] = np.zeros((1, 18), np.int64)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    _, loaded = MultilingualCLIP.from_pretrained(tmp_path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


def test_key_coverage_real_config(real_configs):
    """Every key of the real-size model (meta device) fills a Flax param of its shape; only the pooler is left."""
    cfg_dict = json.loads((real_configs / "kandinsky-community__kandinsky-2-1" / "text_encoder" / "config.json").read_text())
    module = MultilingualCLIP.from_config(cfg_dict)
    cfg = module.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.numDims, cfg.pad_token_id) == (1024, 24, 250002, 768, 1)
    with torch.device("meta"):
        tmodel = TorchMultilingualCLIP(_torch_config(cfg))
    torch_shapes = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()}
    name = "MultilingualCLIP"
    shapes = module.param_shapes()
    rule, ignore = convert.key_rule(name, cfg), convert.ignored_keys(name, cfg)
    check_coverage(torch_shapes, shapes, rule, ignore=ignore)
    check_coverage({**torch_shapes, "transformer.embeddings.position_ids": (1, 514)}, shapes, rule, ignore=ignore)
    with pytest.raises(ConversionError) as err:  # the ignore list is what leaves the pooler out, nothing else
        check_coverage(torch_shapes, shapes, rule)
    assert "2 unused PyTorch keys" in str(err.value) and all(k in str(err.value) for k in POOLER_KEYS)
    # partition rules: every layer's six projections split over heads / mlp, the vocabulary table named
    axes = sharding.param_logical_axes(module, shapes)
    layer = axes["transformer"]["encoder"]["layer.23"]
    assert layer["attention"]["self"]["query"]["kernel"] == ("embed", "heads")
    assert layer["attention"]["output"]["dense"]["kernel"] == ("heads", "embed")
    assert layer["intermediate"]["dense"]["kernel"] == ("embed", "mlp")
    assert layer["output"]["dense"]["kernel"] == ("mlp", "embed")
    assert layer["output"]["LayerNorm"]["scale"] == (None,)


def test_tokenizer_round_trip(built, tmp_path):
    """The tiny XLM-R tokenizer saves and loads by the pipelines' class name and AutoTokenizer; ``tokenize``
    gives XLM-R's layout: ``<s>`` ... ``</s>`` then ``<pad>`` (id 1), mask 1 on real tokens."""
    tokenizer = built[0]
    assert [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [0, 1, 2, 3]
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    tokenizer.save_pretrained(tmp_path)
    ids, mask = tokenize(tokenizer, PROMPTS, LENGTH)
    for loaded in (XLMRobertaTokenizerFast.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert isinstance(loaded, XLMRobertaTokenizerFast)
        ids2, mask2 = tokenize(loaded, PROMPTS, LENGTH)
        np.testing.assert_array_equal(ids2, ids)
        np.testing.assert_array_equal(mask2, mask)
    assert ids.dtype == mask.dtype == np.int32
    assert (ids[:, 0] == 0).all() and (ids[0, -1] == 2)  # the truncated row still ends with </s>
    np.testing.assert_array_equal(mask, (ids != 1).astype(np.int32))
    for row, n in enumerate(mask.sum(axis=1)):
        assert ids[row, n - 1] == 2
    assert tokenizer.decode(ids[1], skip_special_tokens=True) == PROMPTS[1]


@pytest.mark.parametrize(
    "field,value",
    [("position_embedding_type", "relative_key"), ("hidden_act", "mish"), ("transformerDimensions", 48),
     ("num_attention_heads", 5), ("is_decoder", True), ("pad_token_id", None)],
)
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=field):
        MultilingualCLIPConfig.tiny().replace(**{field: value})


def test_sequence_length_limit():
    """Positions run up to L + pad id: the tiny config takes the pipelines' 77 tokens, and no more."""
    module = MultilingualCLIP(MultilingualCLIPConfig.tiny())
    out = jax.eval_shape(module.init_with_output, jax.random.key(0), jnp.ones((1, 77), jnp.int32))[0]
    assert out.last_hidden_state.shape == (1, 77, 32) and out.text_embeds.shape == (1, 24)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 78), jnp.int32))
