"""TESTR matching, losses, targets and inference post-processing against the official SetCriterion / matchers /
inference outputs stored in the fixture (``CTS_TESTR_FIXTURE``, default tests/data/testr_tiny; README there)."""

import functools
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from clip_text_spot.models.testr.losses import LossConfig, criterion_loss, match_all, set_criterion
from clip_text_spot.models.testr.matcher import assign_on_host, assignment_pairs, hungarian_assign
from clip_text_spot.models.testr.postprocess import decode_text, postprocess_words
from clip_text_spot.models.testr.targets import (
    batch_targets,
    ctrl_points_from_polygon,
    encode_text,
    image_targets,
)
from clip_text_spot.parallel import make_mesh

FIXTURE = pathlib.Path(os.environ.get("CTS_TESTR_FIXTURE", pathlib.Path(__file__).parent / "data" / "testr_tiny"))
RTOL = 1e-5


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6), initial=0.0))


@pytest.fixture(scope="module")
def fx():
    cfg = json.loads((FIXTURE / "config.json").read_text())
    eff = cfg["effective"]
    ref = dict(np.load(FIXTURE / "reference.npz"))
    per_image = [
        {k: ref[f"tgt_b{b}_{k}"] for k in ("ctrl_points", "boxes", "texts", "labels")} for b in range(eff["batch"])
    ]
    max_n = max(len(t["labels"]) for t in per_image) + 1  # one padded slot in every image
    return {
        "ref": ref,
        "cfg": cfg,
        "charset": "".join(chr(ord("a") + i) for i in range(eff["voc_size"] - 1)),  # the fixture's tiny dictionary
        "targets": batch_targets(per_image, max_n, pad_text=eff["pad_class"]),
        "loss_cfg": LossConfig.from_d2(cfg["d2_cfg"]["MODEL"]["TRANSFORMER"]["LOSS"]),
    }


def fixture_outputs(ref: dict, prefix: str, dec_layers: int) -> dict:
    """The official output dict from the stored predictions (``prefix`` "" for TESTR, "clip_" for TESTR-CLIP)."""

    def head(p):
        return {f"pred_{k}": ref[f"{prefix}{p}pred_{k}"] for k in ("logits", "ctrl_points", "texts")}

    return {
        **head(""),
        "aux_outputs": [head(f"aux{i}_") for i in range(dec_layers - 1)],
        "enc_outputs": {f"pred_{k}": ref[f"{prefix}enc_pred_{k}"] for k in ("logits", "boxes")},
    }


@functools.partial(jax.jit, static_argnums=2)
def loss_grads_and_matching(outputs, targets, loss_cfg):
    (total, terms), grads = jax.value_and_grad(criterion_loss, has_aux=True)(outputs, targets, loss_cfg)
    return total, terms, grads, match_all(outputs, targets, loss_cfg)


@pytest.fixture(scope="module", params=["", "clip_"], ids=["testr", "testr_clip"])
def crit(request, fx):
    """The criterion on the stored TESTR or TESTR-CLIP predictions; ``ref`` holds that run's keys unprefixed."""
    prefix, n_dec = request.param, fx["cfg"]["effective"]["dec_layers"]
    ref = fx["ref"]
    if prefix:
        if not (FIXTURE / "reference_clip.npz").exists():
            pytest.skip("no TESTR-CLIP reference in this fixture")
        ref = {k[len(prefix) :]: v for k, v in np.load(FIXTURE / "reference_clip.npz").items() if k.startswith(prefix)}
    outputs = fixture_outputs({**fx["ref"], **{prefix + k: v for k, v in ref.items()}}, prefix, n_dec)
    total, terms, grads, (dec_cost, enc_cost, dec_match, enc_match) = loss_grads_and_matching(
        outputs, fx["targets"], fx["loss_cfg"]
    )
    names = [f"dec_aux{i}" for i in range(n_dec - 1)] + ["dec_final"]
    return {
        "ref": ref,
        "outputs": outputs,
        "total": total,
        "terms": terms,
        "grads": grads,
        "costs": {**dict(zip(names, dec_cost, strict=True)), "enc": enc_cost},
        "matches": {**dict(zip(names, dec_match, strict=True)), "enc": enc_match},
    }


def test_matcher_costs_and_assignments(fx, crit):
    ref = crit["ref"]
    n_checked = 0
    for name, cost in crit["costs"].items():
        for b in range(fx["cfg"]["effective"]["batch"]):
            want = ref[f"match_{name}_cost_b{b}"]
            got = np.asarray(cost[b, :, : want.shape[1]])
            assert rel_err(got, want) <= RTOL, (name, b, rel_err(got, want))
            rows, cols = assignment_pairs(np.asarray(crit["matches"][name][b]))
            np.testing.assert_array_equal(rows, ref[f"match_{name}_rows_b{b}"], err_msg=f"{name} b{b}")
            np.testing.assert_array_equal(cols, ref[f"match_{name}_cols_b{b}"], err_msg=f"{name} b{b}")
            n_checked += 1
    assert n_checked == 2 * (fx["cfg"]["effective"]["dec_layers"] + 1)


def test_loss_terms_and_total(fx, crit):
    """Every term; the TESTR-CLIP total also holds the pixel (Dice) loss, which is not the set criterion's."""
    ref, terms = crit["ref"], crit["terms"]
    keys = [k for k in ref if k.startswith(("loss_", "lossw_")) and k != "loss_total" and "pix_cls" not in k]
    assert set(keys) == {k for k in terms if k != "num_inst"}, sorted(terms)
    for k in keys:
        assert rel_err(terms[k], ref[k]) <= RTOL, (k, float(terms[k]), float(ref[k]))
    assert rel_err(crit["total"] + ref.get("lossw_pix_cls", 0.0), ref["loss_total"]) <= RTOL
    assert float(terms["num_inst"]) == float(ref["num_inst"])
    weights = fx["cfg"]["loss_weight_dict"]
    for k, w in fx["loss_cfg"].weights(fx["cfg"]["effective"]["dec_layers"] - 1).items():
        assert weights[k] == w, k


def test_gradients_reach_matched_predictions_only(crit):
    grads, matches = crit["grads"], crit["matches"]
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(np.isfinite(g).all()) for g in leaves)
    g_pts = np.abs(np.asarray(grads["pred_ctrl_points"])).sum((-1, -2))  # [B, Q]
    matched = np.zeros_like(g_pts, bool)
    for b, m in enumerate(np.asarray(matches["dec_final"])):
        matched[b, m[m >= 0]] = True
    assert (g_pts[matched] > 0).all() and (g_pts[~matched] == 0).all()
    g_enc_box = np.abs(np.asarray(grads["enc_outputs"]["pred_boxes"])).sum(-1)
    assert np.count_nonzero(g_enc_box) == int(crit["terms"]["num_inst"])
    assert (np.asarray(grads["enc_outputs"]["pred_logits"]) != 0).all()  # focal loss on every token


def test_inference_postprocess(fx):
    ref = fx["ref"]
    outputs = fixture_outputs(ref, "", fx["cfg"]["effective"]["dec_layers"])
    words = postprocess_words(
        outputs["pred_logits"],
        outputs["pred_ctrl_points"],
        outputs["pred_texts"],
        ref["in_image_sizes"],
        ref["in_orig_sizes"],
        float(ref["infer_threshold"]),
        fx["charset"],
    )
    assert float(ref["infer_threshold"]) == pytest.approx(fx["cfg"]["effective"]["inference_threshold"])
    for b, w in enumerate(words):
        keep = ref["infer_keep"][b]
        assert len(w.scores) == keep.sum()
        assert rel_err(w.scores, ref[f"infer_b{b}_scores"]) <= RTOL
        assert rel_err(w.polygons, ref[f"infer_b{b}_polygons"]) <= RTOL
        np.testing.assert_array_equal(w.recs, ref[f"infer_b{b}_recs"])
        np.testing.assert_allclose(w.rec_scores, ref[f"infer_b{b}_rec_scores"], rtol=RTOL, atol=1e-7)
        assert w.strings == list(ref[f"infer_b{b}_strings"])


def test_targets_from_polygons_and_transcriptions(fx):
    ref, charset = fx["ref"], fx["charset"]
    eff = fx["cfg"]["effective"]
    for b, hw in enumerate(ref["in_image_sizes"]):
        codes = ref[f"tgt_b{b}_texts"]
        words = [decode_text(row, charset) for row in codes]  # transcriptions; encoding them must give `codes`
        polygons = list(ref[f"tgt_b{b}_polygons_abs"].reshape(len(codes), eff["num_ctrl_points"], 2))
        got = image_targets(
            polygons + [np.array([[0, 0], [9, 0], [9, 5], [0, 5]], np.float32)],  # a don't-care word, dropped
            words + ["###"],
            [False] * len(words) + [True],
            tuple(hw),
            charset=charset,
            num_points=eff["num_ctrl_points"],
            max_chars=eff["num_chars"],
        )
        for k in ("ctrl_points", "boxes"):
            assert rel_err(got[k], ref[f"tgt_b{b}_{k}"]) <= RTOL, (b, k)
        np.testing.assert_array_equal(got["texts"], codes)
        np.testing.assert_array_equal(got["labels"], ref[f"tgt_b{b}_labels"])


def test_target_resampling_and_encoding():
    quad = np.array([[10, 2], [0, 2], [0, 0], [10, 0]], np.float32)  # any vertex order
    ctrl = ctrl_points_from_polygon(quad, 16)
    np.testing.assert_allclose(ctrl[:8], np.stack([np.linspace(0, 10, 8), np.zeros(8)], 1), atol=1e-5)
    np.testing.assert_allclose(ctrl[8:], np.stack([np.linspace(10, 0, 8), np.full(8, 2)], 1), atol=1e-5)
    paired = np.array([[0, 0], [4, 1], [8, 0], [8, 3], [4, 4], [0, 3]], np.float32)  # Total-Text layout, 6 points
    ctrl = ctrl_points_from_polygon(paired, 8)
    np.testing.assert_allclose(ctrl[[0, 3, 4, 7]], paired[[0, 2, 3, 5]], atol=1e-5)
    np.testing.assert_array_equal(encode_text("ab?c", "abc", 6), [0, 1, 3, 2, 4, 4])
    assert encode_text("abcabc", "abc", 4).tolist() == [0, 1, 2, 0]


def test_assignment_leaves_surplus_targets_unmatched():
    cost = np.array([[[1.0, 0.0, 5.0, 9.0], [0.0, 1.0, 5.0, 9.0]]], np.float32)  # 2 queries, 3 targets + 1 pad
    match = assign_on_host(cost, np.array([3]))
    assert match.tolist() == [[1, 0, -1, -1]]


def test_padded_tokens_stay_out_of_encoder_matching(fx):
    ref = fx["ref"]
    outputs = fixture_outputs(ref, "", fx["cfg"]["effective"]["dec_layers"])
    criterion = jax.jit(lambda o, t, v: set_criterion(o, t, fx["loss_cfg"], token_valid=v))
    token_valid = np.ones(outputs["enc_outputs"]["pred_logits"].shape[:2], bool)
    losses, matches = criterion(outputs, fx["targets"], token_valid)  # all valid: the official result
    assert rel_err(losses["loss_ce_enc"], ref["loss_ce_enc"]) <= RTOL
    for b in range(token_valid.shape[0]):  # now mark the officially matched proposals as padding
        token_valid[b, ref[f"match_enc_rows_b{b}"]] = False
    losses, matches = criterion(outputs, fx["targets"], token_valid)
    enc = np.asarray(matches["enc"])
    assert (enc[np.asarray(fx["targets"].valid)] >= 0).all()
    assert all(token_valid[b, m[m >= 0]].all() for b, m in enumerate(enc))
    rows = [assignment_pairs(m)[0] for m in np.asarray(matches["dec_final"])]
    for b, r in enumerate(rows):  # the decoder matching is untouched
        np.testing.assert_array_equal(r, ref[f"match_dec_final_rows_b{b}"])


def test_assignment_per_device_on_a_mesh():
    cost = np.random.default_rng(0).uniform(size=(3, 2, 6, 4)).astype(np.float32)
    num_targets = np.array([4, 2], np.int32)
    mesh = make_mesh({"data": 1, "fsdp": 1, "model": 1})
    (got,) = jax.jit(lambda c, n: hungarian_assign([c], n, mesh))(cost, num_targets)
    np.testing.assert_array_equal(np.asarray(got), assign_on_host(cost, num_targets))
    assert (np.asarray(got)[:, 1, 2:] == -1).all()
