"""Attention dispatch: XLA against numpy, the choice of kernel, cuDNN's arguments, splash in interpret mode.

No GPU or TPU here: the cuDNN call is checked by intercepting ``jax.nn.dot_product_attention``
(its arguments pass cuDNN's own layout check, then jax's XLA implementation runs them), and splash
runs its Pallas TPU kernel in interpret mode on CPU (``implementation="splash"`` off TPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn import attention as attn
from jaxgen.nn.attention import Attention, choose_implementation, dot_product_attention, key_padding_mask
from tests.conftest import rel_l2

BF16_TOL = 1e-2  # relative L2: a few bfloat16 roundings (eps 2^-8) of O(1) values


def _qkv(b=2, lq=10, lk=10, h=2, d=8, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((b, n, h, d)).astype(np.float32) for n in (lq, lk, lk))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _lengths_mask(lengths, lk):
    return jnp.asarray(np.arange(lk)[None, :] < np.asarray(lengths)[:, None], jnp.int32)


def _reference(q, k, v, mask=None, bias=None, scale=None):
    """softmax(q k^T * scale + bias) v in float64 numpy; masked logits -inf."""
    q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if mask is not None:
        logits = np.where(np.asarray(mask, bool), logits, -np.inf)
    logits = logits - logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


# ---------------------------------------------------------------- XLA path against numpy


@pytest.mark.parametrize("case", ["plain", "padding_mask", "bias_and_mask", "cross_masked", "scale"])
def test_xla_matches_numpy(case):
    lq, lk = (12, 7) if case == "cross_masked" else (10, 10)
    q, k, v = _qkv(lq=lq, lk=lk)
    mask = bias = scale = None
    if case in ("padding_mask", "bias_and_mask", "cross_masked"):
        mask = key_padding_mask(_lengths_mask([lk, 4], lk))
    if case == "bias_and_mask":
        bias = jnp.asarray(np.random.default_rng(1).standard_normal((1, 2, lq, lk)), jnp.float32)
        scale = 1.0  # T5
    if case == "scale":
        scale = 0.3
    out = dot_product_attention(q, k, v, mask, bias=bias, scale=scale, implementation="xla")
    assert out.shape == q.shape and out.dtype == jnp.float32
    assert rel_l2(out, _reference(q, k, v, mask, bias, scale)) < 1e-5


def test_xla_bfloat16_within_rounding():
    q, k, v = _qkv(lq=16, lk=9, dtype=jnp.bfloat16)
    mask = key_padding_mask(_lengths_mask([9, 3], 9))
    bias = jnp.asarray(np.random.default_rng(2).standard_normal((1, 2, 16, 9)), jnp.float32)
    out = dot_product_attention(q, k, v, mask, bias=bias)
    assert out.dtype == jnp.bfloat16
    assert rel_l2(out.astype(jnp.float32), _reference(q, k, v, mask, bias)) < BF16_TOL


def test_cpu_default_is_xla():
    q, k, v = _qkv()
    assert choose_implementation(q, k, v) == "xla"
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v))(q, k, v))
    assert "pallas_call" not in jaxpr and "custom_call" not in jaxpr


# ---------------------------------------------------------------- choice of implementation


def _spec(b=2, l=64, h=4, d=64, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct((b, l, h, d), dtype)


def test_choice_by_platform_dtype_and_shape():
    q = k = v = _spec()
    kmask = jax.ShapeDtypeStruct((2, 1, 1, 64), jnp.bool_)
    t5_bias = jax.ShapeDtypeStruct((1, 4, 64, 64), jnp.float32)
    # CPU (and ROCm): XLA always
    for platform in ("cpu", "rocm"):
        assert choose_implementation(q, k, v, kmask, platform=platform) == "xla"
    # CUDA: cuDNN for half precision with head_dim % 8 == 0 and <= 128 (no GPU here: the pre-Hopper limit)
    assert choose_implementation(q, k, v, kmask, bias=t5_bias, platform="cuda") == "cudnn"
    assert choose_implementation(*(_spec(d=72, dtype=jnp.float16),) * 3, platform="cuda") == "cudnn"
    assert choose_implementation(*(_spec(dtype=jnp.float32),) * 3, platform="cuda") == "xla"
    assert choose_implementation(*(_spec(d=60),) * 3, platform="cuda") == "xla"
    assert choose_implementation(*(_spec(d=160),) * 3, platform="cuda") == "xla"
    assert choose_implementation(_spec(), _spec(dtype=jnp.float32), _spec(), platform="cuda") == "xla"
    # TPU: splash without bias and with masks over keys only, any float dtype and length
    assert choose_implementation(q, k, v, kmask, platform="tpu") == "splash"
    assert choose_implementation(*(_spec(l=77, d=72, dtype=jnp.float32),) * 3, platform="tpu") == "splash"
    assert choose_implementation(q, k, v, jax.ShapeDtypeStruct((64,), jnp.bool_), platform="tpu") == "splash"
    assert choose_implementation(q, k, v, kmask, bias=t5_bias, platform="tpu") == "xla"
    per_query = jax.ShapeDtypeStruct((2, 1, 64, 64), jnp.bool_)
    assert choose_implementation(q, k, v, per_query, platform="tpu") == "xla"


def test_explicit_implementation_is_checked():
    q = k = v = _spec()
    assert choose_implementation(q, k, v, implementation="xla", platform="tpu") == "xla"
    assert choose_implementation(q, k, v, implementation="splash", platform="cpu") == "splash"  # interpret mode
    with pytest.raises(ValueError, match="CUDA GPU"):
        choose_implementation(q, k, v, implementation="cudnn", platform="cpu")
    with pytest.raises(ValueError, match="bias"):
        choose_implementation(q, k, v, bias=jax.ShapeDtypeStruct((1, 4, 64, 64), jnp.float32), implementation="splash")
    with pytest.raises(ValueError, match="implementation must be one of"):
        choose_implementation(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="CUDA GPU"):  # dot_product_attention on this CPU
        dot_product_attention(*_qkv(dtype=jnp.bfloat16), implementation="cudnn")


# ---------------------------------------------------------------- cuDNN arguments (no GPU: checked, then run by XLA)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend to be on CUDA; ``jax.nn.dot_product_attention(implementation="cudnn")`` is checked with
    cuDNN's own layout check, then computed by jax's XLA implementation. Yields the calls' kwargs."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    real = jax.nn.dot_product_attention
    calls = []

    def fake(query, key, value, bias=None, mask=None, *, scale=None, implementation=None, **kwargs):
        assert implementation == "cudnn"
        assert query.dtype == key.dtype == value.dtype and query.dtype in (jnp.bfloat16, jnp.float16)
        combined = cudnn.combine_bias_and_mask(bias, mask, query.dtype)
        cudnn.check_layout(query, key, value, combined, None, None, None, None, None, None, cudnn.AttentionLayout.BTNH)
        calls.append(dict(bias=bias, mask=mask, scale=scale))
        return real(query, key, value, bias=bias, mask=mask, scale=scale, implementation="xla", **kwargs)

    monkeypatch.setattr(attn, "_platform", lambda: "cuda")
    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    return calls


@pytest.mark.parametrize("case", ["self", "t5_bias_and_mask", "cross_masked"])
def test_cudnn_arguments(fake_cuda, case):
    lq, lk = (12, 7) if case == "cross_masked" else (10, 10)
    q, k, v = _qkv(lq=lq, lk=lk, d=16, dtype=jnp.bfloat16)
    mask = None if case == "self" else key_padding_mask(_lengths_mask([lk, 3], lk))
    bias = None
    if case == "t5_bias_and_mask":
        bias = jnp.asarray(np.random.default_rng(3).standard_normal((1, 2, lq, lk)), jnp.float32)
    scale = 1.0 if bias is not None else None
    out = dot_product_attention(q, k, v, mask, bias=bias, scale=scale)
    assert len(fake_cuda) == 1  # chosen by default, no fallback
    ref = dot_product_attention(q, k, v, mask, bias=bias, scale=scale, implementation="xla")
    assert out.dtype == jnp.bfloat16
    assert rel_l2(out.astype(jnp.float32), ref.astype(jnp.float32)) < BF16_TOL
    assert rel_l2(out.astype(jnp.float32), _reference(q, k, v, mask, bias, scale)) < BF16_TOL


def test_cudnn_not_chosen_for_float32(fake_cuda):
    q, k, v = _qkv()
    dot_product_attention(q, k, v)
    assert fake_cuda == []


# ---------------------------------------------------------------- splash: padding, segment ids, interpret mode


def test_splash_layout_and_segment_ids():
    assert attn.splash_layout(200, 77, 72) == (256, 128, 256, 128, 128)
    assert attn.splash_layout(4096, 120, 64) == (512, 128, 4096, 128, 128)
    assert attn.splash_layout(600, 1030, 128) == (512, 512, 1024, 1536, 128)
    assert attn.splash_segment_ids(None, 2, 128, 128, 128) is None
    q_ids, kv_ids = attn.splash_segment_ids(None, 2, 256, 100, 128)
    np.testing.assert_array_equal(q_ids, np.ones((2, 256)))
    np.testing.assert_array_equal(kv_ids, np.repeat((np.arange(128) < 100)[None], 2, 0))
    mask = key_padding_mask(_lengths_mask([5, 2], 6))
    _, kv_ids = attn.splash_segment_ids(mask, 2, 128, 6, 128)
    np.testing.assert_array_equal(kv_ids[:, :8], [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]])
    assert kv_ids.shape == (2, 128) and int(kv_ids[:, 8:].sum()) == 0


_SPLASH_CASES = {
    "cross_masked": dict(lq=200, lk=77, h=3, d=72, lengths=[77, 30]),  # padded keys, head_dim not 128
    "self_padded": dict(lq=130, lk=130, h=2, d=64, lengths=None),  # no mask, lengths padded to blocks
    "exact": dict(lq=128, lk=128, h=2, d=128, lengths=None),  # whole blocks: no segment ids
    "multi_block": dict(lq=520, lk=600, h=1, d=16, lengths=[600, 513]),  # several q and kv blocks
}


@pytest.mark.parametrize(
    "case,dtype",
    [("cross_masked", jnp.float32), ("cross_masked", jnp.bfloat16), ("self_padded", jnp.bfloat16),
     ("exact", jnp.float32), ("multi_block", jnp.float32), ("multi_block", jnp.bfloat16)],
)
def test_splash_interpret_matches_xla(case, dtype):
    dims = _SPLASH_CASES[case]
    q, k, v = _qkv(b=2, lq=dims["lq"], lk=dims["lk"], h=dims["h"], d=dims["d"], dtype=dtype)
    mask = None if dims["lengths"] is None else key_padding_mask(_lengths_mask(dims["lengths"], dims["lk"]))
    out = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, mask, implementation="splash"))(q, k, v)
    ref = dot_product_attention(q, k, v, mask, implementation="xla")
    assert out.shape == q.shape and out.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else BF16_TOL
    assert rel_l2(out.astype(jnp.float32), ref.astype(jnp.float32)) < tol


def test_splash_gradients_match_xla():
    q, k, v = _qkv(lq=40, lk=30, d=16)
    mask = key_padding_mask(_lengths_mask([30, 12], 30))

    def grads(impl):
        loss = lambda q, k, v: jnp.sum(jnp.sin(dot_product_attention(q, k, v, mask, implementation=impl)))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)

    for got, want in zip(grads("splash"), grads("xla")):
        assert rel_l2(got, want) < 1e-5


def test_attention_module_passes_implementation():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 20, 16)), jnp.float32)
    ctx = jnp.asarray(np.random.default_rng(5).standard_normal((2, 9, 12)), jnp.float32)
    mask = _lengths_mask([9, 4], 9)
    module = Attention(heads=2, dim_head=8)
    params = jax.jit(module.init)(jax.random.key(0), x, ctx, mask)["params"]
    ref = jax.jit(lambda p: module.apply({"params": p}, x, ctx, mask))(params)
    splash = Attention(heads=2, dim_head=8, implementation="splash")
    out = jax.jit(lambda p: splash.apply({"params": p}, x, ctx, mask))(params)
    assert rel_l2(out, ref) < 1e-5


_SHARDED_SPLASH = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from jaxgen.nn.attention import dot_product_attention, key_padding_mask
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.standard_normal((4, n, 4, 16)), jnp.float32) for n in (40, 30, 30))
mask = key_padding_mask(jnp.asarray(np.arange(30)[None] < np.array([[30], [5], [17], [30]])))
ref = dot_product_attention(q, k, v, mask, implementation="xla")
f = jax.jit(lambda q, k, v, m: dot_product_attention(q, k, v, m, implementation="splash"))
for axis_type in (AxisType.Auto, AxisType.Explicit):
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
    with jax.set_mesh(mesh):
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", None, "model", None)))
        args = (put(q), put(k), put(v), mask)
        assert "shard_map" in str(jax.make_jaxpr(f)(*args))
        out = f(*args)
    assert out.sharding.spec == P("data", None, "model", None), out.sharding
    assert float(jnp.max(jnp.abs(out - ref))) < 1e-5
print("ok")
"""


def test_splash_runs_per_shard_under_a_mesh():
    """On 8 fake CPU devices, a 4x2 (data x model) mesh context: splash runs under shard_map, same result."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", _SHARDED_SPLASH], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
