"""End-to-end spotting speed: images/s of the whole pipeline (preprocess, detector, DB post-processing,
rectification, recogniser) and the share of time in each stage (``clip_text_spot.spotter``).

    python bench/spot.py [--models=paper|demo] [--images=4] [--image_size=720,1280] [--batch=1]
        [--output=bench/results/spot-<device>.json]
    python bench/spot.py --workdir=runs/spot_demo        # trained demo models, their detections

``--models=paper`` (default): random-init full-size models, FastTCM-DBNet with CLIP-RN50 at the IC15 test size
(1024x1824) and DPTR's fine-tuning recogniser (ViT 12 x 512 + FMU + 6-layer PARSeq). Random weights give random
detections, so the recogniser reads the scene's ground-truth words instead (``--words`` per image, an IC15-like
count); the detector still runs in full, post-processing included. ``--models=demo`` does the same with the demo
configurations. ``--workdir``: the spotting demo's trained models on its own synthetic scenes, detected regions.
The first batch and every crop-count bucket are compiled before timing. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from report import device_fields, emit  # noqa: E402

from clip_text_spot.data.synthetic import SyntheticDetSource  # noqa: E402
from clip_text_spot.heads.db.targets import DB_TARGETS, db_targets  # noqa: E402
from clip_text_spot.spotter import STAGES, SpotOptions, Spotter  # noqa: E402
from clip_text_spot.tasks.dptr import DptrFinetuneTask  # noqa: E402
from clip_text_spot.tasks.fasttcm import FastTCMTask  # noqa: E402
from configs import dptr, fasttcm  # noqa: E402


def random_spotter(models: str, options: SpotOptions) -> Spotter:
    """A Spotter over random-init detector and recogniser of the paper or demo size."""
    det_config = fasttcm.get_config("ic15" if models == "paper" else "demo")
    det_config.model.require_clip = False
    det_config.data.root = "unused"  # no dataset is opened
    rec_config = dptr.get_config("finetune") if models == "paper" else dptr.get_config("demo").finetune
    rec_config.init.decoder = ""
    det_task, rec_task = FastTCMTask(det_config), DptrFinetuneTask(rec_config)
    det_model, rec_model = det_task.build_model(nnx.Rngs(0)), rec_task.build_model(nnx.Rngs(1))
    det_model.eval()
    rec_model.eval()
    return Spotter(det_config, det_task, det_model, rec_model, options)


def time_spotting(spotter: Spotter, warmup: list, samples: list, batch: int, truth_regions: bool) -> dict:
    """Seconds per stage and words read over ``samples``, after the ``warmup`` batch (compilation)."""
    words = 0

    def run(chunk):
        nonlocal words
        if not truth_regions:
            found = spotter.spot([s.image for s in chunk])
            words += sum(len(f) for f in found)
            return
        device_images, arrays = spotter.prepare([s.image for s in chunk])
        spotter.probability(device_images)  # timed, then replaced by what a trained detector would output:
        maps = np.zeros((spotter.options.batch_size, *spotter.eval_size), np.float32)
        for row, s in enumerate(chunk):
            polys = [np.asarray(p, np.float32) * arrays["scale"][row] for p in s.polygons]
            maps[row] = db_targets(polys, [False] * len(polys), spotter.eval_size, DB_TARGETS)[0]["gt_shrink"]
        dets = spotter.postprocess(maps, arrays, len(chunk))
        regions = [(row, np.asarray(p, np.float32) * arrays["scale"][row]) for row, d in enumerate(dets) for p, _ in d]
        spotter.read_regions(device_images, arrays["resized_shape"], regions)
        words += len(regions)

    run(warmup)
    device_images, arrays = spotter.prepare([s.image for s in warmup])
    box = np.array([[0, 0], [32, 0], [32, 8], [0, 8]], np.float32)
    n = 8
    while n <= spotter.options.max_crops:  # compile every crop-count bucket before timing
        spotter.read_regions(device_images, arrays["resized_shape"], [(0, box)] * n)
        n *= 2
    spotter.timings.clear()
    words = 0
    start = time.perf_counter()
    for i in range(0, len(samples), batch):
        run(samples[i : i + batch])
    wall = time.perf_counter() - start
    return {"wall": wall, "words": words, **{k: spotter.timings[k] for k in STAGES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="paper", choices=("paper", "demo"))
    ap.add_argument("--workdir", help="spotting-demo workdir: its trained models and detections")
    ap.add_argument("--images", type=int, default=4, help="timed images")
    ap.add_argument("--batch", type=int, default=1, help="images per detector call")
    ap.add_argument("--image_size", default="720,1280", help="H,W of the synthetic scenes (random models)")
    ap.add_argument("--words", type=int, default=12, help="words per scene (random models read these)")
    ap.add_argument("--output", default="", help="also write the JSON line to this file")
    a = ap.parse_args()
    options = SpotOptions(batch_size=a.batch)
    if a.workdir:
        spotter = Spotter.from_checkpoints(a.workdir, a.workdir, options=options)
        from clip_text_spot.checkpoint import read_step_config, resolve_step_dir

        data = read_step_config(resolve_step_dir(a.workdir, stage="detector"))["data"]
        size, words = tuple(data["image_size"]), tuple(data["num_words"])
    else:
        spotter = random_spotter(a.models, options)
        size, words = tuple(int(v) for v in a.image_size.split(",")), (a.words, a.words)
    source = SyntheticDetSource(a.images + a.batch, split="eval", image_size=size, num_words=words)
    samples = [source[i] for i in range(len(source))]
    times = time_spotting(spotter, samples[: a.batch], samples[a.batch :], a.batch, truth_regions=not a.workdir)
    staged = sum(times[k] for k in STAGES)
    out = {
        "bench": "spot",
        **device_fields(),
        "models": "trained:" + a.workdir if a.workdir else f"random:{a.models}",
        "regions": "detected" if a.workdir else "ground-truth kernel maps",
        "detector_input": list(spotter.eval_size),
        "crop": list(spotter.crop_size),
        "image_size": list(size),
        "images": a.images,
        "batch": a.batch,
        "words": times["words"],
        "images_per_s": round(a.images / times["wall"], 3),
        "stage_share": {k: round(times[k] / staged, 3) for k in STAGES},
        "stage_seconds_per_image": {k: round(times[k] / a.images, 4) for k in STAGES},
    }
    emit(out, a.output)


if __name__ == "__main__":
    main()
