"""Orbax checkpoint I/O: parameter trees written by ``convert`` (and read back onto any sharding)."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def save_tree(directory: str, tree: Any) -> None:
    """Write a pytree of arrays to ``directory`` (created; must not exist yet) and wait until it is complete."""
    directory = os.path.abspath(directory)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory, tree)
        ckptr.wait_until_finished()


def restore_tree(directory: str, abstract_tree: Any) -> Any:
    """Read a pytree saved by ``save_tree``; ``abstract_tree`` gives target shapes/dtypes (and shardings if set).

    Leaves of ``abstract_tree`` may be arrays or ``jax.ShapeDtypeStruct``; arrays restore onto the default device.
    """
    directory = os.path.abspath(directory)
    target = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_tree
    )
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(directory, target)
