"""TCM's building blocks (Flax NNX): the context decoder, the language prompt generator, BSM, and the CLIP text
tower with learnable contexts (tcm.md §2.3-§2.8).

Dropout (decoders only, rate from ``DecoderConfig.dropout``) is active in train mode and draws its keys from the
``rngs`` call argument (an ``nnx.Rngs`` with a ``dropout`` stream, created inside the jitted step from the step's
key); the modules keep no random state, so a functional ``nnx.split``/``nnx.merge`` train step needs nothing
beyond passing ``rngs``. In eval mode ``rngs`` may be None.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clip_text_spot.models.clip.config import TextConfig
from clip_text_spot.models.clip.model import l2_normalize
from clip_text_spot.models.clip.text import TextTransformer
from clip_text_spot.models.fasttcm.config import DecoderConfig
from clip_text_spot.models.layers import MLP, Attention, Dtype, dense, layer_norm


class NormLinear(nnx.Module):
    """``norm`` (LayerNorm din) -> ``linear`` (din -> dout) [-> ``norm_out`` (LayerNorm dout)]."""

    def __init__(
        self,
        din: int,
        dout: int,
        axes: tuple[str, str],
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
        norm_out: bool = False,
    ):
        self.norm = layer_norm(din, rngs=rngs, dtype=dtype)
        self.linear = dense(din, dout, axes, rngs=rngs, dtype=dtype)
        self.norm_out = layer_norm(dout, rngs=rngs, dtype=dtype) if norm_out else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.linear(self.norm(x))
        return x if self.norm_out is None else self.norm_out(x)


class DecoderLayer(nnx.Module):
    """TCM's ``TransformerDecoderLayer``: pre-LN self-attention, cross-attention to a memory, GELU MLP (x4).

    Attention q/k/v have no bias, the output projection has one, scale head_dim^-0.5; dropout after each attention
    output, inside the MLP (after GELU) and after the MLP.
    """

    def __init__(self, dim: int, heads: int, dropout: float, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.self_attn = Attention(dim, heads, rngs=rngs, dtype=dtype, qkv_bias=False)
        self.cross_attn = Attention(dim, heads, rngs=rngs, dtype=dtype, qkv_bias=False)
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.norm3 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.mlp = MLP(dim, 4 * dim, "gelu", rngs=rngs, dtype=dtype, dropout=dropout)
        self.drop_self = nnx.Dropout(dropout)
        self.drop_cross = nnx.Dropout(dropout)
        self.drop_mlp = nnx.Dropout(dropout)

    def __call__(
        self,
        x: jax.Array,
        memory: jax.Array,
        rngs: nnx.Rngs | None = None,
        self_mask: jax.Array | None = None,
        memory_mask: jax.Array | None = None,
    ) -> jax.Array:
        """``self_mask`` / ``memory_mask``: boolean, broadcastable to [B, heads, Lq, Lk], True = may attend."""
        x = x + self.drop_self(self.self_attn(self.norm1(x), mask=self_mask), rngs=rngs)
        x = x + self.drop_cross(self.cross_attn(self.norm2(x), memory, mask=memory_mask), rngs=rngs)
        return x + self.drop_mlp(self.mlp(self.norm3(x), rngs=rngs), rngs=rngs)


class ContextDecoder(nnx.Module):
    """Queries [B, Nq, C] attend to a memory [B, Nm, C] in a narrow transformer; returns an update [B, Nq, C].

    ``text_proj`` (LN, Linear C->W) maps the queries, ``memory_proj`` (LN, Linear C->W, LN) the memory, then
    ``decoder`` layers and ``out_proj`` (LN, Linear W->C). As the visual prompt generator the queries are pixels and
    the memory the text; as the context decoder the queries are the text and the memory [global; pixels].
    """

    def __init__(self, visual_dim: int, cfg: DecoderConfig, *, rngs: nnx.Rngs, dtype: Dtype = None):
        w = cfg.width
        self.text_proj = NormLinear(visual_dim, w, ("joint", "embed"), rngs=rngs, dtype=dtype)
        self.memory_proj = NormLinear(visual_dim, w, ("joint", "embed"), rngs=rngs, dtype=dtype, norm_out=True)
        self.decoder = nnx.List(
            [DecoderLayer(w, cfg.heads, cfg.dropout, rngs=rngs, dtype=dtype) for _ in range(cfg.layers)]
        )
        self.out_proj = NormLinear(w, visual_dim, ("embed", "joint"), rngs=rngs, dtype=dtype)

    def __call__(
        self,
        queries: jax.Array,
        memory: jax.Array,
        rngs: nnx.Rngs | None = None,
        query_valid: jax.Array | None = None,
        memory_valid: jax.Array | None = None,
    ) -> jax.Array:
        """``query_valid`` [B, Nq] / ``memory_valid`` [B, Nm] (True = a real token; None = all) keep padded tokens
        out of the self-attention / cross-attention keys."""
        self_mask = None if query_valid is None else query_valid[:, None, None, :]
        memory_mask = None if memory_valid is None else memory_valid[:, None, None, :]
        memory = self.memory_proj(memory)
        x = self.text_proj(queries)
        for layer in self.decoder:
            x = layer(x, memory, rngs=rngs, self_mask=self_mask, memory_mask=memory_mask)
        return self.out_proj(x)


class PromptGenerator(nnx.Module):
    """Language prompt generator: ``out(ReLU(hidden(x)))`` with LayerNorm-then-Linear blocks, C -> C -> D.

    TCM feeds the global image feature, FastTCM a learned meta query; the output (the conditional cue) is added to
    every token embedding of the prompt.
    """

    def __init__(self, visual_dim: int, token_dim: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.hidden = NormLinear(visual_dim, visual_dim, ("joint", "mlp"), rngs=rngs, dtype=dtype)
        self.out = NormLinear(visual_dim, token_dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x)))


def bimodal_similarity_matching(global_feat: jax.Array, text: jax.Array) -> jax.Array:
    """FastTCM's BSM in the paper's form: ``t' = cos(g, t) * g_hat + t_hat`` for global features [B, C] and text
    [B, K, C], with ``g_hat``, ``t_hat`` L2-normalised (as the released code normalises both before matching)."""
    g = l2_normalize(global_feat)[:, None, :]
    t = l2_normalize(text)
    return jnp.sum(t * g, axis=-1, keepdims=True) * g + t


class ContextTextEncoder(nnx.Module):
    """CLIP's text tower (``text_model`` + ``text_projection``) run on prompts with learnable contexts and a cue.

    For prompt ids [K, L1] (OpenAI zero padding), contexts [1, N, D] and a cue [B, D], each sequence is
    ``[E(SOT), ctx_1..ctx_N, E(tok_1..tok_{L1-1})] + cue`` (the cue on every position, before the positions are
    added); the output is the projected state at ``argmax(ids) + N`` -> [B, K, C] (B = 1 without a cue).
    """

    def __init__(self, cfg: TextConfig, embed_dim: int, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.text_model = TextTransformer(cfg, rngs=rngs, dtype=dtype)
        self.text_projection = dense(cfg.width, embed_dim, ("embed", "joint"), rngs=rngs, dtype=dtype, bias=False)

    def __call__(
        self, input_ids: jax.Array, contexts: jax.Array | None = None, cue: jax.Array | None = None
    ) -> jax.Array:
        k, length = input_ids.shape
        x = self.text_model.embed_tokens(input_ids)
        eot = jnp.argmax(input_ids, axis=-1)
        if contexts is not None:
            n = contexts.shape[1]
            ctx = jnp.broadcast_to(contexts.astype(x.dtype), (k, n, x.shape[-1]))
            x = jnp.concatenate([x[:, :1], ctx, x[:, 1:]], axis=1)
            eot = eot + n
            length += n
        x = x[None]
        if cue is not None:
            x = x + cue.astype(x.dtype)[:, None, None, :]
        b = x.shape[0]
        pooled = self.text_model.encode_embeddings(x.reshape(b * k, length, -1), rows=jnp.tile(eot, b))[:, 0]
        return self.text_projection(pooled).reshape(b, k, -1)
