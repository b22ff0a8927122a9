"""ICDAR2015 (Challenge 4) and MLT17 detection ground truth: one ``gt_<image>.txt`` per image ``<image>.<ext>``.

Line grammar (eval_data.md §1.1, §5): ``x1,y1,x2,y2,x3,y3,x4,y4,transcription`` (ICDAR2015) or
``x1,...,y4,script,transcription`` (MLT17). The transcription is the rest of the line and may itself contain commas
(``$5,50``); ``###`` marks a don't-care region. Files are UTF-8, possibly with a BOM, usually with CRLF line ends.
Coordinates are integers in the official files; floats are accepted too (as mmocr does). The transcription is
returned exactly as stored (no quote stripping, no whitespace trimming).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np

from clip_text_spot.data.readers.common import (
    DataFormatError,
    Instance,
    ReaderStats,
    Samples,
    paired_det_samples,
    parse_numbers,
    read_text_lines,
)
from clip_text_spot.data.types import DetSample

# MLT17 scripts (rrc MLT17 task description) plus "Hindi", which MLT19 files use.
MLT_SCRIPTS = frozenset(
    {"Arabic", "Latin", "Chinese", "Japanese", "Korean", "Bangla", "Hindi", "Symbols", "Mixed", "None"}
)
GT_PATTERN = r"gt_(.+)\.txt"


def parse_icdar_gt(path: str | Path, *, with_script: bool = False) -> list[tuple[int, np.ndarray, str, str]]:
    """Parse one ICDAR-style GT file into ``(line, quad float32 [4, 2], script, transcription)`` tuples.

    ``script`` is ``""`` unless ``with_script`` (MLT17 layout). Raises :class:`DataFormatError` (file:line) for a
    line with too few fields, a non-numeric coordinate or, with ``with_script``, an unknown script name.
    """
    n_fields = 10 if with_script else 9
    rows = []
    for number, text in read_text_lines(path):
        parts = text.split(",", n_fields - 1)
        if len(parts) < n_fields:
            layout = "x1,y1,...,x4,y4,script,transcription" if with_script else "x1,y1,...,x4,y4,transcription"
            raise DataFormatError(path, f"expected {layout}, got {len(parts)} fields: {text!r}", line=number)
        quad = parse_numbers(parts[:8], path, line=number).reshape(4, 2)
        script = parts[8].strip() if with_script else ""
        if with_script and script not in MLT_SCRIPTS:
            expected = sorted(MLT_SCRIPTS)
            raise DataFormatError(path, f"unknown script {script!r}; expected one of {expected}", line=number)
        rows.append((number, quad, script, parts[-1]))
    return rows


def read_icdar2015(
    image_dir: str | Path,
    gt_dir: str | Path,
    *,
    strict: bool = True,
    image_check: str = "verify",
    ignore_text: str = "###",
) -> Samples[DetSample]:
    """ICDAR2015 detection samples from ``image_dir`` (``img_N.jpg``) and ``gt_dir`` (``gt_img_N.txt``).

    An instance is ignored when its transcription equals ``ignore_text`` exactly (the official rule).
    """

    def parse(path: Path, stats: ReaderStats) -> list[Instance]:
        return [(quad, text, text == ignore_text) for _, quad, _, text in parse_icdar_gt(path)]

    return paired_det_samples("icdar2015", image_dir, gt_dir, GT_PATTERN, parse, strict=strict, image_check=image_check)


def read_mlt17(
    image_dir: str | Path,
    gt_dir: str | Path,
    *,
    strict: bool = True,
    image_check: str = "verify",
    ignore_text: str = "###",
    ignore_scripts: Collection[str] = (),
) -> Samples[DetSample]:
    """MLT17 detection samples from ``image_dir`` (``img_N.{jpg,png,gif}``) and ``gt_dir`` (``gt_img_N.txt``).

    The script field is validated against :data:`MLT_SCRIPTS`; instances whose script is in ``ignore_scripts``
    (e.g. every non-Latin script for a Latin-only model) are kept as ignore regions, like ``###`` ones.
    Per-script instance counts are added to the reader stats as ``script/<name>``.
    """
    unknown = set(ignore_scripts) - MLT_SCRIPTS
    if unknown:
        raise ValueError(f"ignore_scripts: unknown scripts {sorted(unknown)}; expected some of {sorted(MLT_SCRIPTS)}")

    def parse(path: Path, stats: ReaderStats) -> list[Instance]:
        rows = parse_icdar_gt(path, with_script=True)
        for _, _, script, _ in rows:
            stats.add(f"script/{script}")
        return [(quad, text, text == ignore_text or script in ignore_scripts) for _, quad, script, text in rows]

    return paired_det_samples("mlt17", image_dir, gt_dir, GT_PATTERN, parse, strict=strict, image_check=image_check)
