"""Multi-scale deformable attention (Deformable DETR's ``MSDeformAttn``) in pure JAX (spotting.md §2).

Sampling reproduces ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` — and hence the
official CUDA kernel — exactly: a location ``(x, y)`` in [0, 1] of level ``l`` maps to the pixel coordinate
``((2x - 1 + 1) W_l - 1) / 2`` (torch's own arithmetic), its four integer neighbours are weighted bilinearly, and a
neighbour outside the map reads zero. Level shapes are static Python ints, so everything is jittable forward and
backward (the gather's transpose is a scatter-add into the value map, which is grid_sample's backward).

Formulation (after Scenic's): per level, the value map is zero-padded by one pixel and the four neighbours of every
top-left corner are packed side by side in channels, so **one gather per level** of the top-left index fetches all
four corners (corners off the map read the zero border; a sample with no corner on the map gets weight 0).
``python bench/deform_attn.py`` timed four formulations forward + backward on the shared 2-core CPU, encoder shapes
of a 320x320 image (S = 2125 queries and tokens, d 256, 8 heads, 4 levels, 4 points, float32; median of 9 rounds,
``bench/results/deform_attn-cpu.json``): this one 0.251 s; one gather per level of four separate corners from the
unpadded slab 0.283 s (1.13x); every corner of every level in one gather from the level-concatenated slab 0.384 s
(1.53x); the packed slabs of all levels concatenated, one gather 0.474 s (1.89x). Gathers (and their scatter-add
transposes) cost per index on a CPU, and packing cuts the indices four-fold. Locations, bilinear weights and the
weighted sum are float32 whatever the compute dtype; the gathered values keep the value dtype until the sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.layers import Dtype
from clip_text_spot.models.testr.init import linear

Shapes = tuple[tuple[int, int], ...]


def level_starts(spatial_shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """Start offset of each level in the flattened token axis (``level_start_index``)."""
    sizes = [int(h) * int(w) for h, w in spatial_shapes]
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _packed_corners(grid: jax.Array) -> jax.Array:
    """[N, M, H, W, D] -> [N, M, (H + 1) (W + 1), 4 D]: the map zero-padded by one pixel, each top-left corner
    (-1..H-1, -1..W-1) holding its (x0, y0), (x1, y0), (x0, y1), (x1, y1) neighbours side by side."""
    n, m, h, w, d = grid.shape
    pad = jnp.pad(grid, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    quad = [pad[:, :, :-1, :-1], pad[:, :, :-1, 1:], pad[:, :, 1:, :-1], pad[:, :, 1:, 1:]]
    return jnp.concatenate(quad, -1).reshape(n, m, (h + 1) * (w + 1), 4 * d)


def _bilinear(locations: jax.Array, h: int, w: int) -> tuple[jax.Array, jax.Array]:
    """grid_sample's neighbours of ``locations`` [..., 2] (x, y in [0, 1]) on an H x W map: (index of the top-left
    corner into ``_packed_corners``' rows, int32 [...], corner weights float32 [..., 4], all zero when no corner
    lies inside the map)."""
    grid = 2.0 * locations.astype(jnp.float32) - 1.0
    ix = ((grid[..., 0] + 1.0) * w - 1.0) / 2.0
    iy = ((grid[..., 1] + 1.0) * h - 1.0) / 2.0
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    x1, y1 = x0 + 1.0, y0 + 1.0
    weights = jnp.stack(
        [(x1 - ix) * (y1 - iy), (ix - x0) * (y1 - iy), (x1 - ix) * (iy - y0), (ix - x0) * (iy - y0)], -1
    )
    near = (x0 >= -1) & (x0 <= w - 1) & (y0 >= -1) & (y0 <= h - 1)
    index = (jnp.clip(y0, -1, h - 1) + 1).astype(jnp.int32) * (w + 1) + (jnp.clip(x0, -1, w - 1) + 1).astype(jnp.int32)
    return index, jnp.where(near[..., None], weights, 0.0)


def ms_deform_attn_core(
    value: jax.Array, spatial_shapes: Shapes, locations: jax.Array, attention_weights: jax.Array
) -> jax.Array:
    """Deformable attention sampling (``ms_deform_attn_core_pytorch``).

    ``value`` [N, S, M, D] (levels concatenated, row-major within a level), ``spatial_shapes`` static ((H, W) per
    level), ``locations`` [N, Lq, M, L, P, 2] (x, y), ``attention_weights`` [N, Lq, M, L, P] -> [N, Lq, M * D]
    (channel ``m * D + d``), in ``value``'s dtype.
    """
    n, s, m, d = value.shape
    lq = locations.shape[1]
    if s != sum(h * w for h, w in spatial_shapes):
        raise ValueError(
            f"value has {s} tokens; spatial shapes {spatial_shapes} give {sum(h * w for h, w in spatial_shapes)}"
        )
    out = jnp.zeros((n, lq, m, d), jnp.float32)
    for lvl, ((h, w), start) in enumerate(zip(spatial_shapes, level_starts(spatial_shapes), strict=True)):
        grid = value[:, start : start + h * w].reshape(n, h, w, m, d).transpose(0, 3, 1, 2, 4)
        index, weights = _bilinear(locations[:, :, :, lvl], h, w)  # [N, Lq, M, P], [N, Lq, M, P, 4]
        weights = weights * attention_weights[:, :, :, lvl, :, None].astype(jnp.float32)
        index = index.transpose(0, 2, 1, 3).reshape(n, m, -1)
        picked = jax.vmap(jax.vmap(lambda v, i: v.at[i].get(mode="promise_in_bounds")))(_packed_corners(grid), index)
        out = out + jnp.einsum(
            "nqmpc,nmqpcd->nqmd", weights, picked.reshape(n, m, lq, -1, 4, d), preferred_element_type=jnp.float32
        )
    return out.reshape(n, lq, m * d).astype(value.dtype)


def offset_bias_init(heads: int, levels: int, points: int) -> np.ndarray:
    """The official ``sampling_offsets.bias`` init: head ``m`` points along angle 2 pi m / M, scaled so the larger
    coordinate is 1, times ``p + 1`` for point ``p`` (flattened (M, L, P, 2), (x, y) order)."""
    theta = np.arange(heads, dtype=np.float32) * np.float32(2.0 * math.pi / heads)
    grid = np.stack([np.cos(theta), np.sin(theta)], -1)
    grid = grid / np.abs(grid).max(-1, keepdims=True)
    grid = np.broadcast_to(grid[:, None, None, :], (heads, levels, points, 2)).copy()
    grid *= np.arange(1, points + 1, dtype=np.float32)[None, None, :, None]
    return grid.reshape(-1).astype(np.float32)


class MSDeformAttn(nnx.Module):
    """``MSDeformAttn(d_model, n_levels, n_heads, n_points)`` with the official parameter names and init.

    ``sampling_offsets`` (weights 0, bias ``offset_bias_init``), ``attention_weights`` (0), ``value_proj`` and
    ``output_proj`` (xavier-uniform, bias 0). Kernels are PyTorch weights transposed; channels stay head-major.
    """

    def __init__(self, dim: int, levels: int, heads: int, points: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        if dim % heads:
            raise ValueError(f"deformable attention width {dim} is not divisible by {heads} heads")
        self.levels, self.heads, self.points = levels, heads, points
        self.dtype = dtype
        zeros = nnx.initializers.zeros_init()
        bias = offset_bias_init(heads, levels, points)

        def offsets(key: jax.Array, shape: tuple[int, ...], dt: Dtype = jnp.float32) -> jax.Array:
            return jnp.asarray(bias, dt)

        kw = dict(rngs=rngs, dtype=dtype)
        n = heads * levels * points
        self.sampling_offsets = linear(dim, 2 * n, ("embed", None), kernel_init=zeros, bias_init=offsets, **kw)
        self.attention_weights = linear(dim, n, ("embed", None), kernel_init=zeros, bias_init=zeros, **kw)
        self.value_proj = linear(dim, dim, ("embed", "heads"), bias_init=zeros, **kw)
        self.output_proj = linear(dim, dim, ("heads", "embed"), bias_init=zeros, **kw)

    def sampling(
        self, query: jax.Array, reference_points: jax.Array, spatial_shapes: Shapes
    ) -> tuple[jax.Array, jax.Array]:
        """(sampling locations [N, Lq, M, L, P, 2], attention weights [N, Lq, M, L, P]), both float32.

        ``reference_points`` [N, Lq, L, 2] (points: offsets are in pixels of each level) or [N, Lq, L, 4] (boxes
        cx, cy, w, h: offsets are in units of half the box over ``P``).
        """
        n, lq, _ = query.shape
        m, nl, p = self.heads, self.levels, self.points
        off = self.sampling_offsets(query).astype(jnp.float32).reshape(n, lq, m, nl, p, 2)
        logits = self.attention_weights(query).astype(jnp.float32).reshape(n, lq, m, nl * p)
        weights = jax.nn.softmax(logits, axis=-1).reshape(n, lq, m, nl, p)
        ref = reference_points.astype(jnp.float32)[:, :, None, :, None, :]
        if reference_points.shape[-1] == 2:
            normalizer = jnp.asarray(np.asarray(spatial_shapes, np.float32)[:, ::-1].copy())  # (W, H) per level
            locations = ref + off / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = ref[..., :2] + off / p * ref[..., 2:] * 0.5
        else:
            raise ValueError(f"reference points end in {reference_points.shape[-1]} coordinates, not 2 or 4")
        return locations, weights

    def __call__(
        self,
        query: jax.Array,
        reference_points: jax.Array,
        source: jax.Array,
        spatial_shapes: Shapes,
        padding_mask: jax.Array | None = None,
        capture: dict | None = None,
    ) -> jax.Array:
        """``query`` [N, Lq, C], ``source`` [N, S, C] (levels concatenated), ``padding_mask`` [N, S] (True = pad,
        its values read as zero) -> [N, Lq, C]. ``capture`` (a dict) receives the sampling locations and weights."""
        n, s, c = source.shape
        value = self.value_proj(source)
        if padding_mask is not None:
            value = jnp.where(padding_mask[..., None], jnp.zeros((), value.dtype), value)
        value = value.reshape(n, s, self.heads, c // self.heads)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        if capture is not None:
            capture["sampling_locations"], capture["attention_weights"] = locations, weights
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, locations, weights))
