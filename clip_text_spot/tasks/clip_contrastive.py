"""CLIP contrastive training on synthetic word crops: a small, real job that exercises the whole stack.

Each sample is a rendered word crop (``clip_text_spot.data.synthetic.SyntheticRecSource``) and its word as the
caption. Loss: CLIP's symmetric InfoNCE with the learnable temperature (clamped at 100). Evaluation: for each
held-out crop, the caption of the most similar held-out text must be its own word (``retrieval_top1``).
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from clip_text_spot.data.synthetic import SyntheticRecSource
from clip_text_spot.data.synthetic.render import TextStyle
from clip_text_spot.models.clip import CLIP, l2_normalize, load_pretrained, preset
from clip_text_spot.models.clip.convert import assign_flat, model_flat_state
from clip_text_spot.models.clip.tokenizer import CLIPTokenizer
from clip_text_spot.models.inference import inference_fn

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32) * 255
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32) * 255


def _embed(model: CLIP, images: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Unit-norm image and text embeddings."""
    return l2_normalize(model.encode_image(images)), l2_normalize(model.encode_text(ids))


class _Encode:
    """Crop -> normalised [H, W, 3] float32 (aspect kept, right-padded); label -> CLIP ids (OpenAI padding)."""

    def __init__(self, crop_size: tuple[int, int], context_length: int):
        self.crop_size = tuple(crop_size)
        self.context_length = context_length
        self._tok: CLIPTokenizer | None = None

    def __call__(self, sample: Any) -> dict[str, np.ndarray]:
        import cv2

        if self._tok is None:  # created lazily so the callable pickles cheaply into grain workers
            self._tok = CLIPTokenizer(context_length=self.context_length)
        h, w = self.crop_size
        img = np.asarray(sample.image)
        new_w = int(min(w, max(1, round(img.shape[1] * h / img.shape[0]))))
        img = cv2.resize(img, (new_w, h), interpolation=cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR)
        out = np.zeros((h, w, 3), np.float32)
        out[:, :new_w] = (img.astype(np.float32) - CLIP_MEAN) / CLIP_STD
        ids = self._tok(sample.label, truncate=True)["input_ids"][0]
        return {
            "image": out,
            "input_ids": ids,
            "label": np.frombuffer(sample.label.lower().encode().ljust(32)[:32], np.uint8),
        }


class ClipContrastiveTask:
    """Task protocol implementation (see ``clip_text_spot.trainer.Task``)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.clip_config = preset(config.model.preset).replace(
            dtype=config.model.dtype, text={"context_length": config.model.context_length}
        )
        # words only (lower / Title / UPPER), mild geometry: captions are case-insensitive after CLIP's BPE
        self.style = TextStyle(
            vocab_size=config.data.vocab_size,
            word_kind_weights=(0.5, 0.3, 0.2, 0.0, 0.0),
            max_rotation=5.0,
            curve_prob=0.0,
        )
        self.encode = _Encode(config.data.crop_size, config.model.context_length)

    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return CLIP(self.clip_config, rngs=rngs)

    def load_pretrained(self, model: nnx.Module) -> None:
        if self.config.model.checkpoint:
            src = load_pretrained(self.config.model.checkpoint, context_length=self.config.model.context_length)
            assign_flat(model, model_flat_state(src), self.config.model.checkpoint)

    def _dataset(self, split: str, size: int) -> grain.MapDataset:
        source = SyntheticRecSource(size, split=split, seed=self.config.seed, style=self.style)
        return grain.MapDataset.source(source).map(self.encode)

    def train_batches(self, *, seed: int, process_index: int, process_count: int):
        ds = self._dataset("train", 10_000_000)[process_index::process_count]
        ds = ds.to_iter_dataset().batch(self.config.batch_size // process_count, drop_remainder=True)
        if self.config.data.workers:
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.config.data.workers))
        return iter(ds)

    def loss(self, model: CLIP, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        del rng
        img = l2_normalize(model.encode_image(batch["image"]))
        txt = l2_normalize(model.encode_text(batch["input_ids"]))
        scale = jnp.exp(jnp.minimum(model.logit_scale[...], jnp.log(100.0)))
        logits = scale * img @ txt.T
        # the same word can appear twice in a batch: every matching caption counts as a positive
        same = jnp.all(batch["label"][:, None, :] == batch["label"][None, :, :], axis=-1).astype(jnp.float32)
        targets = same / same.sum(axis=1, keepdims=True)
        loss = 0.5 * (
            optax.softmax_cross_entropy(logits, targets).mean() + optax.softmax_cross_entropy(logits.T, targets).mean()
        )
        acc = jnp.mean(jnp.take_along_axis(same, jnp.argmax(logits, axis=1)[:, None], axis=1))
        return loss, {"batch_top1": acc, "logit_scale": scale}

    def evaluate(self, model: CLIP, step: int, workdir: str) -> dict[str, float]:
        del step, workdir
        n = int(self.config.data.eval_samples)
        ds = self._dataset("eval", n)
        rows = [ds[i] for i in range(n)]
        images = np.stack([r["image"] for r in rows])
        ids = np.stack([r["input_ids"] for r in rows])
        labels = np.stack([r["label"] for r in rows])
        img, txt = inference_fn(_embed, model)(images, ids)
        best = np.asarray(jnp.argmax(img @ txt.T, axis=1))
        correct = np.all(labels[best] == labels, axis=1)
        return {"retrieval_top1": float(correct.mean()), "eval_samples": n}
