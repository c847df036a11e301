"""Dense and Conv layers that accumulate half-precision products in float32.

In bfloat16/float16 the products are summed in float32 and the result is rounded back once: more
accurate (as PyTorch's GPU and oneDNN kernels do), free on TPU/GPU where the units accumulate in
float32 anyway, and twice as fast with XLA on CPU, whose plain bf16 x bf16 matmul is slow.
float32 layers are unchanged. Every jaxgen model builds its layers from these two.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

__all__ = ["Dense", "Conv", "dot_general_f32_accumulation", "conv_f32_accumulation"]

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def dot_general_f32_accumulation(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs: Any):
    """``lax.dot_general`` with float32 accumulation for half-precision operands; same output dtype."""
    out_dtype = jnp.result_type(lhs, rhs)
    if out_dtype in _HALF and preferred_element_type is None:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=jnp.float32, **kwargs).astype(out_dtype)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)


def conv_f32_accumulation(lhs, rhs, *args: Any, preferred_element_type=None, **kwargs: Any):
    """``lax.conv_general_dilated`` with float32 accumulation for half-precision operands."""
    out_dtype = jnp.result_type(lhs, rhs)
    if out_dtype in _HALF and preferred_element_type is None:
        return lax.conv_general_dilated(lhs, rhs, *args, preferred_element_type=jnp.float32, **kwargs).astype(out_dtype)
    return lax.conv_general_dilated(lhs, rhs, *args, preferred_element_type=preferred_element_type, **kwargs)


Dense = functools.partial(nn.Dense, dot_general=dot_general_f32_accumulation)
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_f32_accumulation)
