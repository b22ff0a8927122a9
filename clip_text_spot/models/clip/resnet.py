"""OpenAI CLIP ModifiedResNet (RN50/RN101/RN50x4 family) with an OpenAI or dense attention pool (Flax NNX, NHWC).

Parameter names follow OpenAI's state dict (``conv1``, ``bn1``, ``layer1/0/downsample/conv``...), BatchNorm keeps
running statistics (``mean``/``var``, momentum 0.9 = PyTorch 0.1, eps 1e-5): call ``model.eval()`` for inference
with running statistics and ``model.train()`` to train with batch statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from clip_text_spot.models.clip.config import ResNetConfig
from clip_text_spot.models.layers import Dtype, conv2d, dense, multi_head_attention
from clip_text_spot.models.resize import resize_grid


def _bn(c: int, *, rngs: nnx.Rngs, dtype: Dtype, eps: float) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=0.9, epsilon=eps, dtype=dtype, rngs=rngs)


def conv_bn(conv: nnx.Conv, bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
    """``bn(conv(x))``. In eval mode (BatchNorm ``use_running_average``: frozen statistics) BatchNorm is one
    per-channel multiply-add on the convolution's output, which XLA fuses into the next elementwise pass (the ReLU or
    the residual sum). Folding the scale into the kernel instead rescales every kernel at every call: on a 2-core CPU
    CLIP-RN50 ``encode_image`` took 1.32x the time at 224x224 (batch 1) and ``encode_dense`` 1.06x at 640x640. In
    train mode BatchNorm runs as is (batch statistics, running-average updates). 1x1 convolutions stay convolutions,
    which CPU inference runs on XLA's kernels (``models.inference.CONV_KERNELS``); written as matmuls (and XLA's
    kernels for the whole program), TCM's ``match`` took 1.06x the time at 640x640 and 1.05-1.17x at 1024x1824."""
    if not bn.use_running_average:
        return bn(conv(x))
    mul = bn.scale[...] * lax.rsqrt(bn.var[...] + bn.epsilon)
    y = conv(x)
    return y * mul.astype(y.dtype) + (bn.bias[...] - bn.mean[...] * mul).astype(y.dtype)


def avg_pool(x: jax.Array, k: int) -> jax.Array:
    """PyTorch ``AvgPool2d(k)`` (kernel = stride = k, floor mode) on NHWC."""
    if k == 1:
        return x
    return nnx.avg_pool(x, (k, k), strides=(k, k), padding="VALID")


class Downsample(nnx.Module):
    """Shortcut: AvgPool(stride) -> 1x1 conv -> BN (OpenAI ``downsample.0`` / ``downsample.1``)."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs, dtype: Dtype, eps: float):
        self.stride = stride
        self.conv = conv2d(cin, cout, 1, rngs=rngs, dtype=dtype)
        self.bn = _bn(cout, rngs=rngs, dtype=dtype, eps=eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv_bn(self.conv, self.bn, avg_pool(x, self.stride))


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 -> AvgPool(stride) -> 1x1 (x4), all convs bias-free, ReLU after each BN and after the sum."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs, dtype: Dtype, eps: float):
        self.stride = stride
        self.conv1 = conv2d(cin, planes, 1, rngs=rngs, dtype=dtype)
        self.bn1 = _bn(planes, rngs=rngs, dtype=dtype, eps=eps)
        self.conv2 = conv2d(planes, planes, 3, rngs=rngs, dtype=dtype)
        self.bn2 = _bn(planes, rngs=rngs, dtype=dtype, eps=eps)
        self.conv3 = conv2d(planes, planes * 4, 1, rngs=rngs, dtype=dtype)
        self.bn3 = _bn(planes * 4, rngs=rngs, dtype=dtype, eps=eps)
        needs_shortcut = stride > 1 or cin != planes * 4
        self.downsample = (
            Downsample(cin, planes * 4, stride, rngs=rngs, dtype=dtype, eps=eps) if needs_shortcut else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(conv_bn(self.conv1, self.bn1, x))
        out = jax.nn.relu(conv_bn(self.conv2, self.bn2, out))
        out = conv_bn(self.conv3, self.bn3, avg_pool(out, self.stride))
        identity = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(out + identity)


class AttentionPool2d(nnx.Module):
    """CLIP's attention pool over the C5 grid with a mean token prepended.

    ``positional_embedding`` [1 + g*g, C] is stored for the native grid g; its spatial part is resized bilinearly
    (PyTorch ``F.interpolate``, align_corners=False, no antialiasing) to the input grid when they differ.
    ``dense=False`` (OpenAI): only the mean token queries -> global embedding [B, out]. ``dense=True``
    (DenseCLIP/TCM): every token queries -> (global [B, out], local map [B, h, w, out]).
    """

    def __init__(self, grid: int, dim: int, heads: int, out_dim: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.grid = grid
        self.heads = heads
        self.positional_embedding = nnx.Param(
            nnx.with_partitioning(nnx.initializers.normal(dim**-0.5), (None, "embed"))(
                rngs.params(), (grid * grid + 1, dim)
            )
        )
        self.q_proj = dense(dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.k_proj = dense(dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.v_proj = dense(dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
        self.c_proj = dense(dim, out_dim, ("heads", "embed"), rngs=rngs, dtype=dtype)

    def positions(self, grid_hw: tuple[int, int]) -> jax.Array:
        """Position table [1 + h*w, C] for the grid ``grid_hw`` (mean-token slot first, unchanged)."""
        table = self.positional_embedding[...]
        if grid_hw == (self.grid, self.grid):
            return table
        spatial = resize_grid(table[1:].reshape(self.grid, self.grid, -1), grid_hw, "bilinear")
        return jnp.concatenate([table[:1], spatial.reshape(grid_hw[0] * grid_hw[1], -1)], axis=0)

    def __call__(self, x: jax.Array, dense: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        b, h, w, c = x.shape
        # The barrier keeps XLA from fusing the mean's reduction with the last stage's BatchNorm/residual/ReLU
        # chain: on the CPU that fusion recomputes the chain for every summand in one thread, strided by the channel
        # count (20 ms of TCM's 418 ms match at 640x640 on 2 cores; 0.95x the time with the barrier).
        tokens = jax.lax.optimization_barrier(x.reshape(b, h * w, c))
        tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
        tokens = tokens + self.positions((h, w)).astype(tokens.dtype)
        queries = tokens if dense else tokens[:, :1]
        out = self.c_proj(
            multi_head_attention(self.q_proj(queries), self.k_proj(tokens), self.v_proj(tokens), self.heads)
        )
        if not dense:
            return out[:, 0]
        return out[:, 0], out[:, 1:].reshape(b, h, w, -1)


class ModifiedResNet(nnx.Module):
    """3-conv stem (stride 2, then AvgPool 2), four bottleneck stages (strides 1, 2, 2, 2), attention pool."""

    def __init__(self, cfg: ResNetConfig, embed_dim: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.cfg = cfg
        w, eps = cfg.width, cfg.eps
        self.conv1 = conv2d(3, w // 2, 3, stride=2, rngs=rngs, dtype=dtype)
        self.bn1 = _bn(w // 2, rngs=rngs, dtype=dtype, eps=eps)
        self.conv2 = conv2d(w // 2, w // 2, 3, rngs=rngs, dtype=dtype)
        self.bn2 = _bn(w // 2, rngs=rngs, dtype=dtype, eps=eps)
        self.conv3 = conv2d(w // 2, w, 3, rngs=rngs, dtype=dtype)
        self.bn3 = _bn(w, rngs=rngs, dtype=dtype, eps=eps)
        cin = w
        for i, blocks in enumerate(cfg.layers):
            planes, stride = w * 2**i, 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(cin, planes, stride if j == 0 else 1, rngs=rngs, dtype=dtype, eps=eps))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", nnx.List(stage))
        self.attnpool = AttentionPool2d(cfg.image_size // 32, w * 32, cfg.heads, embed_dim, rngs=rngs, dtype=dtype)

    def stem(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(conv_bn(self.conv1, self.bn1, x))
        x = jax.nn.relu(conv_bn(self.conv2, self.bn2, x))
        x = jax.nn.relu(conv_bn(self.conv3, self.bn3, x))
        return avg_pool(x, 2)

    def features(self, pixels: jax.Array) -> list[jax.Array]:
        """C2..C5 [B, H/4.., H/32.., C] (strides 4, 8, 16, 32) for normalised NHWC ``pixels``."""
        x = self.stem(pixels)
        feats = []
        for i in range(len(self.cfg.layers)):
            for block in getattr(self, f"layer{i + 1}"):
                x = block(x)
            feats.append(x)
        return feats

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """OpenAI image embedding [B, embed_dim] (mean-token attention pool on C5)."""
        return self.attnpool(self.features(pixels)[-1])

    def dense(self, pixels: jax.Array) -> tuple[list[jax.Array], jax.Array, jax.Array]:
        """(C2..C5, global [B, embed_dim], local map [B, H/32, W/32, embed_dim]) with the dense attention pool."""
        feats = self.features(pixels)
        global_feat, local = self.attnpool(feats[-1], dense=True)
        return feats, global_feat, local
