"""DBNet post-processing: probability map -> text quads or polygons with scores, mmocr 0.x semantics as TCM /
FastTCM use them (``DBParamPostprocessor`` / ``DBVisPostprocessor``; ``tcm.md`` §3.1, ``eval_data.md`` §4.4-4.7).

For each map (host side, NumPy / OpenCV / pyclipper / shapely):

1. ``mask = prob > mask_thr``; contours of the mask (``cv2.findContours``, ``RETR_LIST``, ``CHAIN_APPROX_SIMPLE``).
2. Contours in OpenCV's order; the loop stops when the index exceeds ``max_candidates`` (so ``max_candidates + 1``
   are examined, as mmocr). With ``epsilon_ratio`` set, ``cv2.approxPolyDP(c, epsilon_ratio * arcLength(c))``;
   fewer than 4 points -> dropped.
3. ``score`` = mean probability inside the (approximated) polygon: ``cv2.fillPoly`` mask over the integer bounding
   box, ``cv2.mean`` (mmocr ``box_score_fast``); ``score < min_text_score`` -> dropped.
4. Unclip: offset by ``D = area * unclip_ratio / perimeter`` (shapely) with pyclipper ``JT_ROUND`` /
   ``ET_CLOSEDPOLYGON`` on the integer contour points; an empty or multi-part result is dropped (mmocr's intent;
   its code crashes or silently merges parts on current numpy, ``eval_data.md`` §4.7).
5. ``quad``: ``cv2.boxPoints(cv2.minAreaRect(unclipped))``, kept when the short side is ``> min_text_width``
   (mmocr 0.x is strict; 1.x uses ``>=``), in OpenCV's vertex order. ``poly``: the unclipped polygon, optionally
   dropped when its min-area-rectangle short side is ``< min_text_width`` (``filter_min_text_poly``, DBVis).
6. Coordinates are divided by ``scale = (w_scale, h_scale)`` (the resize factors new/old), giving original-image
   pixels, without rounding or clipping.

``DB_PRESETS`` holds TCM's per-dataset settings (README configs) and mmocr's DBNet default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np
import pyclipper
import shapely

from clip_text_spot.heads.common import TEXT_REPRS, resolve_preset


@dataclasses.dataclass(frozen=True)
class DBPostprocessConfig:
    """Post-processing parameters; ``epsilon_ratio=None`` disables ``approxPolyDP`` (TCM's TD500 setting)."""

    text_repr: str = "quad"
    mask_thr: float = 0.3
    min_text_score: float = 0.3
    min_text_width: float = 5.0
    unclip_ratio: float = 1.5
    epsilon_ratio: float | None = 0.01
    max_candidates: int = 3000
    filter_min_text_poly: bool = False

    def __post_init__(self):
        if self.text_repr not in TEXT_REPRS:
            raise ValueError(f"text_repr must be one of {TEXT_REPRS}, got {self.text_repr!r}")


DB_PRESETS: dict[str, DBPostprocessConfig] = {
    "mmocr": DBPostprocessConfig(),
    "tcm_pretrain": DBPostprocessConfig(),
    "tcm_ic15": DBPostprocessConfig("quad", 0.28, 0.2, 2, 1.6, 0.001, 3000),
    "tcm_td500": DBPostprocessConfig("quad", 0.08, 0.17, 3, 1.9, None, 1000),
    "tcm_ctw1500": DBPostprocessConfig("poly", 0.08, 0.3, 3, 2.0, 0.0001, 3000),
    "tcm_totaltext": DBPostprocessConfig("poly", 0.347, 0.3, 5, 1.95, 0.004, 3000),
}


def resolve_config(config: DBPostprocessConfig | str | None = None, **overrides) -> DBPostprocessConfig:
    """A config, a ``DB_PRESETS`` name or None (mmocr's DBNet setting), with field overrides."""
    return resolve_preset(config, DB_PRESETS, DBPostprocessConfig(), "DB", **overrides)


def mean_score_in_polygon(prob: np.ndarray, points: np.ndarray) -> float:
    """Mean of ``prob`` over the pixels ``cv2.fillPoly`` covers for ``points`` (mmocr ``box_score_fast``)."""
    h, w = prob.shape
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    x0, x1 = np.clip([np.floor(pts[:, 0].min()), np.ceil(pts[:, 0].max())], 0, w - 1).astype(np.int32)
    y0, y1 = np.clip([np.floor(pts[:, 1].min()), np.ceil(pts[:, 1].max())], 0, h - 1).astype(np.int32)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [(pts - [x0, y0]).astype(np.int32)], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def unclip(points: np.ndarray, ratio: float) -> np.ndarray | None:
    """Offset a polygon outwards by ``area * ratio / perimeter`` (pyclipper round joins; inputs are truncated to
    integers as pyclipper does); None when the result is empty or splits into several parts."""
    pts = np.asarray(points).reshape(-1, 2)
    poly = shapely.Polygon(pts)
    if poly.length == 0:
        return None
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(pts.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    paths = offset.Execute(poly.area * ratio / poly.length)
    if len(paths) != 1:
        return None
    return np.asarray(paths[0], np.int32).reshape(-1, 2)


def _min_area_rect_short_side(points: np.ndarray) -> tuple[tuple, float]:
    rect = cv2.minAreaRect(np.asarray(points, np.int32))
    return rect, float(min(rect[1]))


def db_postprocess(
    prob_map: np.ndarray,
    config: DBPostprocessConfig | str | None = None,
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    **overrides,
) -> list[tuple[np.ndarray, float]]:
    """Text instances ``(polygon float64 [n, 2] in original-image pixels, score)`` from one probability map.

    ``prob_map``: ``[H, W]`` (or ``[1, H, W]``) probabilities in [0, 1]. ``config``: a ``DBPostprocessConfig`` or a
    ``DB_PRESETS`` name (default mmocr's DBNet setting, quads); keyword ``overrides`` replace single fields, e.g.
    ``text_repr="poly"``. ``scale``: ``(w_scale, h_scale)`` of the resize applied before the network.
    """
    cfg = resolve_config(config, **overrides)
    prob = np.asarray(prob_map, np.float32)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    if prob.ndim != 2:
        raise ValueError(f"prob_map must be [H, W] or [1, H, W], got shape {np.shape(prob_map)}")
    mask = (prob > cfg.mask_thr).astype(np.uint8) * 255
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    divisor = np.array(scale, np.float64)
    results = []
    for i, contour in enumerate(contours):
        if i > cfg.max_candidates:
            break
        if cfg.epsilon_ratio is not None:
            contour = cv2.approxPolyDP(contour, cfg.epsilon_ratio * cv2.arcLength(contour, True), True)
        points = contour.reshape(-1, 2)
        if len(points) < 4:
            continue
        score = mean_score_in_polygon(prob, points)
        if score < cfg.min_text_score:
            continue
        poly = unclip(points, cfg.unclip_ratio)
        if poly is None:
            continue
        if cfg.text_repr == "quad":
            rect, short = _min_area_rect_short_side(poly)
            if not short > cfg.min_text_width:
                continue
            poly = cv2.boxPoints(rect)
        elif len(poly) < 4 or (cfg.filter_min_text_poly and _min_area_rect_short_side(poly)[1] < cfg.min_text_width):
            continue
        results.append((np.asarray(poly, np.float64) / divisor, score))
    return results


def db_postprocess_batch(
    prob_maps: np.ndarray,
    config: DBPostprocessConfig | str | None = None,
    *,
    scales: Sequence[tuple[float, float]] | None = None,
    valid_sizes: Sequence[tuple[int, int]] | None = None,
    **overrides,
) -> list[list[tuple[np.ndarray, float]]]:
    """``db_postprocess`` for a batch ``[B, H, W]`` or ``[B, 1, H, W]``.

    ``scales``: per-image ``(w_scale, h_scale)``; ``valid_sizes``: per-image ``(h, w)`` of the un-padded resized
    image — the map is cropped to it first (mmocr does not crop; give it to ignore responses in the padding).
    """
    maps = np.asarray(prob_maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"prob_maps must be [B, H, W] or [B, 1, H, W], got shape {np.shape(prob_maps)}")
    for name, seq in (("scales", scales), ("valid_sizes", valid_sizes)):
        if seq is not None and len(seq) != len(maps):
            raise ValueError(f"{name} has {len(seq)} entries for a batch of {len(maps)}")
    cfg = resolve_config(config, **overrides)
    out = []
    for b, prob in enumerate(maps):
        if valid_sizes is not None:
            h, w = valid_sizes[b]
            prob = prob[:h, :w]
        out.append(db_postprocess(prob, cfg, scale=scales[b] if scales is not None else (1.0, 1.0)))
    return out
