"""Synthetic sources: determinism, disjoint splits, ground truth from the rendered ink, no overlaps, bundled assets."""

import itertools

import cv2
import numpy as np
import pytest
import shapely

from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.data.synthetic import SyntheticDetSource, SyntheticRecSource, TextStyle
from clip_text_spot.data.synthetic.backgrounds import PHOTO_FILES, TEXTURE_FILES, photos, textures
from clip_text_spot.data.synthetic.fonts import DEJAVU_FONTS, font_path
from clip_text_spot.data.synthetic.render import paste_word, shape_word
from clip_text_spot.data.synthetic.sources import sample_entropy

SMALL = dict(image_size=(192, 256), num_words=(3, 6))


def _same(a, b):
    return (
        np.array_equal(a.image, b.image)
        and a.texts == b.texts
        and len(a.polygons) == len(b.polygons)
        and all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons, strict=True))
    )


def test_same_index_gives_the_same_sample():
    src = SyntheticDetSource(20, seed=5, **SMALL)
    a, b = src[3], src[3]
    assert _same(a, b)
    assert _same(a, SyntheticDetSource(20, seed=5, **SMALL)[3])  # a fresh source (e.g. in a worker)
    assert not _same(a, src[4])
    r = SyntheticRecSource(20, seed=5)
    assert np.array_equal(r[7].image, r[7].image) and r[7].label == SyntheticRecSource(20, seed=5)[7].label


def test_train_and_eval_splits_never_share_seeds():
    tuples = {
        split: {sample_entropy(task, split, s, i) for task in ("det", "rec") for s in range(4) for i in range(50)}
        for split in ("train", "eval")
    }
    assert not tuples["train"] & tuples["eval"]
    train = SyntheticDetSource(10, split="train", **SMALL)
    for seed in range(3):
        held_out = SyntheticDetSource(10, split="eval", seed=seed, **SMALL)
        assert not any(_same(train[i], held_out[i]) for i in range(3))
    with pytest.raises(ValueError, match="split"):
        SyntheticDetSource(10, split="test")


def test_detection_sample_layout_and_no_overlap():
    style = TextStyle(font_size=(20, 40))
    src = SyntheticDetSource(10, image_size=(256, 320), num_words=(8, 8), style=style, margin=4.0)
    charset = set(Charset().chars)
    for i in range(4):
        s = src[i]
        assert s.image.shape == (256, 320, 3) and s.image.dtype == np.uint8
        assert 1 <= len(s.polygons) <= 8 and s.ignore == [False] * len(s.polygons)
        assert all(t and set(t) <= charset for t in s.texts)
        shapes = [shapely.Polygon(p) for p in s.polygons]
        assert all(g.is_valid and g.area > 50 for g in shapes)
        for p in s.polygons:
            assert p.min() >= 4 - 1e-3 and p[:, 0].max() <= 316 + 1e-3 and p[:, 1].max() <= 252 + 1e-3
        for g, h in itertools.combinations(shapes, 2):
            assert g.distance(h) >= 4 - 1e-6
    assert len(SyntheticDetSource(3, num_words=(0, 0), **{"image_size": (64, 64)})[0].polygons) == 0


def _paste_alone(style, seed, text="Glyphs42"):
    rng = np.random.default_rng(seed)
    word = shape_word(rng, text, style)
    canvas = np.zeros((200, 400, 3), np.uint8)
    offset = np.array([200.0, 100.0])
    paste_word(canvas, word, offset, rng, style.min_contrast)
    return canvas.max(axis=2) > 0, word.polygon + offset


@pytest.mark.parametrize("curved", [False, True])
def test_polygon_encloses_the_rendered_ink(curved):
    style = TextStyle(curve_prob=1.0 if curved else 0.0, max_rotation=20, perspective=0.05, min_contrast=0.5)
    for seed in range(4):
        ink, poly = _paste_alone(style, seed)
        inside = np.zeros(ink.shape, np.uint8)
        cv2.fillPoly(inside, [np.round(poly).astype(np.int32)], 1)
        inside = cv2.dilate(inside, np.ones((5, 5), np.uint8))  # antialiased fringe
        assert ink.sum() > 300
        assert ink[inside == 0].sum() == 0, "ink outside the polygon"
        assert len(poly) == (2 * style.curve_points if curved else 4)


@pytest.mark.parametrize("curved", [False, True])
def test_polygon_is_tight_around_the_ink(curved):
    fixed = dict(fonts=("DejaVuSerif-Bold",), font_size=(40, 40), max_rotation=0, perspective=0, min_contrast=0.5)
    style = TextStyle(curve_prob=1.0 if curved else 0.0, **fixed)
    flat_ink, _ = _paste_alone(TextStyle(curve_prob=0.0, **fixed), 0)
    flat_height = np.ptp(np.nonzero(flat_ink)[0]) + 1
    for seed in range(4):
        ink, poly = _paste_alone(style, seed)
        ys, xs = np.nonzero(ink)
        # the ink reaches the polygon's left/right ends (and, for straight text, its top/bottom) within 1.5 px
        assert abs(xs.min() - poly[:, 0].min()) < 1.5 and abs(xs.max() + 1 - poly[:, 0].max()) < 1.5
        if not curved:
            assert abs(ys.min() - poly[:, 1].min()) < 1.5 and abs(ys.max() + 1 - poly[:, 1].max()) < 1.5
        else:  # the band is as high as the ink of the same word rendered flat
            assert abs((poly[-1, 1] - poly[0, 1]) - flat_height) < 1.5


def test_text_contrast_against_the_background():
    src = SyntheticDetSource(5, **SMALL)
    s = src[0]
    luma = s.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    for p in s.polygons:
        inner = np.zeros(luma.shape, np.uint8)
        cv2.fillPoly(inner, [np.round(p).astype(np.int32)], 1)
        values = luma[inner == 1]
        assert values.max() - values.min() > 0.3 * 255  # ink and background differ strongly inside each box


def test_recognition_crops():
    src = SyntheticRecSource(30, seed=1)
    charset = Charset()
    for i in range(8):
        s = src[i]
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        assert s.image.shape[0] >= 10 and s.image.shape[1] >= 8
        assert charset.filter_label(s.label) == s.label


def test_quad_crops_are_upright_and_framed_like_rectified_detections():
    """Rotated words cut along their jittered quads: upright crops with the word's height and length."""
    style = TextStyle(max_rotation=15.0, perspective=0.0, curve_prob=0.0, min_chars=4, font_size=(30, 30))
    plain = SyntheticRecSource(10, seed=2, style=style)
    quads = SyntheticRecSource(10, seed=2, style=style, box_jitter=0.05, margin=(0.1, 0.1))
    for i in range(6):
        crop, box = quads[i], plain[i]
        assert crop.label == box.label and crop.image.dtype == np.uint8
        h, w = crop.image.shape[:2]
        assert w > 1.5 * h  # four or more characters side by side, read along the word
        # an axis-aligned box around a rotated word is taller than the word itself
        assert h <= box.image.shape[0] + 2
    assert np.array_equal(quads[3].image, quads[3].image)


def test_bundled_fonts_and_images_are_present():
    for name in DEJAVU_FONTS:
        assert font_path(name).endswith(f"{name}.ttf")
    with pytest.raises(ValueError, match="not bundled"):
        font_path("Helvetica")
    assert len(photos()) == len(PHOTO_FILES) and all(p.ndim == 3 for p in photos())
    assert len(textures()) == len(TEXTURE_FILES)
    with pytest.raises(ValueError, match="font_size"):
        TextStyle(font_size=(40, 20))
    with pytest.raises(ValueError, match="background_weights"):
        TextStyle(background_weights=(1.0,))
