"""DPTR training speed: samples/s of the trainer's jitted step for text-only pre-training with the frozen CLIP text
tower inside the step, pre-training on cached text memories, and fine-tuning (word crops -> ViT -> FMU -> decoder).

    python bench/dptr_speed.py [--batch=8] [--steps=3] [--dtype=float32] [--skip=pretrain,pretrain_cached,finetune]
        [--output=bench/results/dptr_speed-<device>.json]

Paper configuration (``configs/dptr.py:pretrain`` / ``:finetune``: CLIP ViT-B/16 from its preset, PARSeq decoder
6 x 512, ViT 32x128 12 x 512), random weights and random batches with the keys, shapes and dtypes of the task's
pipeline (``PretrainTransform`` + ``BatchExtras`` on random labels, a random in-memory ORP bank, random cached
memories; random crops): no checkpoint, dataset or cache file is opened. Each mode compiles the step once, runs one
warm-up step, then times ``--steps`` steps. Also reports the compiled step's FLOPs per sample (XLA cost analysis:
forward, backward and optimiser) and MFU against the chip's dense bf16 peak (null on CPUs). ``--dtype`` is the
compute dtype of every model part (``model.dtype`` and ``clip.dtype``); parameters stay float32.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
from report import device_fields, emit, gib, mfu, time_train_step  # noqa: E402

from clip_text_spot import parallel, trainer  # noqa: E402
from clip_text_spot.data.rec_labels import Charset  # noqa: E402
from clip_text_spot.dptr.data import BatchExtras, PretrainTransform  # noqa: E402
from clip_text_spot.dptr.orp import OrpSampler  # noqa: E402
from clip_text_spot.tasks.dptr import DptrFinetuneTask, DptrPretrainTask  # noqa: E402
from configs.dptr import get_config  # noqa: E402

MODES = ("pretrain", "pretrain_cached", "finetune")
Batch = dict[str, np.ndarray]


def _labels(charset: Charset, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` random words of 3..12 charset characters (all pass ``Charset.filter_label``)."""
    chars = list(charset.chars)
    return ["".join(rng.choice(chars, size=int(rng.integers(3, 13)))) for _ in range(n)]


def pretrain_setup(batch: int, cached: bool, dtype: str, rng: np.random.Generator) -> tuple[Any, Batch]:
    """(task, random batch) of text-only pre-training, with or without a text cache."""
    config = get_config(f"pretrain,batch={batch}")
    config.clip.require = False  # random-init CLIP from config.clip.preset
    lam = config.orp.lam
    config.orp.lam = 0.0  # the task opens no bank file; the batch gets ORP noise from a random bank below
    config.model.dtype = config.clip.dtype = dtype
    task = DptrPretrainTask(config)
    labels = _labels(task.charset, batch, rng)
    dim, vis = task.clip_config.embed_dim, task.clip_config.vision
    cache = None
    if cached:  # label -> float16 [1 + 77, 512], what a TextMemoryCache returns; the model then has no CLIP
        cache = {label: rng.standard_normal((task.memory_len, dim)).astype(np.float16) for label in labels}
        task.cache = cache  # type: ignore[assignment]  # build_model only checks that a cache is set
    transform = PretrainTransform(task.charset, task.clip_config.text.context_length, cache)
    rows = [transform(label) for label in labels]
    bank = rng.standard_normal((batch, (vis.image_size // vis.patch_size) ** 2 + 1, dim)).astype(np.float16)
    orp = OrpSampler(bank, lam=lam, tokens=task.memory_len, shared_tokens=config.orp.shared_tokens)
    data = BatchExtras(task.decoder_cfg, orp)({k: np.stack([r[k] for r in rows]) for k in rows[0]}, rng)
    return task, data


def finetune_setup(batch: int, dtype: str, rng: np.random.Generator) -> tuple[Any, Batch]:
    """(task, random batch of word crops) of fine-tuning."""
    config = get_config(f"finetune,batch={batch}")
    config.model.dtype = dtype
    task = DptrFinetuneTask(config)
    labels = _labels(task.charset, batch, rng)
    h, w = task.encoder_cfg.image_size
    data = {
        "image": rng.uniform(-1.0, 1.0, (batch, h, w, 3)).astype(np.float32),
        "label": np.stack([task.charset.encode(label) for label in labels]),
        "label_length": np.array([len(label) for label in labels], np.int32),
    }
    return task, BatchExtras(task.decoder_cfg)(data, rng)


def step_speed(task: Any, batch_np: Batch, steps: int) -> dict[str, float | None]:
    """Samples/s of the trainer's compiled step on ``batch_np``, its FLOPs per sample and MFU (None if unknown)."""
    run = trainer.setup(task.config, task)
    t = time_train_step(run, batch_np, steps)
    per_device = task.config.batch_size / parallel.data_parallel_size(run.mesh)
    return {
        "samples_per_s": task.config.batch_size / t.seconds,
        "flops_per_sample": None if t.flops is None else t.flops / per_device,
        "mfu": mfu(t.flops, t.seconds),
        "step_gib_per_device": gib(t.peak_bytes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="global batch of every mode")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after compile and one warm-up step)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--skip", default="", help=f"comma list among {','.join(MODES)}")
    ap.add_argument("--output", default="", help="also write the JSON line to this file")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    if skip - set(MODES):
        ap.error(f"--skip: unknown mode(s) {sorted(skip - set(MODES))}; known: {','.join(MODES)}")
    out: dict[str, Any] = {
        "bench": "dptr_speed",
        **device_fields(),
        "config": "configs/dptr.py:pretrain,finetune",
        "dtype": a.dtype,
        "batch": a.batch,
        "steps": a.steps,
    }
    rng = np.random.default_rng(0)
    for mode in MODES:
        if mode in skip:
            continue
        if mode == "finetune":
            task, data = finetune_setup(a.batch, a.dtype, rng)
        else:
            task, data = pretrain_setup(a.batch, mode == "pretrain_cached", a.dtype, rng)
        speed = step_speed(task, data, a.steps)
        out.update({f"{mode}_{k}": v if v is None else float(f"{v:.4g}") for k, v in speed.items()})
    if "pretrain_samples_per_s" in out and "pretrain_cached_samples_per_s" in out:
        out["cache_speedup"] = round(out["pretrain_cached_samples_per_s"] / out["pretrain_samples_per_s"], 3)
    emit(out, a.output)


if __name__ == "__main__":
    main()
