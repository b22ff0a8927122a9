"""Offline Randomized Perturbation (ORP, ``dptr.md`` §1.5): a bank of CLIP image tokens of natural images, and the
per-batch sampling of the noise added to the pseudo visual embeddings.

Offline: each bank image goes through CLIP's preprocessing (``clip_pixels``: PIL bicubic resize of the short side
to the CLIP input size, i.e. torchvision's ``Resize`` on PIL images, with the long side truncated to an integer; a
centre crop whose offsets are ``round((size_in - size_out) / 2)``; RGB; ``(x / 255 - mean) / std`` with CLIP's
mean/std) and the modified image encoder (``CLIP.encode_image_tokens``: every token after ``post_layernorm``,
projected; class token first) -> [N, 197, 512] for ViT-B/16, stored as a float16 ``.npy`` (``build_orp_bank``).

Online (host side, in the data pipeline): per batch, ``B`` distinct bank images (one per sample, without
replacement, so the bank needs at least ``B`` images) and one random subset of ``T`` distinct token positions in
random order (shared by the whole batch, as in the official code; ``shared_tokens=False`` draws one per sample);
``noise = lam * bank[image, tokens]`` -> [B, T, D]. The jitted step only adds it to the CLIP text memory (T = 78).
The bank file is memory-mapped: only the gathered rows are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_crop_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of CLIP's short-side resize and centre crop."""
    if min(width, height) < 1:
        raise ValueError(f"image of size {width}x{height} is empty")
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def clip_pixels(image: Image.Image, size: int) -> np.ndarray:
    """float32 [size, size, 3]: CLIP's preprocessing of a PIL image (see module docstring)."""
    new_w, new_h, left, top = resize_crop_geometry(image.width, image.height, size)
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = np.asarray(image, np.float32) / 255.0
    return (pixels - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def encode_in_batches(
    images: Iterable[np.ndarray],
    count: int,
    encode: Callable[[np.ndarray], np.ndarray],
    out: np.ndarray,
    batch_size: int,
) -> None:
    """Write ``encode(batch)`` of ``count`` preprocessed images into ``out[:count]`` batch by batch.

    The last batch is padded to ``batch_size`` (so ``encode`` compiles once) and only its real rows are written;
    ``out`` may be a memory-mapped array, which is then filled incrementally.
    """
    it = iter(images)
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        batch = np.stack([next(it) for _ in range(n)])
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        out[start : start + n] = np.asarray(encode(batch))[:n].astype(out.dtype)


class OrpSampler:
    """Draws ORP noise from a bank [N, tokens, D] given as an ``.npy`` path (memory-mapped lazily, so the sampler
    pickles cheaply into data workers) or as an array."""

    def __init__(
        self, bank: str | Path | np.ndarray, *, lam: float = 0.1, tokens: int = 78, shared_tokens: bool = True
    ):
        self.path = None if isinstance(bank, np.ndarray) else str(bank)
        self._bank = bank if isinstance(bank, np.ndarray) else None
        self.lam = float(lam)
        self.tokens = int(tokens)
        self.shared_tokens = bool(shared_tokens)
        where = self.path or "ORP bank array"
        shape = self.bank.shape
        if len(shape) != 3:
            raise ValueError(f"{where}: expected an ORP bank [N, tokens, dim], got shape {shape}")
        if shape[1] < self.tokens:
            raise ValueError(f"{where}: {shape[1]} tokens per image, fewer than the {self.tokens} to sample")

    @property
    def bank(self) -> np.ndarray:
        if self._bank is None:
            if not Path(self.path).is_file():
                raise FileNotFoundError(
                    f"ORP bank {self.path} does not exist (build it with python -m clip_text_spot.dptr.build_orp_bank)"
                )
            self._bank = np.load(self.path, mmap_mode="r")
        return self._bank

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_bank"] = None
        return state

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator | np.random.RandomState,
        process_index: int = 0,
        process_count: int = 1,
    ) -> np.ndarray:
        """``lam * bank[images[:, None], tokens]`` [batch_size, tokens, D] in the bank's dtype.

        The images are drawn first, then the tokens, each with ``rng.choice(..., replace=False)``: with
        ``np.random.RandomState(seed)`` this is exactly the official draw after ``np.random.seed(seed)``.

        The draw is for the global batch of ``batch_size * process_count`` samples (distinct images across all of
        it); this process keeps rows ``process_index::process_count``, which are its samples when elements are
        sharded round-robin (``clip_text_spot.data.pipeline``). With the same ``rng`` on every process the global
        batch gets the noise a single process would draw."""
        bank = self.bank
        n, total, _ = bank.shape
        rows = batch_size * process_count
        if n < rows:
            raise ValueError(
                f"{self.path or 'ORP bank'} has {n} images; one distinct image per sample needs at least "
                f"the global batch size {rows}"
            )
        images = rng.choice(n, size=rows, replace=False)
        if self.shared_tokens:
            tokens = rng.choice(total, size=self.tokens, replace=False)[None, :]
        else:
            tokens = np.stack([rng.choice(total, size=self.tokens, replace=False) for _ in range(rows)])
            tokens = tokens[process_index::process_count]
        images = images[process_index::process_count]
        noise = bank[images[:, None], tokens]
        return (noise * np.asarray(self.lam, noise.dtype)).astype(bank.dtype)
