"""TESTR-CLIP (TESTR + TCM) against the official ``CLIPTransformerDetector`` golden data (``reference_clip.npz`` of
the ``testr_tiny`` fixture, or the folder in ``CTS_TESTR_FIXTURE``; README there): the CLIP side, the end-to-end
predictions, matching, every loss term incl. the pixel (Dice) loss with the official instance-index target, its
target map, the probability map and gradients, all from one jitted forward + loss + grad. Then the binary target,
FastTCM's text cache, padding isolation and the CR50 backbone on tiny random models."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA
from flax import nnx
from safetensors.numpy import load_file

from clip_text_spot.models.clip.config import CLIPConfig, ResNetConfig, TextConfig
from clip_text_spot.models.clip.model import CLIP
from clip_text_spot.models.testr.losses import LossConfig, match_all
from clip_text_spot.models.testr.matcher import assignment_pairs
from clip_text_spot.models.testr.official import from_official_testr_clip
from clip_text_spot.models.testr.targets import batch_targets
from clip_text_spot.models.testr.tcm import (
    batch_pixel_targets,
    build_testr_tcm,
    optim_groups,
    pixel_loss,
    pixel_target,
    tcm_criterion_loss,
)
from clip_text_spot.optim import param_labels

FIXTURE = pathlib.Path(os.environ.get("CTS_TESTR_FIXTURE", DATA / "testr_tiny"))
CFG = json.loads((FIXTURE / "config.json").read_text())
EFF, SIZES = CFG["effective"], CFG["sizes"]
TOL = 1e-5
# official gradient names -> ours
GRAD_NAMES = {
    "backbone.0.gamma": ("clip", "gamma"),
    "backbone.0.vis_gamma": ("clip", "vis_gamma"),
    "backbone.0.contexts": ("clip", "contexts"),
    "backbone.0.prompt_generator.prompt_proj.4.bias": ("clip", "prompt_generator", "out", "linear", "bias"),
    "text_embed.weight": ("testr", "text_embed"),
}

pytestmark = pytest.mark.skipif(not (FIXTURE / "reference_clip.npz").exists(), reason="no TESTR-CLIP reference")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-6), initial=0.0))


def max_err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))


def load(**overrides):
    clip = SIZES["clip"]
    assert clip["dec_heads"] == clip["vpg_heads"]  # one decoder head count for both
    state = {**load_file(FIXTURE / "testr.safetensors"), **load_file(FIXTURE / "testr_clip.safetensors")}
    ref = np.load(FIXTURE / "reference_clip.npz")
    kwargs = dict(
        fast=False,
        text_heads=clip["text_heads"],
        decoder_heads=clip["dec_heads"],
        prompt_ids=ref["clip_texts"],
        clip_dropout=0.0,
        pixel_target="instance",
        pix_loss_weight=CFG["d2_cfg"]["CLIP"]["PIX_CLS_LOSS_WEIGHT"],
        heads=EFF["nhead"],
        enc_points=EFF["enc_n_points"],
        dec_points=EFF["dec_n_points"],
        num_queries=EFF["num_queries"],
        voc_size=EFF["voc_size"],
        isolate_padding=False,
    )
    return from_official_testr_clip(state, **{**kwargs, **overrides})


def features(ref):
    return [jnp.asarray(ref[f"in_res{i}"].transpose(0, 2, 3, 1)) for i in (3, 4, 5)]


def polygons(ref, b):
    return list(ref[f"tgt_b{b}_polygons_abs"].reshape(-1, EFF["num_ctrl_points"], 2))


@pytest.fixture(scope="module")
def base():
    return np.load(FIXTURE / "reference.npz")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE / "reference_clip.npz"))


@pytest.fixture(scope="module")
def sem_seg(base):
    """The official instance-index kernel maps, drawn here from the fixture's polygons, padded to the batch."""
    sizes = base["in_image_sizes"]
    maps = [
        pixel_target(polygons(base, b), [False] * len(polygons(base, b)), tuple(hw), 0.9, True)
        for b, hw in enumerate(sizes)
    ]
    return batch_pixel_targets(maps, tuple(EFF["padded_hw"]))


@pytest.fixture(scope="module")
def run(base, sem_seg):
    """One jit: forward (with capture), set-criterion + pixel loss, gradients of the total, matching."""
    model = load()
    per_image = [{k: base[f"tgt_b{b}_{k}"] for k in ("ctrl_points", "boxes", "texts", "labels")} for b in range(2)]
    targets = batch_targets(per_image, max(len(t["labels"]) for t in per_image) + 1, pad_text=EFF["pad_class"])
    loss_cfg = LossConfig.from_d2(CFG["d2_cfg"]["MODEL"]["TRANSFORMER"]["LOSS"])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    sizes = jnp.asarray(base["in_image_sizes"], jnp.int32)

    @jax.jit
    def step(params, feats, targets, sem):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, rest)
            capture = {}
            out = m.forward_features(feats, sizes, capture=capture)
            total, terms = tcm_criterion_loss(out, targets, sem, sizes, loss_cfg, m.config)
            _, prob = pixel_loss(out["score_map"], sem, sizes, stride=16, binary=False, isolate_padding=False)
            return total, (out, capture, terms, prob)

        (total, (out, capture, terms, prob)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return total, out, capture, terms, prob, grads, match_all(out, targets, loss_cfg)

    total, out, capture, terms, prob, grads, (_, _, dec_match, enc_match) = step(
        params, features(base), targets, sem_seg
    )
    names = [f"dec_aux{i}" for i in range(EFF["dec_layers"] - 1)] + ["dec_final"]
    matches = {**dict(zip(names, dec_match, strict=True)), "enc": enc_match}
    grads = nnx.to_pure_dict(grads)
    return jax.tree.map(np.asarray, (total, out, capture, terms, prob, grads, matches))


def test_clip_side_matches_official(ref, run):
    _, out, capture, *_ = run
    b = ref["clip_global_feat"].shape[0]
    for name in ("global_feat", "prompt_gen", "text_embed", "vis_prompt_diff", "text_diff", "text_final"):
        want = ref[f"clip_{name}"]
        assert max_err(capture[f"clip_{name}"].reshape(want.shape), want) <= TOL, name
    score = out["score_map"].transpose(0, 3, 1, 2)
    assert score.shape == ref["clip_score_map"].shape and b == 2
    assert max_err(score, ref["clip_score_map"]) <= TOL


def test_end_to_end_predictions_match_official(ref, run):
    _, out, *_ = run
    heads = {"clip_": out, **{f"clip_aux{i}_": a for i, a in enumerate(out["aux_outputs"])}}
    n = 0
    for prefix, o in heads.items():
        for k in ("logits", "ctrl_points", "texts"):
            assert max_err(o[f"pred_{k}"], ref[f"{prefix}pred_{k}"]) <= TOL, (prefix, k)
            n += 1
    for k in ("logits", "boxes"):
        assert max_err(out["enc_outputs"][f"pred_{k}"], ref[f"clip_enc_pred_{k}"]) <= TOL, k
    assert n == 3 * EFF["dec_layers"]


def test_matching_losses_and_gradients_match_official(ref, run, sem_seg):
    total, _, _, terms, prob, grads, matches = run
    for name, match in matches.items():
        for b in range(EFF["batch"]):
            rows, cols = assignment_pairs(match[b])
            np.testing.assert_array_equal(rows, ref[f"clip_match_{name}_rows_b{b}"], err_msg=f"{name} b{b}")
            np.testing.assert_array_equal(cols, ref[f"clip_match_{name}_cols_b{b}"], err_msg=f"{name} b{b}")
    keys = [k[len("clip_") :] for k in ref if k.startswith(("clip_loss_", "clip_lossw_")) and k != "clip_loss_total"]
    assert "loss_pix_cls" in keys and set(keys) == {k for k in terms if k != "num_inst"}
    for k in keys:
        assert rel_err(terms[k], ref[f"clip_{k}"]) <= TOL, (k, float(terms[k]), float(ref[f"clip_{k}"]))
    assert rel_err(total, ref["clip_loss_total"]) <= TOL
    np.testing.assert_array_equal(sem_seg, ref["clip_sem_seg"])
    assert max_err(prob, ref["clip_pix_prob_map"][:, 0]) <= TOL
    for name, path in GRAD_NAMES.items():
        got = grads
        for p in path:
            got = got[p]
        want = ref[f"clip_grad_{name}"]
        assert max_err(got, want) <= TOL * max(1.0, float(np.abs(want).max())), name


def test_binary_target_differs_only_at_instance_indices_above_one(base, sem_seg):
    instance = sem_seg
    assert instance.max() > 1  # several instances: the two targets differ somewhere
    sizes = base["in_image_sizes"]
    binary = batch_pixel_targets(
        [pixel_target(polygons(base, b), [False] * len(polygons(base, b)), tuple(hw)) for b, hw in enumerate(sizes)],
        tuple(EFF["padded_hw"]),
    )
    assert set(np.unique(binary)) == {0, 1}
    differ = binary != instance
    assert differ.any() and (instance[differ] > 1).all()
    np.testing.assert_array_equal(binary, instance > 0)
