"""DPTR's claim, measured here: fine-tuning from a text-pre-trained decoder vs. from a random decoder.

    python bench/dptr_vs_scratch.py [--pretrain_steps=N] [--finetune_steps=N] [--workdir=DIR]

Runs the demo recipe (``configs/dptr.py:demo``: small random-init CLIP — no real CLIP is available offline —
wordfreq labels, ORP from photo crops, synthetic word crops) once: text-only pre-training, then two fine-tunings
with the same budget, data order, seed and encoder/FMU initialisation, one starting from the pre-trained decoder
and one from a random decoder. Both are evaluated on the same held-out synthetic crops (word accuracy and 1-NED,
PARSeq convention) at every evaluation step. Step counts default to the demo's. Prints one JSON line and writes it
to ``bench/results/dptr_vs_scratch.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from report import emit  # noqa: E402

from clip_text_spot.logs import read_metrics  # noqa: E402
from clip_text_spot.main import resolve_stage_refs  # noqa: E402
from clip_text_spot.tasks import build_task  # noqa: E402
from clip_text_spot.trainer import train  # noqa: E402
from configs.dptr import get_config  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "dptr_vs_scratch.json")


def _curve(workdir: str, stage: str) -> list[dict[str, float]]:
    rows = [r for r in read_metrics(workdir, "eval") if r.get("stage") == stage]
    return [{"step": r["step"], "word_accuracy": round(r["word_accuracy"], 4), "ned": round(r["ned"], 4)} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain_steps", type=int, default=0, help="0: the demo's")
    parser.add_argument("--finetune_steps", type=int, default=0, help="0: the demo's")
    parser.add_argument("--evals", type=int, default=4, help="evaluations per fine-tuning")
    parser.add_argument("--workdir", default="", help="where the runs go (default: a temporary directory)")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="dptr_vs_scratch_")
    config = get_config("demo")
    args.pretrain_steps = args.pretrain_steps or int(config.pretrain.total_steps)
    args.finetune_steps = args.finetune_steps or int(config.finetune.total_steps)
    load_start = os.getloadavg()[0]
    timings = {}

    def run(stage: str, name: str, init: str | None = None) -> None:
        cfg = resolve_stage_refs(config[stage], workdir)
        if stage == "pretrain":
            cfg.total_steps = args.pretrain_steps
            cfg.eval_every = cfg.ckpt_every = args.pretrain_steps
        else:
            cfg.total_steps = args.finetune_steps
            cfg.eval_every = cfg.ckpt_every = max(1, args.finetune_steps // args.evals)
            cfg.init.decoder = init
        cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, cfg.total_steps // 10)
        start = time.perf_counter()
        train(cfg, os.path.join(workdir, name), build_task(cfg), log_dir=workdir, tags={"stage": name})
        timings[name] = round(time.perf_counter() - start, 1)

    run("pretrain", "pretrain")
    run("finetune", "dptr", init=os.path.join(workdir, "pretrain"))
    run("finetune", "scratch", init="")
    dptr, scratch = _curve(workdir, "dptr"), _curve(workdir, "scratch")
    ft = config.finetune
    result = {
        "benchmark": "dptr_vs_scratch",
        "word_accuracy_dptr": dptr[-1]["word_accuracy"],
        "word_accuracy_scratch": scratch[-1]["word_accuracy"],
        "ned_dptr": dptr[-1]["ned"],
        "ned_scratch": scratch[-1]["ned"],
        "curve_dptr": dptr,
        "curve_scratch": scratch,
        "pretrain_text_reconstruction": _curve(workdir, "pretrain")[-1],
        "pretrain_steps": args.pretrain_steps,
        "finetune_steps": args.finetune_steps,
        "batch_size": ft.batch_size,
        "eval_samples": ft.data.eval_samples,
        "clip": "random init (configs/dptr.py:demo; no real CLIP offline)",
        "decoder": ft.model.decoder.to_dict(),
        "encoder": {k: ft.model.encoder[k] for k in ("width", "depth", "heads", "patch_size", "stem")},
        "seconds": timings,
        "cpu_count": os.cpu_count(),
        "load_avg_1min_start": round(load_start, 2),
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "workdir": workdir,
    }
    emit(result, args.output)


if __name__ == "__main__":
    main()
