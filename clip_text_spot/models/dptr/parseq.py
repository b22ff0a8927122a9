"""PARSeq's two-stream decoder as DPTR configures it (``dptr.md`` §1.6-1.8), and its permutation LM loss.

Layer (``DecoderLayer``), with pre-LN residual streams that share the layer's weights::

    qn, cn = norm_q(query), norm_c(content)
    query   = stream(query,   qn, kv=cn, mask=query_mask)
    content = stream(content, cn, kv=cn, mask=content_mask)     # skipped in the last layer
    stream(t, tn, kv, mask) = t + drop(self_attn(tn, kv, mask));  t + drop(cross_attn(norm1(t), memory));
                              t + drop(fc2(drop(gelu(fc1(norm2(t))))))

Inputs: content = ``[E(BOS), pos_1 + E(c_1), ...]`` (``E`` scaled by sqrt(dim)), queries = position queries
``pos_0..``; output ``head(norm(query))`` -> logits over EOS + charset. No mask is applied to the memory. Attention
probabilities get no dropout (PyTorch's ``MultiheadAttention(dropout=0.1)`` does; a documented deviation).

Decoding (``predict``): a fixed-length greedy AR loop (``lax.fori_loop`` over ``max_len + 1`` steps, step ``i``
runs query ``i`` over all content positions with a causal mask, so positions not decoded yet have no effect),
without PARSeq's data-dependent early exit (the steps both compute agree; after an early exit the official
refinement sees fewer padded keys, which changes its logits by float rounding only), or, with ``decode_ar=False``,
every position queried at once from BOS alone (no mask); then ``refine_iters`` cloze refinements: query ``i`` sees
every content position except ``i + 1``, keys from the first EOS on are masked, and the content stream uses the
cloze mask too (the official code's content and query masks are one tensor, edited in place; with one layer the
content stream is never used, with DPTR's six it is). ``DecoderConfig.refine_content_mask="causal"`` keeps the
content stream causal instead.

Masks are boolean here (True = may attend); PARSeq's bool masks and OpenOCR's float 0/-inf masks give the same
attention as long as every row keeps a key, which holds for all masks built here (BOS is never masked).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from clip_text_spot.models.dptr.config import DecoderConfig
from clip_text_spot.models.layers import MLP, Attention, Dtype, dense, layer_norm, multi_head_attention


def dropout(rate: float) -> nnx.Dropout | None:
    """An ``nnx.Dropout`` for ``rate > 0``, else None (see ``apply_dropout``)."""
    return nnx.Dropout(rate) if rate > 0 else None


def apply_dropout(module: nnx.Dropout | None, x: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
    """``module(x)`` (active in train mode, keyed by ``rngs``), or ``x`` when there is no dropout."""
    return x if module is None else module(x, rngs=rngs)


def torch_mha_init(attn: Attention, rngs: nnx.Rngs) -> Attention:
    """Re-initialise ``q/k/v_proj`` as PyTorch's ``nn.MultiheadAttention`` does (PARSeq's and DPTR's init leave it
    alone): Xavier-uniform over the joint [3 * dim, dim] in-projection when keys have the query width, else over
    each projection; biases zero. ``out_proj`` keeps the normal(0.02) of ``layers.dense`` (their Linear init)."""
    dim, kv_dim = attn.q_proj.kernel.shape[0], attn.k_proj.kernel.shape[0]
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        fan_in, fan_out = proj.kernel.shape
        fans = (dim, 3 * dim) if kv_dim == dim else (fan_in, fan_out)
        bound = math.sqrt(6.0 / sum(fans))
        proj.kernel[...] = jax.random.uniform(rngs.params(), proj.kernel.shape, proj.kernel.dtype, -bound, bound)
    return attn


def token_embedding(num_tokens: int, dim: int, *, rngs: nnx.Rngs, dtype: Dtype = None) -> nnx.Embed:
    """Embedding table [num_tokens, dim] (normal 0.02); callers scale lookups by sqrt(dim) as PARSeq does."""
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed"))
    return nnx.Embed(num_tokens, dim, dtype=dtype, rngs=rngs, embedding_init=init)


def learned_positions(length: int, dim: int, *, rngs: nnx.Rngs) -> nnx.Param:
    """A [1, length, dim] table (normal 0.02), e.g. PARSeq's position queries."""
    init = nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, "embed"))
    return nnx.Param(init(rngs.params(), (1, length, dim)))


class DecoderLayer(nnx.Module):
    """One decoder layer; ``two_stream=False`` keeps a single causal stream (no ``norm_q``) for NRTR."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        rate: float,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
        two_stream: bool = True,
    ):
        self.self_attn = torch_mha_init(Attention(dim, heads, rngs=rngs, dtype=dtype), rngs)
        self.cross_attn = torch_mha_init(Attention(dim, heads, rngs=rngs, dtype=dtype), rngs)
        self.mlp = MLP(dim, mlp_dim, "gelu", rngs=rngs, dtype=dtype, dropout=rate)
        self.norm1 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.norm_q = layer_norm(dim, rngs=rngs, dtype=dtype) if two_stream else None
        self.norm_c = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.drop = dropout(rate)

    def memory_kv(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-attention keys and values of ``memory`` (computed once, shared by both streams and all perms)."""
        return self.cross_attn.k_proj(memory), self.cross_attn.v_proj(memory)

    def stream(
        self,
        t: jax.Array,
        t_norm: jax.Array,
        kv: jax.Array,
        mask: jax.Array | None,
        memory_kv: tuple[jax.Array, jax.Array],
        rngs: nnx.Rngs | None,
    ) -> jax.Array:
        """Self-attention of ``t_norm`` over ``kv`` under ``mask``, cross-attention to the memory, MLP (residuals)."""
        t = t + apply_dropout(self.drop, self.self_attn(t_norm, kv, mask), rngs)
        cross = self.cross_attn
        attended = multi_head_attention(cross.q_proj(self.norm1(t)), *memory_kv, cross.heads)
        t = t + apply_dropout(self.drop, cross.out_proj(attended), rngs)
        return t + apply_dropout(self.drop, self.mlp(self.norm2(t), rngs), rngs)

    def __call__(
        self,
        query: jax.Array,
        content: jax.Array,
        memory_kv: tuple[jax.Array, jax.Array],
        query_mask: jax.Array | None,
        content_mask: jax.Array | None,
        *,
        update_content: bool,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Two-stream step; masks are bool, broadcastable to [B, heads, Lq, Lk], True where attention is allowed."""
        content_norm = self.norm_c(content)
        query = self.stream(query, self.norm_q(query), content_norm, query_mask, memory_kv, rngs)
        if update_content:
            content = self.stream(content, content_norm, content_norm, content_mask, memory_kv, rngs)
        return query, content

    def single(
        self, x: jax.Array, memory_kv: tuple[jax.Array, jax.Array], mask: jax.Array, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """One-stream step (NRTR): ``x`` attends to itself under ``mask``."""
        x_norm = self.norm_c(x)
        return self.stream(x, x_norm, x_norm, mask, memory_kv, rngs)


def key_mask(mask: jax.Array, padding: jax.Array | None) -> jax.Array:
    """``mask`` [..., Lq, Lk] and a key padding mask [B, Lk] (True = padded) -> bool, broadcastable [B, 1, Lq, Lk]."""
    mask = jnp.asarray(mask, bool)
    if padding is None:
        return mask
    return mask & ~padding[:, None, None, :]


def causal_mask(length: int) -> jax.Array:
    """bool [length, length], True on and below the diagonal."""
    return jnp.tril(jnp.ones((length, length), bool))


def cloze_mask(length: int) -> jax.Array:
    """bool [length, length]: row ``i`` sees every position except ``i + 1`` (PARSeq's refinement mask)."""
    positions = jnp.arange(length)
    return positions[None, :] != positions[:, None] + 1


def perm_cross_entropy(logits: jax.Array, tgt_out: jax.Array, *, eos: int, pad: int) -> tuple[jax.Array, jax.Array]:
    """(``CE_k`` [K], ``n_k`` [K]) for logits [K, B, L, C] and targets [B, L]: the mean cross-entropy over the
    non-PAD targets of permutation ``k`` and their number; from permutation 2 on, EOS targets count as PAD (EOS is
    supervised only by the canonical and reverse orders)."""
    perm = jnp.arange(logits.shape[0])[:, None, None]
    targets = jnp.where((perm >= 2) & (tgt_out == eos), pad, tgt_out[None])
    valid = targets != pad
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, targets, 0))
    count = valid.sum(axis=(1, 2))
    return jnp.sum(ce * valid, axis=(1, 2)) / jnp.maximum(count, 1), count


def plm_loss(logits: jax.Array, tgt_out: jax.Array, *, eos: int, pad: int) -> tuple[jax.Array, jax.Array]:
    """PARSeq's permutation LM loss ``sum_k n_k CE_k / sum_k n_k`` (``perm_cross_entropy``) for logits
    [K, B, L, C] and targets [B, L]. Returns (loss, number of supervised targets summed over permutations)."""
    ce, n = perm_cross_entropy(logits, tgt_out, eos=eos, pad=pad)
    count = n.sum()
    return jnp.sum(ce * n) / jnp.maximum(count, 1), count


class TokenDecoder(nnx.Module):
    """What the DPTR decoders share: token embedding, learned positions (named ``positions_name``), ``depth``
    decoder layers (two-stream or not), final LayerNorm and head. ``num_tokens`` = charset + EOS/BOS/PAD,
    ``num_classes`` = charset + EOS."""

    positions_name = "pos_queries"
    two_stream = True

    def __init__(
        self,
        cfg: DecoderConfig,
        num_tokens: int,
        num_classes: int,
        *,
        bos: int,
        pad: int,
        eos: int = 0,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        self.cfg = cfg
        self.bos, self.pad, self.eos = bos, pad, eos
        self.text_embed = token_embedding(num_tokens, cfg.dim, rngs=rngs, dtype=dtype)
        setattr(self, self.positions_name, learned_positions(cfg.steps, cfg.dim, rngs=rngs))
        mlp_dim = cfg.dim * cfg.mlp_ratio
        self.layers = nnx.List(
            [
                DecoderLayer(
                    cfg.dim, cfg.heads, mlp_dim, cfg.dropout, rngs=rngs, dtype=dtype, two_stream=self.two_stream
                )
                for _ in range(cfg.depth)
            ]
        )
        self.norm = layer_norm(cfg.dim, rngs=rngs, dtype=dtype)
        self.head = dense(cfg.dim, num_classes, ("embed", "vocab"), rngs=rngs, dtype=dtype)
        self.drop = dropout(cfg.dropout)


class ParseqDecoder(TokenDecoder):
    """PARSeq two-stream decoder (position queries ``pos_queries``)."""

    def _content(self, tgt_in: jax.Array) -> jax.Array:
        emb = math.sqrt(self.cfg.dim) * self.text_embed(tgt_in)
        pos = self.pos_queries[...][:, : tgt_in.shape[1] - 1].astype(emb.dtype)
        return jnp.concatenate([emb[:, :1], pos + emb[:, 1:]], axis=1)

    def memory_kv(self, memory: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Per-layer cross-attention keys/values of ``memory`` [B, M, dim]."""
        return [layer.memory_kv(memory) for layer in self.layers]

    def logits(
        self,
        tgt_in: jax.Array,
        memory_kv: list[tuple[jax.Array, jax.Array]],
        content_mask: jax.Array | None,
        query_mask: jax.Array | None,
        queries: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Logits [B, Lq, C] of the queries (default: position queries ``0..L-1``) given the context ``tgt_in``;
        a None mask lets every query see every key."""
        b, length = tgt_in.shape
        content = apply_dropout(self.drop, self._content(tgt_in), rngs)
        if queries is None:
            queries = self.pos_queries[...][:, :length]
        query = apply_dropout(self.drop, jnp.broadcast_to(queries, (b, *queries.shape[1:])).astype(content.dtype), rngs)
        for i, (layer, kv) in enumerate(zip(self.layers, memory_kv, strict=True)):
            last = i == len(self.layers) - 1
            query, content = layer(query, content, kv, query_mask, content_mask, update_content=not last, rngs=rngs)
        return self.head(self.norm(query)).astype(jnp.float32)

    def perm_logits(
        self,
        memory: jax.Array,
        tgt_in: jax.Array,
        content_masks: jax.Array,
        query_masks: jax.Array,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Logits [K, B, L, C] of the K permutations given by their masks [B, K, L, L] (True = may attend), with
        the training key padding (PAD and EOS context). One decoder pass over a K-times tiled batch (row k*B + b)."""
        b, length = tgt_in.shape
        k = content_masks.shape[1]

        def per_perm(mask: jax.Array) -> jax.Array:  # [B, K, L, L] -> [K * B, 1, L, L]
            return jnp.swapaxes(mask, 0, 1).reshape(k * b, 1, length, length)

        def tile(x: jax.Array) -> jax.Array:
            return jnp.tile(x, (k,) + (1,) * (x.ndim - 1))

        padding = tile((tgt_in == self.pad) | (tgt_in == self.eos))
        memory_kv = [(tile(kk), tile(vv)) for kk, vv in self.memory_kv(memory)]
        logits = self.logits(
            tile(tgt_in),
            memory_kv,
            key_mask(per_perm(content_masks), padding),
            key_mask(per_perm(query_masks), padding),
            rngs=rngs,
        )
        return logits.reshape(k, b, length, -1)

    def loss(
        self, memory: jax.Array, batch: dict[str, jax.Array], rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(PLM loss, canonical-order logits [B, L, C]) for targets ``batch["label"]`` [B, max_len + 2] and the
        host-made masks ``batch["perm_content_mask"]``/``["perm_query_mask"]`` [B, K, L, L]."""
        label = batch["label"]
        logits = self.perm_logits(memory, label[:, :-1], batch["perm_content_mask"], batch["perm_query_mask"], rngs)
        loss, _ = plm_loss(logits, label[:, 1:], eos=self.eos, pad=self.pad)
        return loss, logits[0]

    def initial_logits(self, memory_kv: list[tuple[jax.Array, jax.Array]], decode_ar: bool) -> jax.Array:
        """Logits [B, max_len + 1, C] before refinement: greedy AR decoding, or all positions from BOS alone."""
        steps = self.cfg.steps
        b = memory_kv[0][0].shape[0]
        if not decode_ar:
            bos = jnp.full((b, 1), self.bos, jnp.int32)
            return self.logits(bos, memory_kv, None, None, queries=self.pos_queries[...][:, :steps])
        causal = causal_mask(steps)
        positions = jnp.arange(steps)
        num_classes = self.head.kernel.shape[1]
        # one extra slot so that step i can always write its prediction to position i + 1
        tokens = jnp.full((b, steps + 1), self.pad, jnp.int32).at[:, 0].set(self.bos)
        logits = jnp.zeros((b, steps, num_classes), jnp.float32)

        def step(i, carry):
            tokens, logits = carry
            query = jax.lax.dynamic_slice_in_dim(self.pos_queries[...], i, 1, axis=1)
            out = self.logits(tokens[:, :steps], memory_kv, causal, (positions <= i)[None], queries=query)[:, 0]
            logits = jax.lax.dynamic_update_slice_in_dim(logits, out[:, None], i, axis=1)
            nxt = jnp.argmax(out, axis=-1).astype(jnp.int32)
            return jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i + 1, axis=1), logits

        _, logits = jax.lax.fori_loop(0, steps, step, (tokens, logits))
        return logits

    def refine(self, memory_kv: list[tuple[jax.Array, jax.Array]], logits: jax.Array) -> jax.Array:
        """One cloze refinement of ``logits`` [B, max_len + 1, C] (context: BOS + their argmax, cut at EOS)."""
        steps = self.cfg.steps
        context = jnp.argmax(logits[:, :-1], axis=-1).astype(jnp.int32)
        tgt_in = jnp.concatenate([jnp.full((logits.shape[0], 1), self.bos, jnp.int32), context], axis=1)
        padding = jnp.cumsum(tgt_in == self.eos, axis=-1) > 0
        cloze = cloze_mask(steps)
        content = cloze if self.cfg.refine_content_mask == "cloze" else causal_mask(steps)
        return self.logits(tgt_in, memory_kv, key_mask(content, padding), key_mask(cloze, padding))

    def predict(self, memory: jax.Array, refine_iters: int | None = None, decode_ar: bool | None = None) -> jax.Array:
        """Greedy AR (or NAR) decoding then cloze refinements; logits [B, max_len + 1, C] (argmax, cut at EOS,
        gives text). ``refine_iters``/``decode_ar`` default to the config's."""
        refine_iters = self.cfg.refine_iters if refine_iters is None else refine_iters
        memory_kv = self.memory_kv(memory)
        logits = self.initial_logits(memory_kv, self.cfg.decode_ar if decode_ar is None else decode_ar)
        for _ in range(refine_iters):
            logits = self.refine(memory_kv, logits)
        return logits
