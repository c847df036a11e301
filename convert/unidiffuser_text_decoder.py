"""Key map of diffusers' ``UniDiffuserTextDecoder`` (the prefix maps around transformers' ``GPT2LMHeadModel``).

jaxgen's modules carry the PyTorch names (``encode_prefix``, ``transformer.transformer.wte``,
``transformer.transformer.h.N.attn.c_attn``, ``transformer.transformer.ln_f``) except
``decode_prefix_linear`` (``decode_prefix`` is a method there), renamed back here. GPT-2's
``Conv1D`` stores its weight (in, out), as a Flax ``Dense`` kernel is, so ``c_attn``, ``c_proj`` and
``c_fc`` are copied, not transposed; the ``nn.Linear`` prefix maps are transposed as usual.

Tied weights: ``transformer.lm_head.weight`` is ``transformer.transformer.wte.weight`` (GPT-2 ties
them; jaxgen's LM head reads ``wte``). A checkpoint may hold both (a copy, ignored), only ``wte``, or
only ``lm_head`` (safetensors' ``save_model`` keeps one name of a shared tensor, the
alphabetically first: ``lm_head``); ``rename_legacy_keys`` fills ``wte`` from ``lm_head`` then, and
refuses a checkpoint whose two differ (an untied GPT-2 head, which this model cannot represent).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convert.engine import ConversionError, KeyRule, Source, identity, renamed

WTE = "transformer.transformer.wte.weight"
LM_HEAD = "transformer.lm_head.weight"
_CONV1D = ("c_attn", "c_proj", "c_fc")


def key_rule(config: Any) -> KeyRule:
    """The default rule with ``decode_prefix_linear`` -> ``decode_prefix`` and GPT-2's Conv1D kernels copied."""
    base = renamed([("decode_prefix_linear", "decode_prefix")])

    def rule(path: tuple[str, ...], shape: tuple[int, ...]) -> Source:
        source = base(path, shape)
        if path[0] == "transformer" and path[-1] == "kernel" and path[-2] in _CONV1D:
            return Source(source.keys, identity)  # Conv1D weight is (in, out) already
        return source

    return rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """The tied copy ``transformer.lm_head.weight``; the causal-mask buffers ``attn.bias`` and ``attn.masked_bias``
    that checkpoints written by older transformers hold (diffusers ignores them too)."""
    return (r"transformer\.lm_head\.weight", r"transformer\.transformer\.h\.\d+\.attn\.(masked_)?bias")


def rename_legacy_keys(state_dict: dict) -> dict:
    """A checkpoint holding only ``transformer.lm_head.weight`` gets it as ``wte``; both present must be equal."""
    if LM_HEAD not in state_dict:
        return state_dict
    if WTE not in state_dict:
        state = {k: v for k, v in state_dict.items() if k != LM_HEAD}
        state[WTE] = state_dict[LM_HEAD]
        return state
    if not np.array_equal(np.asarray(state_dict[LM_HEAD]), np.asarray(state_dict[WTE])):
        raise ConversionError(
            f"{LM_HEAD} differs from {WTE}: GPT-2's LM head is tied to the token embedding, and an untied head "
            "is not supported")
    return state_dict
