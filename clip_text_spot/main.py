"""Train a model: ``python -m clip_text_spot.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.X=Y]``.

The config file's ``get_config(arg)`` returns an ``ml_collections.ConfigDict``; any field can be overridden on the
command line (``--config.total_steps=100``). Running again with the same ``--workdir`` resumes from its latest
checkpoint. ``--distributed`` calls ``jax.distributed.initialize()`` first (TPU pods, SLURM, Open MPI).
"""

from __future__ import annotations

import json
import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics.jsonl and pictures go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() before anything else.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(pylogging.Filter):
    """Drop INFO chatter from orbax/grain (checkpoint internals) so progress and our own logs stay readable."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax"))
        return record.levelno >= pylogging.WARNING or not noisy


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from clip_text_spot import trainer
    from clip_text_spot.tasks import build_task

    config = _CONFIG.value
    try:
        task = build_task(config)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    result = trainer.train(config, _WORKDIR.value, task)
    summary = {"step": int(result.state["step"]), "train": result.last_train, "eval": result.last_eval}
    if result.stopped_early:
        summary["stopped"] = result.stopped_early
    logging.info("done: %s", summary)
    if jax.process_index() == 0:
        print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
