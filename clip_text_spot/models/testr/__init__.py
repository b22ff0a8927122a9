"""TESTR (polygon text spotter; TCM plugs into it): deformable attention, transformer, model, official import."""

from clip_text_spot.models.testr.deform_attn import MSDeformAttn, ms_deform_attn_core
from clip_text_spot.models.testr.model import TESTR, TESTRConfig
from clip_text_spot.models.testr.official import from_official_testr

__all__ = ["TESTR", "MSDeformAttn", "TESTRConfig", "from_official_testr", "ms_deform_attn_core"]
