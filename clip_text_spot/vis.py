"""Pictures people look at: polygons (and optional text) drawn over images, saved as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

PRED_COLOR = (0, 200, 0)
GT_COLOR = (230, 40, 40)
IGNORE_COLOR = (240, 200, 0)


def draw_polygons(
    image: np.ndarray,
    polygons: Sequence[np.ndarray],
    color: tuple[int, int, int],
    *,
    labels: Sequence[str] | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """A copy of RGB uint8 ``image`` with closed ``polygons`` ([n, 2] x, y pixels) and optional labels drawn."""
    out = np.ascontiguousarray(image.copy())
    scale = max(0.4, min(out.shape[:2]) / 800)
    for i, poly in enumerate(polygons):
        pts = np.round(np.asarray(poly, np.float64).reshape(-1, 2)).astype(np.int32)
        if len(pts) < 2:
            continue
        cv2.polylines(out, [pts], True, color, thickness, cv2.LINE_AA)
        if labels is not None and labels[i]:
            x, y = pts[:, 0].min(), max(pts[:, 1].min() - 4, 10)
            cv2.putText(out, labels[i], (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return out


def denormalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Float ``(x - mean) / std`` image back to RGB uint8."""
    return np.clip(np.asarray(image) * np.asarray(std) + np.asarray(mean), 0, 255).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image (directories created)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
