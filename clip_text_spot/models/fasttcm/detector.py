"""FastTCM / TCM with a DBNet head: the matcher's score map joins C5, an FPNC neck and a DB head predict the maps.

Parameter names extend the matcher's (``backbone``, ``text_encoder``, ``contexts``, ...) with mmocr 0.4's ``neck``
and ``bbox_head``, so an official TCM-DBNet state dict maps onto the model name by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.dbnet import FPNC, DBHead
from clip_text_spot.models.fasttcm.config import FastTCMConfig
from clip_text_spot.models.fasttcm.matcher import TCMMatcher
from clip_text_spot.models.inference import compiled


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """A TCM-DBNet / FastTCM-DBNet detector: the matcher plus the FPNC neck widths (mmocr: 256 lateral, 64 out)."""

    matcher: FastTCMConfig = dataclasses.field(default_factory=FastTCMConfig)
    lateral_channels: int = 256
    out_channels: int = 64

    def backbone_channels(self) -> tuple[int, ...]:
        """Channels of C2..C5 for the matcher's ModifiedResNet (width x 4, x 8, x 16, x 32)."""
        w = self.matcher.clip.vision.width
        return (w * 4, w * 8, w * 16, w * 32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "matcher": self.matcher.to_dict(),
            "lateral_channels": self.lateral_channels,
            "out_channels": self.out_channels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        d = dict(d)
        return cls(matcher=FastTCMConfig.from_dict(d.pop("matcher")), **d)


class FastTCMDetector(TCMMatcher):
    """``TCMMatcher`` + ``neck`` (FPNC over [C2, C3, C4, C5 ++ score map]) + ``bbox_head`` (DB head)."""

    def __init__(self, config: DetectorConfig, *, rngs: nnx.Rngs, prompt_ids: np.ndarray | None = None):
        super().__init__(config.matcher, rngs=rngs, prompt_ids=prompt_ids)
        self.detector_config = config
        c2, c3, c4, c5 = config.backbone_channels()
        dtype = jnp.dtype(config.matcher.dtype)
        in_channels = (c2, c3, c4, c5 + self.num_prompts)
        self.neck = FPNC(in_channels, config.lateral_channels, config.out_channels, rngs=rngs, dtype=dtype)
        self.bbox_head = DBHead(config.out_channels * 4, rngs=rngs, dtype=dtype)

    @compiled
    def __call__(
        self, images: jax.Array, text_cache: jax.Array | None = None, *, rngs: nnx.Rngs | jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Normalised NHWC images (sides multiples of 32) -> ``prob``, ``thr``, ``binary`` [B, H, W] and the
        ``score_map`` [B, H/32, W/32, K]. ``text_cache`` (FastTCM) skips the text tower; ``rngs`` drives dropout
        in train mode."""
        out = self.match(images, text_cache, rngs=rngs)
        c5 = jnp.concatenate([out["c5"], out["score_map"]], axis=-1)
        maps = self.bbox_head(self.neck([out["c2"], out["c3"], out["c4"], c5]))
        return {
            "prob": maps.prob.astype(jnp.float32),
            "thr": maps.thr.astype(jnp.float32),
            "binary": maps.binary.astype(jnp.float32),
            "score_map": out["score_map"],
        }
