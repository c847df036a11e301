"""Key map of transformers' ``T5EncoderModel``.

jaxgen's T5 modules carry transformers' names (``shared``, ``encoder.block.N.layer.0.SelfAttention.q``,
``encoder.block.0.layer.0.SelfAttention.relative_attention_bias``, ``encoder.final_layer_norm``), so
the default rule maps every param: linear weights are transposed, norms and embeddings copied.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, default_rule


def key_rule(config: Any) -> KeyRule:
    """The default rule: module names mirror transformers' keys."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """``encoder.embed_tokens.weight`` is the tied copy of ``shared.weight`` (saved by some checkpoints,
    not by others); ``decoder.*`` appears when the encoder is read from a whole T5 checkpoint, which
    transformers' ``T5EncoderModel`` also skips."""
    return (r"encoder\.embed_tokens\.weight", r"decoder\..*")
