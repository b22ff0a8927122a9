"""Converter: the CLI round trip, error paths (pickles, missing/unexpected/mis-shaped tensors), compute dtype."""

import json
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA
from safetensors.numpy import load_file, save_file

from clip_text_spot.models.clip import CheckpointMismatchError, load_pretrained
from clip_text_spot.models.clip.convert import model_flat_state

HF = DATA / "clip" / "hf_flax_clip_tiny"
RN = DATA / "clip" / "openai_clip_rn_tiny"


def test_cli_round_trip(tmp_path):
    out = tmp_path / "converted"
    proc = subprocess.run(
        [sys.executable, "-m", "clip_text_spot.convert", f"--source={RN}", f"--output={out}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["config"]["vision"]["kind"] == "resnet"
    ref = np.load(RN / "reference.npz")
    model = load_pretrained(str(out))
    px = ref["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(model.encode_image(px), ref["image_embeds"], atol=1e-5)
    # BatchNorm statistics travelled too (an eval-mode forward depends on them)
    a, b = model_flat_state(model), model_flat_state(load_pretrained(str(RN)))
    np.testing.assert_array_equal(a["vision_model/bn1/mean"], b["vision_model/bn1/mean"])
    proc = subprocess.run(
        [sys.executable, "-m", "clip_text_spot.convert", f"--source={RN}", f"--output={out}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "already exists" in proc.stderr


@pytest.mark.parametrize("name", ["pytorch_model.bin", "RN50.pt", "model.pth"])
def test_pickles_are_refused_with_instructions(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x80\x04not really")
    for path in (tmp_path / name, tmp_path):
        with pytest.raises(ValueError, match="never unpickles") as e:
            load_pretrained(str(path))
        assert "safetensors" in str(e.value)


def _openai_copy(tmp_path, edit):
    sd = load_file(str(RN / "model.safetensors"))
    edit(sd)
    save_file(sd, str(tmp_path / "model.safetensors"))
    shutil.copy(RN / "clip_config.json", tmp_path / "clip_config.json")
    return str(tmp_path / "model.safetensors")


def test_missing_tensor_is_named(tmp_path):
    path = _openai_copy(tmp_path, lambda sd: sd.pop("visual.layer1.0.bn2.running_var"))
    with pytest.raises(CheckpointMismatchError, match=r"missing.*vision_model/layer1/0/bn2/var"):
        load_pretrained(path)


def test_unexpected_tensor_is_named(tmp_path):
    path = _openai_copy(tmp_path, lambda sd: sd.__setitem__("visual.extra_head.weight", np.zeros((2, 2), np.float32)))
    with pytest.raises(CheckpointMismatchError, match="visual.extra_head.weight"):
        load_pretrained(path)


def test_shape_mismatch_is_named(tmp_path):
    def edit(sd):
        sd["ln_final.bias"] = np.zeros(33, np.float32)

    with pytest.raises(CheckpointMismatchError, match=r"text_model/final_layer_norm/bias: checkpoint \(33,\)"):
        load_pretrained(_openai_copy(tmp_path, edit))


def test_hf_layout_with_wrong_config(tmp_path):
    shutil.copytree(HF, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 3
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"missing.*text_model/encoder/layers/2"):
        load_pretrained(str(tmp_path / "hf"))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CLIP checkpoint"):
        load_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_pretrained(str(tmp_path / "nope.safetensors"))


def test_context_length_truncation():
    model = load_pretrained(str(RN), context_length=8)
    table = model.text_model.embeddings.position_embedding.embedding[...]
    assert table.shape == (8, 32)
    ref = load_file(str(RN / "model.safetensors"))["positional_embedding"]
    np.testing.assert_array_equal(table, ref[:8])
    with pytest.raises(ValueError, match="exceeds"):
        load_pretrained(str(RN), context_length=13)


def test_bf16_compute_keeps_f32_params():
    ref = np.load(HF / "reference.npz")
    f32 = load_pretrained(str(HF))
    bf16 = load_pretrained(str(HF), dtype="bfloat16")
    assert all(v.dtype == jnp.float32 for v in model_flat_state(bf16).values())
    px = ref["pixel_values"].transpose(0, 2, 3, 1)
    a, b = f32.encode_image(px), bf16.encode_image(px)
    assert b.dtype == jnp.float32
    assert not np.array_equal(a, b)  # really computed in bf16
    np.testing.assert_allclose(a, b, atol=0.05 * float(np.abs(a).max()))
