"""Run logs: ``WORKDIR/metrics.jsonl`` (one JSON object per line), TensorBoard events, a progress bar.

Only process 0 writes. Train lines carry ``kind: "train"``, eval lines ``kind: "eval"``; both carry ``step``.
"""

from __future__ import annotations

import json
import logging as pylogging
import math
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray, jax.Array)):
        v = np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricWriter:
    """Append metrics to ``metrics.jsonl`` and TensorBoard (``WORKDIR/tb``) on process 0."""

    def __init__(self, workdir: str, tensorboard: bool = True, tags: dict[str, Any] | None = None):
        """``tags`` are added to every row (e.g. ``{"stage": "pretrain"}`` for multi-stage runs)."""
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tags = dict(tags or {})
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                prefix = "_".join(str(v) for v in self.tags.values())
                self._tb = SummaryWriter(os.path.join(workdir, "tb", prefix) if prefix else os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, "time": round(time.time(), 3), **self.tags}
        row.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind", "time", *self.tags) and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str, kind: str | None = None) -> list[dict[str, Any]]:
    """All rows of ``WORKDIR/metrics.jsonl`` (optionally of one ``kind``)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


class _QuietLibraries(pylogging.Filter):
    """Drops INFO chatter from orbax/grain/jax internals so progress bars and our own logs stay readable."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax"))
        return record.levelno >= pylogging.WARNING or not noisy


def quiet_libraries() -> None:
    """Install the filter on absl's log handler (command-line entry points call this first), and turn off
    transformers' advisory warnings: without PyTorch it warns at import that its models are unavailable, but only
    its tokenizer and config classes are used here."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
