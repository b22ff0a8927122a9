"""Polygon geometry for the detection and spotting metrics: validity policies, areas, pairwise intersections and IoU.

Everything is vectorised with shapely 2 (GEOS): polygons of any vertex count are built in one call, candidate pairs
come from an STRtree bounding-box query, and only intersecting pairs get an exact intersection.

How an *invalid* polygon (self-intersecting, repeated vertices, zero area) is treated differs between the reference
implementations and changes counts, so it is a named policy (see ``eval_data.md`` §1.2):

``gpc``
    What the official RRC scripts compute with Polygon2/Polygon3 (GPC clipping): the polygon's own area is the
    absolute shoelace sum of the ring as given (a symmetric bow-tie has area 0), intersections use the even-odd
    filled region (shapely ``make_valid``), and the union is ``area_d + area_g - inter``. For valid polygons this is
    plain shapely geometry. Checked against Polygon3 on 3000 random integer quads (most self-intersecting): the
    match decisions (IoU > 0.5, area precision > 0.5) agreed on all but one degenerate pair.
``buffer0``
    mmocr 0.x (TCM / FastTCM): an invalid polygon is replaced by ``buffer(0)`` for intersections and unions; the
    don't-care area-precision denominator is the raw polygon's area.
``mmocr1``
    mmocr 1.x ``poly_make_valid``: ``buffer(0)``, and a MultiPolygon result becomes its convex hull; areas from the
    repaired polygon.
``skip``
    DB (``concern/icdar2015_eval``): polygons that are not valid or not simple are dropped, ground truth included.
``error``
    The curved RRC scripts (TIoU, AdelaiDet) assert validity: an invalid polygon is an input error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import shapely

GEOMETRY_POLICIES = ("gpc", "buffer0", "mmocr1", "skip", "error")


@dataclasses.dataclass
class PreparedPolygons:
    """Polygons ready for pairwise measures.

    ``geoms`` are the (valid) geometries used for intersections; ``union_area`` is the per-polygon area that enters
    ``union = a + b - inter``; ``own_area`` is the denominator of the don't-care area precision; ``valid`` flags
    the polygons that were valid as given (and simple, for the ``skip`` policy).
    """

    geoms: np.ndarray
    union_area: np.ndarray
    own_area: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.geoms)

    def subset(self, keep: np.ndarray) -> PreparedPolygons:
        """The polygons selected by a boolean mask or index array."""
        return PreparedPolygons(self.geoms[keep], self.union_area[keep], self.own_area[keep], self.valid[keep])


def polygons_from_points(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Build shapely polygons (object array) from ``[n_i, 2]`` point arrays with ``n_i >= 3``, in one GEOS call."""
    if len(polygons) == 0:
        return np.empty(0, dtype=object)
    arrays = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons]
    short = [i for i, a in enumerate(arrays) if len(a) < 3]
    if short:
        raise ValueError(f"polygon {short[0]} has {len(arrays[short[0]])} points; at least 3 are needed")
    coords = np.concatenate(arrays)
    indices = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    return shapely.polygons(shapely.linearrings(coords, indices=indices))


def prepare_polygons(
    polygons: Sequence[np.ndarray], policy: str = "gpc", *, int_coords: bool = False
) -> PreparedPolygons:
    """Apply a validity policy (module docstring) to point arrays; ``int_coords`` truncates with ``int()`` first.

    For the ``skip`` and ``error`` policies the caller removes or rejects the polygons flagged ``~valid``.
    """
    if policy not in GEOMETRY_POLICIES:
        raise ValueError(f"unknown geometry policy {policy!r}; choose one of {GEOMETRY_POLICIES}")
    if int_coords:
        polygons = [np.trunc(np.asarray(p, dtype=np.float64)) for p in polygons]
    raw = polygons_from_points(polygons)
    raw_area = shapely.area(raw) if len(raw) else np.zeros(0)
    valid = shapely.is_valid(raw) if len(raw) else np.zeros(0, bool)
    if policy == "skip" and len(raw):
        valid &= shapely.is_simple(raw)
    geoms = raw.copy()
    bad = ~valid
    if policy == "gpc":
        geoms[bad] = shapely.make_valid(raw[bad])
        return PreparedPolygons(geoms, raw_area, raw_area, valid)
    if policy in ("buffer0", "mmocr1"):
        geoms[bad] = shapely.buffer(raw[bad], 0)
        if policy == "buffer0":
            return PreparedPolygons(geoms, shapely.area(geoms), raw_area, valid)
        multi = shapely.get_type_id(geoms) == shapely.GeometryType.MULTIPOLYGON
        geoms[multi] = shapely.convex_hull(geoms[multi])
        area = shapely.area(geoms)
        return PreparedPolygons(geoms, area, area, valid)
    return PreparedPolygons(geoms, raw_area, raw_area, valid)


def intersection_areas(a: PreparedPolygons, b: PreparedPolygons) -> np.ndarray:
    """``[len(a), len(b)]`` matrix of intersection areas; pairs whose envelopes miss each other are 0 without GEOS work.

    A GEOS failure on a pair (only possible with un-repaired invalid input) gives 0 for that pair, as the official
    scripts' ``except: return 0``.
    """
    out = np.zeros((len(a), len(b)))
    if len(a) == 0 or len(b) == 0:
        return out
    ia, ib = shapely.STRtree(b.geoms).query(a.geoms, predicate="intersects")
    if len(ia) == 0:
        return out
    try:
        out[ia, ib] = shapely.area(shapely.intersection(a.geoms[ia], b.geoms[ib]))
    except shapely.errors.GEOSException:
        for i, j in zip(ia, ib, strict=True):
            try:
                out[i, j] = shapely.area(shapely.intersection(a.geoms[i], b.geoms[j]))
            except shapely.errors.GEOSException:
                out[i, j] = 0.0
    return out


def iou_from_intersections(inter: np.ndarray, gt: PreparedPolygons, det: PreparedPolygons) -> np.ndarray:
    """IoU ``inter / (area_g + area_d - inter)``; 0 where that union is 0 (a zero division in the scripts). With
    ``gpc`` areas of invalid polygons the union can be negative, and so can the IoU, as in the official script."""
    union = gt.union_area[:, None] + det.union_area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union != 0, inter / union, 0.0)
    return iou


def dont_care_detections(
    inter: np.ndarray, det: PreparedPolygons, gt_dont_care: np.ndarray, *, thr: float = 0.5, eps: float = 0.0
) -> np.ndarray:
    """Detections whose area precision ``inter / (area_d + eps)`` exceeds ``thr`` (strict) against any single
    don't-care ground truth (not against their union); a detection of zero area has precision 0."""
    if len(det) == 0 or not np.any(gt_dont_care):
        return np.zeros(len(det), bool)
    den = det.own_area + eps
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(den[None, :] > 0, inter[gt_dont_care] / den[None, :], 0.0)
    return np.any(precision > thr, axis=0)


def rrc_clockwise_sum(points: np.ndarray) -> float:
    """The official IC15 orientation sum ``sum (x[i+1]-x[i]) * (y[i+1]+y[i])`` over int-cast points; a quad is
    rejected by the official script when it is positive (visually counter-clockwise in image coordinates)."""
    p = np.trunc(np.asarray(points, dtype=np.float64)).reshape(-1, 2)
    q = np.roll(p, -1, axis=0)
    return float(np.sum((q[:, 0] - p[:, 0]) * (q[:, 1] + p[:, 1])))


def is_shapely_ccw(points: np.ndarray) -> bool:
    """``LinearRing(points).is_ccw`` on raw image coordinates, which the curved RRC scripts reject."""
    return bool(shapely.is_ccw(shapely.linearrings(np.asarray(points, dtype=np.float64).reshape(-1, 2))))
