"""Train a model: ``python -m clip_text_spot.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.X=Y]``.

The config file's ``get_config(arg)`` returns an ``ml_collections.ConfigDict``; any field can be overridden on the
command line (``--config.total_steps=100``). Running again with the same ``--workdir`` resumes from its latest
checkpoint. ``--distributed`` calls ``jax.distributed.initialize()`` first: auto-detected on TPU pods, SLURM
(``srun``) and Open MPI; elsewhere give ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or
``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``); see ``launch/``. ``--dry_run`` prints the
parameter and optimizer-state bytes per device for the configured mesh (abstract: no memory, no data) and exits;
simulate N devices on a CPU with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.

Multi-stage configs (e.g. DPTR's pre-training then fine-tuning) set ``config.stages = ("a", "b")`` and hold one full
config per stage (``config.a``, ``config.b``); stage ``a`` checkpoints in ``WORKDIR/a``, all stages log to
``WORKDIR/metrics.jsonl`` with a ``stage`` field, and a string field ``"stage:a"`` in a later stage's config is
replaced by the path ``WORKDIR/a`` (e.g. to initialise from the previous stage's checkpoint). A task with a
``run(workdir)`` method instead of a model (spotting evaluation, ``configs/spot.py``) is run once and its metrics
logged as an ``eval`` row at step 0.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from clip_text_spot import logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and pictures go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() before anything else.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "--distributed: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print parameter/optimizer bytes per device as JSON and exit.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not _DISTRIBUTED.value and explicit != (None, None, None):
        raise app.UsageError("--coordinator_address/--num_processes/--process_id need --distributed")
    if _WORKDIR.value is None and not _DRY_RUN.value:
        raise app.UsageError("--workdir is required (except with --dry_run)")
    logs.quiet_libraries()
    import jax

    from clip_text_spot import parallel

    if _DISTRIBUTED.value:  # decided from flags alone: nothing may touch the devices before this
        parallel.initialize_distributed(*explicit)
    from clip_text_spot import trainer
    from clip_text_spot.tasks import build_task

    config, workdir = _CONFIG.value, _WORKDIR.value or ""
    stages = list(config.get("stages", ())) or [None]
    summary = {}
    for stage in stages:
        stage_config = config if stage is None else resolve_stage_refs(config[stage], workdir)
        try:
            task = build_task(stage_config)
        except (ValueError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")
        stage_dir = workdir if stage is None else os.path.join(workdir, stage)
        if hasattr(task, "run"):  # evaluation-only stage (e.g. spotting with the models of earlier stages)
            if not _DRY_RUN.value:
                summary = {"eval": run_evaluation(task, stage_dir, workdir, stage)}
                summary.update({"stage": stage} if stage is not None else {})
            continue
        if _DRY_RUN.value:
            report = trainer.memory_report(trainer.setup(stage_config, task))
            if jax.process_index() == 0:
                print(json.dumps(report if stage is None else {"stage": stage, **report}))
            continue
        result = trainer.train(
            stage_config,
            stage_dir,
            task,
            log_dir=workdir,
            tags=None if stage is None else {"stage": stage},
        )
        summary = {"step": int(result.state["step"]), "train": result.last_train, "eval": result.last_eval}
        if stage is not None:
            summary["stage"] = stage
        if result.stopped_early:
            summary["stopped"] = result.stopped_early
            break
        logging.info("done: %s", summary)
    if jax.process_index() == 0 and not _DRY_RUN.value:
        print(json.dumps(summary))


def run_evaluation(task, stage_dir: str, log_dir: str, stage: str | None) -> dict:
    """Run an evaluation-only task (``task.run(workdir) -> metrics``) and log its metrics at step 0."""
    try:
        metrics = task.run(stage_dir)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    writer = logs.MetricWriter(log_dir, tensorboard=False, tags=None if stage is None else {"stage": stage})
    writer.write(0, metrics, kind="eval")
    writer.close()
    logging.info("done: %s", metrics)
    return metrics


def resolve_stage_refs(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """Copy of ``config`` with every string ``"stage:NAME"`` replaced by ``WORKDIR/NAME``."""
    config = ml_collections.ConfigDict(config.to_dict())

    def walk(node: ml_collections.ConfigDict) -> None:
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                walk(value)
            elif isinstance(value, str) and value.startswith("stage:"):
                node[key] = os.path.join(workdir, value[len("stage:") :])

    walk(config)
    return config


if __name__ == "__main__":
    from clip_text_spot.cli import expose_config_package

    expose_config_package(sys.argv[1:])  # config files import ``configs.common``: works from any directory
    app.run(main)
