"""Recognition labels: charset order and token ids, PARSeq-style filtering, fixed-length targets."""

import numpy as np
import pytest

from clip_text_spot.data.rec_labels import EN_CHARSET, LOWER_ALNUM_CHARSET, Charset, normalize_label


def test_english_charset_order_and_special_ids():
    cs = Charset()
    assert len(EN_CHARSET) == 94
    # EN_symbol_dict order: digits, lowercase, uppercase, then ASCII punctuation from '!' to '~'.
    assert EN_CHARSET[:10] == "0123456789"
    assert EN_CHARSET[10:36] == "abcdefghijklmnopqrstuvwxyz"
    assert EN_CHARSET[36:62] == "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert EN_CHARSET[62:] == "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())
    assert (cs.EOS, cs.BOS, cs.PAD) == (0, 95, 96)
    assert (cs.num_tokens, cs.num_classes, cs.target_len) == (97, 95, 27)
    ids = cs.encode("0aA!~")[1:6]
    assert ids.tolist() == [1, 11, 37, 63, 94]


def test_normalize_nfkd_ascii_and_whitespace():
    assert normalize_label("Café  déjà\tvu\n") == "Cafedejavu"
    assert normalize_label("ﬁ²") == "fi2"  # compatibility decompositions
    assert normalize_label("€uro") == "uro"  # no ASCII decomposition: dropped
    assert normalize_label("Café", unicode_to_ascii=False) == "Café"


def test_filter_label_length_is_checked_before_the_charset_filter():
    cs = Charset()
    assert cs.filter_label("a" * 25) == "a" * 25
    assert cs.filter_label("a" * 26) is None
    assert cs.filter_label("a " * 25) == "a" * 25  # whitespace removed first
    # 25 letters + a control character: 26 characters when the length is checked (PARSeq order), so dropped ...
    assert cs.filter_label("a" * 25 + "\x01") is None
    # ... while a shorter label only loses the unsupported character.
    assert cs.filter_label("ab\x01c") == "abc"
    assert cs.filter_label(b"bytes") == "bytes"
    assert cs.filter_label("") is None
    assert cs.filter_label(" \t ") is None


def test_charset_adapter_case_folding_and_removal():
    lower = Charset(LOWER_ALNUM_CHARSET)
    assert lower.filter_label("Hello, World!") == "helloworld"
    assert lower.filter_label("!!!") is None  # empty after adaptation
    upper = Charset("ABC")
    assert upper.filter_label("abcd") == "ABC"
    assert Charset().filter_label("MiXeD") == "MiXeD"  # mixed-case charset keeps case


def test_encode_layout_and_decode_round_trip():
    cs = Charset()
    target = cs.encode("ab")
    assert target.dtype == np.int32 and target.shape == (27,)
    assert target[:4].tolist() == [95, 11, 12, 0]
    assert np.all(target[4:] == 96)
    rng = np.random.default_rng(0)
    for n in [1, 7, 25]:
        label = "".join(rng.choice(list(EN_CHARSET), size=n))
        assert cs.decode(cs.encode(label)) == label
    assert cs.decode(cs.encode("")) == ""
    # predictions: no BOS, stop at the first EOS
    assert cs.decode([11, 12, 0, 13]) == "ab"
    assert cs.decode([11, 12, 13]) == "abc"


def test_encode_decode_errors_name_the_problem():
    cs = Charset()
    with pytest.raises(ValueError, match="max_len=25"):
        cs.encode("a" * 26)
    with pytest.raises(ValueError, match="outside the charset"):
        cs.encode("a b")
    with pytest.raises(ValueError, match="token id 97"):
        cs.decode([97])
    with pytest.raises(ValueError, match="repeated"):
        Charset("aab")
    with pytest.raises(ValueError, match="max_len"):
        Charset(max_len=0)
