"""The shared sampling loop (``jaxgen.pipelines.sampling.denoise``) on a toy denoiser and a toy scheduler:
guidance pairing order, post_step, callback rows, padding rows, pytree latents, continuous
timesteps, separate unconditional calls and declared learned variances.

The toy scheduler steps x <- x - out, so after the loop x0 - x is the sum of what the scheduler was
given, and every value below can be written down by hand.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import sharding
from jaxgen.pipelines import sampling
from jaxgen.schedulers.base import SchedulerState


@dataclasses.dataclass(frozen=True)
class ToyScheduler:
    """x <- x - out at each of ``timesteps`` (floats kept as floats). ``variance_type`` as DDPM's config key."""

    timesteps: tuple = (3.0, 2.0)
    variance_type: str | None = None
    order = 1
    init_noise_sigma = 1.0

    def config_keys(self) -> tuple[str, ...]:
        return ("variance_type",)

    @property
    def config(self) -> dict:
        return {"variance_type": self.variance_type}

    def set_timesteps(self, num_inference_steps=None, *, shape=None):
        return SchedulerState(timesteps=jnp.asarray(self.timesteps, jnp.float32), step_index=jnp.zeros((), jnp.int32))

    def scale_model_input(self, state, x, t):
        return x

    def step(self, state, out, t, x, key):
        if self.variance_type is None:
            assert out.shape == x.shape, (out.shape, x.shape)  # a learned variance must not reach it
            return x - out, state.replace(step_index=state.step_index + 1)
        eps, var = out[..., : x.shape[-1]], out[..., x.shape[-1]:]
        return x - eps - 100.0 * var, state.replace(step_index=state.step_index + 1)


@dataclasses.dataclass(frozen=True)
class ToyDenoiser(sampling.Denoiser):
    """Output: cond["c"] (one value per row) + t / 1000, broadcast to the input's shape; with
    ``variance`` a second half of cond["v"]; ``predict_unconditional``: cond["u"] per row."""

    variance: bool = False

    def predict(self, params, x, t, cond):
        def per_row(values, like):
            return jnp.broadcast_to(values.reshape((-1,) + (1,) * (like.ndim - 1)), like.shape)

        if isinstance(x, dict):
            return {k: per_row(cond["c"] + t / 1000.0, v) for k, v in x.items()}
        out = per_row(cond["c"] + t / 1000.0, x)
        return jnp.concatenate([out, per_row(cond["v"], x)], axis=-1) if self.variance else out

    def predict_unconditional(self, params, x, t, cond, key):
        return jnp.broadcast_to(cond["u"].reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)

    def learned_variance(self) -> bool:
        return self.variance


def run(latents, cond, *, scheduler=ToyScheduler(), denoiser=ToyDenoiser(), scale=2.0, steps=None, start=0, **kw):
    state = scheduler.set_timesteps().replace(step_index=jnp.asarray(start, jnp.int32))
    steps = len(scheduler.timesteps) - start if steps is None else steps
    out = sampling.denoise(denoiser, scheduler, {}, latents, state, cond, jnp.float32(scale), jax.random.key(0),
                           jnp.int32(steps), **kw)
    return jax.tree_util.tree_map(np.asarray, out)


X0 = np.zeros((3, 2, 2, 1), np.float32)
T_SUM = (3.0 + 2.0) / 1000.0  # both steps' t / 1000


def test_classifier_free_guidance_pairs_each_sample_with_its_own_unconditional_row():
    u, c = np.array([1.0, 2.0, 3.0], np.float32), np.array([10.0, 20.0, 30.0], np.float32)
    cond = {"c": np.concatenate([u, c])}  # diffusers' layout: [uncond; cond]
    out = run(X0, cond, guidance=sampling.ClassifierFreeGuidance(), scale=2.0)
    per_step = u + 2.0 * (c - u)  # t / 1000 is in both halves: guidance keeps it once
    np.testing.assert_allclose(out[:, 0, 0, 0], -(2 * per_step + T_SUM), rtol=1e-6)
    # no guidance: the rows as they are
    out = run(X0, {"c": c}, guidance=sampling.NoGuidance())
    np.testing.assert_allclose(out[:, 0, 0, 0], -(2 * c + T_SUM), rtol=1e-6)


def test_padding_rows_on_the_mesh_leave_the_real_rows_alone():
    mesh = sharding.make_mesh()  # the suite's 8 CPU devices on "data"
    rows = sharding.padded_size(3, mesh)
    assert rows == 8
    u, c = np.array([1.0, 2.0, 3.0], np.float32), np.array([10.0, 20.0, 30.0], np.float32)
    halves = [sharding.pad_rows(x, rows) for x in (u, c)]
    cond = {"c": sharding.shard_batch(np.concatenate(halves), mesh, 2 * rows)}
    latents = sharding.shard_batch(X0, mesh, rows)
    with jax.set_mesh(mesh):
        out = run(latents, cond, guidance=sampling.ClassifierFreeGuidance(), batch_sharding=sharding.batch_sharding(mesh))
    assert out.shape == (8, 2, 2, 1)
    np.testing.assert_allclose(out[:3, 0, 0, 0], -(2 * (u + 2.0 * (c - u)) + T_SUM), rtol=1e-6)


@dataclasses.dataclass(frozen=True)
class AddSampleCond(sampling.PostStep):
    """After each step: the stepped latents plus 1000 x the sample's cond["k"], minus the previous latents."""

    def __call__(self, latents, previous, cond, scheduler, state):
        k = cond["k"].reshape((-1,) + (1,) * (latents.ndim - 1))
        return latents + 1000.0 * k + 0.0 * previous + (state.step_index == 2) * previous


def test_post_step_gets_each_samples_conditional_row_and_the_previous_latents():
    c = np.array([10.0, 20.0, 30.0], np.float32)
    k_uncond, k_cond = np.array([7.0, 7.0, 7.0], np.float32), np.array([1.0, 2.0, 3.0], np.float32)
    cond = {"c": np.concatenate([c, c]), "k": np.concatenate([k_uncond, k_cond])}
    out = run(X0, cond, guidance=sampling.ClassifierFreeGuidance(), post_step=AddSampleCond())
    # step 1: x1 = -(c + 3/1000) + 1000 k; step 2 (step_index 2 after it): x2 = x1 - (c + 2/1000) + 1000 k + x1
    x1 = -(c + 3.0 / 1000) + 1000.0 * k_cond
    x2 = x1 - (c + 2.0 / 1000) + 1000.0 * k_cond + x1
    np.testing.assert_allclose(out[:, 0, 0, 0], x2, rtol=1e-6)


def test_callback_sees_the_real_rows_every_callback_steps():
    seen = []
    callback = sampling.FirstRows(lambda i, t, x: seen.append((int(i), float(t), np.asarray(x).shape)), rows=2)
    scheduler = ToyScheduler(timesteps=(4.0, 3.0, 2.0, 1.0))
    run(X0, {"c": np.ones(3, np.float32)}, scheduler=scheduler, callback=callback, callback_steps=2)
    jax.effects_barrier()
    assert sorted(seen) == [(0, 4.0, (2, 2, 2, 1)), (2, 2.0, (2, 2, 2, 1))]


def test_start_index_and_zero_steps():
    scheduler = ToyScheduler(timesteps=(4.0, 3.0, 2.0))
    c = np.array([1.0, 2.0, 3.0], np.float32)
    out = run(X0, {"c": c}, scheduler=scheduler, start=1)  # img2img: the last two timesteps
    np.testing.assert_allclose(out[:, 0, 0, 0], -(2 * c + 5.0 / 1000), rtol=1e-6)
    np.testing.assert_array_equal(run(X0 + 5, {"c": c}, scheduler=scheduler, steps=0), X0 + 5)  # warmup's count


def test_pytree_latents_are_stepped_as_flat_rows_and_come_back_as_the_tree():
    latents = {"image": np.zeros((3, 2, 2, 4), np.float32), "text": np.full((3, 5), 1.0, np.float32)}
    c = np.array([1.0, 2.0, 3.0], np.float32)
    out = run(latents, {"c": c}, guidance=sampling.NoGuidance())
    assert set(out) == {"image", "text"} and out["image"].shape == (3, 2, 2, 4) and out["text"].shape == (3, 5)
    np.testing.assert_allclose(out["image"][:, 0, 0, 0], -(2 * c + T_SUM), rtol=1e-6)
    np.testing.assert_allclose(out["text"][:, 3], 1.0 - (2 * c + T_SUM), rtol=1e-6)
    flat = sampling.flat_rows(jax.tree_util.tree_map(jnp.asarray, latents))
    assert flat.shape == (3, 16 + 5)
    back = sampling.unflatten_rows(flat, jax.tree_util.tree_map(jnp.asarray, latents))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, latents)


def test_continuous_timesteps_reach_the_model_unrounded():
    scheduler = ToyScheduler(timesteps=(0.75, 0.25))  # Würstchen's t in [0, 1]
    out = run(X0, {"c": np.zeros(3, np.float32)}, scheduler=scheduler, guidance=sampling.NoGuidance())
    np.testing.assert_allclose(out[:, 0, 0, 0], -(0.75 + 0.25) / 1000, rtol=1e-6)


def test_separate_unconditional_call():
    c, u = np.array([10.0, 20.0, 30.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32)
    out = run(X0, {"c": c, "u": u}, guidance=sampling.SeparateUnconditional(), scale=3.0)
    # per step: u + 3 (c + t/1000 - u)
    expected = 2 * (u + 3.0 * (c - u)) + 3.0 * T_SUM
    np.testing.assert_allclose(out[:, 0, 0, 0], -expected, rtol=1e-6)


@pytest.mark.parametrize("keeps", [False, True])
def test_a_declared_learned_variance_is_guided_from_the_conditional_half_and_reaches_only_schedulers_that_read_it(keeps):
    u, c = np.array([1.0, 2.0, 3.0], np.float32), np.array([10.0, 20.0, 30.0], np.float32)
    v_uncond, v_cond = np.full(3, 0.5, np.float32), np.array([0.01, 0.02, 0.03], np.float32)
    cond = {"c": np.concatenate([u, c]), "v": np.concatenate([v_uncond, v_cond])}
    scheduler = ToyScheduler(variance_type="learned_range" if keeps else None)
    out = run(X0, cond, scheduler=scheduler, denoiser=ToyDenoiser(variance=True),
              guidance=sampling.ClassifierFreeGuidance(), scale=2.0)
    eps = 2 * (u + 2.0 * (c - u)) + T_SUM
    expected = -(eps + 2 * 100.0 * v_cond) if keeps else -eps
    np.testing.assert_allclose(out[:, 0, 0, 0], expected, rtol=1e-6)


def test_compile_only_is_scoped():
    assert not sampling.is_compile_only()
    with sampling.compile_only():
        assert sampling.is_compile_only()
    assert not sampling.is_compile_only()
