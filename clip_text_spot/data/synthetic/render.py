"""Rendering one word into an image, with ground truth from the rendered glyphs.

Each word is rasterised alone into an 8-bit coverage mask, composed from per-glyph masks that PIL renders once per
(font, size, character) and caches (with the default style at most 12 fonts x 41 sizes x 94 characters, some tens
of MB per process once warm; the first samples of a process are slower while the cache fills). Its ground-truth
polygon is the box of the ink (all non-zero coverage) in the mask: a quadrilateral for straight text; for curved
text the columns of the mask are shifted vertically by a smooth offset (a parabolic arc or one sine period) and the
polygon is the band ``[ink_top, ink_bottom] + offset(x)`` sampled at ``curve_points`` abscissae per side (top left
to right, then bottom right to left, the Total-Text / CTW1500 convention). The mask and the polygon are then mapped
by one homography (corner-jitter perspective, rotation about the word centre, translation) and the mask is
alpha-blended into the image in the word's colour.

Coordinates are continuous: pixel (i, j) covers [j, j + 1] x [i, i + 1], so a polygon of the full image is
(0, 0)-(W, H). OpenCV warps address pixel centres by integer indices; ``_index_homography`` converts.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np
import shapely
from PIL import Image, ImageDraw

from clip_text_spot.data.augment import LUMA
from clip_text_spot.data.synthetic.backgrounds import BACKGROUND_KINDS
from clip_text_spot.data.synthetic.fonts import DEJAVU_FONTS, load_font
from clip_text_spot.data.synthetic.words import WORD_KINDS


@dataclasses.dataclass(frozen=True)
class TextStyle:
    """Appearance of synthetic words (shared by the detection and recognition sources).

    Attributes:
      fonts: font names bundled with matplotlib (``fonts.DEJAVU_FONTS`` by default).
      font_size: (min, max) font size in pixels, drawn uniformly.
      vocab_size: words come from the ``vocab_size`` most frequent English words (``wordfreq``).
      min_chars: shortest vocabulary word used.
      word_kind_weights: relative weights of ``words.WORD_KINDS`` (lower, title, upper, number, mixed).
      max_rotation: rotation in degrees, uniform in [-max_rotation, max_rotation].
      perspective: corner jitter of the perspective warp, as a fraction of the word's width / height.
      curve_prob: probability that a word is curved.
      curve_amplitude: largest vertical offset of a curved baseline, as a fraction of the ink height.
      curve_points: points per side of a curved word's polygon.
      min_contrast: smallest luminance difference (in [0, 0.5], luminance in [0, 1]) between the text colour and
        the mean of the background under it.
      background_weights: relative weights of ``backgrounds.BACKGROUND_KINDS`` (gradient, noise, texture, photo).
      background_contrast: factor pulling photos/textures towards their mean colour (1 keeps them as they are).
    """

    fonts: tuple[str, ...] = DEJAVU_FONTS
    font_size: tuple[int, int] = (24, 64)
    vocab_size: int = 20000
    min_chars: int = 2
    word_kind_weights: tuple[float, ...] = (0.45, 0.25, 0.15, 0.1, 0.05)
    max_rotation: float = 15.0
    perspective: float = 0.05
    curve_prob: float = 0.15
    curve_amplitude: float = 0.35
    curve_points: int = 8
    min_contrast: float = 0.4
    background_weights: tuple[float, ...] = (0.3, 0.2, 0.15, 0.35)
    background_contrast: float = 0.7

    def __post_init__(self):
        if not self.fonts:
            raise ValueError("TextStyle.fonts must name at least one font")
        lo, hi = self.font_size
        if not 4 <= lo <= hi:
            raise ValueError(f"TextStyle.font_size must be (min, max) with 4 <= min <= max, got {self.font_size}")
        if len(self.word_kind_weights) != len(WORD_KINDS) or min(self.word_kind_weights) < 0:
            raise ValueError(f"TextStyle.word_kind_weights needs {len(WORD_KINDS)} weights >= 0 for {WORD_KINDS}")
        if len(self.background_weights) != len(BACKGROUND_KINDS) or min(self.background_weights) < 0:
            raise ValueError(
                f"TextStyle.background_weights needs {len(BACKGROUND_KINDS)} weights >= 0 for {BACKGROUND_KINDS}"
            )
        if not 0.0 <= self.min_contrast <= 0.5:
            raise ValueError(f"TextStyle.min_contrast must be in [0, 0.5], got {self.min_contrast}")
        if self.curve_points < 2:
            raise ValueError(f"TextStyle.curve_points must be >= 2, got {self.curve_points}")
        if not 0.0 <= self.perspective < 0.5:
            raise ValueError(f"TextStyle.perspective must be in [0, 0.5), got {self.perspective}")


DET_STYLE = TextStyle()
"""Default style of detection images: clear, moderately sized words."""


@functools.lru_cache(maxsize=65536)
def _glyph(font: str, size: int, char: str) -> tuple[np.ndarray, int, int, float, tuple[int, int, int, int] | None]:
    """Coverage mask of one character, its offset from the pen position, its advance and its ink box (cached)."""
    f = load_font(font, size)
    left, top, right, bottom = f.getbbox(char)
    img = Image.new("L", (max(right - left, 1), max(bottom - top, 1)))
    ImageDraw.Draw(img).text((-left, -top), char, font=f, fill=255)
    mask = np.asarray(img)
    mask.setflags(write=False)
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    ink = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) if len(cols) else None
    return mask, left, top, f.getlength(char), ink


def word_mask(font: str, size: int, text: str, pad: int = 2) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Coverage mask uint8 [h, w] of ``text`` and its ink box (x0, y0, x1, y1), exclusive ends.

    Composed from cached glyph masks placed at the fonts' advances (kerning is not applied), overlapping glyphs
    combined by maximum; ``pad`` empty pixels surround the glyphs.
    """
    glyphs, pen = [], 0.0
    for char in text:
        mask, left, top, advance, ink = _glyph(font, size, char)
        glyphs.append((mask, int(round(pen)) + left, top, ink))
        pen += advance
    if all(g[3] is None for g in glyphs):
        raise ValueError(f"text {text!r} renders no ink with font {font!r}")
    x_min = min(x for _, x, _, _ in glyphs)
    y_min = min(y for _, _, y, _ in glyphs)
    width = max(x + m.shape[1] for m, x, _, _ in glyphs) - x_min + 2 * pad
    height = max(y + m.shape[0] for m, _, y, _ in glyphs) - y_min + 2 * pad
    out = np.zeros((height, width), np.uint8)
    ink_box = [width, height, 0, 0]
    for mask, x, y, ink in glyphs:
        x, y = x - x_min + pad, y - y_min + pad
        region = out[y : y + mask.shape[0], x : x + mask.shape[1]]
        np.maximum(region, mask, out=region)
        if ink is not None:
            ink_box = [
                min(ink_box[0], x + ink[0]),
                min(ink_box[1], y + ink[1]),
                max(ink_box[2], x + ink[2]),
                max(ink_box[3], y + ink[3]),
            ]
    return out, tuple(ink_box)


def _curve_offsets(xs: np.ndarray, x0: float, x1: float, amplitude: float, wave: bool) -> np.ndarray:
    u = (xs - x0) / max(x1 - x0, 1e-6)
    if wave:
        return amplitude * 0.5 * np.sin(2 * np.pi * u)
    return amplitude * (1.0 - (2.0 * u - 1.0) ** 2)


def _curve(
    mask: np.ndarray, box: tuple[int, int, int, int], amplitude: float, wave: bool, points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shift the mask's columns by the curve offset; returns the new mask and the band polygon around the ink."""
    h, w = mask.shape
    x0, y0, x1, y1 = box
    offs = _curve_offsets(np.arange(w) + 0.5, x0, x1, amplitude, wave)
    pad = int(np.ceil(np.abs(offs).max())) + 1
    out_h = h + 2 * pad
    map_x = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (out_h, w))
    map_y = (np.arange(out_h, dtype=np.float32)[:, None] - pad - offs[None, :]).astype(np.float32)
    curved = cv2.remap(mask, np.ascontiguousarray(map_x), map_y, cv2.INTER_LINEAR, borderValue=0)
    xs = np.linspace(x0, x1, points)
    o = _curve_offsets(xs, x0, x1, amplitude, wave) + pad
    top = np.stack([xs, y0 + o], axis=1)
    bottom = np.stack([xs, y1 + o], axis=1)[::-1]
    return curved, np.concatenate([top, bottom]).astype(np.float64)


def _apply(hom: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ hom.T
    return p[:, :2] / p[:, 2:3]


def _index_homography(hom: np.ndarray) -> np.ndarray:
    """Homography between pixel indices for a homography between continuous coordinates."""
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    return unshift @ hom @ shift


@dataclasses.dataclass
class ShapedWord:
    """A word mask and polygon after curving, perspective and rotation, centred on the origin."""

    text: str
    mask: np.ndarray
    hom: np.ndarray  # continuous mask coordinates -> image coordinates (before translation)
    polygon: np.ndarray  # float64 [n, 2] in image coordinates (before translation)


def shape_word(rng: np.random.Generator, text: str, style: TextStyle) -> ShapedWord:
    """Render ``text`` in a random font/size and draw its curve, perspective and rotation."""
    font = style.fonts[int(rng.integers(len(style.fonts)))]
    size = int(rng.integers(style.font_size[0], style.font_size[1] + 1))
    mask, box = word_mask(font, size, text)
    x0, y0, x1, y1 = box
    if rng.random() < style.curve_prob:
        amplitude = style.curve_amplitude * (y1 - y0) * rng.uniform(0.3, 1.0) * rng.choice([-1.0, 1.0])
        mask, poly = _curve(mask, box, amplitude, bool(rng.random() < 0.5), style.curve_points)
    else:
        poly = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    h, w = mask.shape
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    jitter = rng.uniform(-style.perspective, style.perspective, size=(4, 2)) * (w, h)
    persp = cv2.getPerspectiveTransform(corners.astype(np.float32), (corners + jitter).astype(np.float32))
    theta = np.deg2rad(rng.uniform(-style.max_rotation, style.max_rotation))
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    centre = _apply(persp, np.array([[w / 2, h / 2]]))[0]
    to_origin = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]])
    hom = rot @ to_origin @ persp
    return ShapedWord(text=text, mask=mask, hom=hom, polygon=_apply(hom, poly))


def text_color(rng: np.random.Generator, background_mean: np.ndarray, min_contrast: float) -> np.ndarray:
    """A random RGB colour (float32, 0..255) whose luminance differs from the background's by >= min_contrast."""
    color = rng.uniform(0, 255, size=3).astype(np.float32)
    y_bg = float(background_mean @ LUMA) / 255.0
    y = float(color @ LUMA) / 255.0
    if abs(y - y_bg) >= min_contrast:
        return color
    dark = y_bg >= 0.5
    goal = y_bg - min_contrast if dark else y_bg + min_contrast
    target = 0.0 if dark else 1.0
    t = min(1.0, max(0.0, (goal - y) / (target - y) + 1e-3)) if target != y else 1.0
    return np.clip(color + t * (255.0 * target - color), 0, 255).astype(np.float32)


def paste_word(
    image: np.ndarray, word: ShapedWord, offset: np.ndarray, rng: np.random.Generator, min_contrast: float
) -> None:
    """Warp the word's mask to ``offset`` (translation) and alpha-blend it into ``image`` (uint8 HWC, in place)."""
    ih, iw = image.shape[:2]
    poly = word.polygon + offset
    px0 = max(0, int(np.floor(poly[:, 0].min())) - 2)
    py0 = max(0, int(np.floor(poly[:, 1].min())) - 2)
    px1 = min(iw, int(np.ceil(poly[:, 0].max())) + 2)
    py1 = min(ih, int(np.ceil(poly[:, 1].max())) + 2)
    if px1 <= px0 or py1 <= py0:
        return
    to_patch = np.array([[1, 0, offset[0] - px0], [0, 1, offset[1] - py0], [0, 0, 1]])
    hom = _index_homography(to_patch @ word.hom)
    alpha = cv2.warpPerspective(word.mask, hom, (px1 - px0, py1 - py0), flags=cv2.INTER_LINEAR, borderValue=0)
    patch = image[py0:py1, px0:px1]
    bg_mean = np.array(cv2.mean(patch, mask=alpha)[:3], np.float32)
    color = text_color(rng, bg_mean, min_contrast)
    ink = np.empty_like(patch)
    ink[...] = np.round(color).astype(np.uint8)
    weight = alpha.astype(np.float32)
    patch[...] = cv2.blendLinear(ink, patch, weight, 255.0 - weight)


def place_word(
    rng: np.random.Generator,
    word: ShapedWord,
    size: tuple[int, int],
    placed: list[shapely.Polygon],
    margin: float,
    tries: int,
) -> np.ndarray | None:
    """A translation putting the word's polygon inside the image and ``margin`` away from ``placed``, or None.

    On success the translated polygon is appended to ``placed``. The ``tries`` candidate translations are drawn and
    tested at once (the first that fits is used); only pairs whose margin-grown bounding boxes meet get the exact
    (shapely) distance test.
    """
    h, w = size
    lo_pt, hi_pt = word.polygon.min(axis=0), word.polygon.max(axis=0)
    lo = margin - lo_pt
    hi = np.array([w, h], np.float64) - margin - hi_pt
    if np.any(hi < lo):
        return None
    others = np.asarray(placed, dtype=object)
    boxes = shapely.bounds(others) if placed else np.zeros((0, 4))
    offsets = rng.uniform(lo, hi, size=(tries, 2))
    lo_box = lo_pt + offsets - margin  # [tries, 2]
    hi_box = hi_pt + offsets + margin
    near = (
        (boxes[None, :, 0] < hi_box[:, None, 0])
        & (boxes[None, :, 2] > lo_box[:, None, 0])
        & (boxes[None, :, 1] < hi_box[:, None, 1])
        & (boxes[None, :, 3] > lo_box[:, None, 1])
    )  # [tries, placed]
    cands = shapely.polygons(word.polygon[None] + offsets[:, None])
    t_idx, p_idx = np.nonzero(near)
    hit = np.zeros(tries, bool)
    hit[t_idx[shapely.dwithin(cands[t_idx], others[p_idx], margin)]] = True
    free = np.flatnonzero(~hit)
    if len(free):
        placed.append(cands[free[0]])
        return offsets[free[0]]
    return None
