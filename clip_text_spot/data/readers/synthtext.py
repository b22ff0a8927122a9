"""SynthText (Gupta et al. 2016) ``gt.mat``: ``imnames``, ``wordBB``, ``charBB``, ``txt``, each a 1 x N cell array.

Facts (eval_data.md §5, mmocr ``SynthTextTextDetAnnParser``): ``wordBB{i}`` is 2 x 4 x n (2 x 4 when the image has
one word), corners TL, TR, BR, BL; ``txt{i}`` holds strings that each contain several words separated by spaces and
newlines; the words of an image are the concatenation of ``s.split()`` over its strings, in order, and word ``k``
owns the characters ``[sum(len(w) for w in words[:k]), sum(len(w) for w in words[:k+1]))`` of ``charBB{i}``.

``polygons="word"`` (default) uses the ``wordBB`` quads. ``polygons="char"`` traces a polygon around each word's
character boxes the way mmocr does: the top edges (TL, TR) of its characters left to right, then the bottom edges
(BR, BL) right to left (mmocr also casts to int; we keep floats). SynthText has no don't-care regions.

``scipy.io.loadmat`` reads the whole file: the full 858,750-image ``gt.mat`` needs several GB of memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clip_text_spot.data.readers.common import (
    IMAGE_CHECKS,
    DataFormatError,
    ReaderStats,
    Samples,
    check_choice,
    load_image,
    load_mat,
    make_det_sample,
    require_file,
)
from clip_text_spot.data.types import DetSample

POLYGON_SOURCES = ("word", "char")
_KEYS = ("imnames", "wordBB", "charBB", "txt")


def split_synthtext_words(txt_cell: object) -> list[str]:
    """Words of one ``txt{i}`` cell: ``s.split()`` over its strings, concatenated in order."""
    words: list[str] = []
    for text in np.asarray(txt_cell, dtype=object).reshape(-1):
        words += str(text).split()
    return words


def _boxes(cell: object, path: Path, key: str) -> np.ndarray:
    """A 2 x 4 [x n] box cell -> float32 [n, 4, 2]."""
    try:
        boxes = np.asarray(cell, np.float32)
    except (TypeError, ValueError):
        raise DataFormatError(path, "boxes are not numeric", key=key) from None
    if boxes.ndim == 2:
        boxes = boxes[:, :, None]
    if boxes.ndim != 3 or boxes.shape[:2] != (2, 4):
        raise DataFormatError(path, f"expected a 2 x 4 x n array, got shape {boxes.shape}", key=key)
    if not np.all(np.isfinite(boxes)):
        raise DataFormatError(path, "boxes must be finite", key=key)
    return np.transpose(boxes, (2, 1, 0))


def _trace_words(char_boxes: np.ndarray, words: list[str], path: Path, key: str) -> list[np.ndarray]:
    n_chars = sum(len(w) for w in words)
    if len(char_boxes) != n_chars:
        message = f"{len(char_boxes)} character boxes but the words have {n_chars} characters"
        raise DataFormatError(path, message, key=key)
    polygons, start = [], 0
    for word in words:
        chars = char_boxes[start : start + len(word)]
        start += len(word)
        top = chars[:, 0:2].reshape(-1, 2)
        bottom = chars[::-1, 2:4].reshape(-1, 2)
        polygons.append(np.concatenate([top, bottom]))
    return polygons


def read_synthtext(
    gt_mat: str | Path,
    image_dir: str | Path | None = None,
    *,
    strict: bool = True,
    image_check: str = "verify",
    polygons: str = "word",
) -> Samples[DetSample]:
    """SynthText detection samples; images are ``image_dir / imnames{i}`` (default: the directory of ``gt_mat``)."""
    check_choice(image_check, IMAGE_CHECKS, "image_check")
    check_choice(polygons, POLYGON_SOURCES, "polygons")
    gt_mat = require_file(gt_mat, "SynthText gt.mat")
    root = Path(image_dir) if image_dir is not None else gt_mat.parent
    gt = load_mat(gt_mat)
    missing = [k for k in _KEYS if k not in gt]
    if missing:
        raise DataFormatError(gt_mat, f"missing variables {missing}")
    cells = {k: np.asarray(gt[k], dtype=object).reshape(-1) for k in _KEYS}
    sizes = {k: len(v) for k, v in cells.items()}
    if len(set(sizes.values())) != 1:
        raise DataFormatError(gt_mat, f"variables have different lengths {sizes}")

    def load(index: int, stats: ReaderStats) -> DetSample:
        names = np.asarray(cells["imnames"][index]).reshape(-1)
        if names.size != 1:
            raise DataFormatError(gt_mat, "expected one image name", key=f"imnames[{index}]")
        name = str(names[0])
        words = split_synthtext_words(cells["txt"][index])
        if polygons == "word":
            boxes = _boxes(cells["wordBB"][index], gt_mat, f"wordBB[{index}]")
            if len(boxes) != len(words):
                raise DataFormatError(
                    gt_mat, f"{len(boxes)} word boxes but txt[{index}] has {len(words)} words", key=f"wordBB[{index}]"
                )
            shapes = list(boxes)
        else:
            char_boxes = _boxes(cells["charBB"][index], gt_mat, f"charBB[{index}]")
            shapes = _trace_words(char_boxes, words, gt_mat, f"charBB[{index}]")
        image, _ = load_image(root / name, image_check, stats)
        instances = [(shape, word, False) for shape, word in zip(shapes, words, strict=True)]
        return make_det_sample(image, instances, str(Path(name).with_suffix("")), stats)

    return Samples("synthtext", "det", range(sizes["imnames"]), load, strict=strict)
