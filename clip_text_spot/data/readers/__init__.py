"""Dataset readers: official annotation formats -> :class:`~clip_text_spot.data.types.DetSample` /
:class:`~clip_text_spot.data.types.RecSample`.

Each reader takes paths, ``strict`` (raise on malformed input, naming file and line; else skip and count) and
``image_check`` (``"none"``, ``"verify"``, ``"decode"``), and returns a lazy :class:`Samples` whose ``stats`` count
samples, instances, ignored and degenerate regions and skips. See ``common`` for the shared rules.
"""

from clip_text_spot.data.readers.cocotext import read_cocotext
from clip_text_spot.data.readers.common import (
    IMAGE_CHECKS,
    DataFormatError,
    ImageError,
    LabelEncodingError,
    ReaderStats,
    Samples,
)
from clip_text_spot.data.readers.crop_folder import read_crop_folder
from clip_text_spot.data.readers.ctw1500 import read_ctw1500
from clip_text_spot.data.readers.icdar import read_icdar2015, read_mlt17
from clip_text_spot.data.readers.lmdb_rec import find_lmdb_dirs, read_lmdb
from clip_text_spot.data.readers.mmocr_json import read_mmocr_json
from clip_text_spot.data.readers.synthtext import read_synthtext
from clip_text_spot.data.readers.totaltext import read_totaltext

__all__ = [
    "IMAGE_CHECKS",
    "DataFormatError",
    "ImageError",
    "LabelEncodingError",
    "ReaderStats",
    "Samples",
    "find_lmdb_dirs",
    "read_cocotext",
    "read_crop_folder",
    "read_ctw1500",
    "read_icdar2015",
    "read_lmdb",
    "read_mlt17",
    "read_mmocr_json",
    "read_synthtext",
    "read_totaltext",
]
