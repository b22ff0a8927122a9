"""TESTR's set criterion (spotting.md §3.3-3.4; ``SetCriterion`` of ``adet/modeling/testr/losses.py``), jittable.

``outputs`` uses the official dict layout: ``pred_logits`` [B, Q, P, C], ``pred_ctrl_points`` [B, Q, P, 2],
``pred_texts`` [B, Q, T, voc + 1], ``aux_outputs`` (one such dict per earlier decoder layer) and ``enc_outputs``
(``pred_logits`` [B, S, C], ``pred_boxes`` [B, S, 4] cxcywh). Each decoder layer is matched on its own (point
matcher), the encoder proposals by the box matcher; all assignments come from one host callback
(``matcher.hungarian_assign``).

Terms, with ``num_inst = max(1, number of targets in the batch)``:

* ``loss_ce`` (focal, a = 0.25, g = 2; every point of a matched query is positive): ``sum_{b,q} mean_P / num_inst``;
  ``loss_ce_enc``: ``sum_{b,s} / num_inst``;
* ``loss_ctrl_points``: summed L1 over the matched points / num_inst; ``loss_bbox_enc``, ``loss_giou_enc``: summed
  L1 (cxcywh) and ``1 - GIoU`` over the matched proposals / num_inst;
* ``loss_texts``: cross-entropy averaged over all ``T`` positions of the matched queries, padding class included
  (as the official ``F.cross_entropy`` without ignore index, not divided by num_inst).

Aux terms get the suffix ``_i`` (decoder layer i), encoder terms ``_enc``. Weighted terms: class 2, points 5, text
4 (every polygon config; d2 default 2), boxes 5 / GIoU 2 / encoder class 2.

Choices where the official code is per device: with a data-parallel global batch the sums above run over the whole
batch and ``num_inst`` counts all its targets, which equals the official per-GPU normalisation followed by DDP's
gradient averaging; ``loss_texts`` is the mean over all matched positions of the batch (the official one averages
per device). A batch without targets gives ``loss_texts = 0`` (torch returns NaN). ``token_valid`` [B, S]
(optional) keeps padded encoder tokens out of the encoder matching and ``loss_ce_enc`` (spotting.md §10).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from clip_text_spot.models.testr.matcher import (
    box_cost,
    box_cxcywh_to_xyxy,
    ctrl_point_cost,
    generalized_box_iou,
    hungarian_assign,
)
from clip_text_spot.models.testr.targets import SpotTargets


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Matcher and loss weights (``MODEL.TRANSFORMER.LOSS``), polygon-config defaults."""

    point_class_weight: float = 2.0
    point_coord_weight: float = 5.0
    point_text_weight: float = 4.0
    box_class_weight: float = 2.0
    box_coord_weight: float = 5.0
    box_giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    aux_loss: bool = True

    @classmethod
    def from_d2(cls, loss_cfg: Mapping) -> LossConfig:
        """From a detectron2 ``MODEL.TRANSFORMER.LOSS`` mapping (upper-case keys)."""
        return cls(**{f.name: loss_cfg[f.name.upper()] for f in dataclasses.fields(cls) if f.name.upper() in loss_cfg})

    def weights(self, num_aux: int) -> dict[str, float]:
        """Weight of every loss term (the detector's ``weight_dict``)."""
        dec = {
            "loss_ce": self.point_class_weight,
            "loss_ctrl_points": self.point_coord_weight,
            "loss_texts": self.point_text_weight,
        }
        out = dict(dec)
        for i in range(num_aux):
            out.update({f"{k}_{i}": v for k, v in dec.items()})
        out.update(
            loss_ce_enc=self.box_class_weight, loss_bbox_enc=self.box_coord_weight, loss_giou_enc=self.box_giou_weight
        )
        return out


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """Elementwise RetinaNet focal loss on logits (``alpha < 0``: no alpha weighting)."""
    prob = jax.nn.sigmoid(logits)
    ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def _matched_class_targets(match: jax.Array, labels: jax.Array, num_rows: int, num_classes: int) -> jax.Array:
    """[B, R, C] one-hot class targets: row ``match[b, j]`` gets target j's label, other rows none."""
    b = jnp.arange(match.shape[0])[:, None]
    rows = jnp.where(match >= 0, match, num_rows)  # out of range: dropped
    classes = jnp.full((match.shape[0], num_rows), num_classes, jnp.int32).at[b, rows].set(labels, mode="drop")
    return jax.nn.one_hot(classes, num_classes + 1, dtype=jnp.float32)[..., :num_classes]


def _gather_rows(x: jax.Array, match: jax.Array) -> jax.Array:
    """x [B, R, ...] at rows match [B, N] (-1 -> row 0, to be masked) -> [B, N, ...]."""
    idx = jnp.maximum(match, 0).reshape(*match.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, idx, axis=1)


def decoder_losses(
    out: Mapping[str, jax.Array], targets: SpotTargets, match: jax.Array, num_inst: jax.Array, cfg: LossConfig
) -> dict[str, jax.Array]:
    """``loss_ce``, ``loss_ctrl_points``, ``loss_texts`` of one decoder layer given its assignment [B, N]."""
    logits = out["pred_logits"]  # [B, Q, P, C]
    matched = (match >= 0).astype(jnp.float32)
    cls_t = _matched_class_targets(match, targets.labels, logits.shape[1], logits.shape[-1])[:, :, None]
    focal = sigmoid_focal_loss(logits, jnp.broadcast_to(cls_t, logits.shape), cfg.focal_alpha, cfg.focal_gamma)
    loss_ce = focal.mean(2).sum() / num_inst
    pts = _gather_rows(out["pred_ctrl_points"], match)
    loss_pts = (jnp.abs(pts - targets.ctrl_points) * matched[:, :, None, None]).sum() / num_inst
    texts = _gather_rows(out["pred_texts"], match)  # [B, N, T, V]
    tgt = targets.texts.astype(jnp.int32)
    ce = jax.nn.logsumexp(texts, -1) - jnp.take_along_axis(texts, tgt[..., None], -1)[..., 0]
    positions = matched.sum() * ce.shape[-1]
    loss_texts = (ce * matched[..., None]).sum() / jnp.maximum(positions, 1.0)
    return {"loss_ce": loss_ce, "loss_ctrl_points": loss_pts, "loss_texts": loss_texts}


def encoder_losses(
    enc: Mapping[str, jax.Array],
    targets: SpotTargets,
    match: jax.Array,
    num_inst: jax.Array,
    cfg: LossConfig,
    token_valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """``loss_ce_enc``, ``loss_bbox_enc``, ``loss_giou_enc`` of the encoder proposals given their assignment."""
    logits = enc["pred_logits"]  # [B, S, C]
    matched = (match >= 0).astype(jnp.float32)
    cls_t = _matched_class_targets(match, targets.labels, logits.shape[1], logits.shape[-1])
    focal = sigmoid_focal_loss(logits, cls_t, cfg.focal_alpha, cfg.focal_gamma)
    if token_valid is not None:
        focal = focal * token_valid[..., None]
    boxes = _gather_rows(enc["pred_boxes"], match)
    unit = jnp.array([0.5, 0.5, 1.0, 1.0], boxes.dtype)  # stands in for unmatched pairs: no 0/0 in any gradient
    safe_pred = jnp.where(matched[..., None] > 0, boxes, unit)
    safe_tgt = jnp.where(matched[..., None] > 0, targets.boxes, unit)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(safe_pred), box_cxcywh_to_xyxy(safe_tgt))
    return {
        "loss_ce_enc": focal.sum() / num_inst,
        "loss_bbox_enc": (jnp.abs(boxes - targets.boxes) * matched[..., None]).sum() / num_inst,
        "loss_giou_enc": ((1 - giou) * matched).sum() / num_inst,
    }


def match_all(
    outputs: Mapping,
    targets: SpotTargets,
    cfg: LossConfig,
    token_valid: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(decoder costs [L, B, Q, N], encoder costs [B, S, N], decoder matches [L, B, N], encoder matches [B, N]).

    Layer order: the aux layers 0..L-2, then the final layer. ``mesh``: see ``matcher.hungarian_assign``."""
    layers = [*outputs.get("aux_outputs", []), outputs] if cfg.aux_loss else [outputs]
    dec_cost = jnp.stack(
        [
            ctrl_point_cost(
                o["pred_logits"],
                o["pred_ctrl_points"],
                targets.ctrl_points,
                cfg.point_class_weight,
                cfg.point_coord_weight,
                cfg.focal_alpha,
                cfg.focal_gamma,
            )
            for o in layers
        ]
    )
    enc = outputs["enc_outputs"]
    enc_cost = box_cost(
        enc["pred_logits"],
        enc["pred_boxes"],
        targets.boxes,
        targets.labels,
        cfg.box_class_weight,
        cfg.box_coord_weight,
        cfg.box_giou_weight,
        cfg.focal_alpha,
        cfg.focal_gamma,
        token_valid,
    )
    num_targets = targets.valid.sum(-1).astype(jnp.int32)
    dec_match, enc_match = hungarian_assign([dec_cost, enc_cost], num_targets, mesh)
    return dec_cost, enc_cost, dec_match, enc_match


def set_criterion(
    outputs: Mapping,
    targets: SpotTargets,
    cfg: LossConfig,
    token_valid: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(unweighted loss terms, assignments ``dec_final``, ``dec_aux{i}``, ``enc`` [B, N]) of one batch."""
    targets = SpotTargets(*(jnp.asarray(x) for x in targets))
    _, _, dec_match, enc_match = match_all(outputs, targets, cfg, token_valid, mesh)
    num_inst = jnp.maximum(targets.valid.sum().astype(jnp.float32), 1.0)
    aux = list(outputs.get("aux_outputs", [])) if cfg.aux_loss else []
    losses = decoder_losses(outputs, targets, dec_match[-1], num_inst, cfg)
    matches = {"dec_final": dec_match[-1], "enc": enc_match}
    for i, o in enumerate(aux):
        losses.update({f"{k}_{i}": v for k, v in decoder_losses(o, targets, dec_match[i], num_inst, cfg).items()})
        matches[f"dec_aux{i}"] = dec_match[i]
    losses.update(encoder_losses(outputs["enc_outputs"], targets, enc_match, num_inst, cfg, token_valid))
    losses["num_inst"] = num_inst
    return losses, matches


def weighted_losses(losses: Mapping[str, jax.Array], cfg: LossConfig) -> dict[str, jax.Array]:
    """Each weighted term (as the detector's training forward returns them); their sum is the training loss."""
    num_aux = sum(1 for k in losses if k.startswith("loss_ce_") and k != "loss_ce_enc")
    return {k: w * losses[k] for k, w in cfg.weights(num_aux).items()}


def criterion_loss(
    outputs: Mapping,
    targets: SpotTargets,
    cfg: LossConfig,
    token_valid: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(training loss, every unweighted and weighted term: ``loss_*``, ``lossw_*``, ``num_inst``)."""
    losses, _ = set_criterion(outputs, targets, cfg, token_valid, mesh)
    weighted = weighted_losses(losses, cfg)
    total = sum(weighted.values())
    return total, {**losses, **{"lossw_" + k[len("loss_") :]: v for k, v in weighted.items()}}
