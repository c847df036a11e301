"""Random weights for the speed benchmarks: jaxgen params and PyTorch modules of real-size configs,
without a checkpoint (speed does not depend on the values).

Both sides draw from one fixed pool of standard normals (cycled, scaled per leaf: no RNG call per
weight): biases 0, norm scales 1, matrices and kernels N(0, 1/fan_in), other vectors N(0, 0.02^2).

- ``jax_random_params(module, dtype)``: a jaxgen module's params in ``dtype``, built leaf by leaf on
  the host and put on the default device (peak: params + one leaf). On a CUDA device each leaf is
  drawn there by PyTorch and handed to JAX through DLPack (no host copy: billions of params in a
  second or two instead of minutes).
- ``torch_random_module(build, dtype, device)``: ``build()`` runs with every parameter created on
  the meta device (buffers, such as position ids and causal masks, are computed as usual), then the
  parameters are allocated on ``device`` in ``dtype`` and filled (on CUDA, drawn there).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np

_POOL = None


def _random_values(n: int, std: float, offset: int) -> np.ndarray:
    """n float32 values ~ N(0, std^2), read cyclically from a fixed pool of normals from ``offset``."""
    global _POOL
    if _POOL is None:
        _POOL = np.random.default_rng(0).standard_normal((1 << 22) + 7, dtype=np.float32)
    start = offset % (_POOL.size // 2)
    source = _POOL[start:]
    out = np.empty(n, np.float32)
    for pos in range(0, n, source.size):  # written in place: no temporary of the whole leaf
        take = min(source.size, n - pos)
        np.multiply(source[:take], np.float32(std), out=out[pos:pos + take])
    return out


def _host_param(name: str, shape: tuple[int, ...], fan_in: int, offset: int, bias_names: tuple, scale_names: tuple) -> np.ndarray:
    """Biases 0, norm scales 1, matrices/kernels N(0, 1/fan_in), other vectors N(0, 0.02^2)."""
    n = int(np.prod(shape))
    if len(shape) == 1 and name in bias_names:
        return np.zeros(shape, np.float32)
    if len(shape) == 1 and name in scale_names:
        return np.ones(shape, np.float32)
    std = fan_in ** -0.5 if len(shape) >= 2 else 0.02
    return _random_values(n, std, offset).reshape(shape)


def _host_cast(host: np.ndarray, dtype: Any) -> np.ndarray:
    """float32 host array -> ``dtype``; bfloat16 and float16 through torch (numpy's bfloat16 cast is ~4x slower)."""
    import jax.numpy as jnp

    dtype = jnp.dtype(dtype)
    if dtype == np.float32:
        return host
    if dtype not in (jnp.bfloat16, jnp.float16):
        return host.astype(dtype)
    import torch

    half = {jnp.dtype(jnp.bfloat16): torch.bfloat16, jnp.dtype(jnp.float16): torch.float16}[dtype]
    return torch.from_numpy(host).to(half).view(torch.int16).numpy().view(dtype)


def _cuda_param(name: str, shape: tuple[int, ...], fan_in: int, dtype: Any, bias_names: tuple, scale_names: tuple) -> Any:
    """``_host_param``'s values drawn on the CUDA device by PyTorch: a torch tensor of ``dtype`` (a torch dtype)."""
    import torch

    if len(shape) == 1 and name in bias_names:
        return torch.zeros(shape, dtype=dtype, device="cuda")
    if len(shape) == 1 and name in scale_names:
        return torch.ones(shape, dtype=dtype, device="cuda")
    std = fan_in ** -0.5 if len(shape) >= 2 else 0.02
    return torch.empty(shape, dtype=dtype, device="cuda").normal_(0.0, std)


def _on_cuda(device: Any) -> bool:
    """Whether ``device`` (a jax device) is a CUDA GPU that PyTorch can draw on too."""
    if getattr(device, "platform", "") != "gpu":
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def jax_random_params(module: Any, dtype: Any, device: Any = None) -> Any:
    """Random params for a jaxgen module (``module.param_shapes()``), floating leaves in ``dtype``, on ``device``
    (default: jax's first): drawn there by PyTorch and handed over through DLPack on a CUDA GPU, else built leaf by
    leaf on the host and put there (peak: params + one leaf)."""
    import jax
    import jax.numpy as jnp

    counter = iter(range(1 << 30))
    device = device or jax.devices()[0]
    cuda = _on_cuda(device) or (device.platform == "cpu" and _on_cuda(jax.devices()[0]))  # host params: drawn on
    # the GPU too, leaf by leaf, and copied down (numpy's draw of billions of values takes minutes)

    def make(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) >= 2 else 1  # flax: (..., in, out)
        floating = jnp.issubdtype(leaf.dtype, jnp.floating)
        if cuda and floating:
            import torch

            kind = {jnp.dtype(jnp.bfloat16): torch.bfloat16, jnp.dtype(jnp.float16): torch.float16,
                    jnp.dtype(jnp.float32): torch.float32}[jnp.dtype(dtype)]
            drawn = _cuda_param(name, tuple(leaf.shape), fan_in, kind, ("bias",), ("scale",))
            if device.platform != "cpu":
                try:  # copied into JAX's own memory: PyTorch's allocator frees the draw (its peak stays PyTorch's)
                    return jax.device_put(jax.dlpack.from_dlpack(drawn), device, may_alias=False)
                except (TypeError, ValueError, RuntimeError):  # no DLPack exchange here: through the host
                    pass
            host = drawn.cpu()
            return jax.device_put(host.view(torch.int16).numpy().view(jnp.dtype(dtype)) if kind == torch.bfloat16
                                  else host.numpy(), device)
        host = _host_param(name, tuple(leaf.shape), fan_in, 7919 * next(counter), ("bias",), ("scale",))
        return jax.device_put(_host_cast(host, dtype) if floating else host.astype(leaf.dtype), device)

    return jax.tree_util.tree_map_with_path(make, module.param_shapes())


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Inside: every ``nn.Parameter`` a module registers is moved to the meta device (nothing is
    allocated for it, and initialisers on it do nothing); buffers stay real."""
    import torch

    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def torch_random_module(build: Callable[[], Any], dtype: Any, device: Any = "cpu") -> Any:
    """``build()`` (a model constructor: ``lambda: UNet2DConditionModel.from_config(config)``) with its
    parameters given random values in ``dtype`` on ``device``, its floating buffers cast to ``dtype``
    (as ``model.to(dtype)`` would), in eval mode, without gradients. Tied parameters stay tied."""
    import torch

    with _parameters_on_meta():
        model = build()
    made: dict[int, Any] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                kind = dtype if p.is_floating_point() else p.dtype
                made[id(p)] = torch.nn.Parameter(torch.empty(p.shape, dtype=kind, device=device), requires_grad=False)
            module._parameters[name] = made[id(p)]
    model = model.to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            fan_in = int(np.prod(p.shape[1:])) if p.ndim >= 2 else 1  # torch: (out, in, ...)
            if p.device.type == "cuda":
                p.copy_(_cuda_param(leaf, tuple(p.shape), fan_in, p.dtype, ("bias",), ("weight",)))
                continue
            host = _host_param(leaf, tuple(p.shape), fan_in, 7919 * i, ("bias",), ("weight",))
            p.copy_(torch.from_numpy(host))
    return model
