"""Unreadable inputs: what counts as one (truncated JPEG, text file named .png, empty file), the one skip policy the
CLIs share (``cli.Skips``), and ``evaluate`` on sets with files it cannot assign. The image CLIs themselves run on
such a folder in tests/test_spot_demo.py, which has trained models to run."""

import json
import re

import pytest
from conftest import DATA

from clip_text_spot import evaluate
from clip_text_spot.cli import InputError, Skips
from clip_text_spot.data.readers.common import ImageError, read_input_image

PHOTO = DATA / "readers" / "opencv_text" / "scenetext01.jpg"
BAD_IMAGES = {  # name -> why it cannot be read
    "img_3.jpg": "OSError",  # a JPEG cut off after 5000 bytes (OpenCV would decode it, grey below the cut)
    "img_4.png": "not an image format",  # a text file
    "img_5.jpg": "an empty file",
}


def write_bad_images(folder):
    """Write the three unreadable images of ``BAD_IMAGES`` into ``folder``; returns their paths (sorted)."""
    folder.mkdir(exist_ok=True)
    (folder / "img_3.jpg").write_bytes(PHOTO.read_bytes()[:5000])
    (folder / "img_4.png").write_text("not a picture\n")
    (folder / "img_5.jpg").write_bytes(b"")
    return [str(folder / name) for name in sorted(BAD_IMAGES)]


def test_unreadable_images_raise_errors_naming_them(tmp_path):
    for path in write_bad_images(tmp_path):
        why = BAD_IMAGES[path.rsplit("/", 1)[-1]]
        with pytest.raises(ImageError, match=rf"^{re.escape(path)}: corrupt or unsupported image \(.*{why}"):
            read_input_image(path)
    assert read_input_image(PHOTO) == PHOTO.read_bytes()
    with pytest.raises(ImageError, match=r"^crop 7: .*empty file"):
        read_input_image(b"", "crop 7")


def test_skips_report_each_input_and_fail_only_when_nothing_was_read(tmp_path, capsys):
    paths = write_bad_images(tmp_path)
    skips = Skips()
    assert skips.read_all([*paths, str(PHOTO)], read_input_image) == [(str(PHOTO), PHOTO.read_bytes())]
    assert skips.skipped == paths
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == [f"skipped {p}" for p in paths]
    assert skips.read(None, lambda: read_input_image(b"x", "rec.lmdb [image-000000001]")) is None
    assert skips.skipped[-1] == "rec.lmdb [image-000000001]"  # a reader error names the record
    skips.require(1)
    with pytest.raises(InputError, match=r"no image could be read \(all 4 skipped\)"):
        skips.require(0, "image")
    with pytest.raises(InputError, match=r"no input could be read \(none given\)"):
        Skips().require(0)
    with pytest.raises(InputError, match=rf"^{re.escape(paths[0])}: corrupt .*\(--strict\)$"):
        Skips(strict=True).read(paths[0], lambda: read_input_image(paths[0]))


def test_evaluate_skips_files_it_cannot_assign(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    (gt / "gt_img_1.txt").write_text("0,0,10,0,10,10,0,10,word\n")
    (pred / "res_img_1.txt").write_text("0,0,10,0,10,10,0,10\n")
    (pred / "notes.txt").write_text("no image number here\n")
    code = evaluate.main(["det", "--gt", str(gt), "--pred", str(pred)])
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["hmean"] == 1.0 and summary["skipped"] == [str(pred / "notes.txt")]
    assert f"skipped {pred / 'notes.txt'}: no image number" in err
    assert evaluate.main(["det", "--gt", str(gt), "--pred", str(pred), "--strict"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    (pred / "res_img_1.txt").unlink()
    assert evaluate.main(["det", "--gt", str(gt), "--pred", str(pred)]) == 2  # every prediction file skipped
    assert "no prediction file could be read (all 1 skipped)" in capsys.readouterr().err
