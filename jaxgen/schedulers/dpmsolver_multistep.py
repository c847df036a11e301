"""DPMSolverMultistepScheduler: multistep DPM-Solver(++) (Lu et al. 2022a, 2022b), diffusers 0.42 semantics.

The step reads sigmas by `state.step_index` and keeps the last `solver_order` converted model
outputs in a fixed-shape buffer, so a whole sampling loop runs inside `jax.lax.fori_loop`; the
per-step choice of solver order (warm-up steps, lower order at the end) is a `lax.switch`.
"""

from __future__ import annotations

import math
import warnings
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
    expand_to,
    make_betas,
    noise_from_original_sample,
    predicted_noise,
    predicted_original_sample,
    register_config,
    threshold_sample,
)

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")


@flax.struct.dataclass
class DPMSolverMultistepSchedulerState(SchedulerState):
    """timesteps (N,) int32, step_index () int32, plus

    sigmas: (N + 1,) float32, sigma_i = sqrt((1 - a_i) / a_i) of each timestep, then the final sigma.
    model_outputs: (solver_order, *sample_shape) float32, the last converted model outputs (x_0 for
        DPM-Solver++, epsilon for DPM-Solver), oldest first.
    lower_order_nums: () int32, how many outputs the buffer holds so far (warm-up, capped at the order).
    """

    sigmas: jax.Array
    model_outputs: jax.Array
    lower_order_nums: jax.Array


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep (float64) of each sigma, by linear interpolation in log sigma."""
    sigma = np.asarray(sigma, np.float64)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma[None, :] - log_sigmas[:, None]  # (T, n)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return (1 - w) * low + w * high


class DPMSolverMultistepScheduler(BaseScheduler):
    """Multistep DPM-Solver(++) of order 1-3, ODE and SDE variants.

    Same constructor arguments, defaults and config keys as diffusers' `DPMSolverMultistepScheduler`.
    `order` is 1, as diffusers (one model call per step).
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
        solver_order: int = 2,
        prediction_type: Literal["epsilon", "sample", "v_prediction", "flow_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Literal["learned", "learned_range"] | None = None,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ):
        self._check_config()
        betas = make_betas(self._config_dict, ("linear", "scaled_linear", "squaredcos_cap_v2"), type(self).__name__)
        alphas_cumprod = cumprod_f32(np.float32(1.0) - betas)
        if rescale_betas_zero_snr:
            # close to 0 without being 0, so the first sigma is finite (fp16's smallest subnormal)
            alphas_cumprod[-1] = 2.0**-24
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        # VP schedule: alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t), lambda_t = log(alpha_t / sigma_t)
        alpha_t = np.sqrt(alphas_cumprod)
        sigma_t = np.sqrt(np.float32(1.0) - alphas_cumprod)
        self.lambda_t = (np.log(alpha_t) - np.log(sigma_t)).astype(np.float32)
        self.train_sigmas = np.sqrt((np.float32(1.0) - alphas_cumprod) / alphas_cumprod).astype(np.float32)
        for table in (self.betas, self.alphas_cumprod, self.lambda_t, self.train_sigmas):
            table.setflags(write=False)

    def _check_config(self) -> None:
        """diffusers' checks of the constructor's arguments (and its renames of legacy DEIS / UniPC values)."""
        cfg = self.config
        if cfg["use_beta_sigmas"] + cfg["use_exponential_sigmas"] + cfg["use_karras_sigmas"] > 1:
            raise ValueError(
                "Only one of `config.use_beta_sigmas`, `config.use_exponential_sigmas`, `config.use_karras_sigmas`"
                " can be used."
            )
        # legacy names that diffusers maps onto this scheduler (DEIS / UniPC configs)
        if cfg["algorithm_type"] == "deis":
            self._register(algorithm_type="dpmsolver++")
        if cfg["solver_type"] in ("logrho", "bh1", "bh2"):
            self._register(solver_type="midpoint")
        cfg = self.config
        algorithm_type, solver_type, solver_order = cfg["algorithm_type"], cfg["solver_type"], cfg["solver_order"]
        final_sigmas_type, prediction_type = cfg["final_sigmas_type"], cfg["prediction_type"]
        timestep_spacing, time_shift_type = cfg["timestep_spacing"], cfg["time_shift_type"]
        name = type(self).__name__
        if algorithm_type not in ALGORITHM_TYPES:
            raise ValueError(
                f"algorithm_type {algorithm_type!r} is not implemented for {name};"
                f" choose one of {list(ALGORITHM_TYPES)}"
            )
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type {solver_type!r} is not implemented for {name}; choose 'midpoint' or 'heun'")
        if algorithm_type in ("dpmsolver", "sde-dpmsolver"):
            warnings.warn(
                f"algorithm_type {algorithm_type} is deprecated in diffusers; choose `dpmsolver++` or"
                " `sde-dpmsolver++` instead",
                FutureWarning,
                stacklevel=3,
            )
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(
                f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` {algorithm_type}."
                " Please choose `sigma_min` instead."
            )
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"`final_sigmas_type` must be one of 'zero', or 'sigma_min', but got {final_sigmas_type}")
        if solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
        if algorithm_type == "sde-dpmsolver" and solver_order == 3:
            raise ValueError(
                "algorithm_type 'sde-dpmsolver' has no third-order update (diffusers fails at its third step);"
                " use solver_order 1 or 2, or 'sde-dpmsolver++'"
            )
        predictions = ("epsilon", "sample", "v_prediction")
        predictions += ("flow_prediction",) if algorithm_type.endswith("++") else ()
        if prediction_type not in predictions:
            raise ValueError(
                f"prediction_type given as {prediction_type} must be one of {', '.join(f'`{p}`' for p in predictions)}"
                f" for the {name} with algorithm_type {algorithm_type}."
            )
        if timestep_spacing not in ("linspace", "leading", "trailing"):
            raise ValueError(
                f"{timestep_spacing} is not supported. Please make sure to choose one of 'linspace', 'leading' or"
                " 'trailing'."
            )
        if time_shift_type != "exponential":
            raise ValueError(f"time_shift_type must be 'exponential', got {time_shift_type!r}")
        if cfg["use_beta_sigmas"]:
            import scipy.stats  # noqa: F401  (a dependency of jax; fail early if missing)


    # -- host side ---------------------------------------------------------------------------

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """(n,) int64 timesteps for `timestep_spacing`, below the lambda_min_clipped cut."""
        cfg = self.config
        n_train = cfg["num_train_timesteps"]
        # clipping the smallest lambda(t) matters for the cosine schedule
        clipped = int(np.searchsorted(self.lambda_t[::-1], cfg["lambda_min_clipped"]))
        last = n_train - clipped
        if cfg["timestep_spacing"] == "linspace":
            return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        if cfg["timestep_spacing"] == "leading":
            ratio = last // (n + 1)
            table = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
            return table + cfg["steps_offset"]
        ratio = n_train / n  # trailing
        return np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1

    def _schedule(self, table: np.ndarray, n: int, flow_shift: float) -> tuple[np.ndarray, np.ndarray]:
        """(sigmas (n,), timesteps (n,)) for the configured sigma schedule, from the spaced timestep ``table``."""
        cfg = self.config
        n_train = cfg["num_train_timesteps"]
        sigmas = self.train_sigmas  # (T,) float32
        log_sigmas = np.log(sigmas)
        round_t = cfg["beta_schedule"] != "squaredcos_cap_v2"
        if cfg["use_karras_sigmas"]:
            # Karras et al. 2022, eq. (5), rho = 7
            lo, hi, rho = float(sigmas[0]), float(sigmas[-1]), 7.0
            ramp = np.linspace(0, 1, n)
            sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
            table = _sigma_to_t(sigmas, log_sigmas)
            table = table.round() if round_t else table
        elif cfg["use_lu_lambdas"]:
            # uniform in log sigma (= -lambda), Lu et al. 2022a
            lo, hi = float(log_sigmas[0]), float(log_sigmas[-1])
            sigmas = np.exp(hi + np.linspace(0, 1, n) * (lo - hi))
            table = _sigma_to_t(sigmas, log_sigmas)
            table = table.round() if round_t else table
        elif cfg["use_exponential_sigmas"]:
            sigmas = np.exp(np.linspace(math.log(float(sigmas[-1])), math.log(float(sigmas[0])), n))
            table = _sigma_to_t(sigmas, log_sigmas)
        elif cfg["use_beta_sigmas"]:
            # Lee et al. 2024, "Beta sampling is all you need", alpha = beta = 0.6
            import scipy.stats

            lo, hi = float(sigmas[0]), float(sigmas[-1])
            ppf = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)
            sigmas = np.array([lo + p * (hi - lo) for p in ppf])
            table = _sigma_to_t(sigmas, log_sigmas)
        elif cfg["use_flow_sigmas"]:
            s = 1.0 - np.linspace(1, 1 / n_train, n + 1)
            sigmas = np.flip(flow_shift * s / (1 + (flow_shift - 1) * s))[:-1].copy()
            table = sigmas * n_train
        else:
            sigmas = np.interp(table, np.arange(0, len(sigmas)), sigmas)

        return sigmas, table

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        *,
        timesteps: Sequence[int] | None = None,
        shape: tuple[int, ...] | None = None,
        mu: float | None = None,
    ) -> DPMSolverMultistepSchedulerState:
        """The state for `num_inference_steps` steps (or custom `timesteps`) on samples of `shape`.

        shape: the sample shape, channels last (B, H, W, C); required, it sizes the buffer of
        previous model outputs. mu: exponent of the dynamic shift of flow sigmas (flow_shift =
        exp(mu)), used for this call only (diffusers also writes it into its config).
        """
        cfg = self.config
        n_train = cfg["num_train_timesteps"]
        flow_shift = cfg["flow_shift"]
        if mu is not None:
            if not (cfg["use_dynamic_shifting"] and cfg["time_shift_type"] == "exponential"):
                raise ValueError("`mu` needs `use_dynamic_shifting=True` and `time_shift_type='exponential'`.")
            flow_shift = float(np.exp(mu))
        if num_inference_steps is None and timesteps is None:
            raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps`.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            for flag, text in (
                ("use_karras_sigmas", "Cannot use `timesteps` with `config.use_karras_sigmas = True`"),
                ("use_lu_lambdas", "Cannot use `timesteps` with `config.use_lu_lambdas = True`"),
                ("use_exponential_sigmas", "Cannot set `timesteps` with `config.use_exponential_sigmas = True`."),
                ("use_beta_sigmas", "Cannot set `timesteps` with `config.use_beta_sigmas = True`."),
                ("use_flow_sigmas", "Cannot set `timesteps` with `config.use_flow_sigmas = True`."),
            ):
                if cfg[flag]:
                    raise ValueError(text)
        if shape is None:
            raise ValueError(
                "`shape` (the sample shape, channels last) is required by DPMSolverMultistepScheduler.set_timesteps:"
                " it sizes the buffer of previous model outputs."
            )

        if timesteps is not None:
            table = np.asarray(list(timesteps)).astype(np.int64)
            if table.ndim != 1 or table.size == 0:
                raise ValueError("`timesteps` must be a non-empty sequence of ints.")
            if table.min() < 0 or table.max() >= n_train:
                raise ValueError(f"`timesteps` must lie in [0, {n_train}), got {table.tolist()}")
            n = table.size
        else:
            n = self._check_num_inference_steps(num_inference_steps)
            table = self._spaced_timesteps(n)

        sigmas, table = self._schedule(table, n, flow_shift)
        if cfg["final_sigmas_type"] == "sigma_min":
            a0 = self.alphas_cumprod[0]
            sigma_last = np.sqrt((np.float32(1.0) - a0) / a0)
        else:
            sigma_last = 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)

        buffer_shape = (cfg["solver_order"],) + tuple(int(d) for d in shape)
        return DPMSolverMultistepSchedulerState(
            timesteps=as_timestep_array(np.asarray(table).astype(np.int64)),
            step_index=jnp.zeros((), jnp.int32),
            sigmas=jnp.asarray(sigmas),
            model_outputs=jnp.zeros(buffer_shape, jnp.float32),
            lower_order_nums=jnp.zeros((), jnp.int32),
        )

    # -- pure functions -----------------------------------------------------------------------

    def _alpha_sigma(self, sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
        """sigma (the noise-to-signal ratio) -> (alpha_t, sigma_t) of x_t = alpha_t x_0 + sigma_t eps."""
        if self.config["use_flow_sigmas"]:
            return 1.0 - sigma, sigma
        alpha = 1.0 / jnp.sqrt(sigma**2 + 1.0)
        return alpha, sigma * alpha

    def _alpha_sigma_lambda(self, sigma: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        alpha, sigma_t = self._alpha_sigma(sigma)
        return alpha, sigma_t, jnp.log(alpha) - jnp.log(sigma_t)

    def _convert_model_output(self, state: DPMSolverMultistepSchedulerState, out: jax.Array, x: jax.Array) -> jax.Array:
        """Model output -> x_0 (DPM-Solver++) or epsilon (DPM-Solver), thresholded if configured."""
        cfg = self.config
        sigma = state.sigmas[state.step_index]
        alpha_s, sigma_s = self._alpha_sigma(sigma)
        kind = cfg["prediction_type"]
        if cfg["algorithm_type"].endswith("++"):  # data prediction (Lu et al. 2022b)
            if kind == "flow_prediction":
                # x_t = (1 - s) x_0 + s eps, out = eps - x_0. The raw sigma, not sigma_s: they agree only
                # with use_flow_sigmas, and diffusers uses the raw one whatever the sigmas
                x0 = x - sigma * out
            else:
                x0 = predicted_original_sample(kind, out, x, alpha_s, sigma_s)
            if cfg["thresholding"]:
                x0 = threshold_sample(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
            return x0
        # noise prediction (Lu et al. 2022a)
        eps = predicted_noise(kind, out, x, alpha_s, sigma_s)
        if cfg["thresholding"]:  # thresholding acts on x_0: go there and back
            x0 = predicted_original_sample("epsilon", eps, x, alpha_s, sigma_s)
            x0 = threshold_sample(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
            eps = noise_from_original_sample(x0, x, alpha_s, sigma_s)
        return eps

    def _first_order(self, sigmas, i, buf, x, z):
        """DPM-Solver-1 / DPM-Solver++(1), i.e. DDIM (Lu et al. 2022b, eq. (8)); SDE: Lu et al. 2022b, App. B."""
        algo = self.config["algorithm_type"]
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(sigmas[i + 1])
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(sigmas[i])
        h = lambda_t - lambda_s
        d0 = buf[-1]
        if algo == "dpmsolver++":
            return (sigma_t / sigma_s) * x - (alpha_t * (jnp.exp(-h) - 1.0)) * d0
        if algo == "dpmsolver":
            return (alpha_t / alpha_s) * x - (sigma_t * (jnp.exp(h) - 1.0)) * d0
        if algo == "sde-dpmsolver++":
            return (
                (sigma_t / sigma_s * jnp.exp(-h)) * x
                + (alpha_t * (1.0 - jnp.exp(-2.0 * h))) * d0
                + sigma_t * jnp.sqrt(1.0 - jnp.exp(-2.0 * h)) * z
            )
        return (  # sde-dpmsolver
            (alpha_t / alpha_s) * x
            - 2.0 * (sigma_t * (jnp.exp(h) - 1.0)) * d0
            + sigma_t * jnp.sqrt(jnp.exp(2.0 * h) - 1.0) * z
        )

    def _second_order(self, sigmas, i, buf, x, z):
        """Multistep second order: DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2) and its DPM-Solver / SDE forms."""
        algo, heun = self.config["algorithm_type"], self.config["solver_type"] == "heun"
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(sigmas[i + 1])
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(sigmas[i])
        _, _, lambda_s1 = self._alpha_sigma_lambda(sigmas[i - 1])
        m0, m1 = buf[-1], buf[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        if algo == "dpmsolver++":
            base = (sigma_t / sigma_s0) * x - (alpha_t * (jnp.exp(-h) - 1.0)) * d0
            if heun:
                return base + (alpha_t * ((jnp.exp(-h) - 1.0) / h + 1.0)) * d1
            return base - 0.5 * (alpha_t * (jnp.exp(-h) - 1.0)) * d1
        if algo == "dpmsolver":
            base = (alpha_t / alpha_s0) * x - (sigma_t * (jnp.exp(h) - 1.0)) * d0
            if heun:
                return base - (sigma_t * ((jnp.exp(h) - 1.0) / h - 1.0)) * d1
            return base - 0.5 * (sigma_t * (jnp.exp(h) - 1.0)) * d1
        if algo == "sde-dpmsolver++":
            base = (sigma_t / sigma_s0 * jnp.exp(-h)) * x + (alpha_t * (1.0 - jnp.exp(-2.0 * h))) * d0
            noise = sigma_t * jnp.sqrt(1.0 - jnp.exp(-2.0 * h)) * z
            if heun:
                return base + (alpha_t * ((1.0 - jnp.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1 + noise
            return base + 0.5 * (alpha_t * (1.0 - jnp.exp(-2.0 * h))) * d1 + noise
        base = (alpha_t / alpha_s0) * x - 2.0 * (sigma_t * (jnp.exp(h) - 1.0)) * d0  # sde-dpmsolver
        noise = sigma_t * jnp.sqrt(jnp.exp(2.0 * h) - 1.0) * z
        if heun:
            return base - 2.0 * (sigma_t * ((jnp.exp(h) - 1.0) / h - 1.0)) * d1 + noise
        return base - (sigma_t * (jnp.exp(h) - 1.0)) * d1 + noise

    def _third_order(self, sigmas, i, buf, x, z):
        """Multistep third order: DPM-Solver-3 (Lu et al. 2022a, Alg. 2 / App. B) in data, noise and SDE forms."""
        algo = self.config["algorithm_type"]
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(sigmas[i + 1])
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(sigmas[i])
        _, _, lambda_s1 = self._alpha_sigma_lambda(sigmas[i - 1])
        _, _, lambda_s2 = self._alpha_sigma_lambda(sigmas[i - 2])
        m0, m1, m2 = buf[-1], buf[-2], buf[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        d0 = m0
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        if algo == "dpmsolver++":
            return (
                (sigma_t / sigma_s0) * x
                - (alpha_t * (jnp.exp(-h) - 1.0)) * d0
                + (alpha_t * ((jnp.exp(-h) - 1.0) / h + 1.0)) * d1
                - (alpha_t * ((jnp.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
            )
        if algo == "dpmsolver":
            return (
                (alpha_t / alpha_s0) * x
                - (sigma_t * (jnp.exp(h) - 1.0)) * d0
                - (sigma_t * ((jnp.exp(h) - 1.0) / h - 1.0)) * d1
                - (sigma_t * ((jnp.exp(h) - 1.0 - h) / h**2 - 0.5)) * d2
            )
        return (  # sde-dpmsolver++ (sde-dpmsolver has no third order: refused in __init__)
            (sigma_t / sigma_s0 * jnp.exp(-h)) * x
            + (alpha_t * (1.0 - jnp.exp(-2.0 * h))) * d0
            + (alpha_t * ((1.0 - jnp.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
            + (alpha_t * ((1.0 - jnp.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
            + sigma_t * jnp.sqrt(1.0 - jnp.exp(-2 * h)) * z
        )

    def _step_order(self, state: DPMSolverMultistepSchedulerState) -> jax.Array:
        """The solver order of this step (int32 scalar): lower during warm-up and, optionally, at the end."""
        cfg = self.config
        n = state.timesteps.shape[0]
        i, done = state.step_index, state.lower_order_nums
        short = cfg["lower_order_final"] and n < 15  # static: known from the table's length
        final_low = cfg["euler_at_final"] or short or cfg["final_sigmas_type"] == "zero"
        first = (cfg["solver_order"] == 1) | (done < 1) | (final_low & (i == n - 1))
        second = (cfg["solver_order"] == 2) | (done < 2) | (short & (i == n - 2))
        return jnp.where(first, 1, jnp.where(second, 2, 3)).astype(jnp.int32)

    def step(
        self,
        state: DPMSolverMultistepSchedulerState,
        model_output: jax.Array,
        timestep: jax.Array | int,
        sample: jax.Array,
        key: jax.Array | None = None,
        *,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, DPMSolverMultistepSchedulerState]:
        """One multistep DPM-Solver step from sigmas[step_index] to sigmas[step_index + 1].

        model_output, sample: (B, H, W, C) (model_output (B, H, W, 2C) with a learned variance:
        the first C channels are used). `timestep` is not read: the step follows
        `state.step_index` (diffusers also steps by its own index). The SDE variants use `noise`
        (B, H, W, C) if given, else draw it from `key` folded with the step index; with neither,
        their noise term is dropped. Float32 inside; returns (prev_sample in sample.dtype, new state).
        """
        cfg = self.config
        channels = sample.shape[-1]
        if cfg["variance_type"] in ("learned", "learned_range") and model_output.shape[-1] == 2 * channels:
            model_output = model_output[..., :channels]  # only the mean half (diffusers: [:, :3])
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
        if state.model_outputs.shape[1:] != sample.shape:
            raise ValueError(
                f"the state was made for shape {state.model_outputs.shape[1:]}, got a sample of shape {sample.shape}"
            )

        x = sample.astype(jnp.float32)
        converted = self._convert_model_output(state, model_output.astype(jnp.float32), x)
        buf = jnp.concatenate([state.model_outputs[1:], converted[None]], axis=0)

        z = None
        if cfg["algorithm_type"].startswith("sde"):
            z = draw_noise(key, noise, state.step_index, x.shape)
            z = jnp.zeros_like(x) if z is None else z

        updates = (self._first_order, self._second_order, self._third_order)[: cfg["solver_order"]]
        order = self._step_order(state)
        prev = jax.lax.switch(order - 1, updates, state.sigmas, state.step_index, buf, x, z)

        new_state = state.replace(
            step_index=state.step_index + 1,
            model_outputs=buf,
            lower_order_nums=jnp.minimum(state.lower_order_nums + 1, cfg["solver_order"]).astype(jnp.int32),
        )
        return prev.astype(sample.dtype), new_state

    def add_noise(
        self,
        state: DPMSolverMultistepSchedulerState | None,
        original_samples: jax.Array,
        noise: jax.Array,
        timesteps: jax.Array,
    ) -> jax.Array:
        """Forward process x_t = alpha_t x_0 + sigma_t eps; (B, ...) samples, (B,) or () timesteps.

        Without a state: from alphas_cumprod[t]. With one: from the state's sigma at each
        timestep's index in `state.timesteps` (as diffusers' add_noise after set_timesteps; for a
        repeated timestep its second occurrence, for a missing one the last index).
        """
        if state is None:
            return super().add_noise(None, original_samples, noise, timesteps)
        table = state.timesteps
        n = table.shape[0]
        t = jnp.asarray(timesteps, jnp.int32).reshape(-1)
        match = table[None, :] == t[:, None]  # (B, N)
        first = jnp.argmax(match, axis=1)
        second = jnp.argmax(match & (jnp.arange(n)[None, :] != first[:, None]), axis=1)
        count = match.sum(axis=1)
        index = jnp.where(count == 0, n - 1, jnp.where(count > 1, second, first))
        alpha_t, sigma_t = self._alpha_sigma(state.sigmas[index])
        ndim = original_samples.ndim
        x0, eps = original_samples.astype(jnp.float32), noise.astype(jnp.float32)
        noisy = expand_to(alpha_t, ndim) * x0 + expand_to(sigma_t, ndim) * eps
        return noisy.astype(original_samples.dtype)
