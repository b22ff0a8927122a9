"""Detectron2-style geometric augmentation for spotters (TESTR, spotting.md §3.5): a random crop that keeps whole
instances, then a shortest-edge resize, on uint8 images and pixel polygons.

``instance_crop_window``: the crop size is ``(h, w) * (min_ratio + U(0, 1) * (1 - min_ratio))`` per axis
(detectron2's ``relative_range``); the window is placed so that it contains the centre of one random instance box,
then grown to the union with every box it cuts until it cuts none (AdelaiDet's ``RandomCropWithInstance`` with
``CROP_INSTANCE: False``; here the growth always runs to the end instead of stopping after 100 rounds).
``resize_shortest_edge``: detectron2's ``ResizeShortestEdge`` (short side to ``short``, long side at most
``max_size``, sides rounded half up), bilinear (OpenCV instead of PIL), then optionally shrunk further to fit a
fixed ``box`` (H, W) so batches keep one static shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np


def polygon_boxes(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """[N, 4] (x0, y0, x1, y1) bounds of pixel polygons."""
    boxes = [np.asarray(p, np.float32).reshape(-1, 2) for p in polygons]
    return np.array([[*b.min(0), *b.max(0)] for b in boxes], np.float32).reshape(-1, 4)


def instance_crop_window(
    rng: np.random.Generator, image_hw: tuple[int, int], boxes: np.ndarray, min_ratio: float = 0.1
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a crop window containing one random instance's centre and cutting no box."""
    h, w = image_hw
    ch = min(h, max(1, int(h * (min_ratio + rng.random() * (1 - min_ratio)) + 0.5)))
    cw = min(w, max(1, int(w * (min_ratio + rng.random() * (1 - min_ratio)) + 0.5)))
    if not len(boxes):
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return x0, y0, x0 + cw, y0 + ch
    bx0, by0, bx1, by1 = boxes[int(rng.integers(len(boxes)))]
    start = []
    for centre, size, side in (((by0 + by1) / 2, ch, h), ((bx0 + bx1) / 2, cw, w)):
        lo = max(math.floor(centre) - size, 0)
        hi = max(min(side - size, math.ceil(centre)), lo)
        start.append(int(rng.integers(lo, hi + 1)))
    y0, x0 = start
    x1, y1 = x0 + cw, y0 + ch
    clipped = np.clip(boxes, 0, [w, h, w, h])  # a box past the border can only be cut at the border
    changed = True
    while changed:
        changed = False
        for a0, b0, a1, b1 in clipped:
            overlaps = a0 < x1 and a1 > x0 and b0 < y1 and b1 > y0
            if overlaps and not (a0 >= x0 and b0 >= y0 and a1 <= x1 and b1 <= y1):
                x0, y0 = min(x0, math.floor(a0)), min(y0, math.floor(b0))
                x1, y1 = max(x1, math.ceil(a1)), max(y1, math.ceil(b1))
                changed = True
    return x0, y0, x1, y1


def crop_instances(
    image: np.ndarray, polygons: Sequence[np.ndarray], window: tuple[int, int, int, int]
) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """(cropped image, shifted polygons that overlap the window, their indices)."""
    x0, y0, x1, y1 = window
    kept, index = [], []
    for i, (a0, b0, a1, b1) in enumerate(polygon_boxes(polygons)):
        if a0 < x1 and a1 > x0 and b0 < y1 and b1 > y0:
            kept.append(np.asarray(polygons[i], np.float32).reshape(-1, 2) - np.array([x0, y0], np.float32))
            index.append(i)
    return image[y0:y1, x0:x1], kept, index


def shortest_edge_size(
    hw: tuple[int, int], short: int, max_size: int, box: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(new h, new w) of detectron2's ``ResizeShortestEdge``, then shrunk to fit ``box`` (H, W) if given."""
    h, w = hw
    scale = short / min(h, w)
    nh, nw = h * scale, w * scale
    if max(nh, nw) > max_size:
        f = max_size / max(nh, nw)
        nh, nw = nh * f, nw * f
    if box is not None and (nh > box[0] or nw > box[1]):
        f = min(box[0] / nh, box[1] / nw)
        nh, nw = nh * f, nw * f
    nh, nw = max(1, int(nh + 0.5)), max(1, int(nw + 0.5))
    return (min(nh, box[0]), min(nw, box[1])) if box is not None else (nh, nw)


def resize_shortest_edge(
    image: np.ndarray,
    polygons: Sequence[np.ndarray],
    short: int,
    max_size: int,
    box: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], tuple[float, float]]:
    """(resized image, scaled polygons, (sx, sy) = new / old per axis)."""
    h, w = image.shape[:2]
    nh, nw = shortest_edge_size((h, w), short, max_size, box)
    out = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    sx, sy = nw / w, nh / h
    return out, [np.asarray(p, np.float32).reshape(-1, 2) * np.array([sx, sy], np.float32) for p in polygons], (sx, sy)
