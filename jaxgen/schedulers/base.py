"""What every scheduler shares: config handling, beta schedules, the state base, add_noise,
and the conversion of a model output (epsilon, x_0 or v) into the predicted x_0 and epsilon.

A scheduler is an immutable, hashable object (its config plus host-side numpy tables) with pure
methods; its mutable part is a state pytree threaded through `jax.lax.fori_loop` by the caller.
The beta tables reproduce diffusers' float32 values bit for bit (torch's CPU `linspace` and its
float64-accumulated `cumprod` are emulated), so timestep tables that round sigmas match exactly.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence, TypeVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PREDICTION_TYPES",
    "BaseScheduler",
    "FrozenConfig",
    "SchedulerState",
    "betas_for_alpha_bar",
    "make_betas",
    "noise_from_original_sample",
    "predicted_noise",
    "predicted_original_sample",
    "register_config",
    "rescale_zero_terminal_snr",
    "threshold_sample",
]

_S = TypeVar("_S", bound="BaseScheduler")

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
"""What a model may predict: the noise, the clean sample x_0, or the velocity v (Salimans & Ho 2022)."""


# ----------------------------------------------------------------------------------------------
# Config


class FrozenConfig(collections.abc.Mapping):
    """Read-only config mapping; keys also read as attributes (`config.num_train_timesteps`)."""

    def __init__(self, data: Mapping[str, Any]):
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        if name == "_data":  # not yet set (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("scheduler configs are read-only; use `from_config(config, **overrides)`")

    def __reduce__(self):
        return (FrozenConfig, (self._data,))

    def __repr__(self) -> str:
        return f"FrozenConfig({self._data!r})"


def _normalize(value: Any) -> Any:
    """Config values are stored immutable: arrays and lists (trained_betas) become tuples."""
    if isinstance(value, (np.ndarray, jax.Array)):
        return tuple(float(v) for v in np.asarray(value).reshape(-1))
    if isinstance(value, list):
        return tuple(value)
    return value


def register_config(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate a scheduler's `__init__`: every argument, defaults filled in, becomes its config.

    As diffusers' `register_to_config`, the config also records `_use_default_values` (the keys
    not passed), which `from_config` drops so that one scheduler's defaults do not override
    another's when swapping (e.g. DPM's `timestep_spacing="linspace"` default is not forced on
    DDIM). `init` receives the normalised values as keyword arguments and may call
    `self._register(**changes)` to rewrite a value (as diffusers does for legacy names).
    """
    signature = inspect.signature(init)
    keys = tuple(name for name in signature.parameters if name != "self")

    @functools.wraps(init)
    def wrapper(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)  # TypeError on unknown keys, as diffusers
        passed = set(bound.arguments) - {"self"}
        bound.apply_defaults()
        values = {key: _normalize(bound.arguments[key]) for key in keys}
        config: dict[str, Any] = {"_class_name": type(self).__name__, **values}
        defaulted = sorted(set(keys) - passed)
        if defaulted:
            config["_use_default_values"] = tuple(defaulted)
        object.__setattr__(self, "_config_dict", config)
        object.__setattr__(self, "config", FrozenConfig(config))
        init(self, **values)
        object.__setattr__(self, "_frozen", True)

    wrapper.config_keys = keys  # type: ignore[attr-defined]
    return wrapper


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


# ----------------------------------------------------------------------------------------------
# Beta schedules (host side, numpy float32 exactly as diffusers/torch compute them)


def _torch_linspace_f32(start: float, end: float, num: int) -> np.ndarray:
    """torch.linspace(start, end, num, dtype=float32) on CPU, bit for bit.

    torch steps from both ends towards the middle with a float32 step and fused multiply-adds;
    numpy's linspace rounds differently in the last bit.
    """
    start32, end32 = np.float32(start), np.float32(end)
    if num == 1:
        return np.array([start32], np.float32)
    step = np.float32((end32 - start32) / np.float32(num - 1))
    idx = np.arange(num)
    # float64 product of a float32 and a small integer is exact: this is a single-rounding fma
    from_start = (np.float64(start32) + np.float64(step) * idx).astype(np.float32)
    from_end = (np.float64(end32) - np.float64(step) * (num - 1 - idx)).astype(np.float32)
    return np.where(idx < num // 2, from_start, from_end).astype(np.float32)


def cumprod_f32(x: np.ndarray) -> np.ndarray:
    """torch.cumprod of a float32 CPU tensor: accumulated in float64, stored as float32."""
    return np.cumprod(np.asarray(x, np.float64)).astype(np.float32)


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, max_beta: float = 0.999, alpha_transform_type: str = "cosine"
) -> np.ndarray:
    """Betas (T,) float32 discretising a continuous alpha_bar(t), t in [0, 1] (Nichol & Dhariwal 2021, eq. (17))."""
    if alpha_transform_type == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    elif alpha_transform_type == "laplace":

        def alpha_bar(t: float) -> float:
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

    elif alpha_transform_type == "exp":

        def alpha_bar(t: float) -> float:
            return math.exp(t * -12.0)

    else:
        raise ValueError(f"Unsupported alpha_transform_type: {alpha_transform_type}")

    n = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.asarray(betas, np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas (T,) so the last timestep has zero SNR (Lin et al. 2023, Algorithm 1), float32."""
    alphas_bar_sqrt = np.sqrt(cumprod_f32(np.float32(1.0) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    # shift so the last is zero, scale so the first keeps its value
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def make_betas(config: Mapping[str, Any], schedules: Sequence[str], class_name: str) -> np.ndarray:
    """Betas (T,) float32 from a config's trained_betas / beta_schedule / rescale_betas_zero_snr."""
    n = config["num_train_timesteps"]
    start, end = config["beta_start"], config["beta_end"]
    schedule = config["beta_schedule"]
    if config["trained_betas"] is not None:
        betas = np.asarray(config["trained_betas"], np.float32)
    elif schedule not in schedules:
        raise ValueError(
            f"beta_schedule {schedule!r} is not implemented for {class_name}; choose one of {list(schedules)}"
        )
    elif schedule == "linear":
        betas = _torch_linspace_f32(start, end, n)
    elif schedule == "scaled_linear":  # the latent diffusion schedule
        betas = _torch_linspace_f32(start**0.5, end**0.5, n) ** 2
    elif schedule == "squaredcos_cap_v2":  # GLIDE's cosine schedule
        betas = betas_for_alpha_bar(n)
    elif schedule == "laplace":
        betas = betas_for_alpha_bar(n, alpha_transform_type="laplace")
    else:  # "sigmoid", GeoDiff's schedule
        sig = np.float32(1.0) / (np.float32(1.0) + np.exp(-_torch_linspace_f32(-6, 6, n)))
        betas = sig * np.float32(end - start) + np.float32(start)
    if config["rescale_betas_zero_snr"]:
        betas = rescale_zero_terminal_snr(betas)
    return betas.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Prediction types: model output -> x_0 and epsilon
#
# All in terms of the forward process x_t = alpha_t x_0 + sigma_t eps. For DDPM/DDIM (variance
# preserving) alpha_t = sqrt(alphas_cumprod[t]) and sigma_t = sqrt(1 - alphas_cumprod[t]); the
# caller computes them and passes them in. The expressions keep the operation order the schedulers
# always used, so their float32 results are unchanged bit for bit (DDIMScheduler.step also keeps
# its sqrt ops unshared, since XLA's rewrite of y / sqrt(a) depends on that).


def _unknown_prediction_type(prediction_type: str) -> ValueError:
    return ValueError(f"`prediction_type` must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}")


def noise_from_original_sample(
    original_sample: jax.Array, sample: jax.Array, alpha_t: jax.Array, sigma_t: jax.Array
) -> jax.Array:
    """The noise eps = (x_t - alpha_t x_0) / sigma_t that takes x_0 to x_t (Ho et al. 2020, eq. (4) solved for eps).

    original_sample (x_0), sample (x_t): (B, ...); alpha_t, sigma_t: scalars or broadcastable to them.
    Used to turn a thresholded or clipped x_0 back into a consistent epsilon.
    """
    return (sample - alpha_t * original_sample) / sigma_t


def predicted_original_sample(
    prediction_type: str, model_output: jax.Array, sample: jax.Array, alpha_t: jax.Array, sigma_t: jax.Array
) -> jax.Array:
    """The predicted x_0 (B, ...) from a model output (B, ...) at x_t = sample (B, ...).

    Ho et al. 2020, eq. (15) (epsilon); Salimans & Ho 2022, sec. 4 (v).
    epsilon: x_0 = (x_t - sigma_t eps) / alpha_t; sample: x_0 = model_output;
    v_prediction: x_0 = alpha_t x_t - sigma_t v, as v = alpha_t eps - sigma_t x_0 and alpha_t^2 + sigma_t^2 = 1.
    alpha_t, sigma_t: scalars or broadcastable to the sample. Raises ValueError for other prediction types.
    """
    if prediction_type == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    raise _unknown_prediction_type(prediction_type)


def predicted_noise(
    prediction_type: str, model_output: jax.Array, sample: jax.Array, alpha_t: jax.Array, sigma_t: jax.Array
) -> jax.Array:
    """The predicted eps (B, ...) from a model output (B, ...) at x_t = sample (B, ...).

    Ho et al. 2020, eq. (4) solved for eps (sample); Salimans & Ho 2022, sec. 4 (v).
    epsilon: eps = model_output; sample: eps = (x_t - alpha_t x_0) / sigma_t;
    v_prediction: eps = alpha_t v + sigma_t x_t, as v = alpha_t eps - sigma_t x_0 and alpha_t^2 + sigma_t^2 = 1.
    alpha_t, sigma_t: scalars or broadcastable to the sample. Raises ValueError for other prediction types.
    """
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return noise_from_original_sample(model_output, sample, alpha_t, sigma_t)
    if prediction_type == "v_prediction":
        return alpha_t * model_output + sigma_t * sample
    raise _unknown_prediction_type(prediction_type)


# ----------------------------------------------------------------------------------------------
# Shared pieces of the step


def split_learned_variance(model_output: jax.Array, sample: jax.Array,
                           variance_type: str | None) -> tuple[jax.Array, jax.Array | None]:
    """A model output -> (the prediction, the learned variance or None), channels last: for
    ``variance_type`` "learned" / "learned_range" the output has 2C channels (prediction first),
    otherwise it must be shaped like ``sample`` (ValueError naming the shapes otherwise)."""
    channels = sample.shape[-1]
    if variance_type in ("learned", "learned_range"):
        if model_output.shape[-1] != 2 * channels:
            raise ValueError(
                f"variance_type {variance_type!r} needs a model output with twice the sample's channels (last"
                f" axis): got {model_output.shape} for a sample of shape {sample.shape}"
            )
        return model_output[..., :channels], model_output[..., channels:]
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
    return model_output, None


def threshold_sample(x0: jax.Array, ratio: float, max_value: float) -> jax.Array:
    """Dynamic thresholding (Saharia et al. 2022, Imagen sec. 2.3) of x0 (B, ...) over all non-batch dims.

    s = quantile(|x0|, ratio) per sample, clamped to [1, max_value]; x0 -> clip(x0, -s, s) / s.
    """
    flat = x0.reshape(x0.shape[0], -1)
    s = jnp.quantile(jnp.abs(flat), ratio, axis=1)
    s = jnp.minimum(jnp.maximum(s, 1.0), max_value)[:, None]  # torch.clamp(min=1, max=...) order
    return (jnp.clip(flat, -s, s) / s).reshape(x0.shape)


def expand_to(values: jax.Array, ndim: int) -> jax.Array:
    """(B,) or () -> broadcastable against an array of rank ndim (trailing singleton axes)."""
    values = values.reshape(-1)
    return values.reshape(values.shape + (1,) * (ndim - 1))


# ----------------------------------------------------------------------------------------------
# State and scheduler base


@flax.struct.dataclass
class SchedulerState:
    """What every scheduler state carries (a pytree threaded through the sampling loop).

    timesteps: (N,) int32, the discrete timesteps to visit, in order.
    step_index: () int32, the index into `timesteps` of the next `step`; `step` adds 1. Start it
        later (`state.replace(step_index=jnp.int32(k))`) to begin mid-schedule (img2img), as
        diffusers' `set_begin_index(k)`.
    """

    timesteps: jax.Array
    step_index: jax.Array

    @property
    def num_inference_steps(self) -> int:
        return self.timesteps.shape[0]


class BaseScheduler:
    """Immutable config + pure functions. Subclasses decorate `__init__` with `register_config`."""

    order: ClassVar[int] = 1
    init_noise_sigma: ClassVar[float] = 1.0
    config: FrozenConfig
    alphas_cumprod: np.ndarray

    # -- config --------------------------------------------------------------------------------

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The `__init__` arguments, i.e. the config keys this class uses."""
        return cls.__init__.config_keys  # type: ignore[attr-defined]

    @classmethod
    def from_config(cls: type[_S], config: Mapping[str, Any], **overrides: Any) -> _S:
        """Build from a config mapping (any scheduler's), ignoring keys this class does not use.

        As diffusers: keys listed in `_use_default_values` are dropped first (they were defaults
        of the other class), `overrides` win over `config`, and keys this class does not use are
        kept in its config (so a swap back restores them).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"`config` must be a mapping, got {type(config).__name__}")
        defaulted = set(config.get("_use_default_values", ()) or ())
        source = {k: v for k, v in config.items() if k not in defaulted and k != "_use_default_values"}
        keys = cls.config_keys()
        init_kwargs = {k: source[k] for k in keys if k in source}
        init_kwargs.update({k: v for k, v in overrides.items() if k in keys})
        scheduler = cls(**init_kwargs)
        hidden = {k: _normalize(v) for k, v in source.items() if k not in keys and k != "_class_name"}
        if hidden:
            merged = {**scheduler._config_dict, **hidden}
            object.__setattr__(scheduler, "_config_dict", merged)
            object.__setattr__(scheduler, "config", FrozenConfig(merged))
        return scheduler

    def _register(self, **changes: Any) -> None:
        """Rewrite config values during `__init__` (legacy names mapped to current ones)."""
        self._config_dict.update(changes)
        object.__setattr__(self, "config", FrozenConfig(self._config_dict))

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(
                f"{type(self).__name__} is immutable; build a new one with from_config(config, **overrides)"
            )
        object.__setattr__(self, name, value)

    def _key(self) -> tuple:
        return (type(self), tuple((k, _freeze(self.config[k])) for k in self.config_keys()))

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BaseScheduler) and self._key() == other._key()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={self.config[k]!r}" for k in self.config_keys())
        return f"{type(self).__name__}({args})"

    def __len__(self) -> int:
        return self.config["num_train_timesteps"]

    # -- shared host-side validation -----------------------------------------------------------

    def _check_num_inference_steps(self, num_inference_steps: Any) -> int:
        """A positive int, at most the training timesteps where the schedule is discrete."""
        n_train = self.config.get("num_train_timesteps", np.inf)  # continuous time (Würstchen): no bound
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"`num_inference_steps` must be a positive int, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be at least 1, got {num_inference_steps}")
        if num_inference_steps > n_train:
            raise ValueError(
                f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.config.train_timesteps`:"
                f" {n_train} as the unet model trained with this scheduler can only handle"
                f" maximal {n_train} timesteps."
            )
        return int(num_inference_steps)

    def _check_common_config(self) -> None:
        if self.config["prediction_type"] not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type given as {self.config['prediction_type']} must be one of `epsilon`, `sample`, or"
                f" `v_prediction` for the {type(self).__name__}."
            )
        if self.config["timestep_spacing"] not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"{self.config['timestep_spacing']} is not supported. Please make sure to choose one of"
                " 'linspace', 'leading' or 'trailing'."
            )

    # -- pure functions ------------------------------------------------------------------------

    def scale_model_input(self, state: SchedulerState | None, sample: jax.Array, timestep: Any = None) -> jax.Array:
        """The model's input at this step: the sample itself for these schedulers."""
        return sample

    def add_noise(
        self, state: SchedulerState | None, original_samples: jax.Array, noise: jax.Array, timesteps: jax.Array
    ) -> jax.Array:
        """Forward process q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) (Ho et al. 2020, eq. (4)).

        original_samples, noise: (B, ...); timesteps: (B,) or () int. Needs no state: the
        alphas_cumprod table is fixed by the config. Float32 inside, result in the samples' dtype.
        """
        ac = jnp.asarray(self.alphas_cumprod)[jnp.asarray(timesteps, jnp.int32)]
        ndim = original_samples.ndim
        x0, eps = original_samples.astype(jnp.float32), noise.astype(jnp.float32)
        noisy = expand_to(jnp.sqrt(ac), ndim) * x0 + expand_to(jnp.sqrt(1.0 - ac), ndim) * eps
        return noisy.astype(original_samples.dtype)

    def get_velocity(
        self, state: SchedulerState | None, sample: jax.Array, noise: jax.Array, timesteps: jax.Array
    ) -> jax.Array:
        """v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (Salimans & Ho 2022, v-parameterisation); (B, ...)."""
        ac = jnp.asarray(self.alphas_cumprod)[jnp.asarray(timesteps, jnp.int32)]
        ndim = sample.ndim
        x0, eps = sample.astype(jnp.float32), noise.astype(jnp.float32)
        v = expand_to(jnp.sqrt(ac), ndim) * eps - expand_to(jnp.sqrt(1.0 - ac), ndim) * x0
        return v.astype(sample.dtype)


def draw_noise(
    key: jax.Array | None, noise: jax.Array | None, step_index: jax.Array, shape: tuple[int, ...]
) -> jax.Array | None:
    """The step's standard normal noise, float32: `noise` if given, else drawn from `key`.

    The key is folded with the step index, so passing the same key at every step is safe.
    None when neither is given (the caller then adds no noise: the step's mean).
    """
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"`noise` has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise.astype(jnp.float32)
    if key is not None:
        return jax.random.normal(jax.random.fold_in(key, step_index), shape, jnp.float32)
    return None


def as_timestep_array(timesteps: Sequence[int] | np.ndarray) -> jax.Array:
    """(N,) int32 device array of a host timestep table."""
    return jnp.asarray(np.asarray(timesteps).astype(np.int64).astype(np.int32))
