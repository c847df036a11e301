"""DDIMScheduler: denoising diffusion implicit models (Song et al. 2021), diffusers 0.42 semantics."""

from __future__ import annotations

from typing import Literal, Sequence

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
    noise_from_original_sample,
    predicted_noise,
    predicted_original_sample,
    register_config,
    threshold_sample,
)
from .ddpm import leading_linspace_trailing


@flax.struct.dataclass
class DDIMSchedulerState(SchedulerState):
    """timesteps (N,) int32, step_index () int32, alphas_cumprod (T,) float32,
    final_alpha_cumprod () float32 (alpha_bar used past the last timestep)."""

    alphas_cumprod: jax.Array
    final_alpha_cumprod: jax.Array


class DDIMScheduler(BaseScheduler):
    """DDIM sampling (Song et al. 2021): deterministic for eta = 0, DDPM-like for eta = 1.

    Same constructor arguments, defaults and config keys as diffusers' `DDIMScheduler`.
    """

    order = 1

    @register_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        self._check_common_config()
        betas = make_betas(self._config_dict, ("linear", "scaled_linear", "squaredcos_cap_v2"), type(self).__name__)
        self.betas = betas
        self.alphas = (np.float32(1.0) - betas).astype(np.float32)
        self.alphas_cumprod = cumprod_f32(self.alphas)
        # alpha_bar "before" timestep 0, used by the last step
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        for table in (self.betas, self.alphas, self.alphas_cumprod):
            table.setflags(write=False)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        *,
        timesteps: Sequence[int] | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> DDIMSchedulerState:
        """The state for sampling with `num_inference_steps` steps. `shape` is accepted and ignored.

        Custom `timesteps` are refused, as diffusers' DDIMScheduler has none (its step jumps by
        num_train_timesteps // num_inference_steps).
        """
        if timesteps is not None:
            raise ValueError(
                "DDIMScheduler does not support custom `timesteps` (diffusers' DDIMScheduler.set_timesteps takes"
                " only `num_inference_steps`); use DDPMScheduler or DPMSolverMultistepScheduler for custom timesteps."
            )
        if num_inference_steps is None:
            raise ValueError("`num_inference_steps` must be given.")
        n = self._check_num_inference_steps(num_inference_steps)
        return DDIMSchedulerState(
            timesteps=as_timestep_array(leading_linspace_trailing(self.config, n)),
            step_index=jnp.zeros((), jnp.int32),
            alphas_cumprod=jnp.asarray(self.alphas_cumprod),
            final_alpha_cumprod=jnp.asarray(self.final_alpha_cumprod, jnp.float32),
        )

    def step(
        self,
        state: DDIMSchedulerState,
        model_output: jax.Array,
        timestep: jax.Array | int,
        sample: jax.Array,
        key: jax.Array | None = None,
        *,
        eta: float | jax.Array = 0.0,
        use_clipped_model_output: bool = False,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, DDIMSchedulerState]:
        """One DDIM step x_t -> x_{t - T/N} (Song et al. 2021, eq. (12)).

        model_output, sample: (B, H, W, C). timestep: the current timestep (int or traced int32
        scalar); the previous one is timestep - num_train_timesteps // N, as diffusers. eta
        scales the noise (sigma_t of eq. (16)); with eta > 0 the noise is `noise` (B, H, W, C) if
        given, else drawn from `key` folded with the step index; with neither, none is added.
        Float32 inside; returns (prev_sample in sample.dtype, state with step_index + 1).
        """
        cfg = self.config
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
        x_t = sample.astype(jnp.float32)
        out = model_output.astype(jnp.float32)

        n = state.timesteps.shape[0]
        t = jnp.asarray(timestep, jnp.int32)
        prev_t = t - cfg["num_train_timesteps"] // n
        ac = state.alphas_cumprod
        alpha_prod_t = ac[t]
        alpha_prod_prev = jnp.where(prev_t >= 0, ac[jnp.maximum(prev_t, 0)], state.final_alpha_cumprod)
        beta_prod_t = 1.0 - alpha_prod_t

        # predicted x_0 ("predicted x_0" of eq. (12)) and epsilon, with x_t = alpha_t x_0 + sigma_t eps.
        # Each conversion gets sqrt ops of its own, not shared ones: XLA rewrites y / sqrt(a) into
        # y * rsqrt(a) (different last bits) only where that sqrt has no other user, and sharing would
        # change which divisions it rewrites, hence the results.
        def alpha_sigma() -> tuple[jax.Array, jax.Array]:
            return jnp.sqrt(alpha_prod_t), jnp.sqrt(beta_prod_t)

        x0 = predicted_original_sample(cfg["prediction_type"], out, x_t, *alpha_sigma())
        eps = predicted_noise(cfg["prediction_type"], out, x_t, *alpha_sigma())
        if cfg["thresholding"]:
            x0 = threshold_sample(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
        elif cfg["clip_sample"]:
            x0 = jnp.clip(x0, -cfg["clip_sample_range"], cfg["clip_sample_range"])

        # sigma_t(eta), eq. (16)
        variance = (1.0 - alpha_prod_prev) / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_prev)
        std = eta * jnp.sqrt(variance)
        if use_clipped_model_output:  # epsilon consistent with the clipped x_0
            eps = noise_from_original_sample(x0, x_t, *alpha_sigma())

        # x_{t-1} = sqrt(a_prev) x_0 + sqrt(1 - a_prev - sigma_t^2) eps + sigma_t z, eq. (12)
        direction = jnp.sqrt(1.0 - alpha_prod_prev - std**2) * eps
        prev_sample = jnp.sqrt(alpha_prod_prev) * x0 + direction
        static_zero_eta = isinstance(eta, (int, float)) and eta <= 0
        if not static_zero_eta:
            z = draw_noise(key, noise, state.step_index, x_t.shape)
            if z is not None:
                prev_sample = prev_sample + std * z

        return prev_sample.astype(sample.dtype), state.replace(step_index=state.step_index + 1)
