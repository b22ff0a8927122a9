"""PANet training targets, following mmocr 0.4 ``PANetTargets`` (``fcenet_panet.md`` §7.1), host side (NumPy/OpenCV).

Per image at network input resolution, for each shrink ratio r (mmocr IC15: (1.0, 0.5); CTW: (1.0, 0.7)):
each text polygon t (0-based, annotation order) is cast to int32, offset inwards with pyclipper by
``min(int(A (1 - r^2) / (L + 0.001) + 0.5), max_shrink)`` (``heads.common.shrink_offset``) and the first
resulting path is filled with ``t + 1`` (later polygons overwrite earlier ones); an empty offset skips the polygon
(PAN tags nothing as ignored). r = 1.0 gives the polygon after a pyclipper round trip. ``gt_mask`` is ones with every
ignore polygon (int32) filled with 0.

For the loss the maps go to the prediction resolution as mmdet's ``BitmapMasks.rescale(0.25)`` does (OpenCV nearest
to ``(int(w * 0.25 + 0.5), int(h * 0.25 + 0.5))``), then are zero-padded to the prediction size (``loss_targets``).
OpenCV 5 is pinned: OpenCV 4 rasterises some polygon edges differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from clip_text_spot.heads.common import shrink_offset


@dataclasses.dataclass(frozen=True)
class PANTargetConfig:
    """``PANetTargets`` constants; ``shrink_ratio[0]`` gives the text map, ``shrink_ratio[1]`` the kernel map."""

    shrink_ratio: tuple[float, ...] = (1.0, 0.5)
    max_shrink: int = 20

    def __post_init__(self):
        if len(self.shrink_ratio) != 2 or not all(0.0 < r <= 1.0 for r in self.shrink_ratio):
            raise ValueError(f"PANTargetConfig.shrink_ratio must be two ratios in (0, 1], got {self.shrink_ratio}")


PAN_TARGET_PRESETS: dict[str, PANTargetConfig] = {
    "ic15": PANTargetConfig((1.0, 0.5)),  # also TCM's CTW fine-tuning config (it reuses the IC15 pipeline)
    "ctw1500": PANTargetConfig((1.0, 0.7)),  # mmocr's CTW pipeline, TCM's PAN pre-training configs
}


def instance_kernel(
    polygons: Sequence[np.ndarray], shape: tuple[int, int], shrink_ratio: float, max_shrink: int = 20
) -> np.ndarray:
    """float32 [H, W] instance ids: polygon i offset inwards (mmocr ``generate_kernels``) and filled with i + 1."""
    kernel = np.zeros(shape, np.float32)
    for i, poly in enumerate(polygons):
        _, paths = shrink_offset(np.asarray(poly, np.float32).reshape(-1, 2), shrink_ratio, max_shrink)
        if paths:
            cv2.fillPoly(kernel, [np.asarray(paths[0], np.int32)], i + 1)
    return kernel


def effective_mask(ignore_polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] ones with each ignore polygon (int32 points) filled with 0 (mmocr ``generate_effective_mask``)."""
    mask = np.ones(shape, np.uint8)
    for poly in ignore_polygons:
        cv2.fillPoly(mask, [np.asarray(poly, np.float32).reshape(-1, 2).astype(np.int32)], 0)
    return mask


def pan_targets(
    polygons: Sequence[np.ndarray],
    ignore: Sequence[bool],
    shape: tuple[int, int],
    config: PANTargetConfig = PANTargetConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """PANet targets of one (H, W) image from float polygons [n_i, 2] and their ignore flags.

    Returns ``(gt_kernels, gt_mask)``: float32 [2, H, W] instance ids (text, kernel) numbered over the non-ignored
    polygons in order, and uint8 [H, W] (0 inside ignore polygons).
    """
    if len(polygons) != len(ignore):
        raise ValueError(f"pan_targets: {len(polygons)} polygons but {len(ignore)} ignore flags")
    text = [p for p, ig in zip(polygons, ignore, strict=True) if not ig]
    ignored = [p for p, ig in zip(polygons, ignore, strict=True) if ig]
    kernels = np.stack([instance_kernel(text, shape, r, config.max_shrink) for r in config.shrink_ratio])
    return kernels, effective_mask(ignored, shape)


def rescale_nearest(maps: np.ndarray, scale: float) -> np.ndarray:
    """mmdet ``BitmapMasks.rescale(scale)`` of [N, H, W] maps: OpenCV nearest to ``int(size * scale + 0.5)``."""
    h, w = maps.shape[-2:]
    size = (int(w * scale + 0.5), int(h * scale + 0.5))
    return np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in maps])


def loss_targets(
    gt_kernels: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    out_hw: tuple[int, int],
    downsample_ratio: float = 0.25,
    max_instances: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of ``pan_targets`` (images of any sizes) at the prediction resolution ``out_hw``.

    Each image's maps are rescaled by ``downsample_ratio`` (``rescale_nearest``) and zero-padded at the bottom/right
    to ``out_hw`` (mmocr ``PANLoss.bitmasks2tensor``). Returns ``(gt_text, gt_kernel, gt_mask)``: float32, float32
    and uint8 [B, h, w]. With ``max_instances`` (the loss's static cap), more instances in an image are an error.
    """
    text, kernel, mask = [], [], []
    for kernels, m in zip(gt_kernels, gt_masks, strict=True):
        small = rescale_nearest(np.concatenate([kernels, np.asarray(m, np.float32)[None]]), downsample_ratio)
        sh, sw = small.shape[-2:]
        if sh > out_hw[0] or sw > out_hw[1]:
            raise ValueError(f"targets rescaled to {(sh, sw)} exceed the prediction size {tuple(out_hw)}")
        padded = np.zeros((3, *out_hw), np.float32)
        padded[:, :sh, :sw] = small
        if max_instances is not None and padded[:2].max(initial=0) > max_instances:
            raise ValueError(f"an image has {int(padded[:2].max())} instances, more than max_instances={max_instances}")
        text.append(padded[0])
        kernel.append(padded[1])
        mask.append(padded[2].astype(np.uint8))
    return np.stack(text), np.stack(kernel), np.stack(mask)
