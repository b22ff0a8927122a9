"""End-to-end spotting evaluation as a (training-free) stage of ``clip_text_spot.main``: a trained detector and
recogniser (``config.detector``, ``config.recognizer``) spot the held-out split of ``config.data`` and the RRC
end-to-end script (``metrics.spotting``) scores it.

Logged (``metrics.jsonl``, ``kind: "eval"``): ``e2e_hmean`` / ``e2e_precision`` / ``e2e_recall``, the detection-only
``hmean`` / ``precision`` / ``recall`` of the same detections, ``word_accuracy`` (share of detection-matched words
read correctly), counts and ``images_per_s``; with a lexicon, the numbers after correction. Pictures of the first
``vis_images`` images (green: spotted words with their text, red: ground truth) go to ``WORKDIR/vis/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from clip_text_spot import vis
from clip_text_spot.data.pipeline import as_det_sample, decode_image
from clip_text_spot.data.types import DetSample
from clip_text_spot.metrics.detection import DetProtocol
from clip_text_spot.metrics.spotting import LexiconMatcher, evaluate_spotting, lexicon_provider
from clip_text_spot.metrics.submission_io import TextInstances, sample_key
from clip_text_spot.spotter import SpotOptions, Spotter, Word, correct_words, draw_words


def spot_options(config: ml_collections.ConfigDict) -> SpotOptions:
    """``SpotOptions`` from ``config.spot`` (fields of the same names; lists become tuples)."""
    fields = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in config.spot.to_dict().items()}
    fields["postprocess"] = dict(config.spot.get("postprocess", {}))
    fields["eval_size"] = fields.get("eval_size") or None
    try:
        return SpotOptions(**fields)
    except TypeError as err:
        raise ValueError(f"--config.spot: {err}") from None


def spotting_metrics(
    samples: Sequence[DetSample],
    words: Sequence[Sequence[Word]],
    *,
    word_spotting: bool = False,
    int_coords: bool = False,
) -> dict[str, float]:
    """End-to-end and detection-only scores of ``words`` against the polygons and texts of ``samples``."""
    gts = {i: TextInstances.from_det_sample(s) for i, s in enumerate(samples)}
    dets = {
        i: TextInstances(
            [np.asarray(w.polygon, np.float64) for w in ws],
            [w.text for w in ws],
            np.zeros(len(ws), bool),
            np.array([w.score for w in ws], np.float64),
        )  # fmt: skip
        for i, ws in enumerate(words)
    }
    result = evaluate_spotting(
        gts, dets, word_spotting=word_spotting, protocol=DetProtocol(geometry="gpc", int_coords=int_coords),
        float_coords=not int_coords,
    )  # fmt: skip
    e2e, det = result.e2e.as_dict(), result.detection.as_dict()
    matched_words = det["matched"]
    return {
        "e2e_hmean": e2e["hmean"], "e2e_precision": e2e["precision"], "e2e_recall": e2e["recall"],
        "hmean": det["hmean"], "precision": det["precision"], "recall": det["recall"],
        "word_accuracy": e2e["matched"] / matched_words if matched_words else 0.0,
        "gt_words": e2e["gt_care"], "detections": result.stats["det_total"], "correct": e2e["matched"],
    }  # fmt: skip


class SpotEvalTask:
    """Evaluation-only stage: ``run(workdir) -> metrics`` (``clip_text_spot.main`` logs them at step 0)."""

    models = ("detector", "recognizer")  # config fields naming the trained models
    options_from = staticmethod(spot_options)  # config -> the pipeline's options

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        for key in self.models:
            if not config.get(key):
                raise ValueError(f"spotting needs --config.{key}=DIR (a trained {key}'s workdir or checkpoint)")
        self.options = self.options_from(config)
        lex = config.get("lexicon", ml_collections.ConfigDict({"kind": "none"}))
        self.matcher, self.lexicons = None, None
        if lex.kind != "none":
            self.matcher = LexiconMatcher(lex.kind, lex.get("policy", "deepsolo"))
            self.lexicons = lexicon_provider(
                lex.kind, lex.get("dir") or None, words_file=lex.get("words") or None,
                pairs_file=lex.get("pairs") or None, policy=self.matcher.policy,
            )  # fmt: skip

    def build_spotter(self):
        """The pipeline to evaluate: anything with ``spot(images) -> words per image`` and ``timings``."""
        cfg = self.config
        return Spotter.from_checkpoints(cfg.detector, cfg.recognizer, best=bool(cfg.get("best", False)),
                                        options=self.options)  # fmt: skip

    def _samples(self) -> Sequence:
        from clip_text_spot.tasks.fasttcm import detection_sources

        return detection_sources(self.config.data, self.config.seed)[1]

    def run(self, workdir: str) -> dict[str, float]:
        """Spot the evaluation split and score it (every process computes the whole set; process 0 draws)."""
        cfg = self.config
        spotter = self.build_spotter()
        source = self._samples()
        samples = [as_det_sample(source[i]) for i in range(len(source))]
        start = time.perf_counter()
        words = spotter.spot([s.image for s in samples])
        seconds = time.perf_counter() - start
        if self.matcher is not None:  # per-image (strong) lexicons are found by the number in the image name
            keys = [sample_key(s.name) for s in samples]
            words = [
                correct_words(w, self.matcher, self.lexicons(i if k is None else k))
                for i, (w, k) in enumerate(zip(words, keys, strict=True))
            ]
        metrics = spotting_metrics(
            samples, words, word_spotting=bool(cfg.get("word_spotting", False)),
            int_coords=cfg.data.get("protocol", "") == "icdar2015" and cfg.data.name != "synthetic",
        )  # fmt: skip
        metrics.update(images=len(samples), images_per_s=len(samples) / max(seconds, 1e-9))
        metrics.update({f"seconds_{k}": round(v, 3) for k, v in spotter.timings.items()})
        logging.info("spotting: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
        if jax.process_index() == 0:
            for i, (sample, ws) in enumerate(zip(samples[: int(cfg.get("vis_images", 4))], words, strict=False)):
                vis.save_png(
                    os.path.join(workdir, "vis", f"{i:06d}.png"), draw_words(decode_image(sample.image), ws, sample)
                )
        return metrics
