"""Convert a dataset in its official layout into a TFDS dataset stored as ArrayRecord, and open its splits.

Usage::

    python -m clip_text_spot.data.prepare --dataset=icdar2015 --source=/data/icdar2015 --output=/data/prepared

writes ``<output>/<dataset>/1.0.0/`` (``dataset_info.json``, ``features.json``, ``<dataset>-<split>.array_record-*``
and the completion marker ``prepare_complete.json``), readable with
``tfds.builder_from_directory(path).as_data_source(split=...)``, ``tfds.data_source(<dataset>, data_dir=<output>,
split=...)`` or :func:`open_split`. No TensorFlow is needed: images are stored as their encoded bytes (never as TFDS
``Image`` features, which need TensorFlow to encode), polygons flat, as in ``DetSample.to_record`` /
``RecSample.to_record``:

* detection: ``image`` bytes, ``polygon_points`` float32 [P, 2], ``polygon_lengths`` int32 [N], ``texts`` [N] str,
  ``ignore`` bool [N], ``name`` str;
* recognition: ``image`` bytes, ``label`` str, ``name`` str.

Records keep the reader's order (TFDS shuffling is disabled; shuffle in the input pipeline).

A run writes into ``<output>/<dataset>/.incomplete-<random>/`` and, only after every split is written and the
completion marker (split sizes, shard file sizes, reader counts) is in place, renames the finished version directory
into place. :func:`open_split` refuses a directory without the marker or whose shard files do not match it, so an
interrupted run or a partial copy is never read as a complete dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import sys
import types
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from clip_text_spot.data.readers import (
    IMAGE_CHECKS,
    DataFormatError,
    Samples,
    read_cocotext,
    read_crop_folder,
    read_ctw1500,
    read_icdar2015,
    read_lmdb,
    read_mlt17,
    read_mmocr_json,
    read_synthtext,
    read_totaltext,
)
from clip_text_spot.data.readers.synthtext import POLYGON_SOURCES

logger = logging.getLogger(__name__)

VERSION = "1.0.0"
MARKER = "prepare_complete.json"
_MARKER_FORMAT = 1
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
_VERSION_NAME = re.compile(r"\d+\.\d+\.\d+")

_F = tfds.features
FEATURES = {
    "det": {
        "image": _F.Tensor(shape=(), dtype=np.object_),
        "polygon_points": _F.Tensor(shape=(None, 2), dtype=np.float32),
        "polygon_lengths": _F.Tensor(shape=(None,), dtype=np.int32),
        "texts": _F.Sequence(_F.Text()),
        "ignore": _F.Tensor(shape=(None,), dtype=np.bool_),
        "name": _F.Text(),
    },
    "rec": {
        "image": _F.Tensor(shape=(), dtype=np.object_),
        "label": _F.Text(),
        "name": _F.Text(),
    },
}


class IncompleteDatasetError(RuntimeError):
    """A prepared dataset directory that is not complete (interrupted run, partial copy, unknown split)."""


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """Reader options that ``prepare`` passes through (see the readers for their meaning)."""

    strict: bool = True
    image_check: str = "verify"
    labels_only: bool = False
    ignore_scripts: tuple[str, ...] = ()
    synthtext_polygons: str = "word"


Opener = Callable[[Path | None, Path, str, ReadOptions], Samples]


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset's files are, relative to ``--source``.

    ``images``/``annotations`` are candidate path templates tried in order (``{split}`` and ``{Split}``, the
    capitalised split, are substituted); ``official`` adds per-split candidates named as in the official archives.
    An empty ``images`` tuple means the reader needs no image directory (or finds it itself).
    """

    splits: tuple[str, ...]
    images: tuple[str, ...]
    annotations: tuple[str, ...]
    open: Opener
    official: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    note: str = ""


def _common(opts: ReadOptions) -> dict[str, Any]:
    return {"strict": opts.strict, "image_check": opts.image_check}


_ZOO = ("textdet_imgs/{split}",), ("annotations/{split}",)  # mmocr dataset_zoo layout
DATASETS: dict[str, DatasetLayout] = {
    "icdar2015": DatasetLayout(
        ("train", "test"),
        *_ZOO,
        lambda im, ann, split, o: read_icdar2015(im, ann, **_common(o)),
        official={
            "train": ("ch4_training_images", "ch4_training_localization_transcription_gt"),
            "test": ("ch4_test_images", "Challenge4_Test_Task1_GT"),
        },
    ),
    "mlt17": DatasetLayout(
        ("train", "val"),
        *_ZOO,
        lambda im, ann, split, o: read_mlt17(im, ann, ignore_scripts=o.ignore_scripts, **_common(o)),
        official={
            "train": ("ch8_training_images", "ch8_training_localization_transcription_gt_v2"),
            "val": ("ch8_validation_images", "ch8_validation_localization_transcription_gt_v2"),
        },
        note="merge the 8 training image archives into one directory",
    ),
    "totaltext": DatasetLayout(
        ("train", "test"),
        *_ZOO,
        lambda im, ann, split, o: read_totaltext(im, ann, **_common(o)),
        official={"train": ("Images/Train", "txt_format/Train"), "test": ("Images/Test", "txt_format/Test")},
        note="poly_gt_*.txt, or poly_gt_*.mat when the directory has no .txt",
    ),
    "ctw1500": DatasetLayout(
        ("train", "test"),
        *_ZOO,
        lambda im, ann, split, o: read_ctw1500(im, ann, **_common(o)),
        official={
            "train": ("ctw1500_train_images/train_images", "ctw1500_train_labels/ctw1500_train_labels"),
            "test": ("ctw1500_test_images/test_images", "ctw1500_test_labels"),
        },
    ),
    "mmocr": DatasetLayout(
        ("train", "test"),
        ("",),
        ("textdet_{split}.json", "textspotting_{split}.json", "textrecog_{split}.json"),
        lambda im, ann, split, o: read_mmocr_json(ann, im, **_common(o)),
        note="--images is the data root that img_path is relative to; the task comes from metainfo.task_name",
    ),
    "synthtext": DatasetLayout(
        ("train",),
        ("", "SynthText"),
        ("gt.mat", "SynthText/gt.mat"),
        lambda im, ann, split, o: read_synthtext(ann, im, polygons=o.synthtext_polygons, **_common(o)),
    ),
    "cocotext": DatasetLayout(
        ("train", "val"),
        ("train2014",),
        ("cocotext.v2.json",),
        lambda im, ann, split, o: read_cocotext(ann, im, split=split, **_common(o)),
        note="the split is chosen by imgs[*].set",
    ),
    "lmdb": DatasetLayout(
        ("train",),
        (),
        ("{split}",),
        lambda im, ann, split, o: read_lmdb(ann, labels_only=o.labels_only, **_common(o)),
        note="--annotations is an LMDB directory, or a tree of them (concatenated)",
    ),
    "crops": DatasetLayout(
        ("train",),
        (),
        ("{split}.tsv", "{split}.txt", "{split}/labels.tsv", "{split}/labels.txt"),
        lambda im, ann, split, o: read_crop_folder(ann, im, **_common(o)),
        note="--annotations is the labels file; crops are relative to --images (default: its directory)",
    ),
}


def _candidates(layout: DatasetLayout, split: str, which: int) -> list[str]:
    templates = list((layout.images, layout.annotations)[which])
    if split in layout.official:
        templates.append(layout.official[split][which])
    return [t.format(split=split, Split=split.capitalize()) for t in templates]


def _resolve(source: Path, candidates: Sequence[str], what: str, flag: str) -> Path:
    for candidate in candidates:
        path = source / candidate
        if path.exists():
            return path
    tried = ", ".join(str(source / c) for c in candidates)
    raise FileNotFoundError(f"{what} not found (tried {tried}); give its path with {flag}")


def open_readers(
    dataset: str,
    source: str | Path,
    splits: Sequence[str] | None = None,
    *,
    images: str | None = None,
    annotations: str | None = None,
    options: ReadOptions | None = None,
) -> dict[str, Samples]:
    """One reader per split (default: the dataset's standard splits), with paths resolved from the dataset layout
    or the ``images``/``annotations`` templates (relative to ``source`` or absolute; ``{split}`` is substituted)."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset={dataset!r} is not one of {sorted(DATASETS)}")
    layout = DATASETS[dataset]
    splits = list(splits or layout.splits)
    options = options or ReadOptions()
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"--source directory not found: {source}")
    for flag, value in (("--images", images), ("--annotations", annotations)):
        if value is not None and len(splits) > 1 and "{split}" not in value:
            raise ValueError(f"{flag}={value!r} must contain {{split}} when preparing several splits {list(splits)}")
    readers = {}
    for split in splits:
        if not _SPLIT_NAME.fullmatch(split):
            raise ValueError(f"--split: {split!r} is not a valid split name (letters, digits, underscores)")
        ann_candidates = [annotations.format(split=split)] if annotations else _candidates(layout, split, 1)
        ann_path = _resolve(source, ann_candidates, f"{dataset}/{split} annotations", "--annotations")
        image_path = None
        if images is not None:
            image_path = _resolve(source, [images.format(split=split)], f"{dataset}/{split} images", "--images")
        elif layout.images:
            image_path = _resolve(source, _candidates(layout, split, 0), f"{dataset}/{split} images", "--images")
        readers[split] = layout.open(image_path, ann_path, split, options)
    kinds = {r.kind for r in readers.values()}
    if len(kinds) != 1:
        raise ValueError(f"splits mix detection and recognition data: {kinds}")
    return readers


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder over already opened readers; subclassed per dataset name (the directory name)."""

    VERSION = tfds.core.Version(VERSION)
    code_path = None  # no checksums file to look up (TFDS would probe the package with importlib_resources)

    def __init__(self, *, readers: dict[str, Samples], **kwargs):
        self._readers = readers
        self._kind = next(iter(readers.values())).kind
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name} prepared by clip_text_spot.data.prepare ({self._kind} records)",
            features=tfds.features.FeaturesDict(FEATURES[self._kind]),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self._readers}

    def _generate_examples(self, split: str):
        samples = self._readers[split]
        progress = tqdm(samples, total=len(samples), desc=f"{self.name}/{split}", unit="sample", dynamic_ncols=True)
        for index, sample in enumerate(progress):
            yield index, sample.to_record()
        if not samples.stats.num_samples:  # TFDS cannot write an empty split; say why there is nothing
            raise ValueError(f"{self.name}/{split}: no sample left to write ({samples.stats.summary()})")


def _builder_class(dataset: str) -> type[_Builder]:
    return types.new_class(
        dataset, (_Builder,), {"skip_registration": True}, lambda ns: ns.update(name=dataset, __module__=__name__)
    )


def _shard_files(version_dir: Path, dataset: str, split: str) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(version_dir.glob(f"{dataset}-{split}.array_record-*"))}


def prepare(
    dataset: str,
    source: str | Path,
    output: str | Path,
    splits: Sequence[str] | None = None,
    *,
    images: str | None = None,
    annotations: str | None = None,
    options: ReadOptions | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``splits`` (default: the dataset's standard splits) of ``dataset`` under ``output``; return the
    finished version directory ``<output>/<dataset>/<VERSION>``."""
    options = options or ReadOptions()
    readers = open_readers(dataset, source, splits, images=images, annotations=annotations, options=options)
    dataset_dir = Path(output) / dataset
    final = dataset_dir / VERSION
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to replace it")
    work = dataset_dir / f".incomplete-{uuid.uuid4().hex[:12]}"
    work.mkdir(parents=True)
    try:
        tfds.disable_progress_bar()
        builder = _builder_class(dataset)(readers=readers, data_dir=str(work), file_format="array_record")
        builder.download_and_prepare(download_dir=str(work / "downloads"))
        built = Path(builder.data_dir)
        marker = {
            "format": _MARKER_FORMAT,
            "dataset": dataset,
            "kind": next(iter(readers.values())).kind,
            "version": VERSION,
            "source": str(Path(source).resolve()),
            "options": dataclasses.asdict(options),
            "splits": {
                split: {
                    "num_examples": builder.info.splits[split].num_examples,
                    "files": _shard_files(built, dataset, split),
                    "stats": reader.stats.as_dict(),
                }
                for split, reader in readers.items()
            },
        }
        (built / MARKER).write_text(json.dumps(marker, indent=2, ensure_ascii=False))
        if final.exists():
            final.rename(work / "replaced")
        built.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for split, reader in readers.items():
        logger.info("%s/%s: %s", dataset, split, reader.stats.summary())
    return final


# -------------------------------------------------------------------------------------------------------- reading


def find_version_dir(directory: str | Path) -> Path:
    """The completed version directory for ``directory`` (a version directory itself, or ``<output>/<dataset>``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"prepared dataset directory not found: {directory}")
    if (directory / MARKER).is_file():
        return directory
    if (directory / "dataset_info.json").is_file():
        raise IncompleteDatasetError(f"{directory} has no {MARKER}: it was not written by a finished prepare run")
    versions = sorted(
        (p for p in directory.iterdir() if p.is_dir() and _VERSION_NAME.fullmatch(p.name)),
        key=lambda p: tuple(int(x) for x in p.name.split(".")),
    )
    if versions:
        return find_version_dir(versions[-1])
    pending = sorted(p.name for p in directory.glob(".incomplete-*"))
    hint = f" (unfinished runs: {pending})" if pending else ""
    raise IncompleteDatasetError(f"{directory} holds no completed prepared dataset{hint}")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class SplitSource:
    """Random-access records of one prepared split in the ``to_record`` layout (``str`` texts, ``bytes`` image).

    Supports ``len()``, ``[index]`` and ``__getitems__``; picklable (the TFDS source is reopened lazily), so it can
    be given to ``grain.MapDataset.source`` with multiprocessing workers.
    """

    def __init__(self, version_dir: Path, split: str, kind: str, num_examples: int):
        self.version_dir = version_dir
        self.split = split
        self.kind = kind
        self._num_examples = num_examples
        self._source = None

    def _data(self):
        if self._source is None:
            builder = tfds.builder_from_directory(str(self.version_dir))
            self._source = builder.as_data_source(split=self.split)
        return self._source

    def _convert(self, record: dict) -> dict:
        record = dict(record)
        record["name"] = _text(record["name"])
        if self.kind == "det":
            record["texts"] = [_text(t) for t in record["texts"]]
        else:
            record["label"] = _text(record["label"])
        return record

    def __len__(self) -> int:
        return self._num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += self._num_examples
        if not 0 <= index < self._num_examples:
            raise IndexError(f"index {index} out of range for {self._num_examples} records")
        return self._convert(self._data()[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        return [self._convert(r) for r in self._data().__getitems__([int(i) for i in indices])]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"SplitSource({str(self.version_dir)!r}, split={self.split!r}, kind={self.kind!r}, n={len(self)})"


def open_split(directory: str | Path, split: str) -> SplitSource:
    """Open one split of a prepared dataset (``<output>/<dataset>`` or its version directory).

    Raises ``FileNotFoundError`` when the directory is missing and :class:`IncompleteDatasetError` when it has no
    completion marker, lacks ``split``, or its shard files differ from what the marker records.
    """
    version_dir = find_version_dir(directory)
    try:
        marker = json.loads((version_dir / MARKER).read_text())
        splits = marker["splits"]
        kind = marker["kind"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise IncompleteDatasetError(f"{version_dir / MARKER} is unreadable ({err})") from None
    if split not in splits:
        raise IncompleteDatasetError(f"{version_dir} has no split {split!r} (available: {sorted(splits)})")
    for name, size in splits[split]["files"].items():
        path = version_dir / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            raise IncompleteDatasetError(f"{path}: expected {size} bytes, found {actual}; the copy is incomplete")
    source = SplitSource(version_dir, split, kind, int(splits[split]["num_examples"]))
    stored = len(source._data())
    if stored != len(source):
        raise IncompleteDatasetError(f"{version_dir}/{split}: {stored} records stored, marker says {len(source)}")
    return source


# ------------------------------------------------------------------------------------------------------------ CLI


def _layout_help() -> str:
    lines = ["dataset layouts (paths relative to --source; first existing candidate wins):"]
    for name, layout in DATASETS.items():
        images = {s: _candidates(layout, s, 0) for s in layout.splits}
        anns = {s: _candidates(layout, s, 1) for s in layout.splits}
        lines.append(f"  {name}: splits {','.join(layout.splits)}")
        for split in layout.splits:
            if images[split]:
                lines.append(f"    {split} images: {' | '.join(c or '.' for c in images[split])}")
            lines.append(f"    {split} annotations: {' | '.join(anns[split])}")
        if layout.note:
            lines.append(f"    note: {layout.note}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m clip_text_spot.data.prepare``."""
    parser = argparse.ArgumentParser(
        prog="python -m clip_text_spot.data.prepare",
        description="Convert a text detection/recognition dataset into a TFDS ArrayRecord dataset "
        "(<output>/<dataset>/" + VERSION + "/), written atomically.",
        epilog=_layout_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset format")
    parser.add_argument("--source", required=True, help="directory holding the dataset as released")
    parser.add_argument("--output", required=True, help="output root; the dataset goes to <output>/<dataset>/")
    parser.add_argument("--split", help="comma-separated split names (default: the dataset's standard splits)")
    parser.add_argument("--images", help="image directory (relative to --source or absolute; {split} is replaced)")
    parser.add_argument("--annotations", help="annotation file or directory (same rules as --images)")
    parser.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop at the first malformed sample (default); --no-strict skips and counts such samples",
    )
    parser.add_argument(
        "--image_check",
        choices=IMAGE_CHECKS,
        default="verify",
        help="none: files must be readable; verify (default): header/structure check; decode: full decode",
    )
    parser.add_argument("--labels_only", action="store_true", help="lmdb: read labels only (images stored empty)")
    parser.add_argument("--ignore_scripts", default="", help="mlt17: comma-separated scripts kept as ignore regions")
    parser.add_argument(
        "--synthtext_polygons", choices=POLYGON_SOURCES, default="word", help="synthtext: wordBB quads or char traces"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing prepared version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 1 on bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = ReadOptions(
        strict=args.strict,
        image_check=args.image_check,
        labels_only=args.labels_only,
        ignore_scripts=tuple(s for s in args.ignore_scripts.split(",") if s),
        synthtext_polygons=args.synthtext_polygons,
    )
    splits = [s for s in args.split.split(",") if s] if args.split else None
    try:
        path = prepare(
            args.dataset,
            args.source,
            args.output,
            splits,
            images=args.images,
            annotations=args.annotations,
            options=options,
            overwrite=args.overwrite,
        )
    except (DataFormatError, OSError, ValueError) as err:
        logger.error("%s", err)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
