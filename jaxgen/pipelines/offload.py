"""Model offload to host memory: what ``DiffusionPipeline.enable_model_cpu_offload()`` does.

Each model component resident on the devices is replaced by an ``OffloadedModel``: a ``HostModel`` (the params in
host memory) that remembers the pipeline's mesh. Where the backend has host memory kinds (GPU, TPU, and the CPU
backend too) the host copy is a jax array in ``pinned_host`` memory with the sharding the params had on the mesh,
so that bringing it back is one DMA per shard and gives arrays of exactly the original sharding (the compiled
programs are reused); elsewhere it is numpy. ``unbind(component)`` then places the params on the mesh for the
caller, and that device copy is freed when the caller drops it (as each stage of a call returns).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jaxgen import sharding
from jaxgen.pipelines.loading import DeferredModel, HostModel

__all__ = ["OffloadedModel", "host_memory_kind", "hold", "offload", "check_device", "enable", "disable"]

HOST_MEMORY_KIND = "pinned_host"


class OffloadedModel(HostModel):
    """A model component moved to host memory by ``enable_model_cpu_offload()``: a ``HostModel`` on ``mesh``
    (``load()`` / ``unbind`` put a device copy there for one use). ``config``, ``dtype`` and ``outputs`` read as
    the resident component's did."""

    def on(self, mesh: Mesh) -> "OffloadedModel":
        """The same host copy, loaded onto ``mesh`` (another pipeline's) instead; nothing is copied now."""
        if mesh is self.mesh:
            return self
        moved = OffloadedModel(self.module, self.params, mesh)
        moved.outputs = self.outputs
        return moved

    def __repr__(self) -> str:
        return f"OffloadedModel({self.model_class.__name__}, dtype={jax.numpy.dtype(self.dtype).name})"


def host_memory_kind(mesh: Mesh) -> str | None:
    """``"pinned_host"`` where the mesh's devices have that memory (jax arrays can live there), else None (numpy)."""
    device = mesh.devices.flat[0]
    return HOST_MEMORY_KIND if any(m.kind == HOST_MEMORY_KIND for m in device.addressable_memories()) else None


def _in_host_memory(module: Any, params: Any, mesh: Mesh, kind: str, put: Any) -> Any:
    """``params`` as ``kind`` memory arrays with their sharding on ``mesh`` (``put(x, sharding)`` moves each leaf),
    complete when this returns: a load is then one DMA per shard back to the same layout."""
    shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shardings = sharding.param_shardings(module, mesh, shapes)
    return jax.block_until_ready(
        jax.tree_util.tree_map(lambda x, s: put(x, s.with_memory_kind(kind)), params, shardings))


def hold(module: Any, params: Any, mesh: Mesh) -> OffloadedModel:
    """A module and its params in host memory (numpy, or arrays on the CPU backend: what loading on the host
    gives) -> an ``OffloadedModel`` on ``mesh``, its params never on the devices: ``pinned_host`` arrays with
    their sharding on the mesh where the backend has that memory (each device's block cut on the host), else
    numpy. ``from_pretrained(..., model_cpu_offload=True)`` holds every model it reads this way."""
    kind = host_memory_kind(mesh)
    if kind is None:
        return OffloadedModel(module, jax.device_get(params), mesh)
    # numpy first: a CPU-backend array is then read in place, whatever backend the mesh is on
    put = lambda x, s: sharding.put_host_array(np.asarray(x), s)
    return OffloadedModel(module, _in_host_memory(module, params, mesh, kind, put), mesh)


def offload(bound: Any, mesh: Mesh, outputs: dict | None = None) -> OffloadedModel:
    """A bound module -> an ``OffloadedModel`` on ``mesh`` holding a host copy of its params. The copy is complete
    when this returns; the device params are then freed as soon as nothing else holds them."""
    module, variables = bound.unbind()
    params = variables["params"]
    kind = host_memory_kind(mesh)
    if kind is None or not all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(params)):
        host = jax.device_get(params)
    else:  # device to host memory directly, each shard where it is
        host = _in_host_memory(module, params, mesh, kind, jax.device_put)
    held = OffloadedModel(module, host, mesh)
    if outputs is not None:
        held.outputs = outputs
    return held


def check_device(device: Any) -> None:
    """``enable_model_cpu_offload(device=...)``: only None (diffusers' argument; jaxgen runs on ``pipe.mesh``)."""
    if device is not None:
        raise ValueError(
            f"`device` must be None, got {device!r}: jaxgen runs every component on `pipe.mesh` (build the pipeline"
            " with `mesh=` to choose the devices)"
        )


def enable(pipe: Any) -> None:
    """Offload every resident model component of ``pipe`` (see ``DiffusionPipeline.enable_model_cpu_offload``)."""
    for name, spec in pipe._components.items():
        value = getattr(pipe, name)
        if spec.kind != "model" or value is None:
            continue
        if isinstance(value, OffloadedModel):
            setattr(pipe, name, value.on(pipe.mesh))
        elif not isinstance(value, DeferredModel):  # a deferred one is offloaded when first loaded (``resident``)
            setattr(pipe, name, offload(value, pipe.mesh))
    pipe._model_cpu_offload = True


def disable(pipe: Any) -> None:
    """Put the offloaded model components back on the devices, kept there (a ``HostModel`` that a pipeline was
    built with on purpose, Kandinsky 3's ``text_encoder_offload``, stays in host memory)."""
    for name, spec in pipe._components.items():
        value = getattr(pipe, name)
        if spec.kind == "model" and isinstance(value, OffloadedModel):
            setattr(pipe, name, value.load(pipe.mesh))
    pipe._model_cpu_offload = False
