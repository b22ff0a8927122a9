"""The evaluation CLI: official golden numbers on real data (through a subprocess, last stdout line = JSON), error
reporting, and the rec / e2e sub-commands."""

import json
import subprocess
import sys
import zipfile

import pytest
from conftest import DATA

from clip_text_spot.evaluate import main

EVAL = DATA / "eval"
ROOT = DATA.parent.parent


def cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "clip_text_spot.evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def run_main(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


# Official-script numbers (tests/data/eval/README.md): RRC script.py for IC15, TIoU curved "Origin" for CTW / TT;
# TIoU (P, R, H) from the TIoU repo's own scripts on the same files.
GOLDENS = [
    (
        ("ic15_test_gt.zip", "ic15_test_det_pixellink.zip", "icdar2015"),
        ((1696, 2077, 2046), (0.828935, 0.816562, 0.822702), (0.617609, 0.552402, 0.583189)),
    ),
    (
        ("ctw1500_test_gt.zip", "ctw1500_test_det_tiou.zip", "curved"),
        ((2504, 3068, 3340), (0.749701, 0.816167, 0.781523), (0.572061, 0.519970, 0.544773)),
    ),
    (
        ("totaltext_test_gt.zip", "totaltext_test_det_baseline.zip", "curved"),
        ((1553, 2214, 1932), (0.803830, 0.701445, 0.749156), (0.619488, 0.478876, 0.540182)),
    ),
]


@pytest.mark.parametrize("files,expected", GOLDENS, ids=["ic15", "ctw1500", "totaltext"])
def test_det_goldens_through_cli(files, expected):
    gt, pred, protocol = files
    counts, prh, tiou = expected
    code, out, err = cli("det", "--gt", EVAL / gt, "--pred", EVAL / pred, "--protocol", protocol, "--tiou")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["matched"], result["gt_care"], result["det_care"]) == counts
    assert tuple(round(result[k], 6) for k in ("precision", "recall", "hmean")) == prh
    assert tuple(round(result["tiou"][k], 6) for k in ("precision", "recall", "hmean")) == tiou
    assert result["protocol"] == protocol and "sweep" not in result  # no scores in these submissions


@pytest.mark.parametrize(
    "method,prh", [("totaltext-pascal", (0.802795, 0.700542)), ("totaltext-deteval", (0.784679, 0.682204))]
)
def test_totaltext_official_methods(capsys, method, prh):
    """Goldens from Total-Text's own Pascal_VOC.py / Deteval.py on the same data (GT as .mat, detections y,x)."""
    args = ("det", "--gt", EVAL / "totaltext_test_gt.zip", "--pred", EVAL / "totaltext_test_det_baseline.zip")
    code, result, err = run_main(capsys, *args, "--method", method)
    assert code == 0, err
    assert (round(result["precision"], 6), round(result["recall"], 6)) == prh
    assert (result["gt_care"], result["det_care"]) == (2214, 1932)


def test_malformed_prediction_exits_2_with_file_and_line(tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "res_img_1.txt").write_text("1,1,5,1,5,5,1,5\n1,1,5,1,5,5\n")
    code, out, err = cli("det", "--gt", EVAL / "ic15_test_gt.zip", "--pred", pred, "--protocol", "icdar2015")
    assert code == 2 and out == ""
    assert f"{pred / 'res_img_1.txt'}:2: expected x1,y1,x2,y2,x3,y3,x4,y4" in err


def test_det_auto_protocol_sweep_and_per_image(tmp_path, capsys):
    with zipfile.ZipFile(EVAL / "ic15_test_gt.zip") as zf:
        gt_text = zf.read("gt_img_2.txt").decode("utf-8-sig")  # 22 quads, 10 care
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    (gt_dir / "gt_img_2.txt").write_text(gt_text)
    care = [line.rsplit(",", 1)[0] for line in gt_text.splitlines() if line and not line.endswith("###")]
    scored = [f"{coords},{0.95 if i % 2 else 0.35}" for i, coords in enumerate(care)]
    (pred_dir / "res_img_2.txt").write_text("\n".join(scored) + "\n")
    per_image = tmp_path / "per_image.json"
    code, result, err = run_main(capsys, "det", "--gt", gt_dir, "--pred", pred_dir, "--per-image", per_image)
    assert code == 0 and result["protocol"] == "icdar2015"
    n = len(care)
    assert (result["matched"], result["gt_care"], result["det_care"], result["hmean"]) == (n, n, n, 1.0)
    low = sum(1 for i in range(n) if i % 2 == 0)  # detections scored 0.35 are dropped from threshold 0.4 on
    assert result["sweep"]["thresholds"][1]["det_care"] == n - low
    assert result["sweep"]["best"]["score_thr"] == 0.30000000000000004
    assert n == 10 and json.loads(per_image.read_text())["2"]["matched"] == n
    code, result, _ = run_main(capsys, "det", "--gt", gt_dir, "--pred", pred_dir, "--score-thr", "0.5")
    assert result["det_care"] == n - low and result["score_thr"] == 0.5


def test_det_strict_rejects_unknown_images(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    (gt / "1.txt").write_text("0,10,10,10,10,0,0,0,CARE\n")  # not shapely-ccw, as the curved scripts require
    (pred / "2.txt").write_text("0,10,10,10,10,0,0,0\n")
    code, result, _ = run_main(capsys, "det", "--gt", gt, "--pred", pred)
    assert code == 0 and result["unknown_images"] == 1 and result["recall"] == 0.0
    code, _, err = run_main(capsys, "det", "--gt", gt, "--pred", pred, "--strict")
    assert code == 2 and "image 2 is not in the ground truth" in err


def test_rec_cli(tmp_path, capsys):
    pred = tmp_path / "pred.tsv"
    pred.write_text(
        "1223731.jpg\tgrand\n1223733.jpg\tH0TEL\n1223732.jpg\thotel\n1223729.jpg\tPACIFIC\n"
        "1036169.jpg\t03-09-2009\n1190237.jpg\tANING\n1058891.jpg\tvirgin\n1058892.jpg\tAmerica\n"
        "1240078.jpg\tATTACK\n1210236.jpg\t\n"
    )
    code, result, err = run_main(capsys, "rec", "--gt", EVAL / "rec" / "old_label.txt", "--pred", pred)
    assert code == 0, err
    assert (result["correct"], result["total"], result["word_accuracy"]) == (8, 10, 0.8)
    assert result["ned"] == pytest.approx(1 - (1 / 5 + 1) / 10)  # H0TEL vs hotel: 1/5; empty vs davidson: 1
    bad = tmp_path / "bad.tsv"
    bad.write_text("1223731.jpg\tgrand\n1223733.jpg hotel\n")
    code, _, err = run_main(capsys, "rec", "--gt", EVAL / "rec" / "old_label.txt", "--pred", bad)
    assert code == 2 and "bad.tsv:2:" in err


def test_e2e_cli_with_lexicon_dir(tmp_path, capsys):
    gt, pred, lex = tmp_path / "gt", tmp_path / "pred", tmp_path / "lex"
    for d in (gt, pred, lex):
        d.mkdir()
    (gt / "gt_img_1.txt").write_text(
        "0,0,10,0,10,10,0,10,Hello\n20,0,30,0,30,10,20,10,World\n40,0,50,0,50,10,40,10,###\n"
    )
    (pred / "res_img_1.txt").write_text("0,0,10,0,10,10,0,10,HELLQ\n20,0,30,0,30,10,20,10,WXRLQ\n")
    (lex / "ch4_test_vocabulary_new.txt").write_text("HELLO\nWORLD\n")
    (lex / "ch4_test_vocabulary_pair_list.txt").write_text("HELLO Hello\nWORLD World\n")
    code, raw, _ = run_main(capsys, "e2e", "--gt", gt, "--pred", pred, "--lexicon", "none")
    assert code == 0 and (raw["matched"], raw["gt_care"], raw["det_care"]) == (0, 2, 2)
    assert raw["detection"]["hmean"] == 1.0 and raw["protocol"] == "icdar2015"
    args = ("e2e", "--gt", gt, "--pred", pred, "--lexicon", "weak", "--lexicon-dir", lex)
    code, weak, _ = run_main(capsys, *args)
    assert (weak["matched"], weak["det_care"], weak["dropped_by_lexicon"]) == (1, 1, 1)
    code, testr, _ = run_main(capsys, *args, "--lexicon-policy", "testr")
    assert (testr["matched"], testr["det_care"], testr["lexicon_policy"]) == (2, 2, "testr")  # WXRLQ: distance 2
    code, _, err = run_main(capsys, "e2e", "--gt", gt, "--pred", pred, "--lexicon", "strong", "--lexicon-dir", lex)
    assert code == 2 and "new_voc_img_1.txt: lexicon file not found" in err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["e2e", "--help"])
    text = capsys.readouterr().out
    for option in ("--lexicon-dir", "--mode", "--lexicon-policy", "--protocol", "--strict", "--per-image"):
        assert option in text
