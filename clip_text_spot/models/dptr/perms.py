"""PARSeq's permutation language modelling on the host: target permutations and their attention masks (numpy).

With DPTR's fixed-length targets (``[BOS] + max_len chars + [EOS]``, padded; ``dptr.md`` §1.7, §8 items 9-10) the
permutations always run over ``max_len`` character positions:

* perm 0 is the canonical (left-to-right) order; with ``mirrored`` every permutation is followed by its flip, so
  perm 1 is the reverse order; the others are uniform random permutations (and their flips);
* BOS (position 0) is prepended and EOS (position ``max_len + 1``) appended to each;
* perm 1 is then rewritten as ``[0, max_len + 1, max_len, ..., 1]``: reverse context for the characters and the
  null context for EOS.

Masks of a permutation ``p`` (length ``T = max_len + 2``): PARSeq builds ``M`` [T, T] with ``M[p[i], p[i+1:]]``
masked; the content mask is ``M[:-1, :-1]``; the query mask is ``M[1:, :-1]`` after also masking the diagonal of
``M``. Equivalently, with ``rank[p[i]] = i``: content ``a`` may see content ``b`` iff ``rank[b] <= rank[a]``, and the
query of target ``a`` (row ``a - 1``) may see content ``b`` iff ``rank[b] < rank[a]``. Masks here are boolean with
True where attention is allowed (the convention of ``clip_text_spot.models.layers``).

PARSeq's special case of sampling from the pool of all permutations when a batch has at most 4 characters never
applies to fixed 25-character targets and is not reproduced.
"""

from __future__ import annotations

import numpy as np


def generate_perms(
    max_len: int, num_perms: int, rng: np.random.Generator, *, forward: bool = True, mirrored: bool = True
) -> np.ndarray:
    """int32 [num_perms, max_len + 2] target permutations (see module docstring)."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 for permutation language modelling, got {max_len}")
    if num_perms < 1 or (mirrored and num_perms % 2):
        raise ValueError(f"num_perms must be >= 1 (and even when mirrored), got {num_perms}")
    base = num_perms // 2 if mirrored else num_perms
    perms = [np.arange(max_len)] if forward else []
    perms += [rng.permutation(max_len) for _ in range(base - len(perms))]
    perms = np.stack(perms)
    if mirrored:
        perms = np.stack([perms, perms[:, ::-1]], axis=1).reshape(-1, max_len)
    bos = np.zeros((len(perms), 1), np.int64)
    eos = np.full((len(perms), 1), max_len + 1, np.int64)
    perms = np.concatenate([bos, perms + 1, eos], axis=1)
    if len(perms) > 1:
        perms[1, 1:] = max_len + 1 - np.arange(max_len + 1)
    return perms.astype(np.int32)


def perm_masks(perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(content mask, query mask), each bool [T - 1, T - 1], True = may attend, for one permutation of length T."""
    perm = np.asarray(perm)
    size = len(perm)
    if sorted(perm.tolist()) != list(range(size)):
        raise ValueError(f"perm must be a permutation of 0..{size - 1}, got {perm.tolist()}")
    rank = np.empty(size, np.int64)
    rank[perm] = np.arange(size)
    content = rank[None, :-1] <= rank[:-1, None]
    query = rank[None, :-1] < rank[1:, None]
    return content, query


def batch_perm_masks(
    batch_size: int,
    max_len: int,
    num_perms: int,
    rng: np.random.Generator,
    *,
    forward: bool = True,
    mirrored: bool = True,
) -> dict[str, np.ndarray]:
    """Masks of one batch's permutations, repeated per sample so that they shard with the batch.

    Returns ``perm_content_mask`` and ``perm_query_mask``, bool [batch_size, num_perms, max_len + 1, max_len + 1].
    """
    perms = generate_perms(max_len, num_perms, rng, forward=forward, mirrored=mirrored)
    content, query = zip(*(perm_masks(p) for p in perms), strict=True)
    shape = (batch_size, *np.shape(content))
    return {
        "perm_content_mask": np.broadcast_to(np.stack(content), shape).copy(),
        "perm_query_mask": np.broadcast_to(np.stack(query), shape).copy(),
    }
