"""The DBNet head kind (``heads.base.HeadKind``): FPNC + DB head over [C2, C3, C4, C5 ++ score map]."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.heads.base import HeadKind, Instances
from clip_text_spot.heads.db.loss import db_loss, score_map_aux_loss
from clip_text_spot.heads.db.model import DBDecoder
from clip_text_spot.heads.db.postprocess import DB_PRESETS, db_postprocess_batch, resolve_config
from clip_text_spot.heads.db.targets import DB_TARGETS, DBTargetConfig, db_targets


@dataclasses.dataclass(frozen=True)
class DBTargets:
    """Per-sample DB targets (``gt_shrink``, ``gt_shrink_mask``, ``gt_thr``, ``gt_thr_mask``), picklable."""

    config: DBTargetConfig = DB_TARGETS

    def __call__(self, polygons: Sequence[np.ndarray], ignore: Sequence[bool], hw: tuple[int, int]) -> dict:
        return db_targets(polygons, ignore, hw, self.config)[0]


class DBHeadKind(HeadKind):
    name = "db"
    levels = ("c2", "c3", "c4", "c5")
    presets = DB_PRESETS
    target_presets = {"default": DB_TARGETS}

    @classmethod
    def decoder(cls, config: Any, in_channels: Sequence[int], *, rngs: nnx.Rngs, dtype: Any) -> DBDecoder:
        return DBDecoder(in_channels, config.lateral_channels, config.out_channels, rngs=rngs, dtype=dtype)

    @classmethod
    def outputs(cls, raw: Any) -> dict[str, jax.Array]:
        return {k: getattr(raw, k).astype(jnp.float32) for k in ("prob", "thr", "binary")}

    resolve = staticmethod(resolve_config)

    @property
    def targets(self) -> DBTargets:
        return DBTargets(self.target_config)

    def loss(self, outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        return db_loss(outputs["prob"], outputs["thr"], outputs["binary"], batch)

    def aux_loss(self, score_map: jax.Array, batch: Mapping[str, jax.Array], tau: float) -> jax.Array:
        return score_map_aux_loss(score_map, batch["gt_shrink"], batch["gt_shrink_mask"], tau)

    @classmethod
    def prediction(cls, outputs: Mapping[str, jax.Array]) -> jax.Array:
        return outputs["prob"]

    def postprocess(self, prediction, scales, valid_sizes) -> list[Instances]:
        scales = [tuple(s) for s in scales]
        sizes = [tuple(int(v) for v in s) for s in valid_sizes]
        return db_postprocess_batch(prediction, self.postprocess_config, scales=scales, valid_sizes=sizes)
