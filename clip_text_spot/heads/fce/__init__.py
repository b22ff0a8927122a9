"""FCENet (mmocr 0.4, as TCM plugs it in): FPN + FCE head, targets, loss, auxiliary score-map loss, post-processing."""

from clip_text_spot.heads.fce.aux import fce_aux_loss
from clip_text_spot.heads.fce.loss import LOSS_TERMS, fce_level_loss, fce_loss, fourier2poly
from clip_text_spot.heads.fce.model import FPN, FCEDecoder, FCEHead, load_official_fcenet
from clip_text_spot.heads.fce.postprocess import FCE_PRESETS, FCEPostprocessConfig, fce_postprocess, resolve_config
from clip_text_spot.heads.fce.targets import TCM_CTW_RANGES, TCM_IC15_RANGES, FCETargetConfig, fce_targets

__all__ = [
    "FCE_PRESETS",
    "FPN",
    "LOSS_TERMS",
    "TCM_CTW_RANGES",
    "TCM_IC15_RANGES",
    "FCEDecoder",
    "FCEHead",
    "FCEPostprocessConfig",
    "FCETargetConfig",
    "fce_aux_loss",
    "fce_level_loss",
    "fce_loss",
    "fce_postprocess",
    "fce_targets",
    "fourier2poly",
    "load_official_fcenet",
    "resolve_config",
]
