"""Detect text in images with a trained FastTCM / TCM detector.

    python -m clip_text_spot.predict --workdir=runs/fasttcm_demo IMAGE_OR_DIR [...] [--output=DIR] [--best]
        [--eval_size=1024,1824] [--submission=res.zip] [--strict]

Writes ``OUTPUT/<image name>.json`` (``{"image", "width", "height", "instances": [{"polygon": [[x, y], ...],
"score": s}]}``) and ``OUTPUT/<image name>.png`` (predictions drawn in green), and prints one JSON summary line.
``--submission`` also writes an ICDAR2015 submission (zip or folder; ``res_img_N.txt`` named by the number in each
image name). The model, its input size and post-processing come from the checkpoint's config unless overridden.
An image that cannot be read (empty, truncated, not an image) is named on stderr, listed in the summary's
``skipped`` and left out; the exit status is non-zero only when no image could be read, or with ``--strict`` (which
stops at the first unreadable image before predicting anything).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding ckpt/ (or best/).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Alias of --workdir.")
_BEST = flags.DEFINE_bool("best", False, "Use the best-eval checkpoint instead of the latest.")
_OUTPUT = flags.DEFINE_string("output", "predictions", "Directory for JSON and PNG results.")
_EVAL_SIZE = flags.DEFINE_list("eval_size", None, "H,W box images are resized into (default: the config's).")
_SUBMISSION = flags.DEFINE_string("submission", None, "Also write an ICDAR2015 submission (.zip or folder).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Images per forward pass.")
_STRICT = flags.DEFINE_bool("strict", False, "Stop at the first unreadable image instead of skipping it.")


def main(argv: list[str]) -> None:
    from clip_text_spot import logs, vis
    from clip_text_spot.cli import Skips
    from clip_text_spot.data.pipeline import decode_image, make_det_eval_batches
    from clip_text_spot.data.readers.common import list_images, read_input_image
    from clip_text_spot.data.types import DetSample
    from clip_text_spot.metrics.submission_io import sample_key, write_submission
    from clip_text_spot.models.inference import overlapped
    from clip_text_spot.trainer import restore_model

    logs.quiet_libraries()
    workdir = _WORKDIR.value or _CHECKPOINT.value
    if not workdir:
        raise app.UsageError("--workdir (or --checkpoint) is required")
    if not argv[1:]:
        raise app.UsageError("give at least one image or directory")
    skips = Skips(_STRICT.value)
    try:
        read = skips.read_all(list_images(argv[1:]), read_input_image, "image")
        samples = [DetSample(image=data, polygons=[], texts=[], ignore=[], name=p) for p, data in read]
        config, task, model, step = restore_model(workdir, best=_BEST.value)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if config.task != "fasttcm":
        sys.exit(f"error: {workdir} holds a {config.task!r} model; predict runs detectors (fasttcm)")
    eval_size = tuple(int(v) for v in _EVAL_SIZE.value) if _EVAL_SIZE.value else tuple(config.data.eval_size)
    paths = [s.name for s in samples]
    predict = task.predict_fn(model)
    batches = make_det_eval_batches(samples, batch_size=_BATCH.value, eval_size=eval_size, with_targets=False)
    os.makedirs(_OUTPUT.value, exist_ok=True)
    submission, n_instances, t0 = {}, 0, time.perf_counter()
    for batch, prediction in overlapped(batches, lambda b: predict(b["image"])):
        preds = task.postprocess(prediction, batch["scale"], batch["resized_shape"])
        for row in np.flatnonzero(np.asarray(batch["valid"])):
            path = paths[int(batch["index"][row])]
            name = os.path.splitext(os.path.basename(path))[0]
            h, w = (int(v) for v in batch["orig_shape"][row])
            instances = [{"polygon": np.round(p, 2).tolist(), "score": round(float(s), 4)} for p, s in preds[row]]
            n_instances += len(instances)
            with open(os.path.join(_OUTPUT.value, f"{name}.json"), "w") as f:
                json.dump({"image": path, "width": w, "height": h, "instances": instances}, f)
            image = vis.draw_polygons(
                decode_image(samples[int(batch["index"][row])].image),
                [p for p, _ in preds[row]],
                vis.PRED_COLOR,
                labels=[f"{s:.2f}" for _, s in preds[row]],
            )
            vis.save_png(os.path.join(_OUTPUT.value, f"{name}.png"), image)
            key = sample_key(path)
            if _SUBMISSION.value and key is None:
                sys.exit(f"error: {path}: no image number in the name, needed for --submission (res_img_N.txt)")
            if key is not None:
                submission[key] = preds[row]
    if _SUBMISSION.value:
        write_submission(_SUBMISSION.value, submission, fmt="icdar2015")
    seconds = time.perf_counter() - t0
    summary = {"images": len(paths), "instances": n_instances, "checkpoint_step": step, "seconds": round(seconds, 2)}
    summary["output"] = _OUTPUT.value
    summary["skipped"] = skips.skipped
    logging.info("%s", summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
