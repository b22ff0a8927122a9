"""Detection hmean-IoU: hand-computed protocol cases (eval_data.md §1.9 U1-U6), geometry variants, file parsing and
submission writing. Real-data goldens run through the CLI in test_evaluate_cli.py."""

import zipfile

import numpy as np
import pytest
from conftest import DATA

from clip_text_spot.data.types import DetSample
from clip_text_spot.metrics.detection import (
    SWEEPS,
    Counts,
    evaluate_detection,
    match_pairs,
    per_sample_prf,
    protocol_for,
)
from clip_text_spot.metrics.polygons import prepare_polygons, rrc_clockwise_sum
from clip_text_spot.metrics.submission_io import (
    MalformedInputError,
    TextInstances,
    load_annotations,
    parse_curved,
    parse_icdar2015,
    sample_key,
    write_submission,
)
from clip_text_spot.metrics.totaltext import deteval_credits, evaluate_totaltext, pascal_hits


def box(x0, y0, x1, y1):
    """Axis-aligned quad TL, TR, BR, BL (visually clockwise, y down)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def inst(polys, texts=None, scores=None):
    texts = texts or ["w"] * len(polys)
    return TextInstances(
        [np.asarray(p, float) for p in polys],
        texts,
        np.array([t == "###" for t in texts], bool),
        None if scores is None else np.array(scores, float),
    )


def run(gt, det, variant="official", fmt="curved", **kw):
    return evaluate_detection({1: gt}, {1: det}, protocol=protocol_for(fmt, variant), **kw)


def test_greedy_order_dependence_u1():
    gt = inst([box(0, 0, 10, 10), box(6, 0, 16, 10)])
    d1, d2 = box(3, 0, 13, 10), box(0, 0, 9, 10)
    r = run(gt, inst([d1, d2]))
    assert r.counts == Counts(matched=1, gt_care=2, det_care=2)  # A takes d1 (first eligible), B has nothing left
    assert r.per_image[1]["pairs"] == [[0, 0]]
    assert r.counts.rates() == (0.5, 0.5, 0.5)
    assert run(gt, inst([d1, d2]), strategy="max").counts.matched == 2
    assert run(gt, inst([d2, d1])).counts.matched == 2


def test_iou_exactly_half_does_not_match_u2():
    r = run(inst([box(0, 0, 10, 10)]), inst([box(0, 0, 10, 5)]))
    assert r.counts == Counts(0, 1, 1)
    r = run(inst([box(0, 0, 10, 10)]), inst([box(0, 0, 10, 5.01)]))
    assert r.counts.matched == 1


def test_dont_care_area_precision_is_strict_u3():
    gt = inst([box(100, 0, 110, 10), box(0, 0, 10, 10)], ["###", "word"])
    r = run(gt, inst([box(104, 0, 114, 10)]))  # 60 % inside the don't-care box -> ignored
    assert r.counts == Counts(0, 1, 0)
    assert r.per_image[1]["det_dont_care"] == [0]
    r = run(gt, inst([box(105, 0, 115, 10)]))  # exactly 50 % -> a care false positive
    assert r.counts == Counts(0, 1, 1)


def test_dont_care_is_per_region_not_union_u4():
    gt = inst([box(0, 0, 10, 10), box(10, 0, 20, 10)], ["###", "###"])
    r = run(gt, inst([box(5, 0, 15, 10)]))  # half inside each don't-care box
    assert r.counts == Counts(0, 0, 1)


def test_per_sample_conventions_u5():
    assert per_sample_prf(0, 0, 0) == (1.0, 1.0, 1.0)
    assert per_sample_prf(0, 0, 1) == (0.0, 1.0, 0.0)
    assert per_sample_prf(0, 2, 0) == (0.0, 0.0, 0.0)
    r = run(inst([]), inst([box(0, 0, 5, 5)]))
    assert (r.per_image[1]["precision"], r.per_image[1]["recall"]) == (0.0, 1.0)
    assert r.counts.rates() == (0.0, 0.0, 0.0)  # dataset level: zero denominators give 0


def test_mmocr_score_sweeps_u6():
    assert SWEEPS["mmocr0"][0] == 0.30000000000000004 and SWEEPS["mmocr0"][-1] == 0.9
    assert len(SWEEPS["mmocr1"]) == 7 and SWEEPS["mmocr1"][-1] == 0.9000000000000001
    gt = inst([box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)])
    det = inst([box(0, 0, 10, 10), box(20, 0, 30, 10), box(60, 0, 70, 10), box(80, 0, 90, 10)])
    det.scores = np.array([0.95, 0.9, 0.35, 0.3])
    r0 = run(gt, det, sweep="mmocr0")
    assert r0.counts == Counts(2, 3, 4)  # fixed threshold: every detection
    first, last = r0.sweep[0][1], r0.sweep[-1][1]
    assert first == Counts(2, 3, 3)  # 0.3 < 0.30000000000000004
    assert last == Counts(2, 3, 2)  # 0.9 >= 0.9
    thr, best = r0.best
    assert thr == 0.4 and best == Counts(2, 3, 2)  # first threshold reaching the best hmean 0.8
    assert best.rates()[2] == pytest.approx(0.8)
    r1 = run(gt, det, sweep="mmocr1")
    assert r1.sweep[0][1] == Counts(2, 3, 4)  # 0.3 >= 0.3
    assert r1.sweep[-1][1] == Counts(1, 3, 1)  # 0.9 < 0.9000000000000001
    fixed = run(gt, det, score_thr=0.5, sweep=None)
    assert fixed.counts == Counts(2, 3, 2) and fixed.sweep is None
    summary = r0.summary()
    assert summary["sweep"]["best"]["score_thr"] == 0.4 and summary["hmean"] == pytest.approx(4 / 7)


def test_official_ic15_truncates_coordinates_mmocr_does_not():
    gt = inst([box(0, 0, 10, 10)])
    det = inst([box(3.9, 0, 13.9, 10)])  # int-cast (3..13): IoU 70/130 > 0.5; float: 61/139 < 0.5
    assert run(gt, det, fmt="icdar2015").counts.matched == 1
    assert run(gt, det, variant="mmocr0", fmt="icdar2015").counts.matched == 0


def test_invalid_polygon_policies():
    """A bow-tie inside a 10x10 square: GPC area 0, intersection 50 (both lobes, checked with Polygon3), so the
    official IoU is 50 / (0 + 100 - 50) = 1; buffer(0) keeps one 25-area lobe: IoU 0.25; DB drops it."""
    gt = inst([box(0, 0, 10, 10)])
    bowtie = inst([[(0, 0), (10, 10), (10, 0), (0, 10)]])
    official = run(gt, bowtie)
    assert official.counts == Counts(1, 1, 1) and official.stats["invalid_det"] == 1
    assert run(gt, bowtie, variant="mmocr0").counts == Counts(0, 1, 1)
    assert run(gt, bowtie, variant="mmocr1").counts == Counts(0, 1, 1)
    db = run(gt, bowtie, variant="db")
    assert db.counts == Counts(0, 1, 0) and db.stats["det_total"] == 1
    prepared = prepare_polygons([bowtie.polygons[0]], "gpc")
    assert prepared.own_area[0] == 0.0


def test_curved_polygons_iou():
    """U-shaped ground truth (area 30*20 - 10*10 = 500) against hand-computed detections."""
    u = [(0, 0), (10, 0), (10, 10), (20, 10), (20, 0), (30, 0), (30, 20), (0, 20)]
    gt = inst([u])
    assert run(gt, inst([box(0, 0, 30, 20)])).counts.matched == 1  # 500 / 600
    assert run(gt, inst([box(0, 10, 30, 20)])).counts.matched == 1  # 300 / 500 = 0.6
    assert run(gt, inst([box(0, 0, 30, 10)])).counts.matched == 0  # 200 / 600
    # a don't-care curved region swallows a detection mostly inside it
    dc = inst([u, box(100, 0, 130, 20)], ["###", "word"])
    r = run(dc, inst([box(0, 10, 30, 20), box(100, 0, 130, 20)]))
    assert r.counts == Counts(1, 1, 1)


def test_match_pairs_greedy_takes_first_not_best():
    iou = np.array([[0.6, 0.9], [0.0, 0.7]])
    care = np.ones(2, bool)
    assert match_pairs(iou, care, care) == [(0, 0), (1, 1)]
    assert match_pairs(iou, care, np.array([False, True])) == [(0, 1)]


def test_parse_icdar2015_bom_crlf_commas_quotes():
    text = '\ufeff1,2,11,2,11,12,1,12,$5,50\r\n\r\n0,0,4,0,4,4,0,4,###\r\n5,5,9,5,9,9,5,9,"say \\"hi\\""\r\n'
    gt = parse_icdar2015(text, "gt_img_3.txt", role="gt")
    assert gt.texts == ["$5,50", "###", 'say "hi"']
    assert gt.dont_care.tolist() == [False, True, False]
    assert gt.lines == [1, 3, 4]
    np.testing.assert_array_equal(gt.polygons[0], box(1, 2, 11, 12))
    det = parse_icdar2015("1, 2, 11, 2, 11, 12, 1, 12, 0.75\n0,0,4,0,4,4,0,4,0.5,WORD\n", "res_img_3.txt", role="det")
    assert det.scores.tolist() == [0.75, 0.5] and det.texts == ["", "WORD"]


def test_parse_errors_name_file_and_line():
    with pytest.raises(MalformedInputError, match=r"res_img_7\.txt:2: expected"):
        parse_icdar2015("0,0,4,0,4,4,0,4\n0,0,4,0,4,4\n", "res_img_7.txt", role="det")
    with pytest.raises(MalformedInputError, match=r"res_img_7\.txt:1: expected integer"):
        parse_icdar2015("0.5,0,4,0,4,4,0,4\n", "res_img_7.txt", role="det", strict=True)
    with pytest.raises(MalformedInputError, match=r"res_img_7\.txt:1: points are not clockwise"):
        parse_icdar2015("0,0,0,4,4,4,4,0\n", "res_img_7.txt", role="det", strict=True)
    with pytest.raises(MalformedInputError, match=r"img2\.txt:2: some detections .* score"):
        parse_curved("0,0,4,0,4,4,0.9\n0,0,4,0,4,4\n", "img2.txt", role="det")
    with pytest.raises(MalformedInputError, match=r"12\.txt:1: a polygon needs at least 3 points"):
        parse_curved("0,0,4,0,CARE\n", "12.txt", role="gt")
    with pytest.raises(MalformedInputError, match=r"12\.txt:1: .*counter-clockwise"):
        parse_curved("0,0,4,0,4,4,0,4,CARE\n", "12.txt", role="gt", strict=True)


def test_parse_curved_variants():
    ctw = parse_curved("0,0,10,0,10,5,0,5,CARE\n0,0,10,0,10,5,0,5,###\n", "1001.txt", role="gt")
    assert ctw.texts == ["CARE", "###"] and ctw.dont_care.tolist() == [False, True]
    adelai = parse_curved("0,0,10,0,10,5,0,5,####Hello, world\n1,1,2,1,2,2,#######\n", "0000001.txt", role="gt")
    assert adelai.texts == ["Hello, world", "###"] and adelai.dont_care.tolist() == [False, True]
    det = parse_curved("0,0,10,0,10,5,0,5,0.8,####HI\n", "1.txt", role="det")
    assert det.scores.tolist() == [0.8] and det.texts == ["HI"]
    yx = parse_curved("1,2,1,12,6,12\n", "img1.txt", role="det", coord_order="yx")
    np.testing.assert_array_equal(yx.polygons[0], [[2, 1], [12, 1], [12, 6]])
    legacy = parse_curved(
        "x: [[115 503 494 115]], y: [[322 346 426 404]], ornt: [u'm'], transcriptions: [u'nauGHTY']\n"
        "x: [[10 20\n 20 10]], y: [[5 5 9 9]], ornt: [u'#'], transcriptions: [u'#']\n",
        "poly_gt_img9.txt",
        role="gt",
    )
    assert legacy.texts == ["nauGHTY", "#"] and legacy.dont_care.tolist() == [False, True]
    np.testing.assert_array_equal(legacy.polygons[1], [[10, 5], [20, 5], [20, 9], [10, 9]])


def test_set_reading_matches_by_image_number(tmp_path):
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "poly_gt_img7.txt").write_text("0,0,10,0,10,10,0,10,A\n")
    (gt_dir / "notes.md").write_text("ignored")
    pred = tmp_path / "pred.zip"
    with zipfile.ZipFile(pred, "w") as zf:
        zf.writestr("img7.txt", "0,0,10,0,10,10,0,10\n")
        zf.writestr("__MACOSX/._img7.txt", "junk")
    gts = load_annotations(gt_dir, fmt="curved", role="gt").items
    dets = load_annotations(pred, fmt="curved", role="det").items
    assert set(gts) == set(dets) == {7}
    assert evaluate_detection(gts, dets).counts == Counts(1, 1, 1)
    with zipfile.ZipFile(pred, "a") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(MalformedInputError, match=r"pred\.zip:readme\.txt: file name has no image number"):
        load_annotations(pred, fmt="curved", role="det", strict=True)
    assert load_annotations(pred, fmt="curved", role="det").skipped_files == [f"{pred}:readme.txt"]
    extra = {7: dets[7], 8: dets[7]}
    assert evaluate_detection(gts, extra).stats["unknown_images"] == 1
    with pytest.raises(MalformedInputError, match="image 8 is not in the ground truth"):
        evaluate_detection(gts, extra, strict=True)


def test_submission_zip_round_trip(tmp_path):
    ccw = box(10, 10, 30, 20)[::-1]  # TL, BL, BR, TR: visually counter-clockwise
    assert rrc_clockwise_sum(ccw) > 0
    preds = {1: [(ccw, 0.875), (box(50.4, 0, 60.6, 8), 0.5)], 2: []}
    path = write_submission(tmp_path / "sub.zip", preds, with_scores=True)
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["res_img_1.txt", "res_img_2.txt"]
        lines = zf.read("res_img_1.txt").decode().splitlines()
    assert lines[1] == "50,0,61,0,61,8,50,8,0.500000"
    back = load_annotations(path, fmt="icdar2015", role="det", strict=True).items  # official checks pass
    assert back[1].scores.tolist() == [0.875, 0.5] and len(back[2]) == 0
    gt = {1: inst([box(10, 10, 30, 20), box(50, 0, 61, 8)]), 2: inst([])}
    assert evaluate_detection(gt, back).counts == Counts(2, 2, 2)
    curved = write_submission(tmp_path / "curved", {5: [(box(0, 0, 4, 4), 0.9, "HI")]}, fmt="curved")
    text = (curved / "5.txt").read_text()
    assert text == "0,4,4,4,4,0,0,0,####HI\n"  # reversed: the curved scripts reject shapely-ccw rings
    assert parse_curved(text, "5.txt", role="det", strict=True).texts == ["HI"]


def test_totaltext_pascal_and_deteval_hand_cases():
    halves = inst([box(0, 0, 50, 10), box(50, 0, 100, 10)])
    whole = inst([box(0, 0, 100, 10)])
    split = evaluate_totaltext({1: whole}, {1: halves}, method="deteval")  # one-to-many: sigma 0.5 + 0.5 >= 0.7
    assert (split["recall"], split["precision"]) == pytest.approx((0.8, 0.8))
    merged = evaluate_totaltext({1: halves}, {1: whole}, method="deteval")  # many-to-one: tau 0.5 + 0.5 >= 0.6
    assert (merged["matched"], merged["precision_credit"]) == pytest.approx((1.6, 0.8))
    assert deteval_credits(np.array([[0.75]]), np.array([[0.9]])) == (1.0, 1.0)
    assert deteval_credits(np.array([[0.70]]), np.array([[0.9]])) == (0.0, 0.0)  # strict > tr in one-to-one
    # Pascal VOC: each detection takes its best ground truth; d2's best (A) is already taken -> false positive
    gt = inst([box(0, 0, 10, 10), box(6, 0, 16, 10)])
    voc = evaluate_totaltext({1: gt}, {1: inst([box(3, 0, 13, 10), box(0, 0, 9, 10)])}, method="pascal")
    assert (voc["matched"], voc["gt_care"], voc["det_care"]) == (1, 2, 2)
    assert pascal_hits(np.array([[0.5, 0.49]])) == 1  # >= 0.5 here, unlike the RRC protocol
    dc = inst([box(0, 0, 10, 10), box(20, 0, 30, 10)], ["###", "w"])
    filtered = evaluate_totaltext({1: dc}, {1: inst([box(0, 0, 10, 10), box(20, 0, 30, 10)])}, method="pascal")
    assert (filtered["matched"], filtered["det_care"]) == (1, 1)  # iod = 100 / 101 > 0.5 removes the first


def test_totaltext_mat_ground_truth():
    """Official poly_gt_img2.mat (Total-Text Evaluation_Protocol/Examples); values read back match the TIoU
    text version of the same annotation (same points, reversed order)."""
    gt = load_annotations(DATA / "eval" / "totaltext_mat", fmt="curved", role="gt").items[2]
    assert gt.texts[:2] == ["nauGHTY", "NURIS"] and gt.texts[-2:] == ["#", "#"]
    assert gt.dont_care.tolist() == [False] * 7 + [True] * 2
    np.testing.assert_array_equal(gt.polygons[0], [[115, 322], [503, 346], [494, 426], [115, 404]])
    with pytest.raises(MalformedInputError, match="only read as curved"):
        load_annotations(DATA / "eval" / "totaltext_mat", fmt="icdar2015", role="gt")


def test_mmocr_json_ground_truth_and_record_conversions():
    gts = load_annotations(DATA / "eval" / "mmocr_textdet_toy.json", fmt="icdar2015", role="gt").items
    assert sorted(gts) == list(range(1, 11))  # imgs/test/img_N.jpg
    assert sum(len(g) for g in gts.values()) == 82 and sum(int(g.dont_care.sum()) for g in gts.values()) == 61
    np.testing.assert_array_equal(gts[10].polygons[0], [[261, 138], [284, 140], [279, 158], [260, 158]])
    care = {k: g.subset(~g.dont_care).polygons for k, g in gts.items()}
    dets = {k: TextInstances.from_predictions([(p, 1.0) for p in polys]) for k, polys in care.items()}
    result = evaluate_detection(gts, dets)
    assert result.counts == Counts(21, 21, 21) and result.sweep is not None
    sample = DetSample(b"", [box(0, 0, 4, 4).astype(np.float32)], ["###"], [True], name="img_7")
    inst_ = TextInstances.from_det_sample(sample)
    assert inst_.dont_care.tolist() == [True] and inst_.texts == ["###"] and sample_key(sample.name) == 7
