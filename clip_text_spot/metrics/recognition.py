"""Word-recognition metrics: word accuracy, 1 - NED and character precision / recall, under the label conventions
of PARSeq / CLIP4STR (primary), OpenOCR (DPTR's repo) and mmocr 1.x (``eval_data.md`` §3).

Conventions (``convention``):

``parseq`` (36 chars), ``parseq-cased`` (62), ``parseq-punct`` (94)
    Ground truth: all whitespace removed, NFKD-folded to ASCII, **skipped if longer than 25** (before filtering),
    then the charset adapter (lower-cased when the charset has no upper case) removes characters outside the
    charset, and the sample is **skipped if empty**. Prediction: the same adapter (no NFKD, no length rule).
    ``NED = lev(pred, gt) / max(len(pred), len(gt))``.
``openocr``
    ``RecMetric(is_filter=True)``: spaces removed, characters outside ``[0-9A-Za-z]`` dropped (no NFKD: accented
    letters disappear), lower-cased; no skipping. (OpenOCR divides by ``N + 1e-5``; we report ``correct / N``.)
``mmocr`` / ``mmocr-ignore-case`` / ``mmocr-exact``
    ``WordMetric`` modes ``ignore_case_symbol`` (lower-case, then keep ``A-Za-z0-9``, ``^`` and CJK
    U+4E00-U+9FA5 — the ``^`` inside mmocr's character class is literal), ``ignore_case`` and ``exact``; 1-NED
    and ``CharMetric`` (difflib matching blocks) on the ``ignore_case_symbol`` form as mmocr does.

Reported: ``word_accuracy = correct / N``; ``ned`` is PARSeq's "1 - NED" ``1 - mean(NED)`` (higher is better);
``mean_ned`` is ``mean(NED)``; ``char_precision`` / ``char_recall`` are mmocr's ``CharMetric``. A ground-truth
name without prediction counts as an empty prediction (``missing``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from clip_text_spot.metrics.submission_io import MalformedInputError, decode_text, iter_lines

CHARSETS = {
    "parseq": string.digits + string.ascii_lowercase,
    "parseq-cased": string.digits + string.ascii_lowercase + string.ascii_uppercase,
    "parseq-punct": string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation,
}
CONVENTIONS = (*CHARSETS, "openocr", "mmocr", "mmocr-ignore-case", "mmocr-exact")
_MMOCR_DROP = re.compile("[^A-Z^a-z^0-9^\u4e00-\u9fa5]")
_OPENOCR_KEEP = set(string.digits + string.ascii_letters)


def levenshtein_many(query: str, words: Sequence[str]) -> np.ndarray:
    """Unit-cost edit distances from ``query`` to each word (int array), vectorised over words of equal length."""
    out = np.empty(len(words), dtype=np.int64)
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(words):
        by_length.setdefault(len(w), []).append(i)
    for length, idx in by_length.items():
        codes = np.array([[ord(c) for c in words[i]] for i in idx], dtype=np.int64).reshape(len(idx), length)
        steps = np.arange(length + 1)
        prev = np.broadcast_to(steps, (len(idx), length + 1)).copy()
        for i, ch in enumerate(query, start=1):
            cur = np.empty_like(prev)
            cur[:, 0] = i
            cur[:, 1:] = np.minimum(prev[:, :-1] + (codes != ord(ch)), prev[:, 1:] + 1)
            # insertions chain left to right: cur[j] = min over k <= j of cur[k] + (j - k)
            prev = np.minimum.accumulate(cur - steps, axis=1) + steps
        out[idx] = prev[:, length]
    return out


def levenshtein(a: str, b: str) -> int:
    """Unit-cost edit distance (insert / delete / substitute)."""
    return int(levenshtein_many(a, [b])[0])


def normalized_edit_distance(pred: str, gt: str) -> float:
    """``lev / max(len)``; 0 for two empty strings."""
    longest = max(len(pred), len(gt))
    return levenshtein(pred, gt) / longest if longest else 0.0


def _charset_adapter(charset: str):
    lower_only, upper_only = charset == charset.lower(), charset == charset.upper()
    drop = re.compile(f"[^{re.escape(charset)}]")

    def adapt(label: str) -> str:
        if lower_only:
            label = label.lower()
        elif upper_only:
            label = label.upper()
        return drop.sub("", label)

    return adapt


@dataclasses.dataclass(frozen=True)
class LabelNormalizer:
    """Turns raw ground-truth / predicted strings into the compared forms for one convention."""

    convention: str = "parseq"
    max_label_length: int = 25

    def __post_init__(self):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {self.convention!r}; choose one of {CONVENTIONS}")

    def gt(self, label: str) -> tuple[str | None, str]:
        """(normalised label or None when the sample is skipped, reason: '' / 'long' / 'empty')."""
        if self.convention in CHARSETS:
            label = "".join(label.split())
            label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
            if len(label) > self.max_label_length:
                return None, "long"
            label = _charset_adapter(CHARSETS[self.convention])(label)
            return (label, "") if label else (None, "empty")
        return self.pred(label), ""

    def pred(self, label: str) -> str:
        """Normalised prediction."""
        if self.convention in CHARSETS:
            return _charset_adapter(CHARSETS[self.convention])(label)
        if self.convention == "openocr":
            return "".join(c for c in label.replace(" ", "") if c in _OPENOCR_KEEP).lower()
        if self.convention == "mmocr":
            return _MMOCR_DROP.sub("", label.lower())
        if self.convention == "mmocr-ignore-case":
            return label.lower()
        return label

    def ned_form(self, label: str) -> str:
        """The form NED and character metrics are computed on (mmocr always uses ``ignore_case_symbol``)."""
        return _MMOCR_DROP.sub("", label.lower()) if self.convention.startswith("mmocr") else label


@dataclasses.dataclass
class RecognitionResult:
    """Counts and rates of a recognition evaluation; ``per_sample`` holds (name, gt, pred, correct) tuples."""

    total: int
    correct: int
    sum_ned: float
    char_true: int
    char_pred: int
    char_gt: int
    skipped_long: int
    skipped_empty: int
    missing: int
    extra: int
    per_sample: list[tuple[str, str, str, bool]]

    def summary(self) -> dict:
        """JSON-ready summary."""
        n = self.total
        return {
            "word_accuracy": self.correct / n if n else 0.0,
            "ned": 1.0 - self.sum_ned / n if n else 0.0,
            "mean_ned": self.sum_ned / n if n else 0.0,
            "char_precision": self.char_true / self.char_pred if self.char_pred else 0.0,
            "char_recall": self.char_true / self.char_gt if self.char_gt else 0.0,
            "correct": self.correct,
            "total": n,
            "skipped_long": self.skipped_long,
            "skipped_empty": self.skipped_empty,
            "missing": self.missing,
            "extra": self.extra,
        }


def evaluate_recognition(
    gt: Mapping[str, str], pred: Mapping[str, str], *, normalizer: LabelNormalizer | None = None
) -> RecognitionResult:
    """Compare predictions with labels, both ``{sample_name: text}``; names only in ``pred`` are counted as extra."""
    norm = normalizer or LabelNormalizer()
    counts = dict(total=0, correct=0, char_true=0, char_pred=0, char_gt=0, skipped_long=0, skipped_empty=0, missing=0)
    sum_ned = 0.0
    per_sample = []
    for name, raw_gt in gt.items():
        label, reason = norm.gt(raw_gt)
        if label is None:
            counts[f"skipped_{reason}"] += 1
            continue
        raw_pred = pred.get(name)
        counts["missing"] += raw_pred is None
        guess = norm.pred(raw_pred or "")
        ok = guess == label
        a, b = norm.ned_form(guess), norm.ned_form(label)
        sum_ned += normalized_edit_distance(a, b)
        blocks = difflib.SequenceMatcher(None, a, b).get_matching_blocks()
        counts["char_true"] += sum(block.size for block in blocks)
        counts["char_pred"] += len(a)
        counts["char_gt"] += len(b)
        counts["total"] += 1
        counts["correct"] += ok
        per_sample.append((name, label, guess, ok))
    extra = len(set(pred) - set(gt))
    return RecognitionResult(sum_ned=sum_ned, extra=extra, per_sample=per_sample, **counts)


def _add(labels: dict[str, str], name: str, text: str, source: str, line: int | None) -> None:
    if name in labels:
        raise MalformedInputError(source, line, f"duplicate sample name {name!r}")
    labels[name] = text


def _read_lmdb(path: Path) -> dict[str, str]:
    from clip_text_spot.data.readers.lmdb_rec import open_lmdb

    labels: dict[str, str] = {}
    with open_lmdb(path).begin() as txn:
        raw = txn.get(b"num-samples")
        if raw is None:
            raise MalformedInputError(str(path), None, "LMDB has no 'num-samples' key")
        for i in range(1, int(raw) + 1):
            label = txn.get(f"label-{i:09d}".encode())
            if label is None:
                raise MalformedInputError(str(path), None, f"LMDB has no key label-{i:09d}")
            labels[f"image-{i:09d}"] = label.decode("utf-8")
    return labels


def _read_json(path: Path, text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedInputError(str(path), e.lineno, f"invalid JSON ({e.msg})") from e
    if isinstance(data, dict) and "data_list" in data:
        for i, entry in enumerate(data["data_list"]):
            try:
                _add(labels, str(entry["img_path"]), str(entry["instances"][0]["text"]), str(path), None)
            except (KeyError, IndexError, TypeError) as e:
                raise MalformedInputError(
                    f"{path}:data_list[{i}]", None, "expected img_path and instances[0].text"
                ) from e
        return labels
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return {str(k): v for k, v in data.items()}
    raise MalformedInputError(str(path), None, "expected an mmocr textrecog JSON (data_list) or a {name: text} object")


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """Read ``{sample_name: text}`` from a labels or predictions file.

    Accepted: a text file of ``name<TAB>text`` lines (chosen when the first non-empty line has a tab) or of
    ``name text`` lines (mmocr ``old_label.txt``; split at the first space, the text may contain spaces); a
    ``.jsonl`` file of ``{"filename" or "img_path": ..., "text": ...}`` objects (mmocr 0.x); a ``.json`` file in
    mmocr 1.x ``textrecog`` format or a ``{name: text}`` object; or an LMDB folder (``data.mdb``; names
    ``image-%09d``, 1-based as the keys). Text files: UTF-8 (BOM allowed), ``\\r`` stripped, empty lines skipped.
    A line without separator or a repeated name is an error naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "data.mdb").exists():
            raise MalformedInputError(str(path), None, "folder is not an LMDB (no data.mdb)")
        return _read_lmdb(path)
    if not path.is_file():
        raise MalformedInputError(str(path), None, "no such file")
    text = decode_text(path.read_bytes())
    if path.suffix.lower() == ".json":
        return _read_json(path, text)
    labels: dict[str, str] = {}
    lines = list(iter_lines(text))
    if path.suffix.lower() == ".jsonl":
        for number, line in lines:
            try:
                obj = json.loads(line)
                _add(labels, str(obj.get("filename", obj.get("img_path"))), str(obj["text"]), str(path), number)
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise MalformedInputError(str(path), number, "expected a JSON object with filename and text") from e
        return labels
    sep = "\t" if lines and "\t" in lines[0][1] else " "
    for number, line in lines:
        name, found, label = line.partition(sep)
        if not found or not name:
            shown = "<TAB>" if sep == "\t" else "space"
            raise MalformedInputError(str(path), number, f"expected 'name{shown}text', got {line[:80]!r}")
        _add(labels, name, label, str(path), number)
    return labels


def match_key(name: str, mode: str = "name") -> str:
    """Key used to pair labels and predictions: the full ``name``, its ``basename`` or its ``stem``."""
    if mode == "name":
        return name
    base = os.path.basename(name.replace("\\", "/"))
    if mode == "basename":
        return base
    if mode == "stem":
        return os.path.splitext(base)[0]
    raise ValueError(f"unknown match mode {mode!r}; choose name, basename or stem")


def rekey(labels: Mapping[str, str], mode: str, source: str) -> dict[str, str]:
    """``labels`` keyed by ``match_key(name, mode)``; two names with the same key are an error."""
    out: dict[str, str] = {}
    for name, text in labels.items():
        _add(out, match_key(name, mode), text, source, None)
    return out
