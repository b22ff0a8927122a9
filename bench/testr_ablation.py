"""TESTR vs TESTR-FastTCM at demo scale: the same seed, synthetic data, model and step budget, with and without the
FastTCM modules (spotting.md §5). PLUMBING CHECK, NOT THE PAPER'S CLAIM: the CLIP here is a tiny random-init one (no
real CLIP is available offline), so its "text knowledge" is noise; the figures show that both recipes train and
evaluate through the same code path, not that FastTCM improves spotting.

    python bench/testr_ablation.py [--steps=500] [--seed=0] [--workdir=DIR] \
        [--output=bench/results/testr_ablation-cpu.json]

Runs ``configs/testr.py:demo`` and ``configs/testr.py:demo_fasttcm`` (tiny CLIP ResNet, small TESTR, 256x256
synthetic scenes, held-out split of 64) one after the other through the trainer (``clip_text_spot.trainer.train``,
as ``clip_text_spot.main`` does), each for ``--steps`` steps (learning-rate drop at 80%) with one evaluation at the
end, and prints one JSON line with both runs' ``e2e_hmean``, detection ``hmean``, ``word_accuracy``, wall seconds
and steps/s; writes it to ``--output``. Default budget: about 16 minutes on 2 quiet CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from report import device_fields, emit  # noqa: E402

from clip_text_spot.logs import read_metrics  # noqa: E402
from clip_text_spot.tasks import build_task  # noqa: E402
from clip_text_spot.trainer import train  # noqa: E402
from configs.testr import get_config  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "testr_ablation-cpu.json")
RUNS = {"testr": "demo", "testr_fasttcm": "demo_fasttcm"}
NOTE = "random-init tiny CLIP: checks the plumbing (both recipes train and evaluate), not the paper's claim"


def run(name: str, arg: str, steps: int, seed: int, workdir: str) -> dict[str, float]:
    """Train one demo recipe for ``steps`` steps, evaluate once at the end; its figures."""
    config = get_config(f"{arg},steps={steps}")
    config.seed = seed
    config.eval_every = config.ckpt_every = steps
    config.tensorboard = False
    path = os.path.join(workdir, name)
    start = time.perf_counter()
    train(config, path, build_task(config))
    seconds = time.perf_counter() - start
    final = read_metrics(path, "eval")[-1]
    keys = ("e2e_hmean", "hmean", "word_accuracy")
    return {**{k: round(float(final[k]), 4) for k in keys}, "step": final["step"], "seconds": round(seconds, 1),
            "steps_per_s": round(steps / seconds, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="train steps per recipe (the same for both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="", help="keep the two workdirs here (default: a temporary folder)")
    parser.add_argument("--output", default=RESULTS)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="testr_ablation_") as tmp:
        workdir = a.workdir or tmp
        results = {name: run(name, arg, a.steps, a.seed, workdir) for name, arg in RUNS.items()}
    for name, r in results.items():
        print(f"{name}: e2e_hmean {r['e2e_hmean']:.4f}, hmean {r['hmean']:.4f} after {r['step']} steps ({NOTE})")
    record = {"bench": "testr_ablation", **device_fields(), "steps": a.steps, "seed": a.seed, "note": NOTE, **results}
    emit(record, a.output)


if __name__ == "__main__":
    main()
