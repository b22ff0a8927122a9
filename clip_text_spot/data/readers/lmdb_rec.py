"""Recognition LMDBs in the PARSeq / clovaai / mmocr layout (dptr.md §6.4, eval_data.md §5).

Keys: ``num-samples`` -> ASCII integer N; for i = 1..N (1-based) ``image-%09d`` -> encoded image bytes (JPEG/PNG as
written) and ``label-%09d`` -> UTF-8 label. Like PARSeq's ``build_tree_dataset``, every directory under ``root``
that holds a ``data.mdb`` is read (in natural order) and the databases are concatenated. Environments are opened
read-only without locking (``lock=False, readahead=False, meminit=False``), so a database on a read-only mount works.

``labels_only=True`` reads only the labels (DPTR's text-only pre-training never reads the images); the samples then
carry ``image=b""``. Labels are returned exactly as stored (whitespace/NFKD/length/charset filtering belongs to the
recognition pipeline).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from pathlib import Path

import lmdb
import numpy as np

from clip_text_spot.data.readers.common import (
    IMAGE_CHECKS,
    DataFormatError,
    LabelEncodingError,
    ReaderStats,
    Samples,
    check_choice,
    check_image_bytes,
    natural_key,
    require_dir,
)
from clip_text_spot.data.types import RecSample


def find_lmdb_dirs(root: str | Path) -> list[Path]:
    """``root`` itself when it holds a ``data.mdb``, else every directory below it that does (natural order)."""
    root = require_dir(root, "LMDB")
    if (root / "data.mdb").is_file():
        return [root]
    found = sorted((p.parent for p in root.rglob("data.mdb")), key=lambda p: natural_key(p.as_posix()))
    if not found:
        raise FileNotFoundError(f"no LMDB (a directory holding data.mdb) under {root}")
    return found


_ENVS: dict[tuple[int, str], lmdb.Environment] = {}


def open_lmdb(path: str | Path) -> lmdb.Environment:
    """The read-only environment of the LMDB directory ``path``, opened once per process and kept open (the
    ``lmdb`` package refuses a second open of the same environment in a process; a forked worker opens its own)."""
    key = (os.getpid(), str(Path(path).resolve()))
    if key not in _ENVS:
        _ENVS[key] = lmdb.open(key[1], readonly=True, lock=False, readahead=False, meminit=False, max_readers=126)
    return _ENVS[key]


def _num_samples(path: Path) -> int:
    with open_lmdb(path).begin() as txn:
        raw = txn.get(b"num-samples")
    where = path / "data.mdb"
    if raw is None:
        raise DataFormatError(where, "no 'num-samples' key", key="num-samples")
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise DataFormatError(where, f"'num-samples' is not an integer: {raw[:40]!r}", key="num-samples") from None


class _FlatIndex(Sequence):
    """Flat index over several databases without materialising one tuple per sample: i -> (database, 1-based id)."""

    def __init__(self, counts: list[int]):
        self._ends = np.cumsum(counts).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        db = bisect.bisect_right(self._ends, index)
        start = self._ends[db - 1] if db else 0
        return db, index - start + 1


def read_lmdb(
    root: str | Path,
    *,
    strict: bool = True,
    image_check: str = "verify",
    labels_only: bool = False,
) -> Samples[RecSample]:
    """Recognition samples of every LMDB under ``root`` (see module docstring); names are ``<dir>/image-%09d``."""
    check_choice(image_check, IMAGE_CHECKS, "image_check")
    root = Path(root)
    dirs = find_lmdb_dirs(root)
    counts = [_num_samples(d) for d in dirs]

    def load(item: tuple[int, int], stats: ReaderStats) -> RecSample:
        db, number = item
        where = dirs[db] / "data.mdb"
        label_key, image_key = f"label-{number:09d}", f"image-{number:09d}"
        with open_lmdb(dirs[db]).begin() as txn:
            raw_label = txn.get(label_key.encode())
            data = b"" if labels_only else txn.get(image_key.encode())
        if raw_label is None:
            raise DataFormatError(where, "key missing", key=label_key)
        try:
            label = raw_label.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LabelEncodingError(
                where, f"label is not valid UTF-8 (byte 0x{raw_label[err.start]:02x})", key=label_key
            ) from None
        if data is None:
            raise DataFormatError(where, "key missing", key=image_key)
        if not labels_only:
            data, _ = check_image_bytes(data, where, image_check, stats, key=image_key)
        name = (dirs[db].relative_to(root) / image_key).as_posix()
        return RecSample(image=data, label=label, name=name)

    return Samples("lmdb", "rec", _FlatIndex(counts), load, strict=strict)
