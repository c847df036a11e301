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

`SCHEDULERS` maps diffusers class names (model_index.json's) to classes; the names come from
``jaxgen.registry``.
"""

from typing import Any

from jaxgen import registry

from .base import BaseScheduler, FrozenConfig, SchedulerState

SCHEDULERS: dict[str, type[BaseScheduler]] = {
    name: registry.load(module, name) for name, module in registry.SCHEDULERS.items()
}

__all__ = ["SCHEDULERS", "BaseScheduler", "FrozenConfig", "SchedulerState",
           *sorted(SCHEDULERS), *sorted(f"{name}State" for name in SCHEDULERS)]


def __getattr__(name: str) -> Any:
    """``jaxgen.schedulers.<Name>`` and its state class ``<Name>State``."""
    if name in SCHEDULERS:
        return SCHEDULERS[name]
    if name.endswith("State") and name[: -len("State")] in SCHEDULERS:
        return registry.load(registry.SCHEDULERS[name[: -len("State")]], name)
    raise AttributeError(f"module 'jaxgen.schedulers' has no attribute {name!r}")
