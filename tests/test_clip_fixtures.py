"""Parity with outputs of the original implementations, stored as fixtures (float32, <= 1e-5)."""

import numpy as np
import pytest
from conftest import DATA

from clip_text_spot.models.clip import l2_normalize, load_pretrained

HF = DATA / "clip" / "hf_flax_clip_tiny"
OPENAI_RN = DATA / "clip" / "openai_clip_rn_tiny"
TOL = 1e-5


def nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def hf_model():
    return load_pretrained(str(HF)), np.load(HF / "reference.npz")


@pytest.fixture(scope="module")
def rn_model():
    return load_pretrained(str(OPENAI_RN)), np.load(OPENAI_RN / "reference.npz")


def test_hf_flax_fixture_matches_flax_clip(hf_model):
    """transformers 4.57.6 FlaxCLIPModel outputs (its image/text embeds are L2-normalised)."""
    model, ref = hf_model
    px = nhwc(ref["pixel_values"])
    ids, mask = ref["input_ids"], ref["attention_mask"]
    np.testing.assert_allclose(l2_normalize(model.encode_image(px)), ref["image_embeds"], atol=TOL)
    np.testing.assert_allclose(l2_normalize(model.encode_text(ids, mask)), ref["text_embeds"], atol=TOL)
    np.testing.assert_allclose(model.text_hidden_states(ids, mask), ref["text_last_hidden"], atol=TOL)
    hidden, _ = model.vision_model(px)
    np.testing.assert_allclose(hidden, ref["vision_last_hidden"], atol=TOL)
    logits_per_image, logits_per_text = model(px, ids, mask)
    np.testing.assert_allclose(logits_per_image, ref["logits_per_image"], rtol=TOL, atol=TOL)
    np.testing.assert_allclose(logits_per_text, ref["logits_per_image"].T, rtol=TOL, atol=TOL)


def test_openai_rn_fixture_matches_openai_code(rn_model):
    """OpenAI's own ModifiedResNet CLIP: embeddings (projected, unnormalised), logits, layer1-4 features."""
    model, ref = rn_model
    px = nhwc(ref["pixel_values"])
    np.testing.assert_allclose(model.encode_image(px), ref["image_embeds"], atol=TOL)
    np.testing.assert_allclose(model.encode_text(ref["input_ids"]), ref["text_embeds"], atol=TOL)
    logits_per_image, _ = model(px, ref["input_ids"])
    np.testing.assert_allclose(logits_per_image, ref["logits_per_image"], rtol=TOL, atol=TOL)


def test_encode_text_cuts_after_the_last_pooled_token(rn_model, monkeypatch):
    """Rows 0 and 2 of the fixture end at positions 6 and 3 of 12: ``encode_text`` runs them on 8 tokens (the causal
    mask keeps later tokens from the pooled one) and still matches OpenAI's full-length outputs."""
    from clip_text_spot.models.clip.model import TEXT_LENGTH_BUCKET

    model, ref = rn_model
    ids = ref["input_ids"][[0, 2]]
    assert ids.shape[1] > TEXT_LENGTH_BUCKET >= ids.argmax(-1).max() + 1
    shapes, full = [], type(model)._encode_text
    monkeypatch.setattr(type(model), "_encode_text", lambda m, i, a=None: shapes.append(i.shape) or full(m, i, a))
    np.testing.assert_allclose(model.encode_text(ids), ref["text_embeds"][[0, 2]], atol=TOL)
    assert shapes == [(2, TEXT_LENGTH_BUCKET)]


def test_openai_rn_features_on_larger_non_square_input(rn_model):
    model, ref = rn_model
    feats = model.vision_model.features(nhwc(ref["pixel_values_big"]))
    assert len(feats) == 4
    for i, f in enumerate(feats):
        np.testing.assert_allclose(f, nhwc(ref[f"big_layer{i + 1}"]), atol=TOL, err_msg=f"layer{i + 1}")
