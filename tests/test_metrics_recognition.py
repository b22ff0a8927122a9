"""Recognition metrics: label conventions (PARSeq / OpenOCR / mmocr), NED, label-file readers (real mmocr and PARSeq
labels), with hand-computed expectations."""

import json

import lmdb
import pytest
from conftest import DATA

from clip_text_spot.metrics.recognition import (
    LabelNormalizer,
    evaluate_recognition,
    levenshtein,
    levenshtein_many,
    normalized_edit_distance,
    read_labels,
    rekey,
)
from clip_text_spot.metrics.submission_io import MalformedInputError

REC = DATA / "eval" / "rec"


def test_levenshtein_hand_values():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3 and levenshtein("", "") == 0
    assert levenshtein_many("HOTEL", ["HOTEL", "HOSTEL", "MOTE", "", "LETOH"]).tolist() == [0, 1, 2, 5, 4]
    assert normalized_edit_distance("chevrol", "chevron") == pytest.approx(1 / 7)
    assert normalized_edit_distance("", "a") == 1.0 and normalized_edit_distance("", "") == 0.0


def test_parseq_convention():
    r = evaluate_recognition({"a": "hello", "b": "CHEVRON"}, {"a": "Hello!", "b": "chevrol"})
    s = r.summary()
    assert (s["correct"], s["total"]) == (1, 2)
    assert s["word_accuracy"] == 0.5
    assert s["ned"] == pytest.approx(1 - (0 + 1 / 7) / 2)
    assert s["mean_ned"] == pytest.approx((1 / 7) / 2)
    norm = LabelNormalizer("parseq")
    assert norm.gt("Café au lait") == ("cafeaulait", "")  # whitespace removed, NFKD to ASCII, lower-cased
    assert norm.gt("x" * 26) == (None, "long")  # skipped before charset filtering
    assert norm.gt("!!!") == (None, "empty")
    assert norm.pred("Café") == "caf"  # no NFKD on predictions
    assert LabelNormalizer("parseq-cased").gt("Hello!") == ("Hello", "")
    assert LabelNormalizer("parseq-punct").gt("Hello!") == ("Hello!", "")


def test_skips_and_missing_are_counted():
    gt = {"long": "y" * 30, "empty": "---", "kept": "Word", "lost": "abc"}
    r = evaluate_recognition(gt, {"kept": "WORD", "ghost": "x"}).summary()
    assert (r["total"], r["correct"], r["skipped_long"], r["skipped_empty"], r["missing"], r["extra"]) == (
        2,
        1,
        1,
        1,
        1,
        1,
    )
    assert r["ned"] == pytest.approx(0.5)  # "" vs "abc" has NED 1


def test_other_conventions():
    gt, pred = {"a": "Café", "b": "!!!", "c": "a^b"}, {"a": "cafe", "b": "", "c": "AB"}
    openocr = evaluate_recognition(gt, pred, normalizer=LabelNormalizer("openocr")).summary()
    assert (openocr["correct"], openocr["total"]) == (2, 3)  # "caf" != "cafe"; "" == ""; "ab" == "ab"
    mmocr = evaluate_recognition(gt, pred, normalizer=LabelNormalizer("mmocr")).summary()
    assert mmocr["correct"] == 1  # mmocr keeps 'é' (dropped: not in its class) -> "caf"; keeps a literal '^'
    exact = evaluate_recognition({"a": "Word"}, {"a": "word"}, normalizer=LabelNormalizer("mmocr-exact")).summary()
    ignore = evaluate_recognition({"a": "Word"}, {"a": "word"}, normalizer=LabelNormalizer("mmocr-ignore-case"))
    assert exact["correct"] == 0 and ignore.summary()["correct"] == 1
    chars = evaluate_recognition({"a": "hello"}, {"a": "hell"}).summary()
    assert (chars["char_precision"], chars["char_recall"]) == (1.0, 0.8)
    with pytest.raises(ValueError, match="unknown convention"):
        LabelNormalizer("nope")


def test_real_mmocr_labels_perfect_prediction():
    old = read_labels(REC / "old_label.txt")
    assert old == read_labels(REC / "labels.json")  # the two official mmocr formats agree
    assert old["1036169.jpg"] == "03/09/2009" and len(old) == 10
    r = evaluate_recognition(old, old)
    assert r.summary()["word_accuracy"] == 1.0 and r.summary()["ned"] == 1.0
    normalized = {name: gt for name, gt, _, _ in r.per_sample}
    assert normalized["1036169.jpg"] == "03092009" and normalized["1058891.jpg"] == "virgin"
    assert normalized["1223731.jpg"] == "grand"


def test_tsv_jsonl_lmdb_and_matching(tmp_path):
    demo = read_labels(REC / "parseq_demo_labels.tsv")
    assert demo["uber-27491.jpg"] == "3rdAve" and len(demo) == 6
    preds = tmp_path / "pred.jsonl"
    preds.write_text("".join(json.dumps({"filename": f"imgs/{k}", "text": v.lower()}) + "\n" for k, v in demo.items()))
    r = evaluate_recognition(rekey(demo, "basename", "gt"), rekey(read_labels(preds), "basename", "pred"))
    assert r.summary()["word_accuracy"] == 1.0
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"num-samples", b"2")
        txn.put(b"label-000000001", b"GRAND")
        txn.put(b"label-000000002", "Café".encode())
    env.close()
    assert read_labels(tmp_path / "db") == {"image-000000001": "GRAND", "image-000000002": "Café"}


def test_malformed_label_files(tmp_path):
    bad = tmp_path / "labels.tsv"
    bad.write_text("a.jpg\tA\nb.jpg B\n")
    with pytest.raises(MalformedInputError, match=r"labels\.tsv:2: expected 'name<TAB>text'"):
        read_labels(bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("a.jpg A\n\na.jpg B\n")
    with pytest.raises(MalformedInputError, match=r"dup\.txt:3: duplicate sample name 'a\.jpg'"):
        read_labels(dup)
    broken = tmp_path / "x.json"
    broken.write_text('{"data_list": [\n{"img_path": 1}]}')
    with pytest.raises(MalformedInputError, match=r"x\.json:data_list\[0\]"):
        read_labels(broken)
    with pytest.raises(MalformedInputError, match="no such file"):
        read_labels(tmp_path / "missing.txt")
