"""TCM / FastTCM matcher description (CLIP towers, prompts, prompt generators, decoders), with a JSON round trip.

Defaults follow the released TCM-DBNet configs (tcm.md §2, §8): CLIP RN50 with a 640-px attention-pool grid (20x20),
the code's prompt ``"the pixels of many arbitrary-shape text instances."`` tokenised to 14 slots, 4 learnable
contexts, two 3-layer decoders of width 256 with 4 heads and dropout 0.1, residual scales initialised to 1e-3.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clip_text_spot.models.clip.config import CLIPConfig, ResNetConfig, TextConfig, preset

CODE_PROMPT = "the pixels of many arbitrary-shape text instances."
PAPER_PROMPT = "Text"


def default_clip() -> CLIPConfig:
    """CLIP RN50 whose attention pool is stored for 640-px inputs (a 20x20 grid), as TCM's DB/PAN configs load it."""
    return preset("rn50").replace(vision={"image_size": 640})


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """One TCM ``ContextDecoder`` (used as visual prompt generator and as context decoder)."""

    width: int = 256
    heads: int = 4
    layers: int = 3
    dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class FastTCMConfig:
    """A TCM (``fast=False``) or FastTCM (``fast=True``) image-text matcher.

    * ``clip``: the CLIP towers; ``clip.vision`` must be a ``ResNetConfig`` whose ``image_size // 32`` is the stored
      attention-pool grid (20 for 640). The text tower's position table gets ``prompt_length + n_ctx`` rows whatever
      ``clip.text.context_length`` says (``text_config``).
    * ``prompts``: the predefined prompt(s), one score-map channel each (K = len(prompts)); ``paper_prompt=True``
      replaces them by the paper's single word ``"Text"``. Tokenised with OpenAI padding to ``prompt_length`` slots.
    * ``n_ctx``: learnable context vectors inserted after SOT (0 = none). Initialised N(0, ``ctx_init_std``)
      truncated at +-2 absolute (PyTorch ``trunc_normal_`` defaults: std 1).
    * ``fast``: the prompt generator reads a learned ``meta_query`` (image-independent, so the text embedding can be
      cached) and bimodal similarity matching (BSM) follows the text encoder, in the paper's form
      ``t' = cos(g, t) g + t`` with t L2-normalised first (tcm.md §2.5). ``bsm_projection=True`` adds a learnable
      ``pix_w`` [C, C] initialised to the identity on ``g`` (an ablation; the released code's [1024, 512] version
      cannot run with RN50). ``fast=False``: TCM, the prompt generator reads the global image feature.
    * ``use_prompt_generator`` / ``use_vpg`` / ``use_context_decoder``: ablation switches (all on in the released
      configs).
    * ``gamma_init`` (context-decoder residual scale, a vector), ``vis_gamma_init`` (VPG residual scale, a scalar).
    * ``tau``: temperature of the auxiliary score-map loss (the score map itself is the raw cosine).
    * ``dtype``: compute dtype of every tower and module (parameters stay float32; ``clip.dtype`` is not used).
    """

    clip: CLIPConfig = dataclasses.field(default_factory=default_clip)
    prompts: tuple[str, ...] = (CODE_PROMPT,)
    paper_prompt: bool = False
    prompt_length: int = 14
    n_ctx: int = 4
    ctx_init_std: float = 1.0
    fast: bool = True
    bsm_projection: bool = False
    use_prompt_generator: bool = True
    use_vpg: bool = True
    use_context_decoder: bool = True
    vpg: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    context_decoder: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    gamma_init: float = 1e-3
    vis_gamma_init: float = 1e-3
    tau: float = 0.07
    dtype: str = "float32"

    def __post_init__(self):
        if not isinstance(self.clip.vision, ResNetConfig):
            raise ValueError("FastTCMConfig.clip.vision must be a ResNetConfig (TCM uses CLIP's ModifiedResNet)")
        if self.n_ctx < 0 or self.prompt_length < 2:
            raise ValueError(f"need n_ctx >= 0 and prompt_length >= 2, got {self.n_ctx} and {self.prompt_length}")
        if not self.prompts:
            raise ValueError("FastTCMConfig.prompts must hold at least one prompt")

    @property
    def prompt_texts(self) -> tuple[str, ...]:
        """The predefined prompts actually used (``("Text",)`` when ``paper_prompt``)."""
        return (PAPER_PROMPT,) if self.paper_prompt else tuple(self.prompts)

    @property
    def text_config(self) -> TextConfig:
        """The CLIP text tower with its position table truncated to ``prompt_length + n_ctx`` rows."""
        return dataclasses.replace(self.clip.text, context_length=self.prompt_length + self.n_ctx)

    @property
    def grid(self) -> int:
        """Side of the stored attention-pool position grid (``image_size // 32``)."""
        return self.clip.vision.image_size // 32

    def replace(self, **kw: Any) -> FastTCMConfig:
        """A copy with fields replaced; ``vpg=``/``context_decoder=`` may be dicts of field overrides."""
        for key in ("vpg", "context_decoder"):
            if isinstance(kw.get(key), dict):
                kw[key] = dataclasses.replace(getattr(self, key), **kw[key])
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (``from_dict`` inverts it)."""
        d = dataclasses.asdict(self)
        d["clip"] = self.clip.to_dict()
        d["prompts"] = list(self.prompts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FastTCMConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming them."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown FastTCM config field(s) {unknown}")
        if "clip" in d:
            d["clip"] = CLIPConfig.from_dict(d["clip"])
        if "prompts" in d:
            d["prompts"] = tuple(d["prompts"])
        for key in ("vpg", "context_decoder"):
            if key in d:
                sub = dict(d[key])
                bad = sorted(set(sub) - {f.name for f in dataclasses.fields(DecoderConfig)})
                if bad:
                    raise ValueError(f"unknown FastTCM config field(s) {[f'{key}.{k}' for k in bad]}")
                d[key] = DecoderConfig(**sub)
        return cls(**d)
