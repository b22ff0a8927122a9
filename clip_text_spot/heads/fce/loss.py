"""FCENet loss (mmocr 0.4 ``FCELoss``), pure and jittable with static shapes (``fcenet_panet.md`` §3).

Per level, over all pixels of the batch (predictions and targets NHWC; targets as ``targets.fce_targets`` gives them):

* ``loss_text``: 2-way cross-entropy of the text-region logits with OHEM: all positives (text, not ignored) plus the
  ``min(#neg, int(3 #pos))`` hardest non-ignored negatives, divided by their count. Without positives the official
  code keeps the (at most) 100 hardest negatives and divides by 100; so does this one.
* ``loss_center``: mean CE of the centre logits over P = text & not ignored, plus 0.5 x the mean CE over the
  complement of P (which includes ignored and background pixels); 0 when P is empty.
* ``loss_reg_x`` / ``loss_reg_y``: the predicted and target coefficients are both turned into 50 contour points
  (``fourier2poly``, relative to the pixel) and compared with smooth-L1 (beta 1), weighted by ``(tr + tcl) / 2``,
  averaged over P x 50; 0 when P is empty.

Each term is summed over the levels. Boolean selections become masked sums and counts; the OHEM top-k is
``heads.common.top_k_sum`` (exact, no sort). ``fourier2poly`` uses the reference's float32 angle table
``float32(2 pi / n) * (m j)``: the angles themselves are rounded, which moves points by up to 4e-5 against a float64
evaluation, and parity needs the same rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip_text_spot.heads.common import top_k_sum

LOSS_TERMS = ("loss_text", "loss_center", "loss_reg_x", "loss_reg_y")


def _angle_tables(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos / sin [2k + 1, n] of ``float32(2 pi / n) * float32(m j)``, m = -k..k, j = 0..n-1."""
    mj = np.outer(np.arange(-k, k + 1, dtype=np.float32), np.arange(n, dtype=np.float32))
    angles = (np.float32(2 * np.pi / n) * mj).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def fourier2poly(real: jax.Array, imag: jax.Array, num_sample: int = 50) -> tuple[jax.Array, jax.Array]:
    """[..., 2k + 1] real and imaginary coefficients -> x, y [..., num_sample] of ``sum_m c_m exp(2 pi i m j / n)``."""
    cos, sin = _angle_tables((real.shape[-1] - 1) // 2, num_sample)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.matmul(real, cos, precision=hi) - jnp.matmul(imag, sin, precision=hi)
    y = jnp.matmul(real, sin, precision=hi) + jnp.matmul(imag, cos, precision=hi)
    return x, y


def _cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Element-wise 2-class CE of logits [..., 2] against a 0/1 target [...]."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.where(target > 0.5, logp[..., 1], logp[..., 0])


def _masked_mean(values: jax.Array, mask: jax.Array, count: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(count, 1.0)


def ohem_text_loss(logits: jax.Array, text: jax.Array, train: jax.Array, ratio: float = 3.0) -> jax.Array:
    """OHEM cross-entropy of the text-region logits [..., 2] (module docstring)."""
    ce = _cross_entropy(logits, text)
    pos, neg = text * train, (1.0 - text) * train
    n_pos, n_neg_all = jnp.sum(pos), jnp.sum(neg)
    has_pos = n_pos > 0
    k = jnp.where(has_pos, jnp.minimum(n_neg_all, jnp.floor(ratio * n_pos)), jnp.minimum(n_neg_all, 100.0))
    denominator = n_pos + jnp.where(has_pos, k, 100.0)
    return (jnp.sum(ce * pos) + top_k_sum(ce * neg, k)) / denominator


def smooth_l1(d: jax.Array) -> jax.Array:
    """PyTorch ``smooth_l1_loss`` with beta 1, element-wise."""
    a = jnp.abs(d)
    return jnp.where(a < 1.0, 0.5 * d * d, a - 0.5)


def fce_level_loss(
    cls: jax.Array, reg: jax.Array, gt: jax.Array, ohem_ratio: float = 3.0, num_sample: int = 50
) -> jax.Array:
    """The four terms [text, center, reg_x, reg_y] of one level: cls [B, h, w, 4], reg [B, h, w, 2K], gt [B, h, w,
    3 + 2K] (K = 2k + 1)."""
    cls, reg, gt = (jnp.asarray(a, jnp.float32) for a in (cls, reg, gt))
    k2 = reg.shape[-1] // 2
    if gt.shape[-1] != 3 + 2 * k2 or cls.shape[-1] != 4:
        raise ValueError(f"FCE loss: cls {cls.shape}, reg {reg.shape} and targets {gt.shape} do not agree")
    tr, tcl, train = gt[..., 0], gt[..., 1], gt[..., 2]
    loss_text = ohem_text_loss(cls[..., 0:2], tr, train, ohem_ratio)

    p = tr * train
    n_p = jnp.sum(p)
    has_p = n_p > 0
    ce_tcl = _cross_entropy(cls[..., 2:4], tcl)
    neg = 1.0 - p
    loss_center = _masked_mean(ce_tcl, p, n_p) + 0.5 * _masked_mean(ce_tcl, neg, jnp.sum(neg))

    x_gt, y_gt = fourier2poly(gt[..., 3 : 3 + k2], gt[..., 3 + k2 :], num_sample)
    x_pr, y_pr = fourier2poly(reg[..., :k2], reg[..., k2:], num_sample)
    weight = ((tr + tcl) / 2 * p)[..., None]  # 0 outside P
    count = jnp.maximum(n_p * num_sample, 1.0)
    loss_x = jnp.sum(weight * smooth_l1(x_pr - x_gt)) / count
    loss_y = jnp.sum(weight * smooth_l1(y_pr - y_gt)) / count
    zero = jnp.zeros((), jnp.float32)
    return jnp.stack([loss_text, *(jnp.where(has_p, t, zero) for t in (loss_center, loss_x, loss_y))])


def fce_loss(
    cls_levels: Sequence[jax.Array],
    reg_levels: Sequence[jax.Array],
    targets: Sequence[jax.Array],
    ohem_ratio: float = 3.0,
    num_sample: int = 50,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(total, parts)``: each part (``LOSS_TERMS``) summed over the levels (P3, P4, P5; extra targets such as TCM's
    matching map are ignored); ``parts["per_level"]`` is [levels, 4]."""
    per_level = jnp.stack(
        [
            fce_level_loss(c, r, t, ohem_ratio, num_sample)
            for c, r, t in zip(cls_levels, reg_levels, targets[: len(cls_levels)], strict=True)
        ]
    )
    sums = per_level.sum(axis=0)
    parts = {name: sums[i] for i, name in enumerate(LOSS_TERMS)}
    return sums.sum(), {**parts, "per_level": per_level}
