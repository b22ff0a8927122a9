"""DBNet neck, head and losses as mmocr 0.4 defines them (the versions TCM/FastTCM train with), Flax NNX, NHWC.

* ``FPNC``: 1x1 lateral convs to ``lateral_channels``, a nearest-neighbour top-down path, 3x3 smooth convs to
  ``out_channels`` per level, everything bias-free and without BatchNorm/ReLU (mmocr's defaults, used by TCM),
  then every level resized (nearest) to the finest one and concatenated: [B, H/4, W/4, levels * out_channels].
  TCM's C5 arrives concatenated with the K-channel score map, hence ``in_channels[-1] = 2048 + K``.
* ``DBHead``: ``binarize`` and ``threshold`` branches, each Conv3x3 (no bias) -> BN -> ReLU -> ConvT 2x2 s2 -> BN ->
  ReLU -> ConvT 2x2 s2 (to 1 channel) -> Sigmoid, and the binary map ``1 / (1 + exp(-k (prob - thr)))``, k = 50.
* ``DBDecoder``: ``neck`` + ``bbox_head`` under the detector's attribute names, so ``official_dbnet_to_flat`` of a
  checkpoint's ``neck.*`` / ``bbox_head.*`` tensors assigns by name (``convert.assign_flat``).
* Losses, pure and jittable with static shapes: balanced BCE with OHEM (on probabilities or logits), Dice, masked
  L1, their DBNet combination, and TCM's auxiliary loss on the score map.

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

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.clip.convert import CheckpointMismatchError
from clip_text_spot.models.clip.resnet import _conv
from clip_text_spot.models.layers import Dtype
from clip_text_spot.models.resize import resize_grid

Flat = dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------------------------
# modules


def nearest_resize(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """PyTorch ``F.interpolate(mode='nearest', size=out_hw)`` on [..., H, W, C]: source index
    ``min(floor(dst * float32(in / out)), in - 1)`` per axis (at 2^k upsampling factors: repetition)."""
    for axis, size in ((-3, out_hw[0]), (-2, out_hw[1])):
        n = x.shape[axis]
        if n != size:
            scale = np.float32(n / size)
            idx = np.minimum(np.floor(np.arange(size, dtype=np.float32) * scale).astype(np.int32), n - 1)
            x = jnp.take(x, jnp.asarray(idx), axis=axis)
    return x


class ConvUnit(nnx.Module):
    """mmcv ``ConvModule`` without norm and activation: a bias-free conv held as ``conv`` (for the names)."""

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.conv = _conv(cin, cout, k, rngs=rngs, dtype=dtype)

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
            _conv(cin, mid, 3, rngs=rngs, dtype=dtype),
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


_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def official_dbnet_to_flat(sd: Mapping[str, np.ndarray]) -> Flat:
    """mmocr 0.4 / TCM ``neck.*`` and ``bbox_head.*`` tensors -> ``DBDecoder`` flat names and Flax layouts.

    4-D weights (Conv2d [out, in, kh, kw] and ConvTranspose2d [in, out, kh, kw]) are transposed (2, 3, 1, 0);
    BatchNorm ``weight``/``running_mean``/``running_var`` become ``scale``/``mean``/``var``; biases keep their name;
    ``num_batches_tracked`` is dropped; arrays are copied. Tensors outside ``neck.`` and ``bbox_head.`` (backbone,
    text encoder...) are skipped, so a whole TCM state dict can be passed.
    """
    out: Flat = {}
    for name, w in sd.items():
        if not name.startswith(("neck.", "bbox_head.")) or name.endswith("num_batches_tracked"):
            continue
        w = np.array(w)  # a copy: jnp.asarray of a NumPy array may alias its memory (torch .numpy() views)
        *path, leaf = name.split(".")
        if w.ndim == 4 and leaf == "weight":
            out["/".join([*path, "kernel"])] = w.transpose(2, 3, 1, 0)
        elif w.ndim == 1 and leaf in _BN_LEAVES:
            out["/".join([*path, _BN_LEAVES[leaf]])] = w
        else:
            raise CheckpointMismatchError(f"unexpected DBNet tensor {name!r} with shape {w.shape}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# losses


def _clamped_log(x: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.log(x), -100.0)


@jax.custom_vjp
def bce_on_probabilities(p: jax.Array, t: jax.Array) -> jax.Array:
    """Element-wise PyTorch ``F.binary_cross_entropy``: logs clamped at -100, gradient ``(p - t) / max(p (1 - p),
    1e-12)`` as PyTorch's backward computes it (finite for p in {0, 1} and denormal p)."""
    return -(t * _clamped_log(p) + (1.0 - t) * jnp.maximum(jnp.log1p(-p), -100.0))


def _bce_fwd(p: jax.Array, t: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return bce_on_probabilities(p, t), (p, t)


def _bce_bwd(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    p, t = res
    grad_p = g * (p - t) / jnp.maximum(p * (1.0 - p), 1e-12)
    grad_t = g * (jnp.maximum(jnp.log1p(-p), -100.0) - _clamped_log(p))
    return grad_p, grad_t


bce_on_probabilities.defvjp(_bce_fwd, _bce_bwd)


def bce_with_logits(x: jax.Array, t: jax.Array) -> jax.Array:
    """Element-wise PyTorch ``F.binary_cross_entropy_with_logits`` in the log-sigmoid form (stable for any x)."""
    return -(t * jax.nn.log_sigmoid(x) + (1.0 - t) * jax.nn.log_sigmoid(-x))


def balanced_bce(
    pred: jax.Array,
    gt: jax.Array,
    mask: jax.Array,
    negative_ratio: float = 3.0,
    eps: float = 1e-6,
    from_logits: bool = False,
) -> jax.Array:
    """mmocr's balanced BCE with online hard negative mining, over the whole batch (any equal shapes).

    ``pos = gt * mask``, ``neg = (1 - gt) * mask``, ``n_pos = floor(sum pos)``, ``n_neg = min(floor(sum neg),
    floor(negative_ratio * n_pos))``; the loss is ``(sum bce * pos + sum of the n_neg largest bce * neg) / (n_pos +
    n_neg + eps)``; no positives -> no negatives are kept and the loss is 0. ``pred`` holds probabilities (BCE with
    PyTorch's clamped logs) or, with ``from_logits``, logits. The sum of the ``n_neg`` largest negative losses (a
    top-k of dynamic size) is computed exactly without sorting (``top_k_sum``); like mmocr's it spans the whole
    (global) batch.
    """
    pred, gt, mask = (jnp.asarray(a, jnp.float32) for a in (pred, gt, mask))
    loss = bce_with_logits(pred, gt) if from_logits else bce_on_probabilities(pred, gt)
    pos = gt * mask
    neg = (1.0 - gt) * mask
    n_pos = jnp.floor(jnp.sum(pos))
    n_neg = jnp.minimum(jnp.floor(jnp.sum(neg)), jnp.floor(n_pos * negative_ratio))
    hard = top_k_sum(loss * neg, n_neg)
    return (jnp.sum(loss * pos) + hard) / (n_pos + n_neg + eps)


def top_k_sum(values: jax.Array, k: jax.Array) -> jax.Array:
    """Sum of the ``k`` largest entries of non-negative ``values`` (``k`` a traced scalar), without a sort.

    For non-negative float32 the int32 bit patterns are ordered like the values, so 31 bisection steps over the bit
    pattern find the k-th largest value ``t`` exactly; the sum is ``sum(v > t) + (k - count(v > t)) * t``, with the
    ``t`` share spread evenly over the entries equal to ``t`` (so, without ties, exactly the k largest entries get
    gradient 1, as with a sort). Linear passes instead of an O(n log n) sort: several times faster on CPU for the
    B x H x W maps of DBNet.
    """
    v = values.ravel().astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(v), jnp.int32)
    k = jnp.asarray(k, jnp.float32)

    def count_above(t):  # how many entries have bit pattern > t
        return jnp.sum(bits > t).astype(jnp.float32)

    def body(_, lo_hi):  # invariant: count_above(hi) < k <= count_above(lo)   (lo may be -1)
        lo, hi = lo_hi
        mid = lo + (hi - lo) // 2
        above = count_above(mid) >= k
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 32, body, (jnp.int32(-1), jnp.int32(0x7F800000)))
    above, tied = bits > hi, bits == hi  # hi: the bit pattern of the k-th largest value
    share = (k - jnp.sum(above).astype(jnp.float32)) / jnp.maximum(jnp.sum(tied).astype(jnp.float32), 1.0)
    total = jnp.sum(jnp.where(above, v, 0.0)) + share * jnp.sum(jnp.where(tied, v, 0.0))
    return jnp.where(k > 0, total, 0.0)


def dice_loss(pred: jax.Array, gt: jax.Array, mask: jax.Array, eps: float = 1e-6) -> jax.Array:
    """mmocr's ``DiceLoss`` with sums over the whole batch: ``1 - 2 sum(p m g m) / (sum p m + sum g m + eps)``."""
    p = jnp.asarray(pred, jnp.float32) * mask
    g = jnp.asarray(gt, jnp.float32) * mask
    return 1.0 - 2.0 * jnp.sum(p * g) / (jnp.sum(p) + jnp.sum(g) + eps)


def masked_l1(pred: jax.Array, gt: jax.Array, mask: jax.Array, eps: float = 1e-6) -> jax.Array:
    """mmocr's threshold loss ``sum |(pred - gt) mask| / (sum mask + eps)`` over the whole batch."""
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(jnp.abs((jnp.asarray(pred, jnp.float32) - gt) * mask)) / (jnp.sum(mask) + eps)


def db_loss(
    prob: jax.Array,
    thr: jax.Array,
    binary: jax.Array,
    targets: Mapping[str, jax.Array],
    alpha: float = 5.0,
    beta: float = 10.0,
    negative_ratio: float = 3.0,
    eps: float = 1e-6,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """mmocr 0.4 ``DBLoss(alpha=5, beta=10, bbce_loss=True)`` on [B, H, W] maps.

    ``targets`` holds ``gt_shrink``, ``gt_shrink_mask``, ``gt_thr``, ``gt_thr_mask`` ([B, H, W], as produced by
    ``clip_text_spot.data.db_targets``); ``gt_shrink`` is binarised (> 0). Returns ``(total, parts)`` with parts
    ``loss_prob`` (alpha x balanced BCE on ``prob``), ``loss_db`` (Dice on ``binary``), ``loss_thr`` (beta x masked
    L1 on ``thr``), already weighted as mmocr reports them.
    """
    gt = (jnp.asarray(targets["gt_shrink"]) > 0).astype(jnp.float32)
    mask = jnp.asarray(targets["gt_shrink_mask"], jnp.float32)
    parts = {
        "loss_prob": alpha * balanced_bce(prob, gt, mask, negative_ratio, eps),
        "loss_db": dice_loss(binary, gt, mask, eps),
        "loss_thr": beta * masked_l1(thr, targets["gt_thr"], targets["gt_thr_mask"], eps),
    }
    return sum(parts.values()), parts


def score_map_aux_loss(
    score_map: jax.Array,
    gt_shrink: jax.Array,
    gt_shrink_mask: jax.Array,
    tau: float = 0.07,
    downsample_ratio: int = 32,
    negative_ratio: float = 3.0,
    eps: float = 1e-6,
) -> jax.Array:
    """TCM's ``IdentityHead`` loss: balanced BCE with logits of the score map vs the DB shrink kernel.

    ``score_map`` [B, h, w, 1] (raw cosines) is divided by ``tau`` and resized bilinearly (PyTorch ``F.interpolate``,
    align_corners=False, no antialiasing) to [B, h * ratio, w * ratio], the shape of ``gt_shrink`` / ``gt_shrink_mask``
    [B, H, W]. Each pixel's logit is paired with its own image's target. (The released code, for batches > 1,
    broadcasts [B, 1, H, W] losses against [B, H, W] masks and so pairs every image with every target; not
    reproduced.)
    """
    logits = score_map_logits(score_map, (gt_shrink, gt_shrink_mask), tau, downsample_ratio)
    gt = (jnp.asarray(gt_shrink) > 0).astype(jnp.float32)
    return balanced_bce(logits, gt, gt_shrink_mask, negative_ratio, eps, from_logits=True)


def score_map_logits(
    score_map: jax.Array, targets: Sequence[jax.Array], tau: float, downsample_ratio: int
) -> jax.Array:
    """TCM's identity-head logits: ``score_map`` [B, h, w, 1] / ``tau`` resized bilinearly (PyTorch,
    align_corners=False, no antialiasing) to [B, h * ratio, w * ratio], after checking that every target has that
    shape."""
    b, h, w, k = score_map.shape
    if k != 1:
        raise ValueError(f"the score-map aux loss supports one prompt (K = 1), got a score map with K = {k}")
    out_hw = (h * downsample_ratio, w * downsample_ratio)
    if any(tuple(t.shape) != (b, *out_hw) for t in targets):
        raise ValueError(
            f"targets must be [B, H, W] = {(b, *out_hw)} for a {score_map.shape} score map, got "
            f"{[tuple(t.shape) for t in targets]}"
        )
    return resize_grid(jnp.asarray(score_map, jnp.float32) / tau, out_hw, "bilinear")[..., 0]
