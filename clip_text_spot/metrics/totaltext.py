"""Total-Text's official detection protocols (cs-chan/Total-Text-Dataset ``Evaluation_Protocol/Python_scripts``:
``Pascal_VOC.py`` and ``Deteval.py``), as opposed to the ICDAR-style IoU protocol that papers, DB, mmocr and TCM
actually report on Total-Text (``detection``); ``eval_data.md`` §1.5.

Geometry as ``polygon_fast.py``: intersections of ``buffer(0)`` polygons, raw polygon areas. Detections with
``inter / (area_det + 1) > 0.5`` against a don't-care ground truth are removed first, then the don't-care ground
truths. Official detection files are ``y,x`` ordered (read them with ``coord_order='yx'``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from clip_text_spot.metrics.detection import DetProtocol, check_keys, image_geometry, prf
from clip_text_spot.metrics.submission_io import TextInstances

METHODS = ("pascal", "deteval")
PROTOCOL = DetProtocol(geometry="buffer0", dc_eps=1.0)


def pascal_hits(iou: np.ndarray, thr: float = 0.5) -> int:
    """Total-Text ``Pascal_VOC.py``: each detection in file order takes its best ground truth (first on ties); a hit
    when that IoU is ``>= thr`` and the ground truth is still free, otherwise a false positive (no second choice)."""
    taken = np.zeros(iou.shape[0], bool)
    hits = 0
    for d in range(iou.shape[1]):
        g = int(np.argmax(iou[:, d])) if iou.shape[0] else -1
        if g >= 0 and iou[g, d] >= thr and not taken[g]:
            taken[g] = True
            hits += 1
    return hits


def deteval_credits(
    sigma: np.ndarray, tau: np.ndarray, *, tr: float = 0.7, tp: float = 0.6, k: int = 2, fsc_k: float = 0.8
) -> tuple[float, float]:
    """Total-Text ``Deteval.py`` (recall credit, precision credit) of one image from the ``[gt, det]`` area recall
    ``sigma = inter / area_gt`` and area precision ``tau = inter / area_det`` (both rounded to 2 decimals).

    In order: one-to-one (a ground truth with exactly one detection of sigma > tr and one of tau > tp, each of
    those unique in its column) scores 1 / 1; one-to-many (an unmatched ground truth overlapped by >= k
    detections; the free detections with tau >= tp: one of them scores 1 / 1 only if also sigma >= tr, several
    score fsc_k / n * fsc_k when their summed sigma >= tr); many-to-one (an unmatched detection overlapping >= k
    ground truths; the free ones with sigma >= tp — sic, as the official script — likewise with tau).
    """
    n_gt, n_det = sigma.shape
    gt_flag, det_flag = np.zeros(n_gt, bool), np.zeros(n_det, bool)
    rec = prec = 0.0
    for g in range(n_gt):
        s_cand, t_cand = np.flatnonzero(sigma[g] > tr), np.flatnonzero(tau[g] > tp)
        if (
            len(s_cand) == 1
            and len(t_cand) == 1
            and np.count_nonzero(sigma[:, s_cand] > tr) == 1
            and np.count_nonzero(tau[:, t_cand] > tp) == 1
        ):
            rec, prec = rec + 1.0, prec + 1.0
            gt_flag[g], det_flag[s_cand] = True, True
    for g in range(n_gt):
        if gt_flag[g] or np.count_nonzero(sigma[g] > 0) < k:
            continue
        q = np.flatnonzero((tau[g] >= tp) & ~det_flag)
        if len(q) == 1:
            if tau[g, q[0]] >= tp and sigma[g, q[0]] >= tr:
                rec, prec = rec + 1.0, prec + 1.0
                gt_flag[g], det_flag[q] = True, True
        elif sigma[g, q].sum() >= tr:
            rec, prec = rec + fsc_k, prec + len(q) * fsc_k
            gt_flag[g], det_flag[q] = True, True
    for d in range(n_det):
        if det_flag[d] or np.count_nonzero(tau[:, d] > 0) < k:
            continue
        q = np.flatnonzero((sigma[:, d] >= tp) & ~gt_flag)
        if len(q) == 1:
            if tau[q[0], d] >= tp and sigma[q[0], d] >= tr:
                rec, prec = rec + 1.0, prec + 1.0
                gt_flag[q], det_flag[d] = True, True
        elif tau[q, d].sum() >= tp:
            rec, prec = rec + len(q) * fsc_k, prec + fsc_k
            gt_flag[q], det_flag[d] = True, True
    return rec, prec


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, 0.0)


def evaluate_totaltext(
    gts: Mapping[int, TextInstances],
    dets: Mapping[int, TextInstances],
    *,
    method: str = "deteval",
    tr: float = 0.7,
    tp: float = 0.6,
    strict: bool = False,
) -> dict:
    """Dataset summary dict of one of the official protocols (module docstring) on images keyed by number.

    ``pascal``: ``IoU = inter / (union + 1)``, hits by ``pascal_hits``; ``deteval``: ``deteval_credits`` with
    ``tr`` / ``tp`` (the authors recommend 0.7 / 0.6). ``P = credit / care detections``, ``R = credit / care
    ground truths``; ``matched`` is the recall credit (fractional for DetEval).
    """
    if method not in METHODS:
        raise ValueError(f"unknown Total-Text method {method!r}; choose one of {METHODS}")
    extra = check_keys(gts, dets, strict)
    rec = prec = 0.0
    n_gt = n_det = 0
    empty = TextInstances([], [], np.zeros(0, bool))
    for key in sorted(gts):
        geo = image_geometry(gts[key], dets.get(key, empty), PROTOCOL)
        keep_det = ~geo.dont_care_dets(geo.gt_dont_care, PROTOCOL)
        care = ~geo.gt_dont_care
        inter = geo.inter[care][:, keep_det]
        gt_area, det_area = geo.gt.own_area[care], geo.det.own_area[keep_det]
        if method == "pascal":
            union = geo.gt.union_area[care][:, None] + geo.det.union_area[keep_det][None, :] - inter
            hits = pascal_hits(inter / (union + 1.0))
            rec, prec = rec + hits, prec + hits
        else:
            sigma = np.round(_safe_ratio(inter, gt_area[:, None]), 2)
            tau = np.round(_safe_ratio(inter, det_area[None, :]), 2)
            r, p = deteval_credits(sigma, tau, tr=tr, tp=tp)
            rec, prec = rec + r, prec + p
        n_gt += int(care.sum())
        n_det += int(keep_det.sum())
    precision, recall, hmean = prf(rec, n_gt, n_det, precision_hits=prec)
    return {
        "precision": precision,
        "recall": recall,
        "hmean": hmean,
        "matched": rec if method == "deteval" else int(rec),
        "precision_credit": prec,
        "gt_care": n_gt,
        "det_care": n_det,
        "images": len(gts),
        "unknown_images": len(extra),
    }
