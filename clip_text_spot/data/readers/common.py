"""Shared machinery of the dataset readers: errors, skip counting, text/JSON decoding, image checks, polygons.

Every reader returns a :class:`Samples` object: ``len()`` is the number of candidate items (images or crops found
in the annotations), iterating yields the parsed samples. With ``strict=True`` the first malformed item raises a
:class:`DataFormatError` whose message starts with ``<file>:<line>:`` (or ``<file> [<key>]:`` for JSON, XML, MAT and
LMDB records). With ``strict=False`` the item is skipped instead; the skip is counted in ``Samples.stats`` under
``skipped/<reason>`` and logged. The unit that is skipped is one sample: a whole image for detection (a detection
image with a partly unreadable annotation file would teach the model that unlabelled text is background), one crop
for recognition. Problems that leave nothing to read (a missing directory, a JSON file that does not parse, an LMDB
without ``num-samples``) always raise.

Degenerate polygons (fewer than 3 points, zero area, self-intersecting) are not errors: they are kept as ignore
regions (``ignore=True``) and counted under ``degenerate/<why>``.

Images are kept as encoded bytes. ``image_check`` decides how hard they are checked while reading:
``"none"`` (the file must exist and be readable), ``"verify"`` (default: Pillow parses the header and runs
``verify()``; a JPEG without its end-of-image marker is fully decoded to tell a trailer from a truncation),
``"decode"`` (full decode of every image). Unless the check is ``"none"``, formats other than JPEG and PNG (MLT17
has GIFs) are re-encoded as PNG so that every stored image can be decoded by OpenCV as well as Pillow; this is
counted under ``transcoded_to_png``.
EXIF orientation is never applied (mmocr loads with ``color_ignore_orientation``).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import scipy.io
import shapely
from PIL import Image, UnidentifiedImageError

from clip_text_spot.data.types import DetSample

logger = logging.getLogger(__name__)

T = TypeVar("T")
Instance = tuple[np.ndarray, str, bool]  # polygon float32 [n, 2], transcription, ignore flag

IMAGE_CHECKS = ("none", "verify", "decode")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
_KEEP_FORMATS = ("JPEG", "MPO", "PNG")  # stored as-is; anything else is re-encoded as PNG
_MAX_LOGGED_SKIPS = 20
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class DataFormatError(ValueError):
    """Malformed dataset input. ``str()`` names the file and the line (or record key)."""

    reason = "malformed"

    def __init__(self, path: str | Path, message: str, *, line: int | None = None, key: str | None = None):
        self.path = str(path)
        self.line = line
        self.key = key
        self.message = message
        if line is not None:
            where = f"{self.path}:{line}"
        elif key is not None:
            where = f"{self.path} [{key}]"
        else:
            where = self.path
        self.where = where
        super().__init__(f"{where}: {message}")


class LabelEncodingError(DataFormatError):
    """A label or annotation line that is not valid UTF-8."""

    reason = "bad_encoding"


class ImageError(DataFormatError):
    """A missing, unreadable or corrupt image file."""

    reason = "bad_image"


class ReaderStats:
    """Counters of one pass over a reader: ``samples``, ``instances``, ``ignored``, ``no_instances`` (images without
    text), ``skipped/<reason>``, ``degenerate/<why>``, ``transcoded_to_png`` and reader-specific ones."""

    def __init__(self, name: str):
        self.name = name
        self.counts: collections.Counter[str] = collections.Counter()
        self.skip_messages: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        """Increase counter ``key`` by ``n``."""
        self.counts[key] += n

    def skip(self, error: DataFormatError) -> None:
        """Count (and log the first few of) a skipped sample."""
        self.counts[f"skipped/{error.reason}"] += 1
        self.skip_messages.append(str(error))
        if len(self.skip_messages) <= _MAX_LOGGED_SKIPS:
            logger.warning("%s: skipped %s", self.name, error)
        elif len(self.skip_messages) == _MAX_LOGGED_SKIPS + 1:
            logger.warning("%s: further skips are counted but not logged one by one", self.name)

    @property
    def num_samples(self) -> int:
        """Samples yielded."""
        return self.counts["samples"]

    @property
    def num_skipped(self) -> int:
        """Samples skipped, all reasons together."""
        return sum(v for k, v in self.counts.items() if k.startswith("skipped/"))

    def as_dict(self) -> dict[str, int]:
        """Plain, sorted copy of the counters (JSON-friendly)."""
        return dict(sorted(self.counts.items()))

    def summary(self) -> str:
        """One line: reader name and every counter."""
        return f"{self.name}: " + ", ".join(f"{k}={v}" for k, v in self.as_dict().items())

    def log(self) -> None:
        """Log the summary; as a warning when anything was skipped."""
        logger.log(logging.WARNING if self.num_skipped else logging.INFO, "%s", self.summary())


class Samples(Generic[T]):
    """Lazy, re-iterable (and indexable) samples of one reader.

    ``len()`` counts candidate items (an upper bound on what iteration yields when ``strict=False``); each
    iteration resets ``stats`` and logs a summary at its end. ``kind`` is ``"det"`` or ``"rec"``.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        items: Sequence[Any],
        load: Callable[[Any, ReaderStats], T],
        *,
        strict: bool,
    ):
        self.name = name
        self.kind = kind
        self.strict = strict
        self.stats = ReaderStats(name)
        self._items = items
        self._load = load

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> T:
        """Random access (grain sources): sample ``index``; a malformed one raises its ``DataFormatError`` (naming
        file and key) whatever ``strict`` says, since a random-access caller has nothing to skip to."""
        return self._load(self._items[index], self.stats)

    def __iter__(self) -> Iterator[T]:
        self.stats = stats = ReaderStats(self.name)
        for item in self._items:
            try:
                sample = self._load(item, stats)
            except DataFormatError as err:
                if self.strict:
                    raise
                stats.skip(err)
                continue
            stats.add("samples")
            yield sample
        stats.log()


def list_images(args: Sequence[str]) -> list[str]:
    """Image files named by ``args`` (files, or folders searched non-recursively, sorted); errors name the path."""
    paths = []
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(str(p) for p in Path(arg).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{arg}: no images ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif os.path.isfile(arg):
            paths.append(arg)
        else:
            raise FileNotFoundError(f"{arg}: no such file or directory")
    return paths


def check_choice(value: str, choices: Sequence[str], flag: str) -> None:
    """Raise a ``ValueError`` naming ``flag`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{flag}={value!r} is not one of {list(choices)}")


def require_dir(path: str | Path, what: str) -> Path:
    """Return ``path`` as a ``Path``; raise ``FileNotFoundError`` naming ``what`` when it is not a directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {path}")
    return path


def require_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a ``Path``; raise ``FileNotFoundError`` naming ``what`` when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return path


def natural_key(text: str) -> tuple:
    """Sort key that orders ``img_2`` before ``img_10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


# ---------------------------------------------------------------------------------------------------------- text


def read_raw_lines(path: str | Path) -> list[tuple[int, bytes]]:
    """Non-blank lines of a text file as ``(1-based line number, raw bytes)``, line ends and a leading BOM removed.

    UTF-16 files (recognised by their BOM) raise :class:`LabelEncodingError`; other decoding is left to
    :func:`decode_line` so that one bad line can be skipped on its own.
    """
    data = Path(path).read_bytes()
    if data.startswith(_UTF16_BOMS):
        raise LabelEncodingError(path, "file starts with a UTF-16 byte-order mark; expected UTF-8", line=1)
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    out = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if raw.strip():
            out.append((number, raw))
    return out


def decode_line(path: str | Path, line: int, raw: bytes) -> str:
    """Decode one line as UTF-8; :class:`LabelEncodingError` naming file, line and byte offset otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LabelEncodingError(
            path, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})", line=line
        ) from None


def read_text_lines(path: str | Path) -> list[tuple[int, str]]:
    """Non-blank, decoded lines of a UTF-8 text file (BOM and CRLF tolerated) with their 1-based numbers."""
    return [(number, decode_line(path, number, raw)) for number, raw in read_raw_lines(path)]


def load_json(path: str | Path) -> Any:
    """Parse a UTF-8 JSON file; errors name the file and the line."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise LabelEncodingError(path, f"not valid UTF-8 (byte 0x{data[err.start]:02x})", line=line) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"invalid JSON: {err.msg} (column {err.colno})", line=err.lineno) from None


def load_mat(path: str | Path) -> dict[str, Any]:
    """``scipy.io.loadmat`` (MATLAB v4-v7.2) with errors that name the file; v7.3 (HDF5) files are refused."""
    try:
        return scipy.io.loadmat(path)
    except (scipy.io.matlab.MatReadError, NotImplementedError, ValueError, TypeError, OSError) as err:
        raise DataFormatError(path, f"cannot read MAT file ({type(err).__name__}: {err})") from None


def field(record: Any, name: str, path: str | Path, key: str) -> Any:
    """``record[name]`` for a JSON object, or a :class:`DataFormatError` naming the record ``key``."""
    if not isinstance(record, dict):
        raise DataFormatError(path, f"expected a JSON object, got {type(record).__name__}", key=key)
    if name not in record:
        raise DataFormatError(path, f"missing field {name!r}", key=key)
    return record[name]


def parse_numbers(tokens: Sequence[str], path: str | Path, *, line: int | None = None, key: str | None = None):
    """Parse coordinate tokens as finite float32 numbers; a :class:`DataFormatError` names the bad token."""
    values = []
    for token in tokens:
        try:
            values.append(float(token))
        except ValueError:
            raise DataFormatError(path, f"expected a number, got {token.strip()!r}", line=line, key=key) from None
    array = np.asarray(values, np.float32)
    if not np.all(np.isfinite(array)):
        raise DataFormatError(path, "coordinates must be finite", line=line, key=key)
    return array


def flat_to_polygon(coords: Any, path: str | Path, *, line: int | None = None, key: str | None = None) -> np.ndarray:
    """``[x1, y1, x2, y2, ...]`` (numbers or strings) -> float32 ``[n, 2]``; odd or non-numeric input raises."""
    try:
        array = np.asarray(coords, np.float64).reshape(-1)
    except (TypeError, ValueError):
        array = parse_numbers([str(c) for c in coords], path, line=line, key=key)
    if array.size % 2:
        raise DataFormatError(path, f"odd number of polygon coordinates ({array.size})", line=line, key=key)
    if not np.all(np.isfinite(array)):
        raise DataFormatError(path, "coordinates must be finite", line=line, key=key)
    return array.astype(np.float32).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------------------- polygons


def degeneracy(polygon: np.ndarray) -> str | None:
    """Why ``polygon`` (float [n, 2]) cannot be used as a text region, or ``None`` when it can.

    ``"few_points"`` (< 3 points), ``"zero_area"``, ``"self_intersecting"`` (any other shapely-invalid ring).
    """
    if len(polygon) < 3:
        return "few_points"
    shape = shapely.Polygon(np.asarray(polygon, np.float64))
    if shape.area == 0.0:
        return "zero_area"
    if not shape.is_valid:
        return "self_intersecting"
    return None


def make_det_sample(image: bytes, instances: Sequence[Instance], name: str, stats: ReaderStats) -> DetSample:
    """Build a :class:`DetSample` from ``(polygon, text, ignore)`` instances; degenerate polygons become counted
    ignore regions."""
    polygons, texts, flags = [], [], []
    for polygon, text, flag in instances:
        why = degeneracy(polygon)
        if why is not None:
            stats.add(f"degenerate/{why}")
        polygons.append(polygon)
        texts.append(text)
        flags.append(bool(flag) or why is not None)
    if not polygons:
        stats.add("no_instances")
    stats.add("instances", len(flags))
    stats.add("ignored", sum(flags))
    return DetSample(image=image, polygons=polygons, texts=texts, ignore=flags, name=name)


def bbox_to_polygon(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Axis-aligned box corners -> float32 quad, clockwise in image coordinates from the top-left corner."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


# ---------------------------------------------------------------------------------------------------------- images


def _decode_fully(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def check_image_bytes(
    data: bytes, path: str | Path, check: str, stats: ReaderStats, *, key: str | None = None
) -> tuple[bytes, tuple[int, int]]:
    """Check encoded image bytes as ``check`` asks; return the bytes to store and ``(width, height)``.

    ``(0, 0)`` is returned as size with ``check="none"``. Non-JPEG/PNG images are re-encoded as PNG. Errors name
    ``path`` and, for images stored inside a database, the record ``key``.
    """
    check_choice(check, IMAGE_CHECKS, "image_check")
    if check == "none":
        return data, (0, 0)
    try:
        image = Image.open(io.BytesIO(data))
        size, fmt = image.size, image.format
        if check == "decode":
            image.load()
        else:
            image.verify()
            if fmt in ("JPEG", "MPO") and b"\xff\xd9" not in data[-1024:]:
                _decode_fully(data)  # no end-of-image marker: a trailer, or a truncated file
        if fmt not in _KEEP_FORMATS:
            image = _decode_fully(data)
            if image.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16"):
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
            stats.add("transcoded_to_png")
    except UnidentifiedImageError:
        what = "an empty file" if not data else "not an image format Pillow reads"
        raise ImageError(path, f"corrupt or unsupported image ({what})", key=key) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(path, f"corrupt or unsupported image ({type(err).__name__}: {err})", key=key) from None
    return data, size


def load_image(path: str | Path, check: str, stats: ReaderStats) -> tuple[bytes, tuple[int, int]]:
    """Read and check one image file; :class:`ImageError` when it is missing, unreadable or corrupt."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ImageError(path, f"cannot read image ({err.strerror or err})") from None
    return check_image_bytes(data, path, check, stats)


def read_input_image(source: str | Path | bytes, name: str | None = None) -> bytes:
    """Encoded bytes of one input image (a file, or bytes named ``name``), checked as ``image_check="verify"``: an
    empty, truncated or non-image file raises :class:`ImageError` naming it; formats other than JPEG and PNG come
    back re-encoded as PNG (so OpenCV decodes them too)."""
    stats = ReaderStats(name or str(source))
    if isinstance(source, bytes):
        return check_image_bytes(source, name or "image", "verify", stats)[0]
    return load_image(source, "verify", stats)[0]


def index_images(image_dir: Path, key: Callable[[str], str] = lambda stem: stem) -> dict[str, Path]:
    """Map ``key(stem)`` -> image path for the image files directly inside ``image_dir``.

    Two images with the same key (``img_1.jpg`` and ``img_1.png``) are ambiguous and raise ``ValueError``.
    """
    found: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            k = key(path.stem)
            if k in found:
                raise ValueError(f"ambiguous images for one annotation: {found[k]} and {path}")
            found[k] = path
    return found


def pair_annotation_files(
    ann_dir: Path, pattern: str, image_index: dict[str, Path], key: Callable[[str], str] = lambda s: s
) -> list[tuple[Path, str, Path | None]]:
    """``(annotation file, image key, image path or None)`` for files in ``ann_dir`` whose name fully matches
    ``pattern``; group 1 of the pattern, passed through ``key``, names the image. Sorted naturally by image key."""
    regex = re.compile(pattern)
    pairs = []
    for path in ann_dir.iterdir():
        match = regex.fullmatch(path.name)
        if match and path.is_file():
            k = key(match.group(1))
            pairs.append((path, k, image_index.get(k)))
    return sorted(pairs, key=lambda pair: (natural_key(pair[1]), pair[0].name))


def paired_det_samples(
    name: str,
    image_dir: str | Path,
    ann_dir: str | Path,
    pattern: str,
    parse: Callable[[Path, ReaderStats], list[Instance]],
    *,
    strict: bool,
    image_check: str,
    key: Callable[[str], str] = lambda s: s,
) -> Samples[DetSample]:
    """Detection samples from one annotation file per image (ICDAR2015, MLT17, Total-Text, CTW1500).

    ``pattern`` must fully match an annotation file name; its group 1 (through ``key``) names the image, which is
    looked up among the files of ``image_dir`` by stem (through ``key`` too). ``parse(path, stats)`` turns one
    annotation file into instances and raises :class:`DataFormatError` on malformed input; it runs after the image
    was read, so counters it adds belong to samples that are kept.
    """
    check_choice(image_check, IMAGE_CHECKS, "image_check")
    image_dir = require_dir(image_dir, f"{name} image")
    ann_dir = require_dir(ann_dir, f"{name} annotation")
    images = index_images(image_dir, key)
    pairs = pair_annotation_files(ann_dir, pattern, images, key)
    if not pairs:
        raise FileNotFoundError(f"no {name} annotation files matching {pattern!r} in {ann_dir}")
    unannotated = len(set(images) - {k for _, k, _ in pairs})
    if unannotated:
        logger.info("%s: %d images in %s have no annotation file and are not read", name, unannotated, image_dir)

    def load(pair: tuple[Path, str, Path | None], stats: ReaderStats) -> DetSample:
        ann_path, image_key, image_path = pair
        if image_path is None:
            raise ImageError(ann_path, f"no image named {image_key}.* ({'/'.join(IMAGE_SUFFIXES)}) in {image_dir}")
        image, _ = load_image(image_path, image_check, stats)
        instances = parse(ann_path, stats)
        return make_det_sample(image, instances, image_path.stem, stats)

    return Samples(name, "det", pairs, load, strict=strict)


def check_label(text: Any, path: str | Path, key: str) -> str:
    """A label read from JSON must be a string encodable as UTF-8 (no lone surrogates such as ``"\\ud800"``)."""
    if not isinstance(text, str):
        raise DataFormatError(path, f"label must be a string, got {type(text).__name__}", key=key)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise LabelEncodingError(path, f"label is not valid Unicode ({err.reason})", key=key) from None
    return text


def check_image_size(size: tuple[int, int], entry: dict, path: str | Path, key: str) -> None:
    """Raise when a checked image's ``(width, height)`` differs from the ``width``/``height`` an entry records.

    Nothing is compared when the image was not opened (size ``(0, 0)``) or the entry lacks either field.
    """
    expected = (entry.get("width"), entry.get("height"))
    if size != (0, 0) and None not in expected and tuple(expected) != size:
        raise DataFormatError(
            path, f"image is {size[0]}x{size[1]} but the annotation says {expected[0]}x{expected[1]}", key=key
        )
