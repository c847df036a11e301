"""What every jaxgen pipeline shares: loading components, rng handling, progress, outputs.

A pipeline holds its components as attributes named as in diffusers (``pipe.transformer``,
``pipe.vae``, ``pipe.text_encoder``, ``pipe.tokenizer``, ``pipe.scheduler``). Model components are
flax modules bound to their params (``module.bind({"params": params})``): ``pipe.vae.config`` reads
like diffusers, and ``pipe.vae.unbind()`` gives back ``(module, variables)``, which is what the
compiled functions take, so params are arguments and never baked into a program as constants.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import hub

__all__ = ["DiffusionPipeline", "ImagePipelineOutput", "ComponentSpec", "as_key", "bind_model"]


@dataclasses.dataclass
class ImagePipelineOutput:
    """``images``: a list of PIL images, a float32 NHWC numpy array in [0, 1], or latents (NHWC)."""

    images: Any

    def __getitem__(self, index: int) -> Any:  # diffusers' outputs index like tuples
        return dataclasses.astuple(self)[index]


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """How a pipeline loads one component: ``kind`` is "model", "tokenizer" or "scheduler".

    For models, ``model_class`` is the jaxgen class; ``library_classes`` lists the class names that
    model_index.json may give for it (checked, so a wrong folder fails with a clear message).
    """

    kind: str
    model_class: Any = None
    library_classes: tuple[str, ...] = ()
    optional: bool = False


def as_key(rng: Any) -> jax.Array:
    """``rng`` argument -> a ``jax.random`` key: an int seed, a key (new or raw uint32 style), or None (seed 0)."""
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    if isinstance(rng, jax.Array):
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            return rng
        if rng.shape == (2,) and rng.dtype == jnp.uint32:
            return jax.random.wrap_key_data(rng)
    raise TypeError(f"`rng` must be an int seed or a jax.random key, got {type(rng).__name__}")


def bind_model(value: Any) -> Any:
    """A component value as passed by a user -> a bound flax module (or None).

    Accepts a bound module, or the ``(module, params)`` pair that ``Model.from_pretrained`` returns.
    """
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:
        module, params = value
        variables = params if isinstance(params, Mapping) and "params" in params else {"params": params}
        return module.bind(variables)
    if getattr(value, "scope", None) is not None:
        return value
    raise TypeError(
        f"expected a bound flax module or the (module, params) pair from from_pretrained, got {type(value).__name__}"
    )


def unbind(bound: Any) -> tuple[Any, Any]:
    """Bound module -> (unbound module, params)."""
    module, variables = bound.unbind()
    return module, variables["params"]


def _load_tokenizer(folder: Path, class_name: str):
    import transformers

    if not (class_name.endswith("Tokenizer") or class_name.endswith("TokenizerFast")):
        raise hub.CheckpointError(f"{folder}: {class_name!r} is not a tokenizer class")
    cls = getattr(transformers, class_name, None)
    if cls is None:
        cls = transformers.AutoTokenizer
    return cls.from_pretrained(os.fspath(folder))


def _load_scheduler(folder: Path, class_name: str | None):
    from jaxgen.schedulers import SCHEDULERS

    config = hub.load_config(folder, "scheduler_config.json")
    name = config.get("_class_name", class_name)
    if name not in SCHEDULERS:
        raise hub.CheckpointError(f"{folder}: scheduler class {name!r} is not supported; jaxgen has {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)


class DiffusionPipeline:
    """Base of jaxgen pipelines: construction from components and ``from_pretrained``.

    Subclasses declare ``_components`` (name -> ``ComponentSpec``) in diffusers' order.
    """

    _components: ClassVar[dict[str, ComponentSpec]] = {}

    def __init__(self, **components: Any) -> None:
        unknown = set(components) - set(self._components)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown components {sorted(unknown)}; expected {list(self._components)}")
        for name, spec in self._components.items():
            value = components.get(name)
            setattr(self, name, bind_model(value) if spec.kind == "model" else value)
        self._progress_bar_config: dict[str, Any] = {}
        self._jitted: dict[Any, Callable] = {}

    @property
    def components(self) -> dict[str, Any]:
        """The components by name, to build another pipeline without reloading: ``Other(**pipe.components)``."""
        return {name: getattr(self, name) for name in self._components}

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options of the progress bar (tqdm's), e.g. ``disable=True``; as diffusers."""
        self._progress_bar_config = dict(kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        dtype: Any = jnp.float32,
        variant: str | None = None,
        mesh: Any = None,
        **components: Any,
    ) -> "DiffusionPipeline":
        """Load every component from a diffusers folder, a Hub repo id, or a ``python -m convert`` folder.

        A component passed by keyword is used as given (``None``: not loaded). ``dtype`` is the
        models' params and computation dtype; ``variant="fp16"`` reads ``*.fp16.safetensors``.
        """
        unknown = set(components) - set(cls._components)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unknown keyword arguments {sorted(unknown)}")
        root = hub.resolve_checkpoint(pretrained_model_name_or_path)
        index = hub.load_model_index(root)
        loaded = dict(components)
        for name, spec in cls._components.items():
            if name in loaded:
                continue
            entry = index.get(name)
            if entry is None:
                if spec.optional:
                    loaded[name] = None
                    continue
                raise hub.CheckpointError(f"{root}/model_index.json has no component {name!r} needed by {cls.__name__}")
            folder = hub.component_folder(root, name)
            library, class_name = entry
            if spec.kind == "model":
                if spec.library_classes and class_name not in spec.library_classes:
                    raise hub.CheckpointError(
                        f"{root}/model_index.json gives {name!r} class {class_name!r}; {cls.__name__} expects one of {list(spec.library_classes)}"
                    )
                module, params = spec.model_class.from_pretrained(folder, dtype=dtype, variant=variant, mesh=mesh)
                loaded[name] = (module, params)
            elif spec.kind == "tokenizer":
                loaded[name] = _load_tokenizer(folder, class_name)
            elif spec.kind == "scheduler":
                loaded[name] = _load_scheduler(folder, class_name)
            else:  # pragma: no cover - a spec bug
                raise ValueError(f"unknown component kind {spec.kind!r}")
        return cls(**loaded)

    def _progress(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, **{"leave": True, **self._progress_bar_config})

    def _cached_jit(self, key: Any, build: Callable[[], Callable]) -> Callable:
        """One jitted function per static key (jit itself caches per input shape)."""
        fn = self._jitted.get(key)
        if fn is None:
            fn = self._jitted[key] = build()
        return fn
