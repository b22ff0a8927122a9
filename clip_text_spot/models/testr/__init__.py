"""TESTR (polygon text spotter; TCM plugs into it): deformable attention, transformer, model, official import, and
the training pieces (targets, Hungarian matching, set criterion) and inference post-processing."""

from clip_text_spot.models.testr.backbone import ResNet, ResNetConfig
from clip_text_spot.models.testr.deform_attn import MSDeformAttn, ms_deform_attn_core
from clip_text_spot.models.testr.losses import LossConfig, criterion_loss, set_criterion
from clip_text_spot.models.testr.matcher import hungarian_assign
from clip_text_spot.models.testr.model import TESTR, TESTRConfig, TESTRDetector
from clip_text_spot.models.testr.official import from_official_testr, from_official_testr_detector
from clip_text_spot.models.testr.postprocess import SpottedWords, decode_text, inference_scores, postprocess_words
from clip_text_spot.models.testr.targets import CTLABELS, SpotTargets, batch_targets, image_targets

__all__ = [
    "CTLABELS",
    "TESTR",
    "LossConfig",
    "MSDeformAttn",
    "ResNet",
    "ResNetConfig",
    "SpotTargets",
    "SpottedWords",
    "TESTRConfig",
    "TESTRDetector",
    "batch_targets",
    "criterion_loss",
    "decode_text",
    "from_official_testr",
    "from_official_testr_detector",
    "hungarian_assign",
    "image_targets",
    "inference_scores",
    "ms_deform_attn_core",
    "postprocess_words",
    "set_criterion",
]
