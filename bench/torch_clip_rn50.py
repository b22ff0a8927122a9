"""Bench-only PyTorch reference of OpenAI's CLIP-RN50 (ModifiedResNet image tower, text transformer), written here
from the architecture's description with OpenAI's state-dict names, so ``load_pretrained`` reads its weights.

open_clip's ModifiedResNet would be the natural reference, but it imports torchvision, which is not in our
environment and must match the installed torch exactly; this module needs torch alone. It is the same computation
(``F.multi_head_attention_forward`` for the attention pool, ``nn.MultiheadAttention`` in the text blocks, QuickGELU)
and its outputs are checked against ours by ``bench/clip_vs_torch.py``. Never a project dependency.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or cin != planes * 4:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(cin, planes * 4, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * 4)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class AttentionPool2d(nn.Module):
    """OpenAI's pool (mean token queries) or DenseCLIP/TCM's dense pool (every token queries); positions resized
    bilinearly (align_corners=False) when the grid differs from the stored one."""

    def __init__(self, grid: int, dim: int, heads: int, out_dim: int):
        super().__init__()
        self.grid, self.heads = grid, heads
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, dim) / dim**0.5)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, dense: bool = False):
        b, c, h, w = x.shape
        x = x.flatten(2).permute(2, 0, 1)  # [HW, B, C]
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        pos = self.positional_embedding
        if (h, w) != (self.grid, self.grid):
            spatial = pos[1:].reshape(1, self.grid, self.grid, c).permute(0, 3, 1, 2)
            spatial = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=False)
            pos = torch.cat([pos[:1], spatial.reshape(c, h * w).T], dim=0)
        x = x + pos[:, None]
        out, _ = F.multi_head_attention_forward(
            query=x if dense else x[:1], key=x, value=x, embed_dim_to_check=c, num_heads=self.heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=False,
        )  # fmt: skip
        if not dense:
            return out[0]
        return out[0], out[1:].permute(1, 2, 0).reshape(b, -1, h, w)


class ModifiedResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, heads: int = 32, out_dim: int = 1024, size: int = 224):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv2, self.bn2 = nn.Conv2d(width // 2, width // 2, 3, 1, 1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv3, self.bn3 = nn.Conv2d(width // 2, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        cin = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, planes, 2 if i and not j else 1))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.attnpool = AttentionPool2d(size // 32, width * 32, heads, out_dim)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.avgpool(F.relu(self.bn3(self.conv3(x))))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attnpool(self.features(x)[-1])

    def dense(self, x: torch.Tensor):
        feats = self.features(x)
        return feats, *self.attnpool(feats[-1], dense=True)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mask: torch.Tensor):
        super().__init__()
        self.attn, self.ln_1 = nn.MultiheadAttention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(dim, dim * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(dim * 4, dim))])
        )
        self.ln_2, self.mask = nn.LayerNorm(dim), mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, mask: torch.Tensor):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(dim, heads, mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class CLIPRN50(nn.Module):
    """OpenAI CLIP with a ModifiedResNet image tower; ``encode_image``/``encode_dense``/``encode_text`` as ours."""

    def __init__(self, embed_dim: int = 1024, context: int = 77, vocab: int = 49408, width: int = 512):
        super().__init__()
        self.visual = ModifiedResNet(out_dim=embed_dim)
        mask = torch.full((context, context), float("-inf")).triu_(1)
        self.transformer = Transformer(width, 12, width // 64, mask)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.01)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def randomize_norms(self, seed: int = 0) -> None:
        """Non-trivial BatchNorm statistics and affine parameters, so a mix-up would show in the comparison."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                    m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
                    m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def encode_dense(self, pixels: torch.Tensor):
        return self.visual.dense(pixels)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        x = (self.token_embedding(ids) + self.positional_embedding).permute(1, 0, 2)
        x = self.ln_final(self.transformer(x).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection

    def openai_state_dict(self) -> dict[str, torch.Tensor]:
        """Float32 contiguous tensors under OpenAI's names (what ``load_pretrained`` reads from a .safetensors)."""
        return {k: v.float().contiguous() for k, v in self.state_dict().items() if "num_batches_tracked" not in k}


def build_pair() -> tuple[CLIPRN50, object]:
    """(this PyTorch reference, our CLIP loaded from its OpenAI-format safetensors): random weights, eval mode."""
    import tempfile

    from safetensors.torch import save_file

    from clip_text_spot.models.clip import load_pretrained

    torch.manual_seed(0)
    ref = CLIPRN50()
    ref.randomize_norms()
    ref.eval()
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/RN50.safetensors"
        save_file(ref.openai_state_dict(), path)
        ours = load_pretrained(path)
    return ref, ours
