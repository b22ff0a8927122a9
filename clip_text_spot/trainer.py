"""The one trainer core shared by every task (FastTCM detection, DPTR recognition, the CLIP demo).

A task (``clip_text_spot.tasks``) supplies the model, its data, its loss and its evaluation; this module owns
everything else, in order:

1. mesh and logical-axis rules from the config (``clip_text_spot.parallel``);
2. the model built abstractly, its parameter shardings, then a jitted, sharded initialisation (plus the task's
   pretrained weights);
3. the optimiser (``clip_text_spot.optim``: frozen groups, lr multipliers, weight-decay masks, schedules) and its
   state initialised with matching shardings;
4. a functional train step, ``jax.jit`` with explicit ``in_shardings``/``out_shardings`` and buffer donation, with
   a NaN/Inf guard (a non-finite loss or gradient skips the update; K bad steps in a row stop the run);
5. the loop: resume from ``WORKDIR/ckpt`` when present, global batches assembled from per-process data, logs
   (``metrics.jsonl``, TensorBoard, a progress bar with samples/s and ETA), evaluation every N steps with the best
   checkpoint kept, asynchronous orbax checkpoints (params, optimizer, data-iterator state, config), and a last
   checkpoint on interruption.

The train state is a dict of pure pytrees: ``step``, ``params`` (trainable ``nnx.Param``), ``rest`` (other
variables, e.g. BatchNorm statistics), ``opt`` (optimizer state), ``rng``, ``bad_streak`` and ``skipped``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx, traverse_util

from clip_text_spot import checkpoint, logs, optim, parallel


class Task(Protocol):
    """What a task provides to the trainer."""

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """A freshly initialised model (called under ``jax.jit`` and ``nnx.eval_shape``: no side effects)."""

    def load_pretrained(self, model: nnx.Module) -> None:
        """Overwrite parts of ``model`` in place with pretrained weights named in the config (or do nothing)."""

    def train_batches(self, *, seed: int, process_index: int, process_count: int) -> Iterator[dict[str, Any]]:
        """A checkpointable iterator (grain) of per-process numpy batches (leading dim = per-process batch)."""

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        """Scalar loss and a dict of scalar metrics, for a model in train mode (traced inside ``jax.jit``)."""

    def evaluate(self, model: nnx.Module, step: int, workdir: str) -> dict[str, float]:
        """Host-side evaluation of a model in eval mode; returns scalar metrics (e.g. ``hmean``)."""


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns: the final state (on device), the model in eval mode and the last metrics."""

    state: dict[str, Any]
    model: nnx.Module
    last_train: dict[str, float]
    last_eval: dict[str, float]
    stopped_early: str | None = None


class NonFiniteLossError(RuntimeError):
    """Raised after ``config.max_bad_steps`` consecutive non-finite steps."""


def _pure(state: nnx.State) -> dict:
    return nnx.to_pure_dict(state)


def _shardings_like(state: nnx.State, mesh: jax.sharding.Mesh, rules: Any) -> dict:
    """Pure-dict tree of NamedShardings matching ``nnx.to_pure_dict(state)``."""
    flat = {}
    for path, var in nnx.to_flat_state(state):
        logical = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
        flat[path] = jax.sharding.NamedSharding(
            mesh, parallel.logical_to_mesh_spec(logical, var.get_value().shape, mesh, rules)
        )
    return traverse_util.unflatten_dict(flat) if flat else {}


def _opt_shardings(tx: optax.GradientTransformation, params: Any, param_sh: Any, mesh) -> Any:
    abstract = jax.eval_shape(tx.init, params)

    def masked(x):  # parameters outside a multi_transform group appear as MaskedNode in that group's state
        return isinstance(x, optax.MaskedNode)

    return optax.tree_map_params(
        tx,
        lambda leaf, s: leaf if masked(leaf) else s,
        abstract,
        param_sh,
        transform_non_params=lambda _: parallel.replicated(mesh),
        is_leaf=masked,
    )


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _to_host(metrics: dict[str, jax.Array]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class _Interrupt:
    """Turns SIGTERM into a graceful stop (the loop saves a checkpoint and exits)."""

    def __init__(self):
        self.requested = False
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread
            self._old = None

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass
class Setup:
    """Everything the loop needs, built once from a config and a task (also used by benchmarks and tests).

    ``step_fn(state, batch) -> (state, metrics)`` is the jitted train step with explicit in/out shardings and the
    state donated; ``init_state()`` creates a fresh, sharded state (with the task's pretrained weights);
    ``abstract_state`` (ShapeDtypeStructs with shardings) restores a checkpoint onto this mesh.
    """

    config: ml_collections.ConfigDict
    task: Task
    mesh: jax.sharding.Mesh
    graphdef_train: Any
    graphdef_eval: Any
    tx: optax.GradientTransformation
    state_sh: dict
    abstract_state: dict
    step_fn: Callable[[dict, dict], tuple[dict, dict]]

    def init_state(self, load_pretrained: bool = True) -> dict:
        """A fresh train state on the mesh: jitted sharded init, then the task's pretrained weights."""
        config, task, sh = self.config, self.task, self.state_sh

        def init_vars():
            _, p, r = nnx.split(task.build_model(nnx.Rngs(config.seed)), nnx.Param, ...)
            return _pure(p), _pure(r)

        with jax.set_mesh(self.mesh):
            params, rest = jax.jit(init_vars, out_shardings=(sh["params"], sh["rest"]))()
        if load_pretrained:
            model = nnx.merge(self.graphdef_eval, params, rest)
            task.load_pretrained(model)
            _, p, r = nnx.split(model, nnx.Param, ...)
            params, rest = jax.device_put((_pure(p), _pure(r)), (sh["params"], sh["rest"]))
        with jax.set_mesh(self.mesh):
            opt = jax.jit(self.tx.init, out_shardings=sh["opt"])(params)
        state = {
            "step": jnp.zeros([], jnp.int32),
            "params": params,
            "rest": rest,
            "opt": opt,
            "rng": jax.random.key_data(jax.random.key(config.seed)),
            "bad_streak": jnp.zeros([], jnp.int32),
            "skipped": jnp.zeros([], jnp.int32),
        }
        return jax.device_put(state, sh)

    def eval_model(self, state: dict) -> nnx.Module:
        """The model of ``state`` in eval mode."""
        return nnx.merge(self.graphdef_eval, state["params"], state["rest"])


def setup(config: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh | None = None) -> Setup:
    """Build the mesh (unless given), shardings, optimiser and the jitted train step for ``task``."""
    mesh = mesh or parallel.make_mesh(config.mesh)
    rules = [tuple(r) for r in config.sharding_rules]
    if config.batch_size % parallel.data_parallel_size(mesh) or config.batch_size % jax.process_count():
        raise ValueError(
            f"--config.batch_size={config.batch_size} must be divisible by the data-parallel size "
            f"{parallel.data_parallel_size(mesh)} and the process count {jax.process_count()}"
        )
    abstract_model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(config.seed)))
    abstract_model.train()
    graphdef_train, abs_params, abs_rest = nnx.split(abstract_model, nnx.Param, ...)
    abstract_model.eval()
    graphdef_eval = nnx.graphdef(abstract_model)
    param_sh = _shardings_like(abs_params, mesh, rules)
    rest_sh = _shardings_like(abs_rest, mesh, rules)
    params, rest = _pure(abs_params), _pure(abs_rest)
    tx = optim.make_optimizer(config.optim, params, int(config.total_steps))
    with jax.set_mesh(mesh):
        abs_opt = jax.eval_shape(tx.init, params)
    opt_sh = _opt_shardings(tx, params, param_sh, mesh)
    repl = parallel.replicated(mesh)
    state_sh = {"params": param_sh, "rest": rest_sh, "opt": opt_sh}
    state_sh |= {k: repl for k in ("step", "rng", "bad_streak", "skipped")}
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)
    abstract_state = {
        "step": scalar,
        "params": _abstract(params, param_sh),
        "rest": _abstract(rest, rest_sh),
        "opt": _abstract(abs_opt, opt_sh),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl),
        "bad_streak": scalar,
        "skipped": scalar,
    }
    schedule = optim.schedule(config.optim, int(config.total_steps))

    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def loss_fn(params):
            model = nnx.merge(graphdef_train, params, state["rest"])
            loss, metrics = task.loss(model, batch, rng)
            _, _, new_rest = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, _pure(new_rest))

        (loss, (metrics, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, new_opt = tx.update(grads, state["opt"], state["params"])
        new_params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, state["params"]),
            "rest": keep(new_rest, state["rest"]),
            "opt": keep(new_opt, state["opt"]),
            "rng": state["rng"],
            "bad_streak": jnp.where(ok, 0, state["bad_streak"] + 1),
            "skipped": state["skipped"] + (~ok).astype(jnp.int32),
        }
        return new_state, dict(metrics, loss=loss, grad_norm=grad_norm, lr=schedule(state["step"]))

    batch_sh = parallel.batch_sharding(mesh)
    step_fn = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=0)
    return Setup(config, task, mesh, graphdef_train, graphdef_eval, tx, state_sh, abstract_state, step_fn)


def memory_report(run: Setup) -> dict[str, Any]:
    """Parameter and optimizer-state bytes of ``run``'s train state: totals and what each device of the mesh holds
    (from the abstract state's shardings; nothing is allocated)."""

    def nbytes(tree: Any) -> int:
        return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))

    params, opt = run.abstract_state["params"], run.abstract_state["opt"]
    per_params, per_opt = parallel.bytes_per_device(params), parallel.bytes_per_device(opt)
    return {
        "mesh": dict(run.mesh.shape),
        "num_params": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        "params_bytes": nbytes(params),
        "opt_bytes": nbytes(opt),
        "per_device": [
            {"device": d.id, "process": d.process_index, "params_bytes": per_params[d], "opt_bytes": per_opt[d]}
            for d in run.mesh.devices.flat
        ],
    }


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    task: Task,
    *,
    log_dir: str | None = None,
    tags: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``task`` as ``config`` says, checkpointing under ``workdir`` (resumes if it holds a checkpoint).

    Metrics go to ``log_dir`` (default ``workdir``) with ``tags`` on every row (multi-stage runs share one log).
    """
    os.makedirs(workdir, exist_ok=True)
    run = setup(config, task)
    mesh, total_steps = run.mesh, int(config.total_steps)
    logging.info(
        "process %d/%d, %d local / %d global devices, mesh %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        dict(mesh.shape),
    )
    ckpt = checkpoint.TrainCheckpointer(
        workdir, save_every=int(config.ckpt_every), keep=int(config.get("ckpt_keep", 2))
    )
    data = task.train_batches(seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
    start = ckpt.latest_step()
    if start is None:
        state, start = run.init_state(), 0
    else:
        state, _ = ckpt.restore(start, run.abstract_state, data)
        logging.info("resumed from %s/ckpt at step %d", workdir, start)
    max_bad = int(config.get("max_bad_steps", 5))
    step_fn = run.step_fn

    # -- the loop -------------------------------------------------------------------------------------------------
    writer = logs.MetricWriter(log_dir or workdir, tensorboard=bool(config.get("tensorboard", True)), tags=tags)
    meta = {"config": config.to_dict(), "process_count": jax.process_count()}
    eval_every, log_every = int(config.eval_every), int(config.log_every)
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    stopped: str | None = None
    interrupt = _Interrupt()
    progress = _progress(start, total_steps, jax.process_index() == 0)
    step = start
    t_log, n_log = time.perf_counter(), 0

    def run_eval(state, step):
        metrics = task.evaluate(run.eval_model(state), step, workdir)
        writer.write(step, metrics, kind="eval")
        best_key = config.get("best_metric", "")
        if best_key and best_key in metrics:
            ckpt.save_best(step, float(metrics[best_key]), state, meta)
        return metrics

    try:
        with jax.set_mesh(mesh):
            while step < total_steps:
                batch = parallel.global_batch(next(data), mesh)
                state, metrics = step_fn(state, batch)
                step += 1
                n_log += config.batch_size
                if step % log_every == 0 or step == total_steps:
                    last_train = _to_host(metrics)
                    bad, skipped = int(state["bad_streak"]), int(state["skipped"])
                    dt = time.perf_counter() - t_log
                    last_train.update(samples_per_s=n_log / max(dt, 1e-9), skipped_steps=skipped)
                    writer.write(step, last_train, kind="train")
                    progress(step, last_train)
                    t_log, n_log = time.perf_counter(), 0
                    if bad >= max_bad:
                        raise NonFiniteLossError(
                            f"{bad} consecutive steps with a non-finite loss or gradient (last loss "
                            f"{last_train['loss']}, grad norm {last_train['grad_norm']}) at step {step}. Check the "
                            "learning rate (--config.optim.lr), the input normalisation, empty or degenerate "
                            "targets in the data, and try --config.model.dtype=float32 if running in bfloat16."
                        )
                ckpt.save(step, state, data, meta)
                if step % eval_every == 0 or step == total_steps:
                    last_eval = run_eval(state, step)
                if interrupt.requested:
                    stopped = f"SIGTERM at step {step}"
                    break
    except KeyboardInterrupt:
        stopped = f"interrupted at step {step}"
    finally:
        interrupt.restore()
        if step > 0 and ckpt.latest_step() != step:
            try:
                ckpt.save(step, state, data, meta, force=True)
            except Exception as e:  # noqa: BLE001 - never hide the original error behind a save failure
                logging.error("could not save the final checkpoint at step %d: %s", step, e)
        ckpt.wait()
        ckpt.close()
        writer.close()
        progress(None, None)
    if stopped:
        logging.warning("%s; checkpoint saved in %s/ckpt", stopped, workdir)
    return TrainResult(state, run.eval_model(state), last_train, last_eval, stopped)


def _progress(start: int, total: int, enabled: bool) -> Callable[[int | None, dict | None], None]:
    """A tqdm bar updated at log steps (samples/s, loss, ETA); ``(None, None)`` closes it."""
    if not enabled:
        return lambda step, metrics: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)

    def update(step, metrics):
        if step is None:
            bar.close()
            return
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", samples_s=f"{metrics['samples_per_s']:.1f}", refresh=False)

    return update


def restore_model(
    path: str, *, best: bool = False, stage: str | None = None, build_task: Callable | None = None
) -> tuple[ml_collections.ConfigDict, Task, nnx.Module, int]:
    """(config, task, model in eval mode, step) from a trainer checkpoint: a workdir (its latest checkpoint, or the
    best one), a ``ckpt``/``best`` folder or one step directory; a multi-stage workdir's ``stage``
    (``checkpoint.resolve_step_dir``).

    The config is the one saved with the checkpoint; ``build_task`` (default ``clip_text_spot.tasks.build_task``)
    turns it into the task that builds the model. Only parameters and model statistics are read, as host arrays,
    whatever mesh or process count the run trained on; a tensor the model lacks, misses or shapes differently is an
    error naming it.
    """
    if build_task is None:
        from clip_text_spot.tasks import build_task
    from clip_text_spot.models.clip.convert import assign_flat

    step_dir = checkpoint.resolve_step_dir(path, "best" if best else "latest", stage)
    config = ml_collections.ConfigDict(checkpoint.read_step_config(step_dir))
    task = build_task(config)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    flat = {}
    for part in ("params", "rest"):
        flat |= checkpoint.flat_names(checkpoint.read_step_arrays(step_dir, (part,)))
    assign_flat(model, flat, str(step_dir))
    model.eval()
    return config, task, model, int(step_dir.name)
