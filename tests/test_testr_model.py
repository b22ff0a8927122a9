"""TESTR forward parity with the official modules (``testr_tiny`` fixture, or the folder in ``CTS_TESTR_FIXTURE``).

One jitted forward with a capture dict yields every intermediate the fixture stores (positions, projections,
encoder, proposals, top-k, decoder sub-steps, deformable-attention locations/weights, heads); each must match within
1e-5. Positions and encoder outputs are compared where the mask is False (the fixture README explains why).
"""

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

from clip_text_spot.models.clip.convert import CheckpointMismatchError
from clip_text_spot.models.testr import TESTR, TESTRConfig, from_official_testr
from clip_text_spot.models.testr.backbone import Frozen
from clip_text_spot.models.testr.official import from_official_testr_detector

FIXTURE = pathlib.Path(os.environ.get("CTS_TESTR_FIXTURE", DATA / "testr_tiny"))
CKPT = str(FIXTURE / "testr.safetensors")
EFF = json.loads((FIXTURE / "config.json").read_text())["effective"]
LAST = EFF["dec_layers"] - 1  # the last copy of the heads shared by all decoder layers
TOL = 1e-5
# compared where the mask (mask_l{i} / mask_flatten) is False
MASKED = ("pos_l", "enc_layer", "memory", "msda_enc0_")
# not forward outputs of TESTR (targets, matcher, losses, gradients, inference, the standalone MSDA checks)
OTHERS = ("in_", "tgt_", "match_", "loss", "infer_", "grad_", "msda_core_", "msda_module_", "msda_init_", "num_inst")


def load_kwargs() -> dict:
    """``from_official_testr`` arguments from the fixture's config (what tensor shapes cannot tell, and checks)."""
    return dict(
        heads=EFF["nhead"],
        enc_points=EFF["enc_n_points"],
        dec_points=EFF["dec_n_points"],
        num_queries=EFF["num_queries"],
        voc_size=EFF["voc_size"],
        use_polygon=EFF["use_polygon"],
    )


def load(**overrides):
    return from_official_testr(CKPT, **{**load_kwargs(), **overrides})


def nhwc_inputs(ref):
    feats = [jnp.asarray(ref[f"in_res{i}"].transpose(0, 2, 3, 1)) for i in (3, 4, 5)]
    return feats, jnp.asarray(ref["in_image_sizes"], jnp.int32)


def run(model, feats, sizes):
    """(outputs, flat capture with '/'-joined names), one jit."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, feats, sizes):
        capture = {}
        out = nnx.merge(graphdef, state).forward_features(feats, sizes, capture=capture)
        return out, capture

    out, capture = forward(state, feats, sizes)
    flat = {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(capture).items()}
    return jax.tree.map(np.asarray, out), flat


@pytest.fixture(scope="module")
def ref():
    return np.load(FIXTURE / "reference.npz")


@pytest.fixture(scope="module")
def forward(ref):
    return run(load(), *nhwc_inputs(ref))


def ours(name: str, out: dict, flat: dict) -> np.ndarray:
    """Our array for a fixture name."""
    for prefix, path in (
        ("msda_enc0_", "enc0/self_attn/"),
        ("msda_dec0_loc_", "dec0/attn_cross/"),
        ("msda_dec0_text_", "dec0/attn_cross_text/"),
        ("dec0_", "dec0/"),
        ("enc_pred_", None),
    ):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            return out["enc_outputs"][f"pred_{rest}"] if path is None else flat[path + rest]
    if name.startswith("aux"):
        layer, key = name[3:].split("_", 1)
        return out["aux_outputs"][int(layer)][key]
    if name == "enc_outputs_class":
        return out["enc_outputs"]["pred_logits"]
    return out[name] if name in out else flat[name]


def forward_names(ref) -> list[str]:
    return [k for k in ref.files if not k.startswith(OTHERS) and k not in ("spatial_shapes", "level_start_index")]


def test_forward_matches_official(ref, forward):
    out, flat = forward
    names = forward_names(ref)
    assert {"pred_logits", "pred_ctrl_points", "pred_texts", "hs", "hs_text", "memory", "topk_indices"} <= set(names)
    errors = {}
    for name in names:
        want, got = ref[name], ours(name, out, flat)
        if name.startswith(("src_proj_l", "pos_l")):
            want = want.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        if name.startswith(MASKED):
            mask = ref[f"mask_l{name[5:].split('_')[0]}"] if name.startswith("pos_l") else ref["mask_flatten"]
            want, got = want[~mask], got[~mask]
        assert got.shape == want.shape, name
        if want.dtype.kind in "biu":
            np.testing.assert_array_equal(got, want, err_msg=name)
            continue
        finite = np.isfinite(want)
        np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=name)  # +inf proposals of border tokens
        np.testing.assert_allclose(got[finite], want[finite], rtol=TOL, atol=TOL, err_msg=name)
        errors[name] = float(np.abs(got[finite] - want[finite]).max())
    print(f"max abs error {max(errors.values()):.2e} over {len(errors)} arrays")


def test_aux_and_levels_complete(ref, forward):
    out, flat = forward
    n_dec = ref["hs"].shape[0]
    assert len(out["aux_outputs"]) == n_dec - 1
    levels = ref["spatial_shapes"]
    assert [flat[f"mask_l{i}"].shape[1:] for i in range(len(levels))] == [tuple(s) for s in levels.tolist()]


def test_padded_batch_isolated_equals_alone(ref):
    """With isolate_padding, an image of the padded batch (whose padding holds the fixture's random features) gets
    what it gets alone, and differs from the official batched computation."""
    model = load(isolate_padding=True)
    feats, sizes = nhwc_inputs(ref)
    strides = EFF["strides"][:3]
    b = int(np.argmin(sizes[:, 0] * sizes[:, 1]))
    h, w = (int(v) for v in sizes[b])
    valid = [(-(-h // s), -(-w // s)) for s in strides]
    batch, _ = run(model, feats, sizes)
    alone, _ = run(model, [f[b : b + 1, :vh, :vw] for f, (vh, vw) in zip(feats, valid, strict=True)], sizes[b : b + 1])
    for key in ("pred_logits", "pred_ctrl_points", "pred_texts"):
        np.testing.assert_allclose(batch[key][b], alone[key][0], rtol=TOL, atol=TOL, err_msg=key)
    assert np.abs(batch["pred_logits"][b] - ref["pred_logits"][b]).max() > 1e-3  # padding reaches official outputs


@pytest.fixture(scope="module")
def state():
    return load_file(CKPT)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("transformer.decoder.layers.0.norm_inter_text.bias"), r"missing .*0\.norm_inter_text\.bias"),
        (lambda sd: sd.pop("transformer.decoder.layers.0.attn_intra.in_proj_weight"), r"0\.attn_intra\.in_proj_weight"),
        (lambda sd: sd.update({"transformer.decoder.layers.0.extra.weight": np.zeros(3, np.float32)}), "extra.weight"),
        (lambda sd: sd.update({"text_embed.weight": sd["text_embed.weight"][:, :-1]}), "text_embed.weight"),
        (
            lambda sd: sd.update({f"ctrl_point_class.{LAST}.bias": sd[f"ctrl_point_class.{LAST}.bias"] + 1}),
            "ctrl_point_class",
        ),
        (lambda sd: sd.update({"transformer.bbox_embed.layers.0.bias": sd["bbox_coord.layers.0.bias"] * 2}), "bbox"),
        (lambda sd: sd.pop("transformer.level_embed"), "transformer.level_embed"),
    ],
)
def test_checkpoint_mismatch_is_named(state, edit, message):
    sd = dict(state)
    edit(sd)
    with pytest.raises(CheckpointMismatchError, match=message):
        from_official_testr(sd, heads=EFF["nhead"])


def test_wrong_hyper_parameters_are_named():
    with pytest.raises(CheckpointMismatchError, match="enc_points"):
        load(enc_points=EFF["enc_n_points"] + 1)
    with pytest.raises(CheckpointMismatchError, match="voc_size"):
        load(voc_size=EFF["voc_size"] + 1)


def test_pickles_are_refused(tmp_path):
    with pytest.raises(ValueError, match="never unpickles"):
        from_official_testr(str(tmp_path / "model_final.pth"))


def test_prefixed_checkpoint_and_inferred_sizes(state):
    model = from_official_testr({f"testr.{k}": v for k, v in state.items()}, heads=EFF["nhead"])
    cfg = model.config
    got = (cfg.dim, cfg.levels, cfg.enc_layers, cfg.dec_layers, cfg.ffn, cfg.enc_points, cfg.dec_points, cfg.voc_size)
    want = ("d_model", "num_feature_levels", "enc_layers", "dec_layers", "dim_feedforward", "enc_n_points")
    assert got == (*(EFF[k] for k in want), EFF["dec_n_points"], EFF["voc_size"])
    assert (cfg.ctrl_points, cfg.chars, cfg.backbone_channels) == (
        EFF["num_ctrl_points"],
        EFF["num_chars"],
        tuple(EFF["backbone_channels"]),
    )


def d2_resnet_state(seed: int, stem: int, widths, outs, blocks) -> dict:
    """Random detectron2-named ResNet tensors (non-trivial FrozenBN statistics)."""
    rng = np.random.default_rng(seed)

    def conv_norm(name, cin, cout, k):
        sd[f"{name}.weight"] = rng.normal(0, (2 / (k * k * cin)) ** 0.5, (cout, cin, k, k)).astype(np.float32)
        sd[f"{name}.norm.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
        sd[f"{name}.norm.bias"] = rng.normal(0, 0.1, cout).astype(np.float32)
        sd[f"{name}.norm.running_mean"] = rng.normal(0, 0.1, cout).astype(np.float32)
        sd[f"{name}.norm.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)

    sd = {}
    conv_norm("stem.conv1", 3, stem, 7)
    cin = stem
    for s, (width, cout, n) in enumerate(zip(widths, outs, blocks, strict=True)):
        for j in range(n):
            name = f"res{s + 2}.{j}"
            if cin != cout:
                conv_norm(f"{name}.shortcut", cin, cout, 1)
            conv_norm(f"{name}.conv1", cin, width, 1)
            conv_norm(f"{name}.conv2", width, width, 3)
            conv_norm(f"{name}.conv3", width, cout, 1)
            cin = cout
    return sd


def torch_d2_resnet(sd: dict, pixels: np.ndarray) -> list[np.ndarray]:
    """detectron2's ResNet forward (STRIDE_IN_1X1 False, FrozenBN) with torch ops; res2..res5 NHWC."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(v) for k, v in sd.items()}

    def conv_norm(x, name, stride, pad):
        x = F.conv2d(x, t[f"{name}.weight"], stride=stride, padding=pad)
        scale = t[f"{name}.norm.weight"] * (t[f"{name}.norm.running_var"] + 1e-5).rsqrt()
        shift = t[f"{name}.norm.bias"] - t[f"{name}.norm.running_mean"] * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    with torch.no_grad():
        x = F.relu(conv_norm(torch.from_numpy(pixels).permute(0, 3, 1, 2), "stem.conv1", 2, 3))
        x = F.max_pool2d(x, 3, 2, 1)
        outs = []
        for s in range(2, 6):
            j = 0
            while f"res{s}.{j}.conv1.weight" in t:
                name, stride = f"res{s}.{j}", 2 if s > 2 and j == 0 else 1
                y = F.relu(conv_norm(x, f"{name}.conv1", 1, 0))
                y = F.relu(conv_norm(y, f"{name}.conv2", stride, 1))
                y = conv_norm(y, f"{name}.conv3", 1, 0)
                short = conv_norm(x, f"{name}.shortcut", stride, 0) if f"{name}.shortcut.weight" in t else x
                x = F.relu(y + short)
                j += 1
            outs.append(x.permute(0, 2, 3, 1).numpy())
    return outs


def test_detectron2_resnet_and_detector(ref, state):
    """A small detectron2-named ResNet (odd input size) against torch ops, loaded with the fixture's TESTR as one
    official detector: its TESTR output equals TESTR on the backbone's res3..res5."""
    sd = d2_resnet_state(1, 8, (4, 8, 8, 16), (16, *EFF["backbone_channels"]), (1, 2, 1, 1))
    pixels = np.random.default_rng(2).normal(size=(2, 70, 90, 3)).astype(np.float32)
    want = torch_d2_resnet(sd, pixels)
    full = {
        **{f"testr.{k}": v for k, v in state.items()},
        **{f"testr.backbone.0.backbone.{k}": v for k, v in sd.items()},
    }
    model = from_official_testr_detector(full, **load_kwargs())
    assert isinstance(model.backbone.stem.conv1.weight, Frozen) and isinstance(
        model.backbone.res3[0].conv1.weight, nnx.Param
    )
    sizes = jnp.asarray([[70, 90], [61, 77]], jnp.int32)
    graphdef, st = nnx.split(model)

    @jax.jit
    def forward(st, pixels):
        m = nnx.merge(graphdef, st)
        feats = m.backbone.features(pixels)
        return feats, m(pixels, sizes), m.testr.forward_features(feats[1:], sizes)

    feats, out, direct = forward(st, jnp.asarray(pixels))
    for got, exp in zip(feats, want, strict=True):
        np.testing.assert_allclose(np.asarray(got), exp, rtol=TOL, atol=TOL * max(1.0, float(np.abs(exp).max())))
    np.testing.assert_array_equal(np.asarray(out["pred_logits"]), np.asarray(direct["pred_logits"]))


def test_fresh_model_trains():
    """A randomly initialised TESTR in train mode (dropout on): one jitted gradient through encoder, top-k and
    decoder is finite and reaches the zero-initialised sampling offsets, the extra level's conv and the character
    queries."""
    cfg = TESTRConfig(
        dim=32, heads=2, levels=4, enc_layers=1, dec_layers=1, ffn=32, enc_points=2, dec_points=2, num_queries=4,
        ctrl_points=4, chars=3, voc_size=5, backbone_channels=(8, 16, 32),
    )  # fmt: skip
    model = TESTR(cfg, rngs=nnx.Rngs(0))
    assert float(model.ctrl_point_class.bias[0]) == pytest.approx(-4.59512, abs=1e-5)
    assert not np.any(np.asarray(model.ctrl_point_coord.layers[-1].kernel[...]))
    model.train()
    rng = np.random.default_rng(0)
    feats = [jnp.asarray(rng.normal(size=(2, 8 // s, 12 // s, c)), jnp.float32) for s, c in ((1, 8), (2, 16), (4, 32))]
    sizes = jnp.asarray([[64, 96], [40, 72]], jnp.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grad(params, rest, key):
        def loss(params):
            out = nnx.merge(graphdef, params, rest).forward_features(feats, sizes, rngs=nnx.Rngs(dropout=key))
            enc = out["enc_outputs"]["pred_logits"]
            return sum(jnp.sum(out[k] ** 2) for k in ("pred_logits", "pred_ctrl_points", "pred_texts")) + enc.sum()

        return jax.grad(loss)(params)

    g = nnx.to_pure_dict(grad(params, rest, jax.random.key(1)))
    leaves = jax.tree.leaves(g)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    layer = g["transformer"]["decoder_layers"][0]
    assert np.abs(np.asarray(layer["attn_cross"]["sampling_offsets"]["kernel"])).max() > 0
    assert np.abs(np.asarray(g["input_proj"][3]["conv"]["kernel"])).max() > 0
    assert np.abs(np.asarray(g["text_embed"])).max() > 0


def test_parameter_gradients_match_official(ref):
    """d loss_total / d parameter (the model's forward and the set criterion on the fixture's targets, one jitted
    gradient) against the fixture's ``grad_<official name>`` arrays, mapped to our names and layouts as weights
    are."""
    from clip_text_spot.models.testr.losses import LossConfig, criterion_loss
    from clip_text_spot.models.testr.official import official_to_flat
    from clip_text_spot.models.testr.targets import batch_targets

    cfg = json.loads((FIXTURE / "config.json").read_text())
    loss_cfg = LossConfig.from_d2(cfg["d2_cfg"]["MODEL"]["TRANSFORMER"]["LOSS"])
    keys = ("ctrl_points", "boxes", "texts", "labels")
    per_image = [{k: ref[f"tgt_b{b}_{k}"] for k in keys} for b in range(EFF["batch"])]
    targets = batch_targets(per_image, max(len(t["labels"]) for t in per_image), pad_text=EFF["pad_class"])
    graphdef, params, rest = nnx.split(load(), nnx.Param, ...)

    @jax.jit
    def grads(params, feats, sizes):
        def loss(params):
            out = nnx.merge(graphdef, params, rest).forward_features(feats, sizes)
            return criterion_loss(out, targets, loss_cfg)[0]

        return jax.value_and_grad(loss)(params)

    total, g = grads(params, *nhwc_inputs(ref))
    np.testing.assert_allclose(float(total), float(ref["loss_total"]), rtol=TOL)
    flat = {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(g)).items()}
    names = [k for k in ref.files if k.startswith("grad_")]
    assert len(names) >= 10
    worst = 0.0
    for name in names:
        converted, _ = official_to_flat({name[len("grad_") :]: ref[name]})
        for ours_name, want in converted.items():
            got = flat[ours_name]
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL * scale, err_msg=name)
            worst = max(worst, float(np.abs(got - want).max()))
    print(f"max abs gradient error {worst:.2e} over {len(names)} parameters")
