"""The conditioning embeddings of diffusers' ``UNet2DConditionModel``, channels last.

Three submodules of the UNet, each built by one function here and named as diffusers' attribute:
  * ``class_embedding`` (:func:`class_embedding`): ``nn.Embed`` (``num_class_embeds``: the x4
    upscaler's noise level), ``"timestep"`` (sinusoidal + MLP of ``class_labels``: IF-II's noise
    level), ``"identity"``, ``"projection"`` (MLP), ``"simple_projection"`` (linear);
  * ``add_embedding`` (:func:`addition_embedding`): ``"text"`` (:class:`TextTimeEmbedding`:
    attention pooling of the raw text embeddings, IF), ``"text_image"``
    (:class:`TextImageTimeEmbedding`, Kandinsky 2.1), ``"image"`` / ``"image_hint"``
    (:class:`ImageTimeEmbedding` / :class:`ImageHintTimeEmbedding`, Kandinsky 2.2 and its ControlNet);
  * ``encoder_hid_proj`` (:func:`project_encoder`): ``"text_proj"`` (linear, IF),
    ``"text_image_proj"`` (:class:`TextImageProjection`, Kandinsky 2.1), ``"image_proj"``
    (:class:`ImageProjection`, Kandinsky 2.2).

The three functions must run inside the UNet's compact ``__call__`` (directly or from a method it
calls): the module they build becomes the UNet's submodule under that name, so param paths match
diffusers' state-dict keys. They raise ValueError, as diffusers does, when an input the config needs
is missing (``class_labels``, ``encoder_hidden_states``, a key of ``added_cond_kwargs``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import dot_product_attention
from jaxgen.nn.embeddings import TimestepEmbedding
from jaxgen.nn.linear import Dense
from jaxgen.nn.resnet import conv2d
from jaxgen.nn.transformer import layer_norm

__all__ = [
    "AttentionPooling", "TextTimeEmbedding", "TextImageTimeEmbedding", "ImageTimeEmbedding",
    "ImageHintTimeEmbedding", "TextImageProjection", "ImageProjection",
    "class_embedding", "addition_embedding", "project_encoder",
]


# ----------------------------------------------------------------------------- modules


class AttentionPooling(nn.Module):
    """diffusers' ``AttentionPooling`` (from DeepFloyd IF): one query, the mean token + ``positional_embedding``,
    attends over itself and the tokens (``q_proj``/``k_proj``/``v_proj``, no output projection).

    Takes (B, L, D); returns (B, D). Padding tokens are pooled too, as in diffusers.
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, d = x.shape
        head_dim = d // self.num_heads
        pos = self.param("positional_embedding", lambda key: jax.random.normal(key, (1, d)) / d**0.5)
        class_token = jnp.mean(x, axis=1, keepdims=True) + pos.astype(x.dtype)
        tokens = jnp.concatenate([class_token, x], axis=1)
        split = lambda t: t.reshape(b, t.shape[1], self.num_heads, head_dim)
        q = split(Dense(d, dtype=self.dtype, name="q_proj")(class_token))
        k = split(Dense(d, dtype=self.dtype, name="k_proj")(tokens))
        v = split(Dense(d, dtype=self.dtype, name="v_proj")(tokens))
        return dot_product_attention(q, k, v).reshape(b, d)


class TextTimeEmbedding(nn.Module):
    """diffusers' ``TextTimeEmbedding``: LayerNorm ``norm1`` -> ``pool`` -> ``proj`` -> LayerNorm ``norm2``.

    Takes the text embeddings (B, L, D) before ``encoder_hid_proj``; returns (B, time_embed_dim).
    """

    time_embed_dim: int
    num_heads: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        x = layer_norm(1e-5, True, self.dtype, "norm1")(hidden_states)
        x = AttentionPooling(self.num_heads, dtype=self.dtype, name="pool")(x)
        x = Dense(self.time_embed_dim, dtype=self.dtype, name="proj")(x)
        return layer_norm(1e-5, True, self.dtype, "norm2")(x)


class TextImageTimeEmbedding(nn.Module):
    """diffusers' ``TextImageTimeEmbedding`` (Kandinsky 2.1): ``text_norm(text_proj(text)) + image_proj(image)``.

    Takes text_embeds (B, Dt) and image_embeds (B, Di); returns (B, time_embed_dim).
    """

    time_embed_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, text_embeds: jax.Array, image_embeds: jax.Array) -> jax.Array:
        text = Dense(self.time_embed_dim, dtype=self.dtype, name="text_proj")(text_embeds)
        text = layer_norm(1e-5, True, self.dtype, "text_norm")(text)
        return Dense(self.time_embed_dim, dtype=self.dtype, name="image_proj")(image_embeds) + text


class ImageTimeEmbedding(nn.Module):
    """diffusers' ``ImageTimeEmbedding`` (Kandinsky 2.2): (B, Di) -> ``image_norm(image_proj(image))`` (B, T)."""

    time_embed_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image_embeds: jax.Array) -> jax.Array:
        x = Dense(self.time_embed_dim, dtype=self.dtype, name="image_proj")(image_embeds)
        return layer_norm(1e-5, True, self.dtype, "image_norm")(x)


class ImageHintTimeEmbedding(nn.Module):
    """diffusers' ``ImageHintTimeEmbedding`` (Kandinsky 2.2 ControlNet).

    Takes image_embeds (B, Di) and hint (B, 8h, 8w, 3) NHWC; returns (``image_norm(image_proj(image))``
    (B, time_embed_dim), the hint encoded by ``input_hint_block`` (8 convs with SiLU, three of stride
    2) to (B, h, w, 4)).
    """

    time_embed_dim: int
    dtype: Any = jnp.float32

    # (out channels, stride) of the convs at input_hint_block.{0, 2, ..., 14}; SiLU between them.
    _HINT_CONVS = ((16, 1), (16, 1), (32, 2), (32, 1), (96, 2), (96, 1), (256, 2), (4, 1))

    @nn.compact
    def __call__(self, image_embeds: jax.Array, hint: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = Dense(self.time_embed_dim, dtype=self.dtype, name="image_proj")(image_embeds)
        x = layer_norm(1e-5, True, self.dtype, "image_norm")(x)
        for i, (features, stride) in enumerate(self._HINT_CONVS):
            if i:
                hint = jax.nn.silu(hint)
            hint = conv2d(features, 3, stride=stride, padding=1, dtype=self.dtype, name=f"input_hint_block.{2 * i}")(hint)
        return x, hint


class TextImageProjection(nn.Module):
    """diffusers' ``TextImageProjection`` (Kandinsky 2.1's ``encoder_hid_proj``).

    Takes text_embeds (B, L, Dt) and image_embeds (B, Di); returns (B, num_image_text_embeds + L,
    cross_attention_dim): the image as ``num_image_text_embeds`` tokens (``image_embeds``) before the
    projected text (``text_proj``).
    """

    cross_attention_dim: int
    num_image_text_embeds: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, text_embeds: jax.Array, image_embeds: jax.Array) -> jax.Array:
        b = text_embeds.shape[0]
        width = self.num_image_text_embeds * self.cross_attention_dim
        image = Dense(width, dtype=self.dtype, name="image_embeds")(image_embeds)
        image = image.reshape(b, self.num_image_text_embeds, self.cross_attention_dim)
        text = Dense(self.cross_attention_dim, dtype=self.dtype, name="text_proj")(text_embeds)
        return jnp.concatenate([image, text], axis=1)


class ImageProjection(nn.Module):
    """diffusers' ``ImageProjection`` (Kandinsky 2.2's ``encoder_hid_proj``): (B, Di) -> (B, 32, cross_attention_dim)."""

    cross_attention_dim: int
    num_image_text_embeds: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, image_embeds: jax.Array) -> jax.Array:
        b = image_embeds.shape[0]
        width = self.num_image_text_embeds * self.cross_attention_dim
        x = Dense(width, dtype=self.dtype, name="image_embeds")(image_embeds)
        x = x.reshape(b, self.num_image_text_embeds, self.cross_attention_dim)
        return layer_norm(1e-5, True, self.dtype, "norm")(x)


# ----------------------------------------------------------------------------- builders (call inside the UNet)


def _require(added: Mapping[str, jax.Array] | None, keys: tuple[str, ...], field: str,
             value: str) -> Mapping[str, jax.Array]:
    added = added or {}
    missing = [k for k in keys if k not in added]
    if missing:
        raise ValueError(f"the config param `{field}` is {value!r}, which requires the keyword argument(s) "
                         f"{missing} in `added_cond_kwargs`")
    return added


def _require_encoder(encoder_hidden_states: jax.Array | None, field: str, value: str) -> None:
    if encoder_hidden_states is None:
        raise ValueError(f"the config param `{field}` is {value!r}, which requires `encoder_hidden_states`")


def class_embedding(class_labels: jax.Array | None, time_proj: Callable, *, kind: str | None,
                    num_class_embeds: int | None, dim: int, act_fn: str, batch: int, dtype: Any) -> jax.Array | None:
    """The ``class_embedding`` term (B, dim) of ``class_embed_type=kind``, or None when the UNet has none.

    ``time_proj`` is the UNet's sinusoidal ``Timesteps`` (reused by ``"timestep"``); ``act_fn`` the UNet's.
    """
    if kind is None and num_class_embeds is None:
        return None
    if class_labels is None:
        raise ValueError("class_labels should be provided when num_class_embeds > 0 or class_embed_type is set")
    if kind in (None, "timestep"):  # one id / noise level per sample; a scalar is broadcast
        labels = jnp.broadcast_to(jnp.reshape(jnp.asarray(class_labels), (-1,)), (batch,))
    if kind is None:
        return nn.Embed(num_class_embeds, dim, dtype=dtype, name="class_embedding")(labels.astype(jnp.int32))
    if kind == "timestep":
        return TimestepEmbedding(dim, act_fn=act_fn, dtype=dtype, name="class_embedding")(
            time_proj(labels).astype(dtype))
    labels = jnp.asarray(class_labels).astype(dtype)
    if kind == "identity":
        return labels
    if kind == "projection":
        return TimestepEmbedding(dim, dtype=dtype, name="class_embedding")(labels)
    return Dense(dim, dtype=dtype, name="class_embedding")(labels)  # simple_projection


def addition_embedding(encoder_hidden_states: jax.Array | None, added: Mapping[str, jax.Array] | None, *,
                       kind: str | None, dim: int, num_heads: int, dtype: Any) -> tuple[Any, Any]:
    """The ``add_embedding`` term (B, dim) of ``addition_embed_type=kind`` (None without one), and the
    encoded hint (B, h, w, 4) for ``"image_hint"`` (else None). ``num_heads``: ``"text"``'s pooling heads."""
    field = "addition_embed_type"
    if kind is None:
        return None, None
    if kind == "text":
        _require_encoder(encoder_hidden_states, field, kind)
        emb = TextTimeEmbedding(dim, num_heads, dtype=dtype, name="add_embedding")(encoder_hidden_states)
        return emb, None
    if kind == "text_image":
        added = _require(added, ("image_embeds",), field, kind)
        text = added.get("text_embeds", encoder_hidden_states)
        _require_encoder(text, field, kind)
        emb = TextImageTimeEmbedding(dim, dtype=dtype, name="add_embedding")(
            jnp.asarray(text, dtype), jnp.asarray(added["image_embeds"], dtype))
        return emb, None
    if kind == "image":
        added = _require(added, ("image_embeds",), field, kind)
        image = jnp.asarray(added["image_embeds"], dtype)
        return ImageTimeEmbedding(dim, dtype=dtype, name="add_embedding")(image), None
    added = _require(added, ("image_embeds", "hint"), field, kind)  # image_hint
    return ImageHintTimeEmbedding(dim, dtype=dtype, name="add_embedding")(
        jnp.asarray(added["image_embeds"], dtype), jnp.asarray(added["hint"], dtype))


def project_encoder(encoder_hidden_states: jax.Array | None, added: Mapping[str, jax.Array] | None, *,
                    kind: str | None, cross_attention_dim: int, dtype: Any) -> jax.Array | None:
    """``encoder_hidden_states`` through ``encoder_hid_proj`` of (resolved) ``encoder_hid_dim_type=kind``,
    to (B, tokens, cross_attention_dim); unchanged when ``kind`` is None."""
    field = "encoder_hid_dim_type"
    if kind is None:
        return encoder_hidden_states
    if kind in ("text_proj", "text_image_proj"):
        _require_encoder(encoder_hidden_states, field, kind)
    if kind == "text_proj":
        return Dense(cross_attention_dim, dtype=dtype, name="encoder_hid_proj")(encoder_hidden_states)
    added = _require(added, ("image_embeds",), field, kind)
    image = jnp.asarray(added["image_embeds"], dtype)
    if kind == "text_image_proj":
        proj = TextImageProjection(cross_attention_dim, dtype=dtype, name="encoder_hid_proj")
        return proj(encoder_hidden_states, image)
    return ImageProjection(cross_attention_dim, dtype=dtype, name="encoder_hid_proj")(image)  # image_proj
