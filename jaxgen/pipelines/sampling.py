"""The compiled sampling loop every pipeline shares, and the pieces a family plugs into it.

``denoise`` is one XLA program per (denoiser, scheduler, guidance, post-step, shapes, step count):
``lax.fori_loop`` over the steps with the scheduler state in the carry, no host round trip per
step. It is generic in four directions, each a small hashable object (a static jit argument):

- ``Denoiser`` -- the model: how to call it on (latents, timestep, conditioning), and whether its
  output carries a learned variance after the prediction (it declares it; the loop never guesses).
- guidance -- how the model calls combine: ``NoGuidance``; ``ClassifierFreeGuidance`` (conditional
  and unconditional rows in one batched call, the usual case: negative prompts, Kandinsky 3's zero
  embeddings, Kandinsky 2.x's negative image embeddings are all just other unconditional rows);
  ``SeparateUnconditional`` (the unconditional prediction is a different call: UniDiffuser's
  data-free guidance).
- the scheduler -- any jaxgen scheduler; timesteps may be integers or continuous (Würstchen's t
  in [0, 1]): the loop reads them from the state and hands them on unchanged.
- ``post_step`` -- what a task does after each step (inpainting blends the known region back).

Latents may be one array (B, h, w, C) or a pytree of arrays with B rows each (UniDiffuser samples an
image latent, a CLIP embedding and a text latent together): the model sees the pytree, the
scheduler steps on the rows flattened into one (B, D) array, as diffusers' UniDiffuser does.

Rows and devices: the batch is split over the mesh's ``data`` axis. With classifier-free guidance
the conditioning arrives as [unconditional rows; conditional rows] (as diffusers concatenates it);
the loop interleaves it (u0, c0, u1, c1, ...) so both halves of a sample sit on the same device.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from jaxgen import sharding
from jaxgen.pipelines import progress

__all__ = [
    "Denoiser", "NoGuidance", "ClassifierFreeGuidance", "SeparateUnconditional", "PostStep", "FirstRows",
    "denoise", "guide", "accepts", "compile_only", "is_compile_only", "flat_rows", "unflatten_rows",
]

_LEARNED = ("learned", "learned_range")


class Denoiser:
    """A model adapter for ``denoise``. Subclasses are frozen dataclasses (hashable: a static jit argument).

    ``predict(params, model_input, timestep, cond)``: the model on ``model_input`` (N rows, an array
    (N, h, w, C) or a pytree), ``timestep`` (N,) and ``cond`` (a pytree of (N, ...) arrays) -> its
    output, shaped like ``model_input`` (with the variance channels appended when
    ``learned_variance()``). ``predict_unconditional``: the unconditional prediction for guidance
    that is a separate call (``SeparateUnconditional``); ``key`` is this step's key.
    """

    def predict(self, params: Any, model_input: Any, timestep: jax.Array, cond: Any) -> Any:
        raise TypeError(f"{type(self).__name__} must define predict()")

    def predict_unconditional(self, params: Any, model_input: Any, timestep: jax.Array, cond: Any,
                              key: jax.Array) -> Any:
        raise TypeError(f"{type(self).__name__} has no separate unconditional prediction")

    def learned_variance(self) -> bool:
        """Whether the output's last axis is [prediction, variance] (twice the latent channels)."""
        return False

    def keeps_variance(self, scheduler: Any) -> bool:
        """Whether the scheduler steps with the learned variance: when its own config asks for one
        (DDPM with ``variance_type`` "learned"/"learned_range"), as diffusers' IF and Kandinsky decide."""
        keys = scheduler.config_keys() if hasattr(scheduler, "config_keys") else ()
        return "variance_type" in keys and scheduler.config["variance_type"] in _LEARNED

    def with_extra_channels(self, model_input: jax.Array, cond: Any, dtype: Any) -> jax.Array:
        """``model_input`` with ``cond["extra_channels"]`` appended on the channel axis, in ``dtype``:
        how super-resolution (the noised low-res image) and inpainting UNets (mask, masked image) are
        conditioned."""
        x = model_input.astype(dtype)
        if "extra_channels" not in cond:
            return x
        return jnp.concatenate([x, cond["extra_channels"].astype(dtype)], axis=-1)


def guide(uncond: Any, cond: Any, scale: jax.Array, channels: int | None = None) -> Any:
    """Classifier-free guidance, Ho & Salimans (2022): uncond + s (cond - uncond), on every leaf.

    ``channels``: with a learned variance, only the first ``channels`` of the last axis are guided;
    the variance is the conditional half's (as diffusers' IF and Kandinsky do).
    """
    if channels is None:
        return jax.tree_util.tree_map(lambda u, c: u + scale * (c - u), uncond, cond)
    eps = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
    return jnp.concatenate([eps, cond[..., channels:]], axis=-1)


def _float32(tree: Any) -> Any:
    """Model outputs in float32: guidance and the scheduler step never run in half precision."""
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), tree)


def _variance_channels(denoiser: Denoiser, x: Any) -> int | None:
    return x.shape[-1] if denoiser.learned_variance() else None


def _cfg_pairs(x: jax.Array) -> jax.Array:
    """[uncond rows; cond rows] (2B, ...) -> (2B, ...) ordered u0, c0, u1, c1, ..."""
    b = x.shape[0] // 2
    return jnp.swapaxes(x.reshape((2, b) + x.shape[1:]), 0, 1).reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class NoGuidance:
    """The model once per step on the B sample rows; ``cond`` has B rows.

    A guidance object is called as ``guidance(denoiser, params, x, t, cond, scale, key, rows)`` and
    returns the (guided) prediction for the B rows of ``x``, in float32."""

    def prepare(self, cond: Any) -> Any:
        return cond

    def sample_cond(self, cond: Any) -> Any:
        """Each sample's own conditioning (B rows), for ``post_step``."""
        return cond

    def __call__(self, denoiser: Denoiser, params: Any, x: Any, t: jax.Array, cond: Any, scale: jax.Array,
                 key: jax.Array, rows: Callable) -> Any:
        return _float32(denoiser.predict(params, x, jnp.broadcast_to(t, (_num_rows(x),)), cond))


@dataclasses.dataclass(frozen=True)
class ClassifierFreeGuidance:
    """Conditional and unconditional rows in one batched call; ``cond`` arrives [uncond; cond] (2B rows)."""

    def prepare(self, cond: Any) -> Any:
        """Interleave the halves (u0, c0, u1, c1, ...): a sample's two rows stay on one device."""
        return jax.tree_util.tree_map(_cfg_pairs, cond)

    def sample_cond(self, cond: Any) -> Any:
        """Each sample's conditional row (B rows), for ``post_step``."""
        return jax.tree_util.tree_map(lambda x: x[1::2], cond)

    def __call__(self, denoiser: Denoiser, params: Any, x: Any, t: jax.Array, cond: Any, scale: jax.Array,
                 key: jax.Array, rows: Callable) -> Any:
        doubled = jax.tree_util.tree_map(lambda a: rows(jnp.repeat(a, 2, axis=0)), x)
        out = _float32(denoiser.predict(params, doubled, jnp.broadcast_to(t, (2 * _num_rows(x),)), cond))
        uncond = jax.tree_util.tree_map(lambda a: a[0::2], out)
        conditional = jax.tree_util.tree_map(lambda a: a[1::2], out)
        return guide(uncond, conditional, scale, _variance_channels(denoiser, x))


@dataclasses.dataclass(frozen=True)
class SeparateUnconditional(NoGuidance):
    """The unconditional prediction is another call (``denoiser.predict_unconditional``): guidance
    that is not "the same model on other rows", such as UniDiffuser's data-free guidance. ``cond``
    has B rows, as for ``NoGuidance``."""

    def __call__(self, denoiser: Denoiser, params: Any, x: Any, t: jax.Array, cond: Any, scale: jax.Array,
                 key: jax.Array, rows: Callable) -> Any:
        timestep = jnp.broadcast_to(t, (_num_rows(x),))
        conditional = denoiser.predict(params, x, timestep, cond)
        uncond = denoiser.predict_unconditional(params, x, timestep, cond, key)
        return guide(_float32(uncond), _float32(conditional), scale, _variance_channels(denoiser, x))


class PostStep:
    """What a task does after each scheduler step (frozen dataclass subclasses: hashable).

    ``__call__(latents, previous, cond, scheduler, state)``: the stepped latents, the latents before
    the step, each sample's conditioning (B rows), the scheduler and its state after the step ->
    the latents the next step starts from.
    """

    def __call__(self, latents: Any, previous: Any, cond: Any, scheduler: Any, state: Any) -> Any:
        raise TypeError(f"{type(self).__name__} must define __call__")


@dataclasses.dataclass(frozen=True)
class FirstRows:
    """A step callback ``fn(i, t, latents)`` given only the first ``rows`` rows (no padding rows).

    Hashable by value, so the compiled loop is reused by every call with the same ``fn`` and rows.
    """

    fn: Callable
    rows: int


def _num_rows(x: Any) -> int:
    return jax.tree_util.tree_leaves(x)[0].shape[0]


def flat_rows(x: Any) -> jax.Array:
    """Latents -> what the scheduler steps on: an array as it is, a pytree as its rows flattened and
    concatenated, (B, D) (the leaves in pytree order)."""
    if isinstance(x, jax.Array):
        return x
    leaves = jax.tree_util.tree_leaves(x)
    return jnp.concatenate([a.reshape(a.shape[0], -1) for a in leaves], axis=1)


def unflatten_rows(flat: jax.Array, like: Any) -> Any:
    """Inverse of ``flat_rows``: (B, D) back into the pytree ``like`` (its shapes and dtypes)."""
    if isinstance(like, jax.Array):
        return flat
    leaves, treedef = jax.tree_util.tree_flatten(like)
    out, start = [], 0
    for a in leaves:
        size = a.size // a.shape[0]
        out.append(flat[:, start : start + size].reshape(a.shape).astype(a.dtype))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _scheduler_output(denoiser: Denoiser, scheduler: Any, out: Any, x: Any) -> Any:
    """The guided output as the scheduler takes it: the learned variance kept only where it reads it."""
    if not denoiser.learned_variance() or denoiser.keeps_variance(scheduler):
        return out
    return out[..., : x.shape[-1]]


@functools.partial(
    jax.jit,
    static_argnames=("denoiser", "scheduler", "guidance", "post_step", "eta", "show_progress", "callback",
                     "callback_steps", "batch_sharding"),
)
def denoise(
    denoiser: Denoiser,
    scheduler: Any,
    params: Any,
    latents: Any,
    state: Any,
    cond: Any,
    guidance_scale: jax.Array,
    key: jax.Array,
    steps: jax.Array,
    *,
    guidance: Any = NoGuidance(),
    post_step: PostStep | None = None,
    eta: float | None = None,
    show_progress: bool = False,
    callback: FirstRows | None = None,
    callback_steps: int = 1,
    batch_sharding: NamedSharding | None = None,
) -> Any:
    """The sampling loop: initial latents (B rows: an array or a pytree) -> denoised latents, same structure.

    ``cond``: a pytree of arrays with the rows ``guidance`` expects (B, or 2B as [uncond; cond] for
    ``ClassifierFreeGuidance``). The loop starts at the state's ``step_index`` (traced: 0, or later
    to begin mid-schedule, as img2img does) and runs ``steps`` steps (traced: ``warmup`` compiles
    the very program a call runs, with 0). ``eta``: passed to schedulers whose ``step`` takes it.
    ``batch_sharding``: the rows' ``NamedSharding``. ``callback(i, t, latents)`` sees the loop's
    count (0, 1, ...), as diffusers' enumerate over its timesteps, every ``callback_steps`` steps.
    Step ``i``'s key is ``fold_in(key, i)``.
    """
    start = state.step_index
    step_kwargs = {} if eta is None else {"eta": eta}
    rows = lambda x: sharding.constrain(x, batch_sharding)
    on_rows = lambda tree: jax.tree_util.tree_map(rows, tree)
    cond = on_rows(guidance.prepare(cond))
    sample_cond = on_rows(guidance.sample_cond(cond))  # unused ones are compiled away

    def body(j, carry):
        x, state = carry
        i = start + j
        t = state.timesteps[i]
        step_key = jax.random.fold_in(key, i)
        model_input = jax.tree_util.tree_map(lambda a: scheduler.scale_model_input(state, a, t), x)
        out = guidance(denoiser, params, model_input, t, cond, guidance_scale, step_key, rows)
        out = _scheduler_output(denoiser, scheduler, out, x)
        new, state = scheduler.step(state, flat_rows(out), t, flat_rows(x), step_key, **step_kwargs)
        new = unflatten_rows(new, x)
        if post_step is not None:
            new = post_step(new, x, sample_cond, scheduler, state)
        new = on_rows(new)
        if show_progress:
            progress.tick(j)
        if callback is not None:
            seen = jax.tree_util.tree_map(lambda a: a[: callback.rows], new)
            if batch_sharding is not None:  # gathered on every device: the host callback reads one
                replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
                seen = jax.tree_util.tree_map(lambda a: sharding.constrain(a, replicated), seen)
            jax.lax.cond(j % callback_steps == 0, lambda: jax.debug.callback(callback.fn, j, t, seen), lambda: None)
        return new, state

    latents, _ = jax.lax.fori_loop(0, steps, body, (on_rows(latents), state))
    return latents


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a parameter called ``name`` (diffusers' way of probing schedulers)."""
    return name in inspect.signature(fn).parameters


_COMPILE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxgen_compile_only", default=False)


@contextlib.contextmanager
def compile_only() -> Iterator[None]:
    """Within this block (this thread and context only), pipelines run their sampling loops with zero
    steps: every program a call runs is compiled (and the loop's is the very one a real call reuses:
    its step count is traced), nothing is sampled. ``warmup`` is a pipeline call inside this block."""
    token = _COMPILE_ONLY.set(True)
    try:
        yield
    finally:
        _COMPILE_ONLY.reset(token)


def is_compile_only() -> bool:
    """Whether the caller runs inside ``compile_only()``."""
    return _COMPILE_ONLY.get()
