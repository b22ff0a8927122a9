"""mmocr 1.x unified annotation JSON (``textdet_*.json``, ``textspotting_*.json``, ``textrecog_*.json``).

Layout (eval_data.md §5): ``{"metainfo": {"task_name": ...}, "data_list": [...]}``. Detection/spotting entries:
``{"img_path", "height", "width", "instances": [{"polygon": [x1, y1, ...], "bbox": [x1, y1, x2, y2],
"ignore": bool, "text"?}]}``; recognition entries: ``{"img_path", "instances": [{"text"}]}``. ``img_path`` is
relative to ``data_root`` (default: the JSON file's directory). A detection instance without a polygon falls back to
its bbox (as mmocr's packers do). When the image is checked (``image_check != "none"``), its size must match the
entry's ``width``/``height`` if those are given.
"""

from __future__ import annotations

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
    require_file,
)
from clip_text_spot.data.types import DetSample, RecSample

TASKS = ("textdet", "textspotting", "textrecog")


def _det_instance(instance: Any, path: Path, key: str):
    if not isinstance(instance, dict):
        raise DataFormatError(path, f"instance must be a JSON object, got {type(instance).__name__}", key=key)
    if instance.get("polygon"):
        polygon = flat_to_polygon(instance["polygon"], path, key=key)
    else:
        bbox = field(instance, "bbox", path, key)
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DataFormatError(path, f"bbox must be [x1, y1, x2, y2], got {bbox!r}", key=key)
        polygon = bbox_to_polygon(*flat_to_polygon(bbox, path, key=key).reshape(-1))
    text = check_label(instance.get("text", ""), path, key)
    return polygon, text, bool(instance.get("ignore", False))


def read_mmocr_json(
    ann_file: str | Path,
    data_root: str | Path | None = None,
    *,
    strict: bool = True,
    image_check: str = "verify",
    task: str | None = None,
) -> Samples[DetSample] | Samples[RecSample]:
    """Samples of an mmocr unified JSON file: :class:`DetSample` for textdet/textspotting, :class:`RecSample`
    for textrecog. ``task`` overrides (or supplies a missing) ``metainfo.task_name``."""
    check_choice(image_check, IMAGE_CHECKS, "image_check")
    ann_file = require_file(ann_file, "mmocr annotation")
    root = Path(data_root) if data_root is not None else ann_file.parent
    content = load_json(ann_file)
    if task is None:
        task = field(field(content, "metainfo", ann_file, "<root>"), "task_name", ann_file, "metainfo")
    check_choice(task, TASKS, "task")
    entries = field(content, "data_list", ann_file, "<root>")
    if not isinstance(entries, list):
        raise DataFormatError(ann_file, "data_list must be a list", key="data_list")
    items = list(enumerate(entries))

    def image_of(entry: Any, key: str, stats: ReaderStats) -> tuple[str, bytes, tuple[int, int]]:
        img_path = field(entry, "img_path", ann_file, key)
        if not isinstance(img_path, str):
            raise DataFormatError(ann_file, f"img_path must be a string, got {img_path!r}", key=key)
        image, size = load_image(root / img_path, image_check, stats)
        return img_path, image, size

    def load_det(item: tuple[int, Any], stats: ReaderStats) -> DetSample:
        index, entry = item
        key = f"data_list[{index}]"
        img_path, image, size = image_of(entry, key, stats)
        check_image_size(size, entry, ann_file, key)
        instances = field(entry, "instances", ann_file, key)
        if not isinstance(instances, list):
            raise DataFormatError(ann_file, "instances must be a list", key=key)
        rows = [_det_instance(inst, ann_file, f"{key}.instances[{j}]") for j, inst in enumerate(instances)]
        return make_det_sample(image, rows, Path(img_path).stem, stats)

    def load_rec(item: tuple[int, Any], stats: ReaderStats) -> RecSample:
        index, entry = item
        key = f"data_list[{index}]"
        instances = field(entry, "instances", ann_file, key)
        if not isinstance(instances, list) or not instances:
            raise DataFormatError(ann_file, "instances must be a non-empty list", key=key)
        label = check_label(field(instances[0], "text", ann_file, f"{key}.instances[0]"), ann_file, key)
        img_path, image, _ = image_of(entry, key, stats)
        return RecSample(image=image, label=label, name=img_path)

    name = f"mmocr_{task}"
    if task == "textrecog":
        return Samples(name, "rec", items, load_rec, strict=strict)
    return Samples(name, "det", items, load_det, strict=strict)
