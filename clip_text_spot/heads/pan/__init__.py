"""PANet head (mmocr 0.4 semantics, as TCM-PAN uses it): model, targets, loss, TCM aux loss, post-processing."""

from clip_text_spot.heads.pan.aux import pan_score_map_aux_loss
from clip_text_spot.heads.pan.loss import PANLossConfig, pan_loss, pan_loss_per_image
from clip_text_spot.heads.pan.model import FPEMFFM, PANDecoder, PANHead, TorchBatchNorm, load_official_pan
from clip_text_spot.heads.pan.postprocess import PAN_PRESETS, PANPostprocessConfig, pan_postprocess, resolve_config
from clip_text_spot.heads.pan.targets import PAN_TARGET_PRESETS, PANTargetConfig, loss_targets, pan_targets

__all__ = [
    "FPEMFFM",
    "PAN_PRESETS",
    "PAN_TARGET_PRESETS",
    "PANDecoder",
    "PANHead",
    "PANLossConfig",
    "PANPostprocessConfig",
    "PANTargetConfig",
    "TorchBatchNorm",
    "load_official_pan",
    "loss_targets",
    "pan_loss",
    "pan_loss_per_image",
    "pan_postprocess",
    "pan_score_map_aux_loss",
    "pan_targets",
    "resolve_config",
]
