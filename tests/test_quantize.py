"""int8 weight-only quantization: the kernel scheme, QuantizedDense, T5's embedding error, and param bytes."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.nn.linear import Dense
from jaxgen.quantize import (
    QuantizedDense, cast_floating, dequantize_params, param_bytes, quantize_kernel, quantize_params, quantize_t5,
)
from jaxgen.text import T5Config, T5EncoderModel

# The stated bound (jaxgen/quantize.py's docstring): int8 T5 embeddings against float32 and bfloat16 ones.
MAX_REL_L2 = 0.05
MIN_MEAN_COSINE = 0.998


def test_quantize_kernel_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 5)).astype(np.float32) * np.array([1e-3, 0.1, 1.0, 30.0, 0.0], np.float32)
    q, scale = quantize_kernel(jnp.asarray(w))
    assert q.dtype == jnp.int8 and q.shape == w.shape and scale.dtype == jnp.float32 and scale.shape == (5,)
    np.testing.assert_allclose(scale[:4], np.abs(w[:, :4]).max(0) / 127, rtol=1e-6)
    assert float(scale[4]) == 1.0 and not np.any(np.asarray(q[:, 4]))  # an all-zero column
    assert int(jnp.max(jnp.abs(q.astype(jnp.int32)))) == 127
    err = np.abs(np.asarray(q, np.float32) * np.asarray(scale) - w)
    assert np.all(err <= np.asarray(scale) / 2 * (1 + 1e-5))


def test_quantize_params_and_dense():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 7, 16)), jnp.float32)
    dense = Dense(24, use_bias=True)
    params = dense.init(jax.random.key(0), x)["params"]
    params = {"bias": params["bias"] + 0.5, "kernel": params["kernel"]}
    qparams = quantize_params(params)
    assert qparams["kernel"].dtype == jnp.int8 and qparams["scale"].shape == (24,)
    np.testing.assert_array_equal(qparams["bias"], params["bias"])
    deq = dequantize_params(qparams)
    assert set(deq) == {"kernel", "bias"}
    # QuantizedDense computes exactly with the dequantized kernel ...
    qdense = QuantizedDense(24, use_bias=True)
    out = qdense.apply({"params": qparams}, x)
    np.testing.assert_allclose(out, dense.apply({"params": deq}, x), rtol=1e-5, atol=1e-5)
    # ... which is within int8 rounding of the float kernel
    ref = dense.apply({"params": params}, x)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-2
    # same param tree as QuantizedDense's init; bfloat16 compute returns bfloat16
    assert jax.tree.structure(qdense.init(jax.random.key(0), x)["params"]) == jax.tree.structure(qparams)
    assert QuantizedDense(24, dtype=jnp.bfloat16).apply({"params": qparams}, x).dtype == jnp.bfloat16
    # the predicate chooses; a module with its own ``scale`` cannot take one
    assert quantize_params(params, lambda path, leaf: False)["kernel"].dtype == jnp.float32
    with pytest.raises(ValueError, match="already has a 'scale'"):
        quantize_params({"kernel": params["kernel"], "scale": params["bias"]})


def _t5_like_params(module: T5EncoderModel, seed: int = 0, heavy_tails: bool = True):
    """Random params with transformers' T5 initialisation scales; Student-t (df 4) draws give outliers."""
    cfg = module.config
    std = {
        "q": (cfg.d_model * cfg.d_kv) ** -0.5, "k": cfg.d_model ** -0.5, "v": cfg.d_model ** -0.5,
        "o": (cfg.num_heads * cfg.d_kv) ** -0.5, "wi_0": cfg.d_model ** -0.5, "wi_1": cfg.d_model ** -0.5,
        "wi": cfg.d_model ** -0.5, "wo": cfg.d_ff ** -0.5, "shared": 1.0, "relative_attention_bias": cfg.d_model ** -0.5,
    }
    rng = np.random.default_rng(seed)
    out = {}
    for path, s in traverse_util.flatten_dict(module.param_shapes()).items():
        if path[-1] == "scale":  # RMS norm weights
            out[path] = jnp.ones(s.shape, jnp.float32)
            continue
        x = rng.standard_t(4, size=s.shape) / np.sqrt(2.0) if heavy_tails else rng.standard_normal(s.shape)
        out[path] = jnp.asarray(x * std[path[-2]], jnp.float32)
    return traverse_util.unflatten_dict(out)


def _embedding_errors(cfg: T5Config, length: int, heavy_tails: bool):
    """{(a, b): (relative L2, mean cosine)} of last_hidden_state over real tokens for int8/bf16/f32 encoders."""
    rng = np.random.default_rng(1)
    mask = np.zeros((2, length), np.int32)
    mask[0], mask[1, : length // 3] = 1, 1
    ids = jnp.asarray(rng.integers(2, cfg.vocab_size, size=(2, length)) * mask, jnp.int32)
    module = T5EncoderModel(cfg)
    params = _t5_like_params(module, heavy_tails=heavy_tails)
    encode = lambda m, p: np.asarray(jax.jit(lambda p: m.apply({"params": p}, ids, jnp.asarray(mask)).last_hidden_state)(p), np.float64)
    out = {
        "f32": encode(module, params),
        "bf16": encode(T5EncoderModel(cfg, dtype=jnp.bfloat16), cast_floating(params, jnp.bfloat16)),
        "int8": encode(*quantize_t5(module, params, dtype=jnp.bfloat16)),
    }
    real = mask.astype(bool)
    errors = {}
    for a, b in (("int8", "f32"), ("int8", "bf16"), ("bf16", "f32")):
        x, y = out[a][real], out[b][real]
        cos = np.sum(x * y, -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
        errors[a, b] = (float(np.linalg.norm(x - y) / np.linalg.norm(y)), float(cos.mean()))
    return errors


@pytest.mark.parametrize(
    "name,cfg,length",
    [
        ("tiny", T5Config.tiny(), 20),
        ("d512x4", T5Config(vocab_size=1000, d_model=512, d_kv=64, d_ff=1280, num_layers=4, num_heads=8,
                            feed_forward_proj="gated-gelu"), 64),
    ],
)
def test_int8_t5_embedding_error_bound(name, cfg, length):
    errors = _embedding_errors(cfg, length, heavy_tails=True)
    for (a, b), (rel, cos) in errors.items():
        print(f"{name}: {a} vs {b}: relative L2 {rel:.4f}, mean cosine {cos:.5f}")
    for pair in (("int8", "f32"), ("int8", "bf16")):
        rel, cos = errors[pair]
        assert rel < MAX_REL_L2 and cos > MIN_MEAN_COSINE, (pair, rel, cos)
    # int8 costs more than bfloat16 alone, but not orders of magnitude more
    assert errors["int8", "f32"][0] < 10 * errors["bf16", "f32"][0]


def test_quantize_t5_module_and_params():
    module = T5EncoderModel(T5Config.tiny())
    params = _t5_like_params(module, heavy_tails=False)
    qmodule, qparams = quantize_t5(module, params, dtype=jnp.bfloat16)
    assert qmodule.quantized and qmodule.dtype == jnp.bfloat16 and not module.quantized
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(qparams).items()}
    attn = "encoder/block.0/layer.0/SelfAttention"
    assert flat[f"{attn}/q/kernel"].dtype == jnp.int8 and flat[f"{attn}/q/scale"].dtype == jnp.float32
    assert flat["encoder/block.1/layer.1/DenseReluDense/wo/kernel"].dtype == jnp.int8
    assert flat["shared/embedding"].dtype == jnp.bfloat16
    assert flat["encoder/final_layer_norm/scale"].dtype == jnp.bfloat16
    # the quantized module's own param shapes are what quantize_t5 produced
    want = jax.tree.map(lambda s: (s.shape, s.dtype), cast_floating(qmodule.param_shapes(), jnp.bfloat16))
    got = jax.tree.map(lambda x: (x.shape, x.dtype if x.dtype == jnp.int8 else jnp.dtype(jnp.bfloat16)), qparams)
    assert got == want


def test_t5_xxl_param_bytes(real_configs):
    """T5-XXL (PixArt-α's text encoder) from shapes alone: float32, bfloat16 and int8 bytes."""
    config = json.loads((real_configs / "PixArt-alpha__PixArt-XL-2-1024-MS/text_encoder/config.json").read_text())
    shapes = T5EncoderModel(T5Config.from_dict(config)).param_shapes()
    fp32 = param_bytes(shapes)
    bf16 = param_bytes(cast_floating(shapes, jnp.bfloat16))
    int8 = param_bytes(jax.eval_shape(quantize_params, cast_floating(shapes, jnp.bfloat16)))
    gib = 2**30
    print(f"T5-XXL params: float32 {fp32 / gib:.2f} GiB, bfloat16 {bf16 / gib:.2f} GiB, int8 {int8 / gib:.2f} GiB "
          f"({int8 / fp32:.3f}x float32)")
    assert 4.7e9 < fp32 / 4 < 4.8e9  # 4.76B parameters
    assert bf16 * 2 == fp32
    assert int8 < 0.3 * fp32


def test_quantized_text_encoder_in_pipeline(tiny_pixart):
    """The documented use: a quantized (module, params) pair as the pipeline's text_encoder."""
    from jaxgen import PixArtAlphaPipeline

    folder, _ = tiny_pixart
    pair = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder")
    pipe = PixArtAlphaPipeline.from_pretrained(folder, text_encoder=pair)
    qpipe = PixArtAlphaPipeline.from_pretrained(folder, text_encoder=quantize_t5(*pair))
    assert qpipe.text_encoder.quantized
    ref, ref_mask, *_ = pipe.encode_prompt("a photo of a cat", do_classifier_free_guidance=False, max_sequence_length=16)
    out, mask, *_ = qpipe.encode_prompt("a photo of a cat", do_classifier_free_guidance=False, max_sequence_length=16)
    np.testing.assert_array_equal(mask, ref_mask)
    real = np.asarray(mask, bool)
    ref, out = np.asarray(ref)[real], np.asarray(out)[real]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < MAX_REL_L2


def _clip_like_params(module, seed: int = 0):
    """Random CLIP params at transformers' initialisation scales (Student-t tails: outliers), norms at 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, s in traverse_util.flatten_dict(module.param_shapes()).items():
        if path[-1] == "scale" or (path[-1] == "bias" and "layer_norm" in "/".join(path)):
            out[path] = jnp.asarray(np.ones(s.shape) if path[-1] == "scale" else np.zeros(s.shape), jnp.float32)
            continue
        std = 0.02 if len(s.shape) != 2 else s.shape[0] ** -0.5
        out[path] = jnp.asarray(rng.standard_t(4, size=s.shape) / np.sqrt(2.0) * std, jnp.float32)
    return traverse_util.unflatten_dict(out)


def _rel_and_cos(x, y):
    x, y = np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y, np.float64).reshape(len(y), -1)
    cos = np.sum(x * y, -1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
    return float(np.linalg.norm(x - y) / np.linalg.norm(y)), float(cos.mean())


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_int8_clip_towers(tower):
    """quantize_encoder on the CLIP towers (Kandinsky 2.2's and Würstchen's CLIP-bigG, UniDiffuser's, the upscaler's):
    every Dense kernel int8, the projected embeddings within the T5 bound of the float32 ones."""
    from jaxgen.quantize import quantize_encoder
    from jaxgen.text.clip import (
        CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection,
    )

    rng = np.random.default_rng(3)
    if tower == "text":
        module = CLIPTextModelWithProjection(CLIPTextConfig.tiny())
        inputs = (jnp.asarray(rng.integers(3, module.config.vocab_size, size=(2, 12)), jnp.int32),)
        embeds = lambda m, p: m.apply({"params": p}, *inputs).text_embeds
    else:
        module = CLIPVisionModelWithProjection(CLIPVisionConfig.tiny())
        cfg = module.config
        inputs = (jnp.asarray(rng.standard_normal((2, cfg.image_size, cfg.image_size, cfg.num_channels)), jnp.float32),)
        embeds = lambda m, p: m.apply({"params": p}, *inputs).image_embeds
    params = _clip_like_params(module)
    qmodule, qparams = quantize_encoder(module, params, dtype=jnp.bfloat16)
    kernels = [x for p, x in traverse_util.flatten_dict(qparams).items() if p[-1] == "kernel" and x.ndim == 2]
    assert qmodule.quantized and kernels and all(x.dtype == jnp.int8 for x in kernels)
    rel, cos = _rel_and_cos(embeds(qmodule, qparams), embeds(module, params))
    print(f"\nCLIP {tower} tower, int8 (bf16 compute) vs float32: relative L2 {rel:.4f}, mean cosine {cos:.5f}")
    assert rel < MAX_REL_L2 and cos > MIN_MEAN_COSINE
    with pytest.raises(TypeError, match="no int8 form"):
        from jaxgen.models import VQModel

        quantize_encoder(VQModel(VQModel.config_class.tiny()), {})


def test_from_pretrained_quantizes_text_encoders_while_loading(tiny_pixart, tiny_hub, capsys):
    """``from_pretrained(..., text_encoder_quantization="int8")`` and ``--text-encoder-int8``: the T5 read into host
    memory, quantized there, then placed (its Dense kernels int8 on the pipeline's mesh); the embeddings within the
    bound and the tiny pipeline's images close to full precision. Combined pipelines quantize the prior's CLIP; a
    pipeline without a quantizable text encoder, or an unknown kind, is a ValueError before anything loads."""
    import jaxgen
    from jaxgen.cli import main

    folder, _ = tiny_pixart
    full = jaxgen.PixArtAlphaPipeline.from_pretrained(folder)
    int8 = jaxgen.PixArtAlphaPipeline.from_pretrained(folder, text_encoder_quantization="int8")
    assert int8.text_encoder.quantized and not full.text_encoder.quantized
    kernels = [x for p, x in traverse_util.flatten_dict(int8.text_encoder.variables["params"]).items()
               if p[-1] == "kernel"]
    assert all(x.dtype == jnp.int8 and x.sharding.mesh.shape == int8.mesh.shape for x in kernels)
    call = dict(num_inference_steps=2, height=16, width=16, use_resolution_binning=False, rng=0, output_type="np")
    ref, out = (pipe("a photo of a cat", **call).images for pipe in (full, int8))
    rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    print(f"\ntiny PixArt, int8 T5: images relative L2 {rel:.4f} from the float32 T5's")
    assert rel < MAX_REL_L2

    combined = jaxgen.KandinskyV22CombinedPipeline.from_pretrained(
        tiny_hub["kandinsky-community/kandinsky-2-2-decoder"], text_encoder_quantization="int8")
    assert combined.prior_text_encoder.quantized  # CLIP-bigG's place; the 2.2 decoder reads no text
    with pytest.raises(ValueError, match="no text encoder with an int8 form"):
        jaxgen.KandinskyV22Pipeline.from_pretrained(tiny_hub["kandinsky-community/kandinsky-2-2-decoder"],
                                                    text_encoder_quantization="int8")
    with pytest.raises(ValueError, match="must be one of"):
        jaxgen.PixArtAlphaPipeline.from_pretrained(folder, text_encoder_quantization="int4")
    assert main(["generate", "a photo of a cat", "--model", str(folder), "--text-encoder-int8", "--steps", "2",
                 "--height", "16", "--width", "16", "--no-resolution-binning", "--out", str(folder.parent / "q.png")]) == 0
