"""TESTR (polygon text spotter): deformable attention, transformer, model, official import, the training pieces
(targets, Hungarian matching, set criterion), inference post-processing, and TESTR-TCM / TESTR-FastTCM (``tcm``:
the TCM prompting on a backbone level, the pixel loss and its targets, LR groups)."""

from clip_text_spot.models.testr.backbone import ResNet, ResNetConfig
from clip_text_spot.models.testr.deform_attn import MSDeformAttn, ms_deform_attn_core
from clip_text_spot.models.testr.losses import LossConfig, criterion_loss, set_criterion
from clip_text_spot.models.testr.matcher import hungarian_assign
from clip_text_spot.models.testr.model import TESTR, TESTRConfig, TESTRDetector
from clip_text_spot.models.testr.official import (
    from_official_spotter,
    from_official_testr,
    from_official_testr_clip,
    from_official_testr_detector,
)
from clip_text_spot.models.testr.postprocess import SpottedWords, decode_text, inference_scores, postprocess_words
from clip_text_spot.models.testr.targets import CTLABELS, SpotTargets, batch_targets, image_targets
from clip_text_spot.models.testr.tcm import (
    TESTRTCM,
    TESTRTCMConfig,
    batch_pixel_targets,
    build_testr_tcm,
    optim_groups,
    pixel_loss,
    pixel_target,
    tcm_criterion_loss,
)

__all__ = [
    "CTLABELS",
    "TESTR",
    "TESTRTCM",
    "LossConfig",
    "MSDeformAttn",
    "ResNet",
    "ResNetConfig",
    "SpotTargets",
    "SpottedWords",
    "TESTRConfig",
    "TESTRDetector",
    "TESTRTCMConfig",
    "batch_pixel_targets",
    "batch_targets",
    "build_testr_tcm",
    "criterion_loss",
    "decode_text",
    "from_official_testr",
    "from_official_spotter",
    "from_official_testr_clip",
    "from_official_testr_detector",
    "hungarian_assign",
    "image_targets",
    "inference_scores",
    "ms_deform_attn_core",
    "optim_groups",
    "pixel_loss",
    "pixel_target",
    "postprocess_words",
    "set_criterion",
    "tcm_criterion_loss",
]
