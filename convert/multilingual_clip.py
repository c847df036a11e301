"""Key map of diffusers' ``MultilingualCLIP`` (Kandinsky 2.1's text encoder: XLM-RoBERTa + ``LinearTransformation``).

jaxgen's modules carry the PyTorch names (``transformer.embeddings.word_embeddings``,
``transformer.encoder.layer.N.attention.self.query``, ``transformer.encoder.layer.N.output.LayerNorm``,
``LinearTransformation``), so the default rule maps every param: linear weights transposed,
LayerNorms and embedding tables copied.
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, default_rule


def key_rule(config: Any) -> KeyRule:
    """The default rule: module names mirror the checkpoint's keys."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """PyTorch keys the Flax model knowingly has no param for.

    - ``transformer.pooler.dense.*``: ``XLMRobertaModel`` is built with its pooler (tanh of a dense
      layer on the first token), but ``MultilingualCLIP.forward`` reads only the last hidden state
      (index 0 of the output) and pools by the masked mean, so the pooler's weights never touch an
      output; jaxgen does not allocate them.
    - ``transformer.embeddings.position_ids`` / ``token_type_ids``: buffers (an ``arange`` and zeros) that
      checkpoints written before transformers 4.31 saved; the model derives both itself.
    """
    return (r"transformer\.pooler\.dense\.(weight|bias)", r"transformer\.embeddings\.(position_ids|token_type_ids)")
