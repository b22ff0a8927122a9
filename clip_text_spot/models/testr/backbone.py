"""detectron2's ResNet (``build_resnet_backbone``) with FrozenBatchNorm, NHWC: TESTR's official backbone.

Parameter names are detectron2's (``stem/conv1/weight``, ``stem/conv1/norm/running_mean``, ``res3/0/conv2/weight``,
``res3/0/shortcut/norm/bias``...), so official checkpoints load name by name (``testr.backbone.0.backbone.*``).
Stem: 7x7 stride-2 conv + FrozenBN + ReLU + 3x3 stride-2 max pool (padding 1); stages res2..res5 of bottleneck
blocks (1x1, 3x3, 1x1, each conv followed by FrozenBN; a 1x1 projection shortcut where the width changes),
stride 2 from res3 on, on the 3x3 conv (``STRIDE_IN_1X1: False``, TESTR's setting) or the first 1x1.

FrozenBN statistics and affine terms are constants (``Frozen`` variables, never in the optimiser's ``nnx.Param``
set), as are the conv weights of the stages below ``freeze_at`` (detectron2's FREEZE_AT, default 2: stem and res2).

Any backbone plugs into ``TESTRDetector`` if its ``features(pixels)`` returns NHWC maps finest first (this ResNet:
res2..res5; CLIP's ``ModifiedResNet.features``: C2..C5); TESTR takes the last ``len(backbone_channels)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from clip_text_spot.models.layers import Dtype

STAGES = ("res2", "res3", "res4", "res5")
DEPTH_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class Frozen(nnx.Variable):
    """A constant loaded from a checkpoint and never trained (FrozenBN buffers, frozen stages' convs)."""


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Stage layout: blocks per stage, bottleneck and output widths (defaults = ResNet-50)."""

    blocks: tuple[int, ...] = DEPTH_BLOCKS[50]
    stem_width: int = 64
    bottleneck: tuple[int, ...] = (64, 128, 256, 512)
    out: tuple[int, ...] = (256, 512, 1024, 2048)
    stride_in_1x1: bool = False
    freeze_at: int = 2  # 0: nothing frozen; 1: stem; 2: stem + res2; ...
    eps: float = 1e-5


class FrozenBatchNorm(nnx.Module):
    """detectron2 ``FrozenBatchNorm2d``: ``x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))``."""

    def __init__(self, c: int, eps: float = 1e-5):
        self.eps = eps
        self.weight = Frozen(jnp.ones((c,)))
        self.bias = Frozen(jnp.zeros((c,)))
        self.running_mean = Frozen(jnp.zeros((c,)))
        self.running_var = Frozen(jnp.ones((c,)) - eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
        shift = self.bias[...] - self.running_mean[...] * scale
        return x * scale.astype(x.dtype) + shift.astype(x.dtype)


class ConvNorm(nnx.Module):
    """detectron2 ``Conv2d(..., bias=False, norm=FrozenBN)``: ``weight`` HWIO (MSRA fill), then ``norm``."""

    def __init__(
        self, cin: int, cout: int, k: int, stride: int, frozen: bool, *, rngs: nnx.Rngs, dtype: Dtype, eps: float
    ):
        self.stride, self.pad, self.dtype = stride, k // 2, dtype
        init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
        kernel = nnx.with_partitioning(init, (None, None, "conv_in", "conv_out"))(rngs.params(), (k, k, cin, cout))
        self.weight = Frozen(kernel) if frozen else nnx.Param(kernel)
        self.norm = FrozenBatchNorm(cout, eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            self.weight[...].astype(dtype),
            (self.stride, self.stride),
            ((self.pad, self.pad), (self.pad, self.pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return self.norm(y)


class Bottleneck(nnx.Module):
    """detectron2 ``BottleneckBlock``: relu(conv1) -> relu(conv2) -> conv3, plus the shortcut, then ReLU."""

    def __init__(self, cin, width, cout, stride, cfg: ResNetConfig, frozen: bool, *, rngs: nnx.Rngs, dtype: Dtype):
        s1, s3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)
        kw = dict(rngs=rngs, dtype=dtype, eps=cfg.eps)
        self.shortcut = ConvNorm(cin, cout, 1, stride, frozen, **kw) if cin != cout else None
        self.conv1 = ConvNorm(cin, width, 1, s1, frozen, **kw)
        self.conv2 = ConvNorm(width, width, 3, s3, frozen, **kw)
        self.conv3 = ConvNorm(width, cout, 1, 1, frozen, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.conv1(x))
        out = jax.nn.relu(self.conv2(out))
        out = self.conv3(out)
        return jax.nn.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class Stem(nnx.Module):
    """detectron2 ``BasicStem``: ``conv1`` 7x7 stride 2 + FrozenBN + ReLU, max pool 3x3 stride 2 padding 1."""

    def __init__(self, width: int, cfg: ResNetConfig, *, rngs: nnx.Rngs, dtype: Dtype):
        self.conv1 = ConvNorm(3, width, 7, 2, cfg.freeze_at >= 1, rngs=rngs, dtype=dtype, eps=cfg.eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x))
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet(nnx.Module):
    """detectron2 ResNet on normalised NHWC pixels (see module docstring)."""

    def __init__(self, cfg: ResNetConfig = ResNetConfig(), *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.cfg = cfg
        self.stem = Stem(cfg.stem_width, cfg, rngs=rngs, dtype=dtype)
        cin = cfg.stem_width
        for i, (name, blocks) in enumerate(zip(STAGES, cfg.blocks, strict=True)):
            frozen = cfg.freeze_at >= i + 2
            stage = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(
                    Bottleneck(cin, cfg.bottleneck[i], cfg.out[i], stride, cfg, frozen, rngs=rngs, dtype=dtype)
                )
                cin = cfg.out[i]
            setattr(self, name, nnx.List(stage))

    def features(self, pixels: jax.Array) -> list[jax.Array]:
        """res2..res5 (strides 4, 8, 16, 32)."""
        x = self.stem(pixels)
        out = []
        for name in STAGES:
            for block in getattr(self, name):
                x = block(x)
            out.append(x)
        return out

    def __call__(self, pixels: jax.Array) -> list[jax.Array]:
        """res3, res4, res5 (TESTR's ``OUT_FEATURES``)."""
        return self.features(pixels)[1:]
