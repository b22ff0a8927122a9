"""Augmentation keeps polygons on the pixels they describe; crop, jitter, eval resize and recognition ops."""

import cv2
import numpy as np
import pytest

from clip_text_spot.data.augment import (
    DetAugConfig,
    RecAugConfig,
    _split_regions,
    augment_det,
    augment_rec,
    color_jitter,
    east_crop_area,
    resize_keep_ratio,
    resize_rec,
)

BLACK = (0.0, 0.0, 0.0)


def _scene(h=180, w=260):
    """Black image with three white filled polygons (a rotated box, a quad, a 10-point band)."""
    polys = [
        cv2.boxPoints(((70, 60), (90, 30), 25)).astype(np.float32),
        np.array([[150, 30], [240, 45], [230, 90], [160, 80]], np.float32),
        np.array(
            [
                [30, 120],
                [80, 110],
                [130, 118],
                [180, 125],
                [230, 115],
                [230, 150],
                [180, 160],
                [130, 152],
                [80, 145],
                [30, 155],
            ],
            np.float32,
        ),
    ]
    img = np.zeros((h, w, 3), np.uint8)
    for p in polys:
        cv2.fillPoly(img, [np.round(p).astype(np.int32)], (255, 255, 255))
    return img, polys


def _iou_with_rasterised(image, polys):
    """IoU between the bright pixels of ``image`` and the union of ``polys`` rasterised at its size."""
    drawn = image[..., 0] > 127
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in polys], 1)
    return (drawn & (mask > 0)).sum() / max(1, (drawn | (mask > 0)).sum()), drawn.sum()


@pytest.mark.parametrize("seed", range(6))
def test_augment_det_keeps_polygons_aligned_with_pixels(seed):
    img, polys = _scene()
    cfg = DetAugConfig(crop_size=160, scale_range=(0.5, 2.0))
    out, out_polys, out_ignore = augment_det(img, polys, [False] * 3, np.random.default_rng(seed), cfg, BLACK)
    assert out.shape == (160, 160, 3) and out.dtype == np.uint8
    assert len(out_polys) == len(out_ignore) >= 1
    iou, bright = _iou_with_rasterised(out, out_polys)
    assert bright > 100
    assert iou > 0.85, iou


def test_flip_only_mirrors_image_and_polygons_exactly():
    img, polys = _scene(160, 160)
    img[5:20, 3:9] = (0, 200, 50)  # an asymmetric mark
    cfg = DetAugConfig(crop_size=160, brightness=0, saturation=0, flip_prob=1.0, max_rotation=0, scale_range=(1, 1))
    # every polygon ignored -> no text to avoid -> the crop is the whole image (mmocr's crop_area)
    out, out_polys, out_ignore = augment_det(img, polys, [True] * 3, np.random.default_rng(0), cfg, BLACK)
    np.testing.assert_array_equal(out, img[:, ::-1])
    for p, q in zip(polys, out_polys, strict=True):
        np.testing.assert_allclose(q, np.stack([160 - p[:, 0], p[:, 1]], 1), atol=1e-4)
    assert out_ignore == [True, True, True]


def test_scale_one_rotation_zero_no_flip_is_identity_when_the_crop_is_full():
    img, polys = _scene(128, 128)
    cfg = DetAugConfig(crop_size=128, brightness=0, saturation=0, flip_prob=0, max_rotation=0, scale_range=(1, 1))
    out, out_polys, _ = augment_det(img, polys, [True] * 3, np.random.default_rng(0), cfg, BLACK)
    np.testing.assert_array_equal(out, img)
    assert len(out_polys) == 2  # the quad at x >= 150 lies outside the 128 px image and is dropped
    for p, q in zip([polys[0], polys[2]], out_polys, strict=True):
        np.testing.assert_allclose(q, p, atol=1e-4)


def test_split_regions_drops_the_last_run_like_mmocr():
    regions = _split_regions(np.array([0, 1, 2, 5, 6, 9]))
    assert [r.tolist() for r in regions] == [[0, 1, 2], [5, 6]]
    assert _split_regions(np.arange(5)) == []


def test_east_crop_area_borders_avoid_text():
    boxes = [
        np.array([[x, y], [x + 30, y], [x + 30, y + 12], [x, y + 12]], np.float32)
        for x, y in [(20, 20), (90, 50), (150, 100), (40, 130)]
    ]
    for seed in range(20):
        x, y, w, h = east_crop_area(np.random.default_rng(seed), (160, 200), boxes)
        assert w >= 0.1 * 200 and h >= 0.1 * 160
        for b in boxes:
            assert not (b[:, 0].min() <= x < b[:, 0].max() or b[:, 0].min() <= x + w < b[:, 0].max()) or (x, w) == (
                0,
                200,
            )
            assert not (b[:, 1].min() <= y < b[:, 1].max() or b[:, 1].min() <= y + h < b[:, 1].max()) or (y, h) == (
                0,
                160,
            )
    assert east_crop_area(np.random.default_rng(0), (160, 200), []) == (0, 0, 200, 160)


def test_color_jitter_semantics():
    rng = np.random.default_rng(0)
    gray = np.full((8, 8, 3), 100, np.uint8)
    for _ in range(5):
        out = color_jitter(gray, rng, brightness=32 / 255, saturation=0.0)
        f = out[0, 0, 0] / 100
        assert 1 - 32 / 255 - 0.01 <= f <= 1 + 32 / 255 + 0.01
        assert np.all(out == out[0, 0, 0])
    np.testing.assert_array_equal(color_jitter(gray, rng, 0.0, 0.5), gray)  # grey has no saturation to change
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    out = color_jitter(red, np.random.default_rng(3), 0.0, 0.5)
    luma = 0.299 * 200
    f = (out[0, 0, 0] - luma) / (200 - luma)  # saturation factor recovered from the red channel
    assert 0.5 - 0.02 <= f <= 1.5 + 0.02
    np.testing.assert_allclose(out[0, 0, 1:], np.round((1 - f) * luma), atol=1)


def test_resize_keep_ratio_icdar15_and_polygon_scaling():
    img = np.zeros((720, 1280, 3), np.uint8)
    out, polys, (sx, sy) = resize_keep_ratio(img, [np.array([[1280, 720], [0, 0]], np.float32)], (736, 1312), BLACK)
    assert out.shape == (736, 1312, 3)
    assert (round(sx * 1280), round(sy * 720)) == (1308, 736)  # eval_data.md §4.4: 1280x720 -> 1308x736
    np.testing.assert_allclose(polys[0], [[1308, 736], [0, 0]], atol=1e-3)
    scene, scene_polys = _scene()
    out, polys, _ = resize_keep_ratio(scene, scene_polys, (256, 256), BLACK)
    assert _iou_with_rasterised(out, polys)[0] > 0.9


def test_recognition_ops_and_resize():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(20, 60, 3), dtype=np.uint8)
    inverted = augment_rec(img, rng, RecAugConfig(num_ops=1, prob=1.0, ops=("invert",)))
    np.testing.assert_array_equal(inverted, 255 - img)
    unrotated = augment_rec(img, rng, RecAugConfig(num_ops=1, prob=1.0, magnitude=0, ops=("rotate",)))
    np.testing.assert_array_equal(unrotated, img)
    skipped = augment_rec(img, rng, RecAugConfig(prob=0.0))
    np.testing.assert_array_equal(skipped, img)
    for seed in range(10):
        out = augment_rec(img, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
    assert resize_rec(img).shape == (32, 128, 3)
    assert resize_rec(img, (16, 64)).shape == (16, 64, 3)
    with pytest.raises(ValueError, match="unknown operations"):
        RecAugConfig(ops=("sharpen",))
    with pytest.raises(ValueError, match="scale_range"):
        DetAugConfig(scale_range=(2.0, 1.0))
