"""Parity with transformers' PyTorch CLIPModel built here with random weights (save_pretrained -> load_pretrained).

Covers both HF file layouts we read from PyTorch (model.safetensors + config.json) and OpenAI's original names
(re-derived from the same weights with OpenAI's layout), QuickGELU and exact GELU, padded batches, both EOS pooling
conventions, and position-embedding interpolation at a non-square input size.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

from clip_text_spot.models import inference
from clip_text_spot.models.clip import load_pretrained

TOL = 1e-5
VOCAB = 99


def build_hf(text_act: str, vision_act: str, eos_token_id: int, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=6,
            max_position_embeddings=20,
            hidden_act=text_act,
            eos_token_id=eos_token_id,
            bos_token_id=VOCAB - 2,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=40,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=5,
            hidden_act=vision_act,
        ),
        projection_dim=24,
    )
    model = CLIPModel(cfg).eval()
    with torch.no_grad():  # make LayerNorms and biases non-trivial so a mix-up would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def features(out):
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).detach().numpy()


def padded_batch(eos: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = [20, 9, 4]
    ids = np.full((3, 20), pad, np.int64)
    mask = np.zeros((3, 20), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(3, VOCAB - 2, n)
        ids[i, 0] = VOCAB - 2  # SOT
        ids[i, n - 1] = eos
        mask[i, :n] = 1
    return ids, mask


@pytest.mark.parametrize(
    "text_act,vision_act,eos",
    [("quick_gelu", "quick_gelu", 2), ("gelu", "quick_gelu", VOCAB - 1), ("quick_gelu", "gelu", VOCAB - 1)],
)
def test_hf_pytorch_safetensors(tmp_path, text_act, vision_act, eos):
    hf = build_hf(text_act, vision_act, eos)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))
    # legacy eos=2 pools at argmax(ids): put the largest id (VOCAB-1) at the end of each sequence
    ids, mask = padded_batch(VOCAB - 1, pad=1)
    if eos != 2:  # modern pooling picks the FIRST eos: add a second eos after the first one in row 1
        ids[1, 10] = eos
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_img = features(hf.get_image_features(pixel_values=pixels))
        ref_txt = features(hf.get_text_features(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)))
        ref_hidden = hf.text_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    np.testing.assert_allclose(ours.encode_image(pixels.numpy().transpose(0, 2, 3, 1)), ref_img, atol=TOL)
    np.testing.assert_allclose(ours.encode_text(ids, mask), ref_txt, atol=TOL)
    np.testing.assert_allclose(ours.text_hidden_states(ids, mask), ref_hidden.numpy(), atol=TOL)


def test_position_interpolation_matches_hf(tmp_path):
    """Inputs at a non-pretraining, non-square size: HF's interpolate_pos_encoding (bicubic, align_corners=False)."""
    hf = build_hf("quick_gelu", "quick_gelu", 2)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))
    pixels = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        ref = features(hf.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True))
    np.testing.assert_allclose(ours.encode_image(pixels.numpy().transpose(0, 2, 3, 1)), ref, atol=TOL)


def hf_to_openai_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP state dict -> OpenAI's original names (inverse of transformers' convert_clip_original script)."""
    out = {}

    def block(src: str, dst: str) -> None:
        q, k, v = (sd[f"{src}.self_attn.{p}_proj.weight"] for p in "qkv")
        out[f"{dst}.attn.in_proj_weight"] = torch.cat([q, k, v])
        out[f"{dst}.attn.in_proj_bias"] = torch.cat([sd[f"{src}.self_attn.{p}_proj.bias"] for p in "qkv"])
        for a, b in (
            ("self_attn.out_proj", "attn.out_proj"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
        ):
            out[f"{dst}.{b}.weight"] = sd[f"{src}.{a}.weight"]
            out[f"{dst}.{b}.bias"] = sd[f"{src}.{a}.bias"]

    t, v = "text_model", "vision_model"
    out["token_embedding.weight"] = sd[f"{t}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"]
    out["ln_final.weight"] = sd[f"{t}.final_layer_norm.weight"]
    out["ln_final.bias"] = sd[f"{t}.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T
    out["logit_scale"] = sd["logit_scale"]
    out["visual.conv1.weight"] = sd[f"{v}.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[f"{v}.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
    for a, b in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        out[f"visual.{b}.weight"] = sd[f"{v}.{a}.weight"]
        out[f"visual.{b}.bias"] = sd[f"{v}.{a}.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].T
    for i in range(len({k.split(".")[3] for k in sd if k.startswith(f"{t}.encoder.layers.")})):
        block(f"{t}.encoder.layers.{i}", f"transformer.resblocks.{i}")
    for i in range(len({k.split(".")[3] for k in sd if k.startswith(f"{v}.encoder.layers.")})):
        block(f"{v}.encoder.layers.{i}", f"visual.transformer.resblocks.{i}")
    return {k: x.contiguous() for k, x in out.items()}


def test_openai_vit_names(tmp_path):
    """The same weights in OpenAI's layout (packed in_proj, x @ proj) load and match HF PyTorch outputs."""
    hf = build_hf("quick_gelu", "quick_gelu", 2)
    save_file(hf_to_openai_names(hf.state_dict()), str(tmp_path / "vit.safetensors"))
    (tmp_path / "clip_config.json").write_text(json.dumps({"transformer_heads": 6, "vision_heads": 5}))
    ours = load_pretrained(str(tmp_path / "vit.safetensors"))
    assert ours.config.vision.patch_size == 8 and ours.config.text.layers == 3
    ids, mask = padded_batch(VOCAB - 1, pad=0)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_img = features(hf.get_image_features(pixel_values=pixels))
        ref_txt = features(hf.get_text_features(input_ids=torch.tensor(ids)))
    np.testing.assert_allclose(ours.encode_image(pixels.numpy().transpose(0, 2, 3, 1)), ref_img, atol=TOL)
    np.testing.assert_allclose(ours.encode_text(ids), ref_txt, atol=TOL)
    tokens = ours.encode_image_tokens(pixels.numpy().transpose(0, 2, 3, 1))
    assert tokens.shape == (2, 17, 24)
    np.testing.assert_allclose(tokens[:, 0], ref_img, atol=TOL)  # the class token is the pooled embedding


def test_wide_batches_on_onednn_dots_match_hf(tmp_path):
    """Batches with at least ``ONEDNN_MIN_ROWS`` token rows compile with each dot on oneDNN (x86 CPUs) and still
    match HF PyTorch, text (padded, masked) and image alike."""
    hf = build_hf("quick_gelu", "gelu", 2)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(str(tmp_path))
    ids, mask = (np.tile(a, (22, 1)) for a in padded_batch(VOCAB - 1, pad=1))  # 66 x 20 tokens
    pixels = torch.randn(64, 3, 32, 32)  # 64 x 17 tokens
    assert min(len(ids) * ids.shape[1], 64 * 17) >= inference.ONEDNN_MIN_ROWS
    with torch.no_grad():
        ref_img = features(hf.get_image_features(pixel_values=pixels))
        ref_txt = features(hf.get_text_features(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)))
    np.testing.assert_allclose(ours.encode_image(pixels.numpy().transpose(0, 2, 3, 1)), ref_img, atol=TOL)
    np.testing.assert_allclose(ours.encode_text(ids, mask), ref_txt, atol=TOL)
    if inference.onednn_cpu():
        picked = [apply for key, apply in inference._CHOICES.items() if key[1] is inference._BINDINGS[ours].graphdef]
        assert picked and all(apply is inference._applier(inference.ONEDNN_DOTS) for apply in picked)
