"""Data pipeline throughput: synthetic rendering, detection augmentation + DB targets, recognition samples.

Prints one JSON line of samples/s *per core* (samples per CPU-second of one process, OpenCV limited to one thread),
optionally also written to ``--out``. Detection: 640x640 images with ``--words`` (20) words, TCM's augmentation
(crop 640) and DB targets; rendering and transform are timed separately and together (render then transform, as a
source feeding the pipeline does). ``--workers N`` also times the grain train iterator with N worker processes
(samples/s overall, wall clock).

The glyph cache fills during the first samples of a process (they rasterise every new glyph): the first ``--n``
detection samples are reported as ``det_total_cold_per_s``, then ``--warmup`` more samples run untimed; a long
training run is in that steady state. The 1-minute load average is reported: CPU-time rates are little affected by
other processes (through shared caches only), the wall-clock worker rate is.

    python bench/data_pipeline.py --n 200 --out bench/results/data_pipeline.json
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np
from report import emit

from clip_text_spot.data.augment import PARSEQ_AUG
from clip_text_spot.data.pipeline import DetTrainTransform, RecTrainTransform, make_det_train_iter
from clip_text_spot.data.synthetic import SyntheticDetSource, SyntheticRecSource
from clip_text_spot.data.synthetic import render as render_module


def _rate(fn, n: int) -> float:
    """Calls of ``fn(i)`` (i in range(n)) per second of this process's CPU time: the per-core rate, insensitive to
    other processes sharing the machine (the work is single-threaded: numpy element-wise ops, one OpenCV thread)."""
    t = time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.process_time() - t)


def bench_detection(n: int, warmup: int, words: int) -> dict:
    """Per-core rates of detection rendering, transform and both: cold (fresh glyph cache), then steady state."""
    src = SyntheticDetSource(10**6, num_words=(words, words))
    transform = DetTrainTransform()
    rng = np.random.default_rng(0)
    cold = _rate(lambda i: transform(src[i], rng), n)
    for i in range(n, n + warmup):
        transform(src[i], rng)
    base = n + warmup
    samples = [src[base + i] for i in range(n)]
    return {
        "det_total_cold_per_s": round(cold, 2),
        "det_render_per_s": round(_rate(lambda i: src[base + i], n), 2),
        "det_transform_per_s": round(_rate(lambda i: transform(samples[i], rng), n), 2),
        "det_total_per_s": round(_rate(lambda i: transform(src[base + n + i], rng), n), 2),
        "det_polygons_per_image": round(float(np.mean([len(s.polygons) for s in samples])), 2),
        "glyph_cache_entries": render_module._glyph.cache_info().currsize,
    }


def bench_recognition(n: int, warmup: int) -> dict:
    """Per-core rates of recognition crop rendering, transform (PARSeq augmentation, resize, encode) and both."""
    src = SyntheticRecSource(10**6)
    transform = RecTrainTransform(aug=PARSEQ_AUG)
    rng = np.random.default_rng(0)
    for i in range(warmup):
        transform(src[i], rng)
    samples = [src[warmup + i] for i in range(n)]
    return {
        "rec_render_per_s": round(_rate(lambda i: src[warmup + i], n), 2),
        "rec_transform_per_s": round(_rate(lambda i: transform(samples[i], rng), n), 2),
        "rec_total_per_s": round(_rate(lambda i: transform(src[warmup + n + i], rng), n), 2),
    }


def bench_workers(workers: int, n: int, words: int) -> dict:
    """Overall (wall-clock) rate of the grain detection train iterator with ``workers`` processes, start-up excluded."""
    src = SyntheticDetSource(10**6, num_words=(words, words))
    it = make_det_train_iter(src, batch_size=8, seed=0, workers=workers)
    try:
        for _ in range(3):
            next(it)
        steps = max(1, n // 8)
        t = time.perf_counter()
        for _ in range(steps):
            next(it)
        rate = 8 * steps / (time.perf_counter() - t)
    finally:
        it.close()
    return {f"det_iter_{workers}_workers_per_s": round(rate, 2)}


def main() -> None:
    """Run the benchmarks and print (and optionally save) one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="timed samples per measurement")
    parser.add_argument("--warmup", type=int, default=1500, help="untimed samples before the steady-state timings")
    parser.add_argument("--words", type=int, default=20, help="words per detection image")
    parser.add_argument("--workers", type=int, default=0, help="also time the grain iterator with this many workers")
    parser.add_argument("--out", default="", help="also write the JSON line to this file")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    result = {
        "benchmark": "data_pipeline",
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min_start": round(os.getloadavg()[0], 2),
        "n": args.n,
        "warmup": args.warmup,
        "words": args.words,
    }
    result.update(bench_detection(args.n, args.warmup, args.words))
    result.update(bench_recognition(args.n, args.warmup))
    if args.workers:
        result.update(bench_workers(args.workers, args.n, args.words))
    result["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    emit(result, args.out)


if __name__ == "__main__":
    main()
