"""Spotting pieces without models: the end-to-end scoring of spotted words (identity scores 1.0, a misread word
counts for detection but not end to end), lexicon correction, recognition confidence and crop-count buckets."""

import numpy as np
import pytest

from clip_text_spot.data.synthetic import SyntheticDetSource
from clip_text_spot.metrics.spotting import Lexicon, LexiconMatcher
from clip_text_spot.spotter import Word, _bucket, _confident_text, correct_words
from clip_text_spot.tasks.spot import spotting_metrics


@pytest.fixture(scope="module")
def scenes():
    source = SyntheticDetSource(3, split="eval", image_size=(128, 256), num_words=(2, 3))
    return [source[i] for i in range(len(source))]


def _truth(samples):
    return [[Word(np.asarray(p), 1.0, t, 1.0) for p, t in zip(s.polygons, s.texts, strict=True)] for s in samples]


def test_identity_spotting_scores_one(scenes):
    m = spotting_metrics(scenes, _truth(scenes))
    assert m["gt_words"] == sum(len(s.texts) for s in scenes) >= 5
    assert m["e2e_hmean"] == m["hmean"] == m["word_accuracy"] == 1.0


def test_a_misread_word_counts_for_detection_not_end_to_end(scenes):
    words = _truth(scenes)
    words[0][0].text = words[0][0].text + "x"
    m = spotting_metrics(scenes, words)
    n = m["gt_words"]
    assert m["hmean"] == 1.0
    assert m["e2e_precision"] == m["e2e_recall"] == pytest.approx((n - 1) / n)
    assert m["correct"] == n - 1 and m["word_accuracy"] == pytest.approx((n - 1) / n)
    words[0][0].text = words[0][0].text[:-1].upper()  # end to end ignores case
    assert spotting_metrics(scenes, words)["e2e_hmean"] == 1.0


def test_lexicon_corrects_or_drops_words():
    lexicon = Lexicon(["HELLO", "WORLD"], {"HELLO": "Hello"})
    words = [Word(np.zeros((4, 2)), 0.9, "HELLD", 0.5), Word(np.zeros((4, 2)), 0.9, "zzzzz", 0.5)]
    got = correct_words(words, LexiconMatcher("weak", "deepsolo"), lexicon)
    assert [w.text for w in got] == ["Hello"]  # distance 1 replaced; distance 5 dropped (DeepSolo keeps < 1.5)
    got = correct_words(words, LexiconMatcher("generic", "testr"), lexicon)
    assert [w.text for w in got] == ["Hello", "Hello"]  # TESTR keeps every word with the generic lexicon


def test_confidence_is_the_product_up_to_the_first_eos():
    ids = np.array([[5, 6, 0, 7], [5, 6, 7, 8]])
    probs = np.array([[0.9, 0.8, 0.5, 0.1], [0.5, 0.5, 0.5, 0.5]])
    length, conf = _confident_text(ids, probs, eos=0)
    np.testing.assert_array_equal(length, [2, 4])
    np.testing.assert_allclose(conf, [0.9 * 0.8 * 0.5, 0.5**4])


def test_crop_buckets_are_powers_of_two_up_to_the_cap():
    assert [_bucket(n, 64) for n in (0, 1, 8, 9, 33, 64, 100)] == [8, 8, 8, 16, 64, 64, 64]
