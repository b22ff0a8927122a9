"""The CLIP two-tower model: ``encode_image``, ``encode_text``, logits (HF ``CLIPModel`` semantics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.clip.config import CLIPConfig, ResNetConfig
from clip_text_spot.models.clip.resnet import ModifiedResNet
from clip_text_spot.models.clip.text import TextTransformer
from clip_text_spot.models.clip.vit import VisionTransformer
from clip_text_spot.models.inference import compiled
from clip_text_spot.models.layers import dense

TEXT_LENGTH_BUCKET = 8  # encode_text cuts token batches to a multiple of this (one compiled program per length)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` over the last axis (PyTorch ``F.normalize``)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class CLIP(nnx.Module):
    """CLIP with a ViT or ModifiedResNet image tower.

    Parameters mirror HF ``FlaxCLIPModel`` (``text_model``, ``text_projection``, ``vision_model``,
    ``visual_projection``, ``logit_scale``); a ResNet tower has no ``visual_projection`` (its attention pool
    projects). The ``encode_*`` and ``text_hidden_states`` methods compile per input shape on first use
    (``models.inference.compiled``). Params are float32; ``config.dtype`` sets the compute dtype (e.g.
    ``"bfloat16"``). Outputs are returned in float32.
    """

    def __init__(self, config: CLIPConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.text_model = TextTransformer(config.text, rngs=rngs, dtype=dtype)
        self.text_projection = dense(
            config.text.width, config.embed_dim, ("embed", "joint"), rngs=rngs, dtype=dtype, bias=False
        )
        if isinstance(config.vision, ResNetConfig):
            self.vision_model = ModifiedResNet(config.vision, config.embed_dim, rngs=rngs, dtype=dtype)
            self.visual_projection = None
        else:
            self.vision_model = VisionTransformer(config.vision, rngs=rngs, dtype=dtype)
            self.visual_projection = dense(
                config.vision.width, config.embed_dim, ("embed", "joint"), rngs=rngs, dtype=dtype, bias=False
            )
        self.logit_scale = nnx.Param(jnp.asarray(config.logit_scale_init, jnp.float32))

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.config.vision, ResNetConfig)

    def _cast(self, x: jax.Array) -> jax.Array:
        return x.astype(self.config.dtype)

    @compiled
    def encode_image(self, pixels: jax.Array) -> jax.Array:
        """Normalised float pixels [B, H, W, 3] -> projected image embedding [B, embed_dim] (not L2-normalised;
        equals HF ``get_image_features``). ViT inputs at other sizes get resampled positions."""
        pixels = self._cast(pixels)
        if self.is_resnet:
            return self.vision_model(pixels).astype(jnp.float32)
        return self.visual_projection(self.vision_model.pooled(pixels)).astype(jnp.float32)

    @compiled
    def encode_image_tokens(self, pixels: jax.Array) -> jax.Array:
        """ViT only: every token after ``post_layernorm`` and the projection [B, 1+N, embed_dim] (DPTR, ORP bank)."""
        if self.is_resnet:
            raise ValueError("encode_image_tokens needs a ViT image tower; use encode_dense for ResNet towers")
        return self.visual_projection(self.vision_model.all_tokens(self._cast(pixels))).astype(jnp.float32)

    @compiled
    def encode_dense(self, pixels: jax.Array) -> tuple[list[jax.Array], jax.Array, jax.Array]:
        """ResNet only: (C2..C5, global [B, E], local [B, H/32, W/32, E]) from the dense attention pool."""
        if not self.is_resnet:
            raise ValueError("encode_dense needs a ModifiedResNet image tower")
        feats, g, local = self.vision_model.dense(self._cast(pixels))
        return [f.astype(jnp.float32) for f in feats], g.astype(jnp.float32), local.astype(jnp.float32)

    @compiled
    def text_hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """All text hidden states after ``final_layer_norm`` [B, L, width] (not projected)."""
        hidden, _ = self.text_model(input_ids, attention_mask)
        return hidden.astype(jnp.float32)

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Token ids [B, L] -> projected EOT embedding [B, embed_dim] (equals HF ``get_text_features``).

        Called with concrete ids, the batch is first cut after its last pooled position (rounded up to a multiple of
        ``TEXT_LENGTH_BUCKET``): under the causal mask no later token reaches a pooled one, so the result is the
        same and short prompts padded to 77 cost what their length costs."""
        if not isinstance(input_ids, jax.core.Tracer):
            length = input_ids.shape[-1]
            last = int(np.max(np.asarray(self.text_model.eot_index(np.asarray(input_ids))), initial=0))
            cut = min(length, -(-(last + 1) // TEXT_LENGTH_BUCKET) * TEXT_LENGTH_BUCKET)
            if cut < length:
                input_ids = input_ids[..., :cut]
                attention_mask = None if attention_mask is None else attention_mask[..., :cut]
        return self._encode_text(input_ids, attention_mask)

    @compiled
    def _encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        return self.text_projection(self.text_model.pooled(input_ids, attention_mask)).astype(jnp.float32)

    @compiled
    def encode_text_embeddings(self, token_embeds: jax.Array, eot_index: jax.Array) -> jax.Array:
        """Projected embedding [B, embed_dim] of a sequence given as token embeddings [B, L, width] (e.g. with
        learnable prompt contexts inserted), pooled at ``eot_index`` [B]."""
        pooled = self.text_model.encode_embeddings(self._cast(token_embeds), rows=eot_index)[:, 0]
        return self.text_projection(pooled).astype(jnp.float32)

    def __call__(
        self, pixels: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(logits_per_image [B_img, B_txt], logits_per_text [B_txt, B_img]) with ``exp(logit_scale)``."""
        img = l2_normalize(self.encode_image(pixels))
        txt = l2_normalize(self.encode_text(input_ids, attention_mask))
        logits_per_text = jnp.exp(self.logit_scale[...]) * txt @ img.T
        return logits_per_text.T, logits_per_text
