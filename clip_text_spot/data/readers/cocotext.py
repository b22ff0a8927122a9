"""COCO-Text v2 (``cocotext.v2.json``): detection samples of one split (``train`` or ``val``).

Layout (eval_data.md §5, mmocr ``COCOTextDetAnnParser(variant='cocotext')``): ``imgs{id: {file_name, width,
height, set}}``, ``anns{id: {mask [x1, y1, ...], bbox [x, y, w, h], utf8_string, legibility, image_id}}``,
``imgToAnns{img_id: [ann ids]}``. The split is chosen by ``imgs[*].set``; images without annotations are left out
(as mmocr does; counted as ``images_without_annotations`` in the log). The polygon is ``mask`` (``bbox`` when the
mask has fewer than 3 points); ``legibility == "illegible"`` marks a don't-care region. Images of both splits are
COCO ``train2014`` images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clip_text_spot.data.readers.common import (
    IMAGE_CHECKS,
    DataFormatError,
    ReaderStats,
    Samples,
    bbox_to_polygon,
    check_choice,
    check_image_size,
    check_label,
    field,
    flat_to_polygon,
    load_image,
    load_json,
    make_det_sample,
    require_dir,
    require_file,
)
from clip_text_spot.data.types import DetSample

logger = logging.getLogger(__name__)


def _instance(ann: Any, path: Path, key: str):
    if not isinstance(ann, dict):
        raise DataFormatError(path, f"annotation must be a JSON object, got {type(ann).__name__}", key=key)
    mask = ann.get("mask")
    if isinstance(mask, list) and len(mask) >= 6:
        polygon = flat_to_polygon(mask, path, key=key)
    else:
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataFormatError(path, f"needs a mask with >= 3 points or a bbox [x, y, w, h], got {ann!r}", key=key)
        x, y, w, h = flat_to_polygon(bbox, path, key=key).reshape(-1)
        polygon = bbox_to_polygon(x, y, x + w, y + h)
    text = check_label(ann.get("utf8_string", ""), path, key)
    return polygon, text, ann.get("legibility") == "illegible"


def read_cocotext(
    ann_file: str | Path,
    image_dir: str | Path,
    *,
    split: str = "train",
    strict: bool = True,
    image_check: str = "verify",
) -> Samples[DetSample]:
    """COCO-Text v2 samples of ``split`` from ``ann_file`` with images in ``image_dir``."""
    check_choice(image_check, IMAGE_CHECKS, "image_check")
    ann_file = require_file(ann_file, "COCO-Text annotation")
    image_dir = require_dir(image_dir, "COCO-Text image")
    content = load_json(ann_file)
    imgs = field(content, "imgs", ann_file, "<root>")
    anns = field(content, "anns", ann_file, "<root>")
    img_to_anns = field(content, "imgToAnns", ann_file, "<root>")
    if not all(isinstance(x, dict) for x in (imgs, anns, img_to_anns)):
        raise DataFormatError(ann_file, "imgs, anns and imgToAnns must be JSON objects", key="<root>")
    chosen = [img_id for img_id, info in imgs.items() if isinstance(info, dict) and info.get("set") == split]
    if not chosen:
        sets = sorted({str(info.get("set")) for info in imgs.values() if isinstance(info, dict)})
        raise ValueError(f"split={split!r}: no image of {ann_file} has set={split!r} (found sets {sets})")
    items = [img_id for img_id in chosen if img_to_anns.get(img_id)]
    if len(items) < len(chosen):
        logger.info("cocotext/%s: images_without_annotations=%d (left out)", split, len(chosen) - len(items))

    def load(img_id: str, stats: ReaderStats) -> DetSample:
        key = f"imgs[{img_id}]"
        file_name = field(imgs[img_id], "file_name", ann_file, key)
        rows = []
        for ann_id in img_to_anns[img_id]:
            ann_key = f"anns[{ann_id}]"
            rows.append(_instance(field(anns, str(ann_id), ann_file, "anns"), ann_file, ann_key))
        image, size = load_image(image_dir / file_name, image_check, stats)
        check_image_size(size, imgs[img_id], ann_file, key)
        return make_det_sample(image, rows, Path(file_name).stem, stats)

    return Samples(f"cocotext_{split}", "det", items, load, strict=strict)
