"""Tasks the trainer can run, selected by ``config.task``."""

from __future__ import annotations

import importlib

import ml_collections

from clip_text_spot.trainer import Task

REGISTRY = {
    "dptr_pretrain": "clip_text_spot.tasks.dptr:DptrPretrainTask",
    "dptr_finetune": "clip_text_spot.tasks.dptr:DptrFinetuneTask",
    "clip_contrastive": "clip_text_spot.tasks.clip_contrastive:ClipContrastiveTask",
    "fasttcm": "clip_text_spot.tasks.fasttcm:FastTCMTask",
    "spot": "clip_text_spot.tasks.spot:SpotEvalTask",
    "testr": "clip_text_spot.tasks.testr:TESTRTask",
    "testr_eval": "clip_text_spot.tasks.testr:TESTRSpotEvalTask",
}


def build_task(config: ml_collections.ConfigDict) -> Task:
    """Instantiate the task named by ``config.task`` with the whole config."""
    if config.task not in REGISTRY:
        raise ValueError(f"--config.task={config.task!r} is unknown; known tasks: {sorted(REGISTRY)}")
    module, cls = REGISTRY[config.task].split(":")
    return getattr(importlib.import_module(module), cls)(config)
