"""Total-Text detection ground truth: ``poly_gt_<image>.txt`` (legacy and refined text format) or ``.mat``.

Text records (eval_data.md §5) look like
``x: [[115 503 494 115]], y: [[322 346 426 404]], ornt: [u'm'], transcriptions: [u'nauGHTY']``; one record may be
wrapped over several lines (a record continues until the next line that starts with ``x:``). Numbers are
space-separated and may be negative. The quoted fields are Python string literals and are read with
``ast.literal_eval`` (never ``eval``); an empty transcription list reads as ``#`` and several strings are joined
with ``,`` (both as mmocr does).

MAT files hold key ``polygt`` (K x 6 cells: ``'x:'``, xs 1 x n, ``'y:'``, ys 1 x n, transcription, orientation);
files written by the annotation tool use key ``gt`` with n x 1 coordinate columns (``gt_<image>.mat``).

An instance is ignored when its transcription is ``#`` or its orientation is ``#`` (the two mark don't-care regions
in the official files).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

from clip_text_spot.data.readers.common import (
    DataFormatError,
    Instance,
    ReaderStats,
    Samples,
    check_choice,
    load_mat,
    paired_det_samples,
    parse_numbers,
    read_text_lines,
    require_dir,
)
from clip_text_spot.data.types import DetSample

GT_FORMATS = ("auto", "txt", "mat")
_RECORD = re.compile(
    r"x:\s*\[\[(?P<x>[^\[\]]*)\]\]\s*,\s*y:\s*\[\[(?P<y>[^\[\]]*)\]\]\s*,\s*"
    r"ornt:\s*\[(?P<ornt>[^\[\]]*)\]\s*,\s*transcriptions:\s*\[(?P<text>.*)\]\s*"
)
_MAT_KEYS = ("polygt", "gt")


def _tokens(numbers: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", numbers) if t]


def _string_list(content: str, path: Path, line: int, name: str) -> list[str]:
    try:
        values = ast.literal_eval(f"[{content}]")
    except (SyntaxError, ValueError):
        raise DataFormatError(path, f"{name}: not a list of string literals: [{content}]", line=line) from None
    if not all(isinstance(v, str) for v in values):
        raise DataFormatError(path, f"{name}: not a list of string literals: [{content}]", line=line)
    return values


def parse_totaltext_txt(path: str | Path) -> list[tuple[np.ndarray, str, str]]:
    """Parse a Total-Text text GT file into ``(polygon float32 [n, 2], transcription, orientation)`` tuples."""
    path = Path(path)
    records: list[tuple[int, str]] = []
    for number, text in read_text_lines(path):
        stripped = text.strip()
        if stripped.startswith("x:"):
            records.append((number, stripped))
        elif records:
            records[-1] = (records[-1][0], f"{records[-1][1]} {stripped}")
        else:
            raise DataFormatError(path, f"expected a record starting with 'x:', got {stripped!r}", line=number)
    out = []
    for number, record in records:
        match = _RECORD.fullmatch(record)
        if match is None:
            raise DataFormatError(
                path, f"expected 'x: [[..]], y: [[..]], ornt: [..], transcriptions: [..]', got {record!r}", line=number
            )
        xs = parse_numbers(_tokens(match["x"]), path, line=number)
        ys = parse_numbers(_tokens(match["y"]), path, line=number)
        if len(xs) != len(ys):
            raise DataFormatError(path, f"{len(xs)} x values but {len(ys)} y values", line=number)
        ornt = _string_list(match["ornt"], path, number, "ornt")
        texts = _string_list(match["text"], path, number, "transcriptions")
        out.append((np.stack([xs, ys], axis=1), ",".join(texts) if texts else "#", ornt[0] if ornt else ""))
    return out


def _mat_string(cell: np.ndarray) -> str:
    flat = np.asarray(cell).reshape(-1)
    return str(flat[0]) if flat.size else ""


def parse_totaltext_mat(path: str | Path) -> list[tuple[np.ndarray, str, str]]:
    """Parse a Total-Text ``.mat`` GT file (key ``polygt`` or ``gt``) like :func:`parse_totaltext_txt`."""
    path = Path(path)
    mat = load_mat(path)
    key = next((k for k in _MAT_KEYS if k in mat), None)
    if key is None:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataFormatError(path, f"no variable 'polygt' or 'gt' (found {found})")
    table = np.asarray(mat[key], dtype=object)
    if table.size == 0:
        return []
    if table.ndim != 2 or table.shape[1] != 6:
        raise DataFormatError(path, f"expected a K x 6 cell array, got shape {table.shape}", key=key)
    out = []
    for row_index, row in enumerate(table):
        where = f"{key}[{row_index}]"
        xs = np.asarray(row[1]).reshape(-1)
        ys = np.asarray(row[3]).reshape(-1)
        if _mat_string(row[0]) != "x:" or _mat_string(row[2]) != "y:" or len(xs) != len(ys):
            raise DataFormatError(path, "expected cells 'x:', xs, 'y:', ys (same length), text, orientation", key=where)
        try:
            polygon = np.stack([xs, ys], axis=1).astype(np.float32)
        except (TypeError, ValueError):
            raise DataFormatError(path, "coordinates are not numeric", key=where) from None
        out.append((polygon, _mat_string(row[4]), _mat_string(row[5])))
    return out


def read_totaltext(
    image_dir: str | Path,
    gt_dir: str | Path,
    *,
    strict: bool = True,
    image_check: str = "verify",
    gt_format: str = "auto",
    ignore_text: str = "#",
) -> Samples[DetSample]:
    """Total-Text detection samples from ``image_dir`` (``imgN.jpg``) and ``gt_dir`` (``poly_gt_imgN.{txt,mat}``).

    ``gt_format="auto"`` reads the ``.txt`` files when ``gt_dir`` has any, else the ``.mat`` files.
    """
    check_choice(gt_format, GT_FORMATS, "gt_format")
    if gt_format == "auto":
        has_txt = any(require_dir(gt_dir, "totaltext annotation").glob("*gt_*.txt"))
        gt_format = "txt" if has_txt else "mat"
    parser = parse_totaltext_txt if gt_format == "txt" else parse_totaltext_mat

    def parse(path: Path, stats: ReaderStats) -> list[Instance]:
        return [(poly, text, text == ignore_text or ornt == "#") for poly, text, ornt in parser(path)]

    pattern = rf"(?:poly_)?gt_(.+)\.{gt_format}"
    return paired_det_samples("totaltext", image_dir, gt_dir, pattern, parse, strict=strict, image_check=image_check)
