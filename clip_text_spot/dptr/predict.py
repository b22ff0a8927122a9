"""Batched prediction of texts with a DPTR model, and scoring against labels (shared by training evaluation and
``clip_text_spot.predict_rec``).

Word crops are preprocessed as in training without augmentation (``crop_pixels``: decode, bicubic resize to
32 x 128 ignoring the aspect ratio, ``[-1, 1]``). Logits are turned into text by argmax and cut at the first EOS
(``Charset.decode``). Scores follow PARSeq's benchmark convention by default (``metrics.recognition``: whitespace
removed, NFKD, labels over 25 characters skipped, lower-cased 36-character alphanumeric comparison): ``word_accuracy``
and ``ned`` (= 1 - mean normalised edit distance).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from clip_text_spot.data.augment import resize_rec
from clip_text_spot.data.pipeline import REC_MEAN, REC_STD, decode_image, normalize
from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.metrics.recognition import LabelNormalizer, evaluate_recognition


def crop_pixels(image: bytes | np.ndarray, size: tuple[int, int] = (32, 128)) -> np.ndarray:
    """float32 [H, W, 3] in [-1, 1] of an encoded or decoded word crop."""
    return normalize(resize_rec(decode_image(image), tuple(size)), REC_MEAN, REC_STD)


def predict_texts(
    predict: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    charset: Charset,
    batch_size: int,
) -> list[str]:
    """Texts of ``predict(batch) -> logits [b, steps, classes]`` over ``inputs`` [N, ...], in fixed-size
    batches (the last one padded with zeros, so a jitted ``predict`` compiles once)."""
    texts: list[str] = []
    for start in range(0, len(inputs), batch_size):
        batch = np.asarray(inputs[start : start + batch_size])
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        ids = np.asarray(predict(batch)).argmax(-1)[:n]
        texts.extend(charset.decode(row) for row in ids)
    return texts


def score(labels: Mapping[str, str], predictions: Mapping[str, str], convention: str = "parseq") -> dict[str, float]:
    """``word_accuracy``, ``ned`` and counts of ``predictions`` against raw ``labels`` (both keyed by name)."""
    summary = evaluate_recognition(labels, predictions, normalizer=LabelNormalizer(convention)).summary()
    return {k: summary[k] for k in ("word_accuracy", "ned", "correct", "total", "skipped_long", "skipped_empty")}
