"""The shape every detection head kind has (``heads.HEADS``), so the detector, the task, ``predict``, evaluation and
the spotter never name a head.

A head kind is a class:

* model side (class methods, from the serialisable ``DetectorConfig``): ``levels`` (the matcher's feature maps it
  reads, finest first; the score map is concatenated to the last one), ``decoder(config, in_channels, rngs=,
  dtype=)`` (its ``neck`` + ``bbox_head``), ``outputs(raw)`` (the decoder's output as named float32 arrays);
* host side (an instance built from the run's options: target preset, post-processing preset and overrides, ...):
  ``targets`` (a picklable ``(polygons, ignore, (H, W)) -> {key: float32 array}`` for one sample, run by the input
  pipeline), ``loss(outputs, batch)`` -> ``(total, parts)``, ``aux_loss(score_map, batch, tau)``,
  ``prediction(outputs)`` (the arrays post-processing reads, fetched to the host) and ``postprocess(prediction,
  scales, valid_sizes)`` -> per image ``[(polygon [n, 2] in original-image pixels, score)]``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np
from flax import nnx

Instances = list[tuple[np.ndarray, float]]
TargetFn = Callable[[Sequence[np.ndarray], Sequence[bool], tuple[int, int]], dict[str, np.ndarray]]


class HeadKind:
    """Base of the head kinds; see the module docstring. ``options`` are the host-side settings of a run."""

    name: ClassVar[str]
    levels: ClassVar[tuple[str, ...]]
    presets: ClassVar[Mapping[str, Any]]
    target_presets: ClassVar[Mapping[str, Any]]

    def __init__(
        self,
        *,
        targets: str = "default",
        postprocess: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        max_instances: int = 256,
        official_broadcast: bool = False,
    ):
        if targets not in self.target_presets:
            known = tuple(self.target_presets)
            raise ValueError(f"{self.name} head: unknown targets preset {targets!r}; choose one of {known}")
        self.target_config = self.target_presets[targets]
        self.postprocess_config = self.resolve(postprocess, **dict(overrides or {}))
        self.max_instances = int(max_instances)
        self.official_broadcast = bool(official_broadcast)

    def with_overrides(self, **overrides) -> HeadKind:
        """A copy whose post-processing config has these fields replaced."""
        out = copy.copy(self)
        out.postprocess_config = dataclasses.replace(self.postprocess_config, **overrides)
        return out

    @classmethod
    def decoder(cls, config: Any, in_channels: Sequence[int], *, rngs: nnx.Rngs, dtype: Any) -> nnx.Module:
        raise NotImplementedError

    @classmethod
    def outputs(cls, raw: Any) -> dict[str, jax.Array]:
        raise NotImplementedError

    @staticmethod
    def resolve(preset: Any = None, **overrides) -> Any:
        """The post-processing config of a preset name (or config, or None) with field overrides."""
        raise NotImplementedError

    @property
    def targets(self) -> TargetFn:
        raise NotImplementedError

    def loss(self, outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
        raise NotImplementedError

    def aux_loss(self, score_map: jax.Array, batch: Mapping[str, jax.Array], tau: float) -> jax.Array:
        raise NotImplementedError

    @classmethod
    def prediction(cls, outputs: Mapping[str, jax.Array]) -> Any:
        raise NotImplementedError

    def postprocess(
        self, prediction: Any, scales: Sequence[Sequence[float]], valid_sizes: Sequence[Sequence[int]]
    ) -> list[Instances]:
        raise NotImplementedError


def valid_cells(size: Sequence[int], stride: int) -> tuple[int, int]:
    """Cells of a stride-``stride`` map that cover the un-padded ``(h, w)`` image region."""
    return math.ceil(int(size[0]) / stride), math.ceil(int(size[1]) / stride)
