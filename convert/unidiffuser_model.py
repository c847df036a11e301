"""Key map of diffusers' ``UniDiffuserModel`` (UniDiffuser's U-ViT, the pipeline's ``unet``).

jaxgen's modules carry diffusers' names (``vae_img_in.proj``, ``clip_img_in``, ``text_in``, the bare
parameters ``pos_embed`` and ``data_type_pos_embed_token``, ``data_type_token_embedding``,
``transformer.transformer_in_blocks.N`` / ``transformer_mid_block`` / ``transformer_out_blocks.N.skip`` and
``.block`` with ``attn1.to_q``... ``norm1``, ``norm3``, ``ff.net.0.proj``, ``ff.net.2``,
``transformer.norm_out``, ``vae_img_out``, ``clip_img_out``, ``text_out``), so the default rule maps every
key: linear weights transposed, the patch conv OIHW -> HWIO.

Ignored: ``transformer.pos_embed.proj``, the patch embedding diffusers' inner ``UTransformer2DModel`` builds
but never calls when ``UniDiffuserModel`` runs it on ready-made tokens (the outer ``vae_img_in`` embeds the
patches).
"""

from __future__ import annotations

from typing import Any

from convert.engine import KeyRule, default_rule

__all__ = ["key_rule", "ignored_keys"]


def key_rule(config: Any) -> KeyRule:
    """The key map for a ``UniDiffuserModelConfig``: diffusers' names throughout."""
    return default_rule


def ignored_keys(config: Any) -> tuple[str, ...]:
    """The inner transformer's unused patch embedding."""
    return (r"transformer\.pos_embed\.proj\.(weight|bias)",)
