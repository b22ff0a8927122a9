"""Official TCM / FastTCM import against the tcm_tiny fixture (made with the official TCM modules and checkpoint names).

``reference.npz`` holds the official modules' outputs for both variants (FastTCM = the official ``is_v2`` path with
BSM's projection set to the identity, i.e. the paper form); every intermediate must match within 1e-5.
"""

import json

import numpy as np
import pytest
from conftest import DATA
from flax import nnx
from safetensors.numpy import load_file

from clip_text_spot.models.clip import CheckpointMismatchError
from clip_text_spot.models.fasttcm import from_official_tcm, split_official_state

TINY = DATA / "tcm_tiny"
CKPT = str(TINY / "tcm_tiny.safetensors")
KEYS = [
    "c2",
    "c3",
    "c4",
    "c5",
    "global_feat",
    "local_feat",
    "prompt_gen",
    "text_from_encoder",
    "text_after_bsm",
    "visual_after_vpg",
    "text_final",
    "score_map",
]


@pytest.fixture(scope="module")
def ref():
    return np.load(TINY / "reference.npz")


def _load(source, fast: bool, ref, **kw):
    heads = json.loads((TINY / "config.json").read_text())
    return from_official_tcm(
        source,
        fast=fast,
        text_heads=heads["text_heads"],
        decoder_heads=heads["dec_heads"],
        prompt_ids=ref["texts"],
        **kw,
    )


_match = nnx.jit(lambda m, x: m.match(x))


@nnx.jit
def _fast_run(model, images):
    """FastTCM outputs with and without the text cache (one compilation)."""
    cache = model.precompute_text()
    return model.match(images), model.match(images, text_cache=cache), cache


@pytest.fixture(scope="module")
def fast(ref):
    model = _load(CKPT, True, ref)
    return model, _fast_run(model, ref["image_nhwc"])


def _check_all(out, ref, prefix):
    for key in KEYS:
        np.testing.assert_allclose(np.asarray(out[key]), ref[prefix + key], atol=1e-5, rtol=0, err_msg=key)


def test_every_tcm_intermediate_matches_official(ref):
    model = _load(CKPT, False, ref)
    cfg = model.config
    assert (cfg.n_ctx, cfg.prompt_length, cfg.grid, cfg.vpg.layers, cfg.vpg.width, cfg.fast) == (4, 10, 4, 2, 16, False)
    _check_all(_match(model, ref["image_nhwc"]), ref, "tcm_")


def test_every_fasttcm_intermediate_matches_official(ref, fast):
    _check_all(fast[1][0], ref, "fasttcm_")
    # BSM changes the text; TCM has none
    assert np.abs(ref["fasttcm_text_after_bsm"] - ref["fasttcm_text_from_encoder"]).max() > 0.1


def test_visual_prompt_generator_output_recovered_from_fixture(ref, fast):
    """(visual_after_vpg - local_feat) / vis_gamma is the official decoder's raw output: a tight check of the decoder
    (4 heads; 1, 2 or 8 heads miss by > 2e-6) that the 1e-5 end-to-end tolerance alone would not give."""
    model = fast[0]
    expected = (ref["tcm_visual_after_vpg"] - ref["tcm_local_feat"]) / float(model.vis_gamma[...])
    pixels = ref["tcm_local_feat"].reshape(2, -1, 64)
    got = model.visual_prompt_generator(pixels, ref["tcm_text_after_bsm"])
    np.testing.assert_allclose(np.asarray(got).reshape(expected.shape), expected, atol=1e-6, rtol=0)


def test_fasttcm_text_cache_skips_the_text_tower_with_same_outputs(ref, fast):
    model, (full, cached, cache) = fast
    assert cache.shape == (1, 1, 64)
    np.testing.assert_allclose(cache[0], ref["fasttcm_text_from_encoder"][0], atol=1e-5)
    for key in KEYS:
        np.testing.assert_allclose(np.asarray(cached[key]), np.asarray(full[key]), atol=1e-6, rtol=0, err_msg=key)
    # the cached path really does not read the text tower: with its weights wrecked, only the uncached path changes
    wrecked = _load(CKPT, True, ref)
    wrecked.text_encoder.text_model.final_layer_norm.scale[...] = 0.0
    with_cache = nnx.jit(lambda m, x, t: m.match(x, text_cache=t)["score_map"])
    np.testing.assert_allclose(with_cache(wrecked, ref["image_nhwc"], cache), cached["score_map"], atol=1e-6, rtol=0)
    assert np.abs(np.asarray(_fast_run(wrecked, ref["image_nhwc"])[0]["score_map"]) - full["score_map"]).max() > 1e-3


def test_neck_and_head_tensors_are_returned_not_rejected(ref):
    sd = load_file(CKPT)
    sd["neck.lateral_convs.0.conv.weight"] = np.ones((4, 32, 1, 1), np.float32)
    sd["bbox_head.binarize.0.weight"] = np.ones((2, 4, 3, 3), np.float32)
    matcher_sd, extra = split_official_state(sd)
    assert sorted(extra) == ["bbox_head.binarize.0.weight", "neck.lateral_convs.0.conv.weight"]
    assert "contexts" in matcher_sd and not any(k.startswith(("neck.", "bbox_head.")) for k in matcher_sd)
    model = _load(sd, True, ref)
    np.testing.assert_allclose(
        np.asarray(_match(model, ref["image_nhwc"])["score_map"]), ref["fasttcm_score_map"], atol=1e-5
    )


def test_missing_and_unexpected_tensors_are_named(ref):
    sd = load_file(CKPT)
    missing = {k: v for k, v in sd.items() if k != "context_decoder.decoder.1.norm2.weight"}
    with pytest.raises(CheckpointMismatchError, match="context_decoder/decoder/1/norm2/scale"):
        _load(missing, False, ref)
    with pytest.raises(CheckpointMismatchError, match="stray_head.weight"):
        _load({**sd, "stray_head.weight": np.zeros(3, np.float32)}, False, ref)
    with pytest.raises(CheckpointMismatchError, match="text_encoder.transformer.resblocks.0.attn.bias_k"):
        _load({**sd, "text_encoder.transformer.resblocks.0.attn.bias_k": np.zeros(3, np.float32)}, False, ref)
    with pytest.raises(CheckpointMismatchError, match="meta_query"):
        _load({k: v for k, v in sd.items() if k != "meta_query"}, True, ref)
    with pytest.raises(CheckpointMismatchError, match="pix_w"):  # the released code's [1024, 512] BSM projection
        _load({**sd, "pix_w": np.ones((64, 32), np.float32)}, True, ref)


def test_pickle_refused_with_conversion_help(tmp_path):
    path = tmp_path / "tcm_ic15.pth"
    path.write_bytes(b"not opened")
    with pytest.raises(ValueError, match="safetensors") as err:
        from_official_tcm(str(path))
    assert "never unpickles" in str(err.value)


def test_default_prompt_needs_openai_vocabulary():
    with pytest.raises(ValueError, match="prompt_ids"):
        from_official_tcm(CKPT, fast=False, text_heads=4)
