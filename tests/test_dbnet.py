"""FPNC + DB head and the DBNet/TCM losses against PyTorch references written here after mmocr 0.4's algorithms.

The references use torch's own ``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.BatchNorm2d``, ``F.interpolate``,
``F.binary_cross_entropy(_with_logits)`` and ``torch.topk``; weights go from the torch model to ours through
``official_to_flat`` (official mmocr names), so a layout or naming slip fails the parity tests.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from clip_text_spot.heads.common import balanced_bce, nearest_resize, official_to_flat
from clip_text_spot.heads.db import DBDecoder, DBHead, db_loss, dice_loss, masked_l1, score_map_aux_loss
from clip_text_spot.models.clip.convert import assign_flat, model_flat_state

TOL = 1e-5
TCM_CHANNELS = (256, 512, 1024, 2049)

# ----------------------------------------------------------------------------------------------------------------
# PyTorch reference of mmocr 0.4's FPNC + DBHead (module names as in the official state dict)


class TorchConvModule(nn.Module):
    """mmcv ConvModule with norm and activation off: only ``conv``."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)

    def forward(self, x):
        return self.conv(x)


class TorchFPNC(nn.Module):
    def __init__(self, in_channels, lateral=256, out=64):
        super().__init__()
        self.lateral_convs = nn.ModuleList(TorchConvModule(c, lateral, 1) for c in in_channels)
        self.smooth_convs = nn.ModuleList(TorchConvModule(lateral, out, 3) for _ in in_channels)

    def forward(self, feats):
        lat = [m(x) for m, x in zip(self.lateral_convs, feats, strict=True)]
        for i in reversed(range(1, len(lat))):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [m(x) for m, x in zip(self.smooth_convs, lat, strict=True)]
        return torch.cat([F.interpolate(o, size=outs[0].shape[2:], mode="nearest") for o in outs], dim=1)


def torch_branch(c: int) -> nn.Sequential:
    q = c // 4
    return nn.Sequential(
        nn.Conv2d(c, q, 3, padding=1, bias=False), nn.BatchNorm2d(q), nn.ReLU(),
        nn.ConvTranspose2d(q, q, 2, 2), nn.BatchNorm2d(q), nn.ReLU(),
        nn.ConvTranspose2d(q, 1, 2, 2), nn.Sigmoid(),
    )  # fmt: skip


class TorchDBHead(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.binarize = torch_branch(c)
        self.threshold = torch_branch(c)

    def forward(self, x):
        p, t = self.binarize(x), self.threshold(x)
        return torch.cat([p, t, torch.reciprocal(1.0 + torch.exp(-50.0 * (p - t)))], dim=1)


class TorchDBNet(nn.Module):
    def __init__(self, in_channels, lateral=256, out=64):
        super().__init__()
        self.neck = TorchFPNC(in_channels, lateral, out)
        self.bbox_head = TorchDBHead(out * len(in_channels))

    def forward(self, feats):
        return self.bbox_head(self.neck(feats))


def build_pair(in_channels, lateral: int, out: int, seed: int) -> tuple[TorchDBNet, DBDecoder]:
    """A torch model with non-trivial BatchNorm state and our model loaded from its official-name state dict."""
    torch.manual_seed(seed)
    ref = TorchDBNet(in_channels, lateral, out)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    ours = nnx.eval_shape(lambda: DBDecoder(in_channels, lateral, out, rngs=nnx.Rngs(0)))  # every weight from torch
    assign_flat(ours, official_to_flat({k: v.numpy() for k, v in ref.state_dict().items()}), "torch DBNet")
    return ref, ours


def features(rng: np.random.Generator, b: int, sizes, channels) -> list[np.ndarray]:
    return [rng.standard_normal((b, h, w, c), dtype=np.float32) for (h, w), c in zip(sizes, channels, strict=True)]


def run_both(ref: TorchDBNet, ours: DBDecoder, feats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        expected = ref([torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for f in feats]).numpy()
    got = np.stack(ours([jnp.asarray(f) for f in feats]), axis=1)
    return got, expected


# ----------------------------------------------------------------------------------------------------------------
# modules


def test_tcm_shapes_at_640():
    model = nnx.eval_shape(lambda: DBDecoder(TCM_CHANNELS, rngs=nnx.Rngs(0)))
    feats = [
        jax.ShapeDtypeStruct((2, 640 // s, 640 // s, c), jnp.float32)
        for s, c in zip((4, 8, 16, 32), TCM_CHANNELS, strict=True)
    ]
    neck = nnx.eval_shape(lambda m, f: m.neck(f), model, feats)
    maps = nnx.eval_shape(lambda m, f: m(f), model, feats)
    assert neck.shape == (2, 160, 160, 256)
    assert [m.shape for m in maps] == [(2, 640, 640)] * 3
    flat = model_flat_state(model)
    assert flat["neck/lateral_convs/3/conv/kernel"].shape == (1, 1, 2049, 256)
    assert flat["neck/smooth_convs/0/conv/kernel"].shape == (3, 3, 256, 64)
    assert flat["bbox_head/binarize/0/kernel"].shape == (3, 3, 256, 64)
    assert flat["bbox_head/threshold/3/kernel"].shape == (2, 2, 64, 64)
    assert flat["bbox_head/binarize/6/kernel"].shape == (2, 2, 1, 64)
    assert not any(k.startswith("neck/") and k.endswith("bias") for k in flat)


def test_batchnorm_init():
    flat = model_flat_state(DBHead(8, rngs=nnx.Rngs(0)))
    np.testing.assert_array_equal(flat["binarize/4/scale"], 1.0)
    np.testing.assert_allclose(flat["threshold/1/bias"], 1e-4)
    assert {k for k in flat if k.startswith("binarize/") and k.endswith("bias")} == {
        f"binarize/{i}/bias" for i in (1, 3, 4, 6)
    }


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_decoder_matches_torch_tcm_channels(train: bool):
    ref, ours = build_pair(TCM_CHANNELS, 256, 64, seed=0)
    ref.train(train)
    if train:
        ours.train()
    else:
        ours.eval()
    feats = features(np.random.default_rng(0), 2, [(8, 12), (4, 6), (2, 3), (1, 2)], TCM_CHANNELS)  # 32x48 input
    got, expected = run_both(ref, ours, feats)
    assert got.shape == expected.shape == (2, 3, 32, 48)
    assert expected[:, :2].std() > 0.05  # maps are not saturated
    np.testing.assert_allclose(got[:, :2], expected[:, :2], atol=TOL)
    # binary = sigmoid(50 (prob - thr)) amplifies prob/thr differences up to 12.5x; batch statistics of 2x8x12
    # pixels leave ~1e-6 float32 differences in prob/thr in train mode
    np.testing.assert_allclose(got[:, 2], expected[:, 2], atol=TOL * (12.5 if train else 1))
    # running means: updated with momentum 0.1 (PyTorch) = 0.9 (flax) in train mode, untouched in eval mode
    np.testing.assert_allclose(
        model_flat_state(ours)["bbox_head/threshold/4/mean"], ref.bbox_head.threshold[4].running_mean, atol=1e-6
    )


def test_decoder_matches_torch_on_odd_sizes():
    """Level sizes that are not 2x apart exercise PyTorch's general nearest-index rule in both resizes."""
    channels = (8, 16, 24, 33)
    ref, ours = build_pair(channels, 16, 8, seed=1)
    ref.eval()
    ours.eval()
    feats = features(np.random.default_rng(1), 1, [(13, 10), (7, 5), (4, 3), (2, 2)], channels)
    got, expected = run_both(ref, ours, feats)
    assert got.shape == (1, 3, 52, 40)
    np.testing.assert_allclose(got, expected, atol=TOL)


@pytest.mark.parametrize(("n", "size"), [(7, 13), (5, 10), (3, 7), (2, 13), (9, 4)])
def test_nearest_resize_matches_torch(n: int, size: int):
    x = np.random.default_rng(n).standard_normal((1, n, n + 1, 2), dtype=np.float32)
    expected = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(size, size + 2), mode="nearest")
    got = nearest_resize(jnp.asarray(x), (size, size + 2))
    np.testing.assert_array_equal(got, expected.numpy().transpose(0, 2, 3, 1))


def test_official_mapping_skips_other_modules_and_rejects_unknown_tensors():
    sd = {
        "backbone.conv1.weight": np.zeros((4, 3, 3, 3), np.float32),
        "bbox_head.binarize.1.num_batches_tracked": np.zeros((), np.int64),
        "bbox_head.binarize.1.running_var": np.full(4, 2.0, np.float32),
        "bbox_head.binarize.3.weight": np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 2, 2),
    }
    flat = official_to_flat(sd)
    assert sorted(flat) == ["bbox_head/binarize/1/var", "bbox_head/binarize/3/kernel"]
    assert flat["bbox_head/binarize/3/kernel"].shape == (2, 2, 3, 2)
    assert flat["bbox_head/binarize/3/kernel"][1, 0, 2, 1] == sd["bbox_head.binarize.3.weight"][1, 2, 1, 0]
    with pytest.raises(ValueError, match="neck.lateral_convs.0.conv.scale"):
        official_to_flat({"neck.lateral_convs.0.conv.scale": np.ones(3, np.float32)})


def test_compute_dtype_bfloat16_keeps_float32_params():
    model = nnx.eval_shape(lambda: DBDecoder(TCM_CHANNELS, rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
    feats = [
        jax.ShapeDtypeStruct((1, 32 // s, 32 // s, c), jnp.float32)
        for s, c in zip((4, 8, 16, 32), TCM_CHANNELS, strict=True)
    ]
    assert {v.dtype for v in model_flat_state(model).values()} == {jnp.dtype(jnp.float32)}
    maps = nnx.eval_shape(lambda m, f: m(f), model, feats)
    assert {m.dtype for m in maps} == {jnp.dtype(jnp.bfloat16)}


# ----------------------------------------------------------------------------------------------------------------
# losses: PyTorch references of mmocr 0.4's DBLoss parts and TCM's IdentityHead


def torch_balanced_bce(pred, gt, mask, logits=False, ratio=3.0, eps=1e-6):
    pos, neg = gt * mask, (1 - gt) * mask
    n_pos = int(pos.sum())
    n_neg = min(int(neg.sum()), int(n_pos * ratio))
    bce = F.binary_cross_entropy_with_logits if logits else F.binary_cross_entropy
    per_pixel = bce(pred, gt, reduction="none")
    hardest = torch.topk((per_pixel * neg).reshape(-1), n_neg).values
    return ((per_pixel * pos).sum() + hardest.sum()) / (n_pos + n_neg + eps)


def torch_dice(pred, gt, mask, eps=1e-6):
    p, g = pred * mask, gt * mask
    return 1 - 2 * (p * g).sum() / (p.sum() + g.sum() + eps)


def torch_l1(pred, gt, mask, eps=1e-6):
    return ((pred - gt) * mask).abs().sum() / (mask.sum() + eps)


def loss_case(seed: int, pos_rate: float, shape=(2, 12, 16)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    gt = (rng.uniform(size=shape) < pos_rate).astype(np.float32)
    mask = (rng.uniform(size=shape) < 0.9).astype(np.float32)
    # clamped logs (-100) and PyTorch's clamped BCE gradient, on positives and on negatives
    prob.flat[:4] = [0.0, 1.0, 1e-30, 1.0 - 2**-24]
    mask.flat[:4] = 1.0
    if pos_rate:
        gt.flat[:4] = [1.0, 0.0, 1.0, 0.0]
    return dict(prob=prob, logits=rng.normal(0.0, 4.0, shape).astype(np.float32), gt=gt, mask=mask)


bbce_jit = jax.jit(balanced_bce, static_argnames=("negative_ratio", "eps", "from_logits"))


@pytest.mark.parametrize("case", ["ohem", "few-neg", "no-pos"])
@pytest.mark.parametrize("logits", [False, True], ids=["probs", "logits"])
def test_balanced_bce_matches_torch(case: str, logits: bool):
    pos_rate = {"ohem": 0.1, "few-neg": 0.6, "no-pos": 0.0}[case]
    c = loss_case(3, pos_rate)
    pos, neg = (c["gt"] * c["mask"]).sum(), ((1 - c["gt"]) * c["mask"]).sum()
    assert {"ohem": 0 < 3 * pos < neg, "few-neg": 0 < neg < 3 * pos, "no-pos": pos == 0 < neg}[case]
    x = c["logits"] if logits else c["prob"]
    xt = torch.tensor(x, requires_grad=True)
    expected = torch_balanced_bce(xt, torch.tensor(c["gt"]), torch.tensor(c["mask"]), logits=logits)
    got, grad = jax.value_and_grad(bbce_jit)(x, c["gt"], c["mask"], from_logits=logits)
    if case == "no-pos":
        assert float(got) == 0.0 == expected.item()
        return
    assert expected.item() > 0.1
    np.testing.assert_allclose(got, expected.item(), rtol=TOL, atol=TOL)
    expected.backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=TOL, atol=1e-7)


def test_dice_l1_and_db_loss_match_torch():
    c = loss_case(4, 0.2)
    rng = np.random.default_rng(4)
    thr = rng.uniform(0.2, 0.8, c["gt"].shape).astype(np.float32)
    binary = rng.uniform(0.0, 1.0, c["gt"].shape).astype(np.float32)
    gt_thr = rng.uniform(0.3, 0.7, c["gt"].shape).astype(np.float32)
    thr_mask = (rng.uniform(size=c["gt"].shape) < 0.4).astype(np.float32)
    shrink = c["gt"] * 3.0  # instance indices: binarised (> 0) inside db_loss
    targets = dict(gt_shrink=shrink, gt_shrink_mask=c["mask"], gt_thr=gt_thr, gt_thr_mask=thr_mask)
    t = {k: torch.tensor(v) for k, v in dict(c, thr=thr, binary=binary, gt_thr=gt_thr, thr_mask=thr_mask).items()}
    dice_ref = torch_dice(t["binary"], t["gt"], t["mask"]).item()
    l1_ref = torch_l1(t["thr"], t["gt_thr"], t["thr_mask"]).item()
    prob_ref = torch_balanced_bce(t["prob"], t["gt"], t["mask"]).item()
    np.testing.assert_allclose(dice_loss(binary, c["gt"], c["mask"]), dice_ref, rtol=TOL)
    np.testing.assert_allclose(masked_l1(thr, gt_thr, thr_mask), l1_ref, rtol=TOL)
    total, parts = jax.jit(db_loss)(c["prob"], thr, binary, targets)
    np.testing.assert_allclose(parts["loss_prob"], 5 * prob_ref, rtol=TOL)
    np.testing.assert_allclose(parts["loss_db"], dice_ref, rtol=TOL)
    np.testing.assert_allclose(parts["loss_thr"], 10 * l1_ref, rtol=TOL)
    np.testing.assert_allclose(total, 5 * prob_ref + dice_ref + 10 * l1_ref, rtol=TOL)


def test_gradients_are_finite_at_saturation():
    shape = (1, 8, 8)
    prob = np.full(shape, 0.5, np.float32)
    prob[0, 0, :4] = [0.0, 1.0, 1e-45, 1e-40]  # exact 0/1 and denormals, both as positives and negatives
    prob[0, 1, :4] = [0.0, 1.0, 1e-45, 1e-40]
    gt = np.zeros(shape, np.float32)
    gt[0, 0] = 1.0
    targets = dict(gt_shrink=gt, gt_shrink_mask=np.ones(shape, np.float32), gt_thr=prob, gt_thr_mask=gt)
    grads = jax.grad(lambda p, t, b: db_loss(p, t, b, targets)[0], argnums=(0, 1, 2))(prob, prob * 0.5, prob)
    assert all(np.isfinite(g).all() for g in grads)
    assert np.abs(grads[0]).max() > 0
    logits = np.zeros(shape, np.float32)
    logits[0, :2, :3] = [[-1e4, 1e4, 88.0]] * 2
    g = jax.grad(lambda x: balanced_bce(x, gt, np.ones(shape, np.float32), from_logits=True))(logits)
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    s = np.zeros((1, 1, 1, 1), np.float32)
    g = jax.grad(lambda s: score_map_aux_loss(s, np.pad(gt, ((0, 0), (0, 24), (0, 24))), np.ones((1, 32, 32))))(s)
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_aux_loss_hand_made_constant_map():
    """One score-map cell of cosine 0.14 -> every upsampled logit is 0.14 / 0.07 = 2 (bilinear keeps constants).

    16 positives, 944 unmasked negatives (64 pixels ignored), so OHEM keeps 3 * 16 = 48 negatives, all equal:
    loss = (16 softplus(-2) + 48 softplus(2)) / 64.
    """
    gt = np.zeros((1, 32, 32), np.float32)
    gt[0, :4, :4] = 1.0
    mask = np.ones((1, 32, 32), np.float32)
    mask[0, 30:] = 0.0
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    expected = (16 * sp(-2.0) + 48 * sp(2.0)) / (64 + 1e-6)
    got = score_map_aux_loss(np.full((1, 1, 1, 1), 0.14, np.float32), gt, mask)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert float(score_map_aux_loss(np.full((1, 1, 1, 1), 0.14, np.float32), gt * 0, mask)) == 0.0


def test_aux_loss_matches_torch_interpolate_and_bbce():
    rng = np.random.default_rng(5)
    score = rng.uniform(-1.0, 1.0, (2, 2, 3, 1)).astype(np.float32)
    gt = (rng.uniform(size=(2, 64, 96)) < 0.15).astype(np.float32)
    mask = (rng.uniform(size=(2, 64, 96)) < 0.95).astype(np.float32)
    logits = F.interpolate(
        torch.tensor(score.transpose(0, 3, 1, 2)) / 0.07, size=(64, 96), mode="bilinear", align_corners=False
    )[:, 0]
    expected = torch_balanced_bce(logits, torch.tensor(gt), torch.tensor(mask), logits=True).item()
    got = jax.jit(score_map_aux_loss)(score, gt, mask)
    np.testing.assert_allclose(got, expected, rtol=TOL)
    with pytest.raises(ValueError, match="targets must be"):
        score_map_aux_loss(score, gt[:, :32], mask[:, :32])
