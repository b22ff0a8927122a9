"""TESTR's Hungarian matchers (spotting.md §3.2): matching costs on device, the assignment by scipy on the host.

Costs follow ``adet/modeling/testr/matcher.py``: focal class cost ``pos - neg`` with ``p = sigmoid(logit)``,
``neg = (1 - a) p^g (-log(1 - p + 1e-8))``, ``pos = a (1 - p)^g (-log(p + 1e-8))``;

* control points (decoder, every layer): ``class_w * mean_P(pos - neg) + coord_w * L1(pred[Q, 2P], gt[N, 2P])``
  (text is not in the cost);
* boxes (encoder proposals, all S tokens): ``coord_w * L1(cxcywh) + class_w * (pos - neg)[label] - giou_w * GIoU``.

Targets come padded to ``N`` per image (``valid`` [B, N]); only the first ``num_targets[b]`` columns of image ``b``
reach the solver, so padding never changes an assignment.

The assignment is ``scipy.optimize.linear_sum_assignment`` (exact parity with the official code, which runs it on
the CPU) called through ``jax.pure_callback`` inside the jitted train step, one host round trip for all cost
matrices of a step (``hungarian_assign`` takes several; with a mesh, one per device over its share of the batch).
Chosen over a split step (match outside, losses inside) because the trainer runs one jitted step and the solver is
cheap next to it. Measured on a 2-core CPU (``python -m clip_text_spot.models.testr.matcher``: the same jitted
cost computation with and without the callback, median of 10): demo sizes (batch 8, 2 decoder layers, 100
queries, 16 points, 10 targets per image, S = 1360 encoder tokens of a 256x256 image) 2.9 ms per step added, of
which scipy itself 0.7 ms; batch 2 at paper-like sizes (6 layers, 50 targets, S = 21760 tokens of a 1024x1024
image) 46 ms added, scipy 18 ms (the encoder blocks). The result is ``[..., B, N]`` int32: the query matched to
each target, -1 for padded targets (and for targets left over when N > queries, as scipy leaves them).
Non-finite costs (a diverged step) are replaced by +-1e30 on the host so the solver never raises; the loss is then
non-finite too and the trainer's NaN guard skips the step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from scipy.optimize import linear_sum_assignment

from clip_text_spot.parallel import BATCH_AXES

FOCAL_COST_EPS = 1e-8
_HOST_BIG = 1e30


def focal_class_cost(logits: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """Focal matching cost ``pos - neg`` per logit (same shape as ``logits``)."""
    p = jax.nn.sigmoid(logits)
    neg = (1 - alpha) * (p**gamma) * (-jnp.log(1 - p + FOCAL_COST_EPS))
    pos = alpha * ((1 - p) ** gamma) * (-jnp.log(p + FOCAL_COST_EPS))
    return pos - neg


def l1_cdist(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pairwise L1 distance: a [..., R, D], b [..., N, D] -> [..., R, N] (``torch.cdist(p=1)``)."""
    return jnp.abs(a[..., :, None, :] - b[..., None, :, :]).sum(-1)


def box_cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """[..., 4] (cx, cy, w, h) -> (x0, y0, x1, y1)."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def generalized_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """GIoU of xyxy boxes broadcast against each other (``a[:, None]``, ``b[None]`` for the pairwise matrix)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt, rb = jnp.maximum(a[..., :2], b[..., :2]), jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    iou = inter / union
    lt_c, rb_c = jnp.minimum(a[..., :2], b[..., :2]), jnp.maximum(a[..., 2:], b[..., 2:])
    wh_c = jnp.maximum(rb_c - lt_c, 0)
    area_c = wh_c[..., 0] * wh_c[..., 1]
    return iou - (area_c - union) / area_c


def ctrl_point_cost(
    logits: jax.Array,
    points: jax.Array,
    tgt_points: jax.Array,
    class_weight: float,
    coord_weight: float,
    alpha: float,
    gamma: float,
) -> jax.Array:
    """Decoder matching cost [B, Q, N] from logits [B, Q, P, C], points [B, Q, P, 2], targets [B, N, P, 2]."""
    cost_class = focal_class_cost(logits[..., 0], alpha, gamma).mean(-1, keepdims=True)  # class 0 (single class)
    flat = points.reshape(*points.shape[:2], -1)
    cost_points = l1_cdist(flat, tgt_points.reshape(*tgt_points.shape[:2], -1))
    return class_weight * cost_class + coord_weight * cost_points


def box_cost(
    logits: jax.Array,
    boxes: jax.Array,
    tgt_boxes: jax.Array,
    tgt_labels: jax.Array,
    class_weight: float,
    coord_weight: float,
    giou_weight: float,
    alpha: float,
    gamma: float,
    token_valid: jax.Array | None = None,
) -> jax.Array:
    """Encoder matching cost [B, S, N] from logits [B, S, C], cxcywh boxes [B, S, 4], targets [B, N, 4], labels [B, N].

    ``token_valid`` [B, S] (optional, not in the official code) gives padded tokens a prohibitive cost, so a batch
    padded to a common size matches as each image alone would (spotting.md §10)."""
    cost_class = jnp.take_along_axis(focal_class_cost(logits, alpha, gamma), tgt_labels[:, None, :], axis=-1)
    cost_bbox = l1_cdist(boxes, tgt_boxes)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes)[:, :, None], box_cxcywh_to_xyxy(tgt_boxes)[:, None])
    cost = coord_weight * cost_bbox + class_weight * cost_class + giou_weight * cost_giou
    if token_valid is not None:
        cost = jnp.where(token_valid[:, :, None], cost, _HOST_BIG)
    return cost


def assign_on_host(cost: np.ndarray, num_targets: np.ndarray) -> np.ndarray:
    """scipy assignment per image: cost [..., B, R, N], num_targets [B] -> [..., B, N] int32 query per target (-1:
    none)."""
    cost = np.asarray(cost)
    *lead, batch, _, n_max = cost.shape
    flat = np.nan_to_num(cost.reshape(-1, batch, *cost.shape[-2:]), nan=_HOST_BIG, posinf=_HOST_BIG, neginf=-_HOST_BIG)
    out = np.full((flat.shape[0], batch, n_max), -1, np.int32)
    for i, per_layer in enumerate(flat):
        for b, block in enumerate(per_layer):
            rows, cols = linear_sum_assignment(block[:, : int(num_targets[b])])
            out[i, b, cols] = rows
    return out.reshape(*lead, batch, n_max)


def _assign_all(num_targets: np.ndarray, *costs: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(assign_on_host(c, num_targets) for c in costs)


def _callback_assign(num_targets: jax.Array, *costs: jax.Array) -> tuple[jax.Array, ...]:
    shapes = tuple(jax.ShapeDtypeStruct((*c.shape[:-2], c.shape[-1]), jnp.int32) for c in costs)
    return jax.pure_callback(_assign_all, shapes, num_targets, *costs, vmap_method="sequential")


def hungarian_assign(
    costs: Sequence[jax.Array], num_targets: jax.Array, mesh: Mesh | None = None
) -> tuple[jax.Array, ...]:
    """Assignments for several cost arrays [..., B, R, N] in one host callback; jittable, no gradient.

    Returns for each ``[..., B, N]`` int32: the query (row) matched to each target, -1 for unmatched/padded. With a
    ``mesh`` the batch axis is split over its ``BATCH_AXES`` (``jax.shard_map``) and each device's images are
    solved by its own host callback; without one the whole batch goes to one callback (XLA gathers sharded costs
    to one device)."""
    costs = [jax.lax.stop_gradient(c) for c in costs]
    num_targets = jax.lax.stop_gradient(num_targets)
    if mesh is None:
        return _callback_assign(num_targets, *costs)
    batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)

    def spec(lead: int, tail: int) -> P:
        return P(*([None] * lead), batch_axes, *([None] * tail))

    return jax.shard_map(
        _callback_assign,
        mesh=mesh,
        in_specs=(spec(0, 0), *(spec(c.ndim - 3, 2) for c in costs)),
        out_specs=tuple(spec(c.ndim - 3, 1) for c in costs),
    )(num_targets, *costs)


def assignment_pairs(match: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's ``[N]`` match -> (rows, cols) in scipy's order (rows ascending), as the official matcher returns."""
    match = np.asarray(match)
    cols = np.flatnonzero(match >= 0)
    order = np.argsort(match[cols], kind="stable")
    return match[cols][order].astype(np.int64), cols[order].astype(np.int64)


def _time_callback(batch: int, layers: int, queries: int, tokens: int, targets: int, repeats: int = 10) -> dict:
    """Median seconds of a jitted step computing the matching costs with and without the scipy callback."""
    import time

    rng = np.random.default_rng(0)
    args = (
        rng.normal(size=(layers, batch, queries, 16, 1)).astype(np.float32),
        rng.uniform(size=(layers, batch, queries, 16, 2)).astype(np.float32),
        rng.uniform(size=(batch, targets, 16, 2)).astype(np.float32),
        rng.normal(size=(batch, tokens, 1)).astype(np.float32),
        rng.uniform(0.1, 0.9, size=(batch, tokens, 4)).astype(np.float32),
        rng.uniform(0.2, 0.8, size=(batch, targets, 4)).astype(np.float32),
    )

    def costs(logits, pts, tgt_pts, enc_logits, enc_boxes, tgt_boxes):
        dec = jax.vmap(lambda lg, p: ctrl_point_cost(lg, p, tgt_pts, 2.0, 5.0, 0.25, 2.0))(logits, pts)
        labels = jnp.zeros(tgt_boxes.shape[:2], jnp.int32)
        return dec, box_cost(enc_logits, enc_boxes, tgt_boxes, labels, 2.0, 5.0, 2.0, 0.25, 2.0)

    def with_assign(*a):
        dec, enc = costs(*a)
        return hungarian_assign([dec, enc], jnp.full((batch,), targets, jnp.int32))

    out = {}
    for name, fn in (("costs_only", jax.jit(costs)), ("with_callback", jax.jit(with_assign))):
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        out[name] = float(np.median(times))
    out["callback_s"] = out["with_callback"] - out["costs_only"]
    return out


if __name__ == "__main__":  # python -m clip_text_spot.models.testr.matcher: the callback's cost on this machine
    import json

    for sizes in (
        dict(batch=8, layers=2, queries=100, tokens=1360, targets=10),
        dict(batch=2, layers=6, queries=100, tokens=21760, targets=50),
    ):
        print(json.dumps({**sizes, **_time_callback(**sizes)}))
