"""TESTR speed: train images/s (the trainer's jitted step: detectron2 R-50 + TESTR forward, Hungarian matching by the
scipy host callback, set criterion, backward, AdamW) and inference FPS at the preset's test size with
post-processing (thresholding, scaling, decoding).

    python bench/testr.py [--config=totaltext] [--train_batch=2] [--train_size=H,W] [--steps=3] [--infer_images=3]
        [--infer_size=SHORT,MAX] [--dtype=float32] [--compile_only] [--output=bench/results/testr-<device>.json]

Full paper model (R-50, d 256, 6 + 6 layers, 100 queries; random weights: speed does not depend on them except the
post-processing's, which keeps every query here: threshold 0). Train batches are random images padded into the
preset's training box (``--train_size`` overrides it; the official training pads each batch to its largest image,
up to 1600 on the long side for Total-Text) with 10 random word polygons and transcriptions each. Prints one JSON
line: device, jax version, train img/s, the compiled step's TFLOPs per device (XLA cost analysis), MFU against the
chip's dense bf16 peak (``report.BF16_PEAK_TFLOPS``; null on CPUs), the step's device GiB (XLA memory analysis),
and inference FPS at batch 1: one image after the other, the network alone, and with image k+1 dispatched before
image k is post-processed. Inference input: a 3:4 landscape image resized by the preset's test rule (Total-Text
1600 / 1824 -> 1368 x 1824, padded to multiples of 128). ``--compile_only``: TFLOPs and GiB only.

``--config`` takes any ``configs/testr.py`` argument, e.g. ``totaltext,fasttcm`` (TESTR-FastTCM, R-50 code form;
inference with the text embedding cached). ``--compare_tcm`` adds TESTR-TCM / TESTR-FastTCM inference rows at the
same sizes (``infer_<row>_fps``, ``_fps_network_only``, ``_fps_overlapped``): ``fasttcm_cached`` (text embedding
computed once, as evaluation and ``spot`` run it), ``fasttcm_uncached`` (text tower run per image) and ``tcm``
(image-conditioned prompt: no cache possible). The CLIP text tower is RN50's, as in the released configs.

    python bench/testr.py --config=totaltext --compare_tcm --train_batch=1 --train_size=640,640 \
        --output=bench/results/testr-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
from report import device_fields, emit, train_step_figures  # noqa: E402

from clip_text_spot import trainer  # noqa: E402
from clip_text_spot.models.testr.spotter import TESTRSpotter  # noqa: E402
from clip_text_spot.models.testr.targets import batch_targets, image_targets  # noqa: E402
from clip_text_spot.tasks.testr import TESTRTask, spot_options  # noqa: E402
from configs.testr import get_config  # noqa: E402

TCM_ROWS = (("fasttcm_cached", "fasttcm", True), ("fasttcm_uncached", "fasttcm", False), ("tcm", "tcm", True))


def bench_config(arg: str, dtype: str):
    config = get_config(arg)
    config.model.require_init = False
    config.data.root = "unused"  # random inputs: no dataset is opened
    config.model.dtype = dtype
    return config


def random_batch(config, batch: int, hw: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random images filling ``hw`` with the targets of 10 random word quads each."""
    m = config.model
    words = ["".join(rng.choice(list(m.charset), size=rng.integers(3, 10))) for _ in range(10 * batch)]
    rows = []
    for b in range(batch):
        polys = []
        for _ in range(10):
            w, h = rng.uniform(0.1, 0.3) * hw[1], rng.uniform(0.02, 0.06) * hw[0]
            x, y = rng.uniform(0, hw[1] - w), rng.uniform(0, hw[0] - h)
            polys.append(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32))
        texts = words[10 * b : 10 * b + 10]
        rows.append(image_targets(polys, texts, [False] * 10, hw, m.charset, m.ctrl_points, m.chars))
    targets = batch_targets(rows, int(config.data.max_instances), pad_text=len(m.charset) + 1)
    return {
        "image": rng.normal(size=(batch, *hw, 3)).astype(np.float32),
        "image_size": np.tile(np.array(hw, np.int32), (batch, 1)),
        **targets._asdict(),
    }


def train_speed(config, batch: int, hw: tuple[int, int], steps: int) -> dict[str, float | None]:
    """Images/s, TFLOPs per device, MFU and GiB of the trainer's step (``steps=0``: compile only)."""
    config.batch_size = batch
    run = trainer.setup(config, TESTRTask(config))
    batch_np = random_batch(config, batch, hw, np.random.default_rng(0))
    return train_step_figures(run, batch_np, batch, steps)


def inference_fps(config, images: int, text_cache: bool = True) -> dict[str, float]:
    """Frames/s at batch 1 with post-processing: sequential, network only, and overlapped (``TESTRSpotter``;
    ``text_cache``: a FastTCM model's text embedding computed once)."""
    from flax import nnx

    task = TESTRTask(config)
    model = task.build_model(nnx.Rngs(0))
    model.eval()
    spotter = TESTRSpotter(model, dataclasses.replace(spot_options(config), threshold=0.0), text_cache=text_cache)
    short = int(config.spot.test_size)
    image = np.random.default_rng(0).integers(0, 256, size=(short, short * 4 // 3, 3), dtype=np.uint8)
    spotter.spot([image])  # compile
    spotter.timings.clear()
    t0 = time.perf_counter()
    for _ in range(images):
        spotter.spot([image])
    sequential = time.perf_counter() - t0
    network = spotter.timings["detector"]
    t0 = time.perf_counter()
    spotter.spot([image] * images)
    overlapped_s = time.perf_counter() - t0
    return {"fps": images / sequential, "fps_network_only": images / network, "fps_overlapped": images / overlapped_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="totaltext", help="configs/testr.py argument (preset)")
    ap.add_argument("--train_batch", type=int, default=2)
    ap.add_argument("--train_size", default="", help="H,W of the padded training box (default: the preset's)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--infer_images", type=int, default=3)
    ap.add_argument("--infer_size", default="", help="SHORT,MAX of the test resize (default: the preset's)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--skip_train", action="store_true")
    ap.add_argument("--compile_only", action="store_true", help="train step's TFLOPs and GiB only: no timing")
    ap.add_argument("--compare_tcm", action="store_true", help="add TESTR-FastTCM (cached / uncached) and TCM FPS")
    ap.add_argument("--output", default="", help="also write the JSON line to this file")
    a = ap.parse_args()
    config = bench_config(a.config, a.dtype)
    hw = tuple(int(v) for v in a.train_size.split(",")) if a.train_size else tuple(config.data.box)
    if a.infer_size:
        config.spot.test_size, config.spot.max_size = (int(v) for v in a.infer_size.split(","))
    rows = {}
    if a.compare_tcm:
        for name, variant, cached in TCM_ROWS:
            row = bench_config(f"{a.config},{variant}", a.dtype)
            row.spot = config.spot
            rows[name] = (row, cached)
    out = {
        "bench": "testr",
        **device_fields(),
        "config": a.config,
        "dtype": a.dtype,
        "train_batch": a.train_batch,
        "train_size": list(hw),
        "infer_test_size": [int(config.spot.test_size), int(config.spot.max_size)],
    }
    if not a.skip_train:
        speed = train_speed(config, a.train_batch, hw, 0 if a.compile_only else a.steps)
        out.update({f"train_{k}": None if v is None else round(v, 4) for k, v in speed.items()})
    if not a.compile_only:
        out.update({f"infer_{k}": round(v, 3) for k, v in inference_fps(config, a.infer_images).items()})
        for name, (row, cached) in rows.items():
            fps = inference_fps(row, a.infer_images, text_cache=cached)
            out.update({f"infer_{name}_{k}": round(v, 3) for k, v in fps.items()})
    emit(out, a.output)


if __name__ == "__main__":
    main()
