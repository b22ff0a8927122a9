"""TESTR training targets from polygons and transcriptions (spotting.md §3.1; ``prepare_targets`` of
``adet/modeling/transformer_detector.py``), on the host.

Per image, after augmentation (``h, w`` = the resized image, not the padded batch): ``ctrl_points`` = the polygon's
``P`` control points / (w, h) ``[N, P, 2]``; ``boxes`` = its bounding box xyxy / (w, h, w, h) as cxcywh ``[N, 4]``;
``texts`` ``[N, T]`` character indices padded with ``pad = voc_size``; ``labels`` all 0 (one class).

Control points: TESTR reads ``P = 16`` points per word from its ``*_poly.json`` files (upper side left to right, then
lower side right to left), made offline from the datasets' annotations by a step that is not published. Here a
polygon that already has ``P`` points in that layout is taken as is; any other one is resampled (a choice): a quad
is ordered by ``clip_text_spot.rectify.order_quad``; a polygon in the Total-Text / CTW1500 layout (``layout="paired"``:
``2m`` points, top then bottom) is split into its halves; any other (``layout="contour"`` or an odd point count)
gets its top and bottom sides from ``rectify.polygon_sides``; each side is then resampled to ``P / 2`` points at
uniform arc length. Boxes are the bounds of the polygon as annotated (detectron2 takes the annotation's box).

Text: characters index a ``charset`` string (the official 95 printable ASCII characters ``CTLABELS`` for voc 96, or
any other table); a character outside it maps to ``unknown = len(charset)`` (= ``voc_size - 1``), words are cut to
``T`` characters and padded with ``pad = len(charset) + 1`` (= ``voc_size``). Instances flagged ``ignore`` (``###``
don't-care words, degenerate polygons) are dropped, as TESTR's training annotations carry no don't-care words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from clip_text_spot.rectify import order_quad, paired_sides, polygon_sides

CTLABELS = "".join(chr(c) for c in range(32, 127))  # TESTR's 95-character table (voc_size 96)
POLYGON_LAYOUTS = ("paired", "contour")


class SpotTargets(NamedTuple):
    """A batch of targets padded to ``N`` instances per image (a pytree of arrays), valid instances first."""

    ctrl_points: np.ndarray  # [B, N, P, 2] float32, normalised by the image's (w, h)
    boxes: np.ndarray  # [B, N, 4] float32 cxcywh, normalised
    texts: np.ndarray  # [B, N, T] int32, pad = voc_size
    labels: np.ndarray  # [B, N] int32 (0)
    valid: np.ndarray  # [B, N] bool


def box_xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """[..., 4] (x0, y0, x1, y1) -> (cx, cy, w, h) ."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def ctrl_points_from_polygon(polygon: np.ndarray, num_points: int = 16, layout: str = "paired") -> np.ndarray:
    """[num_points, 2] control points (upper side left to right, lower side right to left) of a polygon [n, 2]."""
    if layout not in POLYGON_LAYOUTS:
        raise ValueError(f"layout must be one of {POLYGON_LAYOUTS}, got {layout!r}")
    if num_points % 2:
        raise ValueError(f"num_points must be even (two sides), got {num_points}")
    p = np.asarray(polygon, np.float32).reshape(-1, 2)
    if len(p) == num_points and layout == "paired":
        return p
    half = num_points // 2
    if len(p) == 4:
        top, bottom = paired_sides(order_quad(p), half)
    elif layout == "paired" and len(p) % 2 == 0:
        top, bottom = paired_sides(p, half)
    else:
        top, bottom = polygon_sides(p, half)
    return np.concatenate([top, bottom[::-1]]).astype(np.float32)


def encode_text(text: str, charset: str, max_chars: int) -> np.ndarray:
    """[max_chars] int32 indices into ``charset``; unknown characters -> len(charset), padding -> len(charset) + 1."""
    index = {c: i for i, c in enumerate(charset)}
    codes = [index.get(c, len(charset)) for c in text[:max_chars]]
    return np.array(codes + [len(charset) + 1] * (max_chars - len(codes)), np.int32)


def image_targets(
    polygons: Sequence[np.ndarray],
    texts: Sequence[str],
    ignore: Sequence[bool],
    image_hw: tuple[int, int],
    charset: str = CTLABELS,
    num_points: int = 16,
    max_chars: int = 25,
    layout: str = "paired",
) -> dict[str, np.ndarray]:
    """One image's targets (``ctrl_points``, ``boxes``, ``texts``, ``labels``) from pixel polygons in the
    (augmented, resized) image of size ``image_hw`` = (h, w)."""
    h, w = image_hw
    keep = [i for i, flag in enumerate(ignore) if not flag]
    scale = np.array([w, h], np.float32)
    ctrl = [ctrl_points_from_polygon(polygons[i], num_points, layout) for i in keep]
    bounds = [np.asarray(polygons[i], np.float32).reshape(-1, 2) for i in keep]
    xyxy = np.array([[*b.min(0), *b.max(0)] for b in bounds], np.float32).reshape(-1, 4)
    return {
        "ctrl_points": (np.stack(ctrl) / scale if ctrl else np.zeros((0, num_points, 2))).astype(np.float32),
        "boxes": box_xyxy_to_cxcywh(xyxy / np.tile(scale, 2)).astype(np.float32),
        "texts": np.array([encode_text(texts[i], charset, max_chars) for i in keep], np.int32).reshape(-1, max_chars),
        "labels": np.zeros(len(keep), np.int32),
    }


def batch_targets(per_image: Sequence[dict[str, np.ndarray]], max_instances: int, pad_text: int) -> SpotTargets:
    """Pads each image's targets to ``max_instances`` (extra instances dropped) and stacks them."""
    b = len(per_image)
    p, t = per_image[0]["ctrl_points"].shape[1], per_image[0]["texts"].shape[1]
    out = SpotTargets(
        ctrl_points=np.zeros((b, max_instances, p, 2), np.float32),
        boxes=np.tile(np.array([0.5, 0.5, 1.0, 1.0], np.float32), (b, max_instances, 1)),
        texts=np.full((b, max_instances, t), pad_text, np.int32),
        labels=np.zeros((b, max_instances), np.int32),
        valid=np.zeros((b, max_instances), bool),
    )
    for i, tg in enumerate(per_image):
        n = min(len(tg["labels"]), max_instances)
        for name in ("ctrl_points", "boxes", "texts", "labels"):
            getattr(out, name)[i, :n] = tg[name][:n]
        out.valid[i, :n] = True
    return out
