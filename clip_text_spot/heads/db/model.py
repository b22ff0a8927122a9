"""DBNet neck and head as mmocr 0.4 defines them (the versions TCM/FastTCM train with), Flax NNX, NHWC.

* ``FPNC``: 1x1 lateral convs to ``lateral_channels``, a nearest-neighbour top-down path, 3x3 smooth convs to
  ``out_channels`` per level, everything bias-free and without BatchNorm/ReLU (mmocr's defaults, used by TCM),
  then every level resized (nearest) to the finest one and concatenated: [B, H/4, W/4, levels * out_channels].
  TCM's C5 arrives concatenated with the K-channel score map, hence ``in_channels[-1] = 2048 + K``.
* ``DBHead``: ``binarize`` and ``threshold`` branches, each Conv3x3 (no bias) -> BN -> ReLU -> ConvT 2x2 s2 -> BN ->
  ReLU -> ConvT 2x2 s2 (to 1 channel) -> Sigmoid, and the binary map ``1 / (1 + exp(-k (prob - thr)))``, k = 50.
* ``DBDecoder``: ``neck`` + ``bbox_head`` under the detector's attribute names, so ``heads.common.official_to_flat``
  of a checkpoint's ``neck.*`` / ``bbox_head.*`` tensors assigns by name (``convert.assign_flat``).
The losses are in ``heads.db.loss``, the targets in ``heads.db.targets``, the post-processing in
``heads.db.postprocess``.

Parameter names mirror the PyTorch modules: ``neck/lateral_convs/0/conv/kernel`` is ``neck.lateral_convs.0.conv.weight``
(mmcv ``ConvModule``), ``bbox_head/binarize/{0,1,3,4,6}`` are the indices of mmocr's ``nn.Sequential`` (2, 5 and 7 are
ReLU/Sigmoid, kept as ``None`` slots). ConvTranspose kernels use ``transpose_kernel=True`` and are stored
[kh, kw, out, in], i.e. PyTorch's [in, out, kh, kw] weight transposed (2, 3, 1, 0) exactly like a Conv2d weight.

BatchNorm: momentum 0.9 (PyTorch 0.1), eps 1e-5, two-pass batch variance; ``model.eval()`` uses the running
statistics, ``model.train()`` the batch statistics (flax updates the running variance with the biased batch variance,
PyTorch with the unbiased one: a relative 1/(B H W) difference). Init: conv kernels Kaiming normal (fan_out, ReLU gain)
as mmcv's ``ConvModule`` gives the neck, ConvT biases 0, BN scale 1 and bias 1e-4 as the head's ``init_cfg`` states
(mmcv 1.3 matches ``layer='Conv'``/``'BatchNorm'`` against class and direct-base names only, so in the released code
that ``init_cfg`` leaves PyTorch's defaults in place; the difference is immaterial after training).
``dtype`` is the compute dtype (parameters stay float32); the losses always compute in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from clip_text_spot.heads.common import nearest_resize
from clip_text_spot.models.layers import Dtype, conv2d

# ----------------------------------------------------------------------------------------------------------------
# modules


class ConvUnit(nnx.Module):
    """mmcv ``ConvModule`` without norm and activation: a bias-free conv held as ``conv`` (for the names)."""

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.conv = conv2d(cin, cout, k, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class FPNC(nnx.Module):
    """mmocr's FPNC fusion neck (bias-free lateral and smooth convs, no BN/ReLU, no conv after the concat)."""

    def __init__(
        self,
        in_channels: Sequence[int] = (256, 512, 1024, 2049),
        lateral_channels: int = 256,
        out_channels: int = 64,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        self.in_channels = tuple(in_channels)
        self.lateral_convs = nnx.List(
            [ConvUnit(c, lateral_channels, 1, rngs=rngs, dtype=dtype) for c in self.in_channels]
        )
        self.smooth_convs = nnx.List(
            [ConvUnit(lateral_channels, out_channels, 3, rngs=rngs, dtype=dtype) for _ in self.in_channels]
        )

    def __call__(self, feats: Sequence[jax.Array]) -> jax.Array:
        """Fuse [B, H_i, W_i, C_i] levels (finest first) into [B, H_0, W_0, levels * out_channels]."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPNC expects {len(self.in_channels)} feature maps, got {len(feats)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + nearest_resize(laterals[i], laterals[i - 1].shape[-3:-1])
        outs = [conv(x) for conv, x in zip(self.smooth_convs, laterals, strict=True)]
        size = outs[0].shape[-3:-1]
        return jnp.concatenate([nearest_resize(o, size) for o in outs], axis=-1)


class DBMaps(NamedTuple):
    """DBNet outputs, each [B, H, W] at the head's input resolution x4 (= network input resolution)."""

    prob: jax.Array
    thr: jax.Array
    binary: jax.Array


def _bn(c: int, *, rngs: nnx.Rngs, dtype: Dtype) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        c,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        rngs=rngs,
        bias_init=nnx.initializers.constant(1e-4),
        use_fast_variance=False,
    )


def _conv_transpose(cin: int, cout: int, *, rngs: nnx.Rngs, dtype: Dtype) -> nnx.ConvTranspose:
    """PyTorch ``ConvTranspose2d(cin, cout, 2, 2)`` (with bias); kernel [2, 2, cout, cin], no flip on import."""
    return nnx.ConvTranspose(
        cin,
        cout,
        kernel_size=(2, 2),
        strides=(2, 2),
        padding="VALID",
        transpose_kernel=True,
        dtype=dtype,
        rngs=rngs,
        kernel_init=nnx.with_partitioning(
            nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), (None, None, "conv_out", "conv_in")
        ),
    )


def _branch(cin: int, *, rngs: nnx.Rngs, dtype: Dtype) -> nnx.List:
    """mmocr's ``nn.Sequential`` slots: 0 conv, 1 BN, (2 ReLU), 3 ConvT, 4 BN, (5 ReLU), 6 ConvT, (7 Sigmoid)."""
    mid = cin // 4
    return nnx.List(
        [
            conv2d(cin, mid, 3, rngs=rngs, dtype=dtype),
            _bn(mid, rngs=rngs, dtype=dtype),
            None,
            _conv_transpose(mid, mid, rngs=rngs, dtype=dtype),
            _bn(mid, rngs=rngs, dtype=dtype),
            None,
            _conv_transpose(mid, 1, rngs=rngs, dtype=dtype),
        ]
    )


def _run_branch(seq: nnx.List, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(seq[1](seq[0](x)))
    x = jax.nn.relu(seq[4](seq[3](x)))
    return jax.nn.sigmoid(seq[6](x))[..., 0]


class DBHead(nnx.Module):
    """mmocr's ``DBHead`` / TCM's ``DBFP16Head``: probability and threshold maps at 4x the input resolution."""

    def __init__(self, in_channels: int = 256, k: float = 50.0, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.k = k
        self.binarize = _branch(in_channels, rngs=rngs, dtype=dtype)
        self.threshold = _branch(in_channels, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> DBMaps:
        """[B, h, w, in_channels] -> ``DBMaps`` of [B, 4h, 4w] maps in [0, 1]."""
        prob = _run_branch(self.binarize, x)
        thr = _run_branch(self.threshold, x)
        return DBMaps(prob, thr, jax.nn.sigmoid(self.k * (prob - thr)))


class DBDecoder(nnx.Module):
    """``neck`` (FPNC) + ``bbox_head`` (DBHead): backbone levels [C2, C3, C4, C5(+score map)] -> ``DBMaps``."""

    def __init__(
        self,
        in_channels: Sequence[int] = (256, 512, 1024, 2049),
        lateral_channels: int = 256,
        out_channels: int = 64,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        self.neck = FPNC(in_channels, lateral_channels, out_channels, rngs=rngs, dtype=dtype)
        self.bbox_head = DBHead(out_channels * len(in_channels), rngs=rngs, dtype=dtype)

    def __call__(self, feats: Sequence[jax.Array]) -> DBMaps:
        """[C2, C3, C4, C5'] NHWC at strides 4..32 -> ``DBMaps`` at stride 1 (C2 resolution x4)."""
        return self.bbox_head(self.neck(feats))
