"""End-to-end spotting: RRC E2E / word-spotting rules (eval_data.md §2.1, §2.4) and lexicon correction, with
hand-made cases and the real ICDAR2015 test ground truth."""

import numpy as np
import pytest
from conftest import DATA

from clip_text_spot.metrics.detection import Counts, DetProtocol
from clip_text_spot.metrics.spotting import (
    Lexicon,
    LexiconMatcher,
    apply_lexicon,
    clean_wordspotting_word,
    evaluate_spotting,
    in_wordspotting_dictionary,
    lexicon_provider,
    load_lexicon,
    transcription_match,
)
from clip_text_spot.metrics.submission_io import TextInstances, load_annotations


def box(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def inst(polys, texts):
    return TextInstances([np.asarray(p, float) for p in polys], list(texts), np.array([t == "###" for t in texts]))


def spot(gt, det, **kw):
    return evaluate_spotting({1: gt}, {1: det}, **kw)


def test_identity_on_real_ic15_ground_truth():
    gts = load_annotations(DATA / "eval" / "ic15_test_gt.zip", fmt="icdar2015", role="gt", with_text=True).items
    r = evaluate_spotting(gts, gts, protocol=DetProtocol(int_coords=True))
    assert r.e2e == Counts(2077, 2077, 2077)
    assert r.detection == Counts(2077, 2077, 2077)
    assert r.summary()["hmean"] == 1.0


def test_misread_counts_for_detection_only_and_is_not_rematched():
    gt = inst([box(0, 0, 10, 10), box(20, 0, 30, 10)], ["HELLO", "WORLD"])
    r = spot(gt, inst([box(0, 0, 10, 10), box(20, 0, 30, 10)], ["hello", "WORLF"]))
    assert r.e2e == Counts(1, 2, 2) and r.detection == Counts(2, 2, 2)
    assert r.per_image[1]["pairs"] == [[0, 0, True], [1, 1, False]]
    # the first eligible detection (misread, IoU 0.9) takes the ground truth; the correct one is a false positive
    r = spot(inst([box(0, 0, 10, 10)], ["HELLO"]), inst([box(1, 0, 10, 10), box(0, 0, 10, 10)], ["XX", "HELLO"]))
    assert r.e2e == Counts(0, 1, 2) and r.detection == Counts(1, 1, 2)


def test_end_to_end_special_characters():
    assert transcription_match("HELLO!", "HELLO") and transcription_match("(HI)", "HI")
    assert transcription_match("(HI)", "HI)") and transcription_match("HI", "HI")
    assert not transcription_match("HELLO", "HELLO!")  # only the ground truth is trimmed
    assert not transcription_match("!!HI", "HI")  # one character per side
    assert not transcription_match("", "")
    r = spot(inst([box(0, 0, 10, 10)], ["Hello!"]), inst([box(0, 0, 10, 10)], ["hello"]))
    assert r.e2e.matched == 1


def test_word_spotting_rules():
    assert clean_wordspotting_word("Joe's") == "Joe" and clean_wordspotting_word("-(ab)c-") == "ab c"
    assert in_wordspotting_dictionary("Joe's")  # "Joe" after the final 's is dropped: 3 letters
    assert in_wordspotting_dictionary("Café") and in_wordspotting_dictionary("well-known")
    assert not in_wordspotting_dictionary("2014") and not in_wordspotting_dictionary("ab")
    assert not in_wordspotting_dictionary("NEW YORK") and not in_wordspotting_dictionary("a×b")
    gt = inst([box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)], ["Jones's", "2014", "HOTEL."])
    det = inst([box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)], ["JONES", "2014", "HOTEL."])
    ws = spot(gt, det, word_spotting=True)
    # "2014" is don't-care for the end-to-end score and its detection is ignored; "HOTEL." != cleaned "HOTEL"
    assert ws.e2e == Counts(1, 2, 2) and ws.detection == Counts(3, 3, 3)
    e2e = spot(gt, det)
    assert e2e.e2e == Counts(2, 3, 3)  # end-to-end mode: "JONES" != "JONES'S", "2014" and "HOTEL." match


def test_word_spotting_identity_on_cleaned_words():
    texts = ["Joe's", "12", "###", "Hotel", "ab"]
    polys = [box(20 * i, 0, 20 * i + 10, 10) for i in range(5)]
    det = inst(polys, [clean_wordspotting_word(t) for t in texts])
    r = spot(inst(polys, texts), det, word_spotting=True)
    assert r.e2e == Counts(2, 2, 2)  # "Joe" and "Hotel" are cared for; the rest become don't-care
    assert r.detection == Counts(4, 4, 4)


def test_invalid_and_float_detections():
    gt = inst([box(0, 0, 10, 10)], ["A"])
    bowtie = inst([[(0, 0), (10, 10), (10, 0), (0, 10)], box(0, 0, 10, 10)], ["A", "A"])
    r = spot(gt, bowtie)
    assert r.stats["invalid_det_dropped"] == 1 and r.e2e == Counts(1, 1, 1)
    assert r.per_image[1]["pairs"] == [[0, 1, True]]  # indices in file order
    near = inst([box(3.9, 0, 13.9, 10)], ["A"])  # int-cast 3..13: IoU 0.54; float: 0.44
    assert spot(gt, near).e2e.matched == 1 and spot(gt, near, float_coords=True).e2e.matched == 0


def test_lexicon_best_match_and_policies():
    lex = Lexicon(["CATS", "BAT", "HELLO", "WORLD"], {"HELLO": "Hello"})
    assert lex.best("hello") == ("Hello", 0)
    assert lex.best("CAT") == ("CATS", 1)  # ties: first in lexicon order, across lengths
    assert lex.best("HELLQ") == ("Hello", 1)
    assert Lexicon([], {}).best("X") == ("", 100)
    deepsolo, weak = LexiconMatcher("weak", "deepsolo"), LexiconMatcher("weak", "testr")
    assert deepsolo("HELLQ", lex) == "Hello" and deepsolo("HXLLQ", lex) is None  # distance 2 >= 1.5
    assert weak("HXLLQ", lex) == "Hello" and weak("HXXLQ", lex) is None  # distance 3 >= 2.5
    assert LexiconMatcher("generic", "testr")("HXXXX", lex) == "Hello"
    assert LexiconMatcher("full", "testr")("QQQQQQQQ", lex) is not None
    with pytest.raises(ValueError, match="unknown lexicon policy"):
        LexiconMatcher("weak", "other")


def test_lexicon_correction_changes_end_to_end(tmp_path):
    gt = inst([box(0, 0, 10, 10), box(20, 0, 30, 10)], ["Hello", "World"])
    det = {1: inst([box(0, 0, 10, 10), box(20, 0, 30, 10)], ["HELLQ", "QQQQQ"])}
    assert evaluate_spotting({1: gt}, det).e2e == Counts(0, 2, 2)
    corrected, dropped = apply_lexicon(det, LexiconMatcher("weak"), lambda key: Lexicon(["HELLO", "WORLD"], {}))
    assert dropped == 1 and corrected[1].texts == ["HELLO"]
    assert evaluate_spotting({1: gt}, corrected).e2e == Counts(1, 2, 1)


def test_lexicon_files(tmp_path):
    (tmp_path / "weak_voc_new.txt").write_text("NEW YORK\nHOTEL\n")
    (tmp_path / "weak_voc_pair_list.txt").write_text("NEW YORK New York\nHOTEL Hotel\n")
    first = load_lexicon(tmp_path / "weak_voc_new.txt", tmp_path / "weak_voc_pair_list.txt")
    half = load_lexicon(tmp_path / "weak_voc_new.txt", tmp_path / "weak_voc_pair_list.txt", pair_split="half")
    assert first.pairs["NEW"] == "YORK New York" and half.pairs["NEW YORK"] == "New York"
    assert half.best("new york") == ("New York", 0) and first.best("NEW YORK") == ("NEW YORK", 0)
    strong = tmp_path / "new_strong_lexicon"
    strong.mkdir()
    (strong / "new_voc_img_4.txt").write_text("STOP\n")
    provider = lexicon_provider("strong", tmp_path)
    assert provider(4).words == ["STOP"] and provider(4).pairs == {}
    assert lexicon_provider("full", tmp_path, policy="testr")(1).pairs["NEW YORK"] == "New York"
    with pytest.raises(ValueError, match="lexicon file not found"):
        provider(5)
