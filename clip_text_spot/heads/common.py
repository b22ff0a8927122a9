"""Pieces the detection heads (``heads.db``, ``heads.fce``, ``heads.pan``) share.

* ``nearest_resize`` (PyTorch's legacy nearest resize to a size); convolutions are ``models.layers.conv2d``;
* ``official_to_flat``: mmocr 0.4 / TCM ``neck.*`` and ``bbox_head.*`` tensors -> our flat names and Flax layouts;
* losses: PyTorch's BCE (on probabilities, clamped logs) and BCE with logits, mmocr's balanced BCE with OHEM over
  the batch (``top_k_sum``: the exact sum of a dynamic number of largest entries without a sort), TCM's score-map
  logits (``score_map_logits``);
* geometry: shoelace area, perimeter and mmocr's ``generate_kernels`` offset (``shrink_offset``, DB and PAN kernels);
* ``resolve_preset``: a post-processing config from a config, a preset name or None, with field overrides (the one
  resolver of ``DB_PRESETS``, ``FCE_PRESETS`` and ``PAN_PRESETS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import pyclipper

from clip_text_spot.models.clip.convert import CheckpointMismatchError
from clip_text_spot.models.resize import resize_grid

Flat = dict[str, np.ndarray]
TEXT_REPRS = ("quad", "poly")
C = TypeVar("C")


def resolve_preset(config: C | str | None, presets: Mapping[str, C], default: C, kind: str, **overrides) -> C:
    """``config`` (a config dataclass, a ``presets`` name or None for ``default``) with field ``overrides``."""
    if isinstance(config, str):
        if config not in presets:
            raise ValueError(f"unknown {kind} preset {config!r}; choose one of {tuple(presets)}")
        config = presets[config]
    return dataclasses.replace(config or default, **overrides)


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


_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def official_to_flat(sd: Mapping[str, np.ndarray]) -> Flat:
    """mmocr 0.4 / TCM ``neck.*`` and ``bbox_head.*`` tensors -> our decoders' flat names and Flax layouts.

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
            raise CheckpointMismatchError(f"unexpected neck/head tensor {name!r} with shape {w.shape}")
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


# ----------------------------------------------------------------------------------------------------------------
# geometry


def shoelace_area(poly: np.ndarray) -> float:
    """Signed area of a polygon [n, 2] (positive for clockwise points in image coordinates, as mmocr computes it)."""
    p = np.asarray(poly, np.float64)
    q = np.concatenate([p[1:], p[:1]])
    return float(np.dot(q[:, 0] - p[:, 0], q[:, 1] + p[:, 1]) / 2.0)


def perimeter(poly: np.ndarray) -> float:
    p = np.asarray(poly, np.float64)
    d = np.concatenate([p[1:], p[:1]]) - p
    return float(np.sqrt((d * d).sum(axis=1)).sum())


def shrink_offset(poly: np.ndarray, shrink_ratio: float, max_shrink: int | None = None) -> tuple[int, list]:
    """mmocr's ``generate_kernels`` offset of one polygon: ``(d, paths)``, the pyclipper paths of the int32 polygon
    offset inwards by ``d = min(int(A (1 - r^2) / (L + 0.001) + 0.5), max_shrink)`` (JT_ROUND, closed)."""
    inst = np.asarray(poly).astype(np.int32)
    area = abs(shoelace_area(inst))  # what shapely's Polygon.area computes
    peri = perimeter(inst)  # = cv2.arcLength(closed)
    distance = int(area * (1 - shrink_ratio * shrink_ratio) / (peri + 0.001) + 0.5)
    if max_shrink is not None:
        distance = min(distance, max_shrink)
    pco = pyclipper.PyclipperOffset()
    pco.AddPath(inst.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return distance, pco.Execute(-distance)
