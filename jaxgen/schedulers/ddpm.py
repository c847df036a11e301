"""DDPMScheduler: ancestral sampling of Ho et al. 2020 (diffusers' `DDPMScheduler`, 0.42 semantics)."""

from __future__ import annotations

from typing import Any, Literal, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .base import (
    BaseScheduler,
    SchedulerState,
    as_timestep_array,
    cumprod_f32,
    draw_noise,
    make_betas,
    predicted_original_sample,
    register_config,
    split_learned_variance,
    threshold_sample,
)

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


@flax.struct.dataclass
class DDPMSchedulerState(SchedulerState):
    """timesteps (N,) int32, step_index () int32, alphas_cumprod (T,) float32."""

    alphas_cumprod: jax.Array


def leading_linspace_trailing(config: Any, num_inference_steps: int) -> np.ndarray:
    """The (N,) int64 timestep table of DDPM/DDIM for each `timestep_spacing` (Lin et al. 2023, Table 2)."""
    n_train, n = config["num_train_timesteps"], num_inference_steps
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = n_train // n
        return (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + config["steps_offset"]
    ratio = n_train / n  # trailing
    return np.round(np.arange(n_train, 0, -ratio)).astype(np.int64) - 1


class DDPMScheduler(BaseScheduler):
    """Denoising diffusion probabilistic models (Ho et al. 2020), with learned variances (Nichol & Dhariwal 2021).

    Same constructor arguments, defaults and config keys as diffusers' `DDPMScheduler`.
    """

    order = 1

    @register_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        variance_type: Literal[
            "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"
        ] = "fixed_small",
        clip_sample: bool = True,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_common_config()
        # None (e.g. from a DPM-Solver config) acts as fixed_small, as in diffusers
        if variance_type is not None and variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type {variance_type!r} is not supported; choose one of {list(VARIANCE_TYPES)}")
        schedules = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
        betas = make_betas(self._config_dict, schedules, type(self).__name__)
        self.betas = betas
        self.alphas = (np.float32(1.0) - betas).astype(np.float32)
        self.alphas_cumprod = cumprod_f32(self.alphas)
        for table in (self.betas, self.alphas, self.alphas_cumprod):
            table.setflags(write=False)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        *,
        timesteps: Sequence[int] | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> DDPMSchedulerState:
        """The state for sampling with `num_inference_steps` steps, or with custom descending `timesteps`.

        `shape` (the sample shape) is accepted for a uniform API and ignored.
        """
        n_train = self.config["num_train_timesteps"]
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if timesteps is not None:
            table = np.asarray(list(timesteps), dtype=np.int64)
            if table.ndim != 1 or table.size == 0:
                raise ValueError("`timesteps` must be a non-empty sequence of ints.")
            if np.any(table[1:] >= table[:-1]):
                raise ValueError("`custom_timesteps` must be in descending order.")
            if table[0] >= n_train:
                raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {n_train}.")
            if table[-1] < 0:
                raise ValueError(f"`timesteps` must be non-negative, got {table[-1]}.")
        else:
            table = leading_linspace_trailing(self.config, self._check_num_inference_steps(num_inference_steps))
        return DDPMSchedulerState(
            timesteps=as_timestep_array(table),
            step_index=jnp.zeros((), jnp.int32),
            alphas_cumprod=jnp.asarray(self.alphas_cumprod),
        )

    def step(
        self,
        state: DDPMSchedulerState,
        model_output: jax.Array,
        timestep: jax.Array | int,
        sample: jax.Array,
        key: jax.Array | None = None,
        *,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, DDPMSchedulerState]:
        """One ancestral step x_t -> x_{t-1} ~ N(mu, var) (Ho et al. 2020, eq. (6)-(7)).

        model_output: (B, H, W, C), or (B, H, W, 2C) for learned variances (the variance half
        last). timestep: the current timestep (int or traced int32 scalar); the previous one is
        read at `state.step_index + 1`. The noise is `noise` (B, H, W, C) if given, else drawn
        from `key` folded with the step index; with neither, no noise is added and the step
        returns the posterior mean mu. No noise at timestep 0, as diffusers. Float32 inside;
        returns (prev_sample in sample.dtype, state with step_index + 1).
        """
        cfg = self.config
        model_output, predicted_variance = split_learned_variance(model_output, sample, self.config["variance_type"])
        x_t = sample.astype(jnp.float32)
        out = model_output.astype(jnp.float32)

        t = jnp.asarray(timestep, jnp.int32)
        i = state.step_index
        prev_t = self.previous_timestep(state)
        ac = state.alphas_cumprod
        alpha_prod_t = ac[t]
        alpha_prod_prev = jnp.where(prev_t >= 0, ac[jnp.maximum(prev_t, 0)], 1.0)
        beta_prod_t = 1.0 - alpha_prod_t
        beta_prod_prev = 1.0 - alpha_prod_prev
        current_alpha = alpha_prod_t / alpha_prod_prev
        current_beta = 1.0 - current_alpha

        # predicted x_0, eq. (15), with x_t = alpha_t x_0 + sigma_t eps
        alpha_t, sigma_t = jnp.sqrt(alpha_prod_t), jnp.sqrt(beta_prod_t)
        x0 = predicted_original_sample(cfg["prediction_type"], out, x_t, alpha_t, sigma_t)
        if cfg["thresholding"]:
            x0 = threshold_sample(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
        elif cfg["clip_sample"]:
            x0 = jnp.clip(x0, -cfg["clip_sample_range"], cfg["clip_sample_range"])

        # posterior mean mu(x_t, x_0), eq. (7)
        x0_coeff = jnp.sqrt(alpha_prod_prev) * current_beta / beta_prod_t
        xt_coeff = jnp.sqrt(current_alpha) * beta_prod_prev / beta_prod_t
        prev_sample = x0_coeff * x0 + xt_coeff * x_t

        eps = draw_noise(key, noise, i, x_t.shape)
        if eps is not None:
            std = self._std(alpha_prod_t, alpha_prod_prev, current_beta, predicted_variance)
            prev_sample = prev_sample + jnp.where(t > 0, std * eps, 0.0)

        return prev_sample.astype(sample.dtype), state.replace(step_index=i + 1)

    def _std(self, alpha_prod_t, alpha_prod_prev, current_beta, predicted_variance):
        """Standard deviation of x_{t-1} for each `variance_type` (scalar, or (B, H, W, C) if learned)."""
        # posterior variance beta~_t, eq. (7); clamped because its log is taken
        variance = jnp.maximum((1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t) * current_beta, 1e-20)
        kind = self.config["variance_type"]
        if kind in ("fixed_small", None):
            return jnp.sqrt(variance)
        if kind == "fixed_small_log":
            return jnp.exp(0.5 * jnp.log(variance))
        if kind == "fixed_large":
            return jnp.sqrt(current_beta)
        if kind == "fixed_large_log":
            # GLIDE's max_log: std = exp(log(beta_t) / 2). (diffusers takes sqrt(log(beta_t)): NaN.)
            return jnp.exp(0.5 * jnp.log(current_beta))
        v = predicted_variance.astype(jnp.float32)
        if kind == "learned":
            return jnp.sqrt(v)
        # learned_range: log-variance interpolated between log beta~_t and log beta_t (Nichol & Dhariwal 2021, eq. (15))
        frac = (v + 1.0) / 2.0
        log_variance = frac * jnp.log(current_beta) + (1.0 - frac) * jnp.log(variance)
        return jnp.exp(0.5 * log_variance)

    def previous_timestep(self, state: DDPMSchedulerState) -> jax.Array:
        """The timestep the next `step` goes to (-1 after the last), int32 scalar."""
        i, n = state.step_index, state.timesteps.shape[0]
        return jnp.where(i + 1 < n, state.timesteps[jnp.minimum(i + 1, n - 1)], -1)
