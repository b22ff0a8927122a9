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
from clip_text_spot.models.testr import from_official_testr

FIXTURE = pathlib.Path(os.environ.get("CTS_TESTR_FIXTURE", DATA / "testr_tiny"))
CKPT = str(FIXTURE / "testr.safetensors")
EFF = json.loads((FIXTURE / "config.json").read_text())["effective"]
TOL = 1e-5
# compared where the mask (mask_l{i} / mask_flatten) is False
MASKED = ("pos_l", "enc_layer", "memory", "msda_enc0_")
# not forward outputs of TESTR (targets, matcher, losses, gradients, inference, the standalone MSDA checks)
OTHERS = ("in_", "tgt_", "match_", "loss", "infer_", "grad_", "msda_core_", "msda_module_", "msda_init_", "num_inst")


def load(**overrides):
    kwargs = dict(
        heads=EFF["nhead"],
        enc_points=EFF["enc_n_points"],
        dec_points=EFF["dec_n_points"],
        num_queries=EFF["num_queries"],
        voc_size=EFF["voc_size"],
        use_polygon=EFF["use_polygon"],
    )
    return from_official_testr(CKPT, **{**kwargs, **overrides})


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
        (lambda sd: sd.pop("transformer.decoder.layers.1.attn_intra.in_proj_weight"), r"1\.attn_intra\.in_proj_weight"),
        (lambda sd: sd.update({"transformer.decoder.layers.0.extra.weight": np.zeros(3, np.float32)}), "extra.weight"),
        (lambda sd: sd.update({"text_embed.weight": sd["text_embed.weight"][:, :-1]}), "text_embed.weight"),
        (lambda sd: sd.update({"ctrl_point_class.1.bias": sd["ctrl_point_class.1.bias"] + 1}), "ctrl_point_class"),
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
