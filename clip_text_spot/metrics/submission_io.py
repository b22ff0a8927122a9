"""Reading and writing the official detection / spotting submission formats.

A ground-truth or submission set is a zip file or a folder of ``.txt`` files, one per image. Files are matched by
image number: the key of a file is the integer formed by the last run of digits before ``.txt`` in its base name
(``gt_img_17.txt``, ``res_img_17.txt``, ``17.txt``, ``0000017.txt``, ``poly_gt_img17.txt`` and ``img17.txt`` all
have key 17). Hidden files, ``__MACOSX`` entries, folders and files other than ``.txt`` / ``.mat`` are ignored; a
file without a number is an error (or a counted skip with ``strict=False``). Curved ground truth may also be the
official Total-Text ``poly_gt_imgN.mat`` files, and any ground truth an mmocr unified ``textdet`` JSON file
(``data_list[].img_path`` gives the key, ``instances[].polygon`` / ``ignore`` / ``text``).

Decoding follows ``rrc_evaluation_funcs``: UTF-8 with replacement, one leading BOM removed, lines split on ``\\n``
with every ``\\r`` removed (so CRLF files work), empty lines skipped. Line numbers in messages are 1-based.

Line grammars (``fmt``):

``icdar2015``
    ``x1,y1,x2,y2,x3,y3,x4,y4`` then, for ground truth, ``,transcription`` (the rest of the line, commas allowed;
    ``###`` = don't care). Coordinates are integers with optional spaces (``strict=True``: integers only, as the
    official regex; otherwise decimals are accepted too). A detection may add ``,score`` (a number) and/or
    ``,transcription``; with ``with_text=True`` (end-to-end) the rest of the line is the transcription, as the
    official E2E script reads it. ``"quoted"`` transcriptions are unquoted (``\\\\`` and ``\\"`` unescaped).
``curved``
    Any number (>= 3) of points ``x1,y1,...,xn,yn``. Either AdelaiDet style ``coords,####transcription`` (split on
    the first ``,####``; ``###`` after it = don't care) or TIoU/CTW1500 style where a trailing non-numeric field is
    the transcription (``CARE`` / ``###`` / a word). An odd number of trailing numeric fields means the last one is
    the score (detections) or a numeric transcription (ground truth). Total-Text's legacy text GT
    (``x: [[...]], y: [[...]], ornt: [u'c'], transcriptions: [u'WORD']``, records may wrap lines; ``#`` = don't
    care) is recognised automatically. ``coord_order='yx'`` reads detections written ``y1,x1,...`` (Total-Text's
    official detection format).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.io

from clip_text_spot.data.types import DetSample
from clip_text_spot.metrics.polygons import is_shapely_ccw, polygons_from_points, rrc_clockwise_sum

FORMATS = ("icdar2015", "curved")
DONT_CARE = "###"

_INT = r"-?[0-9]+"
_NUM = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_NUM_RE = re.compile(_NUM)
_KEY_RE = re.compile(r"([0-9]+)\.(?:txt|mat)$", re.IGNORECASE)
_QUOTED_RE = re.compile(r'^\s*"(.*)"\s*$')


class MalformedInputError(ValueError):
    """Bad input; the message names the file (zip member included) and the 1-based line when there is one."""

    def __init__(self, source: str, line: int | None, message: str):
        self.source, self.line = source, line
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass
class TextInstances:
    """The text instances of one image as read from a ground-truth or submission file.

    ``polygons`` are float64 ``[n_i, 2]`` (x, y); ``texts`` are '' where the format has none; ``scores`` is None
    unless every instance carries one; ``lines`` are the 1-based source lines (0 when not read from a file).
    """

    polygons: list[np.ndarray]
    texts: list[str]
    dont_care: np.ndarray
    scores: np.ndarray | None = None
    lines: list[int] = dataclasses.field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        self.dont_care = np.asarray(self.dont_care, bool).reshape(-1)
        if not self.lines:
            self.lines = [0] * len(self.polygons)
        n = len(self.polygons)
        if not (len(self.texts) == len(self.dont_care) == len(self.lines) == n) or (
            self.scores is not None and len(self.scores) != n
        ):
            raise ValueError(f"TextInstances {self.source!r}: inconsistent lengths")

    def __len__(self) -> int:
        return len(self.polygons)

    def subset(self, keep: np.ndarray) -> TextInstances:
        """The instances selected by a boolean mask."""
        idx = np.flatnonzero(np.asarray(keep, bool))
        return TextInstances(
            polygons=[self.polygons[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            dont_care=self.dont_care[idx],
            scores=None if self.scores is None else self.scores[idx],
            lines=[self.lines[i] for i in idx],
            source=self.source,
        )

    @classmethod
    def from_det_sample(cls, sample: DetSample) -> TextInstances:
        """Ground truth from a dataset record (its ``ignore`` flags are the don't-cares)."""
        polygons = [np.asarray(p, np.float64).reshape(-1, 2) for p in sample.polygons]
        return cls(polygons, list(sample.texts), np.asarray(sample.ignore, bool), source=sample.name)

    @classmethod
    def from_predictions(cls, predictions: Sequence[tuple], source: str = "") -> TextInstances:
        """Detections from ``(polygon, score)`` or ``(polygon, score, text)`` tuples (``db_postprocess`` output)."""
        polygons = [np.asarray(p[0], np.float64).reshape(-1, 2) for p in predictions]
        texts = [str(p[2]) if len(p) > 2 else "" for p in predictions]
        scores = np.array([float(p[1]) for p in predictions], np.float64)
        return cls(polygons, texts, np.zeros(len(polygons), bool), scores, source=source)


@dataclasses.dataclass
class AnnotationSet:
    """Per-image instances keyed by image number, plus the files skipped with ``strict=False``."""

    items: dict[int, TextInstances]
    skipped_files: list[str] = dataclasses.field(default_factory=list)


def image_key(name: str) -> int | None:
    """The image number of a ``.txt`` / ``.mat`` file name (last digit run before the suffix), or None."""
    m = _KEY_RE.search(os.path.basename(name))
    return int(m.group(1)) if m else None


def sample_key(name: str) -> int | None:
    """The image number of an image path or sample name (``imgs/img_12.jpg``, ``img_12``): the last digit run of
    the base name without extension, or None."""
    digits = re.findall(r"[0-9]+", os.path.splitext(os.path.basename(name))[0])
    return int(digits[-1]) if digits else None


def decode_text(raw: bytes) -> str:
    """UTF-8 with replacement and one leading BOM removed, as ``rrc_evaluation_funcs.decode_utf8``."""
    text = raw.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def iter_lines(text: str) -> Iterable[tuple[int, str]]:
    """Non-empty lines with their 1-based numbers; a leading BOM dropped, split on ``\\n``, every ``\\r`` removed."""
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.replace("\r", "")
        if line:
            yield number, line


def _ignored_member(name: str) -> bool:
    base = os.path.basename(name)
    return not base or base.startswith(".") or "__MACOSX" in name or not base.lower().endswith((".txt", ".mat"))


def read_files(path: str | os.PathLike, *, strict: bool = True) -> tuple[dict[int, tuple[str, bytes]], list[str]]:
    """Read a zip or a folder of ``.txt`` (and ``.mat``) files into ``{key: (source_name, raw bytes)}`` and the
    names of the files skipped with ``strict=False``."""
    path = Path(path)
    if not path.exists():
        raise MalformedInputError(str(path), None, "no such file or folder")
    entries: list[tuple[str, bytes]] = []
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file() and not _ignored_member(str(f.relative_to(path))):
                entries.append((str(f), f.read_bytes()))
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir() and not _ignored_member(info.filename):
                    entries.append((f"{path}:{info.filename}", zf.read(info)))
    else:
        raise MalformedInputError(str(path), None, "expected a zip file or a folder of .txt files")
    files: dict[int, tuple[str, bytes]] = {}
    skipped: list[str] = []
    for name, raw in entries:
        key = image_key(name)
        if key is None:
            if strict:
                raise MalformedInputError(name, None, "file name has no image number before its suffix")
            skipped.append(name)
            continue
        if key in files:
            raise MalformedInputError(name, None, f"image number {key} also used by {files[key][0]}")
        files[key] = (name, raw)
    return files, skipped


def _unquote(text: str) -> str:
    m = _QUOTED_RE.match(text)
    return m.group(1).replace("\\\\", "\\").replace('\\"', '"') if m else text


def _is_number(field: str) -> bool:
    return _NUM_RE.fullmatch(field.strip()) is not None


def _points(values: Sequence[str], source: str, line: int, coord_order: str = "xy") -> np.ndarray:
    pts = np.array([float(v) for v in values], dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        raise MalformedInputError(source, line, f"a polygon needs at least 3 points, got {len(values)} coordinates")
    return pts[:, ::-1].copy() if coord_order == "yx" else pts


class _Builder:
    """Accumulates parsed lines of one file into a TextInstances."""

    def __init__(self, source: str):
        self.source = source
        self.polygons: list[np.ndarray] = []
        self.texts: list[str] = []
        self.dont_care: list[bool] = []
        self.scores: list[float | None] = []
        self.lines: list[int] = []

    def add(self, line: int, points: np.ndarray, text: str, score: float | None, dont_care: bool) -> None:
        self.polygons.append(points)
        self.texts.append(text)
        self.dont_care.append(dont_care)
        self.scores.append(score)
        self.lines.append(line)

    def build(self) -> TextInstances:
        have = [s is not None for s in self.scores]
        if any(have) and not all(have):
            first = self.lines[have.index(False)]
            raise MalformedInputError(self.source, first, "some detections in this file have a score and this one not")
        scores = np.array(self.scores, np.float64) if self.scores and all(have) else None
        return TextInstances(self.polygons, self.texts, np.array(self.dont_care, bool), scores, self.lines, self.source)


def parse_icdar2015(
    text: str, source: str, *, role: str, with_text: bool = False, strict: bool = False
) -> TextInstances:
    """Parse one ICDAR2015 file (``role`` 'gt' or 'det'; grammar in the module docstring).

    With ``strict`` the official validation applies: integer coordinates only, and quads whose official
    orientation sum is positive ("Points are not clockwise") are errors.
    """
    num = _INT if strict else _NUM
    coords = r"\s*,\s*".join([rf"({num})"] * 8)
    gt_re = re.compile(rf"^\s*{coords}\s*,(.*)$" if strict else rf"^\s*{coords}\s*(?:,(.*))?$")
    det_re = re.compile(rf"^\s*{coords}\s*(?:,(.*))?$")
    score_re = re.compile(rf"^\s*({_NUM})\s*(?:,(.*))?$")
    out = _Builder(source)
    for number, line in iter_lines(text):
        m = (gt_re if role == "gt" else det_re).match(line)
        if m is None:
            expected = "x1,y1,x2,y2,x3,y3,x4,y4" + (",transcription" if role == "gt" else "[,score][,transcription]")
            kind = "integer " if strict else ""
            raise MalformedInputError(source, number, f"expected {kind}{expected}, got {line[:80]!r}")
        pts = _points(m.groups()[:8], source, number)
        if strict and rrc_clockwise_sum(pts) > 0:
            raise MalformedInputError(source, number, "points are not clockwise (image coordinates, y down)")
        rest = m.group(9)
        transcription, score = "", None
        if rest is not None:
            sm = None if (role == "gt" or with_text) else score_re.match(rest)
            if sm is not None:
                score = float(sm.group(1))
                transcription = _unquote(sm.group(2)) if sm.group(2) is not None else ""
            else:
                transcription = _unquote(rest)
        out.add(number, pts, transcription, score, transcription == DONT_CARE)
    return out.build()


_TT_FIELD_RE = {
    "x": re.compile(r"x:\s*\[\[([^\]]*)\]\]"),
    "y": re.compile(r"y:\s*\[\[([^\]]*)\]\]"),
    "ornt": re.compile(r"ornt:\s*\[u?'([^']*)'\]"),
    "text": re.compile(r"transcriptions:\s*\[u?(['\"])(.*)\1\]"),
}


def _parse_totaltext_legacy(text: str, source: str) -> TextInstances:
    records: list[tuple[int, str]] = []
    for number, line in iter_lines(text):
        if line.lstrip().startswith("x:") or not records:
            records.append((number, line))
        else:
            records[-1] = (records[-1][0], records[-1][1] + " " + line)
    out = _Builder(source)
    for number, rec in records:
        fields = {k: r.search(rec) for k, r in _TT_FIELD_RE.items()}
        if fields["x"] is None or fields["y"] is None or fields["text"] is None:
            raise MalformedInputError(
                source, number, "expected x: [[...]], y: [[...]], ornt: [...], transcriptions: [...]"
            )
        xs, ys = fields["x"].group(1).split(), fields["y"].group(1).split()
        if len(xs) != len(ys) or not all(_is_number(v) for v in xs + ys):
            raise MalformedInputError(source, number, "x and y lists must be numbers of equal length")
        pts = _points([v for xy in zip(xs, ys, strict=True) for v in xy], source, number)
        transcription = fields["text"].group(2)
        ornt = fields["ornt"].group(1) if fields["ornt"] else ""
        out.add(number, pts, transcription, None, ornt == "#" or transcription in ("#", DONT_CARE))
    return out.build()


def parse_totaltext_mat(raw: bytes, source: str) -> TextInstances:
    """Parse an official Total-Text ``poly_gt_imgN.mat`` (key ``polygt``, or ``gt`` in annotation-tool files): rows
    ``['x:', xs, 'y:', ys, transcription, orientation]``; orientation or transcription ``#`` = don't care."""
    try:
        mat = scipy.io.loadmat(io.BytesIO(raw))
    except (ValueError, TypeError, OSError) as e:
        raise MalformedInputError(source, None, f"not a MATLAB .mat file ({e})") from e
    rows = mat.get("polygt", mat.get("gt"))
    if rows is None or rows.ndim != 2 or rows.shape[1] < 6:
        raise MalformedInputError(source, None, "expected a K x 6 'polygt' (or 'gt') cell array")
    out = _Builder(source)
    for k, row in enumerate(rows, start=1):
        xs, ys = np.asarray(row[1], np.float64).reshape(-1), np.asarray(row[3], np.float64).reshape(-1)
        if len(xs) != len(ys):
            raise MalformedInputError(source, None, f"row {k}: {len(xs)} x values but {len(ys)} y values")
        text = str(row[4].reshape(-1)[0]) if np.size(row[4]) else ""
        ornt = str(row[5].reshape(-1)[0]) if np.size(row[5]) else ""
        pts = _points([v for xy in zip(xs, ys, strict=True) for v in xy], f"{source} row {k}", 0)
        out.add(0, pts, text, None, ornt == "#" or text in ("#", DONT_CARE))
    return out.build()


def parse_curved(
    text: str, source: str, *, role: str, with_text: bool = False, strict: bool = False, coord_order: str = "xy"
) -> TextInstances:
    """Parse one curved-text file (CTW1500 / Total-Text / AdelaiDet style; grammar in the module docstring).

    With ``strict`` the curved RRC validation applies: polygons must be valid and not counter-clockwise in shapely's
    sense on raw image coordinates.
    """
    del with_text  # the transcription, when present, is always read
    if any(line.lstrip().startswith("x:") for _, line in iter_lines(text)):
        return _parse_totaltext_legacy(text, source)
    out = _Builder(source)
    for number, line in iter_lines(text):
        head, sep, tail = line.partition(",####")
        fields = head.split(",")
        n_num = 0
        while n_num < len(fields) and _is_number(fields[n_num]):
            n_num += 1
        score = None
        if sep:
            if n_num != len(fields):
                raise MalformedInputError(source, number, f"non-numeric coordinate before ',####': {line[:80]!r}")
            if n_num % 2:
                if role == "gt":
                    raise MalformedInputError(source, number, "odd number of coordinates before ',####'")
                score, n_num = float(fields[-1]), n_num - 1
            transcription = _unquote(tail.strip())
        elif n_num == len(fields):
            if n_num % 2:
                n_num -= 1
                last = fields[-1].strip()
                score, transcription = (float(last), "") if role == "det" else (None, last)
            else:
                transcription = ""
        else:
            n_num -= n_num % 2
            transcription = _unquote(",".join(fields[n_num:]).strip())
        pts = _points(fields[:n_num], source, number, coord_order if role == "det" else "xy")
        if strict:
            _check_curved_polygon(pts, source, number)
        out.add(number, pts, transcription, score, transcription == DONT_CARE)
    return out.build()


def _check_curved_polygon(points: np.ndarray, source: str, line: int) -> None:
    if not polygons_from_points([points])[0].is_valid:
        raise MalformedInputError(source, line, "polygon is not valid (self-intersecting or degenerate)")
    if is_shapely_ccw(points):
        raise MalformedInputError(source, line, "points are counter-clockwise in shapely's sense; reverse them")


def _load_mmocr_json(path: Path) -> AnnotationSet:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["data_list"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MalformedInputError(str(path), None, f"not an mmocr textdet JSON file ({e})") from e
    items: dict[int, TextInstances] = {}
    for i, entry in enumerate(entries):
        where = f"{path}:data_list[{i}]"
        key = sample_key(str(entry.get("img_path", "")))
        if key is None:
            raise MalformedInputError(where, None, f"img_path {entry.get('img_path')!r} has no image number")
        out = _Builder(where)
        for j, inst in enumerate(entry.get("instances", [])):
            poly = inst.get("polygon")
            if poly is None or len(poly) < 6 or len(poly) % 2:
                raise MalformedInputError(
                    f"{where}.instances[{j}]", None, "polygon needs an even count >= 6 of numbers"
                )
            text = str(inst.get("text", ""))
            out.add(0, np.asarray(poly, np.float64).reshape(-1, 2), text, None, bool(inst.get("ignore", False)))
        items[key] = out.build()
    return AnnotationSet(items)


def load_annotations(
    path: str | os.PathLike,
    *,
    fmt: str,
    role: str,
    with_text: bool = False,
    strict: bool = False,
    coord_order: str = "xy",
) -> AnnotationSet:
    """Read a ground-truth (``role='gt'``) or submission (``role='det'``) set in format ``fmt`` (see module doc)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        if role != "gt":
            raise MalformedInputError(str(path), None, "JSON input is only accepted for ground truth")
        return _load_mmocr_json(path)
    files, skipped = read_files(path, strict=strict)
    items = {}
    for key, (name, raw) in files.items():
        if name.lower().endswith(".mat"):
            if role != "gt" or fmt != "curved":
                raise MalformedInputError(name, None, ".mat files are only read as curved (Total-Text) ground truth")
            items[key] = parse_totaltext_mat(raw, name)
            continue
        text = decode_text(raw)
        if fmt == "icdar2015":
            items[key] = parse_icdar2015(text, name, role=role, with_text=with_text, strict=strict)
        else:
            items[key] = parse_curved(
                text, name, role=role, with_text=with_text, strict=strict, coord_order=coord_order
            )
    return AnnotationSet(items, skipped)


def _clockwise_int_quad(polygon: np.ndarray) -> np.ndarray:
    quad = np.rint(np.asarray(polygon, np.float64).reshape(-1, 2)).astype(np.int64)
    if len(quad) != 4:
        raise ValueError(f"an ICDAR2015 submission needs quads, got a polygon with {len(quad)} points")
    return quad[::-1] if rrc_clockwise_sum(quad) > 0 else quad


def _curved_points(polygon: np.ndarray, decimals: int | None) -> np.ndarray:
    pts = np.asarray(polygon, np.float64).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(pts)}")
    pts = pts[::-1] if is_shapely_ccw(pts) else pts
    return np.rint(pts).astype(np.int64) if decimals is None else np.round(pts, decimals)


def format_submission_file(
    instances: Sequence[tuple], *, fmt: str = "icdar2015", with_scores: bool = False, decimals: int | None = None
) -> str:
    """Text of one submission file from ``(polygon, score)`` or ``(polygon, score, transcription)`` tuples.

    ``icdar2015``: int-rounded quads re-ordered to be clockwise for the official check, ``x1,...,y4[,score][,text]``.
    ``curved``: points reversed when shapely-ccw (the curved scripts reject those), rounded to ints unless
    ``decimals`` is given, ``x1,y1,...,xn,yn[,score][,####text]``.
    """
    lines = []
    for inst in instances:
        polygon, score = inst[0], inst[1]
        text = inst[2] if len(inst) > 2 else None
        pts = _clockwise_int_quad(polygon) if fmt == "icdar2015" else _curved_points(polygon, decimals)
        parts = [str(v) for v in pts.reshape(-1).tolist()]
        if with_scores:
            parts.append(f"{float(score):.6f}")
        line = ",".join(parts)
        if text is not None:
            line += ("," if fmt == "icdar2015" else ",####") + text
        lines.append(line)
    return "".join(line + "\n" for line in lines)


def write_submission(
    path: str | os.PathLike,
    predictions: Mapping[int, Sequence[tuple]],
    *,
    fmt: str = "icdar2015",
    name_pattern: str | None = None,
    with_scores: bool = False,
    decimals: int | None = None,
) -> Path:
    """Write per-image predictions ``{image_number: [(polygon, score[, text]), ...]}`` as a submission.

    ``path`` ending in ``.zip`` gives a zip file, anything else a folder. File names follow ``name_pattern``
    (default ``res_img_{}.txt`` for icdar2015, ``{}.txt`` for curved; e.g. ``img{}.txt`` for Total-Text).
    Every image is written, an empty file when it has no predictions.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    pattern = name_pattern or ("res_img_{}.txt" if fmt == "icdar2015" else "{}.txt")
    files = {
        pattern.format(key): format_submission_file(insts, fmt=fmt, with_scores=with_scores, decimals=decimals)
        for key, insts in sorted(predictions.items())
    }
    path = Path(path)
    if path.suffix.lower() == ".zip":
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, text in files.items():
                zf.writestr(name, text)
    else:
        path.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (path / name).write_text(text, encoding="utf-8")
    return path
