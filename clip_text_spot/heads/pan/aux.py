"""TCM's auxiliary loss for PANet (``PANIdentityHead``, ``fcenet_panet.md`` §6.3) in JAX.

The score map S [B, h, w, 1] (raw cosines of TCM's instance-language matching) is divided by ``tau`` and resized
bilinearly (PyTorch ``F.interpolate``, ``align_corners=False``, no antialiasing) to the padded input size
(``downsample_ratio`` x); the loss is the PAN text loss at that resolution: OHEM on the logits (ratio 3) against the
full-resolution text instance map and effective mask, then the Dice on logits, per image, averaged over the batch.
Each image is paired with its own target (the released head has no broadcast bug here). The config's ``bbce_loss``
flag is ignored by the released class and has no counterpart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_text_spot.heads.common import score_map_logits
from clip_text_spot.heads.pan.loss import dice_with_logits, ohem_text_mask


def pan_score_map_aux_loss(
    score_map: jax.Array,
    gt_text: jax.Array,
    gt_mask: jax.Array,
    tau: float = 0.07,
    downsample_ratio: int = 32,
    ohem_ratio: float = 3.0,
) -> jax.Array:
    """PAN aux loss of ``score_map`` [B, h, w, 1] against ``gt_text`` / ``gt_mask`` [B, h * ratio, w * ratio].

    The targets are ``targets.loss_targets(..., out_hw=(H, W), downsample_ratio=1.0)``: the input-resolution text
    instance map (``gt_kernels[0]``) and effective mask, zero-padded to the padded input size.
    """
    logits = score_map_logits(score_map, (gt_text, gt_mask), tau, downsample_ratio)
    sampled = jax.vmap(lambda s, t, m: ohem_text_mask(s, t, m, ohem_ratio))(logits, gt_text, gt_mask)
    return jnp.mean(jax.vmap(dice_with_logits)(logits, gt_text, sampled))
