"""FCENet post-processing on the host (NumPy / OpenCV / shapely), mmocr 0.4 ``FCEHead.get_boundary`` +
``FCEPostprocessor`` as TCM runs them (``fcenet_panet.md`` §4).

Per level (stride s) of one image, from the raw head outputs cls [h, w, 4] and reg [h, w, 2K] (K = 2k + 1):

1. ``score = softmax(cls[..., 0:2])[1] ** alpha * softmax(cls[..., 2:4])[1] ** beta`` (float32);
   ``mask = fill_hole(score > score_thr)`` (holes = background not 4-connected to the border).
2. For each contour of the mask (``cv2.findContours``, ``RETR_TREE``, ``CHAIN_APPROX_SIMPLE``, OpenCV's order), every
   pixel inside it (filled ``drawContours``) with a positive score is a candidate: its coefficients
   ``x + i y`` (complex64), c_0 shifted by the pixel position (no half-pixel offset), times s, reconstructed to
   ``num_reconstr_points`` points by an inverse FFT (``fourier_to_polygons``, truncated to int32), with the pixel's
   score; the candidates of the contour go through ``poly_nms``, then the level's survivors once more.
3. The levels' boundaries are concatenated and go through ``poly_nms`` again; with ``scale`` the coordinates are
   multiplied by ``float32(1 / scale)`` per axis (mmocr's ``resize_boundary``), giving original-image pixels.

``poly_nms``: candidates sorted by score (stable, ascending); the last one is kept and every remaining candidate with
IoU > ``nms_thr`` against it is dropped; repeat. IoU is shapely's, invalid (self-intersecting) polygons repaired by
``buffer(0)`` first (``metrics.polygons`` policy ``buffer0``), and an empty union counts as IoU 1. About half the
reconstructed contours self-intersect, so the repair matters; its result depends on the GEOS version.

``text_repr='quad'`` (mmocr's ``text_repr_type``) is a no-op in the official code (the minAreaRect quads are
computed, then discarded), so TCM's IC15 output is the 50-point polygons; that is the default here too, and
``true_quad=True`` turns the final (NMS-ed, rescaled) polygons into the intended ``cv2.boxPoints(cv2.minAreaRect(.))``
quads (truncated to integers). ``FCE_PRESETS``: ``tcm`` (TCM's FCENet configs: quad, alpha 1.2, beta 1.0) and
``mmocr`` (``FCEPostprocessor``'s defaults: poly, alpha 1.0, beta 2.0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np
import shapely

from clip_text_spot.heads.common import TEXT_REPRS, resolve_preset
from clip_text_spot.metrics.polygons import prepare_polygons


@dataclasses.dataclass(frozen=True)
class FCEPostprocessConfig:
    """FCE post-processing parameters (``FCE_PRESETS`` names the released settings); ``text_repr`` is mmocr's
    ``text_repr_type``, ``scales`` the strides of the levels."""

    text_repr: str = "poly"
    alpha: float = 1.0
    beta: float = 2.0
    score_thr: float = 0.3
    nms_thr: float = 0.1
    num_reconstr_points: int = 50
    fourier_degree: int = 5
    scales: tuple[int, ...] = (8, 16, 32)
    true_quad: bool = False

    def __post_init__(self):
        if self.text_repr not in TEXT_REPRS:
            raise ValueError(f"text_repr must be one of {TEXT_REPRS}, got {self.text_repr!r}")


FCE_PRESETS: dict[str, FCEPostprocessConfig] = {
    "tcm": FCEPostprocessConfig(text_repr="quad", alpha=1.2, beta=1.0),
    "mmocr": FCEPostprocessConfig(),
}


def resolve_config(config: FCEPostprocessConfig | str | None = None, **overrides) -> FCEPostprocessConfig:
    """A config, a preset name or None (``mmocr`` defaults), with field overrides."""
    return resolve_preset(config, FCE_PRESETS, FCEPostprocessConfig(), "FCE", **overrides)


def _softmax_fg(logits: np.ndarray) -> np.ndarray:
    """Foreground probability of a 2-way softmax over the last axis, float32."""
    logits = np.asarray(logits, np.float32)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e[..., 1] / e.sum(axis=-1)


def fce_score_map(cls: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """float32 [h, w] ``p_text ** alpha * p_center ** beta`` from cls logits [h, w, 4]."""
    return _softmax_fg(cls[..., 0:2]) ** alpha * _softmax_fg(cls[..., 2:4]) ** beta


def fill_hole(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: pixels not 4-connected to the border through background become True."""
    h, w = mask.shape
    canvas = np.zeros((h + 2, w + 2), np.uint8)
    canvas[1:-1, 1:-1] = mask
    cv2.floodFill(canvas, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return ~canvas[1:-1, 1:-1].astype(bool) | mask


def fourier_to_polygons(coeff: np.ndarray, num_points: int = 50) -> np.ndarray:
    """int32 [n, 2 num_points] (x, y interleaved, truncated) of ``sum_m c_m exp(2 pi i m j / num_points)`` from
    complex coefficients c_{-k..k} [n, 2k + 1] (``ifft`` of the coefficients placed at their frequencies)."""
    coeff = np.asarray(coeff)
    k = (coeff.shape[1] - 1) // 2
    spectrum = np.zeros((len(coeff), num_points), np.complex128)
    spectrum[:, : k + 1] = coeff[:, k:]
    spectrum[:, num_points - k :] = coeff[:, :k]
    z = np.fft.ifft(spectrum) * num_points
    return np.stack([z.real, z.imag], axis=-1).astype(np.int32).reshape(len(coeff), -1)


def poly_nms(boundaries: np.ndarray, thr: float) -> np.ndarray:
    """mmocr's ``poly_nms`` on rows ``[x0, y0, ..., score]`` (float64 [n, 2P + 1]); kept rows in keeping order."""
    rows = np.asarray(boundaries, np.float64)
    if len(rows) == 0:
        return rows
    rows = rows[np.argsort(rows[:, -1], kind="stable")]
    geoms = prepare_polygons([r[:-1].reshape(-1, 2) for r in rows], "buffer0").geoms
    index = np.arange(len(rows))
    keep = []
    while len(index):
        i, index = index[-1], index[:-1]
        keep.append(i)
        if len(index):
            inter = shapely.area(shapely.intersection(geoms[i], geoms[index]))
            union = shapely.area(shapely.union(geoms[i], geoms[index]))
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = np.where(union != 0, inter / union, 1.0)
            index = index[~(iou > thr)]
    return rows[keep]


def _contour_candidates(
    score: np.ndarray, inside: np.ndarray, reg: np.ndarray, scale: int, config: FCEPostprocessConfig
) -> np.ndarray:
    """Candidate rows [n, 2P + 1] of the pixels of one contour."""
    k = config.fourier_degree
    sel = score * inside > 0
    ys, xs = np.nonzero(sel)
    c = reg[sel][:, : 2 * k + 1] + reg[sel][:, 2 * k + 1 :] * 1j  # complex64, as the reference
    c[:, k] = c[:, k] + (xs + ys * 1j)
    c *= scale
    polys = fourier_to_polygons(c, config.num_reconstr_points)
    return np.hstack([polys, (score * inside)[sel].reshape(-1, 1)])


def fce_level_boundaries(cls: np.ndarray, reg: np.ndarray, scale: int, config: FCEPostprocessConfig) -> np.ndarray:
    """Boundary rows [n, 2P + 1] (float64; integer coordinates at input resolution, then the score) of one level:
    cls [h, w, 4] and reg [h, w, 2(2k + 1)] logits / coefficients of one image."""
    reg = np.asarray(reg, np.float32)
    score = fce_score_map(cls, config.alpha, config.beta)
    mask = fill_hole(score > config.score_thr)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    kept = []
    for contour in contours:
        inside = np.zeros(mask.shape, np.int8)
        cv2.drawContours(inside, [contour], -1, 1, -1)
        kept.append(poly_nms(_contour_candidates(score, inside, reg, scale, config), config.nms_thr))
    width = 2 * config.num_reconstr_points + 1
    return poly_nms(np.concatenate(kept) if kept else np.zeros((0, width)), config.nms_thr)


def _to_quads(rows: np.ndarray) -> np.ndarray:
    quads = [cv2.boxPoints(cv2.minAreaRect(r[:-1].reshape(-1, 2).astype(np.float32))) for r in rows]
    return np.array([np.append(np.trunc(q).reshape(-1), r[-1]) for q, r in zip(quads, rows, strict=True)])


def fce_postprocess(
    cls_levels: Sequence[np.ndarray],
    reg_levels: Sequence[np.ndarray],
    config: FCEPostprocessConfig | str | None = None,
    *,
    scale: tuple[float, float] | None = None,
    **overrides,
) -> np.ndarray:
    """Boundary rows ``[x0, y0, ..., score]`` (float64 [n, 2P + 1]) of one image from its per-level head outputs.

    ``cls_levels[l]`` [h_l, w_l, 4] and ``reg_levels[l]`` [h_l, w_l, 2(2k + 1)] at stride ``config.scales[l]``.
    ``scale = (w_scale, h_scale)`` (resized / original) maps the coordinates back to the original image.
    """
    config = resolve_config(config, **overrides)
    if not len(cls_levels) == len(reg_levels) == len(config.scales):
        raise ValueError(
            f"FCE post-processing: {len(cls_levels)} cls and {len(reg_levels)} reg maps for scales {config.scales}"
        )
    levels = [
        fce_level_boundaries(c, r, s, config) for c, r, s in zip(cls_levels, reg_levels, config.scales, strict=True)
    ]
    rows = poly_nms(np.concatenate(levels), config.nms_thr)
    if scale is not None:
        factor = np.float32(1.0) / np.asarray(scale, np.float32)
        rows[:, :-1] = rows[:, :-1] * np.tile(factor, (rows.shape[1] - 1) // 2).astype(np.float64)
    if config.text_repr == "quad" and config.true_quad and len(rows):
        rows = _to_quads(rows)
    return rows
