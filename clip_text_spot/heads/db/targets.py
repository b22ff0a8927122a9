"""DBNet training targets, following mmocr 0.x ``DBNetTargets`` (the version TCM/FastTCM train with).

Reference: ``eval_data.md`` §4.2 and §4.7, ``tcm.md`` §3.1. Per image, at network input resolution:

1. A non-ignored polygon is *invalid* (moved to the ignored set) when ``|area| < 1`` (shoelace on the float points)
   or the short side of ``cv2.minAreaRect`` of its int32 points is ``< min_short_size`` (8).
2. ``gt_shrink``: each remaining polygon, cast to int32, is offset inwards with pyclipper (JT_ROUND) by the integer
   distance ``int(A (1 - r^2) / (L + 0.001) + 0.5)`` (A: area, L: perimeter, r = 0.4) and filled
   with ``cv2.fillPoly``. An empty result, or one split into several parts, marks the polygon ignored (the intended
   semantics; mmocr 0.x silently keeps the first of equal-size parts and crashes on unequal ones, §4.7).
3. ``gt_shrink_mask``: ones, with every ignored polygon (given, invalid or failed shrink) filled with 0.
4. ``gt_thr`` / ``gt_thr_mask``: each remaining polygon (float) is dilated by ``D = A (1 - r^2) / L`` (shapely's
   area and length, float; pyclipper truncates the float points to integers); the dilated polygon is filled into
   ``gt_thr_mask``; over the integer bounding box of the dilated polygon, the distance of each pixel to each edge is
   computed with mmocr's heuristic (distance to the edge's line, or to the nearer end point when the angle the edge
   subtends at the pixel is acute), normalised by D and clipped to [0, 1]; ``canvas = max(canvas, 1 -
   min_over_edges)``; finally ``gt_thr = canvas (thr_max - thr_min) + thr_min``.

The distance uses the algebraically equal forms ``|cross| / |edge|`` and ``(X - p).(X - q) > 0`` in place of mmocr's
cosine formulation (``-cos = (c^2 - a^2 - b^2) / (2ab)``), evaluates each edge only on the pixels within ``D`` of its
bounding box (elsewhere its clipped ratio is 1), and works on separable pixel grids; results agree with the cosine
form to float32 rounding. Areas and perimeters are computed with NumPy (shoelace, edge lengths), which is what
shapely's ``area`` / ``length`` and ``cv2.arcLength`` compute. The shrink offset is applied to the int32 polygon and
the dilation to the float polygon, exactly as in the reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np
import pyclipper

from clip_text_spot.heads.common import perimeter, shoelace_area, shrink_offset

TARGET_KEYS = ("gt_shrink", "gt_shrink_mask", "gt_thr", "gt_thr_mask")
_EPS = float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class DBTargetConfig:
    """Constants of mmocr's ``DBNetTargets`` (TCM uses the defaults)."""

    shrink_ratio: float = 0.4
    thr_min: float = 0.3
    thr_max: float = 0.7
    min_short_size: float = 8.0

    def __post_init__(self):
        if not 0.0 < self.shrink_ratio < 1.0:
            raise ValueError(f"DBTargetConfig.shrink_ratio must be in (0, 1), got {self.shrink_ratio}")
        if not 0.0 <= self.thr_min < self.thr_max <= 1.0:
            raise ValueError(f"DBTargetConfig: need 0 <= thr_min < thr_max <= 1, got {self.thr_min}, {self.thr_max}")


DB_TARGETS = DBTargetConfig()
"""mmocr's / TCM's constants."""


def is_invalid_polygon(poly: np.ndarray, min_short_size: float) -> bool:
    """mmocr's ``invalid_polygon``: area below 1 or the short side of the int32 min-area rectangle too small."""
    if len(poly) < 3 or abs(shoelace_area(poly)) < 1:
        return True
    _, (w, h), _ = cv2.minAreaRect(poly.astype(np.int32))
    return min(w, h) < min_short_size


def shrink_polygon(poly: np.ndarray, shrink_ratio: float) -> np.ndarray | None:
    """Kernel polygon int [m, 2] of mmocr's ``generate_kernels``, or None when the shrink is empty or split."""
    _, paths = shrink_offset(poly, shrink_ratio)
    if len(paths) != 1 or len(paths[0]) < 3:
        return None
    return np.asarray(paths[0], np.int32)


def _min_edge_ratio(poly: np.ndarray, x0: int, x1: int, y0: int, y1: int, distance: float) -> np.ndarray:
    """``min_over_edges(clip(d / distance, 0, 1))`` on the integer grid [y0..y1] x [x0..x1] (float32).

    For edge (p, q) and pixel X, with a = |X - p|, b = |X - q|, c = |p - q|: when a^2 + b^2 > c^2 (the angle at X
    is acute, mmocr's ``neg_cos_c < 0``) d = min(a, b), else d is the distance from X to the line through p and q.
    Pixels farther than ``distance`` from an edge's bounding box have d >= distance for that edge, so each edge is
    evaluated only on its bounding box grown by ``distance`` (the rest keeps the clipped value 1).
    """
    xs = np.arange(x0, x1 + 1, dtype=np.float32)
    ys = np.arange(y0, y1 + 1, dtype=np.float32)
    out = np.full((len(ys), len(xs)), np.float32(distance) ** 2, np.float32)
    n = len(poly)
    for i in range(n):
        px, py = (float(v) for v in poly[i])
        qx, qy = (float(v) for v in poly[(i + 1) % n])
        c0 = max(0, math.ceil(min(px, qx) - distance - x0))  # window of grid points within `distance` of the box
        c1 = min(len(xs), math.floor(max(px, qx) + distance - x0) + 1)
        r0 = max(0, math.ceil(min(py, qy) - distance - y0))
        r1 = min(len(ys), math.floor(max(py, qy) + distance - y0) + 1)
        if c1 <= c0 or r1 <= r0:
            continue
        x = xs[None, c0:c1]
        y = ys[r0:r1, None]
        dx, dy = qx - px, qy - py
        c2 = dx * dx + dy * dy
        xp, xq, yp, yq = x - px, x - qx, y - py, y - qy
        a2 = yp * yp + xp * xp
        b2 = yq * yq + xq * xq
        cross = yp * np.float32(dx / np.sqrt(c2 + _EPS)) - xp * np.float32(dy / np.sqrt(c2 + _EPS))
        acute = (yp * yq + xp * xq) > 0  # a^2 + b^2 - c^2 = 2 (X - p).(X - q)
        d2 = np.where(acute, np.minimum(a2, b2), cross * cross)
        window = out[r0:r1, c0:c1]
        np.minimum(window, d2, out=window)
    return np.sqrt(out) / np.float32(distance)


def draw_border_map(poly: np.ndarray, shrink_ratio: float, canvas: np.ndarray, mask: np.ndarray) -> None:
    """mmocr's ``draw_border_map`` for one float polygon [n, 2]: updates ``canvas`` (float32) and ``mask`` in place."""
    poly = np.asarray(poly, np.float64)
    distance = abs(shoelace_area(poly)) * (1 - shrink_ratio**2) / perimeter(poly)  # shapely area and length
    pco = pyclipper.PyclipperOffset()
    pco.AddPath([tuple(p) for p in poly.tolist()], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    padded = pco.Execute(distance)
    padded = np.asarray(padded[0], np.int64) if padded else poly.astype(np.int32).astype(np.int64)
    cv2.fillPoly(mask, [padded.astype(np.int32)], 1)
    x_min, y_min = padded.min(axis=0)
    x_max, y_max = padded.max(axis=0)
    h_img, w_img = canvas.shape
    x0, x1 = min(max(0, x_min), w_img - 1), min(max(0, x_max), w_img - 1)
    y0, y1 = min(max(0, y_min), h_img - 1), min(max(0, y_max), h_img - 1)
    width, height = x_max - x_min + 1, y_max - y_min + 1
    if x0 - x_min >= width or y0 - y_min >= height:
        return
    # Only the part of the bounding box inside the image is ever written, so only that part is computed.
    value = 1.0 - _min_edge_ratio(poly, x0, x1, y0, y1, distance)
    window = canvas[y0 : y1 + 1, x0 : x1 + 1]
    np.fmax(value, window, out=window)


def db_targets(
    polygons: Sequence[np.ndarray],
    ignore: Sequence[bool],
    shape: tuple[int, int],
    config: DBTargetConfig = DB_TARGETS,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """DBNet targets for one image of ``shape`` (H, W) with float polygons [n_i, 2] in pixel coordinates.

    Returns ``({gt_shrink, gt_shrink_mask, gt_thr, gt_thr_mask}``, each float32 [H, W]), ignore flags bool [N]``)
    where the flags include the polygons found invalid or unshrinkable here.
    """
    if len(polygons) != len(ignore):
        raise ValueError(f"db_targets: {len(polygons)} polygons but {len(ignore)} ignore flags")
    h, w = shape
    ignored = np.array([bool(x) for x in ignore], dtype=bool)
    polys = [np.asarray(p, np.float32).reshape(-1, 2) for p in polygons]
    for i, poly in enumerate(polys):
        if not ignored[i] and is_invalid_polygon(poly, config.min_short_size):
            ignored[i] = True

    kernel = np.zeros((h, w), np.float32)
    for i, poly in enumerate(polys):
        if ignored[i]:
            continue
        shrunk = shrink_polygon(poly, config.shrink_ratio)
        if shrunk is None:
            ignored[i] = True
            continue
        cv2.fillPoly(kernel, [shrunk], 1)

    shrink_mask = np.ones((h, w), np.float32)
    for i, poly in enumerate(polys):
        if ignored[i] and len(poly):
            cv2.fillPoly(shrink_mask, [poly.astype(np.int32)], 0)

    canvas = np.zeros((h, w), np.float32)
    thr_mask = np.zeros((h, w), np.float32)
    for i, poly in enumerate(polys):
        if not ignored[i]:
            draw_border_map(poly, config.shrink_ratio, canvas, thr_mask)
    gt_thr = canvas * np.float32(config.thr_max - config.thr_min) + np.float32(config.thr_min)

    targets = {
        "gt_shrink": kernel,
        "gt_shrink_mask": shrink_mask,
        "gt_thr": gt_thr,
        "gt_thr_mask": thr_mask,
    }
    return targets, ignored
