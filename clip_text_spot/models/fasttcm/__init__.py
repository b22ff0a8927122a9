"""TCM / FastTCM (CLIP turned into a scene-text detector): configs, modules, the image-text matcher, official import."""

from clip_text_spot.models.fasttcm.config import CODE_PROMPT, PAPER_PROMPT, DecoderConfig, FastTCMConfig
from clip_text_spot.models.fasttcm.matcher import TCMMatcher
from clip_text_spot.models.fasttcm.official import from_official_tcm, split_official_state

__all__ = [
    "CODE_PROMPT",
    "PAPER_PROMPT",
    "DecoderConfig",
    "FastTCMConfig",
    "TCMMatcher",
    "from_official_tcm",
    "split_official_state",
]
