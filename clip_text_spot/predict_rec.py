"""Read word crops with a fine-tuned DPTR recogniser.

    python -m clip_text_spot.predict_rec --workdir=DIR | --checkpoint=DIR|FILE.safetensors [IMAGE_OR_DIR ...]
        [--lmdb=DIR] [--labels=FILE] [--output=FILE] [--best] [--batch_size=64] [--convention=parseq] [--strict]

``--workdir``: a training workdir (its latest checkpoint, or the best one with ``--best``; for a multi-stage demo
workdir, its ``finetune`` stage); ``--checkpoint``: a workdir, one step directory (``WORKDIR/ckpt/<step>``) or an
official PARSeq / OpenOCR DPTR checkpoint re-saved as ``FILE.safetensors`` with ``FILE.json`` beside it (``kind``
and the official keywords, ``clip_text_spot.dptr.load``). Crops are resized to the model's input size and
normalised to [-1, 1] (``(u8 / 255 - 0.5) / 0.5``, what both official models expect).
Inputs: image files and folders (searched recursively; names relative to the folder, or the file's base name),
an LMDB (``--lmdb``; names ``image-%09d``, its labels are used) and/or a labels file (``--labels``:
``name<TAB>label`` or ``name label`` lines, the format ``evaluate rec`` reads; with no image argument, the crops it
lists are read from its folder). Each prediction is printed as ``name<TAB>text``; ``--output`` writes the same TSV,
ready for ``python -m clip_text_spot.evaluate rec --gt LABELS --pred FILE``. When labels are known, word accuracy
and 1-NED are computed (``clip_text_spot.metrics.recognition``, PARSeq convention by default). The last stdout line
is a JSON summary. A crop that cannot be read (an empty, truncated or non-image file, a bad LMDB record or labels
line) is named on stderr, listed in the summary's ``skipped`` and left out, also from the accuracy; the exit status
is non-zero only when no crop could be read, or with ``--strict`` (stops at the first unreadable crop).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

from clip_text_spot.data.readers.common import IMAGE_SUFFIXES


def collect_images(args: list[str]) -> list[tuple[str, Path]]:
    """(name, path) of the image files named by ``args`` (files, or folders searched recursively)."""
    out = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{arg}: no images ({', '.join(IMAGE_SUFFIXES)})")
            out += [(p.relative_to(path).as_posix(), p) for p in files]
        elif path.is_file():
            out.append((path.name, path))
        else:
            raise FileNotFoundError(f"{arg}: no such file or directory")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="word-crop images or folders of them")
    parser.add_argument("--workdir", help="training workdir (latest checkpoint; --best for the best one)")
    parser.add_argument(
        "--checkpoint", help="a workdir, a step directory WORKDIR/ckpt/<step> or an official FILE.safetensors (+ .json)"
    )
    parser.add_argument("--best", action="store_true", help="with --workdir: use the best-eval checkpoint")
    parser.add_argument("--lmdb", help="recognition LMDB (PARSeq layout) to read crops and labels from")
    parser.add_argument("--labels", help="labels file (name<TAB>label or 'name label' lines)")
    parser.add_argument("--output", help="write predictions here as name<TAB>text lines")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--convention", default="parseq", help="metric convention (clip_text_spot.evaluate rec)")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable crop, not skip it")
    args = parser.parse_args(argv)
    if bool(args.workdir) == bool(args.checkpoint):
        parser.error("give exactly one of --workdir and --checkpoint")
    if not (args.inputs or args.lmdb or args.labels):
        parser.error("give images or folders, --lmdb or --labels")
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from clip_text_spot import logs
    from clip_text_spot.cli import Skips
    from clip_text_spot.data.readers import read_crop_folder, read_lmdb
    from clip_text_spot.data.readers.common import read_input_image
    from clip_text_spot.dptr.load import load_recognizer
    from clip_text_spot.dptr.predict import crop_pixels, predict_texts, score
    from clip_text_spot.metrics.recognition import read_labels
    from clip_text_spot.models.dptr.recognizer import DptrRecognizer
    from clip_text_spot.models.inference import inference_fn

    logs.quiet_libraries()
    start = time.perf_counter()
    flag = "--workdir" if args.workdir else "--checkpoint"
    model, loaded = load_recognizer(args.workdir or args.checkpoint, best=args.best, flag=flag)

    skips, size = Skips(args.strict), tuple(model.encoder.cfg.image_size)
    names, pixels, labels = [], [], {}
    for name, file in collect_images(args.inputs):
        crop = skips.read(str(file), lambda file=file: crop_pixels(read_input_image(file), size))
        if crop is not None:
            names.append(name)
            pixels.append(crop)
    readers = [(read_lmdb(args.lmdb), True)] if args.lmdb else []
    if args.labels and not args.inputs:
        readers.append((read_crop_folder(args.labels), False))
    for samples, labelled in readers:
        for i in range(len(samples)):  # by index: a bad record raises an error naming it, and is skipped alone
            sample = skips.read(None, functools.partial(samples.__getitem__, i))
            if sample is None:
                continue
            crop = skips.read(sample.name, lambda s=sample: crop_pixels(s.image, size))
            if crop is not None:
                names.append(sample.name)
                pixels.append(crop)
                if labelled:
                    labels[sample.name] = sample.label
    skips.require(len(names), "crop")
    if args.labels:
        listed = read_labels(args.labels)
        by_base = {Path(k).name: v for k, v in listed.items()}  # bare image files match by base name
        for name in names:
            if name in listed or Path(name).name in by_base:
                labels[name] = listed.get(name, by_base.get(Path(name).name))

    if len(set(names)) != len(names):
        raise ValueError("two inputs have the same name; pass them separately or give distinct folders")
    pixels = np.stack(pixels)
    texts = predict_texts(inference_fn(DptrRecognizer.predict, model), pixels, model.charset, args.batch_size)
    lines = [f"{name}\t{text}" for name, text in zip(names, texts, strict=True)]
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {"images": len(names), "checkpoint": loaded, "seconds": round(time.perf_counter() - start, 2)}
    summary["skipped"] = skips.skipped
    scored = {name: labels[name] for name in names if name in labels}
    if scored:
        result = score(scored, dict(zip(names, texts, strict=True)), args.convention)
        summary.update(convention=args.convention, **result)
    if args.output:
        summary["output"] = args.output
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
