"""The PANet head kind (``heads.base.HeadKind``): FPEM_FFM + PAN head over [C2, C3, C4, C5 ++ score map].

Batch keys (per sample, ``loss_targets`` of one image): ``pan_text``, ``pan_kernel``, ``pan_mask`` [H/4, W/4] (the
loss's resolution) and ``pan_text_full``, ``pan_mask_full`` [H, W] (the auxiliary loss's). ``max_instances`` is the
loss's static instance cap; a sample with more text instances is an error naming the cap.
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
from clip_text_spot.heads.pan.aux import pan_score_map_aux_loss
from clip_text_spot.heads.pan.loss import PANLossConfig, pan_loss
from clip_text_spot.heads.pan.model import PANDecoder
from clip_text_spot.heads.pan.postprocess import PAN_PRESETS, pan_postprocess, resolve_config
from clip_text_spot.heads.pan.targets import PAN_TARGET_PRESETS, PANTargetConfig, loss_targets, pan_targets


@dataclasses.dataclass(frozen=True)
class PANTargets:
    """Per-sample PAN targets (module docstring), picklable."""

    config: PANTargetConfig = PANTargetConfig()
    max_instances: int = 256

    def __call__(self, polygons: Sequence[np.ndarray], ignore: Sequence[bool], hw: tuple[int, int]) -> dict:
        kernels, mask = pan_targets(polygons, ignore, hw, self.config)
        quarter = (hw[0] // 4, hw[1] // 4)
        text, kernel, small_mask = loss_targets([kernels], [mask], quarter, 0.25, self.max_instances)
        text_full, _, mask_full = loss_targets([kernels], [mask], tuple(hw), 1.0)
        return {
            "pan_text": text[0],
            "pan_kernel": kernel[0],
            "pan_mask": small_mask[0].astype(np.float32),
            "pan_text_full": text_full[0],
            "pan_mask_full": mask_full[0].astype(np.float32),
        }


class PANHeadKind(HeadKind):
    name = "pan"
    levels = ("c2", "c3", "c4", "c5")
    presets = PAN_PRESETS
    target_presets = {"default": PAN_TARGET_PRESETS["ic15"], **PAN_TARGET_PRESETS}

    @classmethod
    def decoder(cls, config: Any, in_channels: Sequence[int], *, rngs: nnx.Rngs, dtype: Any) -> PANDecoder:
        return PANDecoder(in_channels, config.pan_channels, config.fpem_repeat, rngs=rngs, dtype=dtype)

    @classmethod
    def outputs(cls, raw: jax.Array) -> dict[str, jax.Array]:
        return {"preds": raw.astype(jnp.float32)}

    resolve = staticmethod(resolve_config)

    @property
    def targets(self) -> PANTargets:
        return PANTargets(self.target_config, self.max_instances)

    def loss(self, outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        config = PANLossConfig(max_instances=self.max_instances)
        return pan_loss(outputs["preds"], batch["pan_text"], batch["pan_kernel"], batch["pan_mask"], config)

    def aux_loss(self, score_map: jax.Array, batch: Mapping[str, jax.Array], tau: float) -> jax.Array:
        return pan_score_map_aux_loss(score_map, batch["pan_text_full"], batch["pan_mask_full"], tau)

    @classmethod
    def prediction(cls, outputs: Mapping[str, jax.Array]) -> jax.Array:
        return outputs["preds"]

    def postprocess(self, prediction, scales, valid_sizes) -> list[Instances]:
        config = self.postprocess_config
        stride = round(1 / config.downsample_ratio)
        out = []
        for preds, scale, size in zip(np.asarray(prediction), scales, valid_sizes, strict=True):
            h, w = valid_cells(size, stride)
            rows = pan_postprocess(preds[:h, :w], config, np.asarray(scale, np.float32))
            out.append([(row[:-1].reshape(-1, 2), float(row[-1])) for row in rows])
        return out
