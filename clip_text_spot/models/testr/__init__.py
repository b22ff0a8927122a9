"""TESTR (polygon text spotter; TCM plugs into it): deformable attention, transformer, model, official import."""

from clip_text_spot.models.testr.backbone import ResNet, ResNetConfig
from clip_text_spot.models.testr.deform_attn import MSDeformAttn, ms_deform_attn_core
from clip_text_spot.models.testr.model import TESTR, TESTRConfig, TESTRDetector
from clip_text_spot.models.testr.official import from_official_testr, from_official_testr_detector

__all__ = [
    "TESTR",
    "MSDeformAttn",
    "ResNet",
    "ResNetConfig",
    "TESTRConfig",
    "TESTRDetector",
    "from_official_testr",
    "from_official_testr_detector",
    "ms_deform_attn_core",
]
