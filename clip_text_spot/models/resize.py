"""Resizing that reproduces PyTorch's ``F.interpolate`` (``align_corners=False``, no antialiasing).

``jax.image.resize`` antialiases when it downsamples and uses the Keys cubic (a = -0.5), so it differs from
PyTorch's bilinear (used by DenseCLIP/TCM for the attention-pool position embedding) and bicubic (a = -0.75, used by
Hugging Face's ``interpolate_pos_encoding`` for ViT position embeddings). Here a resize is a pair of small
interpolation matrices built on the host for static sizes and applied with two matmuls, which is exact and cheap.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """The four cubic-convolution weights for fractional offsets ``t`` (PyTorch's upsample_bicubic2d kernel)."""

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int, method: str) -> np.ndarray:
    """Matrix M [out, in] with ``y = M @ x`` equal to PyTorch 1-D interpolation (size given, align_corners=False).

    ``method`` is ``"bilinear"`` or ``"bicubic"``. Equal sizes give the identity.
    """
    m = np.zeros((out_size, in_size), np.float64)
    if in_size == out_size:
        return np.eye(in_size, dtype=np.float32)
    scale = in_size / out_size
    dst = np.arange(out_size, dtype=np.float64)
    src = (dst + 0.5) * scale - 0.5
    rows = np.arange(out_size)
    if method == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(np.int64)
        i0 = np.minimum(i0, in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        lam = src - i0
        np.add.at(m, (rows, i0), 1.0 - lam)
        np.add.at(m, (rows, i1), lam)
    elif method == "bicubic":
        i0 = np.floor(src).astype(np.int64)
        w = _cubic_weights(src - i0)
        for k in range(4):
            idx = np.clip(i0 - 1 + k, 0, in_size - 1)
            np.add.at(m, (rows, idx), w[:, k])
    else:
        raise ValueError(f"interpolation method must be 'bilinear' or 'bicubic', got {method!r}")
    return m.astype(np.float32)


def resize_grid(x: jnp.ndarray, out_hw: tuple[int, int], method: str) -> jnp.ndarray:
    """Resize ``x`` [H, W, C] (or [..., H, W, C]) to ``out_hw`` exactly as PyTorch ``F.interpolate`` does."""
    h, w = x.shape[-3], x.shape[-2]
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return x
    mh = jnp.asarray(interpolation_matrix(h, oh, method), x.dtype)
    mw = jnp.asarray(interpolation_matrix(w, ow, method), x.dtype)
    x = jnp.einsum("oh,...hwc->...owc", mh, x, precision="highest")
    return jnp.einsum("pw,...owc->...opc", mw, x, precision="highest")
