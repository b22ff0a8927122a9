"""The dense attention pool (DenseCLIP/TCM) against PyTorch's multi_head_attention_forward on the OpenAI RN fixture."""

import numpy as np
import torch
import torch.nn.functional as F
from conftest import DATA
from safetensors.torch import load_file

from clip_text_spot.models.clip import load_pretrained

RN = DATA / "clip" / "openai_clip_rn_tiny"


def torch_dense_attnpool(sd: dict, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DenseCLIP's AttentionPool2d.forward: every token queries; spatial positions resized bilinearly."""
    p = "visual.attnpool."
    b, c, h, w = x.shape
    pos = sd[p + "positional_embedding"]
    g = round((pos.shape[0] - 1) ** 0.5)
    x = x.reshape(b, c, h * w).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    spatial = F.interpolate(pos[1:].reshape(1, g, g, c).permute(0, 3, 1, 2), size=(h, w), mode="bilinear")
    x = x + torch.cat([pos[:1], spatial.reshape(c, h * w).permute(1, 0)])[:, None, :]
    x, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=c, num_heads=heads,
        q_proj_weight=sd[p + "q_proj.weight"], k_proj_weight=sd[p + "k_proj.weight"],
        v_proj_weight=sd[p + "v_proj.weight"], in_proj_weight=None,
        in_proj_bias=torch.cat([sd[p + "q_proj.bias"], sd[p + "k_proj.bias"], sd[p + "v_proj.bias"]]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=sd[p + "c_proj.weight"], out_proj_bias=sd[p + "c_proj.bias"],
        use_separate_proj_weight=True, training=False, need_weights=False,
    )  # fmt: skip
    x = x.permute(1, 2, 0)
    return x[:, :, 0], x[:, :, 1:].reshape(b, -1, h, w)


def test_dense_pool_on_non_native_grid_matches_torch():
    model = load_pretrained(str(RN))
    ref = np.load(RN / "reference.npz")
    c5 = ref["big_layer4"]  # OpenAI code's C5 for a 96x128 input: a 3x4 grid, native grid is 2x2
    sd = load_file(str(RN / "model.safetensors"))
    with torch.no_grad():
        g_ref, local_ref = torch_dense_attnpool(sd, torch.from_numpy(c5), heads=model.config.vision.heads)
    g, local = model.vision_model.attnpool(c5.transpose(0, 2, 3, 1), dense=True)
    assert local.shape == (1, 3, 4, 16)
    np.testing.assert_allclose(g, g_ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(local, local_ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_dense_global_equals_openai_pool_and_encode_dense():
    model = load_pretrained(str(RN))
    px = np.load(RN / "reference.npz")["pixel_values"].transpose(0, 2, 3, 1)
    feats, g, local = model.encode_dense(px)
    assert [f.shape[1:3] for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert local.shape == (2, 2, 2, 16)
    np.testing.assert_allclose(g, model.encode_image(px), atol=1e-6)
