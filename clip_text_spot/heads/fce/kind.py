"""The FCENet head kind (``heads.base.HeadKind``): FPN + FCE head over [C3, C4, C5 ++ score map].

Batch keys: ``fce_level_0..3`` (the ``FCETargetConfig`` levels; with TCM's config the last one is the stride-32
matching map of the auxiliary loss). The auxiliary loss pairs each image with its own targets unless the run sets
``official_broadcast`` (``heads.fce.aux``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.heads.base import HeadKind, Instances, valid_cells
from clip_text_spot.heads.fce.aux import fce_aux_loss
from clip_text_spot.heads.fce.loss import fce_loss
from clip_text_spot.heads.fce.model import FCEDecoder
from clip_text_spot.heads.fce.postprocess import FCE_PRESETS, fce_postprocess, resolve_config
from clip_text_spot.heads.fce.targets import TCM_CTW_RANGES, FCETargetConfig, fce_targets

FCE_TARGET_PRESETS = {
    "ic15": FCETargetConfig(),  # TCM's IC15 pipeline (also its pre-training configs)
    "ctw": FCETargetConfig(level_proportion_range=TCM_CTW_RANGES),  # TCM's CTW1500 / Total-Text pipelines
}


@dataclasses.dataclass(frozen=True)
class FCETargets:
    """Per-sample FCE targets ``fce_level_i`` [H / d_i, W / d_i, 3 + 2 (2k + 1)], picklable."""

    config: FCETargetConfig = FCETargetConfig()

    def __call__(self, polygons: Sequence[np.ndarray], ignore: Sequence[bool], hw: tuple[int, int]) -> dict:
        text = [p for p, ig in zip(polygons, ignore, strict=True) if not ig]
        ignored = [p for p, ig in zip(polygons, ignore, strict=True) if ig]
        return {f"fce_level_{i}": m for i, m in enumerate(fce_targets(text, ignored, hw, self.config))}


class FCEHeadKind(HeadKind):
    name = "fce"
    levels = ("c3", "c4", "c5")
    presets = FCE_PRESETS
    target_presets = {"default": FCE_TARGET_PRESETS["ic15"], **FCE_TARGET_PRESETS}

    @classmethod
    def decoder(cls, config: Any, in_channels: Sequence[int], *, rngs: nnx.Rngs, dtype: Any) -> FCEDecoder:
        return FCEDecoder(in_channels, config.fce_channels, config.fourier_degree, rngs=rngs, dtype=dtype)

    @classmethod
    def outputs(cls, raw: Any) -> dict[str, jax.Array]:
        out = {}
        for i, (cls_map, reg) in enumerate(raw):
            out[f"cls_{i}"], out[f"reg_{i}"] = cls_map.astype(jnp.float32), reg.astype(jnp.float32)
        return out

    resolve = staticmethod(resolve_config)

    @property
    def targets(self) -> FCETargets:
        return FCETargets(self.target_config)

    @classmethod
    def _levels(cls, outputs: Mapping[str, jax.Array]) -> tuple[list, list]:
        n = sum(k.startswith("cls_") for k in outputs)
        return [outputs[f"cls_{i}"] for i in range(n)], [outputs[f"reg_{i}"] for i in range(n)]

    def loss(self, outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        cls_levels, reg_levels = self._levels(outputs)
        targets = [batch[f"fce_level_{i}"] for i in range(len(self.target_config.level_size_divisors))]
        total, parts = fce_loss(cls_levels, reg_levels, targets)
        parts.pop("per_level")
        return total, parts

    def aux_loss(self, score_map: jax.Array, batch: Mapping[str, jax.Array], tau: float) -> jax.Array:
        matching = batch[f"fce_level_{len(self.target_config.level_size_divisors) - 1}"]
        return fce_aux_loss(score_map, matching, tau, official_broadcast=self.official_broadcast)

    @classmethod
    def prediction(cls, outputs: Mapping[str, jax.Array]) -> tuple[list, list]:
        return cls._levels(outputs)

    def postprocess(self, prediction, scales, valid_sizes) -> list[Instances]:
        cls_levels, reg_levels = prediction
        strides = self.postprocess_config.scales
        out = []
        for b, (scale, size) in enumerate(zip(scales, valid_sizes, strict=True)):
            cells = [valid_cells(size, s) for s in strides]
            cls_b = [np.asarray(c[b])[:h, :w] for c, (h, w) in zip(cls_levels, cells, strict=True)]
            reg_b = [np.asarray(r[b])[:h, :w] for r, (h, w) in zip(reg_levels, cells, strict=True)]
            rows = fce_postprocess(cls_b, reg_b, self.postprocess_config, scale=tuple(scale))
            out.append([(row[:-1].reshape(-1, 2), float(row[-1])) for row in rows])
        return out
