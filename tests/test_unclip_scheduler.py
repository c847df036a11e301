"""UnCLIPScheduler (the Kandinsky 2.x prior's scheduler) against diffusers (PyTorch, CPU, float32).

diffusers' side is driven exactly as its Kandinsky prior pipeline drives it: `step(..., prev_timestep=
timesteps[i + 1])`, and `prev_timestep=None` on the last step. Its noise (`randn_tensor`) is patched
to return the same noise the JAX side is given. The fake model is a fixed smooth function of
(sample, timestep), written once in channels-last layout; samples are prior embeddings (B, D) or
images (B, H, W, C) (NCHW on the torch side, where learned_range splits channels on axis 1).
"""

from __future__ import annotations

import dataclasses
import json

import diffusers
import diffusers.schedulers.scheduling_unclip as torch_unclip
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxgen.pipelines import sampling
from jaxgen.schedulers import SCHEDULERS, UnCLIPScheduler, UnCLIPSchedulerState
from tests.conftest import REAL_CONFIGS, rel_l2

EMBED = (2, 16)  # (B, D): the prior's image embedding
IMAGE = (2, 6, 6, 3)  # (B, H, W, C): the karlo decoder's learned_range use
TOL = 2e-6  # a single step agrees to ~2 ulps; 25 steps stay within this
LONG_TOL = 1e-5  # 700-1000 steps: those ulps accumulate (test_every_step_matches_diffusers checks each step)
PRIVATE = {"_use_default_values", "_class_name", "_diffusers_version"}
PRIOR_CONFIG = REAL_CONFIGS / "kandinsky-community__kandinsky-2-1-prior" / "scheduler" / "scheduler_config.json"


def public(config) -> dict:
    return {k: v for k, v in dict(config).items() if k not in PRIVATE}


def case_id(value) -> str:
    if isinstance(value, dict):
        return "-".join(f"{k}={v}" for k, v in value.items()) or "default"
    return str(value)


# ----------------------------------------------------------------------------------------------
# The fake model and the two loops


def _phase(shape: tuple[int, ...]) -> np.ndarray:
    """A fixed channels-last pattern (shape without the batch axis): the model is not constant over entries."""
    return np.random.RandomState(7).uniform(0, 2 * np.pi, shape[1:]).astype(np.float32)


def fake_model(xp, x, t, phase, learned: bool):
    """x (B, ..., C) channels last -> (B, ..., C), or (B, ..., 2C) with a variance in [-1, 1] appended.

    `xp` is jnp or torch (with x, phase tensors of that library); t a scalar."""
    out = 0.8 * xp.tanh(x) + 0.3 * xp.cos(t / 300.0 + phase)
    if not learned:
        return out
    v = xp.tanh(0.5 * x + xp.sin(t / 200.0 + phase))
    return xp.concatenate([out, v], axis=-1) if xp is jnp else torch.cat([out, v], dim=-1)


def _first(x: torch.Tensor) -> torch.Tensor:
    """Channels last -> torch's channels-first layout (identity for (B, D))."""
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x


def _last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x


class _patched_randn:
    """diffusers' UnCLIP step draws `randn_tensor(model_output.shape)`: hand it `noise` instead."""

    def __init__(self, noise: torch.Tensor | None):
        self.noise = noise

    def __enter__(self):
        self.original = torch_unclip.randn_tensor
        torch_unclip.randn_tensor = lambda shape, **kw: self.noise if self.noise is not None else torch.zeros(shape)

    def __exit__(self, *exc):
        torch_unclip.randn_tensor = self.original


def run_torch(scheduler, table, x0, noises=None, learned=False):
    """The Kandinsky prior pipeline's loop over `table` (int64); x0 (B, ..., C); noises (N, B, ..., C) or None."""
    phase = torch.from_numpy(_phase(x0.shape))
    x = _first(torch.from_numpy(x0))
    table = torch.as_tensor(np.asarray(table), dtype=torch.int64)
    for i, t in enumerate(table):
        out = _first(fake_model(torch, _last(scheduler.scale_model_input(x, t)), float(t), phase, learned))
        prev_timestep = None if i + 1 == table.shape[0] else table[i + 1]
        noise = None if noises is None else _first(torch.from_numpy(noises[i]))
        with _patched_randn(noise):
            x = scheduler.step(out, timestep=t, sample=x, prev_timestep=prev_timestep, generator=None).prev_sample
    return _last(x).numpy()


def jax_loop(scheduler, state, x, phase, noises, key):
    """The loop as the shared sampler runs it: fori_loop over the state's table, state carried."""
    learned = scheduler.config["variance_type"] == "learned_range"

    def body(i, carry):
        x, state = carry
        t = state.timesteps[i]
        out = fake_model(jnp, scheduler.scale_model_input(state, x, t), t.astype(jnp.float32), phase, learned)
        noise = None if noises is None else noises[i]
        return scheduler.step(state, out, t, x, key, noise=noise)

    return jax.lax.fori_loop(0, state.timesteps.shape[0], body, (x, state))


jax_loop_jit = jax.jit(jax_loop, static_argnums=0)


def run_jax(scheduler, state, x0, noises=None, *, jit=True, key=None):
    """x0 (B, ..., C); noises (N, B, ..., C) or None. Returns the final sample (numpy)."""
    phase = jnp.asarray(_phase(x0.shape))
    noises = None if noises is None else jnp.asarray(noises)
    if jit:
        x, state = jax_loop_jit(scheduler, state, jnp.asarray(x0), phase, noises, key)
    else:
        with jax.disable_jit():
            x, state = jax_loop(scheduler, state, jnp.asarray(x0), phase, noises, key)
    assert int(state.step_index) == state.timesteps.shape[0]
    return np.asarray(x)


def _inputs(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    return rng.randn(*shape).astype(np.float32), rng.randn(n, *shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Config, tables, validation


def test_config_keys_defaults_and_registry():
    ours, theirs = UnCLIPScheduler(), diffusers.UnCLIPScheduler()
    assert public(ours.config) == public(theirs.config)
    assert ours.config["_class_name"] == "UnCLIPScheduler" and SCHEDULERS["UnCLIPScheduler"] is UnCLIPScheduler
    assert UnCLIPScheduler.order == 1 and ours.init_noise_sigma == theirs.init_noise_sigma == 1.0
    np.testing.assert_array_equal(ours.betas, theirs.betas.numpy())
    np.testing.assert_array_equal(ours.alphas_cumprod, theirs.alphas_cumprod.numpy())
    assert UnCLIPScheduler(clip_sample_range=10.0) == UnCLIPScheduler(clip_sample_range=10.0)
    assert hash(UnCLIPScheduler()) == hash(ours) and UnCLIPScheduler(clip_sample=False) != ours


def test_from_config_with_the_kandinsky_prior_config():
    file_config = json.loads(PRIOR_CONFIG.read_text())
    ours = UnCLIPScheduler.from_config(file_config)
    theirs = diffusers.UnCLIPScheduler.from_config(file_config)
    assert public(ours.config) == public(theirs.config)
    assert ours.config["prediction_type"] == "sample" and ours.config["clip_sample_range"] == 10.0
    # the prior pipeline's default: 25 steps
    state = ours.set_timesteps(25, shape=EMBED)
    x0, noises = _inputs(25, EMBED)
    got = run_jax(ours, state, x0, noises, jit=False)
    theirs.set_timesteps(25)
    want = run_torch(theirs, theirs.timesteps, x0, noises)
    assert rel_l2(got, want) < TOL


@pytest.mark.parametrize("n", [2, 3, 7, 25, 50, 64, 100, 500, 700, 999, 1000])
def test_timesteps_match_diffusers(n):
    state = UnCLIPScheduler().set_timesteps(n)
    theirs = diffusers.UnCLIPScheduler()
    theirs.set_timesteps(n)
    assert isinstance(state, UnCLIPSchedulerState) and state.timesteps.dtype == jnp.int32
    assert int(state.step_index) == 0 and state.num_inference_steps == n
    np.testing.assert_array_equal(np.asarray(state.timesteps), theirs.timesteps.numpy())


def test_unsupported_values_raise():
    for name, value in (("beta_schedule", "linear"), ("variance_type", "fixed_small"),
                        ("prediction_type", "v_prediction")):
        with pytest.raises(ValueError, match=name):
            UnCLIPScheduler(**{name: value})
    for bad in (0, 1, -3, 1001, 2.5, None):
        with pytest.raises(ValueError, match="num_inference_steps"):
            UnCLIPScheduler().set_timesteps(bad)
    x = jnp.zeros(EMBED)
    learned = UnCLIPScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="variance_type"):
        learned.step(learned.set_timesteps(2), x, 999, x)
    with pytest.raises(ValueError, match="shape"):
        UnCLIPScheduler().step(UnCLIPScheduler().set_timesteps(2), jnp.zeros((2, 32)), 999, x)
    with pytest.raises(TypeError):
        UnCLIPScheduler(timestep_spacing="leading")


# ----------------------------------------------------------------------------------------------
# Whole loops against diffusers

LOOP_CASES = [
    # (kwargs, steps, sample shape, jit)
    ({}, 25, EMBED, True),
    ({"prediction_type": "sample", "clip_sample_range": 10.0}, 25, EMBED, False),
    ({"clip_sample": False}, 10, EMBED, False),
    ({"prediction_type": "sample", "clip_sample": False}, 10, EMBED, False),
    ({"clip_sample_range": 2.0}, 10, IMAGE, False),
    ({"variance_type": "learned_range"}, 10, IMAGE, True),
    ({"variance_type": "learned_range", "prediction_type": "sample", "clip_sample": False}, 12, IMAGE, False),
    ({"variance_type": "learned_range", "clip_sample_range": 3.0}, 7, EMBED, False),
    ({}, 1000, EMBED, True),  # every step t -> t - 1: the trained betas
    ({"variance_type": "learned_range"}, 700, EMBED, True),  # steps of 1 and 2 mixed
]


@pytest.mark.parametrize("kwargs,n,shape,jit", LOOP_CASES, ids=case_id)
def test_loop_matches_diffusers(kwargs, n, shape, jit):
    learned = kwargs.get("variance_type") == "learned_range"
    x0, noises = _inputs(n, shape)
    ours = UnCLIPScheduler(**kwargs)
    got = run_jax(ours, ours.set_timesteps(n), x0, noises, jit=jit)
    theirs = diffusers.UnCLIPScheduler(**kwargs)
    theirs.set_timesteps(n)
    want = run_torch(theirs, theirs.timesteps, x0, noises, learned)
    assert np.isfinite(got).all()
    assert rel_l2(got, want) < (TOL if n <= 100 else LONG_TOL)


@pytest.mark.parametrize("kwargs,n", [({}, 1000), ({"variance_type": "learned_range", "clip_sample": False}, 700)],
                         ids=case_id)
def test_every_step_matches_diffusers(kwargs, n):
    # each step of a long table on its own, from the same (x_t, model output, noise) on both sides
    ours, theirs = UnCLIPScheduler(**kwargs), diffusers.UnCLIPScheduler(**kwargs)
    state = ours.set_timesteps(n)
    theirs.set_timesteps(n)
    channels = 2 * EMBED[1] if kwargs.get("variance_type") == "learned_range" else EMBED[1]
    rng = np.random.RandomState(4)
    xs, noises = rng.randn(2, n, *EMBED).astype(np.float32)
    outs = 1.5 * rng.randn(n, EMBED[0], channels).astype(np.float32)
    step = jax.jit(lambda state, out, t, x, noise: ours.step(state, out, t, x, noise=noise)[0])
    table = theirs.timesteps
    for i, t in enumerate(table):
        prev_timestep = None if i + 1 == n else table[i + 1]
        with _patched_randn(torch.from_numpy(noises[i])):
            want = theirs.step(torch.from_numpy(outs[i]), t, torch.from_numpy(xs[i]), prev_timestep=prev_timestep)
        got = step(state.replace(step_index=jnp.int32(i)), outs[i], state.timesteps[i], xs[i], noises[i])
        assert rel_l2(got, want.prev_sample.numpy()) < 5e-7, f"step {i}, t = {int(t)}"


@pytest.mark.parametrize("variance_type", ["fixed_small_log", "learned_range"])
def test_last_step_goes_to_t_minus_1(variance_type):
    # a table ending above 0 (the state's table replaced, as a caller may): diffusers' last step gets
    # prev_timestep=None, i.e. t - 1 with the trained beta_t, and adds noise since t > 0
    table = [999, 600, 37, 5]
    x0, noises = _inputs(len(table), EMBED, seed=3)
    ours = UnCLIPScheduler(variance_type=variance_type)
    state = ours.set_timesteps(4).replace(timesteps=jnp.asarray(table, jnp.int32))
    got = run_jax(ours, state, x0, noises, jit=False)
    want = run_torch(diffusers.UnCLIPScheduler(variance_type=variance_type), table, x0, noises,
                     variance_type == "learned_range")
    assert rel_l2(got, want) < TOL
    assert int(ours.previous_timestep(state.replace(step_index=jnp.int32(3)), 5)) == 4
    assert int(ours.previous_timestep(state.replace(step_index=jnp.int32(1)), 600)) == 37


def test_jitted_fori_loop_equals_eager_loop():
    kwargs = {"variance_type": "learned_range", "clip_sample_range": 3.0}
    ours = UnCLIPScheduler(**kwargs)
    x0, noises = _inputs(7, EMBED, seed=1)
    eager = run_jax(ours, ours.set_timesteps(7), x0, noises, jit=False)
    jitted = run_jax(ours, ours.set_timesteps(7), x0, noises, jit=True)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


def test_keys_mean_and_noise_only_above_zero():
    ours = UnCLIPScheduler()
    x0, _ = _inputs(1, EMBED)
    state = ours.set_timesteps(10)
    a = run_jax(ours, state, x0, key=jax.random.key(0))
    b = run_jax(ours, state, x0, key=jax.random.key(0))
    c = run_jax(ours, state, x0, key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert rel_l2(a, c) > 1e-2
    # without a key or noise: the posterior mean, i.e. diffusers with zero noise
    mean = run_jax(ours, state, x0, jit=False)
    theirs = diffusers.UnCLIPScheduler()
    theirs.set_timesteps(10)
    assert rel_l2(mean, run_torch(theirs, theirs.timesteps, x0, None)) < TOL
    assert rel_l2(mean, a) > 1e-2
    # the step at t = 0 adds no noise
    step = jax.jit(lambda state, x, noise: ours.step(state, 0.5 * x, state.timesteps[state.step_index], x, noise=noise))
    last = state.replace(step_index=jnp.int32(9))
    x = jnp.asarray(x0)
    noisy, new = step(last, x, jax.random.normal(jax.random.key(0), EMBED))
    np.testing.assert_array_equal(np.asarray(noisy), np.asarray(step(last, x, jnp.zeros(EMBED))[0]))
    assert int(new.step_index) == 10


def test_add_noise_scale_model_input_and_dtypes():
    rng = np.random.RandomState(0)
    x0, eps = rng.randn(2, 3, 16).astype(np.float32)
    t = np.array([0, 500, 999])
    ours, theirs = UnCLIPScheduler(), diffusers.UnCLIPScheduler()
    got = ours.add_noise(None, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t))
    want = theirs.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t))
    assert rel_l2(got, want.numpy()) < 1e-6
    state = ours.set_timesteps(5)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(state))
    x = jnp.ones(EMBED, jnp.bfloat16)
    assert ours.scale_model_input(state, x, 3) is x
    prev, new = jax.jit(ours.step)(state, x, state.timesteps[0], x, jax.random.key(0))
    assert prev.dtype == jnp.bfloat16 and int(new.step_index) == 1


# ----------------------------------------------------------------------------------------------
# The shared sampling loop


@dataclasses.dataclass(frozen=True)
class FakePrior(sampling.Denoiser):
    """The fake model as a `Denoiser` (learned variance declared for learned_range)."""

    learned: bool = False

    def predict(self, params, x, t, cond):
        return fake_model(jnp, x, t[0].astype(jnp.float32), params["phase"], self.learned)

    def learned_variance(self) -> bool:
        return self.learned


@pytest.mark.parametrize("variance_type", ["fixed_small_log", "learned_range"])
def test_shared_denoise_loop_drives_it(variance_type):
    n, key = 8, jax.random.key(42)
    learned = variance_type == "learned_range"
    kwargs = {"variance_type": variance_type, "prediction_type": "sample", "clip_sample_range": 10.0}
    ours = UnCLIPScheduler(**kwargs)
    x0, _ = _inputs(n, EMBED, seed=2)
    got = sampling.denoise(FakePrior(learned), ours, {"phase": jnp.asarray(_phase(EMBED))}, jnp.asarray(x0),
                           ours.set_timesteps(n), {}, jnp.float32(1.0), key, jnp.int32(n))
    # the loop's step i draws from fold_in(key, i), which the step folds again with its index i
    noises = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), i), EMBED))
                       for i in range(n)])
    theirs = diffusers.UnCLIPScheduler(**kwargs)
    theirs.set_timesteps(n)
    assert rel_l2(np.asarray(got), run_torch(theirs, theirs.timesteps, x0, noises, learned)) < TOL
