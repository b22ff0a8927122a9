"""PANet parity with the official mmocr 0.4 / mmcv 1.3.17 / TCM code (``tests/data/fce_pan_mmocr``, see its README).

Every size and parameter comes from the fixture's arrays and ``config.json``, so the same checks run on another
folder of the same layout: set ``CTS_FCE_PAN_FIXTURE``. Tolerances (``fcenet_panet.md`` §12): masks, ids, OHEM
masks, labels and boundary coordinates exact; float32 values 1e-5 (train-mode BatchNorm forward 1e-4); scores 1e-6.
"""

import collections
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA

from clip_text_spot.data.db_targets import shrink_offset
from clip_text_spot.heads.pan.aux import pan_score_map_aux_loss
from clip_text_spot.heads.pan.loss import TERMS, PANLossConfig, pan_loss, pan_loss_per_image
from clip_text_spot.heads.pan.model import load_official_pan
from clip_text_spot.heads.pan.postprocess import (
    PANPostprocessConfig,
    group_inputs,
    pan_postprocess,
    pixel_group,
    resolve_config,
)
from clip_text_spot.heads.pan.targets import PANTargetConfig, loss_targets, pan_targets
from clip_text_spot.models.clip.convert import CheckpointMismatchError, model_flat_state

FIXTURE = pathlib.Path(os.environ.get("CTS_FCE_PAN_FIXTURE", DATA / "fce_pan_mmocr"))


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def cfg():
    return json.loads((FIXTURE / "config.json").read_text())["pan"]


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


def _target_config(cfg) -> PANTargetConfig:
    return PANTargetConfig(tuple(cfg["targets"]["shrink_ratio"]), cfg["targets"]["max_shrink"])


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
def test_pan_targets(ref, cfg, prefix):
    config = _target_config(cfg)
    for k, (polys, ignore, hw) in enumerate(_images(ref, prefix)):
        kernels, mask = pan_targets(polys, ignore, hw, config)
        np.testing.assert_array_equal(kernels, ref[f"{prefix}_targets_kernels_{k}"], err_msg=f"{prefix} image {k}")
        np.testing.assert_array_equal(mask, ref[f"{prefix}_targets_mask_{k}"][0], err_msg=f"{prefix} image {k}")


def test_pan_shrink_substeps(ref, cfg):
    ratios, max_shrink = cfg["targets"]["shrink_ratio"], cfg["targets"]["max_shrink"]
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
def test_pan_loss(ref, cfg, case):
    assert case in _loss_cases(ref)
    preds = ref[f"{case}_preds"].transpose(0, 2, 3, 1)
    gt = _batch_targets(ref, case, preds.shape[1:3], cfg["loss"]["downsample_ratio"])
    for name, ours in zip(("gt_text", "gt_kernel", "gt_mask"), gt, strict=True):
        np.testing.assert_array_equal(ours, ref[f"{case}_{name}"], err_msg=name)

    loss_cfg = cfg["loss"]
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


def test_pan_aux_loss(ref, cfg):
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


def test_pan_postprocess(ref, cfg):
    pp = cfg["postprocess"]
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
            ours = pan_postprocess(preds, resolve_config(base, text_repr=text_repr), scale)
            expected = _boundaries(ref, f"{case}_{variant}")
            assert [len(b) for b in ours] == [len(b) for b in expected], (case, variant)
            for got, exp in zip(ours, expected, strict=True):
                np.testing.assert_array_equal(got[:-1], exp[:-1], err_msg=f"{case} {variant}")
                assert abs(got[-1] - exp[-1]) <= 1e-6, (case, variant)


def test_pan_presets():
    assert resolve_config("tcm_ic15").text_repr == "quad"
    assert resolve_config("tcm_ctw1500").text_repr == "poly"
    assert resolve_config("mmocr", min_text_area=4).min_text_area == 4
    with pytest.raises(ValueError, match="unknown PAN preset"):
        resolve_config("nope")


@pytest.fixture(scope="module")
def weights():
    from safetensors.numpy import load_file

    return load_file(FIXTURE / "panet_tiny.safetensors")


def test_pan_net_forward_eval_and_train(ref, weights):
    model = load_official_pan(weights)
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


def test_pan_loader_names_bad_tensors(weights):
    bad = dict(weights)
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
        load_official_pan({k: v for k, v in weights.items() if not k.startswith("neck.reduce_conv_c5.0")})


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
