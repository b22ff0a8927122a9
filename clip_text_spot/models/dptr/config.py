"""Architecture descriptions of DPTR's recogniser: decoder, fine-tuning ViT encoder and feature merge unit."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

DECODER_KINDS = ("parseq", "nrtr")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A text decoder reading a memory of ``dim``-wide tokens (``dptr.md`` §1.6: 6 layers, d 512, 8 heads).

    ``kind``: ``parseq`` (two-stream permutation LM, AR decoding + ``refine_iters`` cloze refinements) or ``nrtr``
    (plain causal transformer decoder, teacher-forced training, AR decoding). ``max_len`` characters plus EOS give
    ``max_len + 1`` decoding steps.
    """

    kind: str = "parseq"
    dim: int = 512
    depth: int = 6
    heads: int = 8
    mlp_ratio: int = 4
    dropout: float = 0.1
    max_len: int = 25
    num_perms: int = 6
    perm_forward: bool = True
    perm_mirrored: bool = True
    refine_iters: int = 1

    def __post_init__(self):
        if self.kind not in DECODER_KINDS:
            raise ValueError(f"decoder kind must be one of {DECODER_KINDS}, got {self.kind!r}")
        if self.dim % self.heads:
            raise ValueError(f"decoder dim {self.dim} is not divisible by its {self.heads} heads")
        if min(self.depth, self.max_len, self.num_perms) < 1 or self.refine_iters < 0:
            raise ValueError("decoder depth, max_len and num_perms must be >= 1 and refine_iters >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"decoder dropout must be in [0, 1), got {self.dropout}")

    @property
    def steps(self) -> int:
        """Decoding steps (characters + EOS)."""
        return self.max_len + 1


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The fine-tuning ViT (``dptr.md`` §3.1: 32x128 input, patch 4x8, d 512, 12 layers, 8 heads, no class token)."""

    image_size: tuple[int, int] = (32, 128)
    patch_size: tuple[int, int] = (4, 8)
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_ratio: int = 4

    def __post_init__(self):
        if any(s % p for s, p in zip(self.image_size, self.patch_size, strict=True)):
            raise ValueError(f"encoder image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"encoder width {self.width} is not divisible by its {self.heads} heads")

    @property
    def num_patches(self) -> int:
        return (self.image_size[0] // self.patch_size[0]) * (self.image_size[1] // self.patch_size[1])


def from_mapping(klass: type, values: Mapping[str, Any], where: str) -> Any:
    """``klass(**values)`` with tuples for list values; unknown keys are an error naming ``--config.<where>.KEY``."""
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {[f'--config.{where}.{k}' for k in unknown]}; known: {sorted(known)}")
    return klass(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
