"""DBNet losses as mmocr 0.4 defines them and TCM's auxiliary score-map loss, pure and jittable with static shapes:
Dice, masked L1, their DBNet combination with the balanced BCE (``heads.common.balanced_bce``), and the score-map
loss against the DB shrink kernel."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from clip_text_spot.heads.common import balanced_bce, score_map_logits


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
    ``clip_text_spot.heads.db.targets``); ``gt_shrink`` is binarised (> 0). Returns ``(total, parts)`` with parts
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
