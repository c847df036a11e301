"""What every jaxgen model shares: config dataclasses read from config.json, and ``from_pretrained``.

A model is a ``flax.linen`` module with two fields, ``config`` (a frozen dataclass whose fields are
the config.json keys) and ``dtype`` (the computation dtype). ``Model.from_pretrained(folder)`` returns
``(module, params)``: it reads config.json, gets the param shapes with ``jax.eval_shape`` (nothing
is allocated), and fills them from the folder's safetensors through the architecture's key map in
``convert/``, or from an orbax checkpoint written by ``python -m convert``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import hub

__all__ = ["ModelConfig", "PretrainedModel", "ORBAX_PARAMS_DIR", "load_orbax_params", "save_orbax_params"]

ORBAX_PARAMS_DIR = "jaxgen_params"
"""Subfolder of a component folder that holds converted params (written by ``python -m convert``)."""

C = TypeVar("C", bound="ModelConfig")


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return types.MappingProxyType({k: _freeze(v) for k, v in value.items()})
    return value


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config.json value (lists frozen to tuples) can be a field of type ``hint``: loose (an int is a
    float, a tuple any tuple), exact about str / int / bool / None, so a wrong JSON type is caught when read."""
    origin = typing.get_origin(hint)
    if hint is Any or isinstance(hint, TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool) or value is None  # null in a diffusers config reads as false
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        return isinstance(value, tuple)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping)
    return True  # an annotation this check does not know: left to the model


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of config dataclasses: field names are config.json keys; lists become tuples."""

    @classmethod
    def from_dict(cls: type[C], config: Mapping[str, Any], **overrides: Any) -> C:
        """Build from a config.json dict, ignoring keys this architecture does not use (as diffusers does); a
        value of the wrong JSON type for its field is a TypeError naming the field."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: _freeze(v) for k, v in {**config, **overrides}.items() if k in names}
        for name, value in values.items():
            if not _fits(value, hints.get(name, Any)):
                raise TypeError(f"config field `{name}` of {cls.__name__} must be {hints[name]}, got {value!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""

        def thaw(v: Any) -> Any:
            if isinstance(v, tuple):
                return [thaw(x) for x in v]
            if isinstance(v, Mapping):
                return {k: thaw(x) for k, x in v.items()}
            return v

        return {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def save_orbax_params(path: Path, params: Any) -> None:
    """Write a params pytree as an orbax checkpoint at ``path`` (must not exist)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(Path(path).absolute(), params)


def load_orbax_params(path: Path, target: Any, dtype: Any = None, shardings: Any = None) -> Any:
    """Restore a params pytree written by ``save_orbax_params``, shaped like ``target`` (ShapeDtypeStructs)."""
    import orbax.checkpoint as ocp

    def abstract(x: Any, sharding: Any = None) -> jax.ShapeDtypeStruct:
        dt = dtype if (dtype is not None and jnp.issubdtype(x.dtype, jnp.floating)) else x.dtype
        return jax.ShapeDtypeStruct(x.shape, dt, sharding=sharding)

    if shardings is None:
        shardings = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), target)
    abstract_tree = jax.tree_util.tree_map(abstract, target, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(Path(path).absolute(), abstract_tree)


_PARAM_SHAPES: dict[Any, Any] = {}  # (model class, its fields) -> its params' shapes, see param_shapes


def _shapes_key(module: Any) -> Any:
    """A hashable key of what decides a model's param shapes (its class and dataclass fields), or None."""
    try:
        fields = tuple((f.name, getattr(module, f.name)) for f in dataclasses.fields(module)
                       if f.name not in ("parent", "name"))
        key = (type(module), fields)
        hash(key)
    except TypeError:  # a field that is not hashable: no memo
        return None
    return key


class PretrainedModel:
    """Mixin for jaxgen models: ``from_pretrained`` and the dummy inputs that give param shapes.

    Subclasses (flax.linen modules with fields ``config`` and ``dtype``) set ``config_class`` and
    implement ``init_args(self) -> tuple`` (small inputs for ``init``; only param shapes matter).
    The key map comes from ``convert.key_rule(type(self).__name__, config)``.
    """

    config_class: ClassVar[type[ModelConfig]]
    config_name: ClassVar[str] = "config.json"

    def init_args(self) -> tuple:  # pragma: no cover - every model overrides it
        raise TypeError(f"{type(self).__name__} must define init_args()")

    def init_params(self, rng: jax.Array | None = None) -> Any:
        """Random params (the ``params`` collection) for this config, e.g. for benchmarks."""
        rng = jax.random.key(0) if rng is None else rng
        return self.init(rng, *self.init_args())["params"]

    def param_shapes(self) -> Any:
        """The params tree as ``jax.ShapeDtypeStruct`` leaves, without allocating anything. Traced once per
        model class and fields in a process (tracing a UNet's init takes seconds); each call gets its own tree."""
        key = _shapes_key(self)
        if key is None or key not in _PARAM_SHAPES:
            shapes = jax.eval_shape(self.init_params, jax.random.key(0))
            if key is None:
                return shapes
            _PARAM_SHAPES[key] = shapes
        return jax.tree_util.tree_map(lambda x: x, _PARAM_SHAPES[key])

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ModelConfig, dtype: Any = jnp.float32):
        """The module (no params) for a config.json dict or a config dataclass."""
        if not isinstance(config, ModelConfig):
            config = cls.config_class.from_dict(config)
        return cls(config=config, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        dtype: Any = jnp.float32,
        variant: str | None = None,
        mesh: Any = None,
    ):
        """Load ``(module, params)`` from a diffusers/transformers folder, a Hub repo id, or a converted folder.

        ``dtype`` is both the computation dtype and the params' dtype. ``variant="fp16"`` reads
        ``*.fp16.safetensors``. Weights are converted with the architecture's key map, which fails
        with a list of missing, unused and mis-shaped keys when the checkpoint does not match.
        ``mesh``: place the params on a ``jax.sharding.Mesh`` by the partition rules
        (``jaxgen.sharding``); None (default) puts them on one device. From the Hub, only
        ``subfolder``'s config and weights of ``variant`` (or its converted params) are downloaded.
        """
        root = hub.resolve_checkpoint(pretrained_model_name_or_path, subfolder=subfolder, kind="model", variant=variant)
        folder = hub.component_folder(root, subfolder) if subfolder else Path(root)
        module = cls.from_config_file(folder, dtype=dtype)
        return module, module.load_params(folder, variant=variant, mesh=mesh)

    @classmethod
    def from_config_file(cls, folder: Path, dtype: Any = jnp.float32):
        """The module (no params) for a component folder's config file; a field of the wrong type is a TypeError
        naming the field and the file."""
        try:
            return cls.from_config(hub.load_config(folder, cls.config_name), dtype=dtype)
        except TypeError as e:
            raise TypeError(f"{Path(folder) / cls.config_name}: {e}") from None

    def load_params(self, folder: Path, variant: str | None = None, mesh: Any = None) -> Any:
        """Params for this module from a component folder (safetensors, or converted orbax params).

        ``mesh`` (a ``jax.sharding.Mesh``): each param goes straight into its shards by the
        partition rules of ``jaxgen.sharding`` (replicated on a data-only mesh, split over
        ``model`` where the rules say so); no device receives a whole model first. None: one
        device, as for any jax array.
        """
        from convert import ignored_keys, key_rule, prepare_state_dict

        shapes = self.param_shapes()
        dtype = self.dtype
        shardings = None
        if mesh is not None:
            from jaxgen import sharding

            shardings = sharding.param_shardings(self, mesh, shapes)
        orbax_dir = Path(folder) / ORBAX_PARAMS_DIR
        if orbax_dir.is_dir():
            return load_orbax_params(orbax_dir, shapes, dtype=dtype, shardings=shardings)
        from convert.engine import convert_state_dict

        name = type(self).__name__
        state = prepare_state_dict(name, self.config, hub.load_state_dict(folder, variant=variant))
        # views of the memory-mapped checkpoint; each param is cast and copied only when placed
        host = convert_state_dict(
            state, shapes, key_rule(name, self.config), ignore=ignored_keys(name, self.config), materialize=False
        )
        if shardings is None:
            return jax.tree_util.tree_map(lambda x: jnp.asarray(_cast(x, dtype)), host)
        from jaxgen.sharding import put_host_array

        return jax.tree_util.tree_map(lambda x, s: put_host_array(x, s, dtype=dtype), host, shardings)


def _cast(x: np.ndarray, dtype: Any) -> np.ndarray:
    """Floating host arrays to ``dtype`` (others as they are), contiguous."""
    if jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(dtype, copy=False)
    return np.ascontiguousarray(x)
