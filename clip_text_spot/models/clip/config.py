"""CLIP architecture descriptions: text tower, ViT or ModifiedResNet image tower, presets, JSON round trip."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """CLIP text transformer. ``eos_token_id`` None or 2 means OpenAI/HF-legacy pooling at ``argmax(input_ids)``."""

    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    context_length: int = 77
    act: str = "quick_gelu"
    eps: float = 1e-5
    eos_token_id: int | None = None
    pad_token_id: int = 0


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """CLIP VisionTransformer. ``image_size`` is the pretraining size (its grid sets the position table)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    act: str = "quick_gelu"
    eps: float = 1e-5
    kind: str = "vit"


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """OpenAI ModifiedResNet. ``heads`` are the attention pool's; ``image_size // 32`` is its native grid."""

    layers: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    heads: int = 32
    image_size: int = 224
    eps: float = 1e-5
    kind: str = "resnet"


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP model; ``dtype`` is the compute dtype (params stay float32)."""

    embed_dim: int
    text: TextConfig
    vision: ViTConfig | ResNetConfig
    logit_scale_init: float = 2.6592
    dtype: str = "float32"

    def replace(self, **kw: Any) -> CLIPConfig:
        """A copy with fields replaced; ``text=``/``vision=`` may be dicts of field overrides."""
        for key in ("text", "vision"):
            if isinstance(kw.get(key), dict):
                kw[key] = dataclasses.replace(getattr(self, key), **kw[key])
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (``from_dict`` inverts it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming the key."""
        d = dict(d)
        vision = dict(d.pop("vision"))
        kind = vision.get("kind", "vit")
        vcls = {"vit": ViTConfig, "resnet": ResNetConfig}.get(kind)
        if vcls is None:
            raise ValueError(f"vision.kind must be 'vit' or 'resnet', got {kind!r}")
        if "layers" in vision and kind == "resnet":
            vision["layers"] = tuple(vision["layers"])
        _check_keys(vcls, vision, "vision")
        text = dict(d.pop("text"))
        _check_keys(TextConfig, text, "text")
        _check_keys(cls, d, "")
        return cls(text=TextConfig(**text), vision=vcls(**vision), **d)


def _check_keys(klass: type, d: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown CLIP config field(s) {[where + '.' + k if where else k for k in unknown]}")


def preset(name: str, **overrides: Any) -> CLIPConfig:
    """Named architectures: ``vit_b16``, ``vit_b32``, ``rn50``, ``rn101``, ``rn50x4``, and CPU-sized ``tiny_vit``,
    ``tiny_rn`` (random init for demos and tests)."""
    text_b = TextConfig()
    presets = {
        "vit_b16": CLIPConfig(512, text_b, ViTConfig(patch_size=16)),
        "vit_b32": CLIPConfig(512, text_b, ViTConfig(patch_size=32)),
        "vit_l14": CLIPConfig(
            768,
            TextConfig(width=768, heads=12, mlp_dim=3072),
            ViTConfig(patch_size=14, width=1024, layers=24, heads=16, mlp_dim=4096),
        ),
        "rn50": CLIPConfig(1024, text_b, ResNetConfig()),
        "rn101": CLIPConfig(512, text_b, ResNetConfig(layers=(3, 4, 23, 3))),
        "rn50x4": CLIPConfig(
            640,
            TextConfig(width=640, heads=10, mlp_dim=2560),
            ResNetConfig(layers=(4, 6, 10, 6), width=80, heads=40, image_size=288),
        ),
        "tiny_vit": CLIPConfig(
            64,
            TextConfig(width=64, layers=2, heads=4, mlp_dim=256),
            ViTConfig(image_size=64, patch_size=8, width=64, layers=2, heads=4, mlp_dim=256),
        ),
        "tiny_rn": CLIPConfig(
            64,
            TextConfig(width=64, layers=2, heads=4, mlp_dim=256),
            ResNetConfig(layers=(1, 1, 1, 1), width=16, heads=8, image_size=64),
        ),
    }
    if name not in presets:
        raise ValueError(f"unknown CLIP preset {name!r}; known: {sorted(presets)}")
    return presets[name].replace(**overrides) if overrides else presets[name]
