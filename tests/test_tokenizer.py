"""CLIP BPE tokenizer on the fixture vocabulary: merges, lower-casing, both padding styles, length errors."""

import json

import numpy as np
import pytest
from conftest import DATA

from clip_text_spot.models.clip.tokenizer import CLIPTokenizer, openai_vocab

VOCAB_DIR = DATA / "clip" / "hf_flax_clip_tiny"
V = json.loads((VOCAB_DIR / "vocab.json").read_text())
SOT, EOT = V["<|startoftext|>"], V["<|endoftext|>"]


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer(str(VOCAB_DIR), context_length=8)


def test_merges_and_lowercase(tok):
    # merges.txt: t+e, x+t</w>, te+xt</w>, t+h, th+e</w>, i+n
    assert tok.encode("The TEXT") == [V["the</w>"], V["text</w>"]]
    assert tok.encode("in") == [V["i"], V["n</w>"]]  # "i n" merges only when n is not word-final
    assert tok.encode("tinx") == [V["t"], V["in"], V["x</w>"]]
    assert tok.encode("a,") == [V["a</w>"], V[",</w>"]]  # the regex splits punctuation into its own word


def test_openai_padding(tok):
    out = tok(["the text", "the"], padding="openai")
    np.testing.assert_array_equal(
        out["input_ids"],
        [[SOT, V["the</w>"], V["text</w>"], EOT, 0, 0, 0, 0], [SOT, V["the</w>"], EOT, 0, 0, 0, 0, 0]],
    )
    np.testing.assert_array_equal(out["attention_mask"][1], [1, 1, 1, 0, 0, 0, 0, 0])
    assert out["input_ids"].dtype == np.int32


def test_hf_padding(tok):
    out = tok("the", padding="hf", context_length=5)
    np.testing.assert_array_equal(out["input_ids"], [[SOT, V["the</w>"], EOT, EOT, EOT]])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 0, 0]])


def test_too_long(tok):
    with pytest.raises(ValueError, match="more than the context length 4"):
        tok("the text the text", context_length=4)
    out = tok("the text the text", context_length=4, truncate=True)
    np.testing.assert_array_equal(out["input_ids"], [[SOT, V["the</w>"], V["text</w>"], EOT]])


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer(str(tmp_path))
    with pytest.raises(ValueError, match="padding"):
        CLIPTokenizer(str(VOCAB_DIR))("the", padding="left")


def test_bundled_openai_vocabulary():
    """Ids OpenAI's clip.tokenize gives (CLIP README example; TCM's prompt is exactly its context length 14)."""
    tok = CLIPTokenizer(context_length=77)
    assert tok.vocab_size == 49408 and (tok.sot_id, tok.eot_id) == (49406, 49407)
    np.testing.assert_array_equal(
        tok("a photo of a cat")["input_ids"][0, :7], [49406, 320, 1125, 539, 320, 2368, 49407]
    )
    tcm = tok("the pixels of many arbitrary-shape text instances.", context_length=14)["input_ids"][0]
    assert tcm[0] == 49406 and tcm[-1] == 49407 and (tcm != 0).all()
    # DPTR's prompt: CLIP's regex takes "'s" as a contraction before the word ("'sale'" -> 's, ale, ')
    vocab, _ = openai_vocab()
    assert tok.encode("a photo of a 'sale'")[-3:] == [vocab["'s</w>"], vocab["ale</w>"], vocab["'</w>"]]
