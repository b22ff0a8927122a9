"""Spot text in images: detect words with a FastTCM / TCM detector and read them with a DPTR recogniser.

    python -m clip_text_spot.spot --detector=DIR --recognizer=DIR IMAGE_OR_DIR [...] [--output=DIR] [--best]
        [--batch_size=4] [--eval_size=1024,1824] [--min_score=0.3] [--submission=e2e.zip]
        [--lexicon=strong|weak|generic|full --lexicon_dir=DIR | --lexicon_words=FILE [--lexicon_pairs=FILE]] [--strict]

``--detector``: a FastTCM training workdir or checkpoint (a spotting-demo workdir's ``detector`` stage is found);
``--recognizer``: a DPTR fine-tuning workdir or checkpoint (its ``finetune`` stage), or an official PARSeq / OpenOCR
DPTR checkpoint ``FILE.safetensors`` with ``FILE.json`` beside it (``clip_text_spot.dptr.load``). Writes
``OUTPUT/<image name>.json`` (``{"image", "width", "height", "words": [{"polygon": [[x, y], ...], "score": s,
"text": t, "confidence": c}]}``) and ``OUTPUT/<image name>.png`` (words and their text drawn), and prints one JSON
summary line with images/s and the share of time in each stage. ``--submission`` also writes an end-to-end
submission (zip or folder; ``res_img_N.txt`` named by the number in each image name, ``x1,y1,...,y4,text`` lines
for ``icdar2015``, ``x1,y1,...,####text`` for ``curved``) that ``python -m clip_text_spot.evaluate e2e`` scores.
With ``--lexicon`` words are corrected (or dropped) by the lexicon first (``metrics.spotting.LexiconMatcher``).
An image that cannot be read is named on stderr, listed in the summary's ``skipped`` and left out; the exit status is
non-zero only when no image could be read, or with ``--strict`` (stops at the first unreadable image).

``--spotter=DIR`` instead of ``--detector`` / ``--recognizer`` runs a TESTR end-to-end spotter alone (a
``configs/testr.py`` workdir or checkpoint, or an official TESTR ``.safetensors`` with ``--testr_kwargs=JSON``;
``--threshold``, ``--test_size=SHORT,MAX``), with the same outputs (``clip_text_spot.models.testr.spotter``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _size(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 1024,1824), got {text!r}")
    return int(parts[0]), int(parts[1])


def build_parser() -> argparse.ArgumentParser:
    from clip_text_spot.metrics.spotting import LEXICON_KINDS, LEXICON_POLICIES
    from clip_text_spot.models.testr.spotter import add_spotter_arguments
    from clip_text_spot.rectify import LAYOUTS

    p = argparse.ArgumentParser(prog="python -m clip_text_spot.spot", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="images or folders of images")
    p.add_argument("--detector", help="FastTCM workdir or checkpoint")
    p.add_argument("--recognizer", help="DPTR fine-tuning workdir or checkpoint, or an official FILE.safetensors")
    add_spotter_arguments(p)
    p.add_argument("--best", action="store_true", help="use the best-eval checkpoints instead of the latest")
    p.add_argument("--output", default="spotting", help="folder for JSON and PNG results")
    p.add_argument("--batch_size", type=int, default=1, help="images per detector call")
    p.add_argument("--eval_size", type=_size, help="H,W box images are resized into (default: the detector's)")
    p.add_argument("--min_score", type=float, default=0.0, help="drop detections scoring below this")
    p.add_argument("--max_crops", type=int, default=64, help="most crops per recogniser call")
    p.add_argument("--supersample", type=int, default=2, help="rectification supersampling factor")
    p.add_argument("--layout", choices=LAYOUTS, default="contour", help="how non-quad polygons are read")
    p.add_argument("--pad", type=float, default=0.1, help="grow regions by this fraction of their height")
    p.add_argument("--refine", action="store_true", help="re-fit each detected quad to the word's ink before reading")
    p.add_argument("--submission", help="also write an end-to-end submission (.zip or folder)")
    p.add_argument("--submission_format", choices=("icdar2015", "curved"), default="icdar2015")
    p.add_argument("--lexicon", choices=LEXICON_KINDS, default="none", help="correct words with this lexicon")
    p.add_argument("--lexicon_dir", help="folder with the lexicon files under their AdelaiDet names")
    p.add_argument("--lexicon_words", help="lexicon word list (instead of --lexicon_dir)")
    p.add_argument("--lexicon_pairs", help="pair list for --lexicon_words ('UPPER original' lines)")
    p.add_argument("--lexicon_policy", choices=LEXICON_POLICIES, default="deepsolo")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.spotter and not (args.detector and args.recognizer):
        parser.error("give --spotter (TESTR) or both --detector and --recognizer")
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from clip_text_spot import logs, vis
    from clip_text_spot.cli import Skips
    from clip_text_spot.data.pipeline import decode_image
    from clip_text_spot.data.readers.common import list_images, read_input_image
    from clip_text_spot.metrics.spotting import LexiconMatcher, lexicon_provider
    from clip_text_spot.metrics.submission_io import sample_key, write_submission
    from clip_text_spot.spotter import STAGES, SpotOptions, Spotter, correct_words, draw_words

    logs.quiet_libraries()
    skips = Skips(args.strict)
    read = skips.read_all(list_images(args.inputs), lambda path: decode_image(read_input_image(path)), "image")
    paths, images = [path for path, _ in read], [image for _, image in read]
    keys = [sample_key(p) for p in paths]
    if args.submission:
        if None in keys:
            raise ValueError(f"{paths[keys.index(None)]}: no image number in the name, needed for --submission")
        first: dict[int, str] = {}
        for path, key in zip(paths, keys, strict=True):
            if key in first:
                raise ValueError(f"{first[key]} and {path} have the same image number {key} (res_img_{key}.txt)")
            first[key] = path
    matcher = lexicons = None
    if args.lexicon != "none":
        matcher = LexiconMatcher(args.lexicon, args.lexicon_policy)
        lexicons = lexicon_provider(args.lexicon, args.lexicon_dir, words_file=args.lexicon_words,
                                    pairs_file=args.lexicon_pairs, policy=args.lexicon_policy)  # fmt: skip
    options = SpotOptions(
        eval_size=args.eval_size, batch_size=args.batch_size, max_crops=args.max_crops,
        supersample=args.supersample, layout=args.layout, min_score=args.min_score, pad=args.pad,
        refine=args.refine,
    )  # fmt: skip
    if args.spotter:
        from clip_text_spot.models.testr import spotter as testr_spotter

        spotter, stages = testr_spotter.spotter_from_args(args), testr_spotter.STAGES
    else:
        spotter = Spotter.from_checkpoints(args.detector, args.recognizer, best=args.best, options=options)
        stages = STAGES
    start = time.perf_counter()
    results = spotter.spot(images)
    seconds = time.perf_counter() - start
    os.makedirs(args.output, exist_ok=True)
    submission, n_words = {}, 0
    for i, (path, image, words) in enumerate(zip(paths, images, results, strict=True)):
        if matcher is not None:
            words = correct_words(words, matcher, lexicons(i if keys[i] is None else keys[i]))
        n_words += len(words)
        name = os.path.splitext(os.path.basename(path))[0]
        record = {"image": path, "width": image.shape[1], "height": image.shape[0],
                  "words": [w.to_json() for w in words]}  # fmt: skip
        with open(os.path.join(args.output, f"{name}.json"), "w") as f:
            json.dump(record, f)
        vis.save_png(os.path.join(args.output, f"{name}.png"), draw_words(image, words))
        if keys[i] is not None:
            submission[keys[i]] = [(w.polygon, w.score, w.text) for w in words]
    if args.submission:
        write_submission(args.submission, submission, fmt=args.submission_format)
    total = sum(spotter.timings.values())
    summary = {
        "images": len(paths), "words": n_words, "seconds": round(seconds, 2),
        "images_per_s": round(len(paths) / max(seconds, 1e-9), 3),
        "stage_share": {k: round(spotter.timings[k] / total, 3) if total else 0.0 for k in stages},
        "output": args.output, "skipped": skips.skipped,
    }  # fmt: skip
    if args.submission:
        summary["submission"] = args.submission
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
