"""FCENet and PANet (``clip_text_spot.heads.fce`` / ``.pan``) against the official mmocr 0.4 / mmcv 1.3.17 / TCM
outputs in ``tests/data/fce_pan_mmocr`` (see its README).

The fixture folder can be swapped with ``CTS_FCE_PAN_FIXTURE`` (same layout, other values and sizes): every size and
parameter comes from its arrays and ``config.json``. Tolerances (``fcenet_panet.md`` §12): integers (levels, indices,
quads, masks, ids, OHEM masks, labels, reconstructed points, boundary coordinates) equal; float32 values within 1e-5
(relative for the losses, scaled by the largest value for the gradients and feature maps; PAN's train-mode BatchNorm
forward 1e-4); float64 host values within 1e-9 relative; scores 1e-6.
"""

import collections
import json
import os
import pathlib
import re

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from clip_text_spot.heads.common import shrink_offset
from clip_text_spot.heads.fce import targets as T
from clip_text_spot.heads.fce.aux import fce_aux_loss
from clip_text_spot.heads.fce.loss import LOSS_TERMS, fce_loss, fourier2poly
from clip_text_spot.heads.fce.model import FCEDecoder, load_official_fcenet
from clip_text_spot.heads.fce.postprocess import (
    fce_level_boundaries,
    fce_postprocess,
    fce_score_map,
    fourier_to_polygons,
    poly_nms,
    resolve_config,
)
from clip_text_spot.heads.pan.aux import pan_score_map_aux_loss
from clip_text_spot.heads.pan.loss import TERMS, PANLossConfig, pan_loss, pan_loss_per_image
from clip_text_spot.heads.pan.model import load_official_pan
from clip_text_spot.heads.pan.postprocess import (
    PANPostprocessConfig,
    group_inputs,
    pan_postprocess,
    pixel_group,
)
from clip_text_spot.heads.pan.postprocess import (
    resolve_config as pan_resolve_config,
)
from clip_text_spot.heads.pan.targets import PANTargetConfig, loss_targets, pan_targets
from clip_text_spot.models.clip.convert import CheckpointMismatchError, model_flat_state

FIXTURE = pathlib.Path(os.environ.get("CTS_FCE_PAN_FIXTURE", pathlib.Path(__file__).parent / "data" / "fce_pan_mmocr"))
LEVEL_NAMES = ("p3", "p4", "p5", "matching")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as f:
        return dict(f)


@pytest.fixture(scope="module")
def cfg():
    return json.loads((FIXTURE / "config.json").read_text())


@pytest.fixture(scope="module")
def target_config(cfg):
    t = cfg["fce"]["targets"]
    return T.FCETargetConfig(
        fourier_degree=t["fourier_degree"],
        resample_step=float(t["resample_step"]),
        center_region_shrink_ratio=float(t["center_region_shrink_ratio"]),
        orientation_thr=float(t["orientation_thr"]),
        level_size_divisors=tuple(t["level_size_divisors"]),
        level_proportion_range=tuple(tuple(r) for r in t["level_proportion_range"]),
    )


def split_points(xy: np.ndarray, npts: np.ndarray) -> list[np.ndarray]:
    """Concatenated [sum n, 2] points -> one array per entry."""
    return np.split(xy, np.cumsum(npts)[:-1]) if len(npts) else []


def image_polygons(ref: dict, prefix: str) -> list[tuple[tuple[int, int], list, list]]:
    """Per image of ``<prefix>_in_*``: (canvas hw, text polygons, ignore polygons) in fixture order."""
    polys = split_points(ref[f"{prefix}_in_polys_xy"], ref[f"{prefix}_in_polys_npts"])
    img, ign = ref[f"{prefix}_in_polys_image"], ref[f"{prefix}_in_polys_ignore"]
    return [
        (
            tuple(int(v) for v in hw),
            [p for p, i, g in zip(polys, img, ign, strict=True) if i == b and not g],
            [p for p, i, g in zip(polys, img, ign, strict=True) if i == b and g],
        )
        for b, hw in enumerate(ref[f"{prefix}_in_canvas_hw"])
    ]


def num_levels(ref: dict, prefix: str) -> int:
    """How many ``<prefix>0, <prefix>1, ...`` arrays the fixture holds."""
    return sum(1 for k in ref if k.startswith(prefix) and k[len(prefix) :].isdigit())


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------------------------------------------
# targets


def test_level_assignment(ref, target_config):
    polys = split_points(ref["fce_in_polys_xy"], ref["fce_in_polys_npts"])
    heights = ref["fce_in_canvas_hw"][ref["fce_in_polys_image"], 0]
    got = np.concatenate([T.assign_levels([p], int(h), target_config) for p, h in zip(polys, heights, strict=True)])
    np.testing.assert_array_equal(got, ref["fce_level_assign"])


def test_target_sub_steps(ref, target_config):
    """Head/tail edges, resampled sidelines, centre quads, resampled polygon, start point, raw and clockwise Fourier
    coefficients of every (image, level, text polygon) entry."""
    polys = split_points(ref["fce_in_polys_xy"], ref["fce_in_polys_npts"])
    divisors = target_config.level_size_divisors
    k = target_config.fourier_degree
    top_ref = split_points(ref["fce_sub_top_resampled"], ref["fce_sub_sideline_npts"])
    bot_ref = split_points(ref["fce_sub_bot_resampled"], ref["fce_sub_sideline_npts"])
    quads_ref = split_points(ref["fce_sub_center_quads"], ref["fce_sub_center_quads_n"])
    resampled_ref = dict(
        zip(
            ref["fce_sub_resampled_entries"],
            split_points(ref["fce_sub_resampled_polygon"], ref["fce_sub_resampled_npts"]),
            strict=True,
        )
    )
    assert len(resampled_ref) > 0
    for e, (lvl, p) in enumerate(zip(ref["fce_sub_level"], ref["fce_sub_poly"], strict=True)):
        poly = polys[p] / divisors[lvl]
        head, tail = T.find_head_tail(poly, target_config.orientation_thr)
        np.testing.assert_array_equal([head, tail], [ref["fce_sub_head_inds"][e], ref["fce_sub_tail_inds"][e]])
        top, bot = T.resample_sidelines(*T.sidelines(poly, target_config.orientation_thr), target_config.resample_step)
        np.testing.assert_allclose(top, top_ref[e], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(bot, bot_ref[e], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(T.center_quads(poly, target_config), quads_ref[e])

        resampled = T.resample_polygon(poly, target_config.num_resample)
        if e in resampled_ref:
            np.testing.assert_allclose(resampled, resampled_ref[e], rtol=1e-9, atol=1e-9)
        start = T.normalize_start(resampled)
        assert start == ref["fce_sub_normalize_start"][e]
        raw = T.poly2fourier(np.concatenate([resampled[start:], resampled[:start]]), k)
        scale = np.abs(ref["fce_sub_fourier_raw"][e]).max()
        np.testing.assert_allclose(np.stack([raw.real, raw.imag], 1), ref["fce_sub_fourier_raw"][e], atol=1e-9 * scale)
        c, reversed_ = T.clockwise(raw, k)
        assert reversed_ == ref["fce_sub_reversed"][e]
        np.testing.assert_allclose(
            T.fourier_signature(poly, target_config), ref["fce_sub_signature"][e], atol=1e-9 * scale
        )
        np.testing.assert_array_equal(np.stack([c.real, c.imag], 1), T.fourier_signature(poly, target_config))


@pytest.mark.parametrize("prefix,target_prefix", [("fce", "fce_targets"), ("fce_loss2", "fce_loss2_targets")])
def test_targets(ref, target_config, prefix, target_prefix):
    names = LEVEL_NAMES[: len(target_config.level_size_divisors)]
    for b, (hw, text, ignore) in enumerate(image_polygons(ref, prefix)):
        levels = T.fce_targets(text, ignore, hw, target_config)
        for name, got in zip(names, levels, strict=True):
            want = nhwc(ref[f"{target_prefix}_{name}"][b : b + 1])[0]
            assert got.shape == want.shape, (b, name)
            np.testing.assert_array_equal(got[..., :3], want[..., :3], err_msg=f"image {b} level {name}")
            np.testing.assert_allclose(got[..., 3:], want[..., 3:], rtol=0, atol=1e-5, err_msg=f"image {b} {name}")


def test_center_region_even_odd(ref, target_config):
    """One multi-contour fillPoly over all quads (official), not the union of one-quad fills."""
    polys = split_points(ref["fce_cparity_polys_xy"], ref["fce_cparity_polys_npts"])
    hw = tuple(int(v) for v in ref["fce_cparity_hw"])
    quads = np.concatenate([T.center_quads(p, target_config) for p in polys])
    np.testing.assert_array_equal(quads, ref["fce_cparity_quads"])
    np.testing.assert_array_equal(T.center_region_mask(polys, hw, target_config), ref["fce_cparity_mask"])
    union = np.zeros(hw, np.uint8)
    for q in quads:
        cv2.fillPoly(union, [q], 1)
    np.testing.assert_array_equal(union, ref["fce_cparity_union_of_quads"])


# ----------------------------------------------------------------------------------------------------------------
# loss


def test_fourier2poly_both_forms(ref):
    x, y = fourier2poly(jnp.asarray(ref["fce_f2p_torch_real"]), jnp.asarray(ref["fce_f2p_torch_imag"]))
    for got, want in ((x, ref["fce_f2p_torch_x"]), (y, ref["fce_f2p_torch_y"])):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    coeff = ref["fce_f2p_np_coeff"]
    n = ref["fce_f2p_np_poly"].shape[1] // 2
    np.testing.assert_array_equal(fourier_to_polygons(coeff[..., 0] + 1j * coeff[..., 1], n), ref["fce_f2p_np_poly"])


@pytest.mark.parametrize("case", ["fce_loss", "fce_loss2"])
def test_fce_loss_and_gradients(ref, cfg, case):
    """Per-level and summed terms (relative 1e-5) and d(sum of terms)/d(predictions)."""
    lcfg = cfg["fce"]["loss"]
    levels = num_levels(ref, f"{case}_cls_l")
    if case == "fce_loss":
        images = ref["fce_loss_batch_images"]
        targets = [nhwc(ref[f"fce_targets_{n}"][images]) for n in LEVEL_NAMES[:levels]]
    else:
        targets = [nhwc(ref[f"fce_loss2_targets_{n}"]) for n in LEVEL_NAMES[:levels]]
    cls = [nhwc(ref[f"{case}_cls_l{i}"]) for i in range(levels)]
    reg = [nhwc(ref[f"{case}_reg_l{i}"]) for i in range(levels)]

    def total(c, r):
        tot, parts = fce_loss(c, r, targets, lcfg["ohem_ratio"], lcfg["num_sample"])
        return tot, parts

    (_, parts), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(cls, reg)
    np.testing.assert_allclose(np.asarray(parts["per_level"]), ref[f"{case}_terms_per_level"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([float(parts[k]) for k in LOSS_TERMS], ref[f"{case}_terms"], rtol=1e-5, atol=1e-7)
    # where the fixture reports a tie at the OHEM top-k boundary, torch's pick among the tied negatives is arbitrary
    # (top_k_sum shares the gradient among them): the text-region logits' gradients are then not compared
    ties = cfg.get("notes", {}).get("fce_ohem_boundary_ties", {}).get(case, [False] * levels)
    for i in range(levels):
        for got, name in ((grads[0][i], "cls"), (grads[1][i], "reg")):
            got, want = np.asarray(got), nhwc(ref[f"{case}_grad_{name}_l{i}"])
            if name == "cls" and ties[i]:
                got, want = got[..., 2:], want[..., 2:]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(np.abs(want).max(), 1e-3))


# ----------------------------------------------------------------------------------------------------------------
# post-processing


@pytest.fixture(scope="module")
def pp_maps(ref):
    levels = num_levels(ref, "fce_pp_cls_l")
    cls = [nhwc(ref[f"fce_pp_cls_l{i}"])[0] for i in range(levels)]
    reg = [nhwc(ref[f"fce_pp_reg_l{i}"])[0] for i in range(levels)]
    return cls, reg


def assert_boundaries(got: np.ndarray, want: np.ndarray):
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[:, :-1], want[:, :-1])
    np.testing.assert_allclose(got[:, -1], want[:, -1], rtol=0, atol=1e-6)


def test_fce_postprocess(ref, cfg, pp_maps):
    pcfg = cfg["fce"]["postprocess"]
    common = dict(
        scales=tuple(pcfg["scales"]),
        nms_thr=pcfg["nms_thr"],
        score_thr=pcfg["score_thr"],
        num_reconstr_points=pcfg["num_reconstr_points"],
        fourier_degree=cfg["fce"]["targets"]["fourier_degree"],
    )
    cls, reg = pp_maps
    v = {  # mmocr's text_repr_type is our text_repr
        name: {("text_repr" if k == "text_repr_type" else k): val for k, val in variant.items()}
        for name, variant in pcfg["variants"].items()
    }
    tcm = resolve_config("tcm", **common, **v["tcm_quad"])
    for i, (c, s) in enumerate(zip(cls, tcm.scales, strict=True)):
        np.testing.assert_allclose(fce_score_map(c, tcm.alpha, tcm.beta), ref[f"fce_pp_score_l{i}"], rtol=0, atol=1e-6)
        assert_boundaries(fce_level_boundaries(c, reg[i], s, tcm), ref[f"fce_pp_tcm_quad_level{i}"])
    assert_boundaries(poly_nms(ref["fce_nms_in"], tcm.nms_thr), ref["fce_nms_out"])
    for name, preset in (("tcm_quad", "tcm"), ("tcm_poly", "tcm"), ("mmocr_default_poly", "mmocr")):
        config = resolve_config(preset, **common, **v[name])
        assert_boundaries(fce_postprocess(cls, reg, config), ref[f"fce_pp_{name}"])
    scale = tuple(float(s) for s in ref["fce_pp_scale_factor"][:2])
    assert_boundaries(fce_postprocess(cls, reg, tcm, scale=scale), ref["fce_pp_tcm_quad_rescaled"])
    quads = fce_postprocess(cls, reg, tcm, true_quad=True)
    assert quads.shape == (len(ref["fce_pp_tcm_quad"]), 9)


# ----------------------------------------------------------------------------------------------------------------
# auxiliary score-map loss and network


def test_fce_aux_loss(ref):
    """B = 1 equals the official loss; at B = 2 the per-image loss differs from the official (broadcast) value,
    which ``official_broadcast=True`` reproduces."""

    def run(b: str, official: bool):
        pred = jnp.asarray(nhwc(ref[f"fce_aux_{b}_pred"]))  # already S / tau
        matching = nhwc(ref["fce_targets_matching"][ref[f"fce_aux_{b}_images"]])
        loss, grad = jax.jit(
            jax.value_and_grad(lambda p: fce_aux_loss(p, matching, tau=1.0, official_broadcast=official))
        )(pred)
        return float(loss), np.asarray(grad)

    for b, official in (("b1", False), ("b2", True)):
        loss, grad = run(b, official)
        want = nhwc(ref[f"fce_aux_{b}_grad"])
        np.testing.assert_allclose(loss, ref[f"fce_aux_{b}_loss"], rtol=1e-5)
        np.testing.assert_allclose(grad, want, rtol=0, atol=1e-5 * np.abs(want).max())
    per_image, _ = run("b2", False)
    assert abs(per_image - float(ref["fce_aux_b2_loss"])) > 1e-3


def test_fce_net_forward_and_loader(ref, cfg):
    net = cfg["nets"]["fce"]
    degree = cfg["fce"]["targets"]["fourier_degree"]
    model = FCEDecoder(net["in_channels"], net["out_channels"], degree, rngs=nnx.Rngs(0))
    load_official_fcenet(model, str(FIXTURE / "fcenet_tiny.safetensors"))
    feats = [jnp.asarray(nhwc(ref[f"fce_net_in_c{i + 3}"])) for i in range(len(net["in_channels"]))]
    graph, state = nnx.split(model)

    @jax.jit
    def forward(state, feats):
        decoder = nnx.merge(graph, state)
        levels = decoder.neck(feats)
        return levels, decoder.bbox_head(levels)

    with jax.default_matmul_precision("highest"):
        levels, outs = forward(state, feats)
    for i, (p, (c, r)) in enumerate(zip(levels, outs, strict=True)):
        for got, name in ((p, f"fce_net_fpn_p{i + 3}"), (c, f"fce_net_cls_l{i}"), (r, f"fce_net_reg_l{i}")):
            want = nhwc(ref[name])
            np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5 * max(np.abs(want).max(), 1.0))

    sd = load_file(str(FIXTURE / "fcenet_tiny.safetensors"))
    sd.pop("neck.fpn_convs.1.conv.bias")
    sd["bbox_head.out_conv_cls.bias"] = np.zeros(5, np.float32)
    sd["neck.extra_conv.conv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_official_fcenet(model, sd)
    for name in ("neck/fpn_convs/1/conv/bias", "bbox_head/out_conv_cls/bias", "neck/extra_conv/conv/kernel"):
        assert name in str(err.value)


# ---- PANet ----


@pytest.fixture(scope="module")
def pan_cfg(cfg):
    return cfg["pan"]


def _nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def _images(ref, prefix: str) -> list[tuple[list[np.ndarray], list[bool], tuple[int, int]]]:
    """Per image of ``{prefix}_in_*``: polygons [n, 2] (text then ignore), ignore flags, (H, W)."""
    polys = np.split(ref[f"{prefix}_in_polys_xy"], np.cumsum(ref[f"{prefix}_in_polys_npts"])[:-1])
    image, ignore = ref[f"{prefix}_in_polys_image"], ref[f"{prefix}_in_polys_ignore"]
    return [
        (
            [p for p, i in zip(polys, image, strict=True) if i == k],
            [bool(g) for g, i in zip(ignore, image, strict=True) if i == k],
            tuple(int(v) for v in hw),
        )
        for k, hw in enumerate(ref[f"{prefix}_in_canvas_hw"])
    ]


def _pan_target_config(pan_cfg) -> PANTargetConfig:
    return PANTargetConfig(tuple(pan_cfg["targets"]["shrink_ratio"]), pan_cfg["targets"]["max_shrink"])


def _loss_cases(ref) -> list[str]:
    return sorted({m.group(1) for k in ref if (m := re.fullmatch(r"(pan_loss\d*)_preds", k))})


def _batch_targets(ref, case: str, out_hw: tuple[int, int], ratio: float):
    """``loss_targets`` of a loss case's batch: ``pan_loss`` uses ``pan_targets_*`` of its batch images,
    ``pan_loss2`` its own targets, all images."""
    if f"{case}_batch_images" in ref:
        prefix, batch = "pan", [int(i) for i in ref[f"{case}_batch_images"]]
    else:
        prefix, batch = case, range(len(ref[f"{case}_in_canvas_hw"]))
    kernels = [ref[f"{prefix}_targets_kernels_{i}"] for i in batch]
    masks = [ref[f"{prefix}_targets_mask_{i}"][0] for i in batch]
    return loss_targets(kernels, masks, out_hw, ratio)


def _assert_grad(grad: jax.Array, want: np.ndarray) -> None:
    np.testing.assert_allclose(_nchw(grad), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("prefix", ["pan", "pan_loss2"])
def test_pan_targets(ref, pan_cfg, prefix):
    config = _pan_target_config(pan_cfg)
    for k, (polys, ignore, hw) in enumerate(_images(ref, prefix)):
        kernels, mask = pan_targets(polys, ignore, hw, config)
        np.testing.assert_array_equal(kernels, ref[f"{prefix}_targets_kernels_{k}"], err_msg=f"{prefix} image {k}")
        np.testing.assert_array_equal(mask, ref[f"{prefix}_targets_mask_{k}"][0], err_msg=f"{prefix} image {k}")


def test_pan_shrink_substeps(ref, pan_cfg):
    ratios, max_shrink = pan_cfg["targets"]["shrink_ratio"], pan_cfg["targets"]["max_shrink"]
    polys = np.split(ref["pan_in_polys_xy"], np.cumsum(ref["pan_in_polys_npts"])[:-1])
    shrunk = np.split(ref["pan_sub_shrunk_xy"], np.cumsum(ref["pan_sub_shrunk_npts"])[:-1])
    assert len(ref["pan_sub_poly"]) > 0
    for row, (poly, r) in enumerate(zip(ref["pan_sub_poly"], ref["pan_sub_ratio_index"], strict=True)):
        distance, paths = shrink_offset(polys[poly], ratios[r], max_shrink)
        assert distance == ref["pan_sub_distance"][row], row
        assert (len(paths) == 0) == ref["pan_sub_empty"][row], row
        assert len(paths) == ref["pan_sub_num_paths"][row], row
        if paths:
            np.testing.assert_array_equal(np.asarray(paths[0], np.int64), shrunk[row], err_msg=f"row {row}")


@pytest.mark.parametrize("case", ["pan_loss", "pan_loss2"])
def test_pan_loss(ref, pan_cfg, case):
    assert case in _loss_cases(ref)
    preds = ref[f"{case}_preds"].transpose(0, 2, 3, 1)
    gt = _batch_targets(ref, case, preds.shape[1:3], pan_cfg["loss"]["downsample_ratio"])
    for name, ours in zip(("gt_text", "gt_kernel", "gt_mask"), gt, strict=True):
        np.testing.assert_array_equal(ours, ref[f"{case}_{name}"], err_msg=name)

    loss_cfg = pan_cfg["loss"]
    assert loss_cfg["speedup_bbox_thr"] <= 0  # random instance subsampling is not reproduced
    config = PANLossConfig(
        alpha=loss_cfg["alpha"],
        beta=loss_cfg["beta"],
        delta_aggregation=loss_cfg["delta_aggregation"],
        delta_discrimination=loss_cfg["delta_discrimination"],
        ohem_ratio=loss_cfg["ohem_ratio"],
        max_instances=int(max(gt[0].max(), gt[1].max())) + 1,
    )

    def total(p):
        terms, sampled = pan_loss_per_image(p, *gt, config)
        value, parts = pan_loss(p, *gt, config)
        return value, (terms, sampled, parts)

    (value, (terms, sampled, parts)), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(jnp.asarray(preds))
    np.testing.assert_array_equal(np.asarray(sampled), ref[f"{case}_ohem_mask"])
    per_image = np.stack([np.asarray(terms[k]) for k in TERMS], axis=1)
    np.testing.assert_allclose(per_image, ref[f"{case}_terms_per_image"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([float(parts[k]) for k in TERMS], ref[f"{case}_terms"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(value), ref[f"{case}_terms"].sum(), rtol=1e-5)
    assert bool(np.isfinite(grad).all()) == bool(ref[f"{case}_grad_finite"])
    _assert_grad(grad, ref[f"{case}_grad"])


def test_pan_aux_loss(ref, pan_cfg):
    pred = ref["pan_aux_pred"].transpose(0, 2, 3, 1)  # S / tau at stride 32 (C5)
    gt_text, _, gt_mask = _batch_targets(ref, "pan_loss", (pred.shape[1] * 32, pred.shape[2] * 32), 1.0)
    loss, grad = jax.jit(jax.value_and_grad(lambda s: pan_score_map_aux_loss(s, gt_text, gt_mask, tau=1.0)))(
        jnp.asarray(pred)
    )
    np.testing.assert_allclose(float(loss), ref["pan_aux_loss"], rtol=1e-5)
    _assert_grad(grad, ref["pan_aux_grad"])


def _pp_cases(ref) -> list[str]:
    return sorted({m.group(1) for k in ref if (m := re.fullmatch(r"(pan_pp\d+)_preds", k))})


def _boundaries(ref, name: str) -> list[np.ndarray]:
    return np.split(ref[f"{name}_flat"], np.cumsum(ref[f"{name}_len"])[:-1])


def test_pan_postprocess(ref, pan_cfg):
    pp = pan_cfg["postprocess"]
    base = PANPostprocessConfig(
        min_text_confidence=pp["min_text_confidence"],
        min_kernel_confidence=pp["min_kernel_confidence"],
        min_text_avg_confidence=pp["min_text_avg_confidence"],
        min_text_area=pp["min_text_area"],
        distance_threshold=pp["pixel_group_distance_threshold"],
        downsample_ratio=pp["downsample_ratio"],
    )
    cases = _pp_cases(ref)
    assert cases
    for case in cases:
        preds = ref[f"{case}_preds"].transpose(1, 2, 0)
        inputs = group_inputs(preds, base)
        np.testing.assert_array_equal(inputs.text_mask, ref[f"{case}_text_mask"])
        np.testing.assert_array_equal(inputs.kernel_labels, ref[f"{case}_kernel_labels"])
        np.testing.assert_array_equal(inputs.kernel_contours, ref[f"{case}_kernel_contours"])
        labels, conf_count = pixel_group(inputs, base.distance_threshold)
        np.testing.assert_array_equal(labels, ref[f"{case}_group_labels"], err_msg=case)
        want = ref[f"{case}_group_conf_cnt"]
        np.testing.assert_array_equal(conf_count[:, 1], want[:, 1])
        np.testing.assert_allclose(conf_count[:, 0], want[:, 0], rtol=0, atol=1e-6)
        for variant in pp["variants"]:
            text_repr, _, rescaled = variant.partition("_")
            scale = ref[f"{case}_scale_factor"] if rescaled else None
            ours = pan_postprocess(preds, pan_resolve_config(base, text_repr=text_repr), scale)
            expected = _boundaries(ref, f"{case}_{variant}")
            assert [len(b) for b in ours] == [len(b) for b in expected], (case, variant)
            for got, exp in zip(ours, expected, strict=True):
                np.testing.assert_array_equal(got[:-1], exp[:-1], err_msg=f"{case} {variant}")
                assert abs(got[-1] - exp[-1]) <= 1e-6, (case, variant)


def test_pan_presets():
    assert pan_resolve_config("tcm_ic15").text_repr == "quad"
    assert pan_resolve_config("tcm_ctw1500").text_repr == "poly"
    assert pan_resolve_config("mmocr", min_text_area=4).min_text_area == 4
    with pytest.raises(ValueError, match="unknown PAN preset"):
        pan_resolve_config("nope")


@pytest.fixture(scope="module")
def pan_weights():
    from safetensors.numpy import load_file

    return load_file(FIXTURE / "panet_tiny.safetensors")


def test_pan_net_forward_eval_and_train(ref, pan_weights):
    model = load_official_pan(pan_weights)
    feats = [jnp.asarray(ref[f"pan_net_in_c{i}"].transpose(0, 2, 3, 1)) for i in (2, 3, 4, 5)]
    with jax.default_matmul_precision("highest"):
        neck = model.neck(feats)
        for i, level in enumerate(neck):
            np.testing.assert_allclose(_nchw(level), ref[f"pan_net_eval_ffm{i}"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_nchw(model.bbox_head(neck)), ref["pan_net_eval_out"], rtol=1e-5, atol=1e-5)
        model.train()
        np.testing.assert_allclose(_nchw(model(feats)), ref["pan_net_train_out"], rtol=1e-4, atol=1e-4)
    state = model_flat_state(model)
    stats = [k for k in ref if k.startswith("pan_net_train_after/") and not k.endswith("num_batches_tracked")]
    assert stats
    for key in stats:
        module, leaf = key.split("/", 1)[1].rsplit(".", 1)
        ours = state["/".join([*module.split("."), {"running_mean": "mean", "running_var": "var"}[leaf]])]
        np.testing.assert_allclose(np.asarray(ours), ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_pan_loader_names_bad_tensors(pan_weights):
    bad = dict(pan_weights)
    del bad["neck.fpems.0.up_add1.bn.weight"]
    bad["bbox_head.extra.weight"] = np.zeros((6, 4, 1, 1), np.float32)
    bad["bbox_head.out_conv.bias"] = np.zeros(7, np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_official_pan(bad)
    message = str(err.value)
    assert "neck/fpems/0/up_add1/bn/scale" in message
    assert "bbox_head/extra/kernel" in message
    assert "bbox_head/out_conv/bias" in message
    with pytest.raises(CheckpointMismatchError, match="neck.reduce_conv_c5.0.weight"):
        load_official_pan({k: v for k, v in pan_weights.items() if not k.startswith("neck.reduce_conv_c5.0")})


def _sequential_pixel_group(inputs, threshold: float) -> np.ndarray:
    """mmcv's C++ ``pixel_group`` transcribed pixel by pixel (a FIFO queue), for the contested-pixel check below."""
    h, w = inputs.text_mask.shape
    labels = inputs.kernel_labels.copy()
    emb = inputs.embedding
    sums = np.zeros((inputs.num_labels, emb.shape[-1]), np.float32)
    counts = np.zeros(inputs.num_labels, np.float32)
    queue = collections.deque()
    for y, x in zip(*np.nonzero(labels > 0), strict=True):  # row-major
        sums[labels[y, x]] += emb[y, x]
        counts[labels[y, x]] += 1
        if inputs.kernel_contours[y, x]:
            queue.append((y, x, labels[y, x]))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    limit = np.float32(threshold) * np.float32(threshold)
    while queue:
        y, x, lab = queue.popleft()
        for ny, nx in ((y, x - 1), (y, x + 1), (y - 1, x), (y + 1, x)):
            if not (0 <= ny < h and 0 <= nx < w) or not inputs.text_mask[ny, nx] or labels[ny, nx] > 0:
                continue
            dist = np.float32(0)
            for c in range(emb.shape[-1]):
                dist = np.float32(float(dist) + float(means[lab, c] - emb[ny, nx, c]) ** 2)
            if dist < limit:
                labels[ny, nx] = lab
                queue.append((ny, nx, lab))
    return labels


def test_pixel_group_contested_pixels_follow_the_queue_order():
    """Dense random kernels with close embeddings: many pixels are reachable from several kernels at the same depth,
    so the owner depends on the queue order (the fixture maps do not pin it down)."""
    rng = np.random.default_rng(0)
    for _ in range(12):
        h, w = rng.integers(12, 28, 2)
        preds = np.concatenate(
            [
                rng.normal(1.5, 1.0, (h, w, 1)),
                np.where(rng.uniform(size=(h, w, 1)) < 0.15, 3.0, -3.0),
                rng.normal(0.0, 0.25, (h, w, 4)),
            ],
            axis=-1,
        ).astype(np.float32)
        inputs = group_inputs(preds)
        labels, _ = pixel_group(inputs, 0.85)
        np.testing.assert_array_equal(labels, _sequential_pixel_group(inputs, 0.85))
