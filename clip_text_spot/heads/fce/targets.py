"""FCENet training targets on the host (NumPy / OpenCV), mmocr 0.4 ``FCENetTargets`` plus TCM's matching level.

Reference: ``fcenet_panet.md`` §2. Per image of size (H, W) (the size before padding):

1. **Level assignment**: a polygon's proportion is ``max(bw, bh) / (H + 1e-8)`` of ``cv2.boundingRect`` of its points
   truncated to integers (inclusive extents; the image *height* divides both). It joins every level ``l`` with
   ``lo_l < proportion < hi_l`` (strict; ranges overlap), as ``polygon / divisor_l`` (float32, unrounded). A polygon
   whose proportion is >= 1 joins no level, not even as an ignore region. Ignore polygons follow the same rule.
   TCM appends a fourth level (divisor 32, range (0, 1)): the matching map of the auxiliary score-map loss.
2. **Maps per level** (h, w) = (H // d, W // d), channels last: ``[..., 0]`` text region (one ``fillPoly`` per
   polygon of the int32-truncated points), ``[..., 1]`` centre region, ``[..., 2]`` effective mask (ones, ignore
   polygons filled with 0), ``[..., 3:3+K]`` real and ``[..., 3+K:]`` imaginary parts of c_{-k..k} (K = 2k + 1),
   the c_0 channel holding ``c_0 - (x + i y)`` of each pixel; later polygons overwrite earlier ones.
3. **Centre region**: per polygon, head and tail edges (``find_head_tail``), the two sidelines, both resampled to
   ``max(int(mean length / step) + 1, 3)`` points, the centre line between them, its ends shortened by
   ``int((end width / 4) // step)`` points each, and one quad per centre-line segment shrunk towards the centre line
   by ``center_region_shrink_ratio``. The quads of *all* polygons of a level go to ONE multi-contour
   ``cv2.fillPoly`` call, which fills with per-scanline parity: where quads overlap, pixels can stay empty. That is the
   official behaviour and is kept (the masks are exact under OpenCV 5; OpenCV 4 rasterises some edges differently).
4. **Fourier signature** (``fourier_signature``): the polygon resampled with ``n_i = int(len_i / total * 400)``
   points per edge, rotated to start at the top-most of the 8 points nearest (in x) to the centroid, the FFT
   coefficients c_{-k..k} (``fft(z) / N``), time-reversed unless |c_1| > |c_-1| (ties: |c_2| > |c_-2|), so the
   contour runs clockwise on screen.

Floating-point types follow the reference operation by operation (float32 sidelines and quads, float64 resampled
polygons and coefficients under NumPy 2's promotion rules), since the int32 truncations make the masks depend on the
last bit. ``normalize_polygon``'s ``argsort`` uses NumPy's default sort like the reference, so ties among the
distances may break differently on other NumPy versions or CPUs; ``stable_sort=True`` makes the start point
deterministic (a documented deviation, off by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

TCM_IC15_RANGES = ((0.0, 0.4), (0.3, 0.7), (0.6, 1.0), (0.0, 1.0))
TCM_CTW_RANGES = ((0.0, 0.25), (0.2, 0.65), (0.55, 1.0), (0.0, 1.0))


@dataclasses.dataclass(frozen=True)
class FCETargetConfig:
    """Constants of ``FCENetCLIPTargets`` (TCM's IC15 pipeline by default: four levels, the last one the matching
    map at stride 32). ``level_proportion_range`` of CTW1500/Total-Text: ``TCM_CTW_RANGES``."""

    fourier_degree: int = 5
    resample_step: float = 4.0
    center_region_shrink_ratio: float = 0.3
    orientation_thr: float = 2.0
    num_resample: int = 400
    level_size_divisors: tuple[int, ...] = (8, 16, 32, 32)
    level_proportion_range: tuple[tuple[float, float], ...] = TCM_IC15_RANGES
    stable_sort: bool = False

    def __post_init__(self):
        if len(self.level_size_divisors) != len(self.level_proportion_range):
            raise ValueError(
                f"FCETargetConfig: {len(self.level_size_divisors)} level divisors but "
                f"{len(self.level_proportion_range)} proportion ranges"
            )

    @property
    def num_channels(self) -> int:
        """3 masks + real and imaginary parts of the 2k + 1 coefficients."""
        return 3 + 2 * (2 * self.fourier_degree + 1)


# ----------------------------------------------------------------------------------------------------------------
# level assignment


def polygon_proportion(poly: np.ndarray, height: int) -> float:
    """``max(bw, bh) / (height + 1e-8)`` of the integer bounding rectangle of the truncated points."""
    _, _, bw, bh = cv2.boundingRect(np.asarray(poly).reshape(-1, 2).astype(np.int32))
    return max(bh, bw) / (height + 1e-8)


def assign_levels(polys: Sequence[np.ndarray], height: int, config: FCETargetConfig) -> np.ndarray:
    """Boolean [n_polys, n_levels]: polygon i is drawn on level l (strict inequalities on both ends)."""
    out = np.zeros((len(polys), len(config.level_proportion_range)), bool)
    for i, poly in enumerate(polys):
        prop = polygon_proportion(poly, height)
        out[i] = [lo < prop < hi for lo, hi in config.level_proportion_range]
    return out


# ----------------------------------------------------------------------------------------------------------------
# centre region


def _slope(vec: np.ndarray) -> np.floating:
    return abs(vec[1] / (vec[0] + 1e-8))


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between ``a`` ([2] or [n, 2]) and ``b`` ([n, 2]), as TextSnake's ``vector_angle``."""

    def unit(v):
        n = np.linalg.norm(v, axis=-1) + 1e-8
        return v / (n.reshape(-1, 1) if v.ndim > 1 else n)

    return np.arccos(np.clip(np.sum(unit(a) * unit(b), axis=-1), -1.0, 1.0))


def _head_tail_many(points: np.ndarray) -> tuple[list[int], list[int]]:
    """The score search of ``find_head_tail`` for polygons of more than 4 points (curved text)."""
    n = len(points)
    pad = np.vstack([points, points[0]])
    edges = pad[1:] - pad[:-1]
    theta_sum, adjacent_theta = [], []
    for i in range(n):
        adj = edges[[(i - 1) % n, (i + 1) % n]]
        theta_sum.append(np.sum(_angle(edges[i], adj)))
        adjacent_theta.append(_angle(adj[0], adj[1]))
    centre = np.mean(points, axis=0)
    edge_dist = np.maximum(np.linalg.norm(pad[1:] - centre, axis=-1), np.linalg.norm(pad[:-1] - centre, axis=-1))
    score = 0.5 * (np.array(theta_sum) / np.pi) + 0.15 * (np.array(adjacent_theta) / np.pi)
    score += 0.35 * (edge_dist / (np.max(edge_dist) + 1e-8))
    position = np.zeros(n)
    if n % 2 == 0:
        position[n // 2 - 1] += 1
        position[-1] += 1
    score += 0.1 * position
    pad_score = np.concatenate([score, score])
    x = np.arange(n - 3) / float(n - 4)
    gaussian = 1.0 / (np.sqrt(2.0 * np.pi) * 0.5) * np.exp(-np.power((x - 0.5) / 0.5, 2.0) / 2)
    gaussian = gaussian / np.max(gaussian)
    matrix = np.stack([score[i] + pad_score[i + 2 : i + n - 1] * gaussian * 0.3 for i in range(n)])
    head_start, tail_offset = np.unravel_index(matrix.argmax(), matrix.shape)
    head_start, tail_start = int(head_start), int((head_start + tail_offset + 2) % n)
    head_end, tail_end = (head_start + 1) % n, (tail_start + 1) % n
    if head_end > tail_end:
        head_start, tail_start, head_end, tail_end = tail_start, head_start, tail_end, head_end
    return [head_start, head_end], [tail_start, tail_end]


def find_head_tail(points: np.ndarray, orientation_thr: float = 2.0) -> tuple[list[int], list[int]]:
    """Point indices of the head and tail edges of a polygon [n >= 4, 2] (TextSnake's ``find_head_tail``).

    Quads: the pair of opposite edges with the smaller slope sum is "horizontal"; the vertical pair is head/tail
    unless the vertical edges are ``orientation_thr`` times longer than the horizontal ones (vertical text).
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[0] < 4 or points.shape[1] != 2:
        raise ValueError(f"find_head_tail needs [n >= 4, 2] points, got {points.shape}")
    if len(points) > 4:
        return _head_tail_many(points)
    p = points
    if _slope(p[1] - p[0]) + _slope(p[3] - p[2]) < _slope(p[2] - p[1]) + _slope(p[0] - p[3]):
        horizontal, vertical = [[0, 1], [2, 3]], [[3, 0], [1, 2]]
    else:
        horizontal, vertical = [[3, 0], [1, 2]], [[0, 1], [2, 3]]

    def length_sum(pairs):
        return np.linalg.norm(p[pairs[0][0]] - p[pairs[0][1]]) + np.linalg.norm(p[pairs[1][0]] - p[pairs[1][1]])

    if length_sum(vertical) > length_sum(horizontal) * orientation_thr:
        return horizontal[0], horizontal[1]
    return vertical[0], vertical[1]


def sidelines(points: np.ndarray, orientation_thr: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(top, bottom) sidelines between the head and tail edges; the one with the larger mean y is the bottom."""
    points = np.asarray(points)
    head, tail = find_head_tail(points, orientation_thr)
    n = len(points)
    tail_end = tail[1] if tail[1] >= 1 else n
    pad = np.vstack([points, points])
    line1, line2 = pad[head[1] : tail_end], pad[tail_end : head[1] + n]
    if (np.mean(line1, axis=0) - np.mean(line2, axis=0))[1] > 0:
        return line2, line1
    return line1, line2


def _curve_lengths(line: np.ndarray) -> tuple[np.ndarray, np.floating]:
    seg = np.sqrt((line[1:, 0] - line[:-1, 0]) ** 2 + (line[1:, 1] - line[:-1, 1]) ** 2)
    return seg, np.sum(seg)


def resample_line(line: np.ndarray, n: int) -> np.ndarray:
    """``n`` points at equal arc-length steps along a polyline (end points kept; float32 interpolation weights)."""
    seg, total = _curve_lengths(line)
    t_cum = np.insert(np.cumsum(seg), 0, 0)
    ts = np.arange(1, n - 1, dtype=np.float32) * (total / (n - 1))
    out, e = [line[0]], 0
    for t in ts:
        while e < len(seg) - 1 and t > t_cum[e + 1]:
            e += 1
        t_l, t_r = t_cum[e], t_cum[e + 1]
        weight = np.array([t_r - t, t - t_l], dtype=np.float32) / (t_r - t_l + 1e-8)
        out.append(np.dot(weight, line[[e, e + 1]]))
    out.append(line[-1])
    return np.vstack(out)


def resample_sidelines(line1: np.ndarray, line2: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Both sidelines resampled to ``max(int(mean length / step) + 1, 3)`` points."""
    _, len1 = _curve_lengths(line1)
    _, len2 = _curve_lengths(line2)
    n = max(int(float((len1 + len2) / 2) / step) + 1, 3)
    return resample_line(line1, n), resample_line(line2, n)


def center_quads(points: np.ndarray, config: FCETargetConfig) -> np.ndarray:
    """int32 [q, 4, 2] quads ``[tl, tr, br, bl]`` of one polygon's text centre region (module docstring, step 3)."""
    top, bot = resample_sidelines(*sidelines(points, config.orientation_thr), config.resample_step)
    bot = bot[::-1]
    centre = (top + bot) / 2
    head_n = int((np.linalg.norm(top[0] - bot[0]) / 4.0) // config.resample_step)
    tail_n = int((np.linalg.norm(top[-1] - bot[-1]) / 4.0) // config.resample_step)
    if len(centre) > head_n + tail_n + 2:
        keep = slice(head_n, len(centre) - tail_n)
        centre, top, bot = centre[keep], top[keep], bot[keep]
    r = config.center_region_shrink_ratio
    quads = [
        np.vstack(
            [
                centre[i] + (top[i] - centre[i]) * r,
                centre[i + 1] + (top[i + 1] - centre[i + 1]) * r,
                centre[i + 1] + (bot[i + 1] - centre[i + 1]) * r,
                centre[i] + (bot[i] - centre[i]) * r,
            ]
        ).astype(np.int32)
        for i in range(len(centre) - 1)
    ]
    return np.stack(quads) if quads else np.zeros((0, 4, 2), np.int32)


def center_region_mask(polys: Sequence[np.ndarray], hw: tuple[int, int], config: FCETargetConfig) -> np.ndarray:
    """uint8 (h, w) centre-region mask: the quads of all polygons in ONE ``cv2.fillPoly`` call (even-odd overlaps)."""
    mask = np.zeros(hw, np.uint8)
    quads = [q for p in polys for q in center_quads(np.asarray(p).reshape(-1, 2), config)]
    if quads:
        cv2.fillPoly(mask, quads, 1)
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Fourier signature


def resample_polygon(poly: np.ndarray, n: int = 400) -> np.ndarray:
    """float64 [<= n, 2]: ``int32(len_i / (total + 1e-8) * n)`` equally spaced points on each edge (start included)."""
    poly = np.asarray(poly)
    m = len(poly)
    lengths = [
        ((poly[i][0] - poly[(i + 1) % m][0]) ** 2 + (poly[i][1] - poly[(i + 1) % m][1]) ** 2) ** 0.5 for i in range(m)
    ]
    total = sum(lengths)
    counts = ((np.array(lengths) / (total + 1e-8)) * n).astype(np.int32)
    out = []
    for i, num in enumerate(counts):
        if num == 0:
            continue
        p1 = poly[i]
        step = (poly[(i + 1) % m] - p1) / num
        out.extend(p1 + step * j for j in range(num))
    return np.array(out)


def normalize_start(poly: np.ndarray, stable_sort: bool = False) -> int:
    """Index of the start point: the top-most (min y) of the 8 points with the smallest |x - mean x|."""
    d = poly - poly.mean(axis=0)
    order = np.argsort(np.abs(d[:, 0]), kind="stable" if stable_sort else None)
    return int(order[np.argmin(d[:, 1][order[:8]])])


def poly2fourier(poly: np.ndarray, k: int) -> np.ndarray:
    """complex128 [2k + 1]: c_{-k..k} of ``fft(x + i y) / N``."""
    z = poly[:, 0] + poly[:, 1] * 1j
    c = np.fft.fft(z) / len(z)
    return np.hstack((c[-k:], c[: k + 1]))


def clockwise(c: np.ndarray, k: int) -> tuple[np.ndarray, bool]:
    """(coefficients, reversed): ``c[::-1]`` unless |c_1| > |c_-1| (on a tie: |c_2| > |c_-2|)."""
    a, b = np.abs(c[k + 1]), np.abs(c[k - 1])
    if a > b:
        return c, False
    if a < b or not np.abs(c[k + 2]) > np.abs(c[k - 2]):
        return c[::-1], True
    return c, False


def fourier_signature(poly: np.ndarray, config: FCETargetConfig) -> np.ndarray:
    """float64 [2k + 1, 2]: [Re, Im] of the clockwise coefficients c_{-k..k} of a polygon [n, 2]."""
    resampled = resample_polygon(poly, config.num_resample)
    start = normalize_start(resampled, config.stable_sort)
    resampled = np.concatenate([resampled[start:], resampled[:start]])
    c, _ = clockwise(poly2fourier(resampled, config.fourier_degree), config.fourier_degree)
    return np.stack([c.real, c.imag], axis=1)


# ----------------------------------------------------------------------------------------------------------------
# maps


def _fill_each(hw: tuple[int, int], polys: Sequence[np.ndarray], init: int, value: int) -> np.ndarray:
    mask = np.full(hw, init, np.uint8)
    for p in polys:
        cv2.fillPoly(mask, np.asarray(p).reshape(1, -1, 2).astype(np.int32), value)
    return mask


def fourier_maps(polys: Sequence[np.ndarray], hw: tuple[int, int], config: FCETargetConfig) -> np.ndarray:
    """float32 (h, w, 2 (2k + 1)): real then imaginary parts of c_{-k..k}; c_0 relative to each pixel."""
    k = config.fourier_degree
    maps = np.zeros((*hw, 2, 2 * k + 1), np.float32)
    for p in polys:
        p = np.asarray(p).reshape(-1, 2)
        mask = _fill_each(hw, [p], 0, 1).astype(bool)
        sig = fourier_signature(p, config)  # [2k + 1, (re, im)]
        maps[mask] = sig.T.astype(np.float32)
        ys, xs = np.nonzero(mask)
        maps[ys, xs, 0, k] = sig[k, 0] - xs
        maps[ys, xs, 1, k] = sig[k, 1] - ys
    return maps.reshape(*hw, -1)


def level_maps(
    polys: Sequence[np.ndarray], ignore_polys: Sequence[np.ndarray], hw: tuple[int, int], config: FCETargetConfig
) -> np.ndarray:
    """float32 (h, w, 3 + 2 (2k + 1)) maps of one level from its (already divided) text and ignore polygons."""
    text = _fill_each(hw, polys, 0, 1)
    centre = center_region_mask(polys, hw, config)
    effective = _fill_each(hw, ignore_polys, 1, 0)
    masks = np.stack([text, centre, effective], axis=-1).astype(np.float32)
    return np.concatenate([masks, fourier_maps(polys, hw, config)], axis=-1)


def fce_targets(
    polys: Sequence[np.ndarray],
    ignore_polys: Sequence[np.ndarray],
    hw: tuple[int, int],
    config: FCETargetConfig = FCETargetConfig(),
) -> list[np.ndarray]:
    """One float32 (H // d, W // d, 3 + 2 (2k + 1)) target per level of ``config`` for one image of size ``hw``.

    ``polys`` / ``ignore_polys`` are point arrays ([n, 2] or flat, float32 as loaded) at input resolution. With the
    TCM config the list is [p3, p4, p5, matching]; the loss takes the first three, the auxiliary head the last.
    """
    h, w = hw
    polys = [np.asarray(p, np.float32).reshape(-1, 2) for p in polys]
    ignore_polys = [np.asarray(p, np.float32).reshape(-1, 2) for p in ignore_polys]
    text_levels, ignore_levels = assign_levels(polys, h, config), assign_levels(ignore_polys, h, config)
    out = []
    for lvl, d in enumerate(config.level_size_divisors):
        text = [p / d for p, on in zip(polys, text_levels[:, lvl], strict=True) if on]
        ignore = [p / d for p, on in zip(ignore_polys, ignore_levels[:, lvl], strict=True) if on]
        out.append(level_maps(text, ignore, (h // d, w // d), config))
    return out
