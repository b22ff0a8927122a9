"""A plain autoregressive transformer decoder (NRTR-style), trainable with DPTR pre-training and fine-tuning.

Input ``[BOS, c_1, ..., c_n, EOS, PAD...]`` embedded (scaled by sqrt(dim)) plus learned positions, ``depth``
single-stream layers (``parseq.DecoderLayer.single``: causal pre-LN self-attention, cross-attention to the memory,
GELU MLP), a final LayerNorm and a head over EOS + charset. Trained with teacher forcing in the canonical order
(cross-entropy over non-PAD targets, EOS included); decoded greedily with a fixed-length ``lax.fori_loop``. The
paper's adaptation of non-PARSeq decoders is not published (``dptr.md`` §2): pre-LN layers and learned positions
are our choices (OpenOCR's NRTR uses post-LN layers and sinusoidal positions).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from clip_text_spot.models.dptr.parseq import TokenDecoder, apply_dropout, causal_mask


class NrtrDecoder(TokenDecoder):
    """Causal transformer decoder with the same token layout and interface as ``ParseqDecoder`` (single-stream
    layers, input positions ``pos_embed``)."""

    positions_name = "pos_embed"
    two_stream = False

    def memory_kv(self, memory: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        """Per-layer cross-attention keys/values of ``memory`` [B, M, dim]."""
        return [layer.memory_kv(memory) for layer in self.layers]

    def logits(
        self, tgt_in: jax.Array, memory_kv: list[tuple[jax.Array, jax.Array]], rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Next-token logits [B, L, C] at every position of ``tgt_in`` [B, L] (causal)."""
        length = tgt_in.shape[1]
        x = math.sqrt(self.cfg.dim) * self.text_embed(tgt_in)
        x = apply_dropout(self.drop, x + self.pos_embed[...][:, :length].astype(x.dtype), rngs)
        mask = causal_mask(length)
        for layer, kv in zip(self.layers, memory_kv, strict=True):
            x = layer.single(x, kv, mask, rngs)
        return self.head(self.norm(x)).astype(jnp.float32)

    def loss(
        self, memory: jax.Array, batch: dict[str, jax.Array], rngs: nnx.Rngs | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(mean cross-entropy over non-PAD targets, logits [B, L, C]) for targets ``batch["label"]``."""
        label = batch["label"]
        logits = self.logits(label[:, :-1], self.memory_kv(memory), rngs)
        tgt_out = label[:, 1:]
        valid = tgt_out != self.pad
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, tgt_out, 0))
        return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1), logits

    def predict(self, memory: jax.Array, refine_iters: int | None = None, decode_ar: bool | None = None) -> jax.Array:
        """Greedy AR decoding; logits [B, max_len + 1, C]. NRTR has no refinement and no NAR mode (``refine_iters``
        and ``decode_ar`` are ignored)."""
        del refine_iters, decode_ar
        steps = self.cfg.steps
        b = memory.shape[0]
        tokens = jnp.full((b, steps + 1), self.pad, jnp.int32).at[:, 0].set(self.bos)
        logits = jnp.zeros((b, steps, self.head.kernel.shape[1]), jnp.float32)
        memory_kv = self.memory_kv(memory)

        def step(i, carry):
            tokens, logits = carry
            out = jax.lax.dynamic_index_in_dim(self.logits(tokens[:, :steps], memory_kv), i, axis=1, keepdims=False)
            logits = jax.lax.dynamic_update_slice_in_dim(logits, out[:, None], i, axis=1)
            nxt = jnp.argmax(out, axis=-1).astype(jnp.int32)
            return jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i + 1, axis=1), logits

        _, logits = jax.lax.fori_loop(0, steps, step, (tokens, logits))
        return logits
