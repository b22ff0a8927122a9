"""CLIP towers (ViT, ModifiedResNet, text transformer) in Flax NNX, with weight import from HF and OpenAI files."""

from clip_text_spot.models.clip.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig, preset
from clip_text_spot.models.clip.convert import CheckpointMismatchError, load_pretrained, save_converted
from clip_text_spot.models.clip.model import CLIP, l2_normalize

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CheckpointMismatchError",
    "ResNetConfig",
    "TextConfig",
    "ViTConfig",
    "l2_normalize",
    "load_pretrained",
    "preset",
    "save_converted",
]
