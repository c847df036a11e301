"""Convolutional building blocks shared by the VAEs and UNets: resnet block, down- and upsampling,
and the MoVQ decoder's ``SpatialNorm``.

Everything is channels last (NHWC). Module and parameter names mirror diffusers'
(``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``; the sampling
layers' convolution is ``conv``), so diffusers' state dicts convert with the default key rule.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.linear import Conv, Dense

__all__ = [
    "get_activation", "group_norm", "conv2d", "SpatialNorm", "ResnetBlock2D", "Downsample2D", "Upsample2D",
    "upsample_nearest", "ConvTranspose", "DepthwiseConv2d",
]


def _mish(x: jax.Array) -> jax.Array:
    return x * jnp.tanh(jax.nn.softplus(x))


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "mish": _mish,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch.nn.GELU() is the exact erf form
    "relu": jax.nn.relu,
}


def get_activation(act_fn: str) -> Callable[[jax.Array], jax.Array]:
    """diffusers' activation names (``swish``, ``silu``, ``mish``, ``gelu``, ``relu``; any case) -> function."""
    try:
        return _ACTIVATIONS[act_fn.lower()]
    except KeyError:
        raise ValueError(f"unknown activation function {act_fn!r}; known: {sorted(_ACTIVATIONS)}") from None


def group_norm(num_groups: int, eps: float, dtype: Any, name: str, affine: bool = True) -> nn.GroupNorm:
    """``torch.nn.GroupNorm(num_groups, C, eps, affine)`` on NHWC inputs (``affine=False``: no params).

    Statistics are computed in float32 even for bfloat16 inputs (flax's default) and with the
    two-pass variance E[(x - E[x])^2], as torch does.
    """
    return nn.GroupNorm(num_groups=num_groups, epsilon=eps, use_scale=affine, use_bias=affine, use_fast_variance=False,
                        dtype=dtype, name=name)


def conv2d(features: int, kernel_size: int, *, stride: int = 1, padding: int = 0, use_bias: bool = True,
           dtype: Any = jnp.float32, name: str | None = None) -> nn.Conv:
    """``torch.nn.Conv2d(..., kernel_size, stride, padding)`` on NHWC inputs (symmetric zero padding)."""
    return Conv(
        features, (kernel_size, kernel_size), strides=(stride, stride),
        padding=((padding, padding), (padding, padding)), use_bias=use_bias, dtype=dtype, name=name,
    )


class ConvTranspose(nn.Module):
    """``torch.nn.ConvTranspose2d(C, features, kernel_size, stride, padding)`` on NHWC: (B, H, W, C) ->
    (B, (H - 1) * stride - 2 * padding + kernel_size, ..., features).

    ``kernel`` is (k, k, C, features) (``convert.engine.conv_transpose`` of torch's (C, features, k, k)).
    Where the kernel is the stride and there is no padding (Kandinsky 3's 2x2 upsampling), each pixel becomes
    its own k x k patch: one einsum. Otherwise (Paella's 4x4, stride 2, padding 1) it is the convolution of the
    stride-dilated input with the flipped kernel, padded by k - 1 - padding. Products summed in float32.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c, self.features)).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x = x.astype(self.dtype)
        if k == s and self.padding == 0:
            y = jnp.einsum("bhwc,xyco->bhxwyo", x, kernel, preferred_element_type=jnp.float32)
            y = y.reshape(b, k * h, k * w, self.features)
        else:
            pad = ((k - 1 - self.padding,) * 2,) * 2
            y = jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], window_strides=(1, 1), padding=pad,
                                             lhs_dilation=(s, s), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             preferred_element_type=jnp.float32)
        return (y + bias.astype(jnp.float32)).astype(self.dtype)


class DepthwiseConv2d(nn.Module):
    """``torch.nn.Conv2d(C, C, kernel_size, padding=padding, groups=C)`` (one filter per channel, stride 1, zero
    padding) on NHWC: (B, H, W, C) -> (B, H + 2 * padding - k + 1, ..., C). Params as flax's grouped ``nn.Conv``:
    ``kernel`` (k, k, 1, C), ``bias`` (C,).

    Computed as the sum of the k * k shifted copies of the input times their per-channel weights, in float32:
    one fused elementwise pass on every backend. XLA:CPU's grouped convolution was 30-60x slower than this at
    Würstchen's sizes (and than torch's), and the Würstchen models have one in every block.
    """

    kernel_size: int
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, k, p = x.shape[-1], self.kernel_size, self.padding
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c)).astype(jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (c,)).astype(jnp.float32)
        x = x.astype(self.dtype).astype(jnp.float32)  # the module's dtype rounds the input, as nn.Conv's does
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
        out = bias
        for i in range(k):
            for j in range(k):
                out = out + x[:, i:i + h, j:j + w, :] * kernel[i, j, 0]
        return out.astype(self.dtype)


def upsample_nearest(x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
    """``F.interpolate(mode="nearest")`` on NHWC: 2x by default, or to ``output_size`` (height, width)."""
    if output_size is None:
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    (h, w), (oh, ow) = x.shape[1:3], output_size
    if oh % h == 0 and ow % w == 0:  # whole multiples (SpatialNorm's latents): a repeat, not a gather
        return jnp.repeat(jnp.repeat(x, oh // h, axis=1), ow // w, axis=2)
    # torch's "nearest": source index floor(dst * in / out), clipped to the last row/column.
    rows = jnp.minimum(jnp.floor(jnp.arange(oh) * (h / oh)).astype(jnp.int32), h - 1)
    cols = jnp.minimum(jnp.floor(jnp.arange(ow) * (w / ow)).astype(jnp.int32), w - 1)
    return x[:, rows][:, :, cols]


class SpatialNorm(nn.Module):
    """diffusers' ``SpatialNorm`` (MoVQ, arXiv 2209.09002): a GroupNorm modulated by quantized latents.

    ``norm_layer(f) * conv_y(zq') + conv_b(zq')``, where zq' is ``zq`` resized (nearest) to f's
    height and width and ``conv_y`` / ``conv_b`` are 1x1 convs to f's channels. diffusers fixes the
    norm at 32 groups and eps 1e-6 whatever the model's ``norm_num_groups``.
    Call: ``(f (B, H, W, C), zq (B, h, w, C_zq)) -> (B, H, W, C)``.
    """

    num_groups: int = 32
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, f: jax.Array, zq: jax.Array) -> jax.Array:
        channels = f.shape[-1]
        zq = upsample_nearest(zq.astype(f.dtype), f.shape[1:3])
        norm_f = group_norm(self.num_groups, self.eps, self.dtype, "norm_layer")(f)
        scale = conv2d(channels, 1, dtype=self.dtype, name="conv_y")(zq)
        return norm_f * scale + conv2d(channels, 1, dtype=self.dtype, name="conv_b")(zq)


class Downsample2D(nn.Module):
    """diffusers' ``Downsample2D``: 2x spatial downsampling of NHWC input.

    With ``use_conv`` a stride-2 convolution named ``conv``; ``padding=0`` pads one row and column
    at the bottom and right first (as diffusers does for the VAE). Without it, 2x2 average pooling.
    Takes (B, H, W, C), returns (B, H/2, W/2, out_channels or C).
    """

    use_conv: bool = False
    out_channels: int | None = None
    padding: int = 1
    kernel_size: int = 3
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array) -> jax.Array:
        if not self.use_conv:
            if self.out_channels is not None and self.out_channels != hidden_states.shape[-1]:
                raise ValueError("Downsample2D: out_channels must equal the input channels when use_conv is False")
            return nn.avg_pool(hidden_states, (2, 2), strides=(2, 2), padding="VALID")
        if self.padding == 0:
            hidden_states = jnp.pad(hidden_states, ((0, 0), (0, 1), (0, 1), (0, 0)))
        features = self.out_channels or hidden_states.shape[-1]
        return conv2d(features, self.kernel_size, stride=2, padding=self.padding, use_bias=self.bias,
                      dtype=self.dtype, name="conv")(hidden_states)


class Upsample2D(nn.Module):
    """diffusers' ``Upsample2D`` (interpolating form): nearest-neighbour 2x, then an optional 3x3 conv named ``conv``.

    Takes (B, H, W, C) and optional ``output_size`` (height, width) that replaces the 2x (the UNet
    passes it when a skip connection has an odd size). Returns (B, 2H, 2W, out_channels or C).
    """

    use_conv: bool = False
    out_channels: int | None = None
    kernel_size: int = 3
    padding: int = 1
    bias: bool = True
    interpolate: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden_states: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
        if self.interpolate:
            hidden_states = upsample_nearest(hidden_states, output_size)
        if self.use_conv:
            features = self.out_channels or hidden_states.shape[-1]
            hidden_states = conv2d(features, self.kernel_size, padding=self.padding, use_bias=self.bias,
                                   dtype=self.dtype, name="conv")(hidden_states)
        return hidden_states


class ResnetBlock2D(nn.Module):
    """diffusers' ``ResnetBlock2D`` (and ``ResnetBlockCondNorm2D`` with ``"spatial"``) on NHWC input.

    norm1 -> act -> (up/down) -> conv1 -> (+ time embedding) -> norm2 -> act -> conv2, plus the
    (optionally 1x1-projected) shortcut, divided by ``output_scale_factor``.
    ``time_embedding_norm="default"`` adds ``time_emb_proj(act(temb))`` before norm2;
    ``"scale_shift"`` projects to 2 * out_channels and applies ``norm2(h) * (1 + scale) + shift``;
    ``"group"`` is the plain block (no time embedding; diffusers' VAE decoder passes it);
    ``"spatial"`` (MoVQ decoder) makes norm1 and norm2 ``SpatialNorm`` layers conditioned on ``temb``,
    the quantized latents (B, h, w, C_zq), with no ``time_emb_proj``.
    ``temb_channels=None`` builds no ``time_emb_proj`` (the VAE); the input width of the projection
    is taken from ``temb`` itself. ``up``/``down`` resample both paths with parameter-free nearest
    upsampling / 2x2 average pooling (diffusers' ResnetUpsampleBlock2D / ResnetDownsampleBlock2D).
    Dropout is omitted (inference only).

    Call: ``(input_tensor (B, H, W, C_in), temb) -> (B, H', W', C_out)``; ``temb`` is (B, temb_channels),
    the quantized latents (B, h, w, C_zq) with "spatial", or None.
    """

    out_channels: int | None = None
    temb_channels: int | None = 512
    groups: int = 32
    groups_out: int | None = None
    eps: float = 1e-6
    non_linearity: str = "swish"
    skip_time_act: bool = False
    time_embedding_norm: str = "default"
    output_scale_factor: float = 1.0
    use_in_shortcut: bool | None = None
    up: bool = False
    down: bool = False
    conv_shortcut_bias: bool = True
    conv_2d_out_channels: int | None = None
    dtype: Any = jnp.float32

    def _check(self, temb: jax.Array | None) -> None:
        kind = self.time_embedding_norm
        if kind not in ("default", "scale_shift", "group", "spatial"):
            raise ValueError(f"ResnetBlock2D: unsupported time_embedding_norm {kind!r} "
                             "(supported: 'default', 'scale_shift', 'group', 'spatial')")
        if kind == "group" and self.temb_channels is not None:
            raise ValueError("ResnetBlock2D: time_embedding_norm='group' takes no time embedding (temb_channels=None)")
        if kind == "spatial" and temb is None:
            raise ValueError("ResnetBlock2D: time_embedding_norm='spatial' needs `temb`, the quantized latents")
        if kind == "scale_shift" and (temb is None or self.temb_channels is None):
            raise ValueError("ResnetBlock2D: `temb` and `temb_channels` are required with "
                             "time_embedding_norm='scale_shift'")

    @nn.compact
    def __call__(self, input_tensor: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        self._check(temb)
        kind = self.time_embedding_norm
        act = get_activation(self.non_linearity)
        in_channels = input_tensor.shape[-1]
        out_channels = self.out_channels or in_channels
        conv_2d_out = self.conv_2d_out_channels or out_channels
        groups_out = self.groups_out if self.groups_out is not None else self.groups

        def norm(name: str, groups: int, x: jax.Array) -> jax.Array:
            if kind == "spatial":
                return SpatialNorm(dtype=self.dtype, name=name)(x, temb)
            return group_norm(groups, self.eps, self.dtype, name)(x)

        hidden_states = act(norm("norm1", self.groups, input_tensor))
        if self.up:
            input_tensor = upsample_nearest(input_tensor)
            hidden_states = upsample_nearest(hidden_states)
        elif self.down:
            input_tensor = Downsample2D(dtype=self.dtype)(input_tensor)
            hidden_states = Downsample2D(dtype=self.dtype)(hidden_states)
        hidden_states = conv2d(out_channels, 3, padding=1, dtype=self.dtype, name="conv1")(hidden_states)

        emb = None  # the projected time embedding (none in the VAEs)
        if kind in ("default", "scale_shift") and self.temb_channels is not None and temb is not None:
            emb = temb if self.skip_time_act else act(temb)
            width = 2 * out_channels if kind == "scale_shift" else out_channels
            emb = Dense(width, dtype=self.dtype, name="time_emb_proj")(emb)[:, None, None, :]
        if kind == "default" and emb is not None:
            hidden_states = hidden_states + emb
        hidden_states = norm("norm2", groups_out, hidden_states)
        if kind == "scale_shift":
            time_scale, time_shift = jnp.split(emb, 2, axis=-1)
            hidden_states = hidden_states * (1 + time_scale) + time_shift
        hidden_states = act(hidden_states)
        hidden_states = conv2d(conv_2d_out, 3, padding=1, dtype=self.dtype, name="conv2")(hidden_states)

        use_shortcut = in_channels != conv_2d_out if self.use_in_shortcut is None else self.use_in_shortcut
        if use_shortcut:
            input_tensor = conv2d(conv_2d_out, 1, use_bias=self.conv_shortcut_bias, dtype=self.dtype,
                                  name="conv_shortcut")(input_tensor)
        return (input_tensor + hidden_states) / self.output_scale_factor
