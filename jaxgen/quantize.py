"""int8 weight-only quantization (per output channel, symmetric) and parameter byte counts.

A Dense kernel ``w`` (in, out) becomes ``kernel`` int8 (in, out) and ``scale`` float32 (out,) with
``scale = max_i |w[i, j]| / 127`` and ``kernel = round(w / scale)``: each output column keeps its
own range, so the largest error of a weight is half a step, ``scale / 2``. ``QuantizedDense``
computes ``(x @ kernel) * scale`` (the scale commutes with the matmul), multiplying integers
converted to the compute dtype (exact for |k| <= 127 in bfloat16) with float32 accumulation.
Activations stay in the compute dtype: this saves memory (1 byte per weight instead of 2 or 4),
not arithmetic.

T5 is what this is for: T5-XXL's 4.7B parameters are the memory peak of PixArt-α and DeepFloyd IF.
``quantize_t5(module, params)`` returns an int8 copy of a ``T5EncoderModel``: T5-XXL's params take
4.56 GiB instead of 8.87 GiB (bfloat16) or 17.74 GiB (float32), 0.26x float32 (the token
embedding stays in the compute dtype). The error of ``last_hidden_state`` over real tokens,
int8 (bfloat16 compute) against the float32 encoder, measured on random-weight T5 v1.1 encoders
with transformers' initialisation scales (tests/test_quantize.py):

    model (weights)                                  rel. L2   mean cos   (bf16 vs f32 rel. L2)
    tiny: d_model 32, 2 layers (Gaussian / t tails)  0.012 / 0.014  0.9999  0.006
    d_model 512, 4 layers (Gaussian)                 0.018     0.9998     0.007
    d_model 512, 4 layers (Student-t df=4 tails)     0.037     0.9993     0.008
    d_model 512, 8 / 24 layers (Student-t)           0.054 / 0.081  0.998 / 0.997

Stated bound, asserted by the tests for the heavy-tailed 4-layer model and the tiny one: relative
L2 < 0.05 and mean cosine similarity > 0.998 against both the float32 and the bfloat16 encoders.
The error grows with depth (the 24-layer figure is the estimate for T5-XXL's depth); real
checkpoints were not measured here (no weights offline).

Encoding a CFG batch of 2 x 120 tokens then peaks at 4.67 GiB of device memory instead of 8.90
GiB in bfloat16 (benchmarks/memory.py, XLA's buffer assignment on CPU).

Use it with a pipeline by passing the pair as the component::

    import jax.numpy as jnp
    from jaxgen import PixArtAlphaPipeline
    from jaxgen.models import T5EncoderModel
    from jaxgen.quantize import quantize_t5

    text_encoder = quantize_t5(*T5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=jnp.bfloat16))
    pipe = PixArtAlphaPipeline.from_pretrained(path, dtype=jnp.bfloat16, text_encoder=text_encoder)

(``from_pretrained`` puts the bfloat16 params on the device first, so quantizing there holds
3 bytes per weight for a moment; to keep the device at 1 byte per weight, load and quantize under
``jax.default_device(jax.devices("cpu")[0])`` and ``jax.device_put`` the int8 params.)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = [
    "QuantizedDense", "quantize_kernel", "quantize_params", "dequantize_params", "quantize_encoder", "quantize_t5",
    "param_bytes", "cast_floating", "is_dense_kernel",
]

_INT8_MAX = 127


@jax.jit
def quantize_kernel(kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(in, out) float kernel -> (int8 kernel (in, out), float32 scale (out,)), per output column."""
    w = kernel.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=0)
    scale = jnp.where(amax > 0, amax / _INT8_MAX, 1.0)  # an all-zero column quantizes to zeros
    q = jnp.clip(jnp.round(w / scale), -_INT8_MAX, _INT8_MAX).astype(jnp.int8)
    return q, scale


def is_dense_kernel(path: tuple[str, ...], leaf: Any) -> bool:
    """Default predicate: every 2-D ``kernel`` param (Dense layers; convolutions are 4-D)."""
    return path[-1] == "kernel" and len(leaf.shape) == 2


def quantize_params(params: Any, predicate: Callable[[tuple[str, ...], Any], bool] = is_dense_kernel) -> Any:
    """Replace each kernel that ``predicate(path, leaf)`` selects by int8 ``kernel`` + float32 ``scale``.

    ``params`` is a nested dict (the ``params`` collection); other leaves are kept as they are.
    Works on arrays, and under ``jax.eval_shape`` on ``jax.ShapeDtypeStruct`` trees (no allocation).
    The module that uses the result must read ``kernel``/``scale`` (``QuantizedDense``).
    """
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, leaf in flat.items():
        if path in out:
            continue
        if predicate(path, leaf):
            scale_path = path[:-1] + ("scale",)
            if scale_path in flat:
                raise ValueError(f"cannot quantize {'/'.join(path)}: its module already has a 'scale' param")
            out[path], out[scale_path] = quantize_kernel(leaf)
        else:
            out[path] = leaf
    return traverse_util.unflatten_dict(out)


def dequantize_params(qparams: Any, dtype: Any = jnp.float32) -> Any:
    """Inverse of ``quantize_params`` (``kernel * scale`` in ``dtype``), for checks and for export."""
    flat = traverse_util.flatten_dict(qparams)
    scales = _scale_paths(flat)
    out = {}
    for path, leaf in flat.items():
        if path in scales:
            continue
        if path[-1] == "kernel" and path[:-1] + ("scale",) in scales:
            leaf = (leaf.astype(jnp.float32) * flat[path[:-1] + ("scale",)]).astype(dtype)
        out[path] = leaf
    return traverse_util.unflatten_dict(out)


def _scale_paths(flat: dict) -> set:
    """Paths of the ``scale`` params that belong to int8 kernels."""
    return {p[:-1] + ("scale",) for p, x in flat.items() if p[-1] == "kernel" and x.dtype == jnp.int8}


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Floating leaves (arrays or ShapeDtypeStructs) cast to ``dtype``; integer leaves (int8 kernels) kept."""

    def cast(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
        return x.astype(dtype)

    return jax.tree_util.tree_map(cast, tree)


def param_bytes(tree: Any) -> int:
    """Bytes of a params tree (arrays, numpy arrays or ``jax.ShapeDtypeStruct`` leaves)."""
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


class QuantizedDense(nn.Module):
    """Dense layer with an int8 ``kernel`` (in, features) and a float32 per-column ``scale`` (features,).

    Takes x (..., in), returns (..., features) in ``dtype``: ``(x @ kernel) * scale + bias``, the
    matmul accumulated in float32. Param names match ``nn.Dense`` plus ``scale``, so
    ``quantize_params`` of a Dense model's params fits the same model built with this layer.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.zeros_init(), (x.shape[-1], self.features), jnp.int8)
        scale = self.param("scale", nn.initializers.ones_init(), (self.features,), jnp.float32)
        # Dequantize only once this layer's input exists: a zero computed from x (0 or 1 times 0,
        # never NaN; a reduction, so it works on sharded x) joins the conversion, so XLA cannot
        # convert every layer's kernel up front and hold them all at once (it does without this on
        # CPU: 8.6 GiB of bfloat16 kernels for T5-XXL).
        after_x = (jnp.max(x) > 0).astype(self.dtype) * 0
        kernel = kernel.astype(self.dtype) + after_x
        y = jax.lax.dot_general(
            x.astype(self.dtype), kernel, (((x.ndim - 1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        y = y * scale
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return y.astype(self.dtype)


def quantize_encoder(module: Any, params: Any, dtype: Any = None) -> tuple[Any, Any]:
    """``(encoder, params)`` -> ``(int8 encoder, int8 params)``, for the encoders built with a ``quantized`` field:
    ``T5EncoderModel`` (T5-XXL, Flan-UL2) and the CLIP towers (``CLIPTextModel``, ``CLIPTextModelWithProjection``,
    ``CLIPVisionModelWithProjection``: CLIP-bigG's).

    Every Dense kernel (attention projections, feed-forward, the CLIP projections) becomes int8 with
    per-output-channel float32 scales; embeddings, norms, convolutions and T5's relative-position table keep
    their dtype. ``dtype`` (e.g. ``jnp.bfloat16``) also changes the compute dtype and the unquantized params'
    dtype; by default the module's own. The returned pair goes where the float pair goes
    (``module.apply({"params": p}, ...)``, a pipeline's ``text_encoder=``). A TypeError for other modules.
    """
    if "quantized" not in {f.name for f in dataclasses.fields(module)}:
        raise TypeError(f"{type(module).__name__} has no int8 form: quantize_encoder takes T5 and CLIP encoders")
    dtype = module.dtype if dtype is None else dtype
    # Quantize from the given precision, then cast what stays floating, the float32 scales excepted.
    flat = traverse_util.flatten_dict(quantize_params(params))
    scales = _scale_paths(flat)
    flat = {p: x if p in scales else cast_floating(x, dtype) for p, x in flat.items()}
    return module.clone(quantized=True, dtype=dtype), traverse_util.unflatten_dict(flat)


quantize_t5 = quantize_encoder
"""``quantize_encoder`` under the name the T5 recipe used first."""
