"""DPTR's pre-training model: a frozen CLIP text tower makes pseudo visual embeddings for the decoder (``dptr.md``
§1.2-1.3).

``ClipTextMemory(ids)`` = ``concat([text_projection(EOT state), all context_length states after ln_final])`` ->
[B, 1 + context_length, width] (78 tokens for CLIP's 77). The projected EOT and the unprojected states share one
width, so the text width must equal CLIP's embedding width (true for ViT-B/16: 512) and the decoder's width.
``prompt_ids`` tokenises ``a photo of a '{label}'`` with OpenAI zero padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.models.clip import CLIP, CLIPConfig
from clip_text_spot.models.clip.tokenizer import CLIPTokenizer
from clip_text_spot.models.dptr.config import DecoderConfig
from clip_text_spot.models.dptr.recognizer import build_decoder
from clip_text_spot.models.layers import Dtype

PROMPT = "a photo of a '{}'"


def prompt_ids(tokenizer: CLIPTokenizer, labels: list[str]) -> np.ndarray:
    """int32 [B, context_length]: ``a photo of a '{label}'`` tokenised, zero padded (OpenAI ``clip.tokenize``)."""
    return tokenizer([PROMPT.format(label) for label in labels], padding="openai")["input_ids"]


def check_clip_widths(config: CLIPConfig, decoder_dim: int) -> None:
    """The memory concatenates projected and unprojected text states: both widths must be the decoder's."""
    if not config.text.width == config.embed_dim == decoder_dim:
        raise ValueError(
            f"DPTR needs CLIP text width ({config.text.width}) == CLIP embed_dim ({config.embed_dim}) == decoder dim "
            f"({decoder_dim}) (--config.model.decoder.dim)"
        )


class ClipTextMemory(nnx.Module):
    """CLIP's ``text_model`` and ``text_projection`` (HF names), returning the [B, 1 + L, width] memory."""

    def __init__(self, clip: CLIP):
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        hidden, pooled = self.text_model(input_ids)
        eot = self.text_projection(pooled)[:, None]
        return jnp.concatenate([eot, hidden], axis=1).astype(jnp.float32)


class DptrPretrainModel(nnx.Module):
    """``clip_text`` (frozen; None when text embeddings come precomputed) and the ``decoder`` being pre-trained."""

    def __init__(
        self,
        clip: CLIP | None,
        decoder: DecoderConfig,
        charset: Charset,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = None,
    ):
        if clip is not None:
            check_clip_widths(clip.config, decoder.dim)
        self.clip_text = None if clip is None else ClipTextMemory(clip)
        self.decoder = build_decoder(decoder, charset, rngs=rngs, dtype=dtype)

    def memory(self, batch: dict[str, jax.Array]) -> jax.Array:
        """Pseudo visual embeddings (``batch["memory"]`` if given, else frozen CLIP of ``batch["clip_ids"]``) plus
        the ORP noise ``batch["orp_noise"]`` when present (already scaled by lambda on the host)."""
        if "memory" in batch:
            memory = batch["memory"].astype(jnp.float32)
        elif self.clip_text is None:
            raise ValueError("batch has no 'memory' and the model has no CLIP text tower")
        else:
            memory = jax.lax.stop_gradient(self.clip_text(batch["clip_ids"]))
        if "orp_noise" in batch:
            memory = memory + batch["orp_noise"].astype(memory.dtype)
        return memory
