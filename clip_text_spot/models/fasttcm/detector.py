"""FastTCM / TCM detectors: the matcher plus a detection head (``clip_text_spot.heads.HEADS``: DBNet, FCENet,
PANet), the score map concatenated on C5 as the released configs fuse it for every head.

The head reads the matcher's levels it names (DB and PAN: C2-C5, FCE: C3-C5). Parameter names extend the matcher's
(``backbone``, ``text_encoder``, ``contexts``, ...) with mmocr 0.4's ``neck`` and ``bbox_head``, so an official TCM
state dict maps onto the model name by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.heads import head_kind
from clip_text_spot.models.fasttcm.config import FastTCMConfig
from clip_text_spot.models.fasttcm.matcher import TCMMatcher
from clip_text_spot.models.inference import compiled


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """A TCM / FastTCM detector: the matcher, the head (``db``, ``fce``, ``pan``) and its widths as the released
    configs set them (DB FPNC: 256 lateral, 64 out per level; FCE FPN: 256, Fourier degree 5; PAN FPEM_FFM: 128,
    2 FPEMs)."""

    matcher: FastTCMConfig = dataclasses.field(default_factory=FastTCMConfig)
    head: str = "db"
    lateral_channels: int = 256
    out_channels: int = 64
    fce_channels: int = 256
    fourier_degree: int = 5
    pan_channels: int = 128
    fpem_repeat: int = 2

    def backbone_channels(self) -> tuple[int, ...]:
        """Channels of C2..C5 for the matcher's ModifiedResNet (width x 4, x 8, x 16, x 32)."""
        w = self.matcher.clip.vision.width
        return (w * 4, w * 8, w * 16, w * 32)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d, "matcher": self.matcher.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        d = dict(d)
        return cls(matcher=FastTCMConfig.from_dict(d.pop("matcher")), **d)


class FastTCMDetector(TCMMatcher):
    """``TCMMatcher`` + the head's ``neck`` and ``bbox_head`` over its levels, the last one ++ score map."""

    def __init__(self, config: DetectorConfig, *, rngs: nnx.Rngs, prompt_ids: np.ndarray | None = None):
        super().__init__(config.matcher, rngs=rngs, prompt_ids=prompt_ids)
        self.detector_config = config
        self.head_kind = head_kind(config.head)
        channels = dict(zip(("c2", "c3", "c4", "c5"), config.backbone_channels(), strict=True))
        in_channels = [channels[level] for level in self.head_kind.levels]
        in_channels[-1] += self.num_prompts
        decoder = self.head_kind.decoder(config, in_channels, rngs=rngs, dtype=jnp.dtype(config.matcher.dtype))
        self.neck, self.bbox_head = decoder.neck, decoder.bbox_head

    @compiled
    def __call__(
        self, images: jax.Array, text_cache: jax.Array | None = None, *, rngs: nnx.Rngs | jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """Normalised NHWC images (sides multiples of 32) -> the head's named float32 outputs (DB: ``prob``,
        ``thr``, ``binary`` [B, H, W]; FCE: ``cls_i``, ``reg_i`` per level; PAN: ``preds`` [B, H/4, W/4, 6]) and the
        ``score_map`` [B, H/32, W/32, K]. ``text_cache`` (FastTCM) skips the text tower; ``rngs`` drives dropout
        in train mode."""
        out = self.match(images, text_cache, rngs=rngs)
        feats = [out[level] for level in self.head_kind.levels]
        feats[-1] = jnp.concatenate([feats[-1], out["score_map"]], axis=-1)
        return {**self.head_kind.outputs(self.bbox_head(self.neck(feats))), "score_map": out["score_map"]}
