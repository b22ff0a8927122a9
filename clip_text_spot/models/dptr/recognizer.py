"""DPTR's fine-tuned recogniser: ViT encoder -> feature merge unit (FMU) -> pre-trained decoder (``dptr.md`` §3).

* ``RecViT``: an optional convolution stem (``EncoderConfig.stem``: 3x3 stride-2 convolutions + GELU; our demo
  addition), patchify conv (kernel = stride = ``patch_size``, with bias), learned positions (no class token),
  pre-LN blocks (``layers.Encoder``, exact GELU), final LayerNorm -> [B, num_patches, width]. This is also PARSeq's
  timm ViT (``class_token=False``, ``global_pool=''``) with ``norm_eps=1e-6``.
* ``FeatureMergeUnit``: ``DecoderConfig.num_fmu_queries`` learned queries ``Q0``, one cross-attention and one MLP
  (hidden ``mlp_ratio * dim``), no LayerNorm on the queries or the image features and no final LayerNorm::

      Q   = Q0 + drop(cross_attn(Q0, F_img))
      F_u = Q + drop(fc2(drop(gelu(fc1(norm(Q))))))        # [B, queries, dim], the decoder's memory

  The image features may be narrower or wider than the decoder (``kv_dim``), so a small encoder can feed it.
  ``Q0`` is uninitialised memory in the original; ``dptr.md`` suggests normal(0.02), but with no LayerNorm in front
  of the attention such small queries give uniform attention over the patches and tiny gradients (fine-tuning
  stalled in our CPU runs), so ``Q0`` is drawn from normal(1.0) (``query_std``), the scale of LayerNorm outputs.
* ``DptrRecognizer``: the three, with parameter subtrees ``encoder``, ``fmu`` and ``decoder`` (the pre-training
  model's ``decoder`` subtree has the same names, so fine-tuning copies it over); with ``fmu_queries=0`` there is
  no FMU and the decoder reads the encoder tokens (PARSeq).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.models.dptr.config import DecoderConfig, EncoderConfig
from clip_text_spot.models.dptr.nrtr import NrtrDecoder
from clip_text_spot.models.dptr.parseq import ParseqDecoder, apply_dropout, dropout, learned_positions, torch_mha_init
from clip_text_spot.models.inference import compiled
from clip_text_spot.models.layers import MLP, Attention, Dtype, Encoder, layer_norm

Decoder = ParseqDecoder | NrtrDecoder


def build_decoder(cfg: DecoderConfig, charset: Charset, *, rngs: nnx.Rngs, dtype: Dtype = None) -> Decoder:
    """The decoder named by ``cfg.kind`` over ``charset``'s token layout (EOS 0, chars, BOS, PAD)."""
    if cfg.max_len != charset.max_len:
        raise ValueError(f"decoder max_len {cfg.max_len} differs from the charset's max_len {charset.max_len}")
    klass = ParseqDecoder if cfg.kind == "parseq" else NrtrDecoder
    return klass(
        cfg,
        charset.num_tokens,
        charset.num_classes,
        bos=charset.BOS,
        pad=charset.PAD,
        eos=charset.EOS,
        rngs=rngs,
        dtype=dtype,
    )


class RecViT(nnx.Module):
    """ViT for word crops [B, H, W, 3] in [-1, 1] -> [B, (H/ph) * (W/pw), width]."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.cfg = cfg
        widths = (3, *cfg.stem)
        self.stem = nnx.List(
            [
                nnx.Conv(cin, cout, kernel_size=(3, 3), strides=(2, 2), padding=1, dtype=dtype, rngs=rngs)
                for cin, cout in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        patch = tuple(p // cfg.stem_stride for p in cfg.patch_size)
        self.patch_embed = nnx.Conv(
            widths[-1],
            cfg.width,
            kernel_size=patch,
            strides=patch,
            padding="VALID",
            dtype=dtype,
            rngs=rngs,
            kernel_init=nnx.with_partitioning(nnx.initializers.normal(0.02), (None, None, "conv_in", "embed")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
        )
        self.pos_embed = learned_positions(cfg.num_patches, cfg.width, rngs=rngs)
        mlp_dim = cfg.width * cfg.mlp_ratio
        self.blocks = Encoder(
            cfg.width, cfg.depth, cfg.heads, mlp_dim, "gelu", rngs=rngs, dtype=dtype, eps=cfg.norm_eps
        )
        self.norm = layer_norm(cfg.width, rngs=rngs, dtype=dtype, eps=cfg.norm_eps)

    def __call__(self, images: jax.Array) -> jax.Array:
        if tuple(images.shape[1:3]) != tuple(self.cfg.image_size):
            raise ValueError(
                f"images: expected [B, {self.cfg.image_size[0]}, {self.cfg.image_size[1]}, 3], got "
                f"{tuple(images.shape)}"
            )
        x = images
        for conv in self.stem:
            x = jax.nn.gelu(conv(x), approximate=False)
        x = self.patch_embed(x)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d) + self.pos_embed[...].astype(x.dtype)
        return self.norm(self.blocks(x))


class FeatureMergeUnit(nnx.Module):
    """``queries`` learned queries cross-attending to image features, then a pre-LN MLP (see module docstring)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        queries: int,
        kv_dim: int,
        *,
        rate: float,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
        query_std: float = 1.0,
        mlp_ratio: int = 4,
    ):
        init = nnx.with_partitioning(nnx.initializers.normal(query_std), (None, None, "embed"))
        self.token_query = nnx.Param(init(rngs.params(), (1, queries, dim)))
        self.cross_attn = torch_mha_init(Attention(dim, heads, rngs=rngs, dtype=dtype, kv_dim=kv_dim), rngs)
        self.norm = layer_norm(dim, rngs=rngs, dtype=dtype)
        self.mlp = MLP(dim, mlp_ratio * dim, "gelu", rngs=rngs, dtype=dtype, dropout=rate)
        self.drop = dropout(rate)

    def __call__(self, features: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        q = jnp.broadcast_to(self.token_query[...], (features.shape[0], *self.token_query.shape[1:]))
        q = q.astype(features.dtype)
        q = q + apply_dropout(self.drop, self.cross_attn(q, features), rngs)
        return q + apply_dropout(self.drop, self.mlp(self.norm(q), rngs), rngs)


class DptrRecognizer(nnx.Module):
    """Images -> ``encoder`` -> ``fmu`` (if any) -> ``decoder`` (fine-tuning and inference model); ``charset``
    turns predicted ids into text (``charset.decode``)."""

    def __init__(
        self, encoder: EncoderConfig, decoder: DecoderConfig, charset: Charset, *, rngs: nnx.Rngs, dtype: Dtype = None
    ):
        self.charset = charset
        self.encoder = RecViT(encoder, rngs=rngs, dtype=dtype)
        queries = decoder.num_fmu_queries
        if not queries and encoder.width != decoder.dim:
            raise ValueError(
                f"without an FMU the encoder width ({encoder.width}) must be the decoder dim ({decoder.dim})"
            )
        fmu_args = dict(rate=decoder.dropout, rngs=rngs, dtype=dtype, mlp_ratio=decoder.mlp_ratio)
        self.fmu = FeatureMergeUnit(decoder.dim, decoder.heads, queries, encoder.width, **fmu_args) if queries else None
        self.decoder = build_decoder(decoder, charset, rngs=rngs, dtype=dtype)

    def memory(self, images: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        """The decoder's memory [B, queries, dim] (the encoder tokens without an FMU) for images [B, H, W, 3]."""
        tokens = self.encoder(images)
        return tokens if self.fmu is None else self.fmu(tokens, rngs)

    def loss(self, batch: dict[str, jax.Array], rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
        """(decoder loss, canonical logits) for ``batch["image"]`` and its targets."""
        return self.decoder.loss(self.memory(batch["image"], rngs), batch, rngs)

    @compiled
    def predict(self, images: jax.Array) -> jax.Array:
        """Logits [B, steps, C] after AR decoding (and refinement for PARSeq), as configured (compiled per input
        shape on first use, ``models.inference.compiled``; call it in eval mode)."""
        return self.decoder.predict(self.memory(images))

    @compiled
    def decode_logits(self, images: jax.Array, refine_iters: int = 1) -> jax.Array:
        """Normalised images [B, H, W, 3] -> full-length greedy AR logits [B, max_len + 1, C] after
        ``refine_iters`` cloze refinements (the official code's ``max_length=max_label_length`` decoding)."""
        return self.decoder.predict(self.memory(images), refine_iters, decode_ar=True)
