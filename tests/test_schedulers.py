"""Schedulers against diffusers (PyTorch, CPU, float32): configs, timestep tables, whole sampling loops.

The fake model is a fixed smooth function of (sample, timestep) computed the same way in torch
(NCHW) and in JAX (NHWC); loops run inside `jax.lax.fori_loop` under `jax.jit` for a
representative subset (the real use), and op by op (`jax.disable_jit`) for the rest to keep the
compile count low.
"""

from __future__ import annotations

import functools
import warnings

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxgen.schedulers import (
    SCHEDULERS,
    DDIMScheduler,
    DDIMSchedulerState,
    DDPMScheduler,
    DDPMSchedulerState,
    DPMSolverMultistepScheduler,
    DPMSolverMultistepSchedulerState,
)
from jaxgen.schedulers.base import noise_from_original_sample, predicted_noise, predicted_original_sample
from tests.conftest import nchw_to_nhwc, nhwc_to_nchw, rel_l2

SHAPE = (2, 8, 8, 4)  # B, H, W, C (channels last)
TOL = 1e-5

PAIRS = {
    "DDPMScheduler": (DDPMScheduler, diffusers.DDPMScheduler),
    "DDIMScheduler": (DDIMScheduler, diffusers.DDIMScheduler),
    "DPMSolverMultistepScheduler": (DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler),
}
PRIVATE = {"_use_default_values", "_class_name", "_diffusers_version"}


def public(config) -> dict:
    return {k: v for k, v in dict(config).items() if k not in PRIVATE}


def case_id(value) -> str:
    if isinstance(value, dict):
        return "-".join(f"{k}={v}" for k, v in value.items()) or "default"
    return str(value)


def to_torch(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy -> NCHW torch."""
    return torch.from_numpy(nhwc_to_nchw(x))


# ----------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("name", list(PAIRS))
def test_config_keys_and_defaults_match_diffusers(name):
    ours, theirs = PAIRS[name]
    config = ours().config
    assert public(config) == public(theirs().config)
    assert config["_class_name"] == name
    assert SCHEDULERS[name] is ours
    assert ours.order == theirs.order == 1 and ours.init_noise_sigma == 1.0


@pytest.mark.parametrize("target", list(PAIRS))
@pytest.mark.parametrize("source", list(PAIRS))
def test_from_config_swaps_like_diffusers(source, target):
    ours_src, theirs_src = PAIRS[source]
    ours_dst, theirs_dst = PAIRS[target]
    # a default-constructed config: keys flagged as defaults do not carry over
    expected = theirs_dst.from_config(theirs_src().config).config
    assert public(ours_dst.from_config(ours_src().config).config) == public(expected)
    assert public(ours_dst.from_config(theirs_src().config).config) == public(expected)  # a diffusers FrozenDict
    # a config as read from scheduler_config.json: every key is explicit, foreign keys are kept
    file_config = {
        "_class_name": source,
        "_diffusers_version": "0.42.1",
        **public(theirs_src(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config),
        "some_future_key": 3,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = theirs_dst.from_config(dict(file_config)).config
    got = ours_dst.from_config(dict(file_config)).config
    assert public(got) == public(expected)
    assert got["_class_name"] == target


def test_from_config_overrides_and_immutability():
    base = DDIMScheduler(beta_schedule="scaled_linear")
    swapped = DDIMScheduler.from_config(base.config, prediction_type="v_prediction", not_a_key=1)
    assert swapped.config["prediction_type"] == "v_prediction" and "not_a_key" not in swapped.config
    assert swapped.config.beta_schedule == "scaled_linear"  # attribute access, as diffusers' FrozenDict
    with pytest.raises(AttributeError):
        base.foo = 1
    with pytest.raises(TypeError):
        base.config["beta_schedule"] = "linear"
    with pytest.raises(TypeError):
        DDIMScheduler(not_a_key=1)
    # hashable and compared by config: usable as a static argument of jax.jit
    assert DDIMScheduler(beta_schedule="scaled_linear") == base
    assert hash(DDIMScheduler(beta_schedule="scaled_linear")) == hash(base)
    assert DDIMScheduler() != base and DDPMScheduler() != DDIMScheduler()
    # a DEIS / UniPC config maps onto DPM-Solver++ as in diffusers
    dpm = DPMSolverMultistepScheduler.from_config({"algorithm_type": "deis", "solver_type": "bh2"})
    assert dpm.config["algorithm_type"] == "dpmsolver++" and dpm.config["solver_type"] == "midpoint"


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": list(np.linspace(1e-4, 0.02, 1000))},
        {"beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True},
    ],
    ids=["linear", "scaled_linear", "cosine", "trained", "zero_snr"],
)
def test_alphas_cumprod_match_diffusers(name, kwargs):
    ours, theirs = PAIRS[name]
    got, want = ours(**kwargs).alphas_cumprod, theirs(**kwargs).alphas_cumprod.numpy()
    if kwargs.get("rescale_betas_zero_snr"):  # torch's CPU sqrt is not correctly rounded: 1 ulp
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    else:
        np.testing.assert_array_equal(got, want)


def test_add_noise_without_state_and_velocity():
    rng = np.random.RandomState(0)
    x0 = rng.randn(3, 4, 4, 2).astype(np.float32)
    eps = rng.randn(3, 4, 4, 2).astype(np.float32)
    t = np.array([0, 500, 999])
    for name in PAIRS:
        ours, theirs = PAIRS[name]
        kwargs = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
        got = ours(**kwargs).add_noise(None, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))
        d = theirs(**kwargs)
        if name == "DPMSolverMultistepScheduler":  # diffusers' DPM add_noise needs set_timesteps
            want = DDPMScheduler(**kwargs).add_noise(None, x0, eps, t)
        else:
            want = nchw_to_nhwc(d.add_noise(to_torch(x0), to_torch(eps), torch.from_numpy(t)))
        assert rel_l2(got, want) < 1e-6
    d = diffusers.DDIMScheduler()
    want = nchw_to_nhwc(d.get_velocity(to_torch(x0), to_torch(eps), torch.from_numpy(t)))
    assert rel_l2(DDIMScheduler().get_velocity(None, x0, eps, t), want) < 1e-6


def test_dpm_add_noise_with_state_matches_diffusers():
    kwargs = {"use_karras_sigmas": True}
    ours, theirs = DPMSolverMultistepScheduler(**kwargs), diffusers.DPMSolverMultistepScheduler(**kwargs)
    state = ours.set_timesteps(10, shape=(3, 4, 4, 2))
    theirs.set_timesteps(10)
    rng = np.random.RandomState(1)
    x0, eps = rng.randn(2, 3, 4, 4, 2).astype(np.float32)
    t = np.asarray(state.timesteps)[[0, 4, 9]]
    got = ours.add_noise(state, x0, eps, t)
    want = theirs.add_noise(to_torch(x0), to_torch(eps), torch.from_numpy(t).long())
    assert rel_l2(got, nchw_to_nhwc(want)) < 1e-6


def test_prediction_type_conversions_recover_x0_and_eps():
    # float64 numpy, with alpha per sample: the conversions are plain arithmetic on any array type
    rng = np.random.RandomState(2)
    x0, eps = rng.randn(2, 5, 4, 4, 3)
    alpha = rng.uniform(0.05, 0.95, size=(5, 1, 1, 1))
    sigma = np.sqrt(1.0 - alpha**2)
    x_t = alpha * x0 + sigma * eps
    outputs = {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}  # v: Salimans & Ho 2022
    for kind, out in outputs.items():
        np.testing.assert_allclose(predicted_original_sample(kind, out, x_t, alpha, sigma), x0, rtol=0, atol=1e-9)
        np.testing.assert_allclose(predicted_noise(kind, out, x_t, alpha, sigma), eps, rtol=0, atol=1e-9)
    np.testing.assert_allclose(noise_from_original_sample(x0, x_t, alpha, sigma), eps, rtol=0, atol=1e-9)
    for convert in (predicted_original_sample, predicted_noise):
        with pytest.raises(ValueError, match="prediction_type.*epsilon.*sample.*v_prediction.*'flow_prediction'"):
            convert("flow_prediction", eps, x_t, alpha, sigma)


# ----------------------------------------------------------------------------------------------
# Timestep tables

STEPS = (1, 7, 20, 25, 50)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize(
    "spacing,offset", [("leading", 0), ("leading", 1), ("linspace", 0), ("trailing", 0), ("trailing", 1)]
)
def test_timesteps_ddpm_ddim(name, spacing, offset):
    ours, theirs = PAIRS[name]
    kwargs = {"timestep_spacing": spacing, "steps_offset": offset}
    o, t = ours(**kwargs), theirs(**kwargs)
    for n in STEPS:
        state = o.set_timesteps(n)
        t.set_timesteps(n)
        assert state.timesteps.dtype == jnp.int32 and int(state.step_index) == 0
        np.testing.assert_array_equal(np.asarray(state.timesteps), t.timesteps.numpy(), err_msg=f"{n} steps")


DPM_TABLES = [
    {},
    {"use_karras_sigmas": True},
    {"use_lu_lambdas": True},
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"final_sigmas_type": "sigma_min"},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
    {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
    {"beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True},
    {"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"},
]


@pytest.mark.parametrize("spacing,offset", [("linspace", 0), ("leading", 0), ("leading", 1), ("trailing", 0)])
@pytest.mark.parametrize("kwargs", DPM_TABLES, ids=case_id)
def test_timesteps_and_sigmas_dpm(kwargs, spacing, offset):
    kwargs = {**kwargs, "timestep_spacing": spacing, "steps_offset": offset}
    o, t = DPMSolverMultistepScheduler(**kwargs), diffusers.DPMSolverMultistepScheduler(**kwargs)
    # torch's CPU sqrt is off by an ulp at times; the zero-SNR rescale amplifies it by cancellation
    rtol = 3e-5 if kwargs.get("rescale_betas_zero_snr") else 3e-6
    for n in STEPS:
        state = o.set_timesteps(n, shape=SHAPE)
        t.set_timesteps(n)
        np.testing.assert_array_equal(np.asarray(state.timesteps), t.timesteps.numpy(), err_msg=f"{n} steps")
        np.testing.assert_allclose(np.asarray(state.sigmas), t.sigmas.numpy(), rtol=rtol, err_msg=f"{n} steps")
        assert state.model_outputs.shape == (o.config["solver_order"],) + SHAPE


def test_custom_timesteps_tables():
    custom = [999, 800, 600, 301, 100, 7, 0]
    for name in ("DDPMScheduler", "DPMSolverMultistepScheduler"):
        ours, theirs = PAIRS[name]
        kwargs = {"final_sigmas_type": "sigma_min"} if name.startswith("DPM") else {}
        state = ours(**kwargs).set_timesteps(timesteps=custom, shape=SHAPE)
        t = theirs(**kwargs)
        t.set_timesteps(timesteps=custom)
        np.testing.assert_array_equal(np.asarray(state.timesteps), t.timesteps.numpy())
        if name.startswith("DPM"):
            np.testing.assert_allclose(np.asarray(state.sigmas), t.sigmas.numpy(), rtol=3e-6)


def test_bad_inputs_raise():
    for cls in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler):
        for bad in (0, -3, 1001, 2.5):
            with pytest.raises(ValueError, match="num_inference_steps"):
                cls().set_timesteps(bad, shape=SHAPE)
        with pytest.raises(ValueError, match="num_inference_steps"):
            cls().set_timesteps(shape=SHAPE)
    with pytest.raises(ValueError, match="custom_timesteps"):
        DDPMScheduler().set_timesteps(10, timesteps=[5, 1])
    with pytest.raises(ValueError, match="descending"):
        DDPMScheduler().set_timesteps(timesteps=[1, 5])
    with pytest.raises(ValueError, match="train_timesteps"):
        DDPMScheduler().set_timesteps(timesteps=[1000, 5])
    with pytest.raises(ValueError, match="timesteps"):
        DDIMScheduler().set_timesteps(timesteps=[900, 500])
    with pytest.raises(ValueError, match="shape"):
        DPMSolverMultistepScheduler().set_timesteps(10)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True).set_timesteps(timesteps=[900, 500], shape=SHAPE)
    with pytest.raises(ValueError, match="sigma_min"):
        DPMSolverMultistepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="Only one of"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)
    with pytest.raises(ValueError, match="prediction_type"):
        DDIMScheduler(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="beta_schedule"):
        DDIMScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="variance_type"):
        DDPMScheduler(variance_type="learned").step(
            DDPMScheduler().set_timesteps(2), jnp.zeros(SHAPE), 999, jnp.zeros(SHAPE)
        )


# ----------------------------------------------------------------------------------------------
# Whole loops against diffusers


def _phase(channels: int) -> np.ndarray:
    """A fixed (C, H, W) pattern so the fake model is not constant over pixels."""
    return np.random.RandomState(7).uniform(0, 2 * np.pi, (channels, SHAPE[1], SHAPE[2])).astype(np.float32)


def fake_model_torch(x, t, phase, variance):
    """x (B, C, H, W) -> (B, C or 2C, H, W); smooth in x, varies with t."""
    t = float(t)
    out = 0.8 * torch.tanh(x) + 0.3 * torch.cos(t / 300.0 + phase)
    if variance is None:
        return out
    v = torch.tanh(0.5 * x + torch.sin(t / 200.0 + phase))
    if variance == "learned":  # a raw (positive) variance
        v = 1e-3 * (1.5 + v)
    return torch.cat([out, v], dim=1)


def fake_model_jax(x, t, phase, variance):
    """x (B, H, W, C) -> (B, H, W, C or 2C); the same function as fake_model_torch."""
    t = jnp.asarray(t, jnp.float32)
    out = 0.8 * jnp.tanh(x) + 0.3 * jnp.cos(t / 300.0 + phase)
    if variance is None:
        return out
    v = jnp.tanh(0.5 * x + jnp.sin(t / 200.0 + phase))
    if variance == "learned":
        v = 1e-3 * (1.5 + v)
    return jnp.concatenate([out, v], axis=-1)


def _variance(scheduler) -> str | None:
    kind = scheduler.config.get("variance_type")
    return kind if kind in ("learned", "learned_range") else None


@functools.partial(jax.jit, static_argnums=(0, 1))
def jax_loop_jit(scheduler, step_kwargs, state, x, phase, noises, eta):
    return jax_loop(scheduler, step_kwargs, state, x, phase, noises, eta)


def jax_loop(scheduler, step_kwargs, state, x, phase, noises, eta):
    """The sampling loop as a pipeline runs it: fori_loop over steps, state carried."""
    variance = _variance(scheduler)
    kwargs = dict(step_kwargs)
    if eta is not None:
        kwargs["eta"] = eta

    def body(i, carry):
        x, state = carry
        t = state.timesteps[i]
        out = fake_model_jax(scheduler.scale_model_input(state, x, t), t, phase, variance)
        noise = None if noises is None else noises[i]
        return scheduler.step(state, out, t, x, noise=noise, **kwargs)

    return jax.lax.fori_loop(0, state.timesteps.shape[0], body, (x, state))


def run_jax(scheduler, n, x0, noises=None, *, jit=True, timesteps=None, eta=None, **step_kwargs):
    """x0: (B, H, W, C); noises: (N, B, H, W, C) or None. Returns the final sample (numpy)."""
    if timesteps is not None:
        state = scheduler.set_timesteps(timesteps=timesteps, shape=x0.shape)
    else:
        state = scheduler.set_timesteps(n, shape=x0.shape)
    phase = jnp.asarray(np.transpose(_phase(x0.shape[-1]), (1, 2, 0)))
    noises = None if noises is None else jnp.asarray(noises)
    eta = None if eta is None else jnp.float32(eta)
    static = tuple(sorted(step_kwargs.items()))
    if jit:
        x, state = jax_loop_jit(scheduler, static, state, jnp.asarray(x0), phase, noises, eta)
    else:
        with jax.disable_jit():
            x, state = jax_loop(scheduler, static, state, jnp.asarray(x0), phase, noises, eta)
    assert int(state.step_index) == state.timesteps.shape[0]
    return np.asarray(x)


def run_torch(scheduler, n, x0, noises=None, *, timesteps=None, **step_kwargs):
    """The same loop in diffusers (NCHW); `noises` (N, B, H, W, C) is fed as each step's noise."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(n)
    channels = x0.shape[-1]
    phase = torch.from_numpy(_phase(channels))
    variance = scheduler.config.get("variance_type")
    variance = variance if variance in ("learned", "learned_range") else None
    x = to_torch(x0)
    is_ddpm = isinstance(scheduler, diffusers.DDPMScheduler)
    for i, t in enumerate(scheduler.timesteps):
        out = fake_model_torch(scheduler.scale_model_input(x, t), t, phase, variance)
        kwargs = dict(step_kwargs)
        noise = None if noises is None else to_torch(noises[i])
        if is_ddpm:
            # diffusers' DDPM draws its own noise: feed ours through its randn_tensor
            with _patched_randn(noise):
                x = scheduler.step(out, t, x, **kwargs).prev_sample
        else:
            if noise is not None:
                kwargs["variance_noise"] = noise
            x = scheduler.step(out, t, x, **kwargs).prev_sample
    return nchw_to_nhwc(x)


class _patched_randn:
    def __init__(self, noise):
        self.noise = noise

    def __enter__(self):
        import diffusers.schedulers.scheduling_ddpm as module

        self.module, self.original = module, module.randn_tensor
        noise = self.noise
        module.randn_tensor = lambda shape, **kw: (noise if noise is not None else torch.zeros(shape))
        return self

    def __exit__(self, *exc):
        self.module.randn_tensor = self.original


def _inputs(n, channels=SHAPE[-1], seed=0):
    rng = np.random.RandomState(seed)
    shape = SHAPE[:-1] + (channels,)
    return rng.randn(*shape).astype(np.float32), rng.randn(n, *shape).astype(np.float32)


DDPM_CASES = [
    # (kwargs, steps, jit)
    ({}, 10, True),
    ({"prediction_type": "v_prediction"}, 10, False),
    ({"prediction_type": "sample"}, 10, False),
    ({"variance_type": "fixed_small_log"}, 10, False),
    ({"variance_type": "fixed_large"}, 10, False),
    ({"variance_type": "learned"}, 10, False),
    ({"variance_type": "learned_range"}, 10, True),
    ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 50.0}, 10, True),
    ({"clip_sample": False}, 10, False),
    ({"clip_sample_range": 2.0}, 10, False),
    ({"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"}, 12, False),
    ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "linspace"}, 12,
     False),
    ({"beta_schedule": "sigmoid", "steps_offset": 1}, 10, False),
    ({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 10, False),
]


@pytest.mark.parametrize("kwargs,n,jit", DDPM_CASES, ids=case_id)
def test_ddpm_loop_matches_diffusers(kwargs, n, jit):
    x0, noises = _inputs(n)
    got = run_jax(DDPMScheduler(**kwargs), n, x0, noises, jit=jit)
    want = run_torch(diffusers.DDPMScheduler(**kwargs), n, x0, noises)
    assert np.isfinite(got).all()
    assert rel_l2(got, want) < TOL


def test_ddpm_custom_timesteps_loop():
    custom = [999, 900, 700, 400, 250, 100, 30, 0]
    x0, noises = _inputs(len(custom))
    got = run_jax(DDPMScheduler(), None, x0, noises, jit=False, timesteps=custom)
    want = run_torch(diffusers.DDPMScheduler(), None, x0, noises, timesteps=custom)
    assert rel_l2(got, want) < TOL


def test_ddpm_learned_range_mean_and_fixed_large_log():
    # the noise-free step (no key, no noise) is the posterior mean: diffusers' step with zero noise
    x0, _ = _inputs(6)
    kwargs = {"variance_type": "learned_range"}
    got = run_jax(DDPMScheduler(**kwargs), 6, x0, None, jit=False)
    want = run_torch(diffusers.DDPMScheduler(**kwargs), 6, x0, None)  # zero noise patched in
    assert rel_l2(got, want) < TOL
    # fixed_large_log: std = exp(log(beta_t) / 2), i.e. the same as fixed_large (diffusers yields NaN)
    x0, noises = _inputs(6)
    a = run_jax(DDPMScheduler(variance_type="fixed_large_log"), 6, x0, noises, jit=False)
    b = run_jax(DDPMScheduler(variance_type="fixed_large"), 6, x0, noises, jit=False)
    assert np.isfinite(a).all() and rel_l2(a, b) < 1e-6


def test_ddpm_keys_are_reproducible():
    scheduler = DDPMScheduler()
    x0 = jnp.asarray(_inputs(1)[0])

    @jax.jit
    def sample(key):
        state = scheduler.set_timesteps(10)
        phase = jnp.asarray(np.transpose(_phase(SHAPE[-1]), (1, 2, 0)))

        def body(i, carry):
            x, state = carry
            t = state.timesteps[i]
            return scheduler.step(state, fake_model_jax(x, t, phase, None), t, x, key)

        return jax.lax.fori_loop(0, 10, body, (x0, state))[0]

    a, b, c = sample(jax.random.key(0)), sample(jax.random.key(0)), sample(jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert rel_l2(a, c) > 1e-2
    # without a key or noise the step is deterministic (its mean), and differs from a noisy one
    mean = run_jax(scheduler, 10, np.asarray(x0), None, jit=False)
    assert rel_l2(mean, a) > 1e-2


DDIM_CASES = [
    ({}, 10, {}, True),
    ({"prediction_type": "v_prediction"}, 10, {}, False),
    ({"prediction_type": "sample"}, 10, {}, False),
    ({"clip_sample": False}, 25, {}, True),
    ({"clip_sample": False, "set_alpha_to_one": False}, 10, {}, False),
    ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 50.0}, 10, {}, False),
    ({"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, 10, {},
     False),
    ({"timestep_spacing": "linspace", "beta_schedule": "squaredcos_cap_v2"}, 12, {}, False),
    ({"steps_offset": 1, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
      "clip_sample": False}, 20, {}, False),
    ({}, 10, {"eta": 0.5}, True),
    ({}, 10, {"eta": 1.0, "use_clipped_model_output": True}, False),
]


@pytest.mark.parametrize("kwargs,n,step_kwargs,jit", DDIM_CASES, ids=case_id)
def test_ddim_loop_matches_diffusers(kwargs, n, step_kwargs, jit):
    x0, noises = _inputs(n)
    noises = noises if step_kwargs.get("eta") else None
    step_kwargs = dict(step_kwargs)
    eta = step_kwargs.pop("eta", None)
    got = run_jax(DDIMScheduler(**kwargs), n, x0, noises, jit=jit, eta=eta, **step_kwargs)
    torch_kwargs = dict(step_kwargs, **({"eta": eta} if eta is not None else {}))
    want = run_torch(diffusers.DDIMScheduler(**kwargs), n, x0, noises, **torch_kwargs)
    assert rel_l2(got, want) < TOL


DPM_CASES = [
    ({}, 20, True),
    ({}, 7, False),
    ({}, 1, False),
    ({"solver_order": 1}, 10, False),
    ({"solver_order": 3}, 25, True),
    ({"solver_order": 3}, 10, False),
    ({"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"}, 10, True),
    ({"solver_type": "heun"}, 10, False),
    ({"solver_type": "heun", "solver_order": 3}, 12, False),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, 10, True),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"}, 10, False),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}, 10, False),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 1}, 10, False),
    ({"lower_order_final": False}, 10, False),
    ({"euler_at_final": True, "final_sigmas_type": "sigma_min"}, 20, False),
    ({"use_karras_sigmas": True}, 15, True),
    ({"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_order": 3}, 10, False),
    ({"use_lu_lambdas": True}, 10, False),
    ({"use_exponential_sigmas": True}, 10, False),
    ({"use_beta_sigmas": True}, 10, False),
    ({"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}, 10, False),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear", "rescale_betas_zero_snr": True,
      "timestep_spacing": "trailing"}, 10, False),
    ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 50.0}, 10, True),
    ({"prediction_type": "sample", "thresholding": True, "dynamic_thresholding_ratio": 0.8}, 10, False),
    ({"prediction_type": "sample", "thresholding": True, "algorithm_type": "dpmsolver",
      "final_sigmas_type": "sigma_min"}, 10, False),
    ({"prediction_type": "v_prediction", "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}, 10, False),
    ({"timestep_spacing": "leading", "steps_offset": 1}, 10, False),
    ({"timestep_spacing": "trailing"}, 10, False),
    ({"use_flow_sigmas": True, "flow_shift": 3.0, "prediction_type": "flow_prediction"}, 10, False),
    ({"algorithm_type": "sde-dpmsolver++"}, 10, True),
    ({"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, 10, False),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, 10, False),
    ({"algorithm_type": "sde-dpmsolver++", "solver_order": 1}, 10, False),
    ({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}, 10, False),
    ({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"}, 10, False),
    ({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 1}, 10, False),
]


@pytest.mark.parametrize("kwargs,n,jit", DPM_CASES, ids=case_id)
def test_dpm_loop_matches_diffusers(kwargs, n, jit):
    x0, noises = _inputs(n)
    noises = noises if kwargs.get("algorithm_type", "").startswith("sde") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated algorithm types
        ours, theirs = DPMSolverMultistepScheduler(**kwargs), diffusers.DPMSolverMultistepScheduler(**kwargs)
        want = run_torch(theirs, n, x0, noises)
    got = run_jax(ours, n, x0, noises, jit=jit)
    assert np.isfinite(got).all()
    assert rel_l2(got, want) < TOL


def test_dpm_learned_variance_and_custom_timesteps():
    # learned variance: diffusers keeps channels [:3] of the doubled output, so a 3-channel sample
    kwargs = {"variance_type": "learned_range"}
    x0, _ = _inputs(10, channels=3)
    got = run_jax(DPMSolverMultistepScheduler(**kwargs), 10, x0, jit=False)
    want = run_torch(diffusers.DPMSolverMultistepScheduler(**kwargs), 10, x0)
    assert rel_l2(got, want) < TOL
    custom = [999, 850, 700, 500, 320, 160, 50, 10]
    x0, _ = _inputs(len(custom))
    got = run_jax(DPMSolverMultistepScheduler(), None, x0, jit=False, timesteps=custom)
    want = run_torch(diffusers.DPMSolverMultistepScheduler(), None, x0, timesteps=custom)
    assert rel_l2(got, want) < TOL


def test_states_are_pytrees_and_dtypes():
    for cls, state_cls in (
        (DDPMScheduler, DDPMSchedulerState),
        (DDIMScheduler, DDIMSchedulerState),
        (DPMSolverMultistepScheduler, DPMSolverMultistepSchedulerState),
    ):
        scheduler = cls()
        state = scheduler.set_timesteps(5, shape=SHAPE)
        assert isinstance(state, state_cls) and state.num_inference_steps == 5
        leaves = jax.tree_util.tree_leaves(state)
        assert all(isinstance(leaf, jax.Array) for leaf in leaves)
        x = jnp.ones(SHAPE, jnp.bfloat16)
        prev, new = scheduler.step(state, x, state.timesteps[0], x)
        assert prev.dtype == jnp.bfloat16 and int(new.step_index) == 1
        assert scheduler.scale_model_input(state, x, 3) is x
