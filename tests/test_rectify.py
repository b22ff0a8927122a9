"""Rectification of text regions: a known quad (OpenCV's perspective warp as the reference) and a known curve
(a ring sector, whose rectification is the polar unwrapping) give the expected crops."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_text_spot.rectify import (
    order_quad,
    pad_quad,
    pad_sides,
    polygon_sides,
    rectify,
    refine_quad,
    region_geometry,
)

SIZE = (32, 128)


def _rectify(image: np.ndarray, polygons, layout="contour", supersample=1) -> np.ndarray:
    quads, sides, is_quad = region_geometry(polygons, layout=layout)
    n = len(polygons)
    fn = jax.jit(rectify, static_argnames=("size", "supersample"))
    out = fn(
        jnp.asarray(image[None]), jnp.array([image.shape[:2]]), jnp.zeros(n, jnp.int32),
        quads, sides, is_quad, size=SIZE, supersample=supersample,
    )  # fmt: skip
    return np.asarray(out)


def test_quad_inverts_opencv_perspective_warp():
    rng = np.random.default_rng(0)
    pattern = cv2.resize(rng.uniform(0, 255, (8, 32, 3)).astype(np.float32), SIZE[::-1], interpolation=cv2.INTER_CUBIC)
    quad = np.array([[60, 40], [300, 70], [290, 160], [50, 120]], np.float32)  # TL, TR, BR, BL
    corners = np.array([[0, 0], [SIZE[1], 0], [SIZE[1], SIZE[0]], [0, SIZE[0]]], np.float32)
    hom = cv2.getPerspectiveTransform(corners, quad)  # continuous coordinates -> OpenCV's pixel-index convention:
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    image = cv2.warpPerspective(
        pattern, np.linalg.inv(shift) @ hom @ shift, (400, 240), borderMode=cv2.BORDER_REPLICATE
    )
    # the detector's vertex order does not matter: start at the bottom-left and go the other way round
    crop = _rectify(image, [quad[[3, 2, 1, 0]]])[0]
    err = np.abs(crop - pattern).mean()
    assert err < 3.0, err  # two bilinear resamplings; the pattern's own mean deviation is ~50
    assert np.abs(crop - pattern[:, ::-1]).mean() > 10 * err  # not mirrored


def test_ring_sector_is_unwrapped_to_polar_coordinates():
    centre, r_in, r_out = np.array([200.0, 260.0]), 100.0, 140.0
    angles = np.deg2rad(np.linspace(150, 30, 16))  # left to right over the top of the circle

    def arc(r):
        return centre + r * np.stack([np.cos(angles), -np.sin(angles)], axis=1)

    polygon = np.concatenate([arc(r_out), arc(r_in)[::-1]])  # paired layout: top L->R, bottom R->L
    ys, xs = np.mgrid[0:300, 0:400] + 0.5
    dx, dy = xs - centre[0], centre[1] - ys
    image = np.stack([np.rad2deg(np.arctan2(dy, dx)), np.hypot(dx, dy), np.zeros_like(dx)], -1).astype(np.float32)
    crop = _rectify(image, [polygon], layout="paired")[0]
    rows, cols = ((np.arange(n) + 0.5) / n for n in SIZE)
    want_angle = 150 - 120 * cols[None, :]
    want_radius = r_out - (r_out - r_in) * rows[:, None]
    np.testing.assert_allclose(crop[..., 0], np.broadcast_to(want_angle, SIZE), atol=0.3)
    np.testing.assert_allclose(crop[..., 1], np.broadcast_to(want_radius, SIZE), atol=0.5)


def test_contour_sides_follow_a_curved_band():
    """A parabolic band outlined as a contour: the cut points lie on its top and bottom curves, in reading order."""
    xs = np.linspace(20, 220, 41)
    top_y = 80 + 0.004 * (xs - 120) ** 2
    outline = np.concatenate([np.stack([xs, top_y], 1), np.stack([xs, top_y + 30], 1)[::-1]])
    top, bottom = polygon_sides(outline, k=8)
    assert np.all(np.diff(top[:, 0]) > 0)  # left to right
    want = 80 + 0.004 * (top[:, 0] - 120) ** 2
    np.testing.assert_allclose(top[1:-1, 1], want[1:-1], atol=0.3)
    np.testing.assert_allclose(top[[0, -1], 1], want[[0, -1]], atol=2.5)  # extrapolated ends
    np.testing.assert_allclose(bottom[:, 1], top[:, 1] + 30, atol=0.5)
    np.testing.assert_allclose([top[0, 0], top[-1, 0]], [20, 220], atol=1e-3)  # ends reach the outline's extent


@pytest.mark.parametrize("start", range(4))
def test_order_quad_reads_along_the_long_side(start):
    quad = np.array([[10, 20], [110, 20], [110, 50], [10, 50]], np.float32)
    got = order_quad(np.roll(quad, start, axis=0))
    np.testing.assert_array_equal(got, quad)
    got = order_quad(np.roll(quad[::-1], start, axis=0))
    np.testing.assert_array_equal(got, quad)


def test_supersampling_averages_fine_detail():
    """A 1-pixel stripe pattern squeezed 3.3x: point sampling aliases, 2x2 supersampling gets closer to the mean."""
    image = np.zeros((40, 420, 3), np.float32)
    image[:, ::2] = 255.0
    quad = np.array([[0, 4], [420, 4], [420, 36], [0, 36]], np.float32)
    point = _rectify(image, [quad], supersample=1)[0]
    smooth = _rectify(image, [quad], supersample=2)[0]
    assert abs(smooth.mean() - 127.5) < 2 and smooth.std() < point.std()


def test_padding_grows_regions_by_a_fraction_of_their_height():
    quad = np.array([[10, 20], [110, 20], [110, 40], [10, 40]], np.float32)  # 100 x 20
    np.testing.assert_allclose(pad_quad(quad, 0.25), [[5, 15], [115, 15], [115, 45], [5, 45]], atol=1e-5)
    top = np.array([[10, 20], [60, 20], [110, 20]], np.float32)
    bottom = top + [0, 20]
    new_top, new_bottom = pad_sides(top, bottom, 0.25)
    np.testing.assert_allclose(new_top, [[5, 15], [60, 15], [115, 15]], atol=1e-5)
    np.testing.assert_allclose(new_bottom, [[5, 45], [60, 45], [115, 45]], atol=1e-5)


def test_short_words_read_horizontally_and_long_upright_boxes_vertically():
    square_ish = np.array([[55, 228], [74, 221], [80, 236], [61, 243]], np.float32)  # "it": 20 wide, 16 tall
    got = order_quad(square_ish)
    assert abs(got[1, 0] - got[0, 0]) > abs(got[1, 1] - got[0, 1])  # top edge runs along x
    upright = np.array([[20, 10], [50, 10], [50, 200], [20, 200]], np.float32)
    np.testing.assert_array_equal(order_quad(upright), [[20, 200], [20, 10], [50, 10], [50, 200]])  # bottom to top


def _rotate(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    t = np.deg2rad(degrees)
    return (points - centre) @ np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) + centre


def test_refine_quad_fits_a_tilted_loose_box_to_the_word():
    canvas = np.full((120, 240), 200, np.uint8)
    cv2.putText(canvas, "spotting", (30, 75), cv2.FONT_HERSHEY_SIMPLEX, 1.4, 40, 3, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas < 120)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    word = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)  # the ink's box (continuous coordinates)
    centre, angle = word.mean(0), 8.0
    rot = cv2.getRotationMatrix2D((centre[0] - 0.5, centre[1] - 0.5), -angle, 1.0)  # OpenCV: pixel-index centres
    image = np.repeat(cv2.warpAffine(canvas, rot, canvas.shape[::-1], borderValue=200)[..., None], 3, axis=2)
    truth = _rotate(word, angle, centre)
    height = y1 - y0
    loose = _rotate(word + [[0, -0.3 * height], [0, -0.3 * height], [0, 0.1 * height], [0, 0.1 * height]], 2.0, centre)
    refined = refine_quad(image, loose[[2, 3, 0, 1]])  # any vertex order
    tilt = np.degrees(np.arctan2(*(refined[1] - refined[0])[::-1]))
    assert abs(tilt - angle) < 1.0, tilt
    assert np.abs(refined - truth).max() < 0.1 * height, (refined, truth)
    assert np.abs(order_quad(loose) - truth).max() > 0.3 * height  # the loose box was far off
    blank = np.full_like(image, 128)
    np.testing.assert_array_equal(refine_quad(blank, loose), order_quad(loose))  # no ink: the quad as it was
