"""Meshes, logical-axis sharding rules, and global batch assembly (the one place that knows about devices).

Model parameters carry logical axis names (``embed``, ``mlp``, ``heads``, ``vocab``, ``joint``, ``conv_in``,
``conv_out``, ...; see ``clip_text_spot.models.layers``). A config maps them to mesh axes::

    config.mesh = {"data": -1, "fsdp": 1, "model": 1}      # -1 takes the devices left over
    config.sharding_rules = [("embed", "fsdp"), ("mlp", "model"), ("heads", "model"), ...]

A logical axis is sharded over its mesh axes only where the dimension divides evenly; otherwise that dimension
stays replicated (so any rule set is safe on any mesh). Vectors (biases, norm scales) are never split over ``fsdp``:
FSDP is for the memory of weight matrices, and a sharded bias only adds an all-gather per step. Batches are split
over ``BATCH_AXES``.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """``jax.distributed.initialize`` (call before anything touches devices) with these values where given.

    Unset ones come from ``$JAX_NUM_PROCESSES`` / ``$JAX_PROCESS_ID`` (ours) and ``$JAX_COORDINATOR_ADDRESS``,
    ``$JAX_COORDINATOR_PORT``, ``$JAX_LOCAL_DEVICE_IDS`` (JAX's), else from JAX's cluster auto-detection (Cloud TPU,
    SLURM inside ``srun``, Open MPI).
    """
    env = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
    given = {"num_processes": num_processes, "process_id": process_id}
    kwargs = {k: int(os.environ[env[k]]) if v is None and env[k] in os.environ else v for k, v in given.items()}
    jax.distributed.initialize(coordinator_address=coordinator_address, **kwargs)


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

    Mesh axes of size 1, axes already used by an earlier dimension, shardings that do not divide the dimension, and
    ``fsdp`` on arrays of fewer than 2 dimensions are dropped.
    """
    if not logical:
        return PartitionSpec()
    table = dict(rules)
    taken: set[str] = set() if len(shape) > 1 else {"fsdp"}  # mesh axes no dimension may use (any more)
    out = []
    for name, dim in zip(logical, shape, strict=True):
        axes = [a for a in _mesh_axes_for(name, table) if a not in taken and mesh.shape[a] > 1]
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes.pop()
        taken.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*out)


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the global batch is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def bytes_per_device(tree: Any) -> collections.Counter:
    """Bytes of the arrays in ``tree`` (``jax.Array``s or ``ShapeDtypeStruct``s with shardings) held by each device."""
    out: collections.Counter = collections.Counter()
    for leaf in jax.tree.leaves(tree):
        itemsize = np.dtype(leaf.dtype).itemsize
        for device, index in leaf.sharding.devices_indices_map(tuple(leaf.shape)).items():
            sizes = (len(range(*s.indices(n))) for s, n in zip(index, leaf.shape, strict=True))
            out[device] += itemsize * math.prod(sizes)
    return out


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Assemble per-process numpy batches (leading dim = local batch) into global ``jax.Array``s."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)
