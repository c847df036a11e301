"""Pure-functional schedulers with diffusers' class names and config keys.

A scheduler is an immutable, hashable object (config + pure methods); its state is a pytree:

    scheduler = DDIMScheduler.from_config(config)       # any scheduler's config mapping
    state = scheduler.set_timesteps(50, shape=latents.shape)

    def body(i, carry):
        x, state = carry
        t = state.timesteps[i]
        eps = model(scheduler.scale_model_input(state, x, t), t)
        return scheduler.step(state, eps, t, x, key)  # -> (x, state)

    x, state = jax.lax.fori_loop(0, state.num_inference_steps, body, (latents, state))

`SCHEDULERS` maps diffusers class names (model_index.json's) to classes.
"""

from .base import BaseScheduler, FrozenConfig, SchedulerState
from .ddim import DDIMScheduler, DDIMSchedulerState
from .ddpm import DDPMScheduler, DDPMSchedulerState
from .dpmsolver_multistep import DPMSolverMultistepScheduler, DPMSolverMultistepSchedulerState

SCHEDULERS: dict[str, type[BaseScheduler]] = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
}

__all__ = [
    "SCHEDULERS",
    "BaseScheduler",
    "DDIMScheduler",
    "DDIMSchedulerState",
    "DDPMScheduler",
    "DDPMSchedulerState",
    "DPMSolverMultistepScheduler",
    "DPMSolverMultistepSchedulerState",
    "FrozenConfig",
    "SchedulerState",
]
