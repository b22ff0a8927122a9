"""Reading trainer checkpoints for DPTR: the decoder of a pre-training run, or a whole recogniser for inference.

A trainer step directory (``WORKDIR/ckpt/<step>`` or ``WORKDIR/best/<step>``) holds ``state`` (the train state,
``params`` = ``nnx.to_pure_dict`` of the model's ``nnx.Param`` state) and ``meta`` (the run's config as JSON).
Only the requested parameter subtree is read (orbax partial restore, as numpy arrays): the optimizer state and
frozen CLIP weights of a pre-training checkpoint are never loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util


def _steps(manager_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in manager_dir.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def resolve_step_dir(path: str | Path, prefer: str = "latest", stage: str = "finetune") -> Path:
    """The step directory meant by ``path``: a step directory itself; a checkpoint folder (``ckpt``/``best``) ->
    its last step; a workdir -> ``best`` or ``ckpt`` per ``prefer`` (falling back to the other); a multi-stage
    workdir (no ``ckpt`` of its own) -> the same inside its ``stage`` subfolder."""
    if prefer not in ("latest", "best"):
        raise ValueError(f"prefer must be 'latest' or 'best', got {prefer!r}")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint path {path} is not a directory")
    if (path / "state").is_dir():
        return path
    if steps := _steps(path):
        return path / str(steps[-1])
    order = ("ckpt", "best") if prefer == "latest" else ("best", "ckpt")
    for name in order:
        if (path / name).is_dir() and (steps := _steps(path / name)):
            return path / name / str(steps[-1])
    if (path / stage).is_dir():
        return resolve_step_dir(path / stage, prefer, stage)
    raise FileNotFoundError(f"no trainer checkpoint under {path} (expected ckpt/<step>, best/<step> or <step>/state)")


def read_config(step_dir: str | Path) -> ml_collections.ConfigDict:
    """The config the checkpoint was trained with (saved by the trainer in ``meta``)."""
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(Path(step_dir).absolute() / "meta")
    if "config" not in meta:
        raise ValueError(f"{step_dir}/meta has no 'config'; not a trainer checkpoint")
    return ml_collections.ConfigDict(meta["config"])


def read_params(step_dir: str | Path, subtree: tuple[str, ...] = ()) -> dict[str, Any]:
    """``params[subtree...]`` of a trainer checkpoint as a nested dict of numpy arrays."""
    state_dir = Path(step_dir).absolute() / "state"
    ckptr = ocp.PyTreeCheckpointer()
    tree = ckptr.metadata(state_dir).item_metadata.tree
    node = tree.get("params", {})
    for key in subtree:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"{step_dir}: the checkpoint has no parameters under {'/'.join(('params', *subtree))}")
        node = node[key]
    target: dict[str, Any] = node
    for key in reversed(("params", *subtree)):
        target = {key: target}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    out = ckptr.restore(
        state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
    )
    for key in ("params", *subtree):
        out = out[key]
    return out


def flat_params(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """A nested params dict as ``/``-joined names (the form ``models.clip.convert.assign_flat`` copies)."""
    return {"/".join(str(p) for p in k): v for k, v in traverse_util.flatten_dict(params).items()}
