"""CLIP text transformer (Flax NNX, Hugging Face parameter names)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clip_text_spot.models.clip.config import TextConfig
from clip_text_spot.models.layers import Dtype, Encoder, layer_norm, take_rows


class TextEmbeddings(nnx.Module):
    """``token_embedding`` [vocab, width] and ``position_embedding`` [context_length, width]."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.token_embedding = nnx.Embed(
            cfg.vocab_size,
            cfg.width,
            dtype=dtype,
            rngs=rngs,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")),
        )
        self.position_embedding = nnx.Embed(
            cfg.context_length,
            cfg.width,
            dtype=dtype,
            rngs=rngs,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.01), (None, "embed")),
        )


def causal_mask(length: int) -> jax.Array:
    """Boolean [1, 1, L, L] mask, True on and below the diagonal."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


class TextTransformer(nnx.Module):
    """Token/position embeddings, causal pre-LN transformer, ``final_layer_norm`` (OpenAI ``ln_final``)."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.cfg = cfg
        self.embeddings = TextEmbeddings(cfg, rngs=rngs, dtype=dtype)
        self.encoder = Encoder(
            cfg.width, cfg.layers, cfg.heads, cfg.mlp_dim, cfg.act, rngs=rngs, dtype=dtype, eps=cfg.eps
        )
        self.final_layer_norm = layer_norm(cfg.width, rngs=rngs, dtype=dtype, eps=cfg.eps)

    def eot_index(self, input_ids: jax.Array) -> jax.Array:
        """Pooling position per sequence, as Hugging Face computes it.

        Legacy (``eos_token_id`` None or 2, i.e. OpenAI): ``argmax(input_ids)`` — the EOT token has the largest id.
        Otherwise the first position holding ``eos_token_id`` (0 when there is none, as in HF).
        """
        eos = self.cfg.eos_token_id
        if eos is None or eos == 2:
            return jnp.argmax(input_ids, axis=-1)
        return jnp.argmax((input_ids == eos).astype(jnp.int32), axis=-1)

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [B, L, width] (no positions); used to build learnable-prompt sequences."""
        return self.embeddings.token_embedding(input_ids)

    def encode_embeddings(
        self, token_embeds: jax.Array, attention_mask: jax.Array | None = None, rows: jax.Array | None = None
    ) -> jax.Array:
        """Run the tower on token embeddings [B, L, width] (positions are added here); returns all hidden states
        after ``final_layer_norm`` [B, L, width], or [B, 1, width] at positions ``rows`` [B] only (the last block
        then computes just those). ``attention_mask`` [B, L] (1 = keep) masks padded keys."""
        length = token_embeds.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(
                f"text sequence of length {length} exceeds the position table ({self.cfg.context_length} rows)"
            )
        pos = self.embeddings.position_embedding.embedding[...][:length]
        x = token_embeds + pos.astype(token_embeds.dtype)
        mask = causal_mask(length)
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, None, :]
        return self.final_layer_norm(self.encoder(x, mask=mask, rows=rows))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Returns (hidden states after ``final_layer_norm`` [B, L, width], pooled EOT state [B, width])."""
        hidden = self.encode_embeddings(self.embed_tokens(input_ids), attention_mask)
        return hidden, take_rows(hidden, self.eot_index(input_ids), axis=1)[:, 0]

    def pooled(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """The pooled EOT state [B, width] alone; the last block computes only the EOT position."""
        rows = self.eot_index(input_ids)
        return self.encode_embeddings(self.embed_tokens(input_ids), attention_mask, rows=rows)[:, 0]
