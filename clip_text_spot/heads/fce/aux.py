"""TCM's auxiliary score-map loss for FCENet (``FCEIdentityHead``, ``fcenet_panet.md`` §1.4, §11.1).

The score map S [B, h, w, 1] at stride 32 (raw cosines) divided by tau is compared, *without* upsampling, with the
matching map of the FCE targets (the fourth level, stride 32): balanced BCE with logits and OHEM (negative ratio 3)
against its text-region channel, masked by its effective-mask channel (``heads.common.balanced_bce``).

Per-image pairing (default): each image's logits meet its own targets. The released code, for B > 1, multiplies the
[B, 1, h, w] losses by the [B, h, w] masks, so the positive sum and the hard-negative top-k run over all B x B
(image, target) pairs while the counts come from the B images: ``official_broadcast=True`` reproduces that (e.g. the
fixture's B = 2 value). At B = 1 both forms agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_text_spot.heads.common import balanced_bce, bce_with_logits, top_k_sum


def _broadcast_balanced_bce(logits: jax.Array, gt: jax.Array, mask: jax.Array, ratio: float, eps: float) -> jax.Array:
    """The released ``balance_bce_loss`` with its (B, 1, h, w) x (B, h, w) broadcast."""
    loss = bce_with_logits(logits, gt)  # [B, h, w], each image with its own target
    pos, neg = gt * mask, (1.0 - gt) * mask
    n_pos = jnp.floor(jnp.sum(pos))
    n_neg = jnp.minimum(jnp.floor(jnp.sum(neg)), jnp.floor(n_pos * ratio))
    pos_sum = jnp.sum(loss[:, None] * pos[None])
    hard = top_k_sum(loss[:, None] * neg[None], n_neg)
    return (pos_sum + hard) / (n_pos + n_neg + eps)


def fce_aux_loss(
    score_map: jax.Array,
    matching: jax.Array,
    tau: float = 0.07,
    negative_ratio: float = 3.0,
    eps: float = 1e-6,
    official_broadcast: bool = False,
) -> jax.Array:
    """``FCEIdentityHead`` loss: ``score_map`` [B, h, w, 1] (raw cosines), ``matching`` [B, h, w, C] targets at the
    same stride (channel 0 text region, channel 2 effective mask)."""
    b, h, w, k = score_map.shape
    if k != 1:
        raise ValueError(f"fce_aux_loss supports one prompt (K = 1), got a score map with K = {k}")
    if tuple(matching.shape[:3]) != (b, h, w):
        raise ValueError(f"matching maps {tuple(matching.shape)} do not match the score map {tuple(score_map.shape)}")
    logits = jnp.asarray(score_map, jnp.float32)[..., 0] / tau
    gt = jnp.asarray(matching[..., 0], jnp.float32)
    mask = jnp.asarray(matching[..., 2], jnp.float32)
    if official_broadcast:
        return _broadcast_balanced_bce(logits, gt, mask, negative_ratio, eps)
    return balanced_bce(logits, gt, mask, negative_ratio, eps, from_logits=True)
