"""UniDiffuserTextDecoder (UniDiffuser's GPT-2 caption decoder) against diffusers (PyTorch, CPU, float32): a tiny
perturbed model loaded through from_pretrained (tied LM head saved as both keys, either key alone, with legacy mask
buffers), logits and prefix maps, beam search token for token (early finish and max length), one compiled search
for new features, the real config's key coverage and size, bad input."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.unidiffuser.modeling_text_decoder import UniDiffuserTextDecoder as TorchDecoder
from safetensors.torch import save_file

import convert
from convert.engine import ConversionError, check_coverage
from jaxgen.models.unidiffuser_text_decoder import (
    UniDiffuserTextDecoder, UniDiffuserTextDecoderConfig, decode_captions,
)
from tests.conftest import REAL_CONFIGS, count_compiles, perturb_, rel_l2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-5
WTE = "transformer.transformer.wte.weight"
LM_HEAD = "transformer.lm_head.weight"
# With the tiny model below and these latents: eos 3 ends row 0's search after 31 of 67 steps (all five beams
# stopped) while row 1 runs to 67 with two of its beams stopped on the way; eos 29 is never chosen (max length).
EARLY_EOS, LATE_EOS = 3, 29


def _save(model: torch.nn.Module, folder, drop: tuple[str, ...] = (), extra: dict | None = None) -> None:
    """config.json and a safetensors file of the state dict (diffusers' own save_pretrained refuses the tied
    lm_head/wte pair), without the ``drop`` keys and with ``extra`` tensors."""
    model.save_config(folder)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k not in drop}
    save_file({**state, **(extra or {})}, str(folder / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """(torch model, jaxgen module, params) of a tiny decoder, every weight perturbed; saved with both tied keys."""
    torch.manual_seed(0)
    model = perturb_(TorchDecoder(**UniDiffuserTextDecoderConfig.tiny().to_dict()), scale=0.05, seed=0)
    assert model.transformer.lm_head.weight is model.transformer.transformer.wte.weight
    folder = tmp_path_factory.mktemp("unidiffuser_text_decoder")
    _save(model, folder)
    module, params = UniDiffuserTextDecoder.from_pretrained(folder)
    return model, module, params


def _features(n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((4, 5, 8)).astype(np.float32)[[1, 0, 2, 3][:n]]


def test_logits_and_prefix_maps_match_diffusers(decoder):
    """Three rows of 7 tokens after the 5-token prefix; a mask padding row 1's end and row 2's first two
    (prefix) positions, whose queries see no key."""
    model, module, params = decoder
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 60, (3, 7))
    prefix = rng.standard_normal((3, 5, 16)).astype(np.float32)
    mask = np.ones((3, 12), np.int64)
    mask[1, 9:], mask[2, :2] = 0, 0
    apply = jax.jit(lambda p, i, x, m: module.apply({"params": p}, i, x, m))
    results = {}
    for label, m in (("no mask", None), ("padding mask", mask)):
        with torch.no_grad():
            ref, ref_hidden = model(torch.from_numpy(ids), torch.from_numpy(prefix), None if m is None else torch.from_numpy(m))
        out, hidden = apply(params, jnp.asarray(ids), jnp.asarray(prefix), None if m is None else jnp.asarray(m))
        assert out.logits.shape == (3, 12, 60) and hidden.shape == (3, 5, 8)
        err = rel_l2(out.logits, ref.logits.numpy())
        print(f"\nUniDiffuserTextDecoder logits ({label}): rel L2 {err:.2e}")
        assert err < TOL and rel_l2(hidden, ref_hidden.numpy()) < TOL
        results[label] = np.asarray(out.logits)
    assert rel_l2(results["padding mask"][2], results["no mask"][2]) > 1e-3  # the mask matters
    latents = rng.standard_normal((2, 5, 8)).astype(np.float32)
    with torch.no_grad():
        ref_enc = model.encode(torch.from_numpy(prefix)).numpy()
        ref_dec = model.decode_prefix(torch.from_numpy(latents)).numpy()
    enc = module.apply({"params": params}, jnp.asarray(prefix), method="encode")
    dec = module.apply({"params": params}, jnp.asarray(latents), method="decode_prefix")
    print(f"encode: rel L2 {rel_l2(enc, ref_enc):.2e}, decode_prefix: rel L2 {rel_l2(dec, ref_dec):.2e}")
    assert rel_l2(enc, ref_enc) < TOL and rel_l2(dec, ref_dec) < TOL


def test_beam_search_matches_diffusers(decoder):
    """Every beam, token and length of diffusers' generate_beam, row by row (its rows break at different steps),
    also at another temperature; generate_captions' stacked output where every row runs to max length."""
    model, module, params = decoder
    feats = _features()
    for eos, temperature in ((EARLY_EOS, 1.0), (LATE_EOS, 1.0), (15, 0.7)):
        tokens, lengths = module.generate_beam(params, jnp.asarray(feats), eos, temperature=temperature)
        tokens, lengths = np.asarray(tokens), np.asarray(lengths)
        assert tokens.shape == (2, 5, 67) and lengths.shape == (2, 5)
        steps = []
        for row, f in enumerate(feats):
            with torch.no_grad():
                ref_tokens, ref_lengths = model.generate_beam(
                    input_embeds=model.decode_prefix(torch.from_numpy(f[None])), eos_token_id=eos, temperature=temperature)
            n = ref_tokens.shape[1]  # diffusers' steps: fewer than 67 when all beams stopped
            steps.append(n)
            np.testing.assert_array_equal(tokens[row, :, :n], ref_tokens.numpy())
            assert not tokens[row, :, n:].any()
            np.testing.assert_array_equal(lengths[row], ref_lengths.numpy())
        if eos == EARLY_EOS:  # the two situations this case is for
            assert steps == [31, 67] and (tokens[0] == eos).any(axis=1).all() and (lengths[1] < 67).any()
        elif eos == LATE_EOS:
            assert steps == [67, 67] and (lengths == 67).all()
    with torch.no_grad():
        ref_tokens, ref_lengths = model.generate_captions(torch.from_numpy(feats), LATE_EOS, device="cpu")
    best, best_lengths = module.generate_captions(params, jnp.asarray(feats), LATE_EOS)
    np.testing.assert_array_equal(np.asarray(best), ref_tokens.numpy())
    np.testing.assert_array_equal(np.asarray(best_lengths), ref_lengths.numpy())


def test_other_beam_size_and_length(decoder):
    """beam_size and entry_length other than generate_captions' 5 and 67 (a new compiled search)."""
    model, module, params = decoder
    feats = _features()
    tokens, lengths = module.generate_beam(params, jnp.asarray(feats), EARLY_EOS, beam_size=3, entry_length=9)
    for row, f in enumerate(feats):
        with torch.no_grad():
            ref_tokens, ref_lengths = model.generate_beam(input_embeds=model.decode_prefix(torch.from_numpy(f[None])),
                                                          eos_token_id=EARLY_EOS, beam_size=3, entry_length=9)
        assert ref_tokens.shape == (3, 9)
        np.testing.assert_array_equal(np.asarray(tokens)[row], ref_tokens.numpy())
        np.testing.assert_array_equal(np.asarray(lengths)[row], ref_lengths.numpy())


def test_search_compiles_once(decoder):
    """A new batch size compiles the search; new latents of that shape (numpy or jax, another eos and temperature)
    reuse it: no host round trip, no recompilation."""
    _, module, params = decoder
    feats = np.random.default_rng(5).standard_normal((3, 5, 8)).astype(np.float32)
    with count_compiles() as first:
        jax.block_until_ready(module.generate_captions(params, feats, EARLY_EOS))
    other = jnp.asarray(feats[::-1] * 0.5)
    with count_compiles() as second:
        tokens, lengths = module.generate_captions(params, other, LATE_EOS, temperature=0.8)
        jax.block_until_ready(tokens)
    assert first() >= 1 and second() == 0
    assert tokens.shape == (3, 67) and lengths.shape == (3,)


def test_tied_head_checkpoints(decoder, tmp_path):
    """wte alone, lm_head alone (what safetensors' save_model keeps of the pair), legacy attn.bias/masked_bias
    buffers: the same params. A head that differs from wte is refused."""
    model, _, params = decoder
    n = model.config.n_positions
    buffers = {f"transformer.transformer.h.{i}.attn.{name}": value for i in range(2)
               for name, value in (("bias", torch.tril(torch.ones(1, 1, n, n))), ("masked_bias", torch.tensor(-1e4)))}
    for label, drop, extra in (("wte", (LM_HEAD,), None), ("lm_head", (WTE,), buffers)):
        folder = tmp_path / label
        _save(model, folder, drop, extra)
        _, loaded = UniDiffuserTextDecoder.from_pretrained(folder)
        jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    folder = tmp_path / "untied"
    _save(model, folder, (LM_HEAD,), {LM_HEAD: model.transformer.lm_head.weight.detach() + 1})
    with pytest.raises(ConversionError, match="untied"):
        UniDiffuserTextDecoder.from_pretrained(folder)


def test_identity_prefix_maps(tmp_path):
    """prefix_hidden_dim None: no prefix maps, and the output is diffusers' bare CausalLMOutput."""
    cfg = UniDiffuserTextDecoderConfig.tiny(prefix_hidden_dim=None, prefix_inner_dim=32, n_layer=1, n_inner=48,
                                            activation_function="gelu_new")
    torch.manual_seed(1)
    model = perturb_(TorchDecoder(**cfg.to_dict()), seed=1)
    _save(model, tmp_path)
    module, params = UniDiffuserTextDecoder.from_pretrained(tmp_path)
    assert set(params) == {"transformer"}
    rng = np.random.default_rng(2)
    ids, prefix = rng.integers(0, 60, (2, 4)), rng.standard_normal((2, 5, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(prefix)).logits.numpy()
    out = jax.jit(module.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(prefix))
    assert rel_l2(out.logits, ref) < TOL


def test_real_config_key_coverage_and_size():
    """Every key of thu-ml/unidiffuser-v1's text_decoder (GPT-2 small with a 77-token prefix through a 64-wide
    bottleneck, exact gelu, 50258 tokens) maps to a param of its shape; lm_head is the tied wte."""
    raw = json.loads((REAL_CONFIGS / "thu-ml__unidiffuser-v1" / "text_decoder" / "config.json").read_text())
    cfg = UniDiffuserTextDecoderConfig.from_dict(raw)
    with torch.device("meta"):
        model = TorchDecoder.from_config(raw)
    torch_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = UniDiffuserTextDecoder.from_config(raw).param_shapes()
    name = "UniDiffuserTextDecoder"
    check_coverage(torch_shapes, shapes, convert.key_rule(name, cfg), ignore=convert.ignored_keys(name, cfg))
    assert len(jax.tree_util.tree_leaves(shapes)) == len(torch_shapes) - 1  # no lm_head param
    count = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
    assert count == sum(p.numel() for p in model.parameters()) and 124.5e6 < count < 124.6e6


def test_bfloat16_shapes_bad_input_and_config(decoder):
    _, module, params = decoder
    half = UniDiffuserTextDecoder(module.config, dtype=jnp.bfloat16)
    half_params = jax.eval_shape(half.init_params)
    out, hidden = jax.eval_shape(half.apply, {"params": half_params}, jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 5, 16)))
    assert out.logits.shape == (2, 8, 60) and out.logits.dtype == jnp.bfloat16 and hidden.shape == (2, 5, 8)
    with pytest.raises(ValueError, match="features must be"):
        module.generate_captions(params, jnp.zeros((1, 5, 16)), 3)
    with pytest.raises(ValueError, match="beam_size"):
        module.generate_beam(params, jnp.zeros((1, 5, 8)), 3, beam_size=61)
    with pytest.raises(ValueError, match="n_positions"):
        module.generate_beam(params, jnp.zeros((1, 5, 8)), 3, entry_length=92)
    with pytest.raises(ValueError, match="attention_mask"):
        module.apply({"params": params}, jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 5, 16)), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="prefix_hidden_dim"):
        UniDiffuserTextDecoderConfig.tiny(prefix_hidden_dim=None)
    with pytest.raises(ValueError, match="activation_function"):
        UniDiffuserTextDecoderConfig.tiny(activation_function="gelu_10")


def test_decode_captions():
    """diffusers' decode_text_latents: each row cut at its length, special tokens skipped."""

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=False):
            assert skip_special_tokens
            return " ".join(str(int(i)) for i in ids)

    tokens = np.array([[4, 5, 9, 0], [7, 8, 6, 9]])
    assert decode_captions(Tokenizer(), tokens, np.array([3, 4])) == ["4 5 9", "7 8 6 9"]
