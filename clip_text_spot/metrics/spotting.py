"""End-to-end text spotting evaluation: the RRC E2E / word-spotting script as used by AdelaiDet, TESTR, DeepSolo and
TCM's spotter (``text_eval_script*.py``, ``eval_data.md`` §2), plus lexicon post-processing.

Per image: ground truth ``###`` is don't-care. In word-spotting mode (Total-Text) a care ground truth whose word
does not pass the dictionary rule (after dropping a final ``'s``, stripping ``-`` and turning ``'!?.:,*"()·[]/``
into spaces: no inner space, length >= 3, only Latin / Greek letters and ``-``; digits make it don't-care) becomes
don't-care for the end-to-end score, otherwise its transcription is replaced by the cleaned word. A detection is
don't-care if its area precision against one don't-care ground truth is > 0.5. Greedy one-to-one IoU > 0.5
matching (ground-truth-major, index order) pairs instances **regardless of text**; a pair is correct when the
transcriptions agree: word spotting — equal after upper-casing; end-to-end — equal after upper-casing, where the
ground truth may also lose one special first and/or last character (``transcription_match``). A misread matched
detection is a false positive and its ground truth a miss; nothing is re-matched. A separate detection-only
matching uses only the ``###`` don't-cares. Both are micro-averaged as in detection.

Coordinates of detections are ``int()``-cast and invalid detection polygons dropped (counted) before evaluation,
as the AdelaiDet evaluator does when it writes the submission (``float_coords=True`` keeps floats, as DeepSolo
does for CTW1500). Ground truth geometry follows the format (icdar2015 int-cast, curved float) with ``gpc``
semantics (``polygons`` module).

Lexicons (``LexiconMatcher``): the recognised word and each lexicon word are upper-cased and compared by edit
distance; the first strict minimum in lexicon order wins and is mapped through the pair list to its original form.
Policy ``deepsolo`` (AdelaiDet ``text_evaluation_all.py``, used by TCM's ABCNet spotter): keep the detection with
the matched word only if the distance is < 1.5, else drop it. Policy ``testr`` (TESTR ``lexicon_procesor.py``,
unweighted): ``full`` lexicons always replace; IC15 lexicons replace when the distance is < 2.5 or the lexicon is
``generic``, else drop. TESTR's probability-weighted distance needs per-character scores and is not available here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from clip_text_spot.metrics.detection import (
    Counts,
    DetProtocol,
    check_keys,
    image_geometry,
    match_pairs,
    per_sample_prf,
)
from clip_text_spot.metrics.polygons import polygons_from_points
from clip_text_spot.metrics.recognition import levenshtein_many
from clip_text_spot.metrics.submission_io import DONT_CARE, MalformedInputError, TextInstances

SPECIAL_CHARACTERS = "!?.:,*\"()·[]/'"
LEXICON_KINDS = ("none", "generic", "weak", "strong", "full")
LEXICON_POLICIES = ("deepsolo", "testr")
_NOT_ALLOWED = "×÷·"
_LETTER_RANGES = ((ord("a"), ord("z")), (ord("A"), ord("Z")), (0xC0, 0x1BF), (0x1C4, 0x27F), (0x386, 0x3FF))


def clean_wordspotting_word(text: str) -> str:
    """Word-spotting clean-up of a ground-truth word: final ``'s`` / ``'S`` dropped, ``-`` stripped at both ends,
    special characters turned into spaces, outer spaces stripped."""
    if text[-2:] in ("'s", "'S"):
        text = text[:-2]
    text = text.strip("-")
    for ch in SPECIAL_CHARACTERS:
        text = text.replace(ch, " ")
    return text.strip()


def in_wordspotting_dictionary(text: str, min_length: int = 3) -> bool:
    """Whether a ground-truth word is cared for in word-spotting mode (module docstring)."""
    word = clean_wordspotting_word(text)
    if " " in word or len(word) < min_length:
        return False
    for ch in word:
        code = ord(ch)
        if ch in _NOT_ALLOWED:
            return False
        if not (ch == "-" or any(lo <= code <= hi for lo, hi in _LETTER_RANGES)):
            return False
    return True


def transcription_match(gt: str, det: str, special: str = SPECIAL_CHARACTERS) -> bool:
    """End-to-end correctness: equal, or equal after removing one special first and/or last character of the
    ground truth (only the ground-truth side is trimmed). An empty ground truth never matches."""
    if not gt:
        return False
    if gt == det:
        return True
    first, last = gt[0] in special, gt[-1] in special
    return (first and gt[1:] == det) or (last and gt[:-1] == det) or (first and last and gt[1:-1] == det)


_BUCKETS = 64


@dataclasses.dataclass
class Lexicon:
    """Lexicon words in file order and the map from an upper-cased word to its original form."""

    words: list[str]
    pairs: dict[str, str]

    def __post_init__(self):
        self._upper = [w.upper() for w in self.words]
        self._lengths = np.array([len(w) for w in self._upper], np.int64)
        codes = np.array([ord(c) % _BUCKETS for w in self._upper for c in w], np.int64)
        rows = np.repeat(np.arange(len(self._upper)), self._lengths)
        self._hist = np.zeros((_BUCKETS, len(self._upper)), np.int16)  # character histograms, one column per word
        np.add.at(self._hist, (codes, rows), 1)

    def _lower_bounds(self, query: str) -> np.ndarray:
        """A lower bound of the edit distance to every word: the length difference, and half the L1 distance of
        the (bucketed) character histograms, since one edit changes that histogram by at most 2."""
        overlap = np.zeros(len(self._upper), np.int64)
        for bucket, count in zip(*np.unique([ord(c) % _BUCKETS for c in query], return_counts=True), strict=True):
            overlap += np.minimum(self._hist[bucket], count)
        l1 = self._lengths + len(query) - 2 * overlap
        return np.maximum(np.abs(self._lengths - len(query)), (l1 + 1) // 2)

    def best(self, text: str) -> tuple[str, int]:
        """(original form of the closest word, distance), first strict minimum in lexicon order; ('', 100) if empty.

        Exact distances are computed only for words whose lower bound does not exceed the best distance so far,
        in increasing bound order, so a 90k-word lexicon stays cheap.
        """
        query = text.upper()
        bounds = self._lower_bounds(query)
        best_dist, best_index = 100, -1
        for bound in np.unique(bounds):
            if bound > best_dist:
                break
            idx = np.flatnonzero(bounds == bound)
            dist = levenshtein_many(query, [self._upper[i] for i in idx])
            d = int(dist.min())
            first = int(idx[np.flatnonzero(dist == d)[0]])
            if d < best_dist or (d == best_dist and first < best_index):
                best_dist, best_index = d, first
        if best_index < 0:
            return "", 100
        word = self._upper[best_index]
        return self.pairs.get(word, self.words[best_index]), best_dist


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise MalformedInputError(str(path), None, "lexicon file not found")
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def load_lexicon(words_file: str | Path, pairs_file: str | Path | None = None, *, pair_split: str = "first") -> Lexicon:
    """Read a lexicon (one word per line) and its optional pair list (``UPPER original`` per line).

    ``pair_split='first'`` (AdelaiDet / DeepSolo): the key is the first space-separated token; ``'half'`` (TESTR
    for Total-Text / CTW1500, keys may contain spaces): the first half of the tokens. The value is the rest of the
    line after the key and one space. Without a pair list a word maps to itself.
    """
    words = _read_lines(Path(words_file))
    pairs: dict[str, str] = {}
    if pairs_file is not None:
        for line in _read_lines(Path(pairs_file)):
            tokens = line.split(" ")
            key = " ".join(tokens[: len(tokens) // 2]) if pair_split == "half" else tokens[0]
            key = key.upper()
            pairs[key] = line[len(key) + 1 :]
    return Lexicon(words, pairs)


LEXICON_FILES = {
    "generic": ("GenericVocabulary_new.txt", "GenericVocabulary_pair_list.txt"),
    "weak": ("ch4_test_vocabulary_new.txt", "ch4_test_vocabulary_pair_list.txt"),
    "strong": ("new_strong_lexicon/new_voc_img_{}.txt", "new_strong_lexicon/pair_voc_img_{}.txt"),
    "full": ("weak_voc_new.txt", "weak_voc_pair_list.txt"),
}


def lexicon_provider(
    kind: str,
    lexicon_dir: str | Path | None = None,
    *,
    words_file: str | Path | None = None,
    pairs_file: str | Path | None = None,
    policy: str = "deepsolo",
) -> Callable[[int], Lexicon]:
    """A function image number -> Lexicon for a lexicon kind, with the AdelaiDet/TESTR file names in
    ``lexicon_dir`` (``LEXICON_FILES``; ``strong`` is per image) unless ``words_file`` (and ``pairs_file``) are
    given. A missing pair list means identity pairs; a missing word list is an error."""
    if kind not in LEXICON_KINDS[1:]:
        raise ValueError(f"lexicon kind {kind!r} has no files; choose one of {LEXICON_KINDS[1:]}")
    split = "half" if (policy == "testr" and kind == "full") else "first"
    if words_file is None:
        if lexicon_dir is None:
            raise ValueError(f"lexicon {kind!r} needs a lexicon folder or a words file")
        words_name, pairs_name = LEXICON_FILES[kind]
        words_file, pairs_file = Path(lexicon_dir) / words_name, Path(lexicon_dir) / pairs_name
    cache: dict[int, Lexicon] = {}

    def get(key: int) -> Lexicon:
        k = key if kind == "strong" else -1
        if k not in cache:
            wf, pf = Path(str(words_file).format(key)), Path(str(pairs_file).format(key)) if pairs_file else None
            cache[k] = load_lexicon(wf, pf if pf is not None and pf.is_file() else None, pair_split=split)
        return cache[k]

    return get


@dataclasses.dataclass(frozen=True)
class LexiconMatcher:
    """Replace or drop recognised words with a lexicon (policies in the module docstring)."""

    kind: str
    policy: str = "deepsolo"

    def __post_init__(self):
        if self.policy not in LEXICON_POLICIES:
            raise ValueError(f"unknown lexicon policy {self.policy!r}; choose one of {LEXICON_POLICIES}")

    def __call__(self, text: str, lexicon: Lexicon) -> str | None:
        """The corrected word, or None when the detection is dropped."""
        word, dist = lexicon.best(text)
        if self.policy == "deepsolo":
            return word if dist < 1.5 else None
        if self.kind == "full" or self.kind == "generic" or dist < 2.5:
            return word
        return None


def apply_lexicon(
    dets: Mapping[int, TextInstances],
    matcher: LexiconMatcher,
    lexicons: Callable[[int], Lexicon],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[int, TextInstances], int]:
    """Detections with corrected transcriptions, and how many were dropped."""
    out, dropped = {}, 0
    for n, (key, det) in enumerate(dets.items()):
        if progress is not None:
            progress(n + 1, len(dets))
        if len(det) == 0:
            out[key] = det
            continue
        lexicon = lexicons(key)
        words = [matcher(t, lexicon) for t in det.texts]
        keep = np.array([w is not None for w in words], bool)
        new = det.subset(keep)
        new.texts = [w for w in words if w is not None]
        dropped += int((~keep).sum())
        out[key] = new
    return out, dropped


@dataclasses.dataclass
class SpottingResult:
    """End-to-end and detection-only counts, per-image results and bookkeeping counts."""

    e2e: Counts
    detection: Counts
    per_image: dict[int, dict]
    stats: dict

    def summary(self) -> dict:
        """JSON-ready summary: end-to-end numbers at the top level, detection-only under ``detection``."""
        return {**self.e2e.as_dict(), "detection": self.detection.as_dict(), **self.stats}


def _drop_invalid_detections(det: TextInstances, float_coords: bool) -> tuple[TextInstances, np.ndarray]:
    """Detections int-cast (unless ``float_coords``) with invalid polygons removed, and the kept file indices."""
    if len(det) == 0:
        return det, np.zeros(0, np.int64)
    polygons = det.polygons if float_coords else [np.trunc(p) for p in det.polygons]
    valid = np.array([g.is_valid for g in polygons_from_points(polygons)], bool)
    return dataclasses.replace(det, polygons=polygons).subset(valid), np.flatnonzero(valid)


def evaluate_spotting(
    gts: Mapping[int, TextInstances],
    dets: Mapping[int, TextInstances],
    *,
    word_spotting: bool = False,
    protocol: DetProtocol | None = None,
    float_coords: bool = False,
    strict: bool = False,
    min_word_length: int = 3,
) -> SpottingResult:
    """Evaluate recognised detections (``texts``) against transcribed ground truth, both keyed by image number.

    ``protocol`` gives the ground-truth geometry (default float ``gpc``); detection images missing from the ground
    truth are an error with ``strict``, otherwise ignored and counted.
    """
    protocol = protocol or DetProtocol()
    extra = check_keys(gts, dets, strict)
    e2e, det_only = Counts(), Counts()
    per_image: dict[int, dict] = {}
    stats = {"images": len(gts), "gt_total": 0, "det_total": 0, "invalid_det_dropped": 0, "unknown_images": len(extra)}
    empty = TextInstances([], [], np.zeros(0, bool))
    for key in sorted(gts):
        gt, raw_det = gts[key], dets.get(key, empty)
        det, det_index = _drop_invalid_detections(raw_det, float_coords)
        geo = image_geometry(gt, det, protocol)
        gt_texts = [gt.texts[i] for i in geo.gt_index]
        det_only_dc = geo.gt_dont_care | np.array([t == DONT_CARE for t in gt_texts], bool)
        e2e_dc = det_only_dc.copy()
        if word_spotting:
            for i, text in enumerate(gt_texts):
                if not e2e_dc[i]:
                    if in_wordspotting_dictionary(text, min_word_length):
                        gt_texts[i] = clean_wordspotting_word(text)
                    else:
                        e2e_dc[i] = True
        det_texts = [det.texts[i] for i in geo.det_index]
        dc_det_e2e = geo.dont_care_dets(e2e_dc, protocol)
        dc_det_only = geo.dont_care_dets(det_only_dc, protocol)
        pairs = match_pairs(geo.iou, ~e2e_dc, ~dc_det_e2e, thr=protocol.iou_thr)
        correct = []
        for g, d in pairs:
            a, b = gt_texts[g].upper(), det_texts[d].upper()
            correct.append(a == b if word_spotting else transcription_match(a, b))
        image_e2e = Counts(sum(correct), int((~e2e_dc).sum()), int((~dc_det_e2e).sum()))
        det_pairs = match_pairs(geo.iou, ~det_only_dc, ~dc_det_only, thr=protocol.iou_thr)
        image_det = Counts(len(det_pairs), int((~det_only_dc).sum()), int((~dc_det_only).sum()))
        e2e += image_e2e
        det_only += image_det
        p, r, h = per_sample_prf(image_e2e.matched, image_e2e.gt_care, image_e2e.det_care)
        file_det = det_index[geo.det_index]
        per_image[key] = {
            "precision": p,
            "recall": r,
            "hmean": h,
            **dataclasses.asdict(image_e2e),
            "pairs": [[int(geo.gt_index[g]), int(file_det[d]), c] for (g, d), c in zip(pairs, correct, strict=True)],
            "detection": dataclasses.asdict(image_det),
        }
        stats["gt_total"] += len(gt)
        stats["det_total"] += len(raw_det)
        stats["invalid_det_dropped"] += len(raw_det) - len(det)
    return SpottingResult(e2e, det_only, per_image, stats)
