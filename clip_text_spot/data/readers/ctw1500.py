"""SCUT-CTW1500 detection ground truth: train ``NNNN.xml``, test ``000NNNN.txt`` (eval_data.md §1.6, §5).

* XML (train): ``<Annotations><image file=..><box ..><label>text</label><segs>x1,y1,...,x14,y14</segs>..``.
* Text (test, current release): ``x1,y1,...,x14,y14,####text`` per line; ``#######`` (text ``###``) is don't-care.
  The transcription is everything after the ``####`` prefix, commas included (mmocr cuts it at the first comma).
* Text (legacy test release): 32 integers ``xmin,ymin,xmax,ymax`` then 14 ``dx,dy`` offsets relative to
  ``(xmin, ymin)``; there is no transcription (read as ``""``, not ignored).

Annotation files are paired with images by number (``0001001.txt`` <-> ``1001.jpg``). Instances whose text equals
``ignore_text`` are ignored in both formats (mmocr never ignores XML boxes; the CTW1500 train XML has no ``###``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from clip_text_spot.data.readers.common import (
    DataFormatError,
    Instance,
    ReaderStats,
    Samples,
    flat_to_polygon,
    paired_det_samples,
    parse_numbers,
    read_text_lines,
)
from clip_text_spot.data.types import DetSample

_LEGACY_FIELDS = 32


def parse_ctw1500_txt(path: str | Path) -> list[tuple[np.ndarray, str]]:
    """Parse a CTW1500 text GT file (current or legacy layout) into ``(polygon float32 [n, 2], text)`` tuples."""
    out = []
    for number, line in read_text_lines(path):
        fields = line.split(",")
        text_at = next((i for i, f in enumerate(fields) if f.lstrip().startswith("#")), None)
        if text_at is None:
            if len(fields) != _LEGACY_FIELDS:
                raise DataFormatError(
                    path, f"expected x1,y1,...,####text or 32 legacy integers, got {len(fields)} fields", line=number
                )
            values = parse_numbers(fields, path, line=number)
            polygon = values[4:].reshape(-1, 2) + values[:2]
            out.append((polygon.astype(np.float32), ""))
            continue
        tail = ",".join(fields[text_at:]).lstrip()
        if not tail.startswith("####"):
            raise DataFormatError(path, f"transcription must start with '####', got {tail!r}", line=number)
        polygon = flat_to_polygon(parse_numbers(fields[:text_at], path, line=number), path, line=number)
        out.append((polygon, tail[4:]))
    return out


def parse_ctw1500_xml(path: str | Path) -> list[tuple[np.ndarray, str]]:
    """Parse a CTW1500 XML GT file into ``(polygon float32 [n, 2], text)`` tuples (one per ``<box>``)."""
    try:
        root = ET.fromstring(Path(path).read_bytes())
    except ET.ParseError as err:
        raise DataFormatError(path, f"invalid XML: {err.msg}", line=err.position[0]) from None
    out = []
    for index, box in enumerate(root.iter("box")):
        segs = box.findtext("segs")
        if segs is None:
            raise DataFormatError(path, "<box> without <segs>", key=f"box[{index}]")
        values = parse_numbers(segs.split(","), path, key=f"box[{index}]")
        out.append((flat_to_polygon(values, path, key=f"box[{index}]"), box.findtext("label") or ""))
    return out


def _number_key(stem: str) -> str:
    return str(int(stem)) if stem.isdigit() else stem


def read_ctw1500(
    image_dir: str | Path,
    ann_dir: str | Path,
    *,
    strict: bool = True,
    image_check: str = "verify",
    ignore_text: str = "###",
) -> Samples[DetSample]:
    """CTW1500 detection samples from ``image_dir`` (``NNNN.jpg``) and ``ann_dir`` (``NNNN.xml`` / ``000NNNN.txt``)."""

    def parse(path: Path, stats: ReaderStats) -> list[Instance]:
        rows = parse_ctw1500_xml(path) if path.suffix == ".xml" else parse_ctw1500_txt(path)
        return [(poly, text, text == ignore_text) for poly, text in rows]

    return paired_det_samples(
        "ctw1500",
        image_dir,
        ann_dir,
        r"(\d+)\.(?:xml|txt)",
        parse,
        strict=strict,
        image_check=image_check,
        key=_number_key,
    )
