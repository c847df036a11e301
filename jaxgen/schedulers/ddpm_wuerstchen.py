"""DDPMWuerstchenScheduler: Würstchen's DDPM in continuous time, diffusers 0.42 semantics.

Time runs from 1 (noise) to 0 (data); the model is fed the time itself (Würstchen's noise ratio r). The
schedule is the cosine one, alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2)^2 / cos(s / (1 + s) * pi / 2)^2
clamped to [1e-4, 0.9999], with t warped by ``scaler`` first. ``set_timesteps(n)`` visits linspace(1, 0, n + 1)
but its last point; custom ``timesteps`` (the prior's ``DEFAULT_STAGE_C_TIMESTEPS``) likewise run all but the
last, which is where the final step lands.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .base import BaseScheduler, SchedulerState, draw_noise, register_config

__all__ = ["DDPMWuerstchenScheduler", "DDPMWuerstchenSchedulerState", "torch_linspace"]


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch's float32 ``linspace`` bit for bit (diffusers' timesteps): step = (end - start) / (steps - 1) in float32;
    the first half counted from ``start``, the second back from ``end``, each point one fused multiply-add (as
    torch's CPU kernel rounds it; the float64 product of a float32 and a small integer is exact). np.linspace
    differs by an ulp at some points, and the model's ratio embedding multiplies t by 10000."""
    f32 = np.float32
    step = np.float64((f32(end) - f32(start)) / f32(max(steps - 1, 1)))
    i = np.arange(steps)
    head = np.float64(f32(start)) + step * i
    tail = np.float64(f32(end)) - step * (steps - 1 - i)
    return np.where(i < steps // 2, head, tail).astype(f32)


@flax.struct.dataclass
class DDPMWuerstchenSchedulerState(SchedulerState):
    """timesteps (N,) float32: the times the model is run at; prev_timesteps (N,) float32: where each step
    lands (the next time, the last one ending the chain); step_index () int32."""

    prev_timesteps: jax.Array


class DDPMWuerstchenScheduler(BaseScheduler):
    """Würstchen's DDPM sampler (ancestral steps in continuous time). Same constructor arguments, defaults and
    config keys as diffusers' ``DDPMWuerstchenScheduler``."""

    order = 1

    @register_config
    def __init__(self, scaler: float = 1.0, s: float = 0.008):
        self.scaler, self.s = float(scaler), float(s)

    def alphas_cumprod(self, t: jax.Array) -> jax.Array:
        """alpha_bar at times ``t`` (any shape) in [0, 1], float32 (diffusers' ``_alpha_cumprod``)."""
        t = jnp.asarray(t, jnp.float32)
        if self.scaler > 1:
            t = 1 - (1 - t) ** self.scaler
        elif self.scaler < 1:
            t = t**self.scaler
        s = jnp.float32(self.s)
        init = jnp.cos(s / (1 + s) * jnp.float32(math.pi) * 0.5) ** 2
        return jnp.clip(jnp.cos((t + s) / (1 + s) * jnp.float32(math.pi) * 0.5) ** 2 / init, 0.0001, 0.9999)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        *,
        timesteps: Sequence[float] | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> DDPMWuerstchenSchedulerState:
        """The state for ``num_inference_steps`` steps from t = 1 to 0, or along custom ``timesteps`` (decreasing,
        in [0, 1], at least two: every one but the last is run). ``shape`` is accepted and ignored."""
        if timesteps is None:
            if num_inference_steps is None:
                raise ValueError("`num_inference_steps` or `timesteps` must be given.")
            n = self._check_num_inference_steps(num_inference_steps)
            points = torch_linspace(1.0, 0.0, n + 1)
        else:
            points = np.asarray([float(t) for t in timesteps], np.float32)
            if points.ndim != 1 or points.shape[0] < 2:
                raise ValueError(f"`timesteps` must hold at least two times (the last is where sampling ends), got {list(points)}")
            if np.any(points < 0) or np.any(points > 1) or np.any(np.diff(points) >= 0):
                raise ValueError(f"`timesteps` must decrease strictly within [0, 1], got {[float(t) for t in points]}")
        # numpy leaves: placing them on the mesh is a transfer, where jnp.asarray would compile a copy per shape
        # (a call's bad input is then refused with nothing compiled)
        return DDPMWuerstchenSchedulerState(
            timesteps=points[:-1].copy(), step_index=np.zeros((), np.int32), prev_timesteps=points[1:].copy(),
        )

    def step(
        self,
        state: DDPMWuerstchenSchedulerState,
        model_output: jax.Array,
        timestep: jax.Array | float,
        sample: jax.Array,
        key: jax.Array | None = None,
        *,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, DDPMWuerstchenSchedulerState]:
        """One ancestral step from ``timestep`` to the state's next time: the posterior mean from the predicted
        noise ``model_output`` (same shape as ``sample``, (B, ...)), plus its standard deviation times ``noise``
        (given, or drawn from ``key`` folded with the step index) unless the next time is 0. Float32 inside;
        returns (prev_sample in sample.dtype, state with step_index + 1)."""
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
        x, eps = sample.astype(jnp.float32), model_output.astype(jnp.float32)
        prev_t = state.prev_timesteps[state.step_index]
        alpha_cumprod = self.alphas_cumprod(timestep)
        alpha_cumprod_prev = self.alphas_cumprod(prev_t)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = jnp.sqrt(1.0 / alpha) * (x - (1 - alpha) * eps / jnp.sqrt(1 - alpha_cumprod))
        z = draw_noise(key, noise, state.step_index, x.shape)
        if z is not None:
            std = jnp.sqrt((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod))
            mu = mu + jnp.where(prev_t != 0, std, 0.0) * z
        return mu.astype(sample.dtype), state.replace(step_index=state.step_index + 1)

    def add_noise(self, state: DDPMWuerstchenSchedulerState | None, original_samples: jax.Array, noise: jax.Array,
                  timesteps: jax.Array) -> jax.Array:
        """q(x_t | x_0): ``sqrt(alpha_bar(t)) x_0 + sqrt(1 - alpha_bar(t)) noise`` at times ``timesteps`` (B,)."""
        a = self.alphas_cumprod(timesteps).reshape((-1,) + (1,) * (original_samples.ndim - 1))
        out = jnp.sqrt(a) * original_samples.astype(jnp.float32) + jnp.sqrt(1 - a) * noise.astype(jnp.float32)
        return out.astype(original_samples.dtype)
