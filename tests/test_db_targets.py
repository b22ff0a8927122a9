"""DBNet targets: hand-computed rectangle, shrink geometry, threshold-map bounds, ignore handling, and agreement with
a direct transcription of mmocr's ``draw_border_map`` / ``point2line`` (cosine form, eval_data.md §4.2)."""

import cv2
import numpy as np
import pyclipper
import pytest
import shapely

from clip_text_spot.heads.db.targets import DBTargetConfig, db_targets, is_invalid_polygon, shrink_polygon


def _rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def _reference_point2line(xs, ys, p1, p2):
    """mmocr's point2line as documented: -cos at X from the law of cosines, endpoint distance where it is < 0."""
    eps = np.finfo(np.float32).eps
    a2 = np.square(xs - p1[0]) + np.square(ys - p1[1])
    b2 = np.square(xs - p2[0]) + np.square(ys - p2[1])
    c2 = np.square(p1[0] - p2[0]) + np.square(p1[1] - p2[1])
    neg_cos = np.clip((c2 - a2 - b2) / (eps + 2 * np.sqrt(a2 * b2)), -1.0, 1.0)
    sin2 = np.nan_to_num(1 - np.square(neg_cos))
    d = np.sqrt(a2 * b2 * sin2 / (eps + c2))
    d[neg_cos < 0] = np.sqrt(np.fmin(a2, b2))[neg_cos < 0]
    return d


def _reference_thr(polys, shape, r=0.4):
    """mmocr's draw_border_map over the full bounding box of the dilated polygon, then the valid window."""
    canvas = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    for poly in polys:
        poly = np.array(poly, np.float64)
        sp = shapely.Polygon(poly)
        dist = sp.area * (1 - r**2) / sp.length
        pco = pyclipper.PyclipperOffset()
        pco.AddPath([tuple(p) for p in poly], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
        padded = np.array(pco.Execute(dist)[0])
        cv2.fillPoly(mask, [padded.astype(np.int32)], 1)
        xmin, xmax = padded[:, 0].min(), padded[:, 0].max()
        ymin, ymax = padded[:, 1].min(), padded[:, 1].max()
        w, h = xmax - xmin + 1, ymax - ymin + 1
        shifted = poly - (xmin, ymin)
        xs = np.broadcast_to(np.linspace(0, w - 1, num=w).reshape(1, w), (h, w))
        ys = np.broadcast_to(np.linspace(0, h - 1, num=h).reshape(h, 1), (h, w))
        dmap = np.stack(
            [
                np.clip(_reference_point2line(xs, ys, shifted[i], shifted[(i + 1) % len(poly)]) / dist, 0, 1)
                for i in range(len(poly))
            ]
        ).min(axis=0)
        x0, x1 = min(max(0, xmin), shape[1] - 1), min(max(0, xmax), shape[1] - 1)
        y0, y1 = min(max(0, ymin), shape[0] - 1), min(max(0, ymax), shape[0] - 1)
        window = 1 - dmap[y0 - ymin : y1 - ymax + h, x0 - xmin : x1 - xmax + w]
        canvas[y0 : y1 + 1, x0 : x1 + 1] = np.fmax(window, canvas[y0 : y1 + 1, x0 : x1 + 1])
    return canvas * 0.4 + 0.3, mask


def test_rectangle_hand_computed():
    # 100x20 at (50, 40): D = int(2000 * 0.84 / 240.001 + 0.5) = 7 -> kernel x 57..143, y 47..53 (fillPoly inclusive).
    t, ignored = db_targets([_rect(50, 40, 150, 60)], [False], (100, 200))
    assert not ignored[0]
    shrink = t["gt_shrink"]
    assert shrink.sum() == 87 * 7
    assert np.all(shrink[47:54, 57:144] == 1)
    assert np.all(t["gt_shrink_mask"] == 1)
    # threshold: dilation D = 7.0, so the border ridge is 0.7 on the edges, 0.3 from 7 px away.
    thr = t["gt_thr"]
    assert thr[40, 100] == pytest.approx(0.7)  # on the top edge
    assert thr[43, 100] == pytest.approx(0.3 + 0.4 * (1 - 3 / 7), abs=1e-6)  # 3 px inside
    assert thr[36, 100] == pytest.approx(0.3 + 0.4 * (1 - 4 / 7), abs=1e-6)  # 4 px outside
    assert thr[50, 100] == pytest.approx(0.3)  # centre: 10 px from the long edges
    assert thr[40, 40] == pytest.approx(0.3)  # 10 px left of the left edge
    # the acute-angle rule: near a corner, the distance is to the corner point
    assert thr[37, 47] == pytest.approx(0.3 + 0.4 * (1 - np.hypot(3, 3) / 7), abs=1e-6)
    # threshold mask: the rounded dilation, bbox [43, 157] x [33, 67]
    m = t["gt_thr_mask"]
    assert np.all(m[40:61, 43:158] == 1) and np.all(m[33:68, 50:151] == 1)
    assert m[33, 43] == 0 and m[67, 157] == 0  # rounded corners
    assert m[:, :42].sum() == 0 and m[:32].sum() == 0 and m[69:].sum() == 0 and m[:, 159:].sum() == 0


def test_shrink_follows_d_equals_a_one_minus_r2_over_l():
    # Rectangle W x H: D = A (1 - r^2) / L, shrunk (W - 2D)(H - 2D) = r^2 A + 4 D^2 (sharp inner corners).
    w, h = 300, 60
    d = w * h * (1 - 0.4**2) / (2 * (w + h))
    assert d == pytest.approx(21.0)
    shrunk = shrink_polygon(_rect(0, 0, w, h), 0.4)
    area = shapely.Polygon(shrunk).area
    assert area == pytest.approx((w - 2 * 21) * (h - 2 * 21))
    assert area / (w * h) == pytest.approx(0.4**2 + 4 * 21**2 / (w * h))


def test_kernels_inside_their_polygons_and_threshold_map_bounds():
    rng = np.random.default_rng(0)
    polys = []
    for cx, cy in [(80, 60), (220, 70), (120, 170), (250, 180)]:
        w, h = rng.uniform(40, 90), rng.uniform(14, 30)
        box = cv2.boxPoints(((cx, cy), (w, h), rng.uniform(-40, 40)))
        polys.append(box.astype(np.float32))
    t, ignored = db_targets(polys, [False] * 4, (240, 320))
    assert not ignored.any()
    inside = np.zeros((240, 320), np.uint8)
    cv2.fillPoly(inside, [p.astype(np.int32) for p in polys], 1)
    assert t["gt_shrink"].sum() > 0
    assert np.all(inside[t["gt_shrink"] > 0] == 1)
    thr = t["gt_thr"]
    assert thr.min() >= 0.3 - 1e-7 and thr.max() <= 0.7 + 1e-7
    # above 0.3 only inside the dilated polygons (1 px tolerance for their integer rasterisation)
    near_mask = cv2.dilate(t["gt_thr_mask"], np.ones((3, 3), np.uint8))
    assert np.all(near_mask[thr > 0.3 + 1e-6] == 1)
    assert set(np.unique(t["gt_thr_mask"])) == {0.0, 1.0}


def test_threshold_map_matches_mmocr_transcription():
    rng = np.random.default_rng(1)
    polys = [
        cv2.boxPoints(((60, 50), (90, 26), 17)).astype(np.float32),
        np.array([[150, 20], [230, 35], [220, 70], [160, 60]], np.float32) + rng.uniform(0, 1, (4, 2)),
    ]
    xs = np.linspace(20, 200, 7)  # a curved 14-point band
    top = np.stack([xs, 150 + 15 * np.sin(xs / 40)], 1)
    polys.append(np.concatenate([top, (top + [0, 22])[::-1]]).astype(np.float32))
    polys.append(_rect(-10, 200, 60, 235))  # cut by the image border
    t, _ = db_targets(polys, [False] * len(polys), (220, 256))
    ref_thr, ref_mask = _reference_thr(polys, (220, 256))
    np.testing.assert_array_equal(t["gt_thr_mask"], ref_mask.astype(np.float32))
    np.testing.assert_allclose(t["gt_thr"], ref_thr, atol=2e-4)


def test_ignored_invalid_and_split_polygons_are_masked_out():
    given_ignored = _rect(10, 10, 80, 40)
    too_thin = _rect(100, 10, 180, 15)  # short side 5 < 8
    # two 40x40 squares joined by an 8 px bridge: the inward offset (D = 10) splits it in two
    dumbbell = np.array(
        [
            [10, 60],
            [50, 60],
            [50, 76],
            [90, 76],
            [90, 60],
            [130, 60],
            [130, 100],
            [90, 100],
            [90, 84],
            [50, 84],
            [50, 100],
            [10, 100],
        ],
        np.float32,
    )
    kept = _rect(150, 60, 230, 90)
    polys = [given_ignored, too_thin, dumbbell, kept]
    assert is_invalid_polygon(too_thin, 8) and not is_invalid_polygon(dumbbell, 8)
    assert shrink_polygon(dumbbell, 0.4) is None
    t, ignored = db_targets(polys, [True, False, False, False], (120, 240))
    assert ignored.tolist() == [True, True, True, False]
    for poly in polys[:3]:
        region = np.zeros((120, 240), np.uint8)
        cv2.fillPoly(region, [poly.astype(np.int32)], 1)
        assert np.all(t["gt_shrink_mask"][region == 1] == 0)
        assert np.all(t["gt_shrink"][region == 1] == 0)
        assert np.all(t["gt_thr"][region == 1] == pytest.approx(0.3))
    assert t["gt_shrink_mask"][75, 190] == 1 and t["gt_shrink"][75, 190] == 1
    assert t["gt_thr_mask"][:, :140].sum() == 0  # only the kept polygon has a border map


def test_empty_image_and_bad_input():
    t, ignored = db_targets([], [], (32, 48))
    assert ignored.shape == (0,)
    assert np.all(t["gt_shrink"] == 0) and np.all(t["gt_shrink_mask"] == 1) and np.all(t["gt_thr"] == np.float32(0.3))
    with pytest.raises(ValueError, match="ignore flags"):
        db_targets([_rect(0, 0, 10, 10)], [], (32, 48))
    with pytest.raises(ValueError, match="shrink_ratio"):
        DBTargetConfig(shrink_ratio=1.5)
