"""The compiled sampling loop every pipeline shares, and the thin adapters that feed it.

``denoise`` is one XLA program per (denoiser, scheduler, shapes, step count, guidance on/off):
``lax.fori_loop`` over the steps with the scheduler state in the carry, classifier-free guidance as
one batched call, no host round trip per step. A ``Denoiser`` is the model-specific part: how to
call the model on (latents, timestep, conditioning) and how to turn its output, guided, into what
the scheduler steps with (epsilon with or without a learned variance). N schedulers and M models
cost N + M pieces of code.

Rows and devices: the batch is split over the mesh's ``data`` axis. With guidance, the
conditioning arrives as [unconditional rows; conditional rows] (as diffusers concatenates it), and
the loop interleaves it (u0, c0, u1, c1, ...) so that both halves of a sample sit on the same
device and nothing moves between devices inside the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxgen import sharding
from jaxgen.pipelines import progress

__all__ = ["Denoiser", "denoise", "FirstRows", "run_denoise", "guidance_rows", "accepts"]


class Denoiser:
    """A model adapter for ``denoise``. Subclasses are frozen dataclasses (hashable: a static jit argument).

    ``predict(params, model_input, timestep, cond)``: model_input (N, h, w, C), timestep (N,),
    cond a pytree of (N, ...) arrays -> the model's output (N, h, w, C') in float32.
    ``guide(uncond, text, scale)``: the two halves' outputs -> the guided output.
    ``scheduler_input(output, latent_channels, scheduler)``: what the scheduler's step takes.
    ``post_step(latents, previous, cond)``: the latents after a step, given those before it and the
    conditioning of each sample (one row per latent row, the conditional half with guidance);
    identity by default (inpainting blends the known region back in here).
    """

    def predict(self, params: Any, model_input: jax.Array, timestep: jax.Array, cond: Any) -> jax.Array:
        raise TypeError(f"{type(self).__name__} must define predict()")

    def guide(self, uncond: jax.Array, text: jax.Array, scale: jax.Array) -> jax.Array:
        """Classifier-free guidance, Ho & Salimans (2022): uncond + s (text - uncond), every channel."""
        return uncond + scale * (text - uncond)

    def scheduler_input(self, output: jax.Array, latent_channels: int, scheduler: Any) -> jax.Array:
        """Epsilon only: a learned variance (2x the latent channels) is dropped."""
        return output[..., :latent_channels] if output.shape[-1] == 2 * latent_channels else output

    def post_step(self, latents: jax.Array, previous: jax.Array, cond: Any) -> jax.Array:
        """After each scheduler step: the new latents (B, h, w, C), by default unchanged."""
        return latents


def _cfg_pairs(x: jax.Array) -> jax.Array:
    """[uncond rows; cond rows] (2B, ...) -> (2B, ...) ordered u0, c0, u1, c1, ..."""
    b = x.shape[0] // 2
    return jnp.swapaxes(x.reshape((2, b) + x.shape[1:]), 0, 1).reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class FirstRows:
    """A step callback ``fn(i, t, latents)`` given only the first ``rows`` rows (no padding rows).

    Hashable by value, so the compiled loop is reused by every call with the same ``fn`` and rows.
    """

    fn: Callable
    rows: int


@functools.partial(
    jax.jit,
    static_argnames=("denoiser", "scheduler", "do_cfg", "eta", "show_progress", "callback", "callback_steps",
                     "batch_sharding"),
)
def denoise(
    denoiser: Denoiser,
    scheduler: Any,
    params: Any,
    latents: jax.Array,
    state: Any,
    cond: Any,
    guidance_scale: jax.Array,
    key: jax.Array,
    *,
    do_cfg: bool,
    eta: float | None,
    show_progress: bool,
    callback: FirstRows | None,
    callback_steps: int,
    steps: jax.Array | None = None,
    batch_sharding: NamedSharding | None = None,
) -> jax.Array:
    """The sampling loop: initial latents (B, h, w, C) -> denoised latents (B, h, w, C).

    ``cond``: pytree of arrays with B rows, or 2B with guidance ([uncond; cond]). The loop starts
    at the state's ``step_index`` (traced: 0, or later to begin mid-schedule, as img2img does).
    ``steps``: how many steps to run, traced (``warmup`` compiles the very program a call runs,
    with 0); None runs the rest of the schedule. ``batch_sharding``: the rows' ``NamedSharding``.
    The ``callback`` sees the loop's count (0, 1, ...), as diffusers' enumerate over its timesteps.
    """
    start = state.step_index
    num_steps = state.timesteps.shape[0] - start if steps is None else steps
    latent_channels = latents.shape[-1]
    step_kwargs = {} if eta is None else {"eta": eta}
    rows = lambda x: sharding.constrain(x, batch_sharding)
    cond = jax.tree_util.tree_map(lambda x: rows(_cfg_pairs(x) if do_cfg else x), cond)
    # each sample's own conditioning for post_step (its conditional row; unused ones are compiled away)
    sample_cond = jax.tree_util.tree_map(lambda x: rows(x[1::2]), cond) if do_cfg else cond

    def body(j, carry):
        latents, state = carry
        i = start + j
        t = state.timesteps[i]
        model_input = rows(jnp.repeat(latents, 2, axis=0)) if do_cfg else latents
        model_input = scheduler.scale_model_input(state, model_input, t)
        timestep = jnp.broadcast_to(t, (model_input.shape[0],))
        output = denoiser.predict(params, model_input, timestep, cond).astype(jnp.float32)
        if do_cfg:
            pairs = output.reshape((-1, 2) + output.shape[1:])
            output = denoiser.guide(pairs[:, 0], pairs[:, 1], guidance_scale)
        output = denoiser.scheduler_input(output, latent_channels, scheduler)
        previous = latents
        latents, state = scheduler.step(state, output, t, latents, jax.random.fold_in(key, i), **step_kwargs)
        latents = rows(denoiser.post_step(latents, previous, sample_cond))
        if show_progress:
            progress.tick(j)
        if callback is not None:
            seen = latents[: callback.rows]
            if batch_sharding is not None:  # gathered on every device: the host callback reads one
                seen = sharding.constrain(seen, NamedSharding(batch_sharding.mesh, PartitionSpec()))
            jax.lax.cond(j % callback_steps == 0, lambda: jax.debug.callback(callback.fn, j, t, seen), lambda: None)
        return latents, state

    latents, _ = jax.lax.fori_loop(0, num_steps, body, (rows(latents), state))
    return latents


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a parameter called ``name`` (diffusers' way of probing schedulers)."""
    return name in inspect.signature(fn).parameters


def guidance_rows(pipe: Any, positive: Any, negative: Any, rows: int, dtype: Any = None) -> jax.Array:
    """Conditioning rows for ``denoise``: each half padded to ``rows``, [negative; positive] when
    ``negative`` is given (guidance on), split over ``pipe.mesh``'s data axis."""
    host = lambda x: sharding.pad_rows(sharding.gather_rows(x) if isinstance(x, jax.Array) else np.asarray(x), rows)
    out = host(positive) if negative is None else np.concatenate([host(negative), host(positive)])
    if dtype is not None:
        out = out.astype(np.dtype(dtype))
    return pipe._shard_rows(out, out.shape[0])


def run_denoise(
    pipe: Any,
    denoiser: Denoiser,
    params: Any,
    latents: jax.Array,
    state: Any,
    cond: Any,
    guidance_scale: float,
    key: jax.Array,
    *,
    eta: float = 0.0,
    callback: Callable | None = None,
    callback_steps: int = 1,
    rows: int,
    compile_only: bool = False,
) -> jax.Array:
    """Run ``denoise`` for a pipeline: its mesh, its progress bar, its scheduler; ``rows`` unpadded rows.

    Must be called inside ``pipe._mesh_context()``. ``compile_only`` runs zero steps (warmup).
    The loop runs from the state's ``step_index`` to the end of its timesteps.
    """
    num_steps = int(state.timesteps.shape[0]) - int(state.step_index)
    show_progress = not pipe._progress_bar_config.get("disable", False)
    run = functools.partial(
        denoise, denoiser, pipe.scheduler, params, latents, state, cond, jnp.float32(guidance_scale), key,
        do_cfg=guidance_scale > 1.0, eta=float(eta) if accepts(pipe.scheduler.step, "eta") else None,
        show_progress=show_progress, callback=None if callback is None else FirstRows(callback, rows),
        callback_steps=callback_steps, steps=jnp.int32(0 if compile_only else num_steps),
        batch_sharding=sharding.batch_sharding(pipe.mesh),
    )
    if show_progress and not compile_only:
        with progress.active(pipe._progress(num_steps)):
            return jax.block_until_ready(run())
    return run()
