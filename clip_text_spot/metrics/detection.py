"""Text detection hmean-IoU: the ICDAR2015 (RRC ``script.py``) protocol, its polygon generalisation for curved text
(CTW1500 / Total-Text, TIoU-repo "Origin" script), and the mmocr 0.x / 1.x and DB re-implementations.

Per image (``eval_data.md`` §1.1): ground truth transcribed ``###`` is don't-care; a detection is don't-care when its
area precision ``inter / area_det`` against any *single* don't-care ground truth is ``> 0.5`` (strict); then a greedy
one-to-one matching in index order — for each care ground truth in file order, the first unmatched care detection
in file order with ``IoU > 0.5`` (strict) — counts a hit. Dataset numbers are micro-averaged:
``R = Σhits / Σcare_gt``, ``P = Σhits / Σcare_det``, ``H = 2PR / (P + R)`` (0 on zero denominators).

Variants (``variant``) change only geometry details (see ``polygons`` for the invalid-polygon policies):

========== =============================== ===========================================================
official   ``gpc`` geometry                 icdar2015 format: coordinates ``int()``-cast as the RRC script
mmocr0     ``buffer0``                      mmocr 0.x ``hmean-iou`` (TCM / FastTCM), float coordinates
mmocr1     ``mmocr1``, DC ``+1e-5``         mmocr 1.x ``HmeanIOUMetric`` (it builds float32 polygons; we use float64)
db         ``skip``                         MhLiao/DB ``icdar2015_eval`` (invalid / non-simple dropped)
========== =============================== ===========================================================

``strategy='max'`` replaces the greedy matching by a maximum bipartite matching (mmocr 1.x ``max_matching``).

Score sweep (detections with scores): mmocr reports the best hmean over score thresholds. ``mmocr0`` uses TCM's
thresholds ``i * 0.1`` for ``i in 3..9`` (0.30000000000000004, ..., 0.9), ``mmocr1`` uses
``np.arange(0.3, 0.9, 0.1)`` (7 values, the last 0.9000000000000001). A detection is kept at threshold ``t`` when
``score >= t``; the first threshold with the strictly highest hmean wins. The fixed-threshold number (all
detections, or ``score >= score_thr``) is always reported beside it, since the sweep is tuned on the test set.

TIoU (``tiou=True``) is an optional extra report on the same matches. Total-Text's own Pascal-VOC and DetEval
scripts are in ``clip_text_spot.metrics.totaltext``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import shapely
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from clip_text_spot.metrics.polygons import (
    PreparedPolygons,
    dont_care_detections,
    intersection_areas,
    iou_from_intersections,
    prepare_polygons,
)
from clip_text_spot.metrics.submission_io import MalformedInputError, TextInstances

VARIANTS = ("official", "mmocr0", "mmocr1", "db")
STRATEGIES = ("greedy", "max")
SWEEPS: dict[str, tuple[float, ...]] = {
    "mmocr0": tuple(i * 0.1 for i in range(3, 10)),
    "mmocr1": tuple(np.arange(0.3, 0.9, 0.1).tolist()),
}


@dataclasses.dataclass(frozen=True)
class DetProtocol:
    """Geometry and thresholds of a detection protocol (``iou_thr`` and ``dc_thr`` are strict ``>`` tests)."""

    geometry: str = "gpc"
    int_coords: bool = False
    iou_thr: float = 0.5
    dc_thr: float = 0.5
    dc_eps: float = 0.0


def protocol_for(fmt: str, variant: str = "official") -> DetProtocol:
    """The protocol of a file format (``icdar2015`` / ``curved``) and implementation variant (module docstring)."""
    if variant == "official":
        return DetProtocol(geometry="gpc", int_coords=fmt == "icdar2015")
    if variant == "mmocr0":
        return DetProtocol(geometry="buffer0")
    if variant == "mmocr1":
        return DetProtocol(geometry="mmocr1", dc_eps=1e-5)
    if variant == "db":
        return DetProtocol(geometry="skip")
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")


def _hmean(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def prf(hits: float, gt_care: int, det_care: int, precision_hits: float | None = None) -> tuple[float, float, float]:
    """Dataset-level (precision, recall, hmean) with 0 for a zero denominator; ``precision_hits`` (default
    ``hits``) is the precision credit where it differs from the recall credit (TIoU, DetEval)."""
    precision_hits = hits if precision_hits is None else precision_hits
    recall = hits / gt_care if gt_care else 0.0
    precision = precision_hits / det_care if det_care else 0.0
    return precision, recall, _hmean(precision, recall)


def per_sample_prf(hits: float, gt_care: int, det_care: int) -> tuple[float, float, float]:
    """Per-image (precision, recall, hmean) with the RRC / mmocr conventions for an image without care ground
    truth: recall 1 and precision 1 if it has no care detection either, else 0."""
    if gt_care == 0:
        recall, precision = 1.0, (0.0 if det_care else 1.0)
    else:
        recall, precision = hits / gt_care, (hits / det_care if det_care else 0.0)
    return precision, recall, _hmean(precision, recall)


@dataclasses.dataclass
class Counts:
    """Matched / care-ground-truth / care-detection counts and their micro-averaged rates."""

    matched: int = 0
    gt_care: int = 0
    det_care: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        self.matched += other.matched
        self.gt_care += other.gt_care
        self.det_care += other.det_care
        return self

    def rates(self) -> tuple[float, float, float]:
        """(precision, recall, hmean)."""
        return prf(self.matched, self.gt_care, self.det_care)

    def as_dict(self) -> dict:
        """JSON-ready dict with precision, recall, hmean and the three counts."""
        p, r, h = self.rates()
        return {"precision": p, "recall": r, "hmean": h, **dataclasses.asdict(self)}


@dataclasses.dataclass
class ImageGeometry:
    """Everything the matching of one image needs. Matrices are indexed by the instances kept by the geometry
    policy (``skip`` drops invalid ones); ``gt_index`` / ``det_index`` map back to file order. ``invalid_*`` count
    the polygons that were not valid as given."""

    iou: np.ndarray
    inter: np.ndarray
    gt_dont_care: np.ndarray
    gt: PreparedPolygons
    det: PreparedPolygons
    gt_index: np.ndarray
    det_index: np.ndarray
    invalid_gt: int = 0
    invalid_det: int = 0

    def dont_care_dets(self, gt_dont_care: np.ndarray, protocol: DetProtocol) -> np.ndarray:
        """Detections ignored because of the given don't-care ground-truth mask."""
        return dont_care_detections(self.inter, self.det, gt_dont_care, thr=protocol.dc_thr, eps=protocol.dc_eps)


def _prepare_checked(inst: TextInstances, protocol: DetProtocol) -> tuple[PreparedPolygons, np.ndarray, int]:
    prepared = prepare_polygons(inst.polygons, protocol.geometry, int_coords=protocol.int_coords)
    n_invalid = int((~prepared.valid).sum())
    keep = np.ones(len(inst), bool)
    if protocol.geometry in ("skip", "error") and len(inst):
        keep = prepared.valid
        if protocol.geometry == "error" and not keep.all():
            i = int(np.flatnonzero(~keep)[0])
            raise MalformedInputError(inst.source, inst.lines[i] or None, "invalid (self-intersecting) polygon")
        prepared = prepared.subset(keep)
    return prepared, np.flatnonzero(keep), n_invalid


def image_geometry(gt: TextInstances, det: TextInstances, protocol: DetProtocol) -> ImageGeometry:
    """Prepare both polygon sets of one image and compute their intersection and IoU matrices."""
    gt_poly, gt_index, invalid_gt = _prepare_checked(gt, protocol)
    det_poly, det_index, invalid_det = _prepare_checked(det, protocol)
    inter = intersection_areas(gt_poly, det_poly)
    return ImageGeometry(
        iou=iou_from_intersections(inter, gt_poly, det_poly),
        inter=inter,
        gt_dont_care=gt.dont_care[gt_index],
        gt=gt_poly,
        det=det_poly,
        gt_index=gt_index,
        det_index=det_index,
        invalid_gt=invalid_gt,
        invalid_det=invalid_det,
    )


def match_pairs(
    iou: np.ndarray, gt_care: np.ndarray, det_care: np.ndarray, *, thr: float = 0.5, strategy: str = "greedy"
) -> list[tuple[int, int]]:
    """One-to-one (gt, det) matches among care instances with ``IoU > thr``.

    ``greedy``: the RRC order — ground truths in index order each take the first free detection in index order
    (not the best one). ``max``: a maximum-cardinality bipartite matching (mmocr 1.x ``max_matching``).
    """
    eligible = (iou > thr) & gt_care[:, None] & det_care[None, :]
    if strategy == "greedy":
        free = np.ones(iou.shape[1], bool)
        pairs = []
        for g in np.flatnonzero(eligible.any(axis=1)):
            cand = np.flatnonzero(eligible[g] & free)
            if cand.size:
                free[cand[0]] = False
                pairs.append((int(g), int(cand[0])))
        return pairs
    if strategy == "max":
        if not eligible.any():
            return []
        owner = maximum_bipartite_matching(csr_matrix(eligible.astype(np.int8)), perm_type="row")
        return sorted((int(g), int(d)) for d, g in enumerate(owner) if g != -1)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")


def _penalty(x: float) -> float:
    return 1.0 if x <= 0.01 else 1.0 - x


def tiou_terms(geo: ImageGeometry, pairs: list[tuple[int, int]]) -> tuple[float, float]:
    """Summed TIoU (recall, precision) terms of matched pairs (Liu et al. 2019, TIoU repo ``script.py``).

    Recall term: ``inter * f(Ct / area_g) / union`` with ``Ct = area_g - inter`` (ground truth not covered).
    Precision term: ``inter * f(Ot / area_d) / union`` with ``Ot`` the part of the detection covered by the union
    of the *other* ground truths it touches (don't-care ones included, as in the script) minus their overlap
    with this pair's intersection; ``f(x) = 1 if x <= 0.01 else 1 - x``. Out-of-range values give 0 as the
    script's asserts do.
    """
    rec = prec = 0.0
    for g, d in pairs:
        inter, area_g, area_d = geo.inter[g, d], geo.gt.own_area[g], geo.det.own_area[d]
        union = area_g + area_d - inter
        if union <= 0:
            continue
        cut = area_g - inter
        if area_g > 0 and 0 <= cut <= area_g:
            rec += inter * _penalty(cut / area_g) / union
        others = [i for i in np.flatnonzero(geo.inter[:, d] != 0) if i != g]
        outlier = 0.0
        if others:
            cover = shapely.union_all(geo.gt.geoms[others])
            det_geom, pair = geo.det.geoms[d], shapely.intersection(geo.det.geoms[d], geo.gt.geoms[g])
            outlier = shapely.area(shapely.intersection(det_geom, cover)) - shapely.area(
                shapely.intersection(pair, cover)
            )
            outlier = 0.0 if outlier <= 1e-10 else outlier
        if area_d > 0 and outlier <= area_d:
            prec += inter * _penalty(outlier / area_d) / union
    return rec, prec


@dataclasses.dataclass
class DetectionResult:
    """Fixed-threshold counts, optional sweep, per-image results and bookkeeping counts."""

    counts: Counts
    per_image: dict[int, dict]
    sweep: list[tuple[float, Counts]] | None = None
    stats: dict = dataclasses.field(default_factory=dict)

    @property
    def best(self) -> tuple[float, Counts] | None:
        """The sweep entry with the strictly highest hmean (first wins on ties), or None."""
        if not self.sweep:
            return None
        best = self.sweep[0]
        for entry in self.sweep[1:]:
            if entry[1].rates()[2] > best[1].rates()[2]:
                best = entry
        return best

    def summary(self) -> dict:
        """JSON-ready dataset summary (no per-image detail)."""
        out = self.counts.as_dict()
        out.update(self.stats)
        if self.sweep is not None:
            thr, best = self.best
            out["sweep"] = {
                "best": {"score_thr": thr, **best.as_dict()},
                "thresholds": [{"score_thr": t, **c.as_dict()} for t, c in self.sweep],
            }
        return out


def check_keys(gts: Mapping[int, TextInstances], dets: Mapping[int, TextInstances], strict: bool) -> list[int]:
    """Image numbers of ``dets`` missing from ``gts``; with ``strict`` the first one is an error (as the RRC
    scripts, which reject a submission with a sample not in the ground truth)."""
    extra = sorted(set(dets) - set(gts))
    if extra and strict:
        raise MalformedInputError(dets[extra[0]].source, None, f"image {extra[0]} is not in the ground truth")
    return extra


def _scores_available(dets: Mapping[int, TextInstances], keys: list[int]) -> bool:
    non_empty = [dets[k] for k in keys if k in dets and len(dets[k])]
    return bool(non_empty) and all(d.scores is not None for d in non_empty)


def evaluate_detection(
    gts: Mapping[int, TextInstances],
    dets: Mapping[int, TextInstances],
    *,
    protocol: DetProtocol | None = None,
    strategy: str = "greedy",
    score_thr: float | None = None,
    sweep: str | None = "mmocr0",
    strict: bool = False,
    tiou: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DetectionResult:
    """Evaluate detections against ground truth, both keyed by image number.

    Images of the ground truth without detections count with no detections. Detection images absent from the
    ground truth are an error with ``strict`` (as the RRC script), otherwise ignored and counted in
    ``stats['unknown_images']``. ``score_thr`` keeps detections with ``score >= score_thr`` for the main numbers;
    ``sweep`` ('mmocr0', 'mmocr1' or None) adds the threshold sweep when every detection carries a score;
    ``tiou`` adds the TIoU precision / recall / hmean of the main matching (``tiou_terms``) to the stats.
    """
    protocol = protocol or DetProtocol()
    if sweep is not None and sweep not in SWEEPS:
        raise ValueError(f"unknown sweep {sweep!r}; choose one of {tuple(SWEEPS)} or None")
    extra = check_keys(gts, dets, strict)
    keys = sorted(gts)
    has_scores = _scores_available(dets, keys)
    if score_thr is not None and not has_scores:
        raise ValueError("a score threshold was given but the detections carry no scores")
    thresholds = SWEEPS[sweep] if (sweep is not None and has_scores) else ()
    counts = Counts()
    sweep_counts = [Counts() for _ in thresholds]
    per_image: dict[int, dict] = {}
    stats = {"images": len(keys), "gt_total": 0, "det_total": 0, "invalid_gt": 0, "invalid_det": 0}
    tiou_sums = np.zeros(2)
    empty = TextInstances([], [], np.zeros(0, bool))
    for n, key in enumerate(keys):
        gt, det = gts[key], dets.get(key, empty)
        geo = image_geometry(gt, det, protocol)
        det_dc = geo.dont_care_dets(geo.gt_dont_care, protocol)
        gt_care, det_care = ~geo.gt_dont_care, ~det_dc
        scores = det.scores[geo.det_index] if det.scores is not None else np.zeros(len(geo.det_index))
        kept = det_care if score_thr is None else det_care & (scores >= score_thr)
        pairs = match_pairs(geo.iou, gt_care, kept, thr=protocol.iou_thr, strategy=strategy)
        image = Counts(len(pairs), int(gt_care.sum()), int(kept.sum()))
        counts += image
        if tiou:
            tiou_sums += tiou_terms(geo, pairs)
        for t, acc in zip(thresholds, sweep_counts, strict=True):
            keep_t = det_care & (scores >= t)
            acc += Counts(
                len(match_pairs(geo.iou, gt_care, keep_t, thr=protocol.iou_thr, strategy=strategy)),
                int(gt_care.sum()),
                int(keep_t.sum()),
            )
        p, r, h = per_sample_prf(image.matched, image.gt_care, image.det_care)
        per_image[key] = {
            "precision": p,
            "recall": r,
            "hmean": h,
            **dataclasses.asdict(image),
            "pairs": [[int(geo.gt_index[g]), int(geo.det_index[d])] for g, d in pairs],
            "det_dont_care": [int(i) for i in geo.det_index[det_dc]],
        }
        stats["gt_total"] += len(gt)
        stats["det_total"] += len(det)
        stats["invalid_gt"] += geo.invalid_gt
        stats["invalid_det"] += geo.invalid_det
        if progress is not None:
            progress(n + 1, len(keys))
    stats["unknown_images"] = len(extra)
    stats["score_thr"] = score_thr
    if tiou:
        rates = prf(float(tiou_sums[0]), counts.gt_care, counts.det_care, precision_hits=float(tiou_sums[1]))
        stats["tiou"] = dict(zip(("precision", "recall", "hmean"), rates, strict=True))
    return DetectionResult(
        counts, per_image, list(zip(thresholds, sweep_counts, strict=True)) if thresholds else None, stats
    )
