"""End-to-end text spotting: a FastTCM / TCM detector finds words, each is rectified on device into a recogniser
crop, and a DPTR recogniser reads all crops of a batch of images together.

Per batch of images (``Spotter.spot``):

1. **preprocess** (host): keep-ratio resize into the detector's box, normalise (as detector evaluation does);
2. **detector** (device): the head's maps (DB: probability map; FastTCM uses its text cache);
3. **postprocess** (host): the head's post-processing -> polygons and detection scores in original-image pixels;
4. **rectify** (device): every polygon (``clip_text_spot.rectify``: quads by perspective, other polygons along
   their two long sides) is sampled from the detector's input image, already on device, into the recogniser's
   crop size (with ``refine`` each quad is first re-fitted to the word's ink on the host, ``rectify.refine_quad``;
   the word keeps the detector's polygon); crops are padded to a power-of-two count (at most ``max_crops`` per
   call) so shapes stay few;
5. **recognizer** (device, then host decoding): autoregressive DPTR decoding; the text is cut at the first EOS
   and its confidence is the product of the per-step maximum probabilities up to and including that EOS
   (PARSeq's convention).

Batches are pipelined: batch k+1 is preprocessed and its detector pass launched before batch k is post-processed
and read, so the device computes while the host runs DB post-processing. An optional lexicon
(``metrics.spotting.LexiconMatcher``) then corrects or drops words. ``Spotter.timings`` adds up the host's seconds in
each stage, waits for the device included, so the shares say where the time goes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from clip_text_spot import vis
from clip_text_spot.data.pipeline import DB_MEAN, DB_STD, REC_MEAN, REC_STD, DetEvalTransform, decode_image
from clip_text_spot.data.types import DetSample
from clip_text_spot.metrics.spotting import Lexicon, LexiconMatcher
from clip_text_spot.models.inference import inference_fn, overlapped, to_host
from clip_text_spot.rectify import LAYOUTS, rectify, refine_quad, region_geometry

if TYPE_CHECKING:
    from clip_text_spot.models.dptr.recognizer import DptrRecognizer
    from clip_text_spot.tasks.fasttcm import FastTCMTask

STAGES = ("preprocess", "detector", "postprocess", "rectify", "recognizer")


@dataclasses.dataclass
class Word:
    """One spotted word: polygon [n, 2] in original-image pixels, detection score, text, recognition confidence."""

    polygon: np.ndarray
    score: float
    text: str
    confidence: float

    def to_json(self) -> dict:
        return {
            "polygon": np.round(self.polygon, 2).tolist(),
            "score": round(float(self.score), 4),
            "text": self.text,
            "confidence": round(float(self.confidence), 4),
        }


@dataclasses.dataclass(frozen=True)
class SpotOptions:
    """Pipeline settings.

    Attributes:
      eval_size: (H, W) box the detector's input is resized into (multiples of 32); None: the detector config's.
      batch_size: images per detector call (the last batch is padded).
      max_crops: most crops per rectify / recogniser call.
      supersample: rectification supersampling factor (box filter against aliasing of large words).
      side_points: points per side describing a curved polygon.
      layout: ``contour`` (detector outlines) or ``paired`` (top L->R then bottom R->L, e.g. ground truth).
      min_score: detections scoring below this are dropped before recognition.
      pad: each region is grown by this fraction of its height on every side before rectification.
      refine: re-fit each detected quad to the word's ink in the image before it is read (``rectify.refine_quad``;
        for weak detectors whose boxes are tilted or loose; reported polygons stay the detector's).
      postprocess: post-processing field overrides (of the detector's head) on top of the detector config's.
    """

    eval_size: tuple[int, int] | None = None
    batch_size: int = 1
    max_crops: int = 64
    supersample: int = 2
    side_points: int = 16
    layout: str = "contour"
    min_score: float = 0.0
    pad: float = 0.1
    refine: bool = False
    postprocess: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.batch_size < 1 or self.max_crops < 1 or self.supersample < 1 or self.side_points < 2:
            raise ValueError(f"batch_size, max_crops, supersample must be >= 1 and side_points >= 2: {self}")


def _bucket(n: int, cap: int) -> int:
    """Smallest power of two >= n (at least 8), at most ``cap``."""
    return min(cap, max(8, 1 << max(0, n - 1).bit_length()))


def _confident_text(ids: np.ndarray, probs: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the number of characters before the first EOS and the product of the step probabilities up to and
    including it (all steps when there is no EOS)."""
    steps = ids.shape[1]
    is_eos = ids == eos
    length = np.where(is_eos.any(1), is_eos.argmax(1), steps)
    used = np.arange(steps)[None, :] <= np.minimum(length, steps - 1)[:, None]
    return length, np.where(used, probs, 1.0).prod(1)


def _read_crops(model: DptrRecognizer, crops: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-step argmax ids and their probabilities [N, steps] of normalised word crops."""
    probs = jax.nn.softmax(model.predict(crops).astype(jnp.float32), axis=-1)
    return probs.argmax(-1), probs.max(-1)


class Spotter:
    """Detector + recogniser pipeline (module docstring). Build with ``Spotter.from_checkpoints`` or from models."""

    def __init__(
        self,
        det_config: ml_collections.ConfigDict,
        det_task: FastTCMTask,
        det_model: nnx.Module,
        rec_model: DptrRecognizer,
        options: SpotOptions = SpotOptions(),
    ):
        self.options = options
        eval_size = options.eval_size or tuple(det_config.data.eval_size)
        if any(int(s) % 32 for s in eval_size):
            raise ValueError(f"eval_size must be multiples of 32 (the FPN stride), got {tuple(eval_size)}")
        self.eval_size = tuple(int(s) for s in eval_size)
        self.overrides = dict(options.postprocess)  # the config's own overrides are in det_task's head
        self._det_task = det_task
        self.charset = rec_model.charset
        self.crop_size = tuple(rec_model.encoder.cfg.image_size)
        self._transform = DetEvalTransform(size=self.eval_size, max_polys=1, targets=None)
        self._prob = det_task.predict_fn(det_model)
        db_mean, db_std = jnp.asarray(DB_MEAN, jnp.float32), jnp.asarray(DB_STD, jnp.float32)
        rec_mean, rec_std = jnp.asarray(REC_MEAN, jnp.float32), jnp.asarray(REC_STD, jnp.float32)
        size, s = self.crop_size, options.supersample

        @jax.jit
        def crops(images, sizes, image_index, quads, sides, is_quad):
            pixels = jnp.clip(images * db_std + db_mean, 0.0, 255.0)  # detector input back to RGB levels
            out = rectify(pixels, sizes, image_index, quads, sides, is_quad, size=size, supersample=s)
            return (out - rec_mean) / rec_std

        self._crops, self._read = crops, inference_fn(_read_crops, rec_model)
        self.timings: dict[str, float] = collections.defaultdict(float)

    @classmethod
    def from_checkpoints(
        cls, detector: str, recognizer: str, *, best: bool = False, options: SpotOptions = SpotOptions()
    ) -> Spotter:
        """Restore both models from trainer checkpoints (workdirs, ``ckpt``/``best`` folders or step directories;
        a multi-stage workdir's ``detector`` / ``finetune`` stage); the recogniser may also be an official PARSeq /
        OpenOCR DPTR checkpoint ``FILE.safetensors`` with ``FILE.json`` beside it (``clip_text_spot.dptr.load``)."""
        from clip_text_spot.dptr.load import load_recognizer
        from clip_text_spot.trainer import restore_model

        det_config, det_task, det_model, _ = restore_model(detector, best=best, stage="detector")
        if det_config.task != "fasttcm":
            raise ValueError(f"--detector={detector} holds a {det_config.task!r} model; a fasttcm detector is needed")
        rec_model, _ = load_recognizer(recognizer, best=best)
        return cls(det_config, det_task, det_model, rec_model, options)

    def _timed(self, stage: str, fn: Callable, *args):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        self.timings[stage] += time.perf_counter() - start
        return out

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[jax.Array, dict]:
        """(detector input [batch_size, H, W, 3] on device, host arrays ``scale`` and ``resized_shape``) of up to
        ``batch_size`` decoded images (the batch is padded)."""

        def run():
            rows = [self._transform((i, DetSample(image=img, polygons=[], texts=[], ignore=[], name=str(i))))
                    for i, img in enumerate(images)]  # fmt: skip
            rows += [self._transform((0, None))] * (self.options.batch_size - len(rows))
            arrays = {k: np.stack([r[k] for r in rows]) for k in ("image", "scale", "resized_shape")}
            return jax.device_put(arrays.pop("image")), arrays

        return self._timed("preprocess", run)

    def probability(self, device_images: jax.Array) -> Any:
        """The detector's prediction (host arrays; DB: probability maps [batch_size, H, W])."""
        return to_host(self._timed("detector", self._prob, device_images))

    def postprocess(self, prob: Any, arrays: dict, n: int) -> list[list[tuple[np.ndarray, float]]]:
        """The head's post-processing of the first ``n`` images: per image [(polygon in original pixels, score)]."""

        def run():
            first = jax.tree.map(lambda a: a[:n], prob)
            scales, sizes = arrays["scale"][:n], arrays["resized_shape"][:n]
            preds = self._det_task.postprocess(first, scales, sizes, **self.overrides)
            return [[(p, s) for p, s in row if s >= self.options.min_score] for row in preds]

        return self._timed("postprocess", run)

    def read_regions(
        self, device_images: jax.Array, sizes: np.ndarray, regions: list[tuple[int, np.ndarray]]
    ) -> list[tuple[str, float]]:
        """(text, confidence) of each (image row, polygon in detector-input pixels) region."""
        opts = self.options
        out: list[tuple[str, float]] = []
        for start in range(0, len(regions), opts.max_crops):
            chunk = regions[start : start + opts.max_crops]
            n, padded = len(chunk), _bucket(len(chunk), opts.max_crops)
            quads, sides, is_quad = region_geometry([p for _, p in chunk], opts.side_points, opts.layout, opts.pad)
            pad = padded - n
            index = np.array([r for r, _ in chunk] + [0] * pad, np.int32)
            quads = np.concatenate([quads, np.broadcast_to(quads[:1], (pad, *quads.shape[1:]))])
            sides = np.concatenate([sides, np.broadcast_to(sides[:1], (pad, *sides.shape[1:]))])
            is_quad = np.concatenate([is_quad, np.broadcast_to(is_quad[:1], (pad,))])
            crops = self._timed("rectify", self._crops, device_images, sizes, index, quads, sides, is_quad)

            def recognise(crops=crops, n=n):
                ids, probs = (np.asarray(a)[:n] for a in self._read(crops))
                lengths, conf = _confident_text(ids, probs, self.charset.EOS)
                return [(self.charset.decode(row[:k]), float(c)) for row, k, c in zip(ids, lengths, conf, strict=True)]

            out += self._timed("recognizer", recognise)
        return out

    def regions(
        self, images: Sequence[np.ndarray], dets: list[list[tuple[np.ndarray, float]]], scale: np.ndarray
    ) -> list[tuple[int, np.ndarray]]:
        """(image row, polygon in detector-input pixels) to read for each detection (original-image pixels) of
        ``images``; quads re-fitted to the word's ink with ``options.refine``."""
        out = []
        for row, d in enumerate(dets):
            for p, _ in d:
                p = np.asarray(p, np.float32)
                if self.options.refine and len(p) == 4:
                    p = refine_quad(images[row], p)
                out.append((row, p * scale[row]))
        return out

    def spot(self, images: Sequence[np.ndarray]) -> list[list[Word]]:
        """Words of each image (uint8 RGB arrays or encoded bytes), in batches of ``options.batch_size``.

        Pipelined (module docstring): the "detector" time is what is left of the wait for batch k's probability
        maps once batch k+1 has been prepared.
        """
        bs = self.options.batch_size
        chunks = ([decode_image(img) for img in images[s : s + bs]] for s in range(0, len(images), bs))
        prepared = ((*self.prepare(chunk), chunk) for chunk in chunks)
        fetch = functools.partial(self._timed, "detector", to_host)
        results: list[list[Word]] = []
        for (device_images, batch, chunk), prob in overlapped(prepared, lambda p: self._prob(p[0]), fetch):
            dets = self.postprocess(prob, batch, len(chunk))
            regions = self._timed("rectify", self.regions, chunk, dets, batch["scale"])
            read = self.read_regions(device_images, batch["resized_shape"], regions) if regions else []
            words = iter(read)
            results += [[Word(np.asarray(p), s, *next(words)) for p, s in d] for d in dets]
        return results


def correct_words(words: list[Word], matcher: LexiconMatcher, lexicon: Lexicon) -> list[Word]:
    """Words corrected by the lexicon; those the matcher's policy drops are removed."""
    out = []
    for w in words:
        text = matcher(w.text, lexicon)
        if text is not None:
            out.append(dataclasses.replace(w, text=text))
    return out


def draw_words(image: np.ndarray, words: Sequence[Word], truth: DetSample | None = None) -> np.ndarray:
    """``image`` with ground truth (red, when given) and spotted words with their text (green) drawn."""
    if truth is not None:
        image = vis.draw_polygons(image, truth.polygons, vis.GT_COLOR, thickness=1)
    return vis.draw_polygons(image, [w.polygon for w in words], vis.PRED_COLOR, labels=[w.text for w in words])
