"""UnCLIPScheduler: the karlo / Kandinsky 2.x prior's DDPM variant (diffusers' `UnCLIPScheduler`, 0.42 semantics).

It differs from `DDPMScheduler` in three places, all kept here bit for bit:

- the timestep table is `round(k (T - 1) / (N - 1))`, k = N-1, ..., 0: it always spans [T - 1, 0];
- a step to the adjacent timestep (t -> t - 1) uses the trained `betas[t]`; a longer step
  t -> s recomputes beta = 1 - alpha_bar_t / alpha_bar_s; alpha is then 1 - beta;
- `learned_range` interpolates log-variances without clamping the posterior one.

diffusers' pipelines call `step(..., prev_timestep=timesteps[i + 1])` and pass None on the last
step, which the scheduler reads as t - 1. Here the step reads the same from the state: the next
entry of the timestep table, or t - 1 after the last, so the shared `lax.fori_loop` drives it as is.
"""

from __future__ import annotations

from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .base import (
    BaseScheduler,
    SchedulerState,
    as_timestep_array,
    betas_for_alpha_bar,
    cumprod_f32,
    draw_noise,
    predicted_original_sample,
    register_config,
    split_learned_variance,
)

__all__ = ["UnCLIPScheduler", "UnCLIPSchedulerState"]

VARIANCE_TYPES = ("fixed_small_log", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample")
BETA_SCHEDULES = ("squaredcos_cap_v2",)


@flax.struct.dataclass
class UnCLIPSchedulerState(SchedulerState):
    """timesteps (N,) int32, step_index () int32, betas (T,) float32, alphas_cumprod (T,) float32."""

    betas: jax.Array
    alphas_cumprod: jax.Array


class UnCLIPScheduler(BaseScheduler):
    """DDPM ancestral sampling (Ho et al. 2020) with the step-skipping betas of karlo's unCLIP.

    Same constructor arguments, defaults and config keys as diffusers' `UnCLIPScheduler`:
    `variance_type` "fixed_small_log" or "learned_range" (Nichol & Dhariwal 2021), `prediction_type`
    "epsilon" or "sample", `beta_schedule` "squaredcos_cap_v2" only. Unsupported values raise
    ValueError naming the argument (diffusers raises only at `step` for the first two).
    """

    order = 1

    @register_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        variance_type: Literal["fixed_small_log", "learned_range"] = "fixed_small_log",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: Literal["epsilon", "sample"] = "epsilon",
        beta_schedule: Literal["squaredcos_cap_v2"] = "squaredcos_cap_v2",
    ) -> None:
        for name, value, allowed in (
            ("beta_schedule", beta_schedule, BETA_SCHEDULES),
            ("variance_type", variance_type, VARIANCE_TYPES),
            ("prediction_type", prediction_type, PREDICTION_TYPES),
        ):
            if value not in allowed:
                raise ValueError(f"UnCLIPScheduler only supports `{name}` in {list(allowed)}, got {value!r}")
        self.betas = betas_for_alpha_bar(num_train_timesteps)  # GLIDE's cosine schedule
        self.alphas = (np.float32(1.0) - self.betas).astype(np.float32)
        self.alphas_cumprod = cumprod_f32(self.alphas)
        for table in (self.betas, self.alphas, self.alphas_cumprod):
            table.setflags(write=False)

    def set_timesteps(self, num_inference_steps: int, *, shape: tuple[int, ...] | None = None) -> UnCLIPSchedulerState:
        """The state for sampling with `num_inference_steps` (2 to num_train_timesteps) steps.

        Timesteps (N,) int32: round(k (T - 1) / (N - 1)) for k = N-1, ..., 0, as diffusers (karlo's
        step ratio). N = 1 raises ValueError (diffusers divides by zero). `shape` (the sample shape)
        is accepted for a uniform API and ignored.
        """
        n = self._check_num_inference_steps(num_inference_steps)
        if n < 2:
            raise ValueError(f"UnCLIPScheduler needs `num_inference_steps` >= 2, got {n}")
        step_ratio = (self.config["num_train_timesteps"] - 1) / (n - 1)
        table = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64)
        return UnCLIPSchedulerState(
            timesteps=as_timestep_array(table),
            step_index=jnp.zeros((), jnp.int32),
            betas=jnp.asarray(self.betas),
            alphas_cumprod=jnp.asarray(self.alphas_cumprod),
        )

    def previous_timestep(self, state: UnCLIPSchedulerState, timestep: jax.Array | int) -> jax.Array:
        """The timestep the step at `timestep` goes to, int32 scalar: the next entry of the table,
        or `timestep - 1` after the last entry (diffusers' default for `prev_timestep=None`)."""
        i, n = state.step_index, state.timesteps.shape[0]
        t = jnp.asarray(timestep, jnp.int32)
        return jnp.where(i + 1 < n, state.timesteps[jnp.minimum(i + 1, n - 1)], t - 1)

    def step(
        self,
        state: UnCLIPSchedulerState,
        model_output: jax.Array,
        timestep: jax.Array | int,
        sample: jax.Array,
        key: jax.Array | None = None,
        *,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, UnCLIPSchedulerState]:
        """One ancestral step x_t -> x_s ~ N(mu, sigma^2), s the previous timestep (Ho et al. 2020, eq. (6)-(7)).

        sample: (B, ..., C), e.g. the prior's image embedding (B, D) or an image (B, H, W, C).
        model_output: like sample, or (..., 2C) for learned_range (the variance half last).
        timestep: the current timestep t (int or traced int32 scalar); s is read from the state
        (`previous_timestep`). The noise is `noise` (shaped like sample) if given, else drawn from
        `key` folded with the step index; with neither the step returns the mean mu. No noise at
        t = 0, as diffusers. Float32 inside; returns (x_s in sample.dtype, state with step_index + 1).
        """
        cfg = self.config
        model_output, predicted_variance = split_learned_variance(model_output, sample, cfg["variance_type"])
        x_t = sample.astype(jnp.float32)
        out = model_output.astype(jnp.float32)

        t = jnp.asarray(timestep, jnp.int32)
        i = state.step_index
        s = self.previous_timestep(state, t)
        alpha_bar_t = state.alphas_cumprod[t]
        alpha_bar_s = jnp.where(s >= 0, state.alphas_cumprod[jnp.maximum(s, 0)], 1.0)
        # beta of the (possibly skipping) step t -> s: the trained one for s = t - 1
        beta = jnp.where(s == t - 1, state.betas[t], 1.0 - alpha_bar_t / alpha_bar_s)
        alpha = 1.0 - beta

        # predicted x_0, eq. (15), with x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; clipped
        alpha_t, sigma_t = jnp.sqrt(alpha_bar_t), jnp.sqrt(1.0 - alpha_bar_t)
        x0 = predicted_original_sample(cfg["prediction_type"], out, x_t, alpha_t, sigma_t)
        if cfg["clip_sample"]:
            x0 = jnp.clip(x0, -cfg["clip_sample_range"], cfg["clip_sample_range"])

        # posterior mean mu(x_t, x_0), eq. (7)
        x0_coeff = jnp.sqrt(alpha_bar_s) * beta / (1.0 - alpha_bar_t)
        xt_coeff = jnp.sqrt(alpha) * (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t)
        prev_sample = x0_coeff * x0 + xt_coeff * x_t

        eps = draw_noise(key, noise, i, x_t.shape)
        if eps is not None:
            sigma = self._std(alpha_bar_t, alpha_bar_s, beta, predicted_variance)
            prev_sample = prev_sample + jnp.where(t > 0, sigma * eps, 0.0)

        return prev_sample.astype(sample.dtype), state.replace(step_index=i + 1)

    def _std(
        self, alpha_bar_t: jax.Array, alpha_bar_s: jax.Array, beta: jax.Array, predicted_variance: jax.Array | None
    ) -> jax.Array:
        """sigma of x_s: a scalar for fixed_small_log, (B, ..., C) for learned_range."""
        # posterior variance beta~ = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta, eq. (7)
        variance = (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t) * beta
        if self.config["variance_type"] == "fixed_small_log":
            return jnp.exp(0.5 * jnp.log(jnp.maximum(variance, 1e-20)))
        # learned_range: log-variance interpolated between log beta~ and log beta (Nichol & Dhariwal 2021, eq. (15))
        frac = (predicted_variance.astype(jnp.float32) + 1.0) / 2.0
        log_variance = frac * jnp.log(beta) + (1.0 - frac) * jnp.log(variance)
        return jnp.exp(0.5 * log_variance)
