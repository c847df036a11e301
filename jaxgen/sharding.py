"""Device placement of params and batches.

This first version replicates params over a mesh (data parallelism); partition rules for
model-parallel weights come with the sharding work (issue 3).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["place_params", "default_mesh"]


def default_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis ``data`` over all local devices."""
    import numpy as np

    devices = jax.local_devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def place_params(params: Any, mesh: Mesh) -> Any:
    """Put every param on every device of ``mesh`` (replicated)."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, replicated), params)
