"""Command-line evaluation of text detection (``det``), recognition (``rec``) and end-to-end spotting (``e2e``).

    python -m clip_text_spot.evaluate det --gt GT --pred PRED [--protocol icdar2015|curved]
    python -m clip_text_spot.evaluate rec --gt LABELS --pred PREDICTIONS
    python -m clip_text_spot.evaluate e2e --gt GT --pred PRED --lexicon none|generic|weak|strong|full \
        [--lexicon-dir DIR] [--mode e2e|wordspotting]

The last (only) line of stdout is one JSON object; a human-readable summary and progress go to stderr. Bad input
exits with status 2 and a message naming the file and line. A file of a ground-truth or prediction set that cannot
be assigned to an image (no image number in its name) is skipped: named on stderr and listed in the JSON's
``skipped`` (``clip_text_spot.cli.Skips``); it is an error with ``--strict``, or when every file of a set was
skipped. A malformed line is always an error, as in the official scripts (a partly read submission would score
silently lower). File formats: ``clip_text_spot.metrics.submission_io``
(det / e2e) and ``clip_text_spot.metrics.recognition.read_labels`` (rec).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clip_text_spot.cli import Skips
from clip_text_spot.metrics.detection import (
    STRATEGIES,
    SWEEPS,
    VARIANTS,
    DetProtocol,
    evaluate_detection,
    protocol_for,
)
from clip_text_spot.metrics.recognition import CONVENTIONS, LabelNormalizer, evaluate_recognition, read_labels, rekey
from clip_text_spot.metrics.spotting import (
    LEXICON_KINDS,
    LEXICON_POLICIES,
    LexiconMatcher,
    apply_lexicon,
    evaluate_spotting,
    lexicon_provider,
)
from clip_text_spot.metrics.submission_io import FORMATS, AnnotationSet, MalformedInputError, load_annotations
from clip_text_spot.metrics.totaltext import evaluate_totaltext


class Progress:
    """Prints ``label: done/total`` to stderr at most every ``interval`` seconds (nothing for fast runs)."""

    def __init__(self, label: str, interval: float = 2.0):
        self.label, self.interval = label, interval
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            print(f"{self.label}: {done}/{total}", file=sys.stderr, flush=True)
            self.last = now


def _detect_format(gt: str, pred: str) -> str:
    """``icdar2015`` when file names follow the RRC ``gt_img_N`` / ``res_img_N`` pattern, else ``curved``."""
    for path in (Path(gt), Path(pred)):
        if path.is_dir():
            names = [p.name for p in path.rglob("*.txt")]
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n.rsplit("/", 1)[-1] for n in zf.namelist()]
        else:
            continue
        if any(n.startswith(("gt_img_", "res_img_")) for n in names):
            return "icdar2015"
    return "curved"


def _load_pair(args: argparse.Namespace, *, with_text: bool) -> tuple[str, AnnotationSet, AnnotationSet, list[str]]:
    """Format, ground truth, predictions and the names of the files skipped in either (reported on stderr)."""
    fmt = args.protocol if args.protocol != "auto" else _detect_format(args.gt, args.pred)
    gt = load_annotations(args.gt, fmt=fmt, role="gt", with_text=with_text, strict=args.strict)
    pred = load_annotations(
        args.pred, fmt=fmt, role="det", with_text=with_text, strict=args.strict, coord_order=args.coord_order
    )
    skips = Skips(args.strict)
    for what, found in (("ground-truth", gt), ("prediction", pred)):
        for name in found.skipped_files:
            skips.skip(name, "no image number in the file name")
        if found.skipped_files:
            skips.require(len(found.items), f"{what} file")
    return fmt, gt, pred, skips.skipped


def _write_json(path: str | None, payload: object) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=1), encoding="utf-8")


def _run_det(args: argparse.Namespace) -> dict:
    fmt, gt, pred, skipped = _load_pair(args, with_text=False)
    if args.method != "rrc":
        tt_method = args.method.removeprefix("totaltext-")
        summary = evaluate_totaltext(gt.items, pred.items, method=tt_method, tr=args.tr, tp=args.tp, strict=args.strict)
        print(
            "det {} ({}): P {precision:.6f} R {recall:.6f} H {hmean:.6f}".format(fmt, args.method, **summary),
            file=sys.stderr,
        )
        return {"task": "det", "protocol": fmt, "method": args.method, **summary, "skipped": skipped}
    protocol = protocol_for(fmt, args.variant)
    result = evaluate_detection(
        gt.items,
        pred.items,
        protocol=protocol,
        strategy=args.strategy,
        score_thr=args.score_thr,
        sweep=None if args.sweep == "none" else args.sweep,
        strict=args.strict,
        tiou=args.tiou,
        progress=Progress("det images"),
    )
    _write_json(args.per_image, {str(k): v for k, v in result.per_image.items()})
    summary = result.summary()
    line = (
        "det {}: P {precision:.6f} R {recall:.6f} H {hmean:.6f} (matched {matched}, care gt/det {gt_care}/{det_care})"
    )
    print(line.format(fmt, **summary), file=sys.stderr)
    if "sweep" in summary:
        b = summary["sweep"]["best"]
        print(f"best of {args.sweep} sweep at score >= {b['score_thr']:.2f}: H {b['hmean']:.6f}", file=sys.stderr)
    return {
        "task": "det",
        "protocol": fmt,
        "method": "rrc",
        "variant": args.variant,
        "strategy": args.strategy,
        **summary,
        "skipped": skipped,
    }


def _run_rec(args: argparse.Namespace) -> dict:
    gt = rekey(read_labels(args.gt), args.match_by, args.gt)
    pred = rekey(read_labels(args.pred), args.match_by, args.pred)
    result = evaluate_recognition(gt, pred, normalizer=LabelNormalizer(args.convention, args.max_label_length))
    _write_json(
        args.per_sample, [dict(zip(("name", "gt", "pred", "correct"), s, strict=True)) for s in result.per_sample]
    )
    summary = result.summary()
    print(
        "rec {}: accuracy {word_accuracy:.6f}, 1-NED {ned:.6f} ({correct}/{total})".format(args.convention, **summary),
        file=sys.stderr,
    )
    return {"task": "rec", "convention": args.convention, **summary}


def _run_e2e(args: argparse.Namespace) -> dict:
    fmt, gt, pred, skipped = _load_pair(args, with_text=True)
    dets = pred.items
    if args.score_thr is not None:
        for det in dets.values():
            if len(det) and det.scores is None:
                raise MalformedInputError(det.source, None, "--score-thr given but this file has no scores")
        dets = {k: d if not len(d) else d.subset(d.scores >= args.score_thr) for k, d in dets.items()}
    dropped = 0
    if args.lexicon != "none":
        provider = lexicon_provider(
            args.lexicon,
            args.lexicon_dir,
            words_file=args.lexicon_file,
            pairs_file=args.pairs_file,
            policy=args.lexicon_policy,
        )
        matcher = LexiconMatcher(args.lexicon, args.lexicon_policy)
        dets, dropped = apply_lexicon(dets, matcher, provider, progress=Progress("lexicon images"))
    protocol = DetProtocol(geometry="gpc", int_coords=fmt == "icdar2015")
    result = evaluate_spotting(
        gt.items,
        dets,
        word_spotting=args.mode == "wordspotting",
        protocol=protocol,
        float_coords=args.float_coords,
        strict=args.strict,
    )
    _write_json(args.per_image, {str(k): v for k, v in result.per_image.items()})
    summary = result.summary()
    print(
        "e2e {} ({}, lexicon {}): P {precision:.6f} R {recall:.6f} H {hmean:.6f}; detection H {:.6f}".format(
            fmt, args.mode, args.lexicon, summary["detection"]["hmean"], **summary
        ),
        file=sys.stderr,
    )
    return {
        "task": "e2e",
        "protocol": fmt,
        "mode": args.mode,
        "lexicon": args.lexicon,
        "lexicon_policy": args.lexicon_policy if args.lexicon != "none" else None,
        **summary,
        "dropped_by_lexicon": dropped,
        "skipped": skipped,
    }


def _add_spatial_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", required=True, help="ground truth: zip or folder of .txt files (or mmocr textdet JSON)")
    p.add_argument("--pred", required=True, help="predictions: zip or folder of .txt files, matched by image number")
    p.add_argument(
        "--protocol",
        choices=("auto", *FORMATS),
        default="auto",
        help="file format and official rules: icdar2015 (8 int coords, gt_img_N/res_img_N) or curved "
        "(CTW1500 / Total-Text polygons); auto picks icdar2015 when file names are gt_img_N / res_img_N",
    )
    p.add_argument(
        "--coord-order",
        choices=("xy", "yx"),
        default="xy",
        help="coordinate order of prediction lines (Total-Text official detections are y,x)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="apply the official validation: integer / clockwise IC15 quads, valid non-ccw curved polygons, every "
        "prediction file must match an image of the ground truth, no unnamed .txt files",
    )
    p.add_argument("--per-image", metavar="FILE", help="also write per-image results (JSON) to FILE")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the three sub-commands."""
    parser = argparse.ArgumentParser(
        prog="python -m clip_text_spot.evaluate",
        description="Evaluate scene-text detection, recognition or end-to-end spotting. The last stdout line is JSON.",
    )
    sub = parser.add_subparsers(dest="task", required=True)

    det = sub.add_parser("det", help="detection hmean-IoU (ICDAR2015 / curved-text protocol, mmocr score sweep)")
    _add_spatial_options(det)
    det.add_argument(
        "--method",
        choices=("rrc", "totaltext-pascal", "totaltext-deteval"),
        default="rrc",
        help="rrc: ICDAR-style IoU > 0.5 one-to-one matching (what papers, DB, mmocr and TCM report); "
        "totaltext-pascal / totaltext-deteval: Total-Text's official scripts (official detection files are y,x: "
        "add --coord-order yx)",
    )
    det.add_argument("--tr", type=float, default=0.7, help="DetEval area-recall threshold (totaltext-deteval)")
    det.add_argument("--tp", type=float, default=0.6, help="DetEval area-precision threshold (totaltext-deteval)")
    det.add_argument(
        "--variant",
        choices=VARIANTS,
        default="official",
        help="geometry of the reference implementation: official RRC script (GPC semantics, IC15 int coords), "
        "mmocr0 (TCM/FastTCM, buffer(0) repair), mmocr1 (buffer(0)+convex hull, DC +1e-5), db (drop invalid)",
    )
    det.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="greedy",
        help="one-to-one matching: RRC greedy or maximum bipartite (mmocr 1.x max_matching)",
    )
    det.add_argument("--score-thr", type=float, help="keep detections with score >= this for the main numbers")
    det.add_argument("--tiou", action="store_true", help="also report TIoU precision/recall/hmean (Liu et al. 2019)")
    det.add_argument(
        "--sweep",
        choices=(*SWEEPS, "none"),
        default="mmocr0",
        help="score-threshold sweep reported beside the "
        "main numbers when every detection has a score: mmocr0 (TCM, 0.3..0.9) or mmocr1 (np.arange(0.3,0.9,0.1))",
    )

    rec = sub.add_parser("rec", help="word accuracy and 1-NED of word recognition")
    rec.add_argument(
        "--gt",
        required=True,
        help="labels: 'name<TAB>text' or 'name text' lines, .jsonl, mmocr .json or an LMDB folder",
    )
    rec.add_argument("--pred", required=True, help="predictions, same formats as --gt")
    rec.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default="parseq",
        help="label normalisation: parseq (36 chars, case-insensitive), parseq-cased (62), parseq-punct (94), "
        "openocr (DPTR's RecMetric), mmocr (ignore_case_symbol), mmocr-ignore-case, mmocr-exact",
    )
    rec.add_argument("--max-label-length", type=int, default=25, help="PARSeq conventions skip longer ground truth")
    rec.add_argument(
        "--match-by",
        choices=("name", "basename", "stem"),
        default="name",
        help="how ground-truth and prediction names are paired",
    )
    rec.add_argument("--per-sample", metavar="FILE", help="also write per-sample results (JSON) to FILE")

    e2e = sub.add_parser("e2e", help="end-to-end / word-spotting evaluation (RRC E2E script as in AdelaiDet)")
    _add_spatial_options(e2e)
    e2e.add_argument("--lexicon", choices=LEXICON_KINDS, default="none", help="lexicon used to correct predictions")
    e2e.add_argument(
        "--lexicon-dir",
        help="folder with AdelaiDet/TESTR lexicon files: GenericVocabulary_new.txt, ch4_test_vocabulary_new.txt, "
        "new_strong_lexicon/new_voc_img_N.txt, weak_voc_new.txt (+ their *_pair_list.txt / pair_voc_img_N.txt)",
    )
    e2e.add_argument(
        "--lexicon-file", help="lexicon word list overriding --lexicon-dir ('{}' = image number for strong)"
    )
    e2e.add_argument("--pairs-file", help="pair list for --lexicon-file ('UPPER original' lines)")
    e2e.add_argument(
        "--lexicon-policy",
        choices=LEXICON_POLICIES,
        default="deepsolo",
        help="deepsolo: keep a prediction only if "
        "its distance to the lexicon is < 1.5; testr: full lexicons always replace, IC15 ones drop at >= 2.5 "
        "(generic keeps all)",
    )
    e2e.add_argument(
        "--mode",
        choices=("e2e", "wordspotting"),
        default="e2e",
        help="wordspotting for Total-Text, e2e for CTW1500 / ICDAR2015",
    )
    e2e.add_argument("--score-thr", type=float, help="drop predictions with score below this (needs scores)")
    e2e.add_argument("--float-coords", action="store_true", help="keep float prediction coordinates (no int cast)")
    return parser


RUNNERS: dict[str, Callable[[argparse.Namespace], dict]] = {"det": _run_det, "rec": _run_rec, "e2e": _run_e2e}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        payload = RUNNERS[args.task](args)
    except (MalformedInputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(payload, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
