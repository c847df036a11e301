"""How a pipeline's components are loaded: from a diffusers folder, a Hub repo id, or a converted folder.

A pipeline class declares its components (``ComponentSpec`` per name, in diffusers' order);
``load_components`` reads model_index.json, downloads from the Hub only what it will load, and
builds each component: flax models as ``(module, params)`` (params placed on the mesh by the
partition rules), tokenizers and image processors with transformers, schedulers with jaxgen's
classes. ``default_mesh`` sizes the components from their configs (nothing allocated) to pick the
mesh; ``bind_model`` / ``place_on_mesh`` turn what a user passes into bound modules on that mesh.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import jax
from jax.sharding import Mesh

from jaxgen import hub, sharding

__all__ = [
    "ComponentSpec", "DeferredModel", "HostModel", "bind_model", "config_param_bytes", "host_params", "unbind",
    "load_components", "default_mesh", "place_on_mesh",
    "QUANTIZATIONS", "quantizable", "int8_text_encoders", "quantized_components", "load_quantized", "read_on_host",
]


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """How a pipeline loads one component: ``kind`` is "model", "tokenizer", "scheduler", "processor"
    (a transformers image processor, e.g. ``CLIPImageProcessor``) or "object" (host-side, not a flax
    model: ``model_class.from_pretrained(folder, ...)`` returns the component itself, e.g. ``IFWatermarker``).

    For models, ``model_class`` is the jaxgen class; ``library_classes`` lists the class names that
    model_index.json may give for it (checked, so a wrong folder fails with a clear message).
    """

    kind: str
    model_class: Any = None
    library_classes: tuple[str, ...] = ()
    optional: bool = False


class DeferredModel:
    """A model component that is not resident: where its params are, loaded when first needed.

    ``config`` and ``dtype`` read like a loaded module's (its config.json is read, no params).
    ``load(mesh)`` returns the bound module with its params on ``mesh``; the pipeline that needs it
    keeps it from then on (``DiffusionPipeline.resident``). ``outputs``: small results computed from
    the model while it was loaded (Kandinsky 2.2's zero-image embedding), shared by every pipeline
    built with this component, so they need not load it again.
    """

    def __init__(self, model_class: Any, pretrained_model_name_or_path: str | os.PathLike, subfolder: str, *,
                 dtype: Any, variant: str | None = None) -> None:
        self.model_class, self.source, self.subfolder = model_class, pretrained_model_name_or_path, subfolder
        self.dtype, self.variant = dtype, variant
        root = hub.resolve_checkpoint(pretrained_model_name_or_path, subfolder=subfolder, kind="model", variant=variant)
        folder = hub.component_folder(root, subfolder)
        self.config = model_class.from_config_file(folder, dtype=dtype).config
        self.outputs: dict[str, Any] = {}

    def load(self, mesh: Mesh | None = None) -> Any:
        """The bound module, its params read now (placed on ``mesh``)."""
        module, params = self.model_class.from_pretrained(self.source, subfolder=self.subfolder, dtype=self.dtype,
                                                          variant=self.variant, mesh=mesh)
        return module.bind({"params": params})

    def __repr__(self) -> str:
        return f"DeferredModel({self.model_class.__name__}, {os.fspath(self.source)!r}, subfolder={self.subfolder!r})"


class HostModel(DeferredModel):
    """A model component kept in host memory: its params (numpy, or arrays on the CPU backend) go to the
    devices for each use (``load(mesh)``) and are freed when that use ends. For a model that does not fit on
    the chips next to the others (Kandinsky 3's 8.7B-parameter T5): the peak is then the larger of it alone
    and the others, at the price of one host-to-device copy of its params per use.

    ``config``, ``dtype`` and ``module`` read like a loaded module's; ``params`` are the host copy; ``mesh``
    (optional) is where ``load()`` and ``unbind`` put the device copy when given no other.
    """

    def __init__(self, module: Any, params: Any, mesh: Mesh | None = None) -> None:
        self.module, self.params, self.model_class, self.mesh = module, params, type(module), mesh
        self.config, self.dtype, self.outputs = module.config, module.dtype, {}

    def load(self, mesh: Mesh | None = None) -> Any:
        """The bound module with a device copy of the params (on ``mesh``, default ``self.mesh``, by the partition
        rules; with neither, on one device)."""
        mesh = self.mesh if mesh is None else mesh
        params = (sharding.place_params(self.params, mesh, self.module) if mesh is not None
                  else jax.device_put(self.params, jax.local_devices()[0]))
        return self.module.bind({"params": params})

    def __repr__(self) -> str:
        return f"HostModel({self.model_class.__name__}, dtype={jax.numpy.dtype(self.dtype).name})"


def bind_model(value: Any) -> Any:
    """A component value as passed by a user -> a bound flax module (or None, or a ``DeferredModel`` as it is).

    Accepts a bound module, or the ``(module, params)`` pair that ``Model.from_pretrained`` returns.
    """
    if value is None or isinstance(value, DeferredModel):
        return value
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
    """Bound module -> (unbound module, params). A ``HostModel`` (an offloaded component) gives its params placed
    on the devices now (``load()``): that copy lives as long as the caller holds it."""
    if isinstance(bound, HostModel):
        bound = bound.load()
    module, variables = bound.unbind()
    return module, variables["params"]


def host_params(component: Any) -> Any:
    """A model component's params as they are held, nothing copied: a ``HostModel``'s host copy, a bound module's
    own (to read shapes without bringing an offloaded model to the devices)."""
    return component.params if isinstance(component, HostModel) else component.variables["params"]


def place_on_mesh(bound: Any, mesh: Mesh) -> Any:
    """A bound module with its params placed on ``mesh`` by the partition rules (itself when they are)."""
    module, variables = bound.unbind()
    params = variables["params"]
    specs = sharding.param_shardings(module, mesh, params)
    placed = jax.tree_util.tree_map(lambda x, s: isinstance(x, jax.Array) and x.sharding == s, params, specs)
    if all(jax.tree_util.tree_leaves(placed)):
        return bound
    return module.bind({**variables, "params": sharding.place_params(params, mesh, module)})


def _load_tokenizer(folder: Path, class_name: str):
    import transformers

    if not (class_name.endswith("Tokenizer") or class_name.endswith("TokenizerFast")):
        raise hub.CheckpointError(f"{folder}: {class_name!r} is not a tokenizer class")
    cls = getattr(transformers, class_name, None)
    if cls is None:
        cls = transformers.AutoTokenizer
    return cls.from_pretrained(os.fspath(folder))


def _load_image_processor(folder: Path, class_name: str):
    """A transformers image processor (``preprocessor_config.json``): numpy/PIL preprocessing, no model."""
    import transformers

    if "ImageProcessor" not in class_name and not class_name.endswith("FeatureExtractor"):  # ...Fast, ...Pil too
        raise hub.CheckpointError(f"{folder}: {class_name!r} is not an image processor class")
    return transformers.AutoImageProcessor.from_pretrained(os.fspath(folder))


def _load_scheduler(folder: Path, class_name: str | None):
    from jaxgen.schedulers import SCHEDULERS

    config = hub.load_config(folder, "scheduler_config.json")
    name = config.get("_class_name", class_name)
    if name not in SCHEDULERS:
        raise hub.CheckpointError(f"{folder}: scheduler class {name!r} is not supported; jaxgen has {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)


def _to_load(specs: Mapping[str, ComponentSpec], index: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, str]:
    """The components ``load_components`` reads from the checkpoint: not given, and saved (not null)."""
    return {name: spec.kind for name, spec in specs.items()
            if name not in given and index.get(name) is not None and index[name][1] is not None}


QUANTIZATIONS = ("int8",)
"""What ``from_pretrained(..., text_encoder_quantization=...)`` takes (``jaxgen.quantize``: weight-only int8)."""


def quantizable(model_class: Any) -> bool:
    """Whether a model class has an int8 form (``jaxgen.quantize.quantize_encoder``: T5, the CLIP towers)."""
    return "quantized" in {f.name for f in dataclasses.fields(model_class)}


def int8_text_encoders(specs: Mapping[str, ComponentSpec]) -> set[str]:
    """A pipeline's text encoders (model components named ``*text_encoder``) that have an int8 form."""
    return {name for name, spec in specs.items()
            if spec.kind == "model" and name.endswith("text_encoder") and quantizable(spec.model_class)}


def quantized_components(specs: Mapping[str, ComponentSpec], quantization: str | None, pipeline: str) -> set[str]:
    """The text encoders ``text_encoder_quantization`` applies to: every model component named ``*text_encoder``
    with an int8 form; a ValueError for an unknown quantization or a pipeline with no such encoder."""
    if quantization is None:
        return set()
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`text_encoder_quantization` must be one of {QUANTIZATIONS} or None, got {quantization!r}")
    names = int8_text_encoders(specs)
    if not names:
        raise ValueError(f"`text_encoder_quantization`: {pipeline} has no text encoder with an int8 form (T5, CLIP)")
    return names


def read_on_host(model_class: Any, folder: str | os.PathLike, *, dtype: Any, variant: str | None, int8: bool = False,
                 subfolder: str | None = None) -> Any:
    """A model read into host memory (the CPU backend), its Dense kernels quantized to int8 there when ``int8``
    (``folder``: a component folder, or a checkpoint with ``subfolder``). Returns ``(module, numpy params)``:
    nothing on the accelerators."""
    from jaxgen.quantize import quantize_encoder

    with jax.default_device(jax.devices("cpu")[0]):
        module, params = model_class.from_pretrained(folder, subfolder=subfolder, dtype=dtype, variant=variant)
        if int8:
            module, params = quantize_encoder(module, params)
        return module, jax.device_get(params)  # numpy: the CPU copies go as the function returns


def load_quantized(model_class: Any, folder: Path, *, dtype: Any, variant: str | None, mesh: Mesh | None) -> Any:
    """A model read into host memory (the CPU backend), its Dense kernels quantized to int8 there, then placed on
    ``mesh``: the full-precision weights never reach the accelerators. Returns ``(int8 module, params)``."""
    module, params = read_on_host(model_class, folder, dtype=dtype, variant=variant, int8=True)
    if mesh is None:
        return module, jax.device_put(params, jax.local_devices()[0])
    return module, sharding.place_params(params, mesh, module)


def _load_one(root: Path, name: str, spec: ComponentSpec, class_name: str, pipeline: str, *, dtype: Any,
              variant: str | None, mesh: Mesh, int8: bool = False, host: bool = False) -> Any:
    folder = hub.component_folder(root, name)
    if spec.kind == "model":
        if spec.library_classes and class_name not in spec.library_classes:
            raise hub.CheckpointError(
                f"{root}/model_index.json gives {name!r} class {class_name!r}; {pipeline} expects one of {list(spec.library_classes)}"
            )
        if host:  # model_cpu_offload: read (and quantized) on the host, held there for the mesh
            from jaxgen.pipelines.offload import hold  # offload.py imports this module

            module, params = read_on_host(spec.model_class, folder, dtype=dtype, variant=variant, int8=int8)
            return hold(module, params, mesh)
        if int8:
            return load_quantized(spec.model_class, folder, dtype=dtype, variant=variant, mesh=mesh)
        return spec.model_class.from_pretrained(folder, dtype=dtype, variant=variant, mesh=mesh)
    if spec.kind == "tokenizer":
        return _load_tokenizer(folder, class_name)
    if spec.kind == "scheduler":
        return _load_scheduler(folder, class_name)
    if spec.kind == "processor":
        return _load_image_processor(folder, class_name)
    if spec.kind == "object":
        return spec.model_class.from_pretrained(folder, dtype=dtype, variant=variant, mesh=mesh)
    raise ValueError(f"unknown component kind {spec.kind!r}")  # a spec bug


def load_components(
    cls: Any, pretrained_model_name_or_path: str | os.PathLike, *, dtype: Any, variant: str | None,
    mesh: Mesh | None, components: Mapping[str, Any], text_encoder_quantization: str | None = None,
    model_cpu_offload: bool = False,
) -> tuple[dict[str, Any], Mesh]:
    """Everything ``cls(mesh=..., **loaded)`` takes, read from a checkpoint; returns ``(loaded, mesh)``.

    ``components`` passed by the caller are used as given (None: not loaded) and not downloaded;
    ``cls._config`` values come from model_index.json unless passed. ``mesh`` None: ``default_mesh``.
    ``text_encoder_quantization="int8"``: the text encoders are quantized on the host while loading
    (``quantized_components``, ``load_quantized``). ``model_cpu_offload``: each model is read into host memory and
    held there as an ``offload.OffloadedModel`` for the mesh (``read_on_host``, ``offload.hold``), never placed;
    the default mesh is then sized by the largest single model (``default_mesh``).
    """
    specs, pipeline = cls._components, cls.__name__
    int8 = quantized_components(specs, text_encoder_quantization, pipeline)
    unknown = set(components) - set(specs) - set(cls._config)
    if unknown:
        raise TypeError(f"{pipeline}.from_pretrained got unknown keyword arguments {sorted(unknown)}")
    root = hub.resolve_pipeline(
        pretrained_model_name_or_path, lambda index: _to_load(specs, index, components), variant=variant
    )
    index = hub.load_model_index(root)
    if mesh is None:
        mesh = default_mesh(specs, root, index, dtype, components, one_at_a_time=model_cpu_offload)
    loaded = dict(components)
    loaded.update({k: index[k] for k in cls._config if k in index and k not in components})
    for name, spec in specs.items():
        if name in loaded:
            continue
        entry = index.get(name)
        if entry is None or entry[1] is None:  # absent, or saved as None ([null, null]) by diffusers
            if spec.optional:
                loaded[name] = None
                continue
            raise hub.CheckpointError(f"{root}/model_index.json has no component {name!r} needed by {pipeline}")
        loaded[name] = _load_one(root, name, spec, entry[1], pipeline, dtype=dtype, variant=variant, mesh=mesh,
                                 int8=name in int8, host=model_cpu_offload)
    return loaded, mesh


def config_param_bytes(model_class: Any, folder: Path, dtype: Any) -> tuple[Any, int]:
    """A component's module (no params) and its params' bytes in ``dtype``, from its config.json alone (shapes
    only, nothing allocated)."""
    from jaxgen.quantize import cast_floating, param_bytes

    module = model_class.from_config(hub.load_config(folder, model_class.config_name), dtype=dtype)
    return module, param_bytes(cast_floating(module.param_shapes(), dtype))


def default_mesh(specs: Mapping[str, ComponentSpec], root: Path, index: Mapping[str, Any], dtype: Any,
                 components: Mapping[str, Any], one_at_a_time: bool = False) -> Mesh:
    """``sharding.auto_mesh`` for the model components a ``from_pretrained`` call will hold.

    Sizes come from shapes only (``param_shapes()`` of each config, cast to ``dtype``); a
    component passed in counts with its own params. Nothing is computed where the device memory
    is unknown (CPU) or there is one device: the mesh is then plain data parallel. ``one_at_a_time`` (model
    offload: only the running model is on the devices): sized by the largest single model instead of the sum.
    """
    from jaxgen.quantize import param_bytes

    devices = jax.local_devices()
    device_bytes = sharding.device_memory_bytes(devices[0])
    if device_bytes is None or len(devices) == 1:
        return sharding.auto_mesh({}, device_bytes, devices)
    sizes: dict[str, int] = {}
    replicated = []
    for name, spec in specs.items():
        if spec.kind != "model":
            continue
        if name in components:
            if components[name] is None or isinstance(components[name], DeferredModel):
                continue
            module, variables = bind_model(components[name]).unbind()
            sizes[name] = param_bytes(variables["params"])
        else:
            entry = index.get(name)
            if entry is None or entry[1] is None:
                continue  # missing or optional: load_components reports it
            module, sizes[name] = config_param_bytes(spec.model_class, hub.component_folder(root, name), dtype)
        if not getattr(type(module), "param_axes", ()):
            replicated.append(name)
    if one_at_a_time and sizes:  # the others wait in host memory: no model axis for their sake
        largest = max(sizes, key=sizes.get)
        sizes = {largest: sizes[largest]}
    return sharding.auto_mesh(sizes, device_bytes, devices, replicated=replicated)
