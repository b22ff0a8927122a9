"""prepare -> TFDS ArrayRecord -> open_split round trips, and refusal of partial outputs."""

import io
import json
import logging
import pickle
import shutil

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import DATA
from PIL import Image

from clip_text_spot.data.prepare import (
    MARKER,
    IncompleteDatasetError,
    ReadOptions,
    build_parser,
    main,
    open_split,
    prepare,
)
from clip_text_spot.data.readers import ImageError, read_crop_folder, read_icdar2015
from clip_text_spot.data.types import DetSample, RecSample

READERS = DATA / "readers"


def jpeg(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 12), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture()
def ic15_source(tmp_path):
    """A tiny ICDAR2015 tree in the mmocr dataset_zoo layout: train has 3 images, test has 1."""
    source = tmp_path / "ic15"
    gts = {
        "train": {
            1: "0,0,10,0,10,5,0,5,Hello\r\n2,2,8,2,8,4,2,4,$5,50\r\n",
            2: "1,1,3,3,5,5,7,7,line\r\n0,0,4,0,4,4,0,4,###\r\n",
            3: "",
        },
        "test": {7: "\ufeff0,0,6,0,6,6,0,6,caf\u00e9\r\n"},
    }
    for split, files in gts.items():
        (source / "textdet_imgs" / split).mkdir(parents=True)
        (source / "annotations" / split).mkdir(parents=True)
        for number, text in files.items():
            (source / "textdet_imgs" / split / f"img_{number}.jpg").write_bytes(jpeg((number * 40, 0, 0)))
            (source / "annotations" / split / f"gt_img_{number}.txt").write_text(text, encoding="utf-8")
    return source


def assert_det_equal(record: dict, sample: DetSample):
    expected = sample.to_record()
    assert set(record) == set(expected)
    assert record["image"] == expected["image"] and record["name"] == expected["name"]
    assert record["texts"] == expected["texts"]
    np.testing.assert_array_equal(record["ignore"], expected["ignore"])
    np.testing.assert_array_equal(record["polygon_lengths"], expected["polygon_lengths"])
    np.testing.assert_array_equal(record["polygon_points"], expected["polygon_points"])
    assert record["polygon_points"].dtype == np.float32 and record["polygon_lengths"].dtype == np.int32


def test_detection_round_trip(ic15_source, tmp_path):
    out = tmp_path / "out"
    path = prepare("icdar2015", ic15_source, out)
    assert path == out / "icdar2015" / "1.0.0"
    assert sorted(p.name for p in (out / "icdar2015").iterdir()) == ["1.0.0"]  # no leftovers
    for split in ("train", "test"):
        expected = list(read_icdar2015(ic15_source / "textdet_imgs" / split, ic15_source / "annotations" / split))
        source = open_split(out / "icdar2015", split)
        assert len(source) == len(expected) == (3 if split == "train" else 1)
        for index, sample in enumerate(expected):
            assert_det_equal(source[index], sample)
    train = open_split(path, "train")
    assert [r["texts"] for r in train.__getitems__([0, 1])] == [["Hello", "$5,50"], ["line", "###"]]
    assert DetSample.from_record(train[1]).ignore == [True, True]  # degenerate "line" and ###
    assert train[-1]["name"] == "img_3" and train[2]["polygon_points"].shape == (0, 2)
    assert open_split(path, "test")[0]["texts"] == ["caf\u00e9"]
    marker = json.loads((path / MARKER).read_text())
    assert marker["splits"]["train"]["stats"] == {
        "degenerate/zero_area": 1,
        "ignored": 2,
        "instances": 4,
        "no_instances": 1,
        "samples": 3,
    }
    # Standard TFDS readers and grain work on the same files.
    assert len(tfds.data_source("icdar2015", data_dir=str(out), split="train")) == 3
    assert tfds.builder_from_directory(str(path)).as_data_source(split="test")[0]["name"] == b"img_7"
    names = list(grain.MapDataset.source(pickle.loads(pickle.dumps(train))).map(lambda r: r["name"]))
    assert names == ["img_1", "img_2", "img_3"]


def test_recognition_round_trip_crops_and_lmdb(tmp_path):
    demo = READERS / "parseq_demo"
    path = prepare("crops", demo, tmp_path, ["test"], annotations="labels.tsv")
    source = open_split(path, "test")
    expected = list(read_crop_folder(demo / "labels.tsv"))
    assert len(source) == 6
    for index, sample in enumerate(expected):
        assert source[index] == sample.to_record()
        assert RecSample.from_record(source[index]).image == (demo / sample.name).read_bytes()
    path = prepare("lmdb", READERS / "rec_toy", tmp_path, ["val"], annotations="imgs.lmdb", options=ReadOptions())
    labels = [open_split(path, "val")[i]["label"] for i in range(10)]
    assert labels == ["GRAND", "HOTEL", "HOTEL", "PACIFIC", "03/09/2009", "ANING", "Virgin", "america", "ATTACK"] + [
        "DAVIDSON"
    ]


def test_failed_run_leaves_nothing_readable(ic15_source, tmp_path):
    (ic15_source / "textdet_imgs/train/img_2.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    with pytest.raises(ImageError, match=r"img_2\.jpg: corrupt"):
        prepare("icdar2015", ic15_source, out)
    assert list((out / "icdar2015").iterdir()) == []  # the temporary directory was removed
    with pytest.raises(IncompleteDatasetError, match="holds no completed prepared dataset"):
        open_split(out / "icdar2015", "train")
    # A run killed before it could clean up leaves only its hidden work directory behind.
    killed = out / "icdar2015" / ".incomplete-0123" / "icdar2015" / "1.0.0"
    killed.mkdir(parents=True)
    (killed / "dataset_info.json").write_text("{}")
    with pytest.raises(IncompleteDatasetError, match=r"unfinished runs: \['\.incomplete-0123'\]"):
        open_split(out / "icdar2015", "train")
    with pytest.raises(IncompleteDatasetError, match=f"has no {MARKER}"):
        open_split(killed, "train")
    with pytest.raises(FileNotFoundError, match="prepared dataset directory not found"):
        open_split(out / "nothing", "train")
    # Without --strict the corrupt image is skipped and counted.
    path = prepare("icdar2015", ic15_source, out, options=ReadOptions(strict=False))
    marker = json.loads((path / MARKER).read_text())
    assert marker["splits"]["train"]["num_examples"] == 2
    assert marker["splits"]["train"]["stats"]["skipped/bad_image"] == 1
    assert [r["name"] for r in open_split(path, "train").__getitems__([0, 1])] == ["img_1", "img_3"]


def test_split_with_every_sample_skipped(ic15_source, tmp_path):
    (ic15_source / "textdet_imgs/test/img_7.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"icdar2015/test: no sample left to write \(.*skipped/bad_image=1"):
        prepare("icdar2015", ic15_source, tmp_path, ["test"], options=ReadOptions(strict=False))
    assert list((tmp_path / "icdar2015").iterdir()) == []


def test_partial_copies_and_unknown_splits_are_refused(ic15_source, tmp_path):
    path = prepare("icdar2015", ic15_source, tmp_path, ["test"])
    with pytest.raises(IncompleteDatasetError, match=r"has no split 'train' \(available: \['test'\]\)"):
        open_split(path, "train")
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    shard = next(copy.glob("icdar2015-test.array_record-*"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(IncompleteDatasetError, match="the copy is incomplete"):
        open_split(copy, "test")
    (copy / MARKER).unlink()
    with pytest.raises(IncompleteDatasetError, match=f"has no {MARKER}"):
        open_split(copy, "test")


def test_existing_output_needs_overwrite(ic15_source, tmp_path):
    path = prepare("icdar2015", ic15_source, tmp_path, ["test"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare("icdar2015", ic15_source, tmp_path, ["test"])
    (ic15_source / "annotations/test/gt_img_7.txt").write_text("0,0,6,0,6,6,0,6,new\n")
    assert prepare("icdar2015", ic15_source, tmp_path, ["test"], overwrite=True) == path
    assert open_split(path, "test")[0]["texts"] == ["new"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["1.0.0"]


def test_layout_errors(ic15_source, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"icdar2015/val annotations not found \(tried .*--annotations"):
        prepare("icdar2015", ic15_source, tmp_path, ["val"])
    with pytest.raises(ValueError, match=r"--annotations='gt' must contain \{split\}"):
        prepare("icdar2015", ic15_source, tmp_path, ["train", "test"], annotations="gt")
    with pytest.raises(ValueError, match="--split: 'tr-ain' is not a valid split name"):
        prepare("icdar2015", ic15_source, tmp_path, ["tr-ain"])
    with pytest.raises(ValueError, match="--dataset='icdar2013'"):
        prepare("icdar2013", ic15_source, tmp_path)


def test_cli(ic15_source, tmp_path, capsys, caplog):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for word in ("icdar2015", "totaltext", "ctw1500", "mlt17", "mmocr", "synthtext", "cocotext", "lmdb", "crops"):
        assert f"  {word}: splits" in help_text
    assert "--no-strict" in help_text and "ch4_training_images" in help_text
    out = tmp_path / "out"
    assert main([f"--source={ic15_source}", f"--output={out}", "--dataset=icdar2015", "--split=test"]) == 0
    assert capsys.readouterr().out.strip().endswith("icdar2015/1.0.0")
    with caplog.at_level(logging.ERROR):
        assert main([f"--source={tmp_path / 'missing'}", f"--output={out}", "--dataset=totaltext"]) == 1
    assert "--source directory not found" in caplog.text
