"""DDPMWuerstchenScheduler against diffusers: timesteps (default and the prior's custom ones), steps with the same
noise, the last step's mean, add_noise, the scaler's warps, a jitted loop, bad timesteps."""

from __future__ import annotations

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxgen.schedulers import DDPMWuerstchenScheduler
from tests.conftest import rel_l2

STAGE_C = list(np.linspace(1.0, 2 / 3, 20)) + list(np.linspace(2 / 3, 0.0, 11))[1:]  # diffusers' DEFAULT_STAGE_C_TIMESTEPS


def _exact_step(config: dict, t: float, prev: float, x, eps, noise) -> np.ndarray:
    """diffusers' step in float64 from the float32 inputs (the reference both float32 versions round)."""
    scaler, s = config.get("scaler", 1.0), config.get("s", 0.008)

    def alpha_bar(t: float) -> float:
        t = 1 - (1 - t) ** scaler if scaler > 1 else t**scaler if scaler < 1 else t
        value = np.cos((t + s) / (1 + s) * np.pi * 0.5) ** 2 / np.cos(s / (1 + s) * np.pi * 0.5) ** 2
        return float(np.clip(value, 0.0001, 0.9999))

    a, a_prev = alpha_bar(t), alpha_bar(prev)
    alpha = a / a_prev
    x, eps, noise = (np.asarray(v, np.float64) for v in (x, eps, noise))
    mu = np.sqrt(1 / alpha) * (x - (1 - alpha) * eps / np.sqrt(1 - a))
    return mu + (prev != 0) * np.sqrt((1 - alpha) * (1 - a_prev) / (1 - a)) * noise


def _pair(**config):
    return DDPMWuerstchenScheduler(**config), diffusers.DDPMWuerstchenScheduler(**config)


@pytest.mark.parametrize("config", [{}, {"scaler": 2.0}, {"scaler": 0.5, "s": 0.01}])
@pytest.mark.parametrize("custom", [False, True])
def test_steps_match_diffusers(config, custom, monkeypatch):
    ours, ref = _pair(**config)
    state = ours.set_timesteps(timesteps=STAGE_C) if custom else ours.set_timesteps(6)
    ref.set_timesteps(timesteps=STAGE_C) if custom else ref.set_timesteps(6)
    np.testing.assert_array_equal(np.asarray(state.timesteps), ref.timesteps[:-1].numpy())  # bit for bit
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 16)).astype(np.float32)
    import diffusers.schedulers.scheduling_ddpm_wuerstchen as module

    for i, t in enumerate(np.asarray(state.timesteps)):  # each step from the same input on both sides
        eps = rng.standard_normal(x.shape).astype(np.float32)
        noise = rng.standard_normal(x.shape).astype(np.float32)
        monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: torch.from_numpy(noise))
        exact = _exact_step(config, float(ref.timesteps[i]), float(ref.timesteps[i + 1]), x, eps, noise)
        theirs = ref.step(torch.from_numpy(eps), ref.timesteps[i:i + 1].expand(2), torch.from_numpy(x)).prev_sample
        out, state = ours.step(state, jnp.asarray(eps), t, jnp.asarray(x), noise=jnp.asarray(noise))
        ours_err, ref_err = rel_l2(np.asarray(out), exact), rel_l2(theirs.numpy(), exact)
        # float32 cos near pi / 2 (alpha_bar of t close to 1) differs in its last bits between XLA and torch, and
        # sqrt(1 / alpha) amplifies it: each side is held to the float64 step, jaxgen to at most twice diffusers'
        assert ours_err < max(1e-5, 2 * ref_err), (i, ours_err, ref_err)
        x = np.array(out)  # writable, for torch.from_numpy
    assert int(state.step_index) == state.timesteps.shape[0]


def test_add_noise_matches_diffusers():
    ours, ref = _pair(scaler=1.5)
    rng = np.random.default_rng(1)
    x0, noise = (rng.standard_normal((3, 4, 4, 16)).astype(np.float32) for _ in range(2))
    t = np.array([0.9, 0.4, 0.05], np.float32)
    out = ours.add_noise(None, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(t))
    expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    assert rel_l2(np.asarray(out), expected) < 1e-6


def test_a_jitted_loop_runs_every_step_with_its_own_noise():
    scheduler = DDPMWuerstchenScheduler()
    state = scheduler.set_timesteps(timesteps=STAGE_C)

    @jax.jit
    def run(x, state, key):
        def body(_, carry):
            x, state = carry
            t = state.timesteps[state.step_index]
            return scheduler.step(state, 0.1 * x, t, x, key)
        return jax.lax.fori_loop(0, state.timesteps.shape[0], body, (x, state))

    x = jnp.ones((1, 2, 2, 16))
    out, final = run(x, state, jax.random.key(0))
    again, _ = run(x, state, jax.random.key(0))
    other, _ = run(x, state, jax.random.key(1))
    assert int(final.step_index) == len(STAGE_C) - 1 and np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
    assert not np.allclose(np.asarray(out), np.asarray(other))


@pytest.mark.parametrize("timesteps, message", [
    ([0.5, 0.7, 0.0], "decrease"), ([1.2, 0.5, 0.0], "within"), ([1.0], "at least two"), ([1.0, 0.5, 0.5, 0.0], "decrease"),
])
def test_bad_timesteps_are_refused(timesteps, message):
    with pytest.raises(ValueError, match=message):
        DDPMWuerstchenScheduler().set_timesteps(timesteps=timesteps)


def test_default_timesteps_are_torchs_bit_for_bit():
    """diffusers' torch.linspace(1, 0, n + 1): the model's ratio embedding multiplies t by 10000, so an ulp of t
    is visible in a pipeline's output (np.linspace differs by an ulp at some points)."""
    for n in range(1, 130):
        state = DDPMWuerstchenScheduler().set_timesteps(n)
        ref = torch.linspace(1.0, 0.0, n + 1).numpy()
        np.testing.assert_array_equal(np.asarray(state.timesteps), ref[:-1])
        np.testing.assert_array_equal(np.asarray(state.prev_timesteps), ref[1:])
