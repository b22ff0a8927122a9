"""Meshes, logical-axis sharding rules, and global batch assembly (the one place that knows about devices).

Model parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ``vocab``, ``joint``, ``conv_in``,
``conv_out``, ...; see ``clip_text_spot.models.layers``). A config maps them to mesh axes::

    config.mesh = {"data": -1, "fsdp": 1, "model": 1}      # -1 takes the devices left over
    config.sharding_rules = [("embed", "fsdp"), ("mlp", "model"), ("heads", "model"), ...]

A logical axis is sharded over its mesh axes only where the dimension divides evenly; otherwise that dimension
stays replicated (so any rule set is safe on any mesh). Batches are split over ``BATCH_AXES``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``MESH_AXES`` with sizes from ``axes`` (one -1 allowed: the rest of the devices), Auto axes."""
    devices = list(devices if devices is not None else jax.devices())
    unknown = set(axes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; known: {MESH_AXES}")
    sizes = {a: int(axes.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"config.mesh: only one axis may be -1, got {free}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % known:
            raise ValueError(f"config.mesh {dict(axes)}: {len(devices)} devices are not divisible by {known}")
        sizes[free[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"config.mesh {sizes} needs {math.prod(sizes.values())} devices, {len(devices)} available")
    grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _mesh_axes_for(name: str | None, rules: Mapping[str, Any]) -> tuple[str, ...]:
    if name is None:
        return ()
    target = rules.get(name)
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def logical_to_mesh_spec(
    logical: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """PartitionSpec for an array of ``shape`` with logical axis names ``logical`` (None: replicated).

    Mesh axes of size 1, axes already used by an earlier dimension, and shardings that do not divide the
    dimension are dropped.
    """
    if not logical:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape, strict=True):
        axes = [a for a in _mesh_axes_for(name, table) if a not in used and mesh.shape[a] > 1]
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes.pop()
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*out)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for every variable in an (abstract) ``nnx.State`` from its logical metadata."""

    def one(var: Any) -> NamedSharding:
        logical = getattr(var, "out_sharding", None) or getattr(var, "sharding", None)
        value = var.get_value() if hasattr(var, "get_value") else var
        return NamedSharding(mesh, logical_to_mesh_spec(logical, value.shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the global batch is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Assemble per-process numpy batches (leading dim = local batch) into global ``jax.Array``s."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)
