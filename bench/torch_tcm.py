"""Bench-only PyTorch reference of the TCM / FastTCM matcher forward (tcm.md §1-§2), on official TCM state-dict names,
so ``from_official_tcm`` and this module run the same weights.

Written from the spec and the official code's structure (wenwenyu/TCM ``ocrclip``): CLIP's ModifiedResNet with the
dense attention pool (``bench/torch_clip_rn50.py``: ``F.multi_head_attention_forward``, positions resized
bilinearly at each forward), the CLIP text tower run on ``[SOT, contexts, prompt tokens] + cue``
(``nn.MultiheadAttention`` blocks, causal mask), the language prompt generator (LN, Linear, ReLU, LN, Linear), BSM
in the paper's form for FastTCM (``t' = cos(g, t) g + t``, both normalised first; ``pix_w`` applied to ``g`` when
the state dict has one), the visual prompt generator and the context decoder (pre-LN decoder layers whose attention
is two einsums and a softmax, as the official ``Attention``), and the cosine score map. Eval mode only; never a
project dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_clip_rn50 import CLIPRN50, ModifiedResNet, Transformer

if TYPE_CHECKING:
    from clip_text_spot.models.fasttcm.config import DecoderConfig, FastTCMConfig


class TextContextEncoder(nn.Module):
    """CLIP's text tower on prompts with learnable contexts inserted after SOT and a cue added to every token."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, length: int, embed_dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(length, width) * 0.01)
        self.transformer = Transformer(width, layers, heads, torch.full((length, length), float("-inf")).triu_(1))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)

    def forward(self, ids: torch.Tensor, contexts: torch.Tensor | None, cue: torch.Tensor | None) -> torch.Tensor:
        """ids [K, L1], contexts [1, N, D] or None, cue [B, D] or None -> [B, K, C] (B = 1 without a cue)."""
        k = ids.shape[0]
        x, eot = self.token_embedding(ids), ids.argmax(dim=-1)
        if contexts is not None:
            x = torch.cat([x[:, :1], contexts.expand(k, -1, -1), x[:, 1:]], dim=1)
            eot = eot + contexts.shape[1]
        b = 1 if cue is None else cue.shape[0]
        x = x.unsqueeze(0).expand(b, -1, -1, -1)
        if cue is not None:
            x = x + cue[:, None, None, :]
        x = x.reshape(b * k, x.shape[2], -1) + self.positional_embedding
        x = self.ln_final(self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
        return (x[torch.arange(b * k), eot.repeat(b)] @ self.text_projection).reshape(b, k, -1)


class DecoderAttention(nn.Module):
    """q/k/v projections without bias, ``proj`` with one; scores and weighted sum as einsums over [B, L, heads, d]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.v_proj, self.proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        m, h = memory.shape[1], self.heads
        q = self.q_proj(x).reshape(b, n, h, c // h)
        k = self.k_proj(memory).reshape(b, m, h, c // h)
        v = self.v_proj(memory).reshape(b, m, h, c // h)
        weights = (torch.einsum("bnhd,bmhd->bhnm", q, k) * (c // h) ** -0.5).softmax(dim=-1)
        return self.proj(torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(b, n, c))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn, self.cross_attn = DecoderAttention(dim, heads), DecoderAttention(dim, heads)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.mlp(self.norm3(x))


class ContextDecoder(nn.Module):
    """Queries [B, Nq, C] attend to a memory [B, Nm, C] in a width-W transformer; returns an update [B, Nq, C]."""

    def __init__(self, visual_dim: int, cfg: DecoderConfig):
        super().__init__()
        w = cfg.width
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, w), nn.LayerNorm(w))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, w))
        self.decoder = nn.ModuleList([DecoderLayer(w, cfg.heads) for _ in range(cfg.layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, visual_dim))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        memory, x = self.memory_proj(memory), self.text_proj(queries)
        for layer in self.decoder:
            x = layer(x, memory)
        return self.out_proj(x)


class PromptGenerator(nn.Module):
    def __init__(self, visual_dim: int, token_dim: int):
        super().__init__()
        self.prompt_proj = nn.Sequential(
            nn.LayerNorm(visual_dim),
            nn.Linear(visual_dim, visual_dim),
            nn.ReLU(),
            nn.LayerNorm(visual_dim),
            nn.Linear(visual_dim, token_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prompt_proj(x)


class TorchTCM(nn.Module):
    """The matcher of ``config`` (every module on: prompt generator, VPG, context decoder); ``config.fast`` selects
    FastTCM (``meta_query`` cue, BSM) or TCM (cue from the global image feature)."""

    def __init__(self, config: FastTCMConfig):
        super().__init__()
        if not (config.use_prompt_generator and config.use_vpg and config.use_context_decoder and config.n_ctx):
            raise ValueError("the PyTorch reference covers the released configs only (every prompt module on)")
        c, v, t = config.clip.embed_dim, config.clip.vision, config.text_config
        self.fast = config.fast
        self.backbone = ModifiedResNet(v.layers, v.width, v.heads, c, size=v.image_size)
        self.text_encoder = TextContextEncoder(t.vocab_size, t.width, t.layers, t.heads, t.context_length, c)
        self.contexts = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, config.n_ctx, t.width)))
        self.prompt_generator = PromptGenerator(c, t.width)
        self.visual_prompt_generator = ContextDecoder(c, config.vpg)
        self.context_decoder = ContextDecoder(c, config.context_decoder)
        self.gamma = nn.Parameter(torch.full((c,), config.gamma_init))
        self.vis_gamma = nn.Parameter(torch.tensor(config.vis_gamma_init))
        self.meta_query = nn.Parameter(torch.randn(c)) if config.fast else None
        self.pix_w = nn.Parameter(torch.eye(c)) if config.fast and config.bsm_projection else None

    def precompute_text(self, ids: torch.Tensor) -> torch.Tensor:
        """FastTCM's image-independent text-encoder output [1, K, C] (the ``text_cache`` of ``match``)."""
        return self.text_encoder(ids, self.contexts, self.prompt_generator(self.meta_query[None]))

    def match(
        self, images: torch.Tensor, ids: torch.Tensor, text_cache: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """NCHW images, prompt ids [K, L] -> our ``TCMMatcher.match`` outputs in PyTorch layout (NCHW maps)."""
        feats, g, local = self.backbone.dense(images)
        b, c, h, w = local.shape
        out = {f"c{i + 2}": f for i, f in enumerate(feats)}
        out.update(global_feat=g, local_feat=local)
        cue = self.prompt_generator(self.meta_query[None] if self.fast else g)
        out["prompt_gen"] = cue.expand(b, -1)
        text = self.text_encoder(ids, self.contexts, cue) if text_cache is None else text_cache
        text = out["text_from_encoder"] = text.expand(b, -1, -1)
        if self.fast:
            gm = F.normalize(g if self.pix_w is None else g @ self.pix_w, dim=-1)[:, None]
            t = F.normalize(text, dim=-1)
            text = (t * gm).sum(dim=-1, keepdim=True) * gm + t
        out["text_after_bsm"] = text
        pixels = local.reshape(b, c, h * w).permute(0, 2, 1)
        visual = self.visual_prompt_generator(pixels, text)
        visual = pixels + self.vis_gamma * visual
        out["visual_after_vpg"] = visual.permute(0, 2, 1).reshape(b, c, h, w)
        context = torch.cat([g[:, None], pixels], dim=1)
        text = out["text_final"] = text + self.gamma * self.context_decoder(text, context)
        score = torch.einsum("bnc,bkc->bkn", F.normalize(visual, dim=-1), F.normalize(text, dim=-1))
        out["score_map"] = score.reshape(b, -1, h, w)
        return out

    def randomize(self, seed: int = 0) -> None:
        """Non-trivial BatchNorm statistics and residual scales of order 1 (the released 1e-3 would hide the
        decoders in a comparison)."""
        CLIPRN50.randomize_norms(self, seed)  # it only walks self.modules()
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            self.gamma.copy_(0.5 + torch.rand(self.gamma.shape, generator=g))
            self.vis_gamma.fill_(0.7)

    def official_state_dict(self) -> dict[str, np.ndarray]:
        """Float32 numpy tensors under the official TCM names (what ``from_official_tcm`` reads)."""
        return {k: v.detach().float().numpy().copy() for k, v in self.state_dict().items() if "num_batches" not in k}

    def load_official(self, sd: dict[str, np.ndarray]) -> TorchTCM:
        """Load an official-name state dict (``neck.*``/``bbox_head.*`` and, for TCM, ``meta_query``/``pix_w``
        ignored); any other missing or unexpected tensor is an error."""
        skip = ("neck.", "bbox_head.") + (() if self.fast else ("meta_query", "pix_w"))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items() if not k.startswith(skip)}
        missing, unexpected = self.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if "num_batches" not in k]
        if missing or unexpected:
            raise KeyError(f"state dict mismatch: missing {missing[:8]}, unexpected {unexpected[:8]}")
        return self.eval()


def nhwc(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Outputs as numpy in our layout (feature maps NHWC)."""
    return {k: (v.permute(0, 2, 3, 1) if v.ndim == 4 else v).detach().numpy() for k, v in out.items()}
