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
    ``max_len + 1`` decoding steps. ``decode_ar=False`` decodes non-autoregressively (every position queried at
    once from BOS alone) before the refinements. ``refine_content_mask``: the content stream's mask in a cloze
    refinement, ``cloze`` as the official PARSeq/DPTR code computes it (its content and query masks are one tensor,
    so the in-place cloze edit reaches the content stream; it matters with ``depth > 1``) or ``causal`` (what the
    code's comments intend). ``fmu_queries``: learned queries of the fine-tuning feature merge unit; None gives
    ``max_len + 1``, OpenOCR hard-codes 26; 0 builds no FMU (PARSeq: the decoder reads the encoder tokens).
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
    decode_ar: bool = True
    refine_content_mask: str = "cloze"
    fmu_queries: int | None = None

    def __post_init__(self):
        if self.kind not in DECODER_KINDS:
            raise ValueError(f"decoder kind must be one of {DECODER_KINDS}, got {self.kind!r}")
        if self.dim % self.heads:
            raise ValueError(f"decoder dim {self.dim} is not divisible by its {self.heads} heads")
        if min(self.depth, self.max_len, self.num_perms) < 1 or self.refine_iters < 0:
            raise ValueError("decoder depth, max_len and num_perms must be >= 1 and refine_iters >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"decoder dropout must be in [0, 1), got {self.dropout}")
        if self.refine_content_mask not in ("cloze", "causal"):
            raise ValueError(f"refine_content_mask must be 'cloze' or 'causal', got {self.refine_content_mask!r}")
        if self.fmu_queries is not None and self.fmu_queries < 0:
            raise ValueError(f"fmu_queries must be >= 0 (0: no FMU), got {self.fmu_queries}")

    @property
    def steps(self) -> int:
        """Decoding steps (characters + EOS)."""
        return self.max_len + 1

    @property
    def num_fmu_queries(self) -> int:
        """The FMU's query count (0: no FMU)."""
        return self.steps if self.fmu_queries is None else self.fmu_queries


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The fine-tuning ViT (``dptr.md`` §3.1: 32x128 input, patch 4x8, d 512, 12 layers, 8 heads, no class token).

    ``norm_eps``: every LayerNorm's epsilon (OpenOCR's ViT: PyTorch's 1e-5; PARSeq's timm ViT: 1e-6).
    ``stem``: output channels of 3x3 stride-2 convolutions (each followed by GELU) in front of the patch embedding
    (our addition for small demo models: convolutions give a from-scratch ViT locality and train much faster on a
    CPU budget; empty = the official plain patchify). ``patch_size`` stays in input pixels: the patch embedding's
    kernel is ``patch_size / 2 ** len(stem)`` on the stem's output."""

    image_size: tuple[int, int] = (32, 128)
    patch_size: tuple[int, int] = (4, 8)
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_ratio: int = 4
    norm_eps: float = 1e-5
    stem: tuple[int, ...] = ()

    def __post_init__(self):
        if any(s % p for s, p in zip(self.image_size, self.patch_size, strict=True)):
            raise ValueError(f"encoder image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if any(p % self.stem_stride for p in self.patch_size) or min(self.stem, default=1) < 1:
            raise ValueError(
                f"encoder patch_size {self.patch_size} is not a multiple of the stem's stride {self.stem_stride} "
                f"(stem {self.stem}: positive channel counts, one stride-2 convolution each)"
            )
        if self.width % self.heads:
            raise ValueError(f"encoder width {self.width} is not divisible by its {self.heads} heads")

    @property
    def stem_stride(self) -> int:
        """Downsampling of the convolution stem (1 without one)."""
        return 2 ** len(self.stem)

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
