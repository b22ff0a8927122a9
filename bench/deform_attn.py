"""Multi-scale deformable attention: time of four gather formulations, forward + backward, jitted.

    python bench/deform_attn.py [--image=320] [--batch=1] [--dim=256] [--heads=8] [--points=4] [--rounds=7]
        [--dtype=float32] [--output=bench/results/deform_attn-<device>.json]

Encoder shapes of a square image: four levels at strides 8..64, every token a query. Formulations:
``corner_packed`` (the one in ``clip_text_spot.models.testr.deform_attn``, after Scenic: each level zero-padded by
one pixel, the four neighbours of every top-left corner side by side in channels, one gather per level),
``per_level`` (one gather per level of all four corners from the level's own slab), ``single_gather`` (every corner
of every level from the level-concatenated slab in one gather), ``packed_single`` (the packed slabs of all levels
concatenated, one gather). Each is checked against ``corner_packed`` first, then the rounds interleave them; the
median seconds per call is reported. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from report import device_fields, emit  # noqa: E402

from clip_text_spot.models.testr.deform_attn import level_starts, ms_deform_attn_core  # noqa: E402


def bilinear_corners(locations, shapes):
    """Flat indices into the level-concatenated token axis [..., L, P, 4] and weights (0 outside) of the four
    neighbours of every location [..., L, P, 2]."""
    hw = np.asarray(shapes, np.int64)
    h = jnp.asarray(hw[:, 0, None], jnp.float32)
    w = jnp.asarray(hw[:, 1, None], jnp.float32)
    start = jnp.asarray(level_starts(shapes)[:, None], jnp.int32)
    grid = 2.0 * locations.astype(jnp.float32) - 1.0
    ix = ((grid[..., 0] + 1.0) * w - 1.0) / 2.0
    iy = ((grid[..., 1] + 1.0) * h - 1.0) / 2.0
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    x1, y1 = x0 + 1.0, y0 + 1.0
    corners = ((x0, y0, (x1 - ix) * (y1 - iy)), (x1, y0, (ix - x0) * (y1 - iy)))
    corners += ((x0, y1, (x1 - ix) * (iy - y0)), (x1, y1, (ix - x0) * (iy - y0)))
    index, weight = [], []
    for cx, cy, cw in corners:
        inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        xi = jnp.clip(cx, 0, w - 1).astype(jnp.int32)
        yi = jnp.clip(cy, 0, h - 1).astype(jnp.int32)
        index.append(start + yi * w.astype(jnp.int32) + xi)
        weight.append(jnp.where(inside, cw, 0.0))
    return jnp.stack(index, -1), jnp.stack(weight, -1)


def single_gather(value, shapes, locations, weights):
    """Every corner of every level from the level-concatenated [N, M, S, D] slab in one gather."""
    n, _, m, d = value.shape
    lq = locations.shape[1]
    index, bilinear = bilinear_corners(locations, shapes)
    bilinear = bilinear * weights.astype(jnp.float32)[..., None]
    index = index.transpose(0, 2, 1, 3, 4, 5).reshape(n, m, -1)
    bilinear = bilinear.transpose(0, 2, 1, 3, 4, 5).reshape(n, m, lq, -1)
    slab = value.transpose(0, 2, 1, 3)
    picked = jax.vmap(jax.vmap(lambda v, i: v.at[i].get(mode="promise_in_bounds")))(slab, index)
    out = jnp.einsum("nmqk,nmqkd->nqmd", bilinear, picked.reshape(n, m, lq, -1, d))
    return out.reshape(n, lq, m * d).astype(value.dtype)


def per_level(value, shapes, locations, weights):
    """One gather per level: the level's four corners from its own [N, M, H W, D] slab."""
    n, _, m, d = value.shape
    lq = locations.shape[1]
    index, bilinear = bilinear_corners(locations, shapes)
    bilinear = bilinear * weights.astype(jnp.float32)[..., None]
    out = jnp.zeros((n, lq, m, d), jnp.float32)
    for lvl, ((h, w), start) in enumerate(zip(shapes, level_starts(shapes), strict=True)):
        slab = value[:, start : start + h * w].transpose(0, 2, 1, 3)
        idx = (index[:, :, :, lvl] - int(start)).transpose(0, 2, 1, 3, 4).reshape(n, m, -1)
        picked = jax.vmap(jax.vmap(lambda v, i: v.at[i].get(mode="promise_in_bounds")))(slab, idx)
        wl = bilinear[:, :, :, lvl].transpose(0, 2, 1, 3, 4).reshape(n, m, lq, -1)
        out = out + jnp.einsum("nmqk,nmqkd->nqmd", wl, picked.reshape(n, m, lq, -1, d))
    return out.reshape(n, lq, m * d).astype(value.dtype)


def packed_single(value, shapes, locations, weights):
    """Corner-packed slabs of all levels concatenated, one gather of the top-left corners of every level."""
    n, _, m, d = value.shape
    lq = locations.shape[1]
    slabs, idx, bil = [], [], []
    offset = 0
    for lvl, ((h, w), start) in enumerate(zip(shapes, level_starts(shapes), strict=True)):
        grid = value[:, start : start + h * w].reshape(n, h, w, m, d).transpose(0, 3, 1, 2, 4)
        pad = jnp.pad(grid, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
        slabs.append(
            jnp.concatenate(
                [pad[:, :, :-1, :-1], pad[:, :, :-1, 1:], pad[:, :, 1:, :-1], pad[:, :, 1:, 1:]], -1
            ).reshape(n, m, (h + 1) * (w + 1), 4 * d)
        )
        loc = locations[:, :, :, lvl].astype(jnp.float32)
        ix = ((2 * loc[..., 0] - 1 + 1) * w - 1) / 2
        iy = ((2 * loc[..., 1] - 1 + 1) * h - 1) / 2
        x0, y0 = jnp.floor(ix), jnp.floor(iy)
        fx, fy = ix - x0, iy - y0
        b = jnp.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], -1)
        inside = (x0 >= -1) & (x0 <= w - 1) & (y0 >= -1) & (y0 <= h - 1)
        bil.append(jnp.where(inside[..., None], b, 0.0) * weights[:, :, :, lvl, :, None].astype(jnp.float32))
        yi = (jnp.clip(y0, -1, h - 1) + 1).astype(jnp.int32)
        idx.append(offset + yi * (w + 1) + (jnp.clip(x0, -1, w - 1) + 1).astype(jnp.int32))
        offset += (h + 1) * (w + 1)
    slab = jnp.concatenate(slabs, 2)
    index = jnp.stack(idx, 3).transpose(0, 2, 1, 3, 4).reshape(n, m, -1)  # [N, M, Lq*L*P]
    picked = jax.vmap(jax.vmap(lambda v, i: v.at[i].get(mode="promise_in_bounds")))(slab, index)
    picked = picked.reshape(n, m, lq, len(shapes), -1, 4, d)
    out = jnp.einsum("nqmlpc,nmqlpcd->nqmd", jnp.stack(bil, 3), picked)
    return out.reshape(n, lq, m * d).astype(value.dtype)


FORMULATIONS = {
    "corner_packed": ms_deform_attn_core,
    "per_level": per_level,
    "single_gather": single_gather,
    "packed_single": packed_single,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=int, default=320)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--output", default=None)
    args = p.parse_args()

    shapes = tuple((-(-args.image // s), -(-args.image // s)) for s in (8, 16, 32, 64))
    s = sum(h * w for h, w in shapes)
    n, m, d, lv, pt = args.batch, args.heads, args.dim // args.heads, len(shapes), args.points
    keys = jax.random.split(jax.random.key(0), 4)
    value = jax.random.normal(keys[0], (n, s, m, d)).astype(args.dtype)
    locations = jax.random.uniform(keys[1], (n, s, m, lv, pt, 2), minval=-0.1, maxval=1.1)
    weights = jax.nn.softmax(jax.random.normal(keys[2], (n, s, m, lv * pt)), -1).reshape(n, s, m, lv, pt)
    cotangent = jax.random.normal(keys[3], (n, s, m * d)).astype(args.dtype)

    def step(fn):
        def loss(v, loc, a):
            return (fn(v, shapes, loc, a).astype(jnp.float32) * cotangent).sum()

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    steps = {name: step(fn) for name, fn in FORMULATIONS.items()}
    reference = jax.jit(lambda v, loc, a: ms_deform_attn_core(v, shapes, loc, a))(value, locations, weights)
    max_diff = {}
    for name, fn in FORMULATIONS.items():
        got = jax.jit(lambda v, loc, a, fn=fn: fn(v, shapes, loc, a))(value, locations, weights)
        max_diff[name] = float(jnp.abs(got.astype(jnp.float32) - reference.astype(jnp.float32)).max())
        jax.block_until_ready(steps[name](value, locations, weights))
    times = {name: [] for name in FORMULATIONS}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(value, locations, weights))
            times[name].append(time.perf_counter() - t0)
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    fastest = min(seconds, key=seconds.get)
    emit(
        {
            "bench": "deform_attn",
            **device_fields(),
            "image": args.image,
            "tokens": s,
            "batch": n,
            "dim": args.dim,
            "heads": m,
            "levels": lv,
            "points": pt,
            "dtype": args.dtype,
            "fwd_bwd_seconds": seconds,
            "relative_to_corner_packed": {k: v / seconds["corner_packed"] for k, v in seconds.items()},
            "max_abs_diff_vs_corner_packed": max_diff,
            "fastest": fastest,
        },
        args.output,
    )


if __name__ == "__main__":
    main()
