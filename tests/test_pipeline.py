"""grain pipelines: batch layout, record sources (bytes / arrays), process sharding, exact resume, multiprocessing,
eval padding and recognition label filtering."""

import cv2
import numpy as np
import pytest
from absl import flags

from clip_text_spot.data import pipeline as P
from clip_text_spot.data.augment import DetAugConfig
from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.data.synthetic import SyntheticDetSource, SyntheticRecSource
from clip_text_spot.data.types import DetSample, RecSample

TINY_DET = dict(image_size=(96, 128), num_words=(2, 3))


def _png(img):
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


class _Constant:
    """Detection records whose image is a flat grey level equal to the index (no polygons)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = np.full((32, 32, 3), i, np.uint8)
        return DetSample(image=img, polygons=[], texts=[], ignore=[], name=str(i)).to_record()


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_det_train_batch_layout():
    src = SyntheticDetSource(20, **TINY_DET)
    b = next(P.make_det_train_iter(src, batch_size=2, crop_size=64, seed=0))
    assert set(b) == {"image", "gt_shrink", "gt_shrink_mask", "gt_thr", "gt_thr_mask"}
    assert b["image"].shape == (2, 64, 64, 3) and b["image"].dtype == np.float32
    for key in ("gt_shrink", "gt_shrink_mask", "gt_thr", "gt_thr_mask"):
        assert b[key].shape == (2, 64, 64) and b[key].dtype == np.float32
    assert set(np.unique(b["gt_shrink"])) <= {0.0, 1.0}
    assert b["gt_thr"].min() >= 0.3 - 1e-6 and b["gt_thr"].max() <= 0.7 + 1e-6
    # normalised with TCM's mean/std: the mean colour maps to 0 (padding), pixels stay within [-mean/std, ...]
    assert np.abs(b["image"]).max() < 2.6
    with pytest.raises(ValueError, match="process_index"):
        P.make_det_train_iter(src, batch_size=2, crop_size=64, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="crop_size"):
        P.make_det_train_iter(src, batch_size=2, crop_size=64, aug=DetAugConfig(crop_size=128))


def test_normalisation_of_a_known_pixel():
    img = np.array([[[122, 116, 104], [0, 255, 10]]], np.uint8)
    out = P.normalize(img, P.DB_MEAN, P.DB_STD)
    np.testing.assert_allclose(out[0, 1], (np.array([0, 255, 10]) - P.DB_MEAN) / P.DB_STD, rtol=1e-6)
    np.testing.assert_allclose(P.normalize(img, P.REC_MEAN, P.REC_STD)[0, 1], [-1, 1, 10 / 127.5 - 1], rtol=1e-6)


def test_shards_of_two_processes_are_disjoint_and_cover_an_epoch():
    aug = DetAugConfig(crop_size=32, brightness=0, saturation=0, flip_prob=0, max_rotation=0, scale_range=(1, 1))
    seen = []
    for p in range(2):
        it = P.make_det_train_iter(
            _Constant(40), batch_size=4, crop_size=32, aug=aug, seed=7, process_index=p, process_count=2
        )
        grey = [b["image"][:, 0, 0, 0] * P.DB_STD[0] + P.DB_MEAN[0] for b in _take(it, 5)]  # 20 = half an epoch
        seen.append({int(round(v)) for v in np.concatenate(grey)})
        assert len(seen[-1]) == 20
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(40))


def test_exact_resume_from_saved_state():
    src = SyntheticDetSource(12, **TINY_DET)
    it = P.make_det_train_iter(src, batch_size=2, crop_size=64, seed=3)
    _take(it, 7)  # crosses the epoch boundary (6 batches per epoch)
    state = it.get_state()
    expected = _take(it, 2)
    restored = P.make_det_train_iter(src, batch_size=2, crop_size=64, seed=3)
    restored.set_state(state)
    got = _take(restored, 2)
    assert all(_equal(a, b) for a, b in zip(expected, got, strict=True))
    other_seed = P.make_det_train_iter(src, batch_size=2, crop_size=64, seed=4)
    other_seed.set_state(state)
    assert not _equal(next(other_seed), expected[0])


def test_record_sources_with_encoded_or_decoded_images():
    samples = [SyntheticDetSource(4, **TINY_DET)[i] for i in range(4)]
    as_bytes = [DetSample(_png(s.image), s.polygons, s.texts, s.ignore, s.name).to_record() for s in samples]
    as_array = [s.to_record() for s in samples]
    for records in (as_bytes, as_array):
        batches = list(P.make_det_eval_batches(records, batch_size=4, eval_size=(128, 128), max_polys=8, max_points=8))
        assert len(batches) == 1
        b = batches[0]
        for j, s in enumerate(samples):
            n = len(s.polygons)
            assert b["polygon_mask"][j].sum() == n and not b["ignore"][j].any()
            for k in range(n):
                np.testing.assert_array_equal(b["polygons"][j, k, : b["num_points"][j, k]], s.polygons[k])
        np.testing.assert_allclose(b["scale"], 1.0)  # 96x128 fits 128x128 unscaled
        np.testing.assert_array_equal(b["orig_shape"], [[96, 128]] * 4)
        expected = P.normalize(samples[1].image, P.DB_MEAN, P.DB_STD)
        np.testing.assert_allclose(b["image"][1, :96], expected, atol=1e-6)
    with pytest.raises(ValueError, match="max_polys"):
        next(iter(P.make_det_eval_batches(as_array, batch_size=2, eval_size=(128, 128), max_polys=1)))


def test_eval_batches_pad_to_the_same_count_on_every_process():
    src = _Constant(5)
    runs = [
        list(
            P.make_det_eval_batches(
                src, batch_size=2, eval_size=(32, 32), process_index=p, process_count=2, with_targets=False
            )
        )
        for p in range(2)
    ]
    assert [len(r) for r in runs] == [2, 2]
    idx = [np.concatenate([b["index"] for b in r]).tolist() for r in runs]
    assert idx == [[0, 2, 4, -1], [1, 3, -1, -1]]
    valid = [np.concatenate([b["valid"] for b in r]).tolist() for r in runs]
    assert valid == [[True, True, True, False], [True, True, False, False]]
    assert "gt_shrink" not in runs[0][0]
    grey = runs[1][0]["image"][1, 0, 0, 0] * P.DB_STD[0] + P.DB_MEAN[0]
    assert round(float(grey)) == 3


def test_eval_scale_maps_resized_geometry_back():
    img = np.zeros((100, 50, 3), np.uint8)
    poly = np.array([[10, 10], [40, 10], [40, 30], [10, 30]], np.float32)
    rec = DetSample(img, [poly], ["x"], [False]).to_record()
    b = next(iter(P.make_det_eval_batches([rec], batch_size=1, eval_size=(64, 64))))
    sx, sy = b["scale"][0]
    assert (round(50 * sx), round(100 * sy)) == (32, 64)
    assert b["resized_shape"][0].tolist() == [64, 32] and b["orig_shape"][0].tolist() == [100, 50]
    # the shrink kernel lies where the polygon lands after the resize
    ys, xs = np.nonzero(b["gt_shrink"][0])
    assert 10 * sx < xs.min() and xs.max() < 40 * sx and 10 * sy < ys.min() and ys.max() < 30 * sy


def test_recognition_train_filters_labels_and_encodes():
    good = np.full((16, 40, 3), 200, np.uint8)
    records = [
        RecSample(good, "ok").to_record(),
        RecSample(_png(good), "Fine!").to_record(),
        RecSample(good, "x" * 30).to_record(),  # too long: skipped
        RecSample(good, "   ").to_record(),  # empty: skipped
    ]
    it = P.make_rec_train_iter(records, batch_size=4, seed=0, aug=None)
    b = next(it)
    cs = Charset()
    labels = [cs.decode(row) for row in b["label"]]
    assert set(labels) == {"ok", "Fine!"}
    assert b["label_length"].tolist() == [len(t) for t in labels]
    assert b["image"].shape == (4, 32, 128, 3)
    np.testing.assert_allclose(b["image"], 200 / 127.5 - 1, atol=1e-5)  # no augmentation, flat image
    ev = list(P.make_rec_eval_batches(records, batch_size=3))
    assert np.concatenate([e["valid"] for e in ev]).tolist() == [True, True, False, False, False, False]
    assert np.concatenate([e["index"] for e in ev]).tolist() == [0, 1, 2, 3, -1, -1]
    assert cs.decode(ev[0]["label"][1]) == "Fine!"


def test_recognition_eval_with_the_lowercase_charset():
    records = [RecSample(np.zeros((8, 8, 3), np.uint8), lab).to_record() for lab in ["Hello", "!!", "a-b"]]
    cs = Charset("0123456789abcdefghijklmnopqrstuvwxyz")
    b = next(iter(P.make_rec_eval_batches(records, batch_size=3, charset=cs)))
    assert b["valid"].tolist() == [True, False, True]
    assert [cs.decode(r) for r in b["label"]] == ["hello", "", "ab"]


def test_multiprocess_workers_match_in_process_and_resume():
    flags.FLAGS.mark_as_parsed()
    src = SyntheticRecSource(40, seed=2)
    kwargs = dict(batch_size=4, seed=5, image_size=(16, 64))
    reference = _take(P.make_rec_train_iter(src, **kwargs), 3)
    it = P.make_rec_train_iter(src, workers=1, **kwargs)
    try:
        first = _take(it, 2)
        state = it.get_state()
    finally:
        it.close()
    assert all(_equal(a, b) for a, b in zip(first, reference[:2], strict=True))
    restored = P.make_rec_train_iter(src, workers=1, **kwargs)
    try:
        restored.set_state(state)
        assert _equal(next(restored), reference[2])
    finally:
        restored.close()
