"""Augmentation: the DBNet train pipeline of TCM/mmocr, eval resizing, and PARSeq-style recognition augmentation.

Detection (``tcm.md`` §4.1, ``eval_data.md`` §4.2; mmocr 0.x ``ColorJitter``, ``ImgAug``, ``EastRandomCrop``):

1. ColorJitter(brightness=32/255, saturation=0.5) with torchvision semantics: factors drawn uniformly in
   [1 - b, 1 + b] and [1 - s, 1 + s], the two applied in random order, each saturating to [0, 255]; saturation blends
   with the ITU-R 601 grey image.
2. Fliplr(p=0.5) -> Affine(rotate U[-10, 10] degrees, about the image centre, output the same size, corners cut)
   -> Resize(one scale U[0.5, 3] for both sides, new size rounded).
3. EastRandomCrop(target 640, max_tries 10, min_crop_side_ratio 0.1): a crop whose borders avoid the (non-ignored)
   text, resized keeping the aspect ratio into the target square and padded bottom/right; polygons entirely
   outside the crop are dropped, polygons cut by it are kept (coordinates may leave the image).

The geometric steps are composed into one affine map and the source image is warped once, straight into the crop
(bilinear). In the reference the image is normalised before the geometric steps, so rotation corners and padding
are 0 after normalisation; here they are filled with the (rounded) mean colour, i.e. at most 0.5/std from 0.
The crop follows mmocr's algorithm including its quirks (``_split_regions`` drops the last run of text-free
positions; ``_random_select`` draws the two ends with replacement), with one deviation: polygon extents are
clipped to the image before they mark text rows/columns (mmocr slices with negative indices, which wraps around).

Recognition: ``augment_rec`` is a light RandAugment in PARSeq's configuration (``dptr.md`` §4.1): ``num_ops`` (3)
distinct operations drawn from the pool, each applied with probability ``prob`` (0.5) at ``magnitude`` (5 of 10),
with PARSeq's magnitudes (rotate 30 deg, shear x 0.9 / y 0.2, translate x 10% / y 30% at magnitude 10), its pool
(timm's increasing ops without sharpness, plus Gaussian blur and Poisson noise). Then ``resize_rec`` resizes to
32 x 128 (bicubic, aspect ignored), as OpenOCR's ``RecTVResize(padding=False)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

# --------------------------------------------------------------------------------------------------- detection


@dataclasses.dataclass(frozen=True)
class DetAugConfig:
    """Parameters of the detection train augmentation (defaults: TCM's DBNet pipeline)."""

    crop_size: int = 640
    brightness: float = 32 / 255
    saturation: float = 0.5
    flip_prob: float = 0.5
    max_rotation: float = 10.0
    scale_range: tuple[float, float] = (0.5, 3.0)
    crop_max_tries: int = 10
    min_crop_side_ratio: float = 0.1

    def __post_init__(self):
        if self.crop_size < 32:
            raise ValueError(f"DetAugConfig.crop_size must be >= 32, got {self.crop_size}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"DetAugConfig.scale_range must be (min, max) with 0 < min <= max, got {self.scale_range}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"DetAugConfig.flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.brightness < 0 or self.saturation < 0:
            raise ValueError("DetAugConfig.brightness and .saturation must be >= 0")


LUMA = np.array([0.299, 0.587, 0.114])
"""ITU-R 601 luma weights of R, G, B (torchvision's and OpenCV's grey conversion)."""


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, saturation: float) -> np.ndarray:
    """torchvision ColorJitter restricted to brightness and saturation, on a uint8 RGB image."""
    ops = []
    if brightness > 0:
        ops.append(("b", rng.uniform(max(0.0, 1 - brightness), 1 + brightness)))
    if saturation > 0:
        ops.append(("s", rng.uniform(max(0.0, 1 - saturation), 1 + saturation)))
    for k in rng.permutation(len(ops)):
        name, f = ops[k]
        if name == "b":
            image = cv2.convertScaleAbs(image, alpha=f)
        else:  # f * image + (1 - f) * grey, grey = luma . rgb, as one colour matrix (saturating to uint8)
            image = cv2.transform(image, f * np.eye(3) + (1.0 - f) * np.outer(np.ones(3), LUMA))
    return image


def _split_regions(axis: np.ndarray) -> list[np.ndarray]:
    """mmocr's ``split_regions``: runs of consecutive values, the last run not included."""
    breaks = np.flatnonzero(np.diff(axis) != 1) + 1
    starts = np.concatenate([[0], breaks[:-1]]) if len(breaks) else np.zeros(0, np.int64)
    return [axis[a:b] for a, b in zip(starts, breaks, strict=True)]


def _random_select(rng: np.random.Generator, axis: np.ndarray, max_size: int) -> tuple[int, int]:
    xx = rng.choice(axis, size=2)
    return int(np.clip(xx.min(), 0, max_size - 1)), int(np.clip(xx.max(), 0, max_size - 1))


def _region_wise_random_select(rng: np.random.Generator, regions: list[np.ndarray]) -> tuple[int, int]:
    picks = [int(rng.choice(regions[i])) for i in rng.choice(len(regions), size=2)]
    return min(picks), max(picks)


def _outside_rect(poly: np.ndarray, x: float, y: float, w: float, h: float) -> bool:
    return bool(poly[:, 0].max() < x or poly[:, 0].min() > x + w or poly[:, 1].max() < y or poly[:, 1].min() > y + h)


def east_crop_area(
    rng: np.random.Generator,
    size: tuple[int, int],
    polygons: Sequence[np.ndarray],
    max_tries: int = 10,
    min_crop_side_ratio: float = 0.1,
) -> tuple[int, int, int, int]:
    """mmocr's ``EastRandomCrop.crop_area``: (x, y, w, h) of a crop whose borders avoid ``polygons``."""
    h, w = size
    h_array = np.zeros(h, np.int32)
    w_array = np.zeros(w, np.int32)
    for poly in polygons:
        pts = np.round(poly).astype(np.int32)
        x0, x1 = np.clip([pts[:, 0].min(), pts[:, 0].max()], 0, w)
        y0, y1 = np.clip([pts[:, 1].min(), pts[:, 1].max()], 0, h)
        w_array[x0:x1] = 1
        h_array[y0:y1] = 1
    h_axis = np.flatnonzero(h_array == 0)
    w_axis = np.flatnonzero(w_array == 0)
    if len(h_axis) == 0 or len(w_axis) == 0:
        return 0, 0, w, h
    h_regions = _split_regions(h_axis)
    w_regions = _split_regions(w_axis)
    for _ in range(max_tries):
        if len(w_regions) > 1:
            xmin, xmax = _region_wise_random_select(rng, w_regions)
        else:
            xmin, xmax = _random_select(rng, w_axis, w)
        if len(h_regions) > 1:
            ymin, ymax = _region_wise_random_select(rng, h_regions)
        else:
            ymin, ymax = _random_select(rng, h_axis, h)
        if xmax - xmin < min_crop_side_ratio * w or ymax - ymin < min_crop_side_ratio * h:
            continue
        if any(not _outside_rect(p, xmin, ymin, xmax - xmin, ymax - ymin) for p in polygons):
            return xmin, ymin, xmax - xmin, ymax - ymin
    return 0, 0, w, h


def transform_points(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine/projective matrix to points [n, 2] (float32 result)."""
    p = np.asarray(pts, np.float64) @ matrix[:2, :2].T + matrix[:2, 2]
    if np.any(matrix[2] != (0, 0, 1)):
        p = p / (np.asarray(pts, np.float64) @ matrix[2, :2] + matrix[2, 2])[:, None]
    return p.astype(np.float32)


def warp_affine(image: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int], fill: Sequence[float]) -> np.ndarray:
    """Warp ``image`` by a 3x3 affine map between continuous coordinates (pixel i covers [i, i + 1]) into (H, W)."""
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    m = (unshift @ matrix @ shift)[:2]
    h, w = out_size
    return cv2.warpAffine(
        image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(fill)
    )


def augment_det(
    image: np.ndarray,
    polygons: Sequence[np.ndarray],
    ignore: Sequence[bool],
    rng: np.random.Generator,
    config: DetAugConfig,
    fill: Sequence[float],
) -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
    """Train augmentation of one image (uint8 RGB) and its polygons; returns a crop_size square image.

    ``fill`` is the colour of areas with no source pixel (the normalisation mean, so they normalise to ~0).
    Polygons without points are dropped.
    """
    kept = [(np.asarray(p, np.float32).reshape(-1, 2), bool(ig)) for p, ig in zip(polygons, ignore, strict=True)]
    kept = [(p, ig) for p, ig in kept if len(p)]
    polygons, ignore = [p for p, _ in kept], [ig for _, ig in kept]
    h0, w0 = image.shape[:2]
    image = color_jitter(image, rng, config.brightness, config.saturation)
    mat = np.eye(3)
    if rng.random() < config.flip_prob:
        mat = np.array([[-1.0, 0, w0], [0, 1, 0], [0, 0, 1]])
    theta = np.deg2rad(rng.uniform(-config.max_rotation, config.max_rotation))
    c, s = np.cos(theta), np.sin(theta)
    cx, cy = w0 / 2, h0 / 2
    rot = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1]])
    scale = rng.uniform(*config.scale_range)
    w1, h1 = max(1, int(round(w0 * scale))), max(1, int(round(h0 * scale)))
    resize = np.diag([w1 / w0, h1 / h0, 1.0])
    mat = resize @ rot @ mat
    polys = [transform_points(mat, p) for p in polygons]

    care = [p for p, ig in zip(polys, ignore, strict=True) if not ig]
    x, y, cw, ch = east_crop_area(rng, (h1, w1), care, config.crop_max_tries, config.min_crop_side_ratio)
    target = config.crop_size
    k = min(target / cw, target / ch)
    out_w, out_h = int(cw * k), int(ch * k)
    crop = np.array([[k, 0, -x * k], [0, k, -y * k], [0, 0, 1]])
    out = warp_affine(image, crop @ mat, (target, target), fill)
    out[out_h:] = np.round(np.asarray(fill)).astype(np.uint8)  # mmocr pads the resized crop bottom/right
    out[:, out_w:] = np.round(np.asarray(fill)).astype(np.uint8)

    kept_polys, kept_ignore = [], []
    for p, ig in zip(polys, ignore, strict=True):
        q = transform_points(crop, p)
        if not _outside_rect(q, 0, 0, out_w, out_h):
            kept_polys.append(q)
            kept_ignore.append(bool(ig))
    return out, kept_polys, kept_ignore


def resize_keep_ratio(
    image: np.ndarray, polygons: Sequence[np.ndarray], size: tuple[int, int], fill: Sequence[float]
) -> tuple[np.ndarray, list[np.ndarray], tuple[float, float]]:
    """Eval resize: scale by ``min(H / h, W / w)`` (new side ``int(side * f + 0.5)``, mmocr's rounding), pad
    bottom/right with ``fill`` to ``size`` = (H, W). Returns the image, the scaled polygons and the per-axis scale
    factors (sx, sy) = (new_w / w, new_h / h) that map original coordinates to the resized image."""
    h, w = image.shape[:2]
    th, tw = size
    f = min(th / h, tw / w)
    nw, nh = min(tw, max(1, int(w * f + 0.5))), min(th, max(1, int(h * f + 0.5)))
    out = np.empty((th, tw, 3), np.uint8)
    out[...] = np.round(np.asarray(fill)).astype(np.uint8)
    out[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    sx, sy = nw / w, nh / h
    polys = [np.asarray(p, np.float32) * np.array([sx, sy], np.float32) for p in polygons]
    return out, polys, (sx, sy)


# ------------------------------------------------------------------------------------------------- recognition

_FILL = (128, 128, 128)


def _rotate(img: Image.Image, level: float, sign: float) -> Image.Image:
    return img.rotate(sign * 30.0 * level, resample=Image.Resampling.BILINEAR, fillcolor=_FILL)


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=_FILL)


def _poisson(img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    lam = min(40.0 * level, 0.2 * max(img.size))
    arr = np.asarray(img).astype(np.float32)
    sign = np.where(rng.random(arr.shape[:2]) < 0.5, -1.0, 1.0)  # imgaug's AdditivePoissonNoise: +-Poisson(lam)
    noise = (rng.poisson(lam, size=arr.shape[:2]) * sign).astype(np.float32)
    return Image.fromarray(np.clip(arr + noise[..., None], 0, 255).astype(np.uint8))


def _blur(img: Image.Image, level: float) -> Image.Image:
    radius = max(1.0, min(4.0 * level, 0.02 * max(img.size)))
    return img.filter(ImageFilter.GaussianBlur(radius))


def _enhance(kind: type) -> Callable[..., Image.Image]:
    return lambda img, level, sign, rng: kind(img).enhance(1.0 + sign * 0.9 * level)


REC_OPS = {
    "auto_contrast": lambda img, level, sign, rng: ImageOps.autocontrast(img),
    "equalize": lambda img, level, sign, rng: ImageOps.equalize(img),
    "invert": lambda img, level, sign, rng: ImageOps.invert(img),
    "rotate": lambda img, level, sign, rng: _rotate(img, level, sign),
    "posterize": lambda img, level, sign, rng: ImageOps.posterize(img, 4 - int(4 * level)),
    "solarize": lambda img, level, sign, rng: ImageOps.solarize(img, 256 - int(256 * level)),
    "solarize_add": lambda img, level, sign, rng: img.point(
        [min(255, i + int(110 * level)) if i < 128 else i for i in range(256)] * len(img.getbands())
    ),
    "color": _enhance(ImageEnhance.Color),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "shear_x": lambda img, level, sign, rng: _affine(img, (1, sign * 0.9 * level, 0, 0, 1, 0)),
    "shear_y": lambda img, level, sign, rng: _affine(img, (1, 0, 0, sign * 0.2 * level, 1, 0)),
    "translate_x": lambda img, level, sign, rng: _affine(img, (1, 0, sign * 0.1 * level * img.size[0], 0, 1, 0)),
    "translate_y": lambda img, level, sign, rng: _affine(img, (1, 0, 0, 0, 1, sign * 0.3 * level * img.size[1])),
    "gaussian_blur": lambda img, level, sign, rng: _blur(img, level),
    "poisson_noise": lambda img, level, sign, rng: _poisson(img, level, rng),
}
"""PARSeq's RandAugment pool: op(image, level in [0, 1], sign, rng) -> image; level 1 is magnitude 10."""


@dataclasses.dataclass(frozen=True)
class RecAugConfig:
    """Recognition augmentation (PARSeq's ``rand_augment_transform``: 3 ops, magnitude 5, each with p = 0.5)."""

    num_ops: int = 3
    magnitude: float = 5.0
    prob: float = 0.5
    ops: tuple[str, ...] = tuple(REC_OPS)

    def __post_init__(self):
        unknown = sorted(set(self.ops) - set(REC_OPS))
        if unknown:
            raise ValueError(f"RecAugConfig.ops has unknown operations {unknown}; known: {sorted(REC_OPS)}")
        if not 0 <= self.num_ops <= len(self.ops):
            raise ValueError(f"RecAugConfig.num_ops must be in [0, {len(self.ops)}], got {self.num_ops}")
        if not 0.0 <= self.magnitude <= 10.0:
            raise ValueError(f"RecAugConfig.magnitude must be in [0, 10], got {self.magnitude}")


PARSEQ_AUG = RecAugConfig()
"""PARSeq's setting: 3 ops at magnitude 5, each with probability 0.5, from the full pool."""


def augment_rec(image: np.ndarray, rng: np.random.Generator, config: RecAugConfig = PARSEQ_AUG) -> np.ndarray:
    """RandAugment a uint8 RGB word crop: ``num_ops`` distinct ops, each applied with probability ``prob``."""
    img = Image.fromarray(image)
    level = config.magnitude / 10.0
    for k in rng.choice(len(config.ops), size=config.num_ops, replace=False):
        if rng.random() < config.prob:
            sign = -1.0 if rng.random() < 0.5 else 1.0
            img = REC_OPS[config.ops[k]](img, level, sign, rng)
    return np.asarray(img.convert("RGB"))


def resize_rec(image: np.ndarray, size: tuple[int, int] = (32, 128)) -> np.ndarray:
    """Bicubic resize of a uint8 RGB crop to exactly ``size`` = (H, W), ignoring the aspect ratio."""
    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))
