"""jaxgen.text.encoding: ``tokenize`` against the tokenizers' own calls (and diffusers' truncation
warning), ``encode`` against transformers 5 (torch CPU, float32) for T5 with padding masks and for
the CLIP text towers: last_hidden_state, clip_skip, pooler_output, text_embeds, hidden_states.

Tiny random-weight models (every weight perturbed, norms included) are saved with save_pretrained
and loaded with jaxgen's from_pretrained; each distinct (module, outputs, clip_skip) compiles once.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxgen.text import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel, encode, tokenize
from tests.conftest import make_clip_tokenizer, make_t5_tokenizer, perturb_, rel_l2

T5_LENGTH = 24
CLIP_LENGTH = 12
T5_PROMPTS = ["a photo of a cat", "a photo of a cat at night"]  # 11 and 18 tokens with the tiny tokenizer
CLIP_PROMPTS = ["the cat", "a cat sat at the hat"]
LONG_PROMPT = "a small cactus with a happy face in the sahara desert"  # 40 tokens
LOGGER = "jaxgen.text.encoding"


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """(tokenizer, torch model, jaxgen module, params): a tiny T5 v1.1-style encoder."""
    folder = tmp_path_factory.mktemp("enc_t5")
    tokenizer = make_t5_tokenizer(folder / "_spm")
    torch.manual_seed(0)
    tmodel = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ))
    perturb_(tmodel, seed=0).save_pretrained(folder / "model")
    module, params = T5EncoderModel.from_pretrained(folder / "model")
    return tokenizer, tmodel, module, params


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """kind -> (torch model, jaxgen module, params), plus the tokenizer under "tokenizer": a tiny CLIP text
    tower without ("plain", quick_gelu) and with ("projection", gelu) text_projection, 3 layers each."""
    folder = tmp_path_factory.mktemp("enc_clip")
    tokenizer = make_clip_tokenizer(folder / "_tok", max_length=CLIP_LENGTH)
    built: dict = {"tokenizer": tokenizer}
    specs = {
        "plain": (transformers.CLIPTextModel, CLIPTextModel, "quick_gelu"),
        "projection": (transformers.CLIPTextModelWithProjection, CLIPTextModelWithProjection, "gelu"),
    }
    for seed, (kind, (tcls, jcls, act)) in enumerate(specs.items(), start=1):
        torch.manual_seed(seed)
        tmodel = tcls(transformers.CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, projection_dim=24, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=16, hidden_act=act, bos_token_id=0, eos_token_id=1,
            pad_token_id=1,
        ))
        perturb_(tmodel, seed=seed).save_pretrained(folder / kind)
        module, params = jcls.from_pretrained(folder / kind)
        built[kind] = tmodel, module, params
    return built


def _assert_close(ours, ref, label: str, tol: float = 1e-5) -> None:
    err = rel_l2(ours, ref.detach().numpy() if hasattr(ref, "detach") else ref)
    print(f"{label}: rel L2 {err:.2e}")
    assert err < tol, (label, err)


# ------------------------------------------------------------------ tokenize


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_tokenize_matches_tokenizer(kind, t5, clip):
    tokenizer, prompts, length = (
        (t5[0], T5_PROMPTS, T5_LENGTH) if kind == "t5" else (clip["tokenizer"], CLIP_PROMPTS, CLIP_LENGTH))
    ids, mask = tokenize(tokenizer, prompts, length)
    ref = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                    return_tensors="np")
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape == (2, length)
    np.testing.assert_array_equal(ids, ref.input_ids)
    np.testing.assert_array_equal(mask, ref.attention_mask)
    assert 0 < mask[0].sum() < mask[1].sum() < length  # two true lengths, both padded
    # a single string is one prompt
    one_ids, one_mask = tokenize(tokenizer, prompts[0], length)
    np.testing.assert_array_equal(one_ids, ids[:1])
    np.testing.assert_array_equal(one_mask, mask[:1])


def test_truncation_warning(t5, clip, caplog):
    tokenizer = t5[0]
    caplog.set_level(logging.WARNING, logger=LOGGER)
    tokenize(tokenizer, T5_PROMPTS, T5_LENGTH, warn_truncation=True)
    assert not caplog.records  # short prompts: nothing cut
    ids, _ = tokenize(tokenizer, [LONG_PROMPT], T5_LENGTH)
    assert not caplog.records  # a long prompt without warn_truncation: silent
    np.testing.assert_array_equal(ids, tokenize(tokenizer, [LONG_PROMPT], T5_LENGTH, warn_truncation=True)[0])
    untruncated = tokenizer([LONG_PROMPT], padding="longest", return_tensors="np").input_ids
    assert untruncated.shape[-1] > T5_LENGTH
    removed = tokenizer.batch_decode(untruncated[:, T5_LENGTH - 1 : -1])
    assert [r.getMessage() for r in caplog.records] == [
        "The following part of your input was truncated because T5 can only handle sequences up to"
        f" {T5_LENGTH} tokens: {removed}"
    ]
    assert caplog.records[0].levelno == logging.WARNING and caplog.records[0].name == LOGGER
    caplog.clear()
    tokenize(clip["tokenizer"], ["the cat sat at the hat with the bat and the rat"], CLIP_LENGTH,
             warn_truncation=True, encoder_name="CLIP")
    # (transformers adds its own "longer than the specified maximum" warning for the untruncated call)
    ours = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(ours) == 1 and "because CLIP can only handle sequences up to 12 tokens: " in ours[0]


# ------------------------------------------------------------------ encode: T5


def test_t5_with_mask_parity(t5):
    tokenizer, tmodel, module, params = t5
    ids, mask = tokenize(tokenizer, T5_PROMPTS, T5_LENGTH)
    (hidden,) = encode(module, params, ids, mask)
    with torch.no_grad():
        ref = tmodel(input_ids=torch.from_numpy(ids.astype(np.int64)),
                     attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state
    assert hidden.shape == (2, T5_LENGTH, 32) and hidden.dtype == jnp.float32
    _assert_close(hidden, ref, "T5 last_hidden_state (masked)")  # padded positions included, as transformers
    # the mask matters: the shorter prompt's real tokens change without it
    (unmasked,) = encode(module, params, ids)
    n = int(mask[0].sum())
    assert rel_l2(unmasked[0, :n], np.asarray(hidden[0, :n])) > 1e-3


def test_encode_argument_errors(t5, clip):
    _, _, module, params = t5
    ids, mask = tokenize(t5[0], T5_PROMPTS, T5_LENGTH)
    with pytest.raises(ValueError, match="does not take clip_skip"):
        encode(module, params, ids, mask, clip_skip=1)
    with pytest.raises(ValueError, match="does not return hidden_states"):
        encode(module, params, ids, mask, outputs=("hidden_states",))
    with pytest.raises(ValueError, match="outputs is empty"):
        encode(module, params, ids, mask, outputs=())
    with pytest.raises(ValueError, match=r"has no output \['pooler_output'\]"):
        encode(module, params, ids, mask, outputs=("pooler_output",))
    _, clip_module, clip_params = clip["plain"]
    clip_ids, _ = tokenize(clip["tokenizer"], CLIP_PROMPTS, CLIP_LENGTH)
    for bad in (-1, 4):  # 3 layers: 0..3
        with pytest.raises(ValueError, match="clip_skip"):
            encode(clip_module, clip_params, clip_ids, clip_skip=bad)


# ------------------------------------------------------------------ encode: CLIP


def _torch_clip(tmodel, ids, mask=None):
    with torch.no_grad():
        return tmodel(input_ids=torch.from_numpy(ids.astype(np.int64)),
                      attention_mask=None if mask is None else torch.from_numpy(mask.astype(np.int64)),
                      output_hidden_states=True)


def _torch_final_layer_norm(tmodel):
    # transformers 5's CLIPTextModel is the text tower itself (no ``text_model``); WithProjection keeps one
    return getattr(tmodel, "text_model", tmodel).final_layer_norm


def test_clip_parity_and_clip_skip(clip):
    """The x4 upscaler's call: ids without a mask; clip_skip through the model's own final norm."""
    tmodel, module, params = clip["plain"]
    ids, _ = tokenize(clip["tokenizer"], CLIP_PROMPTS, CLIP_LENGTH)
    ref = _torch_clip(tmodel, ids)
    last, pooled, states = encode(module, params, ids, outputs=("last_hidden_state", "pooler_output", "hidden_states"))
    assert last.shape == (2, CLIP_LENGTH, 32) and pooled.shape == (2, 32) and len(states) == 4
    _assert_close(last, ref.last_hidden_state, "CLIPTextModel last_hidden_state")
    _assert_close(pooled, ref.pooler_output, "CLIPTextModel pooler_output")
    for i in (0, -1):
        _assert_close(states[i], ref.hidden_states[i], f"CLIPTextModel hidden_states[{i}]")
    norm = _torch_final_layer_norm(tmodel)
    for k in (1, 2):
        (skipped,) = encode(module, params, ids, clip_skip=k)
        with torch.no_grad():
            expected = norm(ref.hidden_states[-(k + 1)])  # diffusers' encode_prompt
        _assert_close(skipped, expected, f"CLIPTextModel clip_skip={k}")
        assert rel_l2(skipped, ref.last_hidden_state.numpy()) > 1e-2  # it really skipped layers


def test_clip_with_projection_parity(clip):
    """Kandinsky/Würstchen-style: text_embeds and last_hidden_state in one call, with the padding mask."""
    tmodel, module, params = clip["projection"]
    ids, mask = tokenize(clip["tokenizer"], CLIP_PROMPTS, CLIP_LENGTH)
    ref = _torch_clip(tmodel, ids, mask)
    text_embeds, last = encode(module, params, ids, mask, outputs=("text_embeds", "last_hidden_state"))
    assert text_embeds.shape == (2, 24) and last.shape == (2, CLIP_LENGTH, 32)
    _assert_close(text_embeds, ref.text_embeds, "CLIPTextModelWithProjection text_embeds")
    _assert_close(last, ref.last_hidden_state, "CLIPTextModelWithProjection last_hidden_state")
    # clip_skip changes the sequence output only: text_embeds stay the last layer's, as diffusers pools
    skip_embeds, skipped = encode(module, params, ids, mask, outputs=("text_embeds", "last_hidden_state"), clip_skip=1)
    with torch.no_grad():
        expected = _torch_final_layer_norm(tmodel)(ref.hidden_states[-2])
    _assert_close(skipped, expected, "CLIPTextModelWithProjection clip_skip=1")
    _assert_close(skip_embeds, ref.text_embeds, "CLIPTextModelWithProjection text_embeds with clip_skip=1")
