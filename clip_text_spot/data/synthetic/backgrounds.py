"""Backgrounds for synthetic text: gradients, smooth noise, textures and natural photos.

Textures and photos are the images shipped inside scikit-image's wheel (``skimage/data``), read directly with PIL:
nothing is downloaded (``skimage.data`` loaders would fetch files that are not in the wheel). Images that contain
legible text of their own (``text.png``, ``page.png``) are not used, since they would be unlabelled text. Names not
found in the installed wheel are skipped; a kind with no image left is not drawn.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import cv2
import numpy as np
from PIL import Image

BACKGROUND_KINDS = ("gradient", "noise", "texture", "photo")

PHOTO_FILES = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
TEXTURE_FILES = ("brick.png", "grass.png", "gravel.png")


def _skimage_data_dir() -> str | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(spec.submodule_search_locations[0], "data")


@functools.cache
def _load_images(names: tuple[str, ...], mode: str) -> tuple[np.ndarray, ...]:
    root = _skimage_data_dir()
    if root is None:
        return ()
    out = []
    for name in names:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            with Image.open(path) as im:
                out.append(np.asarray(im.convert(mode)))
    return tuple(out)


def photos() -> tuple[np.ndarray, ...]:
    """The natural photos available in the installed scikit-image, uint8 RGB."""
    return _load_images(PHOTO_FILES, "RGB")


def textures() -> tuple[np.ndarray, ...]:
    """The grey-level textures available in the installed scikit-image, uint8 [H, W]."""
    return _load_images(TEXTURE_FILES, "L")


def available_kinds() -> tuple[str, ...]:
    """Background kinds that can be drawn with the installed packages."""
    return tuple(k for k in BACKGROUND_KINDS if (k != "photo" or photos()) and (k != "texture" or textures()))


@functools.cache
def _grain_tile() -> np.ndarray:
    """A fixed 256x256x3 tile of Gaussian grain around 128 (sigma 32, same in every process), tiled over images."""
    g = np.random.default_rng(0).normal(128.0, 32.0, size=(256, 256, 1))
    return np.repeat(np.clip(g, 0, 255).astype(np.uint8), 3, axis=2)


def _random_crop_resized(img: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random crop of ``img`` with the aspect ratio of (h, w), covering >= 40% of the largest such crop, resized."""
    ih, iw = img.shape[:2]
    fit = min(ih / h, iw / w)
    s = fit * rng.uniform(0.4, 1.0)
    ch, cw = max(1, int(h * s)), max(1, int(w * s))
    y0 = int(rng.integers(0, ih - ch + 1))
    x0 = int(rng.integers(0, iw - cw + 1))
    crop = img[y0 : y0 + ch, x0 : x0 + cw]
    interp = cv2.INTER_AREA if ch > h else cv2.INTER_LINEAR
    return cv2.resize(crop, (w, h), interpolation=interp)


def _random_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0, 255, size=(n, 3))


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = _random_colors(rng, 2)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:32, 0:32] / 31.0
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    small = (c0 + t[..., None] * (c1 - c0)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) + 0.5, 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    k = int(rng.integers(2, 9))
    base = rng.uniform(0, 255, size=(1, 1, 3))
    grid = np.clip(base + rng.normal(0, 60, size=(k, k, 3)), 0, 255).astype(np.uint8)
    img = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    reps = (h // 256 + 2, w // 256 + 2, 1)
    oy, ox = int(rng.integers(0, 256)), int(rng.integers(0, 256))
    grain = np.ascontiguousarray(np.tile(_grain_tile(), reps)[oy : oy + h, ox : ox + w])
    amp = rng.uniform(0, 12) / 32.0  # grain standard deviation in grey levels, over the tile's 32
    return cv2.addWeighted(img, 1.0, grain, amp, -128.0 * amp)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    texs = textures()
    gray = _random_crop_resized(texs[int(rng.integers(len(texs)))], rng, h, w)
    c0, c1 = _random_colors(rng, 2)
    channels = [cv2.convertScaleAbs(gray, alpha=(b - a) / 255.0, beta=a) for a, b in zip(c0, c1, strict=True)]
    return cv2.merge(channels)


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    pics = photos()
    img = _random_crop_resized(pics[int(rng.integers(len(pics)))], rng, h, w)
    return cv2.flip(img, 1) if rng.random() < 0.5 else img


_MAKERS = {"gradient": _gradient, "noise": _noise, "texture": _texture, "photo": _photo}


def make_background(
    rng: np.random.Generator, h: int, w: int, kind_weights: tuple[float, ...], contrast: float = 1.0
) -> np.ndarray:
    """A uint8 RGB background [h, w, 3]; ``kind_weights`` weigh ``BACKGROUND_KINDS``.

    ``contrast`` < 1 pulls textures and photos towards their mean colour (a calmer background keeps text legible).
    """
    kinds = available_kinds()
    weights = np.array([kind_weights[BACKGROUND_KINDS.index(k)] for k in kinds], np.float64)
    if weights.sum() <= 0:
        raise ValueError(f"background weights {kind_weights} give no weight to the available kinds {kinds}")
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    img = _MAKERS[kind](rng, h, w)
    if contrast != 1.0 and kind in ("texture", "photo"):
        mean = np.array(cv2.mean(img)[:3])
        matrix = np.concatenate([contrast * np.eye(3), ((1.0 - contrast) * mean)[:, None]], axis=1)
        img = cv2.transform(img, matrix)
    return img
