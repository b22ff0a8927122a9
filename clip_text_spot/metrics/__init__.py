"""Evaluation metrics: ``detection`` (hmean-IoU, ICDAR2015 / curved / mmocr / DB variants, score sweep, TIoU),
``totaltext`` (Total-Text's Pascal-VOC and DetEval scripts), ``spotting`` (end-to-end / word spotting, lexicons),
``recognition`` (word accuracy, 1-NED), ``polygons`` (shared shapely geometry) and ``submission_io`` (official
ground-truth / submission file formats)."""
