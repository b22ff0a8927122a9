"""FastTCM speed with any head: train images/s at the head's crop size (DB 640, FCE 800, PAN 736) and inference
FPS at the preset's test size (DB IC15 1024x1824, FCE 1280x2272, PAN 736x1312) with the head's post-processing,
FastTCM (text embedding cached) vs TCM (image-conditioned prompt, text tower every image).

    python bench/fasttcm.py [--head=db|fce|pan] [--config=ic15] [--train_batch=2] [--steps=3] [--infer_images=3]
        [--infer_size=H,W] [--dtype=float32] [--compile_only] [--output=bench/results/fasttcm-<device>.json]

Full paper configuration (CLIP-RN50, random weights: speed does not depend on them, except the post-processing's,
which sees random maps here). Train batches carry the head's real targets of a few random boxes per image (made by
the head's target function, as the input pipeline makes them). Prints one JSON line with the
device, the jax version and the figures; on a CPU keep the batch small (the default 2). Training also reports the
compiled step's TFLOPs per device (XLA cost analysis: forward, backward and optimiser) and MFU against the chip's
dense bf16 peak (``report.BF16_PEAK_TFLOPS``; null on CPUs), and the step's device GiB from XLA's memory analysis
(arguments, outputs and temporaries). ``--compile_only`` compiles the train steps and reports TFLOPs and GiB alone,
to size a batch for a device before running there. The issue's GPU setting is ``--train_batch=16 --dtype=bfloat16``
per device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from report import device_fields, emit, train_step_figures  # noqa: E402

from clip_text_spot import trainer  # noqa: E402
from clip_text_spot.models.inference import overlapped, to_host  # noqa: E402
from clip_text_spot.tasks.fasttcm import FastTCMTask  # noqa: E402
from configs.fasttcm import get_config  # noqa: E402


def bench_config(variant: str, arg: str, head: str, dtype: str):
    config = get_config(f"{arg},head={head}" + (",tcm" if variant == "tcm" else ""))
    config.model.require_clip = False
    config.data.root = "unused"  # random inputs: no dataset is opened
    config.model.dtype = dtype
    return config


def random_batch(task: FastTCMTask, batch: int, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random images with the head's targets of 6 random axis-aligned word boxes each."""
    rows = []
    for _ in range(batch):
        polys = []
        for _ in range(6):
            w, h = rng.uniform(0.1, 0.4) * size, rng.uniform(0.03, 0.1) * size
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            polys.append(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32))
        rows.append(task.head.targets(polys, [False] * len(polys), (size, size)))
    out = {k: np.stack([r[k] for r in rows]).astype(np.float32) for k in rows[0]}
    return {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32), **out}


def train_speed(variant: str, arg: str, head: str, batch: int, steps: int, dtype: str) -> dict[str, float | None]:
    """Images/s of the trainer's jitted step (head + aux loss, backward, optimiser) at the head's crop size, the
    step's FLOPs per device from XLA's cost analysis of the compiled step, MFU against the chip's bf16 peak (None
    where the peak is unknown, e.g. CPUs) and the step's device GiB. ``steps=0``: compile only (FLOPs and GiB)."""
    config = bench_config(variant, arg, head, dtype)
    config.batch_size = batch
    task = FastTCMTask(config)
    run = trainer.setup(config, task)
    size = config.data.crop_size
    return train_step_figures(run, random_batch(task, batch, size, np.random.default_rng(0)), batch, steps)


def inference_fps(
    variant: str, arg: str, head: str, images: int, dtype: str, hw: tuple[int, int] | None
) -> dict[str, float]:
    """Frames/s at batch 1 including the head's post-processing on the host (FastTCM uses its cached text
    embedding): one frame after the other (the TCM benchmark's way), the network alone, and ``fps_overlapped`` with
    frame k+1 dispatched before frame k is post-processed (``models.inference.overlapped``)."""
    config = bench_config(variant, arg, head, dtype)
    hw = hw or tuple(config.data.eval_size)
    task = FastTCMTask(config)
    from flax import nnx

    model = task.build_model(nnx.Rngs(0))
    model.eval()
    predict = task.predict_fn(model)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, *hw, 3)).astype(np.float32))
    to_host(predict(x))  # compile

    def postprocess(prediction):
        return task.postprocess(prediction, [(1.0, 1.0)], [hw])

    t0 = time.perf_counter()
    net = 0.0
    for _ in range(images):
        t1 = time.perf_counter()
        prediction = to_host(predict(x))
        net += time.perf_counter() - t1
        postprocess(prediction)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _, prediction in overlapped(range(images), lambda _: predict(x)):
        postprocess(prediction)
    overlapped_s = time.perf_counter() - t0
    return {"fps": images / total, "fps_network_only": images / net, "fps_overlapped": images / overlapped_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="ic15", help="configs/fasttcm.py argument (dataset preset)")
    ap.add_argument("--head", default="db", choices=["db", "fce", "pan"], help="detection head")
    ap.add_argument("--train_batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--infer_images", type=int, default=3)
    ap.add_argument("--infer_size", default="", help="H,W of the inference input (default: the preset's test box)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--skip_train", action="store_true")
    ap.add_argument("--compile_only", action="store_true", help="train steps' TFLOPs and GiB only: no timing")
    ap.add_argument("--output", default="", help="also write the JSON line to this file")
    a = ap.parse_args()
    hw = tuple(int(v) for v in a.infer_size.split(",")) if a.infer_size else None
    config = bench_config("fasttcm", a.config, a.head, a.dtype)
    out = {
        "bench": "fasttcm",
        **device_fields(),
        "config": a.config,
        "head": a.head,
        "dtype": a.dtype,
        "train_batch": a.train_batch,
        "train_size": config.data.crop_size,
        "infer_size": list(hw or config.data.eval_size),
    }
    for variant in ("fasttcm", "tcm"):
        if not a.skip_train:
            steps = 0 if a.compile_only else a.steps
            speed = train_speed(variant, a.config, a.head, a.train_batch, steps, a.dtype)
            out.update({f"{variant}_train_{k}": None if v is None else round(v, 4) for k, v in speed.items()})
        if not a.compile_only:
            fps = inference_fps(variant, a.config, a.head, a.infer_images, a.dtype, hw)
            out.update({f"{variant}_infer_{k}": round(v, 3) for k, v in fps.items()})
    if not a.compile_only:
        out["fasttcm_over_tcm_fps"] = round(out["fasttcm_infer_fps"] / out["tcm_infer_fps"], 3)
    if not (a.compile_only or a.skip_train):
        out["fasttcm_over_tcm_train"] = round(out["fasttcm_train_img_per_s"] / out["tcm_train_img_per_s"], 3)
    emit(out, a.output)


if __name__ == "__main__":
    main()
