"""DB post-processing on synthetic probability maps, with hand-computed geometry (mmocr 0.x semantics)."""

import numpy as np
import pytest

from clip_text_spot.heads.db.postprocess import (
    DB_PRESETS,
    db_postprocess,
    db_postprocess_batch,
    mean_score_in_polygon,
    unclip,
)
from clip_text_spot.metrics.detection import Counts, evaluate_detection
from clip_text_spot.metrics.submission_io import TextInstances, load_annotations, write_submission


def rect_map(h=100, w=200, value=0.9):
    """Text pixels rows 40..59, cols 50..149: contour (50,40)-(149,59), area 99*19 = 1881, perimeter 236,
    unclip distance 1.5 * 1881 / 236 = 11.96 -> expanded box x 38..161, y 28..71 (short side 43)."""
    prob = np.zeros((h, w), np.float32)
    prob[40:60, 50:150] = value
    return prob


EXPANDED = [[38, 28], [161, 28], [161, 71], [38, 71]]


def as_set(quad):
    return sorted(map(tuple, np.asarray(quad).tolist()))


def test_rectangle_gives_the_expanded_quad():
    ((quad, score),) = db_postprocess(rect_map())
    assert as_set(quad) == as_set(EXPANDED)
    assert score == pytest.approx(0.9, abs=1e-6)


def test_score_is_mean_probability_inside():
    prob = rect_map()
    prob[40:60, 100:150] = 1.0  # left half 0.6, right half 1.0
    prob[40:60, 50:100] = 0.6
    ((_, score),) = db_postprocess(prob)
    assert score == pytest.approx(0.8, abs=1e-6)
    assert mean_score_in_polygon(prob, np.array([[100, 40], [149, 40], [149, 59], [100, 59]])) == pytest.approx(1.0)
    assert db_postprocess(rect_map(value=0.25), mask_thr=0.2) == []  # score 0.25 < min_text_score 0.3


def test_small_blobs_are_dropped():
    prob = rect_map()
    prob[5:7, 5:7] = 0.9  # 2x2 blob: unclipped short side 1 < 5
    prob[90, 190] = 0.9  # one pixel: a 1-point contour
    results = db_postprocess(prob)
    assert len(results) == 1 and as_set(results[0][0]) == as_set(EXPANDED)


def test_min_text_width_is_strict_and_max_candidates_off_by_one():
    assert db_postprocess(rect_map(), min_text_width=43) == []  # short side 43 is not > 43
    assert len(db_postprocess(rect_map(), min_text_width=42.9)) == 1
    prob = np.zeros((60, 400), np.float32)
    for i in range(5):
        prob[20:40, 10 + 80 * i : 60 + 80 * i] = 0.9
    assert len(db_postprocess(prob)) == 5
    assert len(db_postprocess(prob, max_candidates=1)) == 2  # mmocr breaks when the index exceeds max_candidates


def test_poly_mode_and_unclip_geometry():
    ring = unclip(np.array([[0, 0], [100, 0], [100, 20], [0, 20]]), 1.5)  # D = 2000 * 1.5 / 240 = 12.5
    assert len(ring) == 20 and ring.min(0).tolist() == [-13, -13] and ring.max(0).tolist() == [113, 33]
    ((poly, score),) = db_postprocess(rect_map(), text_repr="poly")
    assert len(poly) > 4 and poly.min(0).tolist() == [38, 28] and poly.max(0).tolist() == [161, 71]
    assert unclip(np.array([[0, 0], [0, 0], [0, 0], [0, 0]]), 1.5) is None


def test_rescale_to_original_image():
    ((quad, _),) = db_postprocess(rect_map(), scale=(0.5, 2.0))
    assert as_set(quad) == as_set([[76, 14], [322, 14], [322, 35.5], [76, 35.5]])


def test_batch_presets_and_errors():
    maps = np.stack([rect_map(), np.zeros((100, 200), np.float32)])[:, None]
    out = db_postprocess_batch(maps, scales=[(1.0, 1.0), (2.0, 2.0)])
    assert len(out) == 2 and len(out[0]) == 1 and out[1] == []
    cropped = db_postprocess_batch(maps, valid_sizes=[(50, 200), (100, 200)])
    assert len(cropped[0]) == 1 and cropped[0][0][0][:, 1].max() < 71  # text cut at row 50
    ic15 = DB_PRESETS["tcm_ic15"]
    assert (ic15.mask_thr, ic15.min_text_score, ic15.min_text_width, ic15.unclip_ratio) == (0.28, 0.2, 2, 1.6)
    assert DB_PRESETS["tcm_td500"].epsilon_ratio is None and DB_PRESETS["tcm_totaltext"].text_repr == "poly"
    assert len(db_postprocess(rect_map(), "tcm_ic15")) == 1
    with pytest.raises(ValueError, match="unknown DB preset"):
        db_postprocess(rect_map(), "nope")
    with pytest.raises(ValueError, match="text_repr"):
        db_postprocess(rect_map(), text_repr="box")
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        db_postprocess(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="scales has 1 entries"):
        db_postprocess_batch(maps, scales=[(1.0, 1.0)])


def test_postprocess_to_submission_and_back(tmp_path):
    prob = np.zeros((200, 300), np.float32)
    prob[40:60, 50:150] = 0.9
    prob[120:150, 100:250] = 0.8
    preds = db_postprocess(prob)
    path = write_submission(tmp_path / "sub.zip", {3: preds}, with_scores=True)
    dets = load_annotations(path, fmt="icdar2015", role="det", strict=True).items
    gt_boxes = [[38, 28, 161, 71], [150 - 50 - 14, 120 - 14, 249 + 14, 149 + 14]]  # loosely expanded boxes
    gt_polys = [np.array([[a, b], [c, b], [c, d], [a, d]], float) for a, b, c, d in gt_boxes]
    gt = {3: TextInstances(gt_polys, ["x", "y"], np.zeros(2, bool))}
    result = evaluate_detection(gt, dets)
    assert result.counts == Counts(2, 2, 2)
    assert sorted(dets[3].scores.tolist()) == pytest.approx([0.8, 0.9], abs=1e-6)
