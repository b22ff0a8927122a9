"""Dataset readers: real mmocr/PARSeq/ICDAR2015 files plus small files written here for every other format.

Goldens are facts about the files (counts from their README/spec, values read off the files by hand), never earlier
output of the readers.
"""

import io
import json
import logging
import shutil

import lmdb
import numpy as np
import pytest
import scipy.io
from conftest import DATA
from PIL import Image

from clip_text_spot.data.readers import (
    DataFormatError,
    ImageError,
    LabelEncodingError,
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
from clip_text_spot.data.readers.synthtext import split_synthtext_words

READERS = DATA / "readers"
REC_LABELS = ["GRAND", "HOTEL", "HOTEL", "PACIFIC", "03/09/2009", "ANING", "Virgin", "america", "ATTACK", "DAVIDSON"]


def encode(fmt: str = "JPEG", size: tuple[int, int] = (32, 16), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_images(directory, names, fmt="JPEG", size=(32, 16)):
    directory.mkdir(parents=True, exist_ok=True)
    data = encode(fmt, size)
    for name in names:
        (directory / name).write_bytes(data)
    return data


# ------------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def det_toy(tmp_path_factory):
    """The mmocr toy set: 2 real IC15 images copied, the other 8 replaced by 1280x720 stand-ins."""
    root = tmp_path_factory.mktemp("det_toy")
    shutil.copytree(READERS / "det_toy", root, dirs_exist_ok=True)
    write_images(root / "imgs/test", [f"img_{i}.jpg" for i in range(3, 11)], size=(1280, 720))
    return root


def test_mmocr_textdet_toy_counts(det_toy):
    samples = read_mmocr_json(det_toy / "textdet_test.json")
    out = list(samples)
    assert samples.kind == "det" and len(samples) == 10 and len(out) == 10
    assert sum(len(s.polygons) for s in out) == 82
    assert sum(sum(s.ignore) for s in out) == 61
    assert samples.stats.counts["instances"] == 82 and samples.stats.counts["ignored"] == 61
    first = out[0]  # data_list[0] is img_10; its first instance, read off the JSON by hand
    assert first.name == "img_10"
    np.testing.assert_array_equal(first.polygons[0], [[261, 138], [284, 140], [279, 158], [260, 158]])
    assert first.ignore[:2] == [True, False]
    img_1 = next(s for s in out if s.name == "img_1")
    assert img_1.image == (READERS / "det_toy/imgs/test/img_1.jpg").read_bytes()


def test_mmocr_textdet_size_mismatch_and_missing_image(det_toy, tmp_path, caplog):
    root = tmp_path / "toy"
    shutil.copytree(det_toy, root)
    write_images(root / "imgs/test", ["img_3.jpg"], size=(640, 360))  # the JSON says 1280x720
    (root / "imgs/test/img_4.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"textdet_test\.json \[data_list\[3\]\]: image is 640x360"):
        list(read_mmocr_json(root / "textdet_test.json"))
    samples = read_mmocr_json(root / "textdet_test.json", strict=False)
    with caplog.at_level(logging.WARNING):
        out = list(samples)
    assert len(out) == 8
    assert samples.stats.counts["skipped/malformed"] == 1 and samples.stats.counts["skipped/bad_image"] == 1
    assert "img_4.jpg" in caplog.text and "skipped" in caplog.text


def test_mmocr_textrecog_and_old_label_and_lmdb_agree():
    rec = READERS / "rec_toy"
    from_json = list(read_mmocr_json(rec / "labels.json", rec / "imgs"))
    from_txt = list(read_crop_folder(rec / "old_label.txt", rec / "imgs"))
    from_lmdb = list(read_lmdb(rec / "imgs.lmdb"))
    assert [s.label for s in from_json] == REC_LABELS
    assert [s.label for s in from_txt] == REC_LABELS
    assert [s.label for s in from_lmdb] == REC_LABELS
    assert from_json[0].name == "1223731.jpg" and from_lmdb[0].name == "image-000000001"
    # The LMDB stores the very same JPEG files, in labels.json order.
    assert [s.image for s in from_lmdb] == [(rec / "imgs" / s.name).read_bytes() for s in from_json]
    assert from_lmdb[0].image[:3] == b"\xff\xd8\xff"


def test_lmdb_tree_and_labels_only(tmp_path):
    shutil.copytree(READERS / "rec_toy/imgs.lmdb", tmp_path / "tree/b/imgs.lmdb")
    shutil.copytree(READERS / "rec_toy/imgs.lmdb", tmp_path / "tree/a")
    samples = read_lmdb(tmp_path / "tree", labels_only=True)
    out = list(samples)
    assert len(samples) == 20 and [s.label for s in out] == REC_LABELS * 2
    assert out[0].name == "a/image-000000001" and out[10].name == "b/imgs.lmdb/image-000000001"
    assert all(s.image == b"" for s in out)


def test_parseq_demo_tsv():
    out = list(read_crop_folder(READERS / "parseq_demo/labels.tsv"))
    assert [s.label for s in out] == ["CHEWBACCA", "Chevron", "SALMON", "Verbandstoffe", "Kappa", "3rdAve"]
    assert out[3].name == "ic13_word_256.png" and out[3].image[:4] == b"\x89PNG"


def test_icdar2015_real_gt_with_commas_bom_crlf(tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    raw = (READERS / "ic15_gt/gt_img_415.txt").read_bytes()
    assert b"\r\n" in raw
    (gt / "gt_img_415.txt").write_bytes(b"\xef\xbb\xbf" + raw)  # the original release had a BOM
    shutil.copy(READERS / "ic15_gt/gt_img_108.txt", gt)
    write_images(tmp_path / "img", ["img_415.jpg", "img_108.jpg", "img_7.jpg"])
    samples = read_icdar2015(tmp_path / "img", gt)
    out = list(samples)
    assert [s.name for s in out] == ["img_108", "img_415"]
    assert out[1].texts == ["HOLIDAY", "PLATTER", "$5,50", "###", "CANDY", "###"]
    assert out[1].ignore == [False, False, False, True, False, True]
    np.testing.assert_array_equal(out[1].polygons[0], [[195, 228], [403, 244], [398, 298], [190, 281]])
    assert out[0].texts[1] == "B1," and len(out[0].texts) == 16 and sum(out[0].ignore) == 3
    assert samples.stats.as_dict() == {"ignored": 5, "instances": 22, "samples": 2}


# ------------------------------------------------------------------------------------------------ ICDAR / MLT


@pytest.fixture()
def ic15(tmp_path):
    write_images(tmp_path / "img", ["img_1.jpg", "img_2.jpg"])
    (tmp_path / "gt").mkdir()
    return tmp_path


def test_icdar2015_bad_lines(ic15):
    gt = ic15 / "gt"
    (gt / "gt_img_1.txt").write_bytes(b"1,1,5,1,5,5,1,5,ok\r\n1,1,5,1,5,5,1,oops\r\n")
    (gt / "gt_img_2.txt").write_bytes(b"1,1,5,1,5,5,1,5,fine\r\n")
    with pytest.raises(DataFormatError, match=r"gt_img_1\.txt:2: expected x1,y1,\.\.\.,x4,y4,transcription"):
        list(read_icdar2015(ic15 / "img", gt))
    (gt / "gt_img_1.txt").write_bytes(b"1,1,5,1,5,5,1,5,ok\n\n1,1,5,x,5,5,1,5,t\n")
    with pytest.raises(DataFormatError, match=r"gt_img_1\.txt:3: expected a number, got 'x'"):
        list(read_icdar2015(ic15 / "img", gt))
    samples = read_icdar2015(ic15 / "img", gt, strict=False)
    assert [s.name for s in samples] == ["img_2"]
    assert samples.stats.counts["skipped/malformed"] == 1 and samples.stats.num_skipped == 1


def test_icdar2015_encodings_and_empty_file(ic15):
    gt = ic15 / "gt"
    (gt / "gt_img_1.txt").write_bytes(b"1,1,5,1,5,5,1,5,ok\n1,1,5,1,5,5,1,5,caf\xe9\n")
    (gt / "gt_img_2.txt").write_bytes(b"")
    with pytest.raises(LabelEncodingError, match=r"gt_img_1\.txt:2: not valid UTF-8 \(byte 0xe9 at column 20\)"):
        list(read_icdar2015(ic15 / "img", gt))
    samples = read_icdar2015(ic15 / "img", gt, strict=False)
    out = list(samples)
    assert [s.name for s in out] == ["img_2"] and out[0].polygons == []  # an empty file: an image without text
    assert samples.stats.counts["skipped/bad_encoding"] == 1 and samples.stats.counts["no_instances"] == 1
    (gt / "gt_img_1.txt").write_bytes("1,1,5,1,5,5,1,5,ok\n".encode("utf-16"))
    with pytest.raises(LabelEncodingError, match=r"gt_img_1\.txt:1: file starts with a UTF-16 byte-order mark"):
        list(read_icdar2015(ic15 / "img", gt))


def test_degenerate_polygons_become_counted_ignore_regions(ic15):
    lines = [
        "0,0,10,0,10,10,0,10,good",
        "0,0,10,10,20,20,30,30,line",  # collinear: zero area
        "0,0,10,10,10,0,0,4,bowtie",  # self-intersecting, signed area -30
        "0,0,10,0,10,10,0,10,###",
    ]
    (ic15 / "gt/gt_img_1.txt").write_text("\n".join(lines))
    samples = read_icdar2015(ic15 / "img", ic15 / "gt")
    (out,) = list(samples)
    assert out.ignore == [False, True, True, True]
    assert out.texts[1:3] == ["line", "bowtie"]
    counts = samples.stats.counts
    assert counts["degenerate/zero_area"] == 1 and counts["degenerate/self_intersecting"] == 1
    assert counts["ignored"] == 3 and counts["instances"] == 4


def test_corrupt_and_missing_images(ic15):
    for i in (1, 2):
        (ic15 / f"gt/gt_img_{i}.txt").write_text("0,0,10,0,10,10,0,10,a\n")
    (ic15 / "gt/gt_img_3.txt").write_text("0,0,10,0,10,10,0,10,a\n")  # no img_3 at all
    good = (ic15 / "img/img_1.jpg").read_bytes()
    (ic15 / "img/img_2.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    with pytest.raises(ImageError, match=r"img_2\.jpg: corrupt or unsupported image"):
        list(read_icdar2015(ic15 / "img", ic15 / "gt"))
    samples = read_icdar2015(ic15 / "img", ic15 / "gt", strict=False)
    assert [s.name for s in samples] == ["img_1"]
    assert samples.stats.counts["skipped/bad_image"] == 2
    assert any("gt_img_3.txt: no image named img_3" in m for m in samples.stats.skip_messages)
    (ic15 / "img/img_2.jpg").write_bytes(good + b"camera trailer" * 100)  # valid JPEG, bytes after end-of-image
    assert [s.image for s in read_icdar2015(ic15 / "img", ic15 / "gt", strict=False)][1][-14:] == b"camera trailer"
    (ic15 / "img/img_2.jpg").write_bytes(b"this is not an image")
    assert len(list(read_icdar2015(ic15 / "img", ic15 / "gt", strict=False))) == 1
    # Without checks the garbage is stored as is; the missing image is still an error.
    assert len(list(read_icdar2015(ic15 / "img", ic15 / "gt", strict=False, image_check="none"))) == 2


def test_gif_is_transcoded_to_png(tmp_path):
    write_images(tmp_path / "img", ["img_1.gif"], fmt="GIF")
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt/gt_img_1.txt").write_text("0,0,10,0,10,10,0,10,Latin,abc\n")
    samples = read_mlt17(tmp_path / "img", tmp_path / "gt")
    (out,) = list(samples)
    assert out.image[:8] == b"\x89PNG\r\n\x1a\n" and samples.stats.counts["transcoded_to_png"] == 1
    assert Image.open(io.BytesIO(out.image)).size == (32, 16)


def test_mlt17_scripts(tmp_path):
    write_images(tmp_path / "img", ["img_1.jpg"])
    (tmp_path / "gt").mkdir()
    lines = ["0,0,9,0,9,9,0,9,Latin,a,b", "0,0,9,0,9,9,0,9,Arabic,x", "0,0,9,0,9,9,0,9,None,###"]
    (tmp_path / "gt/gt_img_1.txt").write_text("\ufeff" + "\r\n".join(lines))
    samples = read_mlt17(tmp_path / "img", tmp_path / "gt", ignore_scripts=["Arabic"])
    (out,) = list(samples)
    assert out.texts == ["a,b", "x", "###"] and out.ignore == [False, True, True]
    assert samples.stats.counts["script/Latin"] == 1 and samples.stats.counts["script/None"] == 1
    (tmp_path / "gt/gt_img_1.txt").write_text("0,0,9,0,9,9,0,9,$5,50\n")  # an ICDAR2015 line is not MLT
    with pytest.raises(DataFormatError, match=r"gt_img_1\.txt:1: unknown script '\$5'"):
        list(read_mlt17(tmp_path / "img", tmp_path / "gt"))
    with pytest.raises(ValueError, match="ignore_scripts"):
        read_mlt17(tmp_path / "img", tmp_path / "gt", ignore_scripts=["Klingon"])


def test_missing_directories_and_bad_flags(tmp_path):
    with pytest.raises(FileNotFoundError, match="icdar2015 image directory not found"):
        read_icdar2015(tmp_path / "nope", tmp_path)
    (tmp_path / "img").mkdir()
    with pytest.raises(FileNotFoundError, match="no icdar2015 annotation files"):
        read_icdar2015(tmp_path / "img", tmp_path)
    with pytest.raises(ValueError, match="image_check='fast'"):
        read_icdar2015(tmp_path / "img", tmp_path, image_check="fast")


# ------------------------------------------------------------------------------------------------ Total-Text

# Values of the official example cs-chan/Total-Text-Dataset Evaluation_Protocol/Examples/Groundtruth/poly_gt_img1.mat
PETRO_X = [206, 251, 386, 542, 620, 646, 550, 358, 189, 140]
PETRO_Y = [633, 811, 931, 946, 926, 976, 1009, 989, 845, 629]


def test_totaltext_txt(tmp_path):
    write_images(tmp_path / "img", ["img1.jpg", "img2.JPG"])
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt/poly_gt_img1.txt").write_text(
        f"x: [[{' '.join(map(str, PETRO_X))}]], y: [[ {'  '.join(map(str, PETRO_Y))}]], "
        "ornt: [u'c'], transcriptions: [u'PETROSAINS']\n"
        "x: [[-2 8 10\n 8 2]], y: [[10 8 12\n 16 14]], ornt: [u'c'], \n"
        'transcriptions: [u"Joe\'s"]\n'
        "x: [[1 9 9 1]], y: [[1 1 5 5]], ornt: [u'#'], transcriptions: [u'#']\n"
        "x: [[1 9 9 1]], y: [[1 1 5 5]], ornt: [u'h'], transcriptions: [u',']\n"
        "x: [[1 9]], y: [[1 1]], ornt: [u'h'], transcriptions: [u'two']\n"
    )
    (tmp_path / "gt/poly_gt_img2.txt").write_text("x: [[1 9 9 1]], y: [[1 1 5 5]], ornt: [u'm'], transcriptions: []")
    samples = read_totaltext(tmp_path / "img", tmp_path / "gt")
    one, two = list(samples)
    np.testing.assert_array_equal(one.polygons[0], np.stack([PETRO_X, PETRO_Y], 1))
    np.testing.assert_array_equal(one.polygons[1], [[-2, 10], [8, 8], [10, 12], [8, 16], [2, 14]])
    assert one.texts == ["PETROSAINS", "Joe's", "#", ",", "two"]
    assert one.ignore == [False, False, True, False, True]
    assert samples.stats.counts["degenerate/few_points"] == 1
    assert two.name == "img2" and two.texts == ["#"] and two.ignore == [True]


@pytest.mark.parametrize(
    "record, message",
    [
        ("y: [[1 2 3]]", r"poly_gt_img1\.txt:1: expected a record starting with 'x:'"),
        ("x: [[1 2 3]], y: [[1 2]], ornt: [u'c'], transcriptions: [u'a']", r":1: 3 x values but 2 y values"),
        ("x: [[1 2 3]], y: [[1 2 3]], ornt: [u'c'], transcriptions: [__import__('os')]", r":1: transcriptions: not"),
        ("x: [[1 2 3]], y: [[1 2 3]], ornt: [u'c']", r":1: expected 'x: \[\[\.\.\]\], y:"),
    ],
)
def test_totaltext_txt_malformed(tmp_path, record, message):
    write_images(tmp_path / "img", ["img1.jpg"])
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt/poly_gt_img1.txt").write_text(record + "\n")
    with pytest.raises(DataFormatError, match=message):
        list(read_totaltext(tmp_path / "img", tmp_path / "gt"))


def _cells(rows):
    table = np.empty((len(rows), 6), dtype=object)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            table[i, j] = value
    return table


def test_totaltext_mat_official_and_legacy(tmp_path):
    write_images(tmp_path / "img", ["img1.jpg", "img3.jpg"])
    (tmp_path / "gt").mkdir()
    polygt = _cells(
        [
            ["x:", np.array([PETRO_X], np.int16), "y:", np.array([PETRO_Y], np.int16), "PETROSAINS", "c"],
            ["x:", np.array([[1, 9, 9, 1]], np.int16), "y:", np.array([[1, 1, 5, 5]], np.int16), "#", "#"],
        ]
    )
    scipy.io.savemat(tmp_path / "gt/poly_gt_img1.mat", {"polygt": polygt})
    xs, ys = [699, 751, 802, 855, 905, 906, 854, 801, 748, 695], [201, 203, 202, 205, 205, 264, 265, 264, 262, 259]
    legacy = _cells([["x:", np.array(xs, float)[:, None], "y:", np.array(ys, float)[:, None], "kel", "h"]])
    scipy.io.savemat(tmp_path / "gt/gt_img3.mat", {"gt": legacy})
    one, three = list(read_totaltext(tmp_path / "img", tmp_path / "gt"))
    np.testing.assert_array_equal(one.polygons[0], np.stack([PETRO_X, PETRO_Y], 1))
    assert one.texts == ["PETROSAINS", "#"] and one.ignore == [False, True]
    np.testing.assert_array_equal(three.polygons[0], np.stack([xs, ys], 1))
    assert three.texts == ["kel"] and three.ignore == [False]
    scipy.io.savemat(tmp_path / "gt/gt_img3.mat", {"boxes": np.zeros((2, 2))})
    with pytest.raises(DataFormatError, match=r"gt_img3\.mat: no variable 'polygt' or 'gt'"):
        list(read_totaltext(tmp_path / "img", tmp_path / "gt"))
    (tmp_path / "gt/gt_img3.mat").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"gt_img3\.mat: cannot read MAT file"):
        list(read_totaltext(tmp_path / "img", tmp_path / "gt"))


# ------------------------------------------------------------------------------------------------ CTW1500


def test_ctw1500_txt_xml_and_legacy(tmp_path):
    write_images(tmp_path / "img", ["0001.jpg", "1001.jpg", "1002.jpg"])
    ann = tmp_path / "ann"
    ann.mkdir()
    pts = [10, 20, 30, 20, 50, 20, 70, 20, 90, 20, 110, 20, 130, 20, 130, 40, 110, 40, 90, 40, 70, 40, 50, 40, 30, 40]
    pts += [10, 40]
    segs = ",".join(map(str, pts))
    (ann / "0001.xml").write_text(
        '<?xml version="1.0"?><Annotations><image file="0001.jpg">'
        f'<box height="20" left="10" top="20" width="120"><label>Latin 9</label><segs>{segs}</segs>'
        '<pts x="10" y="20" /></box><box><label>###</label><segs>0,0,9,0,9,9,0,9</segs></box></image></Annotations>'
    )
    (ann / "0001001.txt").write_text(f"{segs},####Hello, world\n{segs},#######\n")
    offsets = ",".join(str(v - (10 if i % 2 == 0 else 20)) for i, v in enumerate(pts))
    (ann / "0001002.txt").write_text(f"10,20,130,40,{offsets}\n")
    train, test, legacy = list(read_ctw1500(tmp_path / "img", ann))
    expected = np.array(pts, np.float32).reshape(14, 2)
    assert train.name == "0001" and train.texts == ["Latin 9", "###"] and train.ignore == [False, True]
    np.testing.assert_array_equal(train.polygons[0], expected)
    assert test.name == "1001" and test.texts == ["Hello, world", "###"] and test.ignore == [False, True]
    np.testing.assert_array_equal(test.polygons[1], expected)
    assert legacy.texts == [""] and legacy.ignore == [False]
    np.testing.assert_array_equal(legacy.polygons[0], expected)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("0001001.txt", "1,2,3,4,5,6,###x\n", r"0001001\.txt:1: transcription must start with '####'"),
        ("0001001.txt", "1,2,3,4,5\n", r"0001001\.txt:1: expected x1,y1,\.\.\.,####text or 32 legacy"),
        ("0001001.txt", "1,2,3,4,5,####a\n", r"0001001\.txt:1: odd number of polygon coordinates"),
        ("0001.xml", "<Annotations><image><box>", r"0001\.xml:1: invalid XML"),
        ("0001.xml", "<Annotations><image><box><label>a</label></box></image></Annotations>", r"\[box\[0\]\]"),
    ],
)
def test_ctw1500_malformed(tmp_path, name, content, message):
    write_images(tmp_path / "img", ["0001.jpg", "1001.jpg"])
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / name).write_text(content)
    with pytest.raises(DataFormatError, match=message):
        list(read_ctw1500(tmp_path / "img", tmp_path / "ann"))


# ------------------------------------------------------------------------------------------------ SynthText


def _object_row(values):
    row = np.empty((1, len(values)), dtype=object)
    for i, value in enumerate(values):
        row[0, i] = value
    return row


@pytest.fixture()
def synthtext(tmp_path):
    write_images(tmp_path / "8", ["a_0.jpg", "b_1.jpg"])
    one_word = np.array([[1, 9, 9, 1], [2, 2, 6, 6]], np.float64)  # 2 x 4: one word
    three = np.stack([one_word + 20 * k for k in range(3)], axis=2)  # 2 x 4 x 3
    chars_one = np.stack([one_word] * 2, axis=2)  # "Hi": 2 chars
    # Words "ab", "c", "de": 5 characters, each a 2-wide box at x = 2i.
    char_boxes = np.stack([np.array([[2 * i, 2 * i + 2, 2 * i + 2, 2 * i], [0, 0, 4, 4]], float) for i in range(5)], 2)
    gt = {
        "imnames": _object_row([np.array(["8/a_0.jpg"]), np.array(["8/b_1.jpg"])]),
        "wordBB": _object_row([one_word, three]),
        "charBB": _object_row([chars_one, char_boxes]),
        "txt": _object_row([np.array(["Hi"]), np.array(["ab\n c  ", "de"])]),
    }
    scipy.io.savemat(tmp_path / "gt.mat", gt)
    return tmp_path


def test_synthtext_words_and_boxes(synthtext):
    samples = read_synthtext(synthtext / "gt.mat")
    a, b = list(samples)
    assert a.name == "8/a_0" and a.texts == ["Hi"] and a.ignore == [False]
    np.testing.assert_array_equal(a.polygons[0], [[1, 2], [9, 2], [9, 6], [1, 6]])
    assert b.texts == ["ab", "c", "de"]
    np.testing.assert_array_equal(b.polygons[2], [[41, 42], [49, 42], [49, 46], [41, 46]])
    assert samples.stats.counts["instances"] == 4


def test_synthtext_char_traced_polygons(synthtext):
    _, b = list(read_synthtext(synthtext / "gt.mat", polygons="char"))
    # "ab" owns char boxes 0 and 1: top edges left to right, then bottom edges right to left.
    np.testing.assert_array_equal(b.polygons[0], [[0, 0], [2, 0], [2, 0], [4, 0], [4, 4], [2, 4], [2, 4], [0, 4]])
    np.testing.assert_array_equal(b.polygons[1], [[4, 0], [6, 0], [6, 4], [4, 4]])


def test_synthtext_word_count_mismatch(synthtext):
    gt = scipy.io.loadmat(synthtext / "gt.mat")
    gt["txt"][0, 1] = np.array(["ab c"])
    scipy.io.savemat(synthtext / "gt.mat", {k: v for k, v in gt.items() if not k.startswith("__")})
    with pytest.raises(DataFormatError, match=r"gt\.mat \[wordBB\[1\]\]: 3 word boxes but txt\[1\] has 2 words"):
        list(read_synthtext(synthtext / "gt.mat"))
    samples = read_synthtext(synthtext / "gt.mat", strict=False)
    assert [s.name for s in samples] == ["8/a_0"] and samples.stats.counts["skipped/malformed"] == 1


def test_split_synthtext_words():
    assert split_synthtext_words(np.array(["Lorem ipsum\ndolor", "  sit "])) == ["Lorem", "ipsum", "dolor", "sit"]


# ------------------------------------------------------------------------------------------------ COCO-Text


def test_cocotext_v2(tmp_path):
    names = ["COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg", "COCO_train2014_000000000003.jpg"]
    write_images(tmp_path / "train2014", names)
    imgs = {str(i + 1): {"file_name": n, "width": 32, "height": 16, "id": i + 1} for i, n in enumerate(names)}
    imgs["1"]["set"], imgs["2"]["set"], imgs["3"]["set"] = "train", "train", "val"
    anns = {
        "10": {"mask": [1, 1, 9, 1, 9, 5, 1, 5], "bbox": [1, 1, 8, 4], "utf8_string": "EXIT", "legibility": "legible"},
        "11": {"mask": [], "bbox": [2, 3, 4, 5], "utf8_string": "", "legibility": "illegible"},
        "12": {"mask": [0, 0, 4, 0, 4, 4, 0, 4], "utf8_string": "val", "legibility": "legible"},
    }
    content = {"imgs": imgs, "anns": anns, "imgToAnns": {"1": [10, 11], "2": [], "3": [12]}, "cats": {}, "info": {}}
    (tmp_path / "cocotext.v2.json").write_text(json.dumps(content))
    train = list(read_cocotext(tmp_path / "cocotext.v2.json", tmp_path / "train2014", split="train"))
    assert [s.name for s in train] == ["COCO_train2014_000000000001"]  # image 2 has no annotations
    assert train[0].texts == ["EXIT", ""] and train[0].ignore == [False, True]
    np.testing.assert_array_equal(train[0].polygons[1], [[2, 3], [6, 3], [6, 8], [2, 8]])  # from bbox x,y,w,h
    val = list(read_cocotext(tmp_path / "cocotext.v2.json", tmp_path / "train2014", split="val"))
    assert [s.texts for s in val] == [["val"]]
    with pytest.raises(ValueError, match=r"split='test': no image .* has set='test'"):
        read_cocotext(tmp_path / "cocotext.v2.json", tmp_path / "train2014", split="test")
    content["anns"]["12"] = {"utf8_string": "\ud800", "mask": [0, 0, 4, 0, 4, 4]}
    (tmp_path / "cocotext.v2.json").write_text(json.dumps(content))
    with pytest.raises(LabelEncodingError, match=r"cocotext\.v2\.json \[anns\[12\]\]: label is not valid Unicode"):
        list(read_cocotext(tmp_path / "cocotext.v2.json", tmp_path / "train2014", split="val"))


def test_json_syntax_error_names_line(tmp_path):
    (tmp_path / "textdet_test.json").write_text('{\n  "metainfo": {"task_name": "textdet"},\n  "data_list": [,]\n}')
    with pytest.raises(DataFormatError, match=r"textdet_test\.json:3: invalid JSON"):
        read_mmocr_json(tmp_path / "textdet_test.json")
    (tmp_path / "textdet_test.json").write_text("")
    with pytest.raises(DataFormatError, match=r"textdet_test\.json:1: invalid JSON"):
        read_mmocr_json(tmp_path / "textdet_test.json")


# ------------------------------------------------------------------------------------------------ LMDB / crops


def _write_lmdb(path, entries: dict[bytes, bytes]):
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key, value)
    env.close()


def test_lmdb_bad_records(tmp_path):
    jpeg = encode()
    entries = {b"num-samples": b"4", b"image-000000001": jpeg, b"label-000000001": b"ok"}
    entries |= {b"image-000000002": jpeg, b"label-000000002": b"caf\xe9"}  # latin-1 label
    entries |= {b"image-000000003": b"\xff\xd8garbage", b"label-000000003": b"x"}
    entries |= {b"label-000000004": b"no image"}
    _write_lmdb(tmp_path / "db", entries)
    with pytest.raises(LabelEncodingError, match=r"db/data\.mdb \[label-000000002\]: label is not valid UTF-8"):
        list(read_lmdb(tmp_path / "db"))
    samples = read_lmdb(tmp_path / "db", strict=False)
    assert [s.label for s in samples] == ["ok"]
    counts = samples.stats.counts
    assert counts["skipped/bad_encoding"] == 1 and counts["skipped/bad_image"] == 1 and counts["skipped/malformed"] == 1
    assert any("[image-000000004]: key missing" in m for m in samples.stats.skip_messages)
    _write_lmdb(tmp_path / "nocount", {b"label-000000001": b"a"})
    with pytest.raises(DataFormatError, match=r"nocount/data\.mdb \[num-samples\]: no 'num-samples' key"):
        read_lmdb(tmp_path / "nocount")
    with pytest.raises(FileNotFoundError, match="no LMDB"):
        read_lmdb(READERS / "parseq_demo")


def test_crop_folder_formats_and_errors(tmp_path):
    write_images(tmp_path, ["a.jpg", "b.png", "c.jpg"])
    (tmp_path / "labels.tsv").write_bytes(b"a.jpg\tNew York\r\nb.png\t\nc.jpg\tfa\xe7ade\nd.jpg\tgone\nnoseparator\n")
    with pytest.raises(LabelEncodingError, match=r"labels\.tsv:3: not valid UTF-8"):
        list(read_crop_folder(tmp_path / "labels.tsv"))
    samples = read_crop_folder(tmp_path / "labels.tsv", strict=False)
    out = list(samples)
    assert [(s.name, s.label) for s in out] == [("a.jpg", "New York"), ("b.png", "")]
    assert samples.stats.as_dict() == {
        "samples": 2,
        "skipped/bad_encoding": 1,
        "skipped/bad_image": 1,
        "skipped/malformed": 1,
    }
    assert "labels.tsv:5: expected name<TAB>label" in samples.stats.skip_messages[-1]
    (tmp_path / "old_label.txt").write_text("a.jpg New York\nb.png x\n")
    assert [s.label for s in read_crop_folder(tmp_path / "old_label.txt")] == ["New York", "x"]
