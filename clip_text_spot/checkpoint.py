"""Orbax checkpoint I/O: parameter trees written by ``convert`` (and read back onto any sharding), the trainer's
checkpoints (``TrainCheckpointer``), and readers of one trainer step directory for inference and weight transfer.

A trainer step directory (``WORKDIR/ckpt/<step>`` or ``WORKDIR/best/<step>``) holds ``state`` (the train state:
``params`` and ``rest`` are ``nnx.to_pure_dict`` of the model's ``nnx.Param`` and other state), ``meta`` (JSON: the
run's config) and, in ``ckpt``, ``data_iter``. ``read_step_arrays`` reads one subtree of ``state`` (orbax partial
restore, as numpy arrays), so e.g. the optimizer state and frozen CLIP weights are never loaded.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from orbax.checkpoint._src.metadata import array_metadata_store

# Orbax saves a replicated array by slicing it across its replicas, each writing one part. Every slice is a jit
# compiled per shape and device: ~250 compiles and 17 s of a 2-core CPU at the first save of the demo model on 8
# devices. Arrays under this many bytes per slice are written whole by replica 0 instead; larger ones keep the
# parallel write, where it pays (orbax's default handler otherwise, with the same metadata store).
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _register_array_handler() -> None:
    absl_logger = logging.get_absl_logger()
    level = absl_logger.level
    absl_logger.setLevel(std_logging.ERROR)  # orbax warns on every override, i.e. in every command
    try:
        handler = ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
            array_metadata_store=array_metadata_store.Store(),
        )
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)


_register_array_handler()


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


def rescale_data_state(state: Any, saved_processes: int, processes: int) -> Any | None:
    """A per-process grain iterator state (of process 0) written with ``saved_processes`` processes, moved to
    ``processes``: every ``next_index`` (elements this process consumed of its ``index::count`` shard) is scaled by
    ``saved / processes``, so each process resumes at the same global sample as before. The pipelines of
    ``clip_text_spot.data.pipeline`` shard elements round-robin and batch per process, so the global batches are the
    same samples whatever the process count. Returns None for states it does not know (e.g. multiprocessing
    workers) or positions that do not divide."""
    if isinstance(state, dict):
        if any(k.startswith("workers") for k in state):
            return None
        out = {}
        for key, value in state.items():
            if key == "next_index":
                if not isinstance(value, int) or value * saved_processes % processes:
                    return None
                out[key] = value * saved_processes // processes
            else:
                out[key] = rescale_data_state(value, saved_processes, processes)
                if out[key] is None and value is not None:
                    return None
        return out
    return state


def _barriers(prefix: str) -> ocp.options.MultiprocessingOptions:
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)


class TrainCheckpointer:
    """The trainer's checkpoints: ``WORKDIR/ckpt/<step>`` (latest ``keep``) and ``WORKDIR/best/<step>`` (best eval).

    Each holds the train state (params, optimizer state, counters), the data-iterator state and the config as
    JSON. Saving is asynchronous; every process calls ``save`` (multi-host safe). Restoring takes an abstract state
    whose leaves carry the target shardings, so a run can resume on a different mesh or device count.
    """

    def __init__(self, workdir: str, *, save_every: int, keep: int = 2, async_save: bool = True):
        workdir = os.path.abspath(workdir)
        opts = dict(create=True, enable_async_checkpointing=async_save)
        # Distinct barrier names per manager: both may save the same step at once (the final step is often also the
        # best one), and orbax names its multi-process barriers by step alone ("Barrier ... is already ongoing").
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, "ckpt"),
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every, max_to_keep=keep, multiprocessing_options=_barriers("ckpt"), **opts
            ),
        )
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, multiprocessing_options=_barriers("best"), **opts),
        )
        self.best_value: float | None = None

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    @staticmethod
    def _args(state: Any, data_iter: Any, meta: dict | None) -> ocp.args.Composite:
        import grain

        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        return ocp.args.Composite(**items)

    def save(self, step: int, state: Any, data_iter: Any = None, meta: dict | None = None, force: bool = False) -> bool:
        """Save if ``step`` is on the interval (or ``force``); returns whether a save started."""
        return self.latest.save(step, args=self._args(state, data_iter, meta), force=force)

    def save_best(self, step: int, value: float, state: Any, meta: dict | None = None) -> bool:
        """Keep ``state`` as the best checkpoint if ``value`` beats the best seen so far (higher is better)."""
        if self.best_value is not None and value <= self.best_value:
            return False
        self.best_value = value
        self.best.save(step, args=self._args(state, None, (meta or {}) | {"best_value": value}), force=True)
        return True

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> tuple[Any, dict]:
        """(state, meta) at ``step``; the data iterator (if given) is restored in place.

        A checkpoint written by another number of processes (``meta["process_count"]``) restores its state onto
        this run's shardings as any other; the data position is then carried over by ``rescale_data_state``.
        """
        import grain

        saved = self.read_meta(step).get("process_count", jax.process_count())
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        same_layout = saved == jax.process_count()
        if data_iter is not None and same_layout:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.latest.restore(step, args=ocp.args.Composite(**items))
        if data_iter is not None and not same_layout:
            path = os.path.join(str(self.latest.directory), str(step), "data_iter", f"process_0-of-{saved}.json")
            with open(path) as f:
                state = rescale_data_state(json.load(f), saved, jax.process_count())
            if state is None:
                logging.warning(
                    "%s: written by %d processes, restored on %d; this data pipeline's state cannot be carried "
                    "over, so its data starts again from the beginning of the seed's stream",
                    path,
                    saved,
                    jax.process_count(),
                )
            else:
                data_iter.set_state(state)
        return out["state"], out["meta"]

    def read_meta(self, step: int, best: bool = False) -> dict:
        """The JSON metadata (``{"config": ...}``) saved with ``step``."""
        mngr = self.best if best else self.latest
        return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _steps(manager_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in manager_dir.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def resolve_step_dir(path: str | Path, prefer: str = "latest", stage: str | None = None) -> Path:
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
    if stage and (path / stage).is_dir():
        return resolve_step_dir(path / stage, prefer)
    raise FileNotFoundError(
        f"{path}: no trainer checkpoint (expected ckpt/<step>, best/<step> or <step>/state; train with "
        "clip_text_spot.main)"
    )


def read_step_config(step_dir: str | Path) -> dict:
    """The config a trainer checkpoint was saved with (its ``meta``), as a plain dict."""
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(Path(step_dir).absolute() / "meta")
    if "config" not in meta:
        raise ValueError(f"{step_dir}/meta has no 'config'; not a trainer checkpoint")
    return meta["config"]


def read_step_arrays(step_dir: str | Path, keys: tuple[str, ...] = ("params",)) -> dict[str, Any]:
    """``state[keys...]`` of a trainer checkpoint as a nested dict of numpy arrays (``{}`` if stored empty)."""
    state_dir = Path(step_dir).absolute() / "state"
    ckptr = ocp.PyTreeCheckpointer()
    # The handler's metadata, not the checkpointer's: the latter also looks for step-level metadata, which lives one
    # level up (beside ``meta``), and warns on every call that it is missing from ``state``.
    handler = ocp.PyTreeCheckpointHandler()
    try:
        node = handler.metadata(state_dir).tree
    finally:
        handler.close()
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            if key == keys[-1] and isinstance(node, dict) and len(keys) == 1:
                return {}  # e.g. a model without non-parameter state saves no "rest" leaves
            raise KeyError(f"{step_dir}: the checkpoint has no arrays under {'/'.join(keys)}")
        node = node[key]
    if not jax.tree.leaves(node):
        return {}
    target: dict[str, Any] = node
    for key in reversed(keys):
        target = {key: target}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    out = ckptr.restore(
        state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
    )
    for key in keys:
        out = out[key]
    return out


def flat_names(tree: dict[str, Any]) -> dict[str, Any]:
    """A nested dict of arrays as ``/``-joined names (the form ``models.clip.convert.assign_flat`` copies)."""
    return {"/".join(str(p) for p in k): v for k, v in traverse_util.flatten_dict(tree).items()}
