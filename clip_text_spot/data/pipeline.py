"""grain input pipelines for detection (the selected head's targets) and recognition, train and eval.

A *source* is anything with ``len()`` and ``__getitem__(i)`` returning a ``DetSample`` / ``RecSample`` or a record
dict in their ``to_record()`` layout (what ``clip_text_spot.data.prepare.open_split`` returns); images may be
encoded bytes or decoded uint8 arrays. The synthetic sources (``clip_text_spot.data.synthetic``) fit.

Train iterators: ``MapDataset.source -> shuffle(seed) -> repeat() -> random_map(transform) ->
[process_index::process_count] -> to_iter_dataset -> batch(drop_remainder) -> mp_prefetch``. Shuffling is reseeded
every epoch (grain's epoch-aware shuffle); the augmentation generator depends on (seed, global position in the
repeated stream), so every epoch is augmented differently and a restored iterator replays exactly. The processes
take disjoint, interleaved positions of the same stream. The returned iterator has ``get_state()`` /
``set_state()`` (save it with ``grain.checkpoint.CheckpointSave``).

Eval batches: every sample exactly once, in source order; process p gets samples p, p + n, ...; all processes get
the same number of batches (rows past the end are padding with ``valid = False``).

Batch keys (B = batch size):

=================  =========================  ==========================================================================
key                shape / dtype              meaning
=================  =========================  ==========================================================================
detection, train (``make_det_train_iter``); S = crop_size
image              [B, S, S, 3] float32       (RGB - mean) / std (default: TCM's DB mean/std)
*targets*          [B, ...] float32           the head's targets (``targets``: a ``heads`` target function; default
                                              DB: ``gt_shrink``, ``gt_shrink_mask``, ``gt_thr``, ``gt_thr_mask``
                                              [B, S, S]; FCE: ``fce_level_i``; PAN: ``pan_*``, ``heads.*.kind``)
detection, eval (``make_det_eval_batches``); (H, W) = eval_size, P = max_polys, K = max_points
image              [B, H, W, 3] float32       resized keeping the ratio (factor min(H/h, W/w)), padded bottom/right
*targets*          [B, ...] float32           the head's targets at the resized geometry (``with_targets``)
polygons           [B, P, K, 2] float32       ground-truth polygons in *original* image pixels, zero padded
num_points         [B, P] int32               points of each polygon (0 for padding)
polygon_mask       [B, P] bool                real polygon (not padding)
ignore             [B, P] bool                don't-care polygon (e.g. ``###``)
scale              [B, 2] float32             (sx, sy): resized = original * scale; divide predictions by it
orig_shape         [B, 2] int32               (h, w) of the original image
resized_shape      [B, 2] int32               (h, w) of the resized image before padding (the valid map region)
index              [B] int64                  position of the sample in the source (-1 for padding rows)
valid              [B] bool                   False for padding rows
recognition, train (``make_rec_train_iter``); (h, w) = image_size, L = max_len + 2
image              [B, h, w, 3] float32       (RGB - 127.5) / 127.5 (i.e. [-1, 1]), bicubic resize, aspect ignored
label              [B, L] int32               BOS, character ids, EOS, PAD... (``rec_labels.Charset``)
label_length       [B] int32                  characters in the label
recognition, eval (``make_rec_eval_batches``): the train keys plus
index              [B] int64                  position of the sample in the source (-1 for padding rows)
valid              [B] bool                   False for padding rows and samples whose label is filtered out
=================  =========================  ==========================================================================

Samples whose label the charset filters out (empty, too long) are skipped in training (PARSeq drops them; DPTR draws
another sample) and marked invalid in evaluation (so they are not counted, as in PARSeq's benchmarks).

Multiprocessing (``workers > 0``) uses grain's ``mp_prefetch``: workers are spawned, so sources and transforms here
are picklable top-level objects, and scripts need an ``if __name__ == "__main__":`` guard. grain reads absl flags in
the workers' setup; when absl flags have not been parsed (no ``absl.app.run``), the builders mark them parsed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import cv2
import grain
import numpy as np
from absl import flags

from clip_text_spot.data.augment import (
    PARSEQ_AUG,
    DetAugConfig,
    RecAugConfig,
    augment_det,
    augment_rec,
    resize_keep_ratio,
    resize_rec,
)
from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.data.types import DetSample, RecSample
from clip_text_spot.heads.base import TargetFn
from clip_text_spot.heads.db.kind import DBTargets

DB_MEAN = (122.67891434, 116.66876762, 104.00698793)
DB_STD = (58.395, 57.12, 57.375)
REC_MEAN = (127.5, 127.5, 127.5)
REC_STD = (127.5, 127.5, 127.5)
DB_TARGET_FN = DBTargets()
"""The default targets: DBNet's with mmocr's constants."""


def decode_image(image: bytes | np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] from encoded bytes (EXIF orientation ignored, as mmocr) or a decoded array."""
    if isinstance(image, bytes | bytearray | memoryview):
        flags_ = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        bgr = cv2.imdecode(np.frombuffer(image, np.uint8), flags_)
        if bgr is None:
            raise ValueError("image: bytes could not be decoded as an image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 pixels, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image: expected [H, W, 3] (or grey / RGBA), got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def as_det_sample(item: DetSample | dict) -> DetSample:
    """A ``DetSample`` from a sample or a record dict."""
    if isinstance(item, DetSample):
        return item
    if isinstance(item, dict):
        return DetSample.from_record(item)
    raise TypeError(f"detection source items must be DetSample or record dicts, got {type(item).__name__}")


def as_rec_sample(item: RecSample | dict) -> RecSample:
    """A ``RecSample`` from a sample or a record dict."""
    if isinstance(item, RecSample):
        return item
    if isinstance(item, dict):
        return RecSample.from_record(item)
    raise TypeError(f"recognition source items must be RecSample or record dicts, got {type(item).__name__}")


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 ``(image - mean) / std`` per channel of a uint8 RGB image (a per-channel lookup table)."""
    levels = np.arange(256, dtype=np.float64)[:, None]
    lut = ((levels - np.asarray(mean)) / np.asarray(std)).astype(np.float32).reshape(256, 1, 3)
    return cv2.LUT(image, lut)


def _check_shard(process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, process_count), got process_index={process_index}, "
            f"process_count={process_count}"
        )


def _check_source(source: Sequence) -> None:
    if not hasattr(source, "__len__") or not hasattr(source, "__getitem__"):
        raise TypeError(f"source must support len() and indexing, got {type(source).__name__}")
    if len(source) == 0:
        raise ValueError("source is empty")


# ----------------------------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class DetTrainTransform:
    """Augment one detection sample and build its head's targets (a grain random map)."""

    aug: DetAugConfig = DetAugConfig()
    targets: TargetFn = DB_TARGET_FN
    mean: tuple[float, ...] = DB_MEAN
    std: tuple[float, ...] = DB_STD

    def __call__(self, item: DetSample | dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        sample = as_det_sample(item)
        image = decode_image(sample.image)
        image, polys, ignore = augment_det(image, sample.polygons, sample.ignore, rng, self.aug, self.mean)
        maps = self.targets(polys, ignore, image.shape[:2])
        return {"image": normalize(image, self.mean, self.std), **maps}


@dataclasses.dataclass(frozen=True)
class DetEvalTransform:
    """Resize one detection sample for evaluation and pad its original polygons (a grain map on (index, item))."""

    size: tuple[int, int] = (640, 640)
    max_polys: int = 256
    max_points: int = 64
    targets: TargetFn | None = DB_TARGET_FN
    mean: tuple[float, ...] = DB_MEAN
    std: tuple[float, ...] = DB_STD

    def __call__(self, indexed: tuple[int, DetSample | dict | None]) -> dict[str, np.ndarray]:
        index, item = indexed
        h, w = self.size
        p, k = self.max_polys, self.max_points
        out = {
            "polygons": np.zeros((p, k, 2), np.float32),
            "num_points": np.zeros(p, np.int32),
            "polygon_mask": np.zeros(p, bool),
            "ignore": np.zeros(p, bool),
            "index": np.int64(index),
            "valid": np.bool_(item is not None),
        }
        if item is None:
            out.update(image=np.zeros((h, w, 3), np.float32), scale=np.ones(2, np.float32))
            out.update(orig_shape=np.zeros(2, np.int32), resized_shape=np.zeros(2, np.int32))
            if self.targets is not None:
                out.update({key: np.zeros_like(v) for key, v in self.targets([], [], (h, w)).items()})
            return out
        sample = as_det_sample(item)
        image = decode_image(sample.image)
        if len(sample.polygons) > p:
            raise ValueError(f"sample {sample.name!r} has {len(sample.polygons)} polygons; raise max_polys (={p})")
        for i, (poly, ig) in enumerate(zip(sample.polygons, sample.ignore, strict=True)):
            poly = np.asarray(poly, np.float32).reshape(-1, 2)
            if len(poly) > k:
                raise ValueError(f"sample {sample.name!r} has a polygon of {len(poly)} points; raise max_points (={k})")
            out["polygons"][i, : len(poly)] = poly
            out["num_points"][i] = len(poly)
            out["polygon_mask"][i] = True
            out["ignore"][i] = ig
        resized, polys, (sx, sy) = resize_keep_ratio(image, sample.polygons, self.size, self.mean)
        out["image"] = normalize(resized, self.mean, self.std)
        out["scale"] = np.array([sx, sy], np.float32)
        out["orig_shape"] = np.array(image.shape[:2], np.int32)
        out["resized_shape"] = np.array([round(image.shape[0] * sy), round(image.shape[1] * sx)], np.int32)
        if self.targets is not None:
            out.update(self.targets(polys, sample.ignore, (h, w)))
        return out


@dataclasses.dataclass(frozen=True)
class RecTransform:
    """Label filtering, optional augmentation, resize and normalisation of one word crop (shared by train/eval)."""

    charset: Charset = dataclasses.field(default_factory=Charset)
    image_size: tuple[int, int] = (32, 128)
    aug: RecAugConfig | None = None
    mean: tuple[float, ...] = REC_MEAN
    std: tuple[float, ...] = REC_STD

    def row(self, sample: RecSample | None, rng: np.random.Generator | None) -> dict[str, np.ndarray] | None:
        """The batch row of ``sample``, or None when there is no sample or its label is filtered out."""
        label = None if sample is None else self.charset.filter_label(sample.label)
        if label is None:
            return None
        image = decode_image(sample.image)
        if self.aug is not None and rng is not None:
            image = augment_rec(image, rng, self.aug)
        image = resize_rec(image, self.image_size)
        return {
            "image": normalize(image, self.mean, self.std),
            "label": self.charset.encode(label),
            "label_length": np.int32(len(label)),
        }


class RecTrainTransform(RecTransform):
    """grain random map: the row of an item, or None (skipped by grain) when its label is filtered out."""

    def __call__(self, item: RecSample | dict, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        return self.row(as_rec_sample(item), rng)


class RecEvalTransform(RecTransform):
    """grain map on (index, item): the row with ``index`` and ``valid`` (False for padding and filtered labels)."""

    def __call__(self, indexed: tuple[int, RecSample | dict | None]) -> dict[str, np.ndarray]:
        index, item = indexed
        row = self.row(None if item is None else as_rec_sample(item), None)
        valid = row is not None
        if not valid:
            h, w = self.image_size
            row = {
                "image": np.zeros((h, w, 3), np.float32),
                "label": self.charset.encode(""),
                "label_length": np.int32(0),
            }
        row.update(index=np.int64(index), valid=np.bool_(valid))
        return row


# ------------------------------------------------------------------------------------------------- datasets


class ShardedEvalSource:
    """Process ``process_index``'s share of ``source`` (items p, p + n, ...) as (index, item), padded with
    (-1, None) to ``num_batches * batch_size`` rows so that every process has the same number of batches."""

    def __init__(self, source: Sequence, batch_size: int, process_index: int, process_count: int):
        _check_source(source)
        _check_shard(process_index, process_count)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.process_index = process_index
        self.process_count = process_count
        per_process = math.ceil(len(source) / process_count)
        self.num_batches = math.ceil(per_process / batch_size)
        self.length = self.num_batches * batch_size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, j: int) -> tuple[int, object]:
        g = self.process_index + j * self.process_count
        return (g, self.source[g]) if g < len(self.source) else (-1, None)


def _mark_flags_parsed() -> None:
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _to_batches(
    ds: grain.MapDataset, batch_size: int, drop_remainder: bool, workers: int, read_threads: int, prefetch: int
) -> grain.IterDataset:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0 or read_threads < 0 or prefetch < 0:
        raise ValueError(f"workers, read_threads and prefetch must be >= 0, got {workers}, {read_threads}, {prefetch}")
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(prefetch, read_threads))
    out = ds.to_iter_dataset(options).batch(batch_size, drop_remainder=drop_remainder)
    if workers > 0:
        _mark_flags_parsed()
        out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return out


def make_train_iter(
    source: Sequence,
    transform: Callable,
    *,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    workers: int,
    read_threads: int,
    prefetch: int,
) -> grain.DatasetIterator:
    _check_source(source)
    _check_shard(process_index, process_count)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    ds = ds.random_map(transform, seed=seed)[process_index::process_count]
    return iter(_to_batches(ds, batch_size, True, workers, read_threads, prefetch))


def _eval_batches(
    source: Sequence,
    transform: Callable,
    *,
    batch_size: int,
    process_index: int,
    process_count: int,
    workers: int,
    read_threads: int,
    prefetch: int,
) -> grain.IterDataset:
    shard = ShardedEvalSource(source, batch_size, process_index, process_count)
    ds = grain.MapDataset.source(shard).map(transform)
    return _to_batches(ds, batch_size, False, workers, read_threads, prefetch)


def make_det_train_iter(
    source: Sequence,
    *,
    batch_size: int,
    crop_size: int = 640,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    read_threads: int = 1,
    prefetch: int = 16,
    aug: DetAugConfig | None = None,
    targets: TargetFn = DB_TARGET_FN,
    mean: tuple[float, ...] = DB_MEAN,
    std: tuple[float, ...] = DB_STD,
) -> grain.DatasetIterator:
    """Endless iterator of augmented detection batches with the ``targets`` function's targets (default DB; keys in
    the module docstring).

    ``aug`` defaults to TCM's pipeline with ``crop_size``; when given, its own ``crop_size`` must agree.
    """
    aug = aug or DetAugConfig(crop_size=crop_size)
    if aug.crop_size != crop_size:
        raise ValueError(f"crop_size={crop_size} differs from aug.crop_size={aug.crop_size}")
    transform = DetTrainTransform(aug=aug, targets=targets, mean=tuple(mean), std=tuple(std))
    return make_train_iter(
        source,
        transform,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        workers=workers,
        read_threads=read_threads,
        prefetch=prefetch,
    )


def make_det_eval_batches(
    source: Sequence,
    *,
    batch_size: int,
    eval_size: tuple[int, int] = (640, 640),
    max_polys: int = 256,
    max_points: int = 64,
    with_targets: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    read_threads: int = 1,
    prefetch: int = 16,
    targets: TargetFn = DB_TARGET_FN,
    mean: tuple[float, ...] = DB_MEAN,
    std: tuple[float, ...] = DB_STD,
) -> grain.IterDataset:
    """Iterable of evaluation batches over this process's share of ``source`` (keys in the module docstring)."""
    if any(s % 32 for s in eval_size):
        raise ValueError(f"eval_size must be multiples of 32 (the FPN stride), got {eval_size}")
    transform = DetEvalTransform(
        size=tuple(eval_size),
        max_polys=max_polys,
        max_points=max_points,
        targets=targets if with_targets else None,
        mean=tuple(mean),
        std=tuple(std),
    )
    return _eval_batches(
        source,
        transform,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        workers=workers,
        read_threads=read_threads,
        prefetch=prefetch,
    )


def make_rec_train_iter(
    source: Sequence,
    *,
    batch_size: int,
    seed: int = 0,
    charset: Charset | None = None,
    image_size: tuple[int, int] = (32, 128),
    aug: RecAugConfig | None = PARSEQ_AUG,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    read_threads: int = 1,
    prefetch: int = 64,
    mean: tuple[float, ...] = REC_MEAN,
    std: tuple[float, ...] = REC_STD,
) -> grain.DatasetIterator:
    """Endless iterator of recognition batches (keys in the module docstring); ``aug=None`` turns augmentation off."""
    transform = RecTrainTransform(charset or Charset(), tuple(image_size), aug, tuple(mean), tuple(std))
    return make_train_iter(
        source,
        transform,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        workers=workers,
        read_threads=read_threads,
        prefetch=prefetch,
    )


def make_rec_eval_batches(
    source: Sequence,
    *,
    batch_size: int,
    charset: Charset | None = None,
    image_size: tuple[int, int] = (32, 128),
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
    read_threads: int = 1,
    prefetch: int = 64,
    mean: tuple[float, ...] = REC_MEAN,
    std: tuple[float, ...] = REC_STD,
) -> grain.IterDataset:
    """Iterable of recognition eval batches (no augmentation) over this process's share of ``source``."""
    transform = RecEvalTransform(charset or Charset(), tuple(image_size), None, tuple(mean), tuple(std))
    return _eval_batches(
        source,
        transform,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        workers=workers,
        read_threads=read_threads,
        prefetch=prefetch,
    )
