"""CLIP VisionTransformer (Flax NNX, NHWC input, Hugging Face parameter names)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clip_text_spot.models.clip.config import ViTConfig
from clip_text_spot.models.layers import Dtype, Encoder, layer_norm
from clip_text_spot.models.resize import resize_grid


class VisionEmbeddings(nnx.Module):
    """Patchify conv (no bias), class token and learned positions for the pretraining grid (+1 class slot)."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.patch_embedding = nnx.Conv(
            3,
            cfg.width,
            kernel_size=(cfg.patch_size, cfg.patch_size),
            strides=(cfg.patch_size, cfg.patch_size),
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            rngs=rngs,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None, "conv_in", "embed")),
        )
        self.class_embedding = nnx.Param(
            nnx.with_partitioning(nnx.initializers.normal(cfg.width**-0.5), ("embed",))(rngs.params(), (cfg.width,))
        )
        self.position_embedding = nnx.Embed(
            self.grid**2 + 1,
            cfg.width,
            dtype=dtype,
            rngs=rngs,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(cfg.width**-0.5), (None, "embed")),
        )

    def positions(self, grid_hw: tuple[int, int]) -> jax.Array:
        """Position table [1 + h*w, width] for a patch grid ``grid_hw``.

        At the pretraining grid this is the stored table. Other grids resample the patch part with PyTorch's bicubic
        (a = -0.75, align_corners=False, no antialiasing), exactly what Hugging Face's ``interpolate_pos_encoding``
        does; the class slot is kept as is.
        """
        table = self.position_embedding.embedding[...]
        if grid_hw == (self.grid, self.grid):
            return table
        patch = table[1:].reshape(self.grid, self.grid, -1)
        patch = resize_grid(patch, grid_hw, "bicubic").reshape(grid_hw[0] * grid_hw[1], -1)
        return jnp.concatenate([table[:1], patch], axis=0)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        x = self.patch_embedding(pixels)  # [B, h, w, width]
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, d))
        x = jnp.concatenate([cls, x], axis=1)
        return x + self.positions((h, w)).astype(x.dtype)


class VisionTransformer(nnx.Module):
    """``embeddings`` -> ``pre_layrnorm`` (sic, HF name) -> encoder; ``post_layernorm`` is applied by callers."""

    def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs, dtype: Dtype = None):
        self.cfg = cfg
        self.embeddings = VisionEmbeddings(cfg, rngs=rngs, dtype=dtype)
        self.pre_layrnorm = layer_norm(cfg.width, rngs=rngs, dtype=dtype, eps=cfg.eps)
        self.encoder = Encoder(
            cfg.width, cfg.layers, cfg.heads, cfg.mlp_dim, cfg.act, rngs=rngs, dtype=dtype, eps=cfg.eps
        )
        self.post_layernorm = layer_norm(cfg.width, rngs=rngs, dtype=dtype, eps=cfg.eps)

    def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``pixels`` [B, H, W, 3] normalised. Returns (last hidden states [B, 1+N, width] before ``post_layernorm``,
        as HF's ``last_hidden_state``; pooled ``post_layernorm(class token)`` [B, width])."""
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return hidden, self.post_layernorm(hidden[:, 0])

    def pooled(self, pixels: jax.Array) -> jax.Array:
        """``post_layernorm(class token)`` [B, width] alone; the last block computes only the class token."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        return self.post_layernorm(self.encoder(x, rows=jnp.zeros(x.shape[0], jnp.int32))[:, 0])

    def all_tokens(self, pixels: jax.Array) -> jax.Array:
        """``post_layernorm`` applied to every token [B, 1+N, width] (DPTR's modified CLIP; class token first)."""
        hidden, _ = self(pixels)
        return self.post_layernorm(hidden)
