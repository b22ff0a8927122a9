"""DBNet (mmocr 0.4, as TCM/FastTCM train it): FPNC + DB head, targets, loss, auxiliary score-map loss,
post-processing."""

from clip_text_spot.heads.db.loss import db_loss, dice_loss, masked_l1, score_map_aux_loss
from clip_text_spot.heads.db.model import FPNC, DBDecoder, DBHead, DBMaps
from clip_text_spot.heads.db.postprocess import DB_PRESETS, DBPostprocessConfig, db_postprocess, db_postprocess_batch
from clip_text_spot.heads.db.targets import DB_TARGETS, TARGET_KEYS, DBTargetConfig, db_targets

__all__ = [
    "DB_PRESETS",
    "DB_TARGETS",
    "FPNC",
    "TARGET_KEYS",
    "DBDecoder",
    "DBHead",
    "DBMaps",
    "DBPostprocessConfig",
    "DBTargetConfig",
    "db_loss",
    "db_postprocess",
    "db_postprocess_batch",
    "db_targets",
    "dice_loss",
    "masked_l1",
    "score_map_aux_loss",
]
