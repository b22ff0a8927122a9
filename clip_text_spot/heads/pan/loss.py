"""PANet loss, mmocr 0.4 ``PANLoss`` (``fcenet_panet.md`` §7.2) in JAX: pure, jittable, static shapes.

Inputs at the prediction resolution (``targets.loss_targets``): ``preds`` [B, h, w, 6] (text logit, kernel logit,
4-d embedding), ``gt_text`` / ``gt_kernel`` float [B, h, w] instance ids (0 background), ``gt_mask`` [B, h, w]
(0 = ignored). Per image:

* aggregation: for every instance i in 1..max(gt_text) with kernel and text pixels, ``G_i`` = mean embedding over
  its kernel, ``l_i`` = mean over its text pixels of ``log(max(|E_p - G_i| - delta_aggregation, 0)^2 + 1)``; the
  image's term is the mean of ``l_i`` (0 without instances);
* discrimination: ``sum_{i<j} log(max(delta_discrimination - |G_i - G_j|, 0)^2 + 1) / (n (n - 1))`` over the n valid
  instances (0 when n < 2), i.e. mmocr's unordered pairs divided by the ordered-pair count;
* OHEM on the raw text logits (``ohem_text_mask``) and a Dice on logits for the text map; the kernel Dice is masked
  by ``(gt_text > 0.5) * gt_mask``.

The batch terms are the per-image means weighted 1, alpha, beta, beta. Instance sums use ``segment_sum`` over ids
0..``max_instances`` (a static cap: ids above it are dropped, ``loss_targets(max_instances=)`` refuses them on the
host); norms are safe at 0 (double ``where``, ``_safe_norm``), so identical kernel means give the zero gradients
PyTorch gives. mmocr's random instance subsampling (``speedup_bbox_thr``) is not implemented (TCM's fine-tuning
configs disable it; it makes the loss non-deterministic).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

TERMS = ("loss_text", "loss_kernel", "loss_aggregation", "loss_discrimination")


@dataclasses.dataclass(frozen=True)
class PANLossConfig:
    """``PANLoss`` constants (mmocr defaults, used by TCM) and the static instance cap."""

    alpha: float = 0.5
    beta: float = 0.25
    delta_aggregation: float = 0.5
    delta_discrimination: float = 3.0
    ohem_ratio: float = 3.0
    max_instances: int = 256


def _safe_norm(x: jax.Array, tiny: float = 1e-12) -> jax.Array:
    """Euclidean norm over the last axis; squared norms up to ``tiny`` count as 0, with a zero gradient.

    PyTorch's norm of an exactly zero vector has a zero gradient. Here equal kernel means need not subtract to an
    exact 0: XLA may divide by multiplying with a reciprocal and fuse the difference into an FMA (CPU), or divide
    approximately (GPU), leaving ~1e-8 residues whose unit-vector gradient is not small; hence the threshold (norms
    below 1e-6 carry no information at float32 precision anyway).
    """
    sq = jnp.sum(jnp.square(x), axis=-1)
    nonzero = sq > tiny
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def ohem_text_mask(score: jax.Array, gt_text: jax.Array, gt_mask: jax.Array, ratio: float = 3.0) -> jax.Array:
    """mmocr ``PANLoss.ohem_img`` on one image's [h, w] raw text logits: bool mask of the sampled pixels.

    ``pos`` = text pixels not ignored, ``neg = floor(min(ratio pos, #non-text))`` (ignored pixels count as negatives);
    the threshold is the ``neg``-th largest non-text logit; sampled = (logit >= threshold or text) and not ignored.
    Without positives or negatives the mask is ``gt_mask != 0``.
    """
    score = jax.lax.stop_gradient(jnp.asarray(score, jnp.float32))
    text = gt_text > 0.5
    keep = gt_mask > 0.5
    pos = jnp.sum(text & keep)
    neg = jnp.floor(jnp.minimum(pos * ratio, jnp.sum(~text))).astype(jnp.int32)
    ranked = -jnp.sort(-jnp.where(text, -jnp.inf, score).ravel())
    thr = ranked[jnp.maximum(neg - 1, 0)]
    sampled = ((score >= thr) | text) & keep
    return jnp.where((pos == 0) | (neg == 0), gt_mask != 0, sampled)


def dice_with_logits(logits: jax.Array, target: jax.Array, mask: jax.Array, smooth: float = 1e-3) -> jax.Array:
    """mmocr ``PANLoss.dice_loss_with_logits`` of one image: ``1 - 2 a / (b + c)``, ``a = sum(p t) + s``,
    ``b = sum(p^2) + s``, ``c = sum(t^2) + s`` with ``p = sigmoid(logits) mask`` and ``t = (target > 0.5) mask``."""
    mask = jnp.asarray(mask, jnp.float32)
    p = jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)) * mask
    t = (target > 0.5).astype(jnp.float32) * mask
    a = jnp.sum(p * t) + smooth
    b = jnp.sum(p * p) + smooth
    c = jnp.sum(t * t) + smooth
    return 1.0 - 2.0 * a / (b + c)


def aggregation_discrimination(
    gt_text: jax.Array, gt_kernel: jax.Array, embedding: jax.Array, config: PANLossConfig = PANLossConfig()
) -> tuple[jax.Array, jax.Array]:
    """One image's (aggregation, discrimination) terms from [h, w] instance ids and [h, w, C] embeddings."""
    n = config.max_instances + 1
    emb = jnp.asarray(embedding, jnp.float32).reshape(-1, embedding.shape[-1])
    text = jnp.asarray(gt_text).astype(jnp.int32).ravel()
    kernel = jnp.asarray(gt_kernel).astype(jnp.int32).ravel()
    ones = jnp.ones_like(text, jnp.float32)
    k_count = jax.ops.segment_sum(ones, kernel, n)
    t_count = jax.ops.segment_sum(ones, text, n)
    means = jax.ops.segment_sum(emb, kernel, n) / jnp.maximum(k_count, 1.0)[:, None]
    ids = jnp.arange(n)
    valid = (k_count > 0) & (t_count > 0) & (ids >= 1) & (ids <= jnp.max(text))
    n_valid = jnp.sum(valid).astype(jnp.float32)

    hinge = jnp.maximum(_safe_norm(emb - means[text]) - config.delta_aggregation, 0.0)
    per_instance = jax.ops.segment_sum(jnp.log(jnp.square(hinge) + 1.0), text, n) / jnp.maximum(t_count, 1.0)
    aggregation = jnp.sum(jnp.where(valid, per_instance, 0.0)) / jnp.maximum(n_valid, 1.0)

    gap = jnp.maximum(config.delta_discrimination - _safe_norm(means[:, None] - means[None]), 0.0)
    pairs = valid[:, None] & valid[None] & (ids[:, None] < ids[None])
    total = jnp.sum(jnp.where(pairs, jnp.log(jnp.square(gap) + 1.0), 0.0))
    discrimination = jnp.where(n_valid > 1, total / jnp.maximum(n_valid * (n_valid - 1.0), 1.0), 0.0)
    return aggregation, discrimination


def pan_loss_per_image(
    preds: jax.Array,
    gt_text: jax.Array,
    gt_kernel: jax.Array,
    gt_mask: jax.Array,
    config: PANLossConfig = PANLossConfig(),
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Unweighted per-image terms (``TERMS`` -> [B]) and the OHEM text mask bool [B, h, w]."""
    preds = jnp.asarray(preds, jnp.float32)
    if preds.shape[:-1] != gt_text.shape or preds.shape[-1] != 6:
        raise ValueError(f"preds must be [B, h, w, 6] matching targets {gt_text.shape}, got {preds.shape}")
    aggr, discr = jax.vmap(lambda t, k, e: aggregation_discrimination(t, k, e, config))(
        gt_text, gt_kernel, preds[..., 2:]
    )
    sampled = jax.vmap(lambda s, t, m: ohem_text_mask(s, t, m, config.ohem_ratio))(preds[..., 0], gt_text, gt_mask)
    text = jax.vmap(dice_with_logits)(preds[..., 0], gt_text, sampled)
    kernel_mask = (gt_text > 0.5).astype(jnp.float32) * jnp.asarray(gt_mask, jnp.float32)
    kernel = jax.vmap(dice_with_logits)(preds[..., 1], gt_kernel, kernel_mask)
    return dict(zip(TERMS, (text, kernel, aggr, discr), strict=True)), sampled


def pan_loss(
    preds: jax.Array,
    gt_text: jax.Array,
    gt_kernel: jax.Array,
    gt_mask: jax.Array,
    config: PANLossConfig = PANLossConfig(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """mmocr 0.4 ``PANLoss`` (reduction ``mean``): ``(total, parts)`` with the parts weighted as mmocr reports them
    (``loss_text``, ``alpha loss_kernel``, ``beta loss_aggregation``, ``beta loss_discrimination``)."""
    terms, _ = pan_loss_per_image(preds, gt_text, gt_kernel, gt_mask, config)
    weights = (1.0, config.alpha, config.beta, config.beta)
    parts = {k: w * jnp.mean(terms[k]) for k, w in zip(TERMS, weights, strict=True)}
    return sum(parts.values()), parts
