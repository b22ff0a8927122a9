"""DPTR pre-training text: sources (wordfreq, LMDB labels, text files), label filtering, prompts, text cache."""

import numpy as np
import pytest
from conftest import DATA

from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.dptr.data import PretrainTransform
from clip_text_spot.dptr.text_cache import TextMemoryCache, open_or_build_text_cache
from clip_text_spot.dptr.text_sources import WordfreqText, open_text_source
from clip_text_spot.models.clip.tokenizer import CLIPTokenizer
from clip_text_spot.models.dptr.pretrain import prompt_ids


def test_wordfreq_source_is_deterministic_and_splits_differ():
    train = open_text_source("wordfreq", split="train", seed=0, num_samples=50, vocab_size=200)
    again = WordfreqText(50, split="train", seed=0, vocab_size=200)
    labels = [train[i] for i in range(50)]
    assert labels == [again[i] for i in range(50)] and len(train) == 50
    assert labels != [open_text_source("wordfreq", split="eval", num_samples=50, vocab_size=200)[i] for i in range(50)]
    assert all(1 <= len(x) <= 25 for x in labels)
    with pytest.raises(IndexError):
        train[50]


def test_wordfreq_other_language_with_its_charset():
    chars = "abcdefghijklmnopqrstuvwxyzàâçéèêëîïôûùüÿœ'"
    source = open_text_source("wordfreq:fr", num_samples=200, vocab_size=300, charset=chars,
                              kind_weights=(1, 0, 0, 0, 0))  # fmt: skip
    labels = [source[i] for i in range(200)]
    assert any(set(x) & set("àâçéèêëîïôûùüÿœ") for x in labels) and all(set(x) <= set(chars) for x in labels)
    charset = Charset(chars, unicode_to_ascii=False)
    assert charset.filter_label("été") == "été"  # accents kept when NFKD-ASCII is off


def test_lmdb_and_file_sources(tmp_path):
    lmdb = open_text_source(f"lmdb:{DATA / 'readers' / 'rec_toy' / 'imgs.lmdb'}")
    assert len(lmdb) == 10 and {lmdb[i] for i in range(10)} >= {"GRAND", "HOTEL", "03/09/2009"}
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffhello\r\n\nwörld 2\n".encode())
    assert list(open_text_source(f"file:{path}")) == ["hello", "wörld 2"]
    with pytest.raises(ValueError, match="expected 'wordfreq"):
        open_text_source("words.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt is not a file"):
        open_text_source(f"file:{tmp_path / 'nope.txt'}")


def test_pretrain_rows_filter_labels_and_tokenise_the_prompt():
    charset = Charset()
    transform = PretrainTransform(charset, 77)
    row = transform("  Café au\tlait ")
    assert charset.decode(row["label"]) == "Cafeaulait" and row["label"][0] == charset.BOS
    tok = CLIPTokenizer()
    ref = tok("a photo of a 'Cafeaulait'", padding="openai")["input_ids"][0]
    np.testing.assert_array_equal(row["clip_ids"], ref)
    assert row["clip_ids"].dtype == np.int32 and row["clip_ids"][-1] == 0  # OpenAI zero padding
    assert transform("x" * 26) is None  # longer than 25 characters
    assert transform(" \t") is None
    assert charset.decode(transform("a€b")["label"]) == "ab"  # characters outside the charset are deleted


def test_prompt_keeps_clips_contraction_quirk():
    tok = CLIPTokenizer()
    ids = prompt_ids(tok, ["sale"])[0]
    tokens = tok._tok.convert_ids_to_tokens([int(i) for i in ids if i][1:-1])
    assert tokens == ["a</w>", "photo</w>", "of</w>", "a</w>", "'s</w>", "ale</w>", "'</w>"]


def test_text_cache_build_reuse_and_mismatch(tmp_path):
    calls = []

    def encode(labels):
        calls.append(list(labels))
        return np.stack([np.full((3, 2), len(x), np.float32) for x in labels])

    path = tmp_path / "cache.npy"
    meta = {"clip": {"seed": 1, "dims": (3, 2)}}
    cache = open_or_build_text_cache(path, ["ab", "abc", "ab", "x"], encode, shape=(3, 2), meta=meta, batch_size=2)
    assert calls == [["ab", "abc"], ["x"]]  # unique labels, in batches
    np.testing.assert_array_equal(cache["abc"], np.full((3, 2), 3, np.float16))
    again = open_or_build_text_cache(path, ["ab", "abc", "x"], encode, shape=(3, 2), meta=meta)
    assert len(calls) == 2 and again.labels == ["ab", "abc", "x"]  # reused, not rebuilt
    with pytest.raises(ValueError, match="other labels or another CLIP"):
        open_or_build_text_cache(path, ["ab"], encode, shape=(3, 2), meta=meta)
    with pytest.raises(KeyError, match="not in the text cache"):
        TextMemoryCache(path)["zzz"]
    row = PretrainTransform(Charset(), 77, TextMemoryCache(path))("ab")
    assert sorted(row) == ["label", "memory"] and row["memory"].shape == (3, 2)
