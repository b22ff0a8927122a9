"""The TCM / FastTCM image-text matcher (Flax NNX): CLIP RN backbone with the dense attention pool, prompted text
tower, prompt generator, BSM (FastTCM), visual prompt generator, context decoder and the score map (tcm.md §1, §2, §9).

Parameter names mirror the official checkpoint's top-level names (``backbone``, ``text_encoder``, ``contexts``,
``prompt_generator``, ``meta_query``, ``visual_prompt_generator``, ``context_decoder``, ``gamma``, ``vis_gamma``) so
optimiser groups can match ``^text_encoder/`` (frozen) and ``^backbone/`` (lr x 0.1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.clip.convert import assign_flat, model_flat_state
from clip_text_spot.models.clip.model import CLIP, l2_normalize
from clip_text_spot.models.clip.resnet import ModifiedResNet
from clip_text_spot.models.clip.tokenizer import CLIPTokenizer
from clip_text_spot.models.fasttcm.config import FastTCMConfig
from clip_text_spot.models.fasttcm.modules import (
    ContextDecoder,
    ContextTextEncoder,
    PromptGenerator,
    bimodal_similarity_matching,
)
from clip_text_spot.models.inference import compiled


@functools.lru_cache(maxsize=16)
def tokenize_prompts(prompts: tuple[str, ...], length: int) -> tuple[tuple[int, ...], ...]:
    """OpenAI-padded CLIP ids of ``prompts`` at ``length`` slots (bundled OpenAI vocabulary), as nested tuples."""
    ids = CLIPTokenizer()(list(prompts), context_length=length, padding="openai")["input_ids"]
    return tuple(tuple(int(i) for i in row) for row in ids)


class TextPrompting(nnx.Module):
    """TCM's prompt modules around a visual feature space of width C (``config.clip.embed_dim``): the CLIP text
    tower with learnable contexts, the language prompt generator (FastTCM: fed by a learned ``meta_query``), BSM
    (FastTCM), the visual prompt generator, the context decoder and their residual scales. One implementation
    serves the DBNet detector (``TCMMatcher``: C = the attention pool's joint space) and the TESTR spotter
    (``models.testr.tcm``: C = res4's channels); ``config.clip.vision`` is not used here.

    ``prompt_ids`` int [K, prompt_length] overrides the tokenised ``config.prompt_texts`` (e.g. a checkpoint's own
    vocabulary); they are kept as static data (a tuple), not as a variable. In train mode the decoders' dropout
    needs ``rngs`` (an ``nnx.Rngs`` with a ``dropout`` stream, or a key).
    """

    def __init__(self, config: FastTCMConfig, *, rngs: nnx.Rngs, prompt_ids: np.ndarray | None = None):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        c, d = config.clip.embed_dim, config.clip.text.width
        if prompt_ids is None:
            self.prompt_ids = tokenize_prompts(config.prompt_texts, config.prompt_length)
        else:
            ids = np.asarray(prompt_ids)
            if ids.ndim != 2 or ids.shape[1] != config.prompt_length:
                raise ValueError(f"prompt_ids must be int [K, {config.prompt_length}], got shape {ids.shape}")
            self.prompt_ids = tuple(tuple(int(i) for i in row) for row in ids)
        self.text_encoder = ContextTextEncoder(config.text_config, c, rngs=rngs, dtype=dtype)
        self.contexts = (
            nnx.Param(
                nnx.with_partitioning(_trunc_normal(config.ctx_init_std), (None, None, "embed"))(
                    rngs.params(), (1, config.n_ctx, d)
                )
            )
            if config.n_ctx
            else None
        )
        self.prompt_generator = PromptGenerator(c, d, rngs=rngs, dtype=dtype) if config.use_prompt_generator else None
        self.meta_query = (
            nnx.Param(nnx.with_partitioning(nnx.initializers.normal(1.0), ("joint",))(rngs.params(), (c,)))
            if config.fast and config.use_prompt_generator
            else None
        )
        self.pix_w = (
            nnx.Param(nnx.with_partitioning(_identity, ("joint", None))(rngs.params(), (c, c)))
            if config.fast and config.bsm_projection
            else None
        )
        self.visual_prompt_generator = ContextDecoder(c, config.vpg, rngs=rngs, dtype=dtype) if config.use_vpg else None
        self.context_decoder = (
            ContextDecoder(c, config.context_decoder, rngs=rngs, dtype=dtype) if config.use_context_decoder else None
        )
        self.gamma = nnx.Param(
            nnx.with_partitioning(nnx.initializers.constant(config.gamma_init), ("joint",))(rngs.params(), (c,))
        )
        self.vis_gamma = nnx.Param(jnp.asarray(config.vis_gamma_init, jnp.float32))

    @property
    def num_prompts(self) -> int:
        """K: the number of predefined prompts, i.e. of score-map channels."""
        return len(self.prompt_ids)

    def _cue(self, source: jax.Array | None) -> jax.Array | None:
        """The prompt generator's cue [B', D] for its input [B', C] (None without a generator or an input)."""
        if self.prompt_generator is None or source is None:
            return None
        return self.prompt_generator(source.astype(self.config.dtype))

    def _text(self, cue: jax.Array | None) -> jax.Array:
        """Text-encoder output [B', K, C] (float32) for a cue [B', D] or None (then B' = 1)."""
        contexts = None if self.contexts is None else self.contexts[...]
        ids = jnp.asarray(self.prompt_ids, jnp.int32)
        return self.text_encoder(ids, contexts, cue).astype(jnp.float32)

    def _dropout_active(self) -> bool:
        return any(isinstance(m, nnx.Dropout) and m.rate > 0 and not m.deterministic for _, m in nnx.iter_modules(self))

    def _meta_query(self) -> jax.Array | None:
        return None if self.meta_query is None else self.meta_query[...][None]

    @compiled
    def precompute_text(self) -> jax.Array:
        """FastTCM only: the text-encoder output [1, K, C], constant for a set of weights; pass it to the matching
        call's ``text_cache`` to run inference without the text tower."""
        if not self.config.fast:
            raise ValueError("precompute_text needs a FastTCM model (config.fast=True): TCM's text is per image")
        return self._text(self._cue(self._meta_query()))

    def prepare_call(self, text_cache: jax.Array | None, rngs: nnx.Rngs | jax.Array | None) -> nnx.Rngs | None:
        """Validates ``text_cache`` / ``rngs`` for a matching call; a key becomes ``nnx.Rngs(dropout=key)``."""
        if text_cache is not None and not self.config.fast:
            raise ValueError("text_cache is only valid for FastTCM (config.fast=True)")
        if isinstance(rngs, jax.Array):
            rngs = nnx.Rngs(dropout=rngs)
        if rngs is None and self._dropout_active():
            raise ValueError(f"{type(self).__name__} in train mode needs rngs= (an nnx.Rngs or a key) for dropout")
        return rngs

    def load_clip_text(self, clip: CLIP) -> None:
        """Overwrite the text tower in place with a loaded CLIP model's (positions truncated to
        ``prompt_length + n_ctx`` rows, as the official code does at load); the other modules keep their values."""
        config = self.config
        _check_same(
            clip.config.text, config.clip.text, ("vocab_size", "width", "layers", "heads", "mlp_dim", "act"), "text"
        )
        if clip.config.embed_dim != config.clip.embed_dim:
            raise ValueError(f"CLIP embed_dim {clip.config.embed_dim} != the FastTCM config's {config.clip.embed_dim}")
        text = model_flat_state(clip.text_model)
        pos = "embeddings/position_embedding/embedding"
        length = config.text_config.context_length
        if text[pos].shape[0] < length:
            raise ValueError(f"CLIP text positions ({text[pos].shape[0]}) are fewer than prompt + contexts ({length})")
        text[pos] = text[pos][:length]
        assign_flat(self.text_encoder.text_model, text, "CLIP text tower")
        assign_flat(self.text_encoder.text_projection, model_flat_state(clip.text_projection), "CLIP text_projection")

    def match_tokens(
        self,
        global_feat: jax.Array,
        pixels: jax.Array,
        text_cache: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        valid: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Text prompting and matching on visual tokens: ``global_feat`` [B, C], ``pixels`` [B, N, C] (float32) ->
        dict of float32 ``prompt_gen`` [B, D] (absent without a generator), ``text_from_encoder``,
        ``text_after_bsm`` (= the former for TCM) [B, K, C], ``vis_prompt_diff`` [B, N, C] (VPG output),
        ``visual_after_vpg`` [B, N, C], ``text_diff`` (context-decoder output), ``text_final`` [B, K, C] and the
        cosine ``score`` [B, N, K]. ``valid`` [B, N] (True = a real pixel) keeps padded tokens out of the decoders'
        keys (None: every token is a key, as the official code on a padded batch)."""
        b, _, c = pixels.shape
        out = {}
        cue = self._cue(self._meta_query() if self.config.fast else global_feat)
        text = self._text(cue) if text_cache is None else jnp.asarray(text_cache, jnp.float32)
        if cue is not None:
            out["prompt_gen"] = jnp.broadcast_to(cue.astype(jnp.float32), (b, cue.shape[-1]))
        text = jnp.broadcast_to(text, (b, *text.shape[1:]))
        out["text_from_encoder"] = text
        if self.config.fast:
            g_match = global_feat if self.pix_w is None else global_feat @ self.pix_w[...]
            text = bimodal_similarity_matching(g_match, text)
        out["text_after_bsm"] = text

        visual_context = jnp.concatenate([global_feat[:, None, :], pixels], axis=1)
        context_valid = None if valid is None else jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)
        if self.visual_prompt_generator is not None:
            diff = self.visual_prompt_generator(pixels, text, rngs=rngs, query_valid=valid).astype(jnp.float32)
            out["vis_prompt_diff"] = diff
            pixels = pixels + self.vis_gamma[...] * diff
        out["visual_after_vpg"] = pixels
        if self.context_decoder is not None:
            diff = self.context_decoder(text, visual_context, rngs=rngs, memory_valid=context_valid)
            out["text_diff"] = diff.astype(jnp.float32)
            text = text + self.gamma[...] * out["text_diff"]
        out["text_final"] = text
        out["score"] = jnp.einsum("bnc,bkc->bnk", l2_normalize(pixels), l2_normalize(text), precision="highest")
        return out


class TCMMatcher(TextPrompting):
    """Image-text matching part of TCM-DBNet / FastTCM-DBNet: CLIP's ModifiedResNet (``backbone``) with the dense
    attention pool, whose global feature and local map feed ``TextPrompting``.

    Call ``model.eval()`` for inference (BatchNorm running statistics, no dropout) and ``model.train()`` to train;
    in train mode ``match`` needs ``rngs`` for the decoders' dropout.
    """

    def __init__(self, config: FastTCMConfig, *, rngs: nnx.Rngs, prompt_ids: np.ndarray | None = None):
        self.backbone = ModifiedResNet(config.clip.vision, config.clip.embed_dim, rngs=rngs, dtype=config.dtype)
        super().__init__(config, rngs=rngs, prompt_ids=prompt_ids)

    @compiled
    def match(
        self,
        images: jax.Array,
        text_cache: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Normalised NHWC images [B, H, W, 3] (H, W multiples of 32) -> dict of float32 NHWC tensors:

        ``c2..c5``, ``global_feat`` [B, C], ``local_feat`` [B, h, w, C], ``prompt_gen`` [B, D] (absent without a
        prompt generator), ``text_from_encoder``, ``text_after_bsm`` (= the former for TCM), ``text_final``
        [B, K, C], ``visual_after_vpg`` [B, h, w, C] and ``score_map`` [B, h, w, K] (cosine, in [-1, 1]).
        ``text_cache`` (FastTCM, from ``precompute_text``) skips the text tower. ``rngs``: dropout randomness in
        train mode (a key is wrapped as ``nnx.Rngs(dropout=key)``).
        """
        rngs = self.prepare_call(text_cache, rngs)
        feats, global_feat, local = self.backbone.dense(images.astype(self.config.dtype))
        feats = [f.astype(jnp.float32) for f in feats]
        g, local = global_feat.astype(jnp.float32), local.astype(jnp.float32)
        b, h, w, c = local.shape
        out = {"c2": feats[0], "c3": feats[1], "c4": feats[2], "c5": feats[3], "global_feat": g, "local_feat": local}
        matched = self.match_tokens(g, local.reshape(b, h * w, c), text_cache, rngs=rngs)
        out.update({k: v for k, v in matched.items() if k not in ("score", "vis_prompt_diff", "text_diff")})
        out["visual_after_vpg"] = matched["visual_after_vpg"].reshape(b, h, w, c)
        out["score_map"] = matched["score"].reshape(b, h, w, -1)
        return out

    def load_clip(self, clip: CLIP) -> None:
        """Overwrite the backbone and the text tower in place with a loaded CLIP ResNet model's weights.

        The attention-pool positions are resized bilinearly (PyTorch semantics, no antialiasing) from CLIP's grid to
        ``config.grid`` and the text positions truncated to ``prompt_length + n_ctx`` rows, as the official code does
        at load. The other modules keep their values.
        """
        load_clip_image(self.backbone, clip, self.config)
        self.load_clip_text(clip)

    @classmethod
    def from_clip(
        cls, config: FastTCMConfig, clip: CLIP, *, rngs: nnx.Rngs, prompt_ids: np.ndarray | None = None
    ) -> TCMMatcher:
        """A new matcher (prompt modules initialised as in TCM, tcm.md §2) with ``load_clip(clip)`` applied."""
        model = cls(config, rngs=rngs, prompt_ids=prompt_ids)
        model.load_clip(clip)
        return model


def load_clip_image(backbone: ModifiedResNet, clip: CLIP, config: FastTCMConfig) -> None:
    """Overwrite a ModifiedResNet in place with a loaded CLIP ResNet's image tower, the attention-pool positions
    resized bilinearly (PyTorch semantics, no antialiasing) from CLIP's grid to ``config.grid``."""
    if not clip.is_resnet:
        raise ValueError("loading a TCM image backbone needs a CLIP with a ModifiedResNet image tower")
    _check_same(clip.config.vision, config.clip.vision, ("layers", "width", "heads", "eps"), "vision")
    if clip.config.embed_dim != config.clip.embed_dim:
        raise ValueError(f"CLIP embed_dim {clip.config.embed_dim} != the FastTCM config's {config.clip.embed_dim}")
    vision = model_flat_state(clip.vision_model)
    vision["attnpool/positional_embedding"] = clip.vision_model.attnpool.positions((config.grid, config.grid))
    assign_flat(backbone, vision, "CLIP image tower")


def _trunc_normal(std: float):
    """PyTorch ``trunc_normal_(std=std)`` with its default cut at +-2 (absolute)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, dtype) * std

    return init


def _identity(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


def _check_same(a, b, fields: tuple[str, ...], what: str) -> None:
    """Error when two tower configs differ in any of ``fields`` (naming them)."""
    diff = [f for f in fields if getattr(a, f) != getattr(b, f)]
    if diff:
        raise ValueError(f"CLIP {what} tower differs from the FastTCM config in {diff}")
