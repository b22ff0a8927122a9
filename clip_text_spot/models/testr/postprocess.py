"""TESTR inference post-processing (spotting.md §4; ``TransformerDetector.inference`` + ``detector_postprocess``,
and the evaluator's ``decode``).

On device (``inference_scores``): ``score = sigmoid(mean_P logits)`` (max over classes; one class), ``rec_scores =
softmax(texts)`` and ``recs = argmax``. On the host (``postprocess_words``): queries with ``score >= threshold``
are kept (no NMS, no top-k; thresholds 0.45 Total-Text/pretrain, 0.3 IC15, 0.7 CTW1500), their points scaled to
the resized input (``x * w``, ``y * h``) then to the original image (``* orig / resized``) and flattened to
``[K, 2P]``, and ``recs`` decoded: index ``c < len(charset)`` -> ``charset[c]``, ``len(charset)`` (unknown) ->
U+53E3, padding and anything above skipped (not a terminator), as the official evaluator does. ``charset`` is
a parameter: TESTR's 95-character ``CTLABELS`` (voc 96) or any other table.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from clip_text_spot.models.testr.targets import CTLABELS

NULL_CHAR = "\u53e3"


@dataclasses.dataclass
class SpottedWords:
    """One image's kept queries."""

    scores: np.ndarray  # [K] float32
    polygons: np.ndarray  # [K, 2P] float32, (x, y) pairs in original-image pixels
    recs: np.ndarray  # [K, T] int
    rec_scores: np.ndarray  # [K, T, voc + 1] float32 softmax
    strings: list[str]


def decode_text(rec: np.ndarray, charset: str = CTLABELS) -> str:
    """Character indices -> string (unknown -> U+53E3, padding skipped)."""
    return "".join(charset[c] if c < len(charset) else NULL_CHAR for c in map(int, rec) if c <= len(charset))


def inference_scores(pred_logits: jax.Array, pred_texts: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(scores [B, Q], rec_scores [B, Q, T, V], recs [B, Q, T]) from logits [B, Q, P, C] and texts [B, Q, T, V]."""
    scores = jax.nn.sigmoid(pred_logits.mean(-2)).max(-1)
    rec_scores = jax.nn.softmax(pred_texts, axis=-1)
    return scores, rec_scores, jnp.argmax(rec_scores, -1)


def postprocess_words(
    pred_logits: jax.Array,
    pred_ctrl_points: jax.Array,
    pred_texts: jax.Array,
    image_sizes: np.ndarray,
    orig_sizes: np.ndarray,
    threshold: float,
    charset: str = CTLABELS,
) -> list[SpottedWords]:
    """Kept words per image; ``image_sizes`` [B, 2] (h, w) of the resized unpadded inputs, ``orig_sizes`` [B, 2]
    (h, w) to scale the polygons to."""
    scores, rec_scores, recs = (np.asarray(x) for x in inference_scores(pred_logits, pred_texts))
    points = np.asarray(pred_ctrl_points, np.float32)
    results = []
    for b, ((h, w), (oh, ow)) in enumerate(zip(np.asarray(image_sizes), np.asarray(orig_sizes), strict=True)):
        keep = scores[b] >= threshold
        pts = points[b, keep] * np.array([w, h], np.float32)
        pts = pts * np.array([ow / w, oh / h], np.float32)
        results.append(
            SpottedWords(
                scores=scores[b, keep],
                polygons=pts.reshape(len(pts), 2 * points.shape[2]),
                recs=recs[b, keep],
                rec_scores=rec_scores[b, keep],
                strings=[decode_text(r, charset) for r in recs[b, keep]],
            )
        )
    return results
