"""What every jaxgen pipeline shares: loading components, rng handling, progress, outputs.

A pipeline holds its components as attributes named as in diffusers (``pipe.transformer``,
``pipe.vae``, ``pipe.text_encoder``, ``pipe.tokenizer``, ``pipe.scheduler``). Model components are
flax modules bound to their params (``module.bind({"params": params})``): ``pipe.vae.config`` reads
like diffusers, and ``pipe.vae.unbind()`` gives back ``(module, variables)``, which is what the
compiled functions take, so params are arguments and never baked into a program as constants.

Every pipeline runs on a device mesh, ``pipe.mesh`` (``jaxgen.sharding``): ``from_pretrained``
defaults to all local devices on the ``data`` axis (the batch is split, the weights replicated),
with a ``model`` axis as well when the params would not fit one device (``sharding.auto_mesh``);
pass ``mesh=jaxgen.sharding.make_mesh(data=2, model=4)`` to split weights as well. Compiled
programs are kept across processes by jax's persistent compilation cache, which the first
pipeline turns on (``set_compilation_cache``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxgen import hub, sharding

logger = logging.getLogger(__name__)

__all__ = [
    "check_prompt_arguments", "negative_prompts", "DiffusionPipeline", "ImagePipelineOutput", "ComponentSpec",
    "as_key", "bind_model", "set_compilation_cache",
    "DEFAULT_COMPILATION_CACHE", "encode_text",
]

DEFAULT_COMPILATION_CACHE = Path("~/.cache/jaxgen/xla")
"""Where compiled programs are kept unless ``JAXGEN_COMPILATION_CACHE`` or ``set_compilation_cache`` says otherwise."""

_OFF = ("", "0", "off", "none", "false", "no")
_cache_chosen = False  # set_compilation_cache was called, or the default was applied


def set_compilation_cache(path: str | os.PathLike | None) -> None:
    """Keep compiled XLA programs in ``path`` (jax's persistent compilation cache); None turns it off.

    A later process that builds the same program (same pipeline, shapes, step count, devices)
    loads it instead of compiling it. The first pipeline built applies the default when this was
    not called: the directory in the environment variable ``JAXGEN_COMPILATION_CACHE`` ("off" or
    empty disables it), else ``~/.cache/jaxgen/xla``; a directory already set with
    ``jax.config.update("jax_compilation_cache_dir", ...)`` is left alone. Only programs that take
    longer than ``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile are
    written. The cache directory is trusted code: do not share it with people you do not trust.
    """
    from jax.experimental.compilation_cache import compilation_cache

    global _cache_chosen
    _cache_chosen = True
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        folder = Path(path).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", os.fspath(folder))
    compilation_cache.reset_cache()  # jax reads the setting once; make it read the new one


def _default_compilation_cache() -> None:
    """Apply the default compilation cache once per process (see ``set_compilation_cache``)."""
    global _cache_chosen
    if _cache_chosen:
        return
    if jax.config.jax_compilation_cache_dir is not None:  # the user configured jax directly
        _cache_chosen = True
        return
    env = os.environ.get("JAXGEN_COMPILATION_CACHE")
    if env is not None and env.strip().lower() in _OFF:
        set_compilation_cache(None)
        return
    try:
        set_compilation_cache(env or DEFAULT_COMPILATION_CACHE)
    except OSError as e:  # a read-only home: run without the cache rather than fail
        logger.warning("jaxgen: no persistent compilation cache (%s)", e)
        _cache_chosen = True


@dataclasses.dataclass
class ImagePipelineOutput:
    """``images``: a list of PIL images, a float32 NHWC numpy array in [0, 1], or latents (NHWC)."""

    images: Any

    def __getitem__(self, index: int) -> Any:  # diffusers' outputs index like tuples
        return dataclasses.astuple(self)[index]


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



def check_prompt_arguments(prompt, callback_steps, negative_prompt, prompt_embeds, negative_prompt_embeds) -> None:
    """The prompt checks diffusers' text-to-image pipelines share, with their messages: raised before
    anything is encoded or compiled."""
    if callback_steps is None or not isinstance(callback_steps, int) or callback_steps <= 0:
        raise ValueError(
            f"`callback_steps` has to be a positive integer but is {callback_steps} of type {type(callback_steps)}."
        )
    if prompt is not None and prompt_embeds is not None:
        raise ValueError(
            f"Cannot forward both `prompt`: {prompt} and `prompt_embeds`: {prompt_embeds}. Please make sure to"
            " only forward one of the two."
        )
    if prompt is None and prompt_embeds is None:
        raise ValueError(
            "Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined."
        )
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise ValueError(f"`prompt` has to be of type `str` or `list` but is {type(prompt)}")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError(
            f"Cannot forward both `negative_prompt`: {negative_prompt} and `negative_prompt_embeds`:"
            f" {negative_prompt_embeds}. Please make sure to only forward one of the two."
        )
    if prompt_embeds is not None and negative_prompt_embeds is not None:
        if np.shape(prompt_embeds) != np.shape(negative_prompt_embeds):
            raise ValueError(
                "`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but"
                f" got: `prompt_embeds` {np.shape(prompt_embeds)} != `negative_prompt_embeds`"
                f" {np.shape(negative_prompt_embeds)}."
            )


def negative_prompts(negative_prompt: str | list[str] | None, prompt: Any, batch_size: int) -> list[str]:
    """The unconditional texts for a batch, as diffusers' IF and Stable Diffusion encode_prompt make
    them: "" for None, a string repeated, or a list of the batch's length (else diffusers' error)."""
    if negative_prompt is None:
        return [""] * batch_size
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch_size
    if batch_size != len(negative_prompt):
        raise ValueError(
            f"`negative_prompt`: {negative_prompt} has batch size {len(negative_prompt)}, but `prompt`:"
            f" {prompt} has batch size {batch_size}. Please make sure that passed `negative_prompt` matches"
            " the batch size of `prompt`."
        )
    return list(negative_prompt)


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


@functools.partial(jax.jit, static_argnames=("module",))
def encode_text(module: Any, params: Any, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """T5 (or any text encoder with ``last_hidden_state``): (B, L) ids and mask -> (B, L, D) embeddings."""
    return module.apply({"params": params}, input_ids, attention_mask=attention_mask).last_hidden_state


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


class DiffusionPipeline:
    """Base of jaxgen pipelines: construction from components and ``from_pretrained``.

    Subclasses declare ``_components`` (name -> ``ComponentSpec``) in diffusers' order, and
    ``_config`` (name -> default): the pipeline's own settings that diffusers keeps in
    model_index.json (``max_noise_level``); ``from_pretrained`` reads them from there, the
    constructor takes them as keywords, and ``pipe.config`` reads them back.
    ``Pipeline(mesh=None, **components)``: with a ``mesh``, every model component's params are
    placed on it by the partition rules; without one, the mesh is the one the params are already
    on (``Other(**pipe.components)`` shares ``pipe``'s mesh and params), or, for params on one
    device, a 1-device mesh there.
    """

    _components: ClassVar[dict[str, ComponentSpec]] = {}
    _config: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, mesh: Mesh | None = None, **components: Any) -> None:
        from jaxgen.schedulers.base import FrozenConfig

        self.config = FrozenConfig({k: components.pop(k, default) for k, default in self._config.items()})
        unknown = set(components) - set(self._components)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown components {sorted(unknown)}; expected {list(self._components)}")
        _default_compilation_cache()
        bound = {
            name: bind_model(components.get(name)) if spec.kind == "model" else components.get(name)
            for name, spec in self._components.items()
        }
        models = {n: bound[n] for n, spec in self._components.items() if spec.kind == "model" and bound[n] is not None}
        if mesh is None:
            mesh = next((m for m in (sharding.mesh_of(v.variables) for v in models.values()) if m is not None), None)
            if mesh is None:  # params on one device (or none at all): a 1-device mesh there
                leaves = [x for v in models.values() for x in jax.tree_util.tree_leaves(v.variables)]
                device = next(iter(leaves[0].devices())) if leaves and isinstance(leaves[0], jax.Array) else None
                mesh = sharding.make_mesh(1, 1, devices=[device or jax.devices()[0]])
                models = {}  # leave them where they are
        for name, value in models.items():
            bound[name] = _on_mesh(value, mesh)
        for name, value in bound.items():
            setattr(self, name, value)
        self.mesh: Mesh = mesh
        self._progress_bar_config: dict[str, Any] = {}

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
        mesh: Mesh | None = None,
        **components: Any,
    ) -> "DiffusionPipeline":
        """Load every component from a diffusers folder, a Hub repo id, or a ``python -m convert`` folder.

        A component passed by keyword is used as given (``None``: not loaded). ``dtype`` is the
        models' params and computation dtype; ``variant="fp16"`` reads ``*.fp16.safetensors``.
        ``mesh``: the ``jax.sharding.Mesh`` to run on. Default: all local devices on the ``data``
        axis (batches split, weights replicated), unless the components' params (sizes from their
        configs, in ``dtype``, before anything is loaded) take more than 60% of one device's memory:
        then the weights are split over a ``model`` axis as well, the smallest that fits
        (``jaxgen.sharding.auto_mesh``; the choice is logged). Pass ``make_mesh(data=..., model=...)``
        to choose. Each param is placed straight into its shards.
        """
        unknown = set(components) - set(cls._components) - set(cls._config)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained got unknown keyword arguments {sorted(unknown)}")
        root = hub.resolve_checkpoint(pretrained_model_name_or_path)
        index = hub.load_model_index(root)
        if mesh is None:
            mesh = cls._default_mesh(root, index, dtype, components)
        loaded = dict(components)
        loaded.update({k: index[k] for k in cls._config if k in index and k not in components})
        for name, spec in cls._components.items():
            if name in loaded:
                continue
            entry = index.get(name)
            if entry is None or entry[1] is None:  # absent, or saved as None ([null, null]) by diffusers
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
            elif spec.kind == "processor":
                loaded[name] = _load_image_processor(folder, class_name)
            elif spec.kind == "object":
                loaded[name] = spec.model_class.from_pretrained(folder, dtype=dtype, variant=variant, mesh=mesh)
            else:  # pragma: no cover - a spec bug
                raise ValueError(f"unknown component kind {spec.kind!r}")
        return cls(mesh=mesh, **loaded)

    @classmethod
    def _default_mesh(cls, root: Path, index: Mapping[str, Any], dtype: Any, components: Mapping[str, Any]) -> Mesh:
        """``sharding.auto_mesh`` for the model components this ``from_pretrained`` call will hold.

        Sizes come from shapes only (``param_shapes()`` of each config, cast to ``dtype``); a
        component passed in counts with its own params. Nothing is computed where the device memory
        is unknown (CPU) or there is one device: the mesh is then plain data parallel.
        """
        from jaxgen.quantize import cast_floating, param_bytes

        devices = jax.local_devices()
        device_bytes = sharding.device_memory_bytes(devices[0])
        if device_bytes is None or len(devices) == 1:
            return sharding.auto_mesh({}, device_bytes, devices)
        sizes: dict[str, int] = {}
        replicated = []
        for name, spec in cls._components.items():
            if spec.kind != "model":
                continue
            if name in components:
                if components[name] is None:
                    continue
                module, variables = bind_model(components[name]).unbind()
                sizes[name] = param_bytes(variables["params"])
            else:
                entry = index.get(name)
                if entry is None or entry[1] is None:
                    continue  # missing or optional: from_pretrained reports it
                module = spec.model_class.from_config(
                    hub.load_config(hub.component_folder(root, name), spec.model_class.config_name), dtype=dtype
                )
                sizes[name] = param_bytes(cast_floating(module.param_shapes(), dtype))
            if type(module).__name__ not in sharding.PARAM_AXES:
                replicated.append(name)
        return sharding.auto_mesh(sizes, device_bytes, devices, replicated=replicated)

    def _encode_text(self, texts: list[str], max_length: int, warn_truncation: bool = False) -> tuple[jax.Array, jax.Array]:
        """``self.tokenizer`` + ``self.text_encoder`` (T5-style: ``last_hidden_state``) on prepared texts.

        Pads and truncates to ``max_length`` (diffusers' truncation warning with ``warn_truncation``);
        the prompts are split over the mesh's data axis, encoded, gathered. Returns
        ``(embeds (N, max_length, D), attention_mask (N, max_length) int32)``.
        """
        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError(
                "this pipeline was loaded without `tokenizer`/`text_encoder`: pass `prompt_embeds` (and the"
                " negative ones when guidance_scale > 1, with their attention masks where the pipeline takes them)"
            )
        inputs = self.tokenizer(
            texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
            return_tensors="np",
        )
        if warn_truncation:
            untruncated = self.tokenizer(texts, padding="longest", return_tensors="np").input_ids
            if untruncated.shape[-1] >= inputs.input_ids.shape[-1] and not np.array_equal(inputs.input_ids, untruncated):
                removed = self.tokenizer.batch_decode(untruncated[:, max_length - 1 : -1])
                logger.warning(
                    "The following part of your input was truncated because T5 can only handle sequences up to"
                    f" {max_length} tokens: {removed}"
                )
        module, params = unbind(self.text_encoder)
        ids, mask = np.asarray(inputs.input_ids, np.int32), np.asarray(inputs.attention_mask, np.int32)
        # the prompts split over the mesh's data axis (padded to a multiple of it), then gathered
        rows = self._padded_rows(len(texts))
        with self._mesh_context():
            embeds = encode_text(module, params, self._shard_rows(ids, rows), self._shard_rows(mask, rows))
        return jnp.asarray(sharding.gather_rows(embeds, len(texts))), jnp.asarray(mask)

    def _set_timesteps(
        self, num_inference_steps: int | None, timesteps: Any, sigmas: Any, shape: tuple[int, ...], scheduler: Any = None
    ) -> Any:
        """``scheduler.set_timesteps`` (default ``self.scheduler``) with custom ``timesteps`` or ``sigmas``
        where it takes them (diffusers' ``retrieve_timesteps`` checks and messages); returns the state."""
        from jaxgen.pipelines.sampling import accepts

        scheduler = self.scheduler if scheduler is None else scheduler
        for name, values in (("sigmas", sigmas), ("timesteps", timesteps)):
            if values is None:
                continue
            if not accepts(scheduler.set_timesteps, name):
                kind = "sigmas" if name == "sigmas" else "timestep"
                raise ValueError(
                    f"The current scheduler class {type(scheduler)}'s `set_timesteps` does not support custom"
                    f" {kind} schedules. Please check whether you are using the correct scheduler."
                )
            return scheduler.set_timesteps(**{name: list(values)}, shape=shape)
        return scheduler.set_timesteps(num_inference_steps, shape=shape)

    def _progress(self, total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, **{"leave": True, **self._progress_bar_config})

    def _mesh_context(self):
        """Context for the compiled calls: ``pipe.mesh`` as jax's mesh, so that kernels XLA cannot
        partition (Pallas splash attention) run per shard (see ``jaxgen.nn.attention``)."""
        return jax.set_mesh(self.mesh)

    # batches on the mesh: rows padded to a multiple of the data axis, split over it

    def _padded_rows(self, rows: int) -> int:
        return sharding.padded_size(rows, self.mesh)

    def _shard_rows(self, x: Any, rows: int) -> jax.Array:
        """Host or device batch (N, ...) -> padded to ``rows`` and split over the mesh's data axis."""
        return sharding.shard_batch(sharding.gather_rows(x) if isinstance(x, jax.Array) else x, self.mesh, rows)


def _on_mesh(bound: Any, mesh: Mesh) -> Any:
    """A bound module with its params placed on ``mesh`` by the partition rules (itself when they are)."""
    module, variables = bound.unbind()
    params = variables["params"]
    specs = sharding.param_shardings(module, mesh, params)
    placed = jax.tree_util.tree_map(
        lambda x, s: isinstance(x, jax.Array) and x.sharding == s, params, specs
    )
    if all(jax.tree_util.tree_leaves(placed)):
        return bound
    return module.bind({**variables, "params": sharding.place_params(params, mesh, module)})
