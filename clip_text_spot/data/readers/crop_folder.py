"""A folder of word crops with a labels file: ``name<TAB>label`` per line, or mmocr's ``old_label.txt`` style
``name label`` (the label is everything after the first space, so it may contain spaces).

``separator="auto"`` picks TAB when the first line has one, else a space, for the whole file. ``name`` is a path
relative to ``image_dir`` (default: the labels file's directory). Labels are returned as stored (only the line end
is removed); an empty label is kept. The file is UTF-8 (a BOM is tolerated); a line that is not valid UTF-8 is an
error (``strict``) or a counted skip, like a line without a separator or a crop that cannot be read.
"""

from __future__ import annotations

from pathlib import Path

from clip_text_spot.data.readers.common import (
    IMAGE_CHECKS,
    DataFormatError,
    ReaderStats,
    Samples,
    check_choice,
    decode_line,
    load_image,
    read_raw_lines,
    require_file,
)
from clip_text_spot.data.types import RecSample

SEPARATORS = ("auto", "tab", "space")


def read_crop_folder(
    labels_file: str | Path,
    image_dir: str | Path | None = None,
    *,
    separator: str = "auto",
    strict: bool = True,
    image_check: str = "verify",
) -> Samples[RecSample]:
    """Recognition samples listed in ``labels_file`` (see module docstring); sample names are the listed names."""
    check_choice(image_check, IMAGE_CHECKS, "image_check")
    check_choice(separator, SEPARATORS, "separator")
    labels_file = require_file(labels_file, "labels")
    root = Path(image_dir) if image_dir is not None else labels_file.parent
    lines = read_raw_lines(labels_file)
    if separator == "auto":
        separator = "tab" if lines and b"\t" in lines[0][1] else "space"
    sep = "\t" if separator == "tab" else " "

    def load(item: tuple[int, bytes], stats: ReaderStats) -> RecSample:
        number, raw = item
        text = decode_line(labels_file, number, raw)
        name, found, label = text.partition(sep)
        if not found or not name:
            layout = "name<TAB>label" if sep == "\t" else "name label"
            raise DataFormatError(labels_file, f"expected {layout}, got {text!r}", line=number)
        image, _ = load_image(root / name, image_check, stats)
        return RecSample(image=image, label=label, name=name)

    return Samples("crops", "rec", lines, load, strict=strict)
