"""FastTCM-DBNet speed: train images/s at 640x640 and inference FPS at 1024x1824 with post-processing,
FastTCM (text embedding cached) vs TCM (image-conditioned prompt, text tower every image).

    python bench/fasttcm.py [--config=ic15] [--train_batch=2] [--steps=3] [--infer_images=3] [--dtype=float32]
        [--compile_only] [--output=bench/results/fasttcm-<device>.json]

Full paper configuration (CLIP-RN50, random weights: speed does not depend on them). Prints one JSON line with the
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from report import (  # noqa: E402
    compile_train_step,
    compiled_flops,
    compiled_peak_bytes,
    device_fields,
    emit,
    gib,
    mfu,
    time_train_step,
)

from clip_text_spot import trainer  # noqa: E402
from clip_text_spot.models.inference import overlapped  # noqa: E402
from clip_text_spot.postprocess.db import db_postprocess  # noqa: E402
from clip_text_spot.tasks.fasttcm import FastTCMTask  # noqa: E402
from configs.fasttcm import get_config  # noqa: E402

MAP_KEYS = ("gt_shrink", "gt_shrink_mask", "gt_thr_mask", "gt_thr")  # the DB targets of a train batch


def train_speed(variant: str, arg: str, batch: int, steps: int, dtype: str) -> dict[str, float | None]:
    """Images/s of the trainer's jitted step (DB + aux loss, backward, optimiser) on random 640x640 batches, the
    step's FLOPs per device from XLA's cost analysis of the compiled step, MFU against the chip's bf16 peak (None
    where the peak is unknown, e.g. CPUs) and the step's device GiB. ``steps=0``: compile only (FLOPs and GiB)."""
    config = get_config(f"{arg},tcm" if variant == "tcm" else arg)
    config.model.require_clip = False
    config.data.root = "unused"  # random inputs: no dataset is opened
    config.model.dtype = dtype
    config.batch_size = batch
    run = trainer.setup(config, FastTCMTask(config))
    size = config.data.crop_size
    if steps == 0:
        maps = {k: jax.ShapeDtypeStruct((batch, size, size), jnp.float32) for k in MAP_KEYS}
        compiled = compile_train_step(run, {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32), **maps})
        flops = compiled_flops(compiled)
        return {
            "step_tflops_per_device": None if flops is None else flops / 1e12,
            "step_gib_per_device": gib(compiled_peak_bytes(compiled)),
        }
    rng = np.random.default_rng(0)
    batch_np = {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32)}
    for key in MAP_KEYS[:3]:
        batch_np[key] = (rng.random((batch, size, size)) > 0.8).astype(np.float32)
    batch_np["gt_thr"] = rng.uniform(0.3, 0.7, (batch, size, size)).astype(np.float32)
    t = time_train_step(run, batch_np, steps)
    return {
        "img_per_s": batch / t.seconds,
        "step_tflops_per_device": None if t.flops is None else t.flops / 1e12,
        "mfu": mfu(t.flops, t.seconds),
        "step_gib_per_device": gib(t.peak_bytes),
    }


def inference_fps(variant: str, arg: str, images: int, dtype: str, hw: tuple[int, int]) -> dict[str, float]:
    """Frames/s at batch 1 including DB post-processing on the host (FastTCM uses its cached text embedding): one
    frame after the other (the TCM benchmark's way), the network alone, and ``fps_overlapped`` with frame k+1
    dispatched before frame k is post-processed (``models.inference.overlapped``)."""
    config = get_config(f"{arg},tcm" if variant == "tcm" else arg)
    config.model.require_clip = False
    config.data.root = "unused"  # random inputs: no dataset is opened
    config.model.dtype = dtype
    task = FastTCMTask(config)
    from flax import nnx

    model = task.build_model(nnx.Rngs(0))
    model.eval()
    predict = task.predict_fn(model)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, *hw, 3)).astype(np.float32))
    np.asarray(predict(x))  # compile
    t0 = time.perf_counter()
    net = 0.0
    for _ in range(images):
        t1 = time.perf_counter()
        prob = np.asarray(predict(x))
        net += time.perf_counter() - t1
        db_postprocess(prob[0], config.postprocess.preset)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _, prob in overlapped(range(images), lambda _: predict(x)):
        db_postprocess(prob[0], config.postprocess.preset)
    overlapped_s = time.perf_counter() - t0
    return {"fps": images / total, "fps_network_only": images / net, "fps_overlapped": images / overlapped_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="ic15", help="configs/fasttcm.py argument (dataset preset)")
    ap.add_argument("--train_batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--infer_images", type=int, default=3)
    ap.add_argument("--infer_size", default="1024,1824", help="H,W of the inference input")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--skip_train", action="store_true")
    ap.add_argument("--compile_only", action="store_true", help="train steps' TFLOPs and GiB only: no timing")
    ap.add_argument("--output", default="", help="also write the JSON line to this file")
    a = ap.parse_args()
    hw = tuple(int(v) for v in a.infer_size.split(","))
    out = {
        "bench": "fasttcm",
        **device_fields(),
        "config": a.config,
        "dtype": a.dtype,
        "train_batch": a.train_batch,
        "infer_size": list(hw),
    }
    for variant in ("fasttcm", "tcm"):
        if not a.skip_train:
            speed = train_speed(variant, a.config, a.train_batch, 0 if a.compile_only else a.steps, a.dtype)
            out.update({f"{variant}_train_{k}": None if v is None else round(v, 4) for k, v in speed.items()})
        if not a.compile_only:
            fps = inference_fps(variant, a.config, a.infer_images, a.dtype, hw)
            out.update({f"{variant}_infer_{k}": round(v, 3) for k, v in fps.items()})
    if not a.compile_only:
        out["fasttcm_over_tcm_fps"] = round(out["fasttcm_infer_fps"] / out["tcm_infer_fps"], 3)
    emit(out, a.output)


if __name__ == "__main__":
    main()
