"""TESTR-CLIP (TESTR + TCM) against the official ``CLIPTransformerDetector`` golden data (``reference_clip.npz`` of
the ``testr_tiny`` fixture, or the folder in ``CTS_TESTR_FIXTURE``; README there): the CLIP side, the end-to-end
predictions, matching, every loss term incl. the pixel (Dice) loss with the official instance-index target, its
target map, the probability map and gradients, all from one jitted forward + loss + grad. Then the binary target,
FastTCM's text cache, padding isolation and the CR50 backbone on tiny random models."""

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA
from flax import nnx, traverse_util
from safetensors.numpy import load_file

from clip_text_spot.models.clip.config import CLIPConfig, ResNetConfig, TextConfig
from clip_text_spot.models.clip.model import CLIP
from clip_text_spot.models.fasttcm.config import DecoderConfig, FastTCMConfig
from clip_text_spot.models.testr.losses import LossConfig, match_all
from clip_text_spot.models.testr.matcher import assignment_pairs
from clip_text_spot.models.testr.model import TESTRConfig
from clip_text_spot.models.testr.official import from_official_testr_clip
from clip_text_spot.models.testr.targets import batch_targets
from clip_text_spot.models.testr.tcm import (
    TESTRTCM,
    TESTRTCMConfig,
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


def test_fasttcm_text_cache_and_padding_isolation(base, ref, sem_seg, run):
    """FastTCM (random meta query and prompt modules, the fixture's sizes): the cached text embedding gives the
    uncached CLIP side (TESTR only sees the features and the score map); with isolate_padding, image 1 of the padded
    batch gets the CLIP side and pixel probabilities it gets alone."""
    config = load().config
    config = dataclasses.replace(config, prompting=config.prompting.replace(fast=True))
    config = dataclasses.replace(config, testr=dataclasses.replace(config.testr, isolate_padding=True))
    model = build_testr_tcm(config, rngs=nnx.Rngs(1), prompt_ids=ref["clip_texts"], with_backbone=False)
    model.eval()
    feats = features(base)
    sizes = jnp.asarray(base["in_image_sizes"], jnp.int32)
    h, w = (int(x) for x in base["in_image_sizes"][1])
    alone = [f[1:, : -(-h // s), : -(-w // s)] for f, s in zip(feats, (8, 16, 32), strict=True)]
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, feats, alone, sem):
        m = nnx.merge(graphdef, state)
        cache = m.precompute_text()
        batch, fresh, single = m.match(feats, sizes, cache), m.match(feats, sizes), m.match(alone, sizes[1:], cache)
        probs = [
            pixel_loss(x["score_map"], s, z, stride=16)[1]
            for x, s, z in ((batch, sem, sizes), (single, sem[1:, :h, :w], sizes[1:]))
        ]
        return batch, fresh, single, probs

    batch, fresh, single, (p_batch, p_single) = jax.tree.map(np.asarray, step(state, feats, alone, sem_seg))
    assert batch.keys() == fresh.keys() and "clip_prompt_gen" in batch  # the meta query's cue
    for k in batch:
        np.testing.assert_array_equal(batch[k], fresh[k], err_msg=k)
    for k in ("clip_global_feat", "clip_text_final"):
        assert max_err(batch[k][1:], single[k]) <= 1e-6, k
    hs, ws = single["score_map"].shape[1:3]
    assert max_err(batch["score_map"][1:, :hs, :ws], single["score_map"]) <= 1e-6
    assert max_err(p_batch[1:, :h, :w], p_single) <= 1e-6
    with pytest.raises(ValueError, match="FastTCM"):
        load().forward_features(feats, sizes, text_cache=jnp.zeros((1, 1, 1024)))


def test_cr50_backbone_loads_clip_and_adds_the_score_map_at_res5():
    """Paper variant: CLIP's ModifiedResNet (C3..C5 into TESTR, the dense attention pool for the prompting), weights
    from a CLIP model (as ``load_pretrained`` returns it); optimiser groups freeze the text tower on request."""
    vision = ResNetConfig(layers=(1, 1, 1, 1), width=8, heads=2, image_size=64)
    clip_cfg = CLIPConfig(32, TextConfig(vocab_size=64, width=32, layers=1, heads=2, mlp_dim=64), vision)
    config = TESTRTCMConfig(
        testr=TESTRConfig(
            dim=32,
            heads=2,
            enc_layers=1,
            dec_layers=1,
            ffn=32,
            num_queries=4,
            chars=3,
            voc_size=5,
            backbone_channels=(64, 128, 256),
            isolate_padding=True,
        ),
        prompting=FastTCMConfig(
            clip=clip_cfg,
            prompt_length=6,
            n_ctx=2,
            vpg=DecoderConfig(32, 2, 1, 0.0),
            context_decoder=DecoderConfig(32, 2, 1, 0.0),
        ),
        backbone="cr50",
        freeze_text=True,
    )
    ids = np.array([[62, 5, 9, 63, 0, 0]])
    model = build_testr_tcm(config, rngs=nnx.Rngs(0), prompt_ids=ids)
    clip = CLIP(clip_cfg.replace(text={"context_length": 16}), rngs=nnx.Rngs(3))
    model.load_clip(clip)
    model.eval()
    np.testing.assert_array_equal(
        model.backbone.layer3[0].conv1.kernel[...], clip.vision_model.layer3[0].conv1.kernel[...]
    )
    np.testing.assert_array_equal(
        model.clip.text_encoder.text_model.embeddings.position_embedding.embedding[...],
        clip.text_model.embeddings.position_embedding.embedding[...][:8],
    )
    pixels = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)  # traced, not compiled: shapes and wiring
    out = nnx.eval_shape(
        lambda m, x: m(x, jnp.array([[64, 96], [40, 64]]), text_cache=m.precompute_text()), model, pixels
    )
    assert config.score_level == 2 and out["score_map"].shape == (2, 2, 3, 1)  # res5's grid
    assert out["pred_texts"].shape == (2, 4, 3, 6)
    labels = param_labels(nnx.to_pure_dict(nnx.state(model, nnx.Param)), optim_groups(config))
    flat = {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(labels).items()}
    assert {v for k, v in flat.items() if k.startswith("clip/text_encoder/")} == {"g0"}  # frozen
    assert flat["clip/contexts"] == flat["backbone/conv1/kernel"] == "g1"  # LR_BACKBONE
    assert {v for k, v in flat.items() if "sampling_offsets" in k} == {"g2"}
    assert flat["testr/text_embed"] == "default"


def test_official_spotter_loader_dispatches_on_the_clip_tensors(ref):
    """``from_official_spotter`` (``spot --spotter=FILE.safetensors``) builds TESTR-TCM from a TESTR-CLIP state
    dict with the same tensors as ``from_official_testr_clip``, and asks a plain TESTR one for its ResNet."""
    from clip_text_spot.models.testr.official import CheckpointMismatchError, from_official_spotter

    state = {**load_file(FIXTURE / "testr.safetensors"), **load_file(FIXTURE / "testr_clip.safetensors")}
    clip = SIZES["clip"]
    kwargs = dict(
        text_heads=clip["text_heads"], decoder_heads=clip["dec_heads"], prompt_ids=ref["clip_texts"],
        heads=EFF["nhead"], enc_points=EFF["enc_n_points"], dec_points=EFF["dec_n_points"],
        num_queries=EFF["num_queries"], voc_size=EFF["voc_size"],
    )  # fmt: skip
    model = from_official_spotter(state, **kwargs)
    assert isinstance(model, TESTRTCM)
    want = load()
    np.testing.assert_array_equal(model.clip.contexts[...], want.clip.contexts[...])
    plain = {k: v for k, v in state.items() if not k.startswith("backbone.0.")}
    with pytest.raises(CheckpointMismatchError, match="ResNet"):
        from_official_spotter(plain, heads=EFF["nhead"])
