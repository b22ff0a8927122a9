"""Orbax checkpoint I/O: parameter trees written by ``convert`` (and read back onto any sharding)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


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


class TrainCheckpointer:
    """The trainer's checkpoints: ``WORKDIR/ckpt/<step>`` (latest ``keep``) and ``WORKDIR/best/<step>`` (best eval).

    Each holds the train state (params, optimizer state, counters), the data-iterator state and the config as
    JSON. Saving is asynchronous; every process calls ``save`` (multi-host safe). Restoring takes an abstract state
    whose leaves carry the target shardings, so a run can resume on a different mesh or device count.
    """

    def __init__(self, workdir: str, *, save_every: int, keep: int = 2, async_save: bool = True):
        workdir = os.path.abspath(workdir)
        opts = dict(create=True, enable_async_checkpointing=async_save)
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, "ckpt"),
            options=ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=keep, **opts),
        )
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"), options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts)
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

    def restore_subset(self, step: int, target: Any, best: bool = False) -> tuple[Any, dict]:
        """(the parts of the train state named in ``target`` — e.g. params only — , meta) at ``step``."""
        mngr = self.best if best else self.latest
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        state = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        out = mngr.restore(step, args=ocp.args.Composite(state=state, meta=ocp.args.JsonRestore()))
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
