"""Device meshes, partition rules, and placement of params and batches.

jaxgen runs on a 2-D ``jax.sharding.Mesh`` with axes ``("data", "model")``:

- ``data`` splits the batch (images, with both classifier-free-guidance halves of a sample kept on
  the same device);
- ``model`` splits the wide dimensions of the weights (attention heads, feed-forward width), for
  components that do not fit one device (T5-XXL: 4.7B parameters).

Params and activations carry *logical* axis names ("embed", "heads", "mlp", "batch", ...); one
table, ``LOGICAL_AXIS_RULES``, maps them to mesh axes (maxdiffusion's ``logical_axis_rules``).
Which logical axes a param has is read from its path by the model class's own table of patterns,
``param_axes`` ((regex, axes) pairs, declared in the model's file); a param that no pattern names is
replicated.
A dimension is split only when its size divides by the mesh axis's size, otherwise it is
replicated (correct everywhere, only less memory-saving).

Params go from host (numpy, memory-mapped checkpoints) straight into their shards: each device
receives only its block (``jax.make_array_from_callback``), so a model never lands whole on one
device first.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "DATA", "MODEL", "LOGICAL_AXIS_RULES", "ParamAxes",
    "make_mesh", "auto_mesh", "AUTO_MESH_FRACTION", "device_memory_bytes", "data_size", "logical_to_mesh_axes", "param_logical_axes", "param_specs", "param_shardings",
    "place_params", "put_host_array", "batch_sharding", "padded_size", "pad_rows", "shard_batch",
    "gather_rows", "mesh_of", "constrain", "place_matching",
]

logger = logging.getLogger(__name__)

DATA = "data"
MODEL = "model"

Axes = tuple  # one logical name (or None) per dimension
ParamAxes = tuple[tuple[str, Axes], ...]
"""A model's partition table: (regex over the "/"-joined param path, logical axes per dim) pairs, first
match wins; a model class declares its own as ``param_axes`` (none: every param replicated)."""

LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    # activations
    ("batch", DATA),
    ("length", None),
    ("height", None),
    ("width", None),
    ("channels", None),
    # params
    ("embed", None),  # the residual width stays whole: every block reads it
    ("heads", MODEL),  # attention projections: heads * head_dim
    ("mlp", MODEL),  # feed-forward inner width
    # Lookup tables stay whole: a lookup in a split table needs a collective per lookup, and
    # T5-XXL's (32128 x 4096) is 3% of the model.
    ("vocab", None),
)
"""Logical axis name -> mesh axis (None: replicated). The one table of partition rules."""

# --------------------------------------------------------------------------- meshes


def make_mesh(data: int | None = None, model: int | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``("data", "model")`` mesh over ``devices`` (default: this process's local devices).

    With neither size given, every device goes on ``data`` (``model`` = 1: pure data parallelism).
    Give one size and the other is the device count divided by it; give both to use the first
    ``data * model`` devices. Raises ValueError when the sizes do not fit the devices.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    n = len(devices)
    for name, size in (("data", data), ("model", model)):
        if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
            raise ValueError(f"mesh size `{name}` must be a positive integer, got {size!r}")
    if data is None and model is None:
        data, model = n, 1
    elif data is None:
        if n % model:
            raise ValueError(f"model={model} does not divide the {n} devices; pass `data` too")
        data = n // model
    elif model is None:
        if n % data:
            raise ValueError(f"data={data} does not divide the {n} devices; pass `model` too")
        model = n // data
    if data * model > n:
        raise ValueError(f"a {data} x {model} (data x model) mesh needs {data * model} devices, there are {n}")
    chosen = devices[: data * model]
    try:  # topology-aware order on TPU/GPU (model-axis neighbours close together)
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh((data, model), chosen, allow_split_physical_axes=True)
    except Exception:  # a device subset or platform the helper does not lay out: plain order
        grid = np.asarray(chosen, dtype=object).reshape(data, model)
    return Mesh(grid, (DATA, MODEL))


AUTO_MESH_FRACTION = 0.6
"""Share of one device's memory that the params may take under ``auto_mesh``; the rest is left to
activations (PixArt-XL-2 at 1024x1024 needs ~2.3 GiB of temporaries per CFG pair on the XLA
attention path), compiled programs and the allocator's fragmentation."""


def device_memory_bytes(device: Any = None) -> int | None:
    """Memory of ``device`` (default: the first local one) in bytes, from ``memory_stats()["bytes_limit"]``.

    None where the backend does not report it (CPU).
    """
    device = jax.local_devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # backends without allocator stats raise rather than return None
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def auto_mesh(
    param_bytes_by_component: dict[str, int],
    device_bytes: int | None,
    devices: Sequence[Any] | None = None,
    *,
    fraction: float = AUTO_MESH_FRACTION,
    replicated: Iterable[str] = (),
) -> Mesh:
    """The default mesh for components of these sizes: data parallel unless the params do not fit one device.

    ``param_bytes_by_component``: component name -> bytes of its params in the dtype they will
    have; ``device_bytes``: one device's memory (``device_memory_bytes()``), None when unknown (CPU:
    plain data parallelism); ``devices``: default this process's local devices. Every component is
    resident on every device at once (a pipeline loads them all), so the test is on their sum: when
    it exceeds ``fraction`` of a device, the ``model`` axis gets the smallest divisor ``m`` of the
    device count for which the params per device, ``split / m + replicated``, fit, and ``data`` the
    rest. Components named in ``replicated`` (no partition rules: the VAE) count whole on every
    device. When even ``m`` = the device count does not fit, that is used and a warning logged.
    The choice is logged (``logging.info``). Parts of a split component that stay whole (layer
    norms, T5's token embedding: ~3% of T5-XXL) are not counted apart; the margin covers them.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    n = len(devices)
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction}")
    replicated = set(replicated)
    whole = sum(b for name, b in param_bytes_by_component.items() if name in replicated)
    split = sum(b for name, b in param_bytes_by_component.items() if name not in replicated)
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    if device_bytes is None or n == 1:
        logger.info("jaxgen: mesh data=%d x model=1 (%s)", n, "one device" if n == 1 else "device memory unknown")
        return make_mesh(n, 1, devices=devices)
    budget = fraction * device_bytes
    model = next((m for m in range(1, n + 1) if n % m == 0 and split / m + whole <= budget), None)
    if model is None:
        model = n
        logger.warning(
            "jaxgen: params of %s per device on a %d-way model axis exceed %.0f%% of a device's %s; "
            "expect out-of-memory errors (use bfloat16, int8 T5, or text_encoder=None with prompt_embeds)",
            gib(split / n + whole), n, 100 * fraction, gib(device_bytes),
        )
    sizes = ", ".join(f"{k} {gib(v)}" for k, v in param_bytes_by_component.items())
    logger.info(
        "jaxgen: mesh data=%d x model=%d: params %s; %s per device of %s (budget %.0f%%)",
        n // model, model, sizes, gib(split / model + whole), gib(device_bytes), 100 * fraction,
    )
    return make_mesh(n // model, model, devices=devices)


def data_size(mesh: Mesh) -> int:
    """How many ways ``mesh`` splits a batch (the size of its ``data`` axis; 1 without one)."""
    return int(mesh.shape.get(DATA, 1))


def mesh_of(tree: Any) -> Mesh | None:
    """The mesh of the first leaf of ``tree`` placed with a ``NamedSharding`` (None if none is)."""
    for leaf in jax.tree_util.tree_leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


# --------------------------------------------------------------------------- partition rules


def logical_to_mesh_axes(
    axes: Sequence[str | None],
    rules: Iterable[tuple[str, str | None]] = LOGICAL_AXIS_RULES,
    *,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Logical axis names -> a ``PartitionSpec`` by ``rules``.

    With ``mesh``, axes the mesh lacks (or has with size 1) are dropped; with ``mesh`` and
    ``shape``, a dimension whose size does not divide by its mesh axis's size is replicated instead. A mesh axis is used at most
    once (the first dimension that asks for it gets it). Unknown logical names raise ValueError.
    """
    table = dict(rules)
    used: set[str] = set()
    spec: list[str | None] = []
    for dim, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        if target is not None and mesh is not None:
            size = mesh.shape.get(target, 1)  # an axis of size 1 splits nothing: leave it out of the spec
            if size == 1 or (shape is not None and shape[dim] % size):
                target = None
        if target in used:
            target = None
        if target is not None:
            used.add(target)
        spec.append(target)
    while spec and spec[-1] is None:  # P("data") rather than P("data", None, None)
        spec.pop()
    return PartitionSpec(*spec)


def param_logical_axes(model: Any, shapes: Any = None) -> Any:
    """Logical axes of every param: a pytree like the params of tuples (None: replicated dim).

    ``model``: a jaxgen module, whose class's ``param_axes`` table applies; ``shapes``: the params or
    their ``ShapeDtypeStruct``s (default: ``model.param_shapes()``). Raises ValueError when a
    pattern gives axes of the wrong rank (a bug in the table).
    """
    if shapes is None:
        shapes = model.param_shapes()
    table = [(re.compile(p), axes) for p, axes in getattr(type(model), "param_axes", ())]

    def axes_of(path: tuple, leaf: Any) -> tuple:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        ndim = len(leaf.shape)
        for pattern, axes in table:
            if pattern.fullmatch(name):
                if len(axes) != ndim:
                    raise ValueError(f"{type(model).__name__}: axes {axes} for {name} of shape {tuple(leaf.shape)}")
                return tuple(axes)
        return (None,) * ndim

    return jax.tree_util.tree_map_with_path(axes_of, shapes)


def param_specs(
    model: Any, mesh: Mesh, shapes: Any = None, rules: Iterable[tuple[str, str | None]] = LOGICAL_AXIS_RULES
) -> Any:
    """A ``PartitionSpec`` for every param of ``model`` on ``mesh`` (pytree like the params)."""
    if shapes is None:
        shapes = model.param_shapes()
    rules = tuple(rules)
    axes = param_logical_axes(model, shapes)
    return jax.tree_util.tree_map(
        lambda a, leaf: logical_to_mesh_axes(a, rules, mesh=mesh, shape=leaf.shape),
        axes, shapes, is_leaf=lambda x: isinstance(x, tuple),
    )


def param_shardings(
    model: Any, mesh: Mesh, shapes: Any = None, rules: Iterable[tuple[str, str | None]] = LOGICAL_AXIS_RULES
) -> Any:
    """A ``NamedSharding`` for every param of ``model`` on ``mesh`` (pytree like the params)."""
    specs = param_specs(model, mesh, shapes, rules)
    return jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


# --------------------------------------------------------------------------- placement


def put_host_array(host: np.ndarray, sharding: jax.sharding.Sharding, dtype: Any = None) -> jax.Array:
    """A host array (numpy, maybe a memory-mapped view) -> a device array placed by ``sharding``.

    Each device receives only its block, cut and cast (to ``dtype``, floating arrays only) on the
    host: no device ever holds the whole array unless its sharding says so. Works on multi-host
    meshes too (each process fills its own devices; every process must pass the same data).
    """
    host = np.asarray(host) if not isinstance(host, np.ndarray) else host
    cast = dtype is not None and jnp.issubdtype(host.dtype, jnp.floating)
    blocks: dict[str, np.ndarray] = {}  # replicated blocks are cut and cast once

    def block(index: tuple) -> np.ndarray:
        key = repr(index)
        if key not in blocks:
            part = host[index]
            # order="C", not ascontiguousarray: that makes a 0-d block (a scalar) 1-d
            blocks[key] = np.asarray(part.astype(dtype, copy=False) if cast else part, order="C")
        return blocks[key]

    out = jax.make_array_from_callback(host.shape, sharding, block)
    blocks.clear()
    return out


def place_params(
    params: Any, mesh: Mesh, model: Any = None, rules: Iterable[tuple[str, str | None]] = LOGICAL_AXIS_RULES
) -> Any:
    """Put ``params`` (numpy or jax arrays) on ``mesh`` by the partition rules of ``model``.

    ``model``: the module whose class's ``param_axes`` table applies; None replicates
    everything. numpy leaves go block by block from the host; jax arrays are moved with
    ``jax.device_put`` (a no-op for those already placed so).
    """
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    if model is None:
        shardings = jax.tree_util.tree_map(lambda _: NamedSharding(mesh, PartitionSpec()), shapes)
    else:
        shardings = param_shardings(model, mesh, shapes, rules)

    return jax.tree_util.tree_map(_put, params, shardings)


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array):
        if x.sharding == sharding:
            return x
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        x = np.asarray(x)  # onto a multi-process mesh: every process fills its own devices from the host
    return put_host_array(np.asarray(x), sharding)


# --------------------------------------------------------------------------- batches


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the ``data`` axis, everything else replicated (any rank)."""
    return NamedSharding(mesh, logical_to_mesh_axes(("batch",), mesh=mesh))


def padded_size(rows: int, mesh: Mesh) -> int:
    """``rows`` rounded up to a multiple of the data-axis size (at least one row per device)."""
    d = data_size(mesh)
    return max(1, math.ceil(rows / d)) * d


def pad_rows(x: Any, rows: int) -> np.ndarray:
    """Host array ``x`` (N, ...) -> (rows, ...), repeating the last row (finite, harmless filler)."""
    x = np.asarray(x)
    if x.shape[0] == rows:
        return x
    if x.shape[0] > rows or x.shape[0] == 0:
        raise ValueError(f"cannot pad {x.shape[0]} rows to {rows}")
    return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])


def shard_batch(x: Any, mesh: Mesh, rows: int | None = None) -> jax.Array:
    """Pad ``x`` (N, ...) to ``rows`` (default ``padded_size(N, mesh)``) and split it over ``data``.

    ``rows`` must be a multiple of the data-axis size. The padding repeats the last row; drop it
    with ``gather_rows(out, N)``.
    """
    x = np.asarray(x)
    rows = padded_size(x.shape[0], mesh) if rows is None else rows
    if rows % data_size(mesh):
        raise ValueError(f"{rows} rows do not split over a data axis of {data_size(mesh)}")
    return put_host_array(pad_rows(x, rows), batch_sharding(mesh))


def gather_rows(x: jax.Array, rows: int | None = None) -> np.ndarray:
    """A (maybe sharded, maybe padded) device batch -> host numpy with its first ``rows`` rows.

    Arrays spread over several processes are gathered from all of them first.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    out = np.asarray(x)
    return out if rows is None else out[:rows]


def constrain(x: jax.Array, sharding: NamedSharding | None) -> jax.Array:
    """``with_sharding_constraint`` inside a jitted function; a no-op for ``sharding=None``."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def place_matching(tree: Any, mesh: Mesh, sample_shape: Sequence[int]) -> Any:
    """Place a pytree of arrays (e.g. a scheduler state) on ``mesh``.

    Leaves whose trailing dimensions equal ``sample_shape`` (per-sample buffers, such as a
    multistep solver's history) are split over ``data`` on their batch dimension; the rest is
    replicated.
    """
    sample_shape = tuple(sample_shape)

    def put(x: Any) -> Any:
        if not isinstance(x, (jax.Array, np.ndarray)):
            return x
        shape = tuple(np.shape(x))
        spec = PartitionSpec()
        k = len(sample_shape)
        if len(shape) >= k and shape[-k:] == sample_shape:
            spec = PartitionSpec(*([None] * (len(shape) - k)), *batch_sharding(mesh).spec)
        return _put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(put, tree)

