"""TESTR's sine position encodings (``adet/layers/pos_encoding.py`` and ``get_proposal_pos_embed``; spotting.md §1.2,
§1.4, §1.5), NHWC / channels-last."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

TEMPERATURE = 10000.0
SCALE = 2.0 * math.pi


def _interleaved_sine(x: jax.Array, feats: int) -> jax.Array:
    """[...] -> [..., feats]: ``x / 10000^(2 floor(i/2) / feats)``, sine at even channels, cosine at odd ones."""
    i = jnp.arange(feats, dtype=jnp.float32)
    dim_t = TEMPERATURE ** (2.0 * jnp.floor(i / 2.0) / feats)
    arg = x[..., None] / dim_t
    return jnp.stack([jnp.sin(arg[..., 0::2]), jnp.cos(arg[..., 1::2])], axis=-1).reshape(*x.shape, feats)


def sine_position_2d(mask: jax.Array, feats: int) -> jax.Array:
    """``PositionalEncoding2D(feats, normalize=True)``: ``mask`` [B, H, W] (True = pad) -> [B, H, W, 2 * feats],
    y channels first. Each axis counts the valid positions up to here, normalised by the row's / column's total."""
    valid = (~mask).astype(jnp.float32)
    y = jnp.cumsum(valid, axis=1)
    x = jnp.cumsum(valid, axis=2)
    eps = 1e-6
    y = (y - 0.5) / (y[:, -1:, :] + eps) * SCALE
    x = (x - 0.5) / (x[:, :, -1:] + eps) * SCALE
    return jnp.concatenate([_interleaved_sine(y, feats), _interleaved_sine(x, feats)], axis=-1)


def sine_position_1d(length: int, dim: int) -> jax.Array:
    """``PositionalEncoding1D(dim, normalize=True, scale=2 pi)`` of a ``length``-long sequence: [length, dim], sines
    of the ``dim / 2`` frequencies then their cosines (blocks, not interleaved)."""
    inv_freq = 1.0 / TEMPERATURE ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    pos = jnp.arange(1, length + 1, dtype=jnp.float32)
    pos = pos / (pos[-1:] + 1e-6) * SCALE
    arg = pos[:, None] * inv_freq[None, :]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)[:, :dim]


def proposal_position(coords_unact: jax.Array, dim: int) -> jax.Array:
    """``get_proposal_pos_embed``: [..., 4] box logits (cx, cy, w, h) -> [..., dim], ``dim / 4`` interleaved sine
    features per coordinate, coordinates in order. The official code hard-codes 64 features per coordinate (so runs
    only at d = 256); ``dim / 4`` is identical there and lets any width run."""
    if dim % 4:
        raise ValueError(f"proposal position features need a width divisible by 4, got {dim}")
    pos = jax.nn.sigmoid(coords_unact.astype(jnp.float32)) * SCALE
    return _interleaved_sine(pos, dim // 4).reshape(*coords_unact.shape[:-1], dim)
