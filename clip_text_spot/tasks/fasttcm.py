"""FastTCM / TCM text detection with any head (``--config.model.head=db|fce|pan``, ``clip_text_spot.heads``):
data, loss, evaluation (hmean) and pictures for the trainer.

Loss (tcm.md §3.1, §2.10, fcenet_panet.md §1.5, §6.3): the head's loss (DB: 5 x balanced BCE + Dice + 10 x masked
L1; FCE: text/centre CE + Fourier regression per level; PAN: text and kernel Dice + aggregation/discrimination)
plus ``aux_weight`` x the head's auxiliary score-map loss. Evaluation: the head's post-processing on the held-out
split, ICDAR2015-protocol (or curved) hmean at the configured score threshold (``hmean``, ``precision``,
``recall``) and mmocr's score-threshold sweep (``sweep_hmean``, ``sweep_thr``); PNG overlays (green: predictions,
red: ground truth, yellow: don't care) in ``WORKDIR/vis/step_N/``. FastTCM evaluates with the text embedding
computed once (``precompute_text``).

Few-shot training (``--config.data.fraction=0.1``): a prepared dataset's train split is cut to ``round(fraction x
N)`` images (at least 1) drawn without replacement with ``numpy.random.default_rng(data.fraction_seed)`` and kept in
source order; their names are written to ``WORKDIR/train_subset.txt`` (one per line, at the first evaluation,
which is the first call that knows the workdir). Synthetic scenes: the pool of train scenes (``data.synthetic_pool``,
each scene's seed is its index) shrinks to its first ``round(fraction x pool)`` scenes, a fixed set too; the file
then holds one line naming that range.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from clip_text_spot import vis
from clip_text_spot.data.augment import DetAugConfig
from clip_text_spot.data.pipeline import DB_MEAN, DB_STD, as_det_sample, make_det_eval_batches, make_det_train_iter
from clip_text_spot.data.synthetic import SyntheticDetSource, TextStyle
from clip_text_spot.data.synthetic.render import DET_STYLE
from clip_text_spot.heads import HeadKind, make_head
from clip_text_spot.metrics.detection import evaluate_detection, protocol_for
from clip_text_spot.metrics.submission_io import TextInstances
from clip_text_spot.models.clip import load_pretrained, preset
from clip_text_spot.models.fasttcm.config import DecoderConfig, FastTCMConfig
from clip_text_spot.models.fasttcm.detector import DetectorConfig, FastTCMDetector
from clip_text_spot.models.inference import inference_fn, overlapped


def detector_config(model: ml_collections.ConfigDict) -> DetectorConfig:
    """``DetectorConfig`` from ``config.model`` (see ``configs/fasttcm.py`` for the fields)."""
    clip = preset(model.clip_preset).replace(vision={"image_size": model.pool_size})
    if model.variant not in ("fasttcm", "tcm"):
        raise ValueError(f"--config.model.variant must be 'fasttcm' or 'tcm', got {model.variant!r}")
    decoder = DecoderConfig(
        width=model.decoder_width, heads=model.decoder_heads, layers=model.decoder_layers, dropout=model.dropout
    )
    matcher = FastTCMConfig(
        clip=clip,
        prompts=(model.prompt,),
        n_ctx=model.n_ctx,
        fast=model.variant == "fasttcm",
        vpg=decoder,
        context_decoder=decoder,
        tau=model.tau,
        dtype=model.dtype,
    )
    widths = {k: model[k] for k in ("fce_channels", "fourier_degree", "pan_channels", "fpem_repeat") if k in model}
    return DetectorConfig(
        matcher=matcher,
        head=model.get("head", "db"),
        lateral_channels=model.lateral_channels,
        out_channels=model.out_channels,
        **widths,
    )


def detection_head(config: ml_collections.ConfigDict) -> HeadKind:
    """The run's head kind with its host-side options (targets preset, post-processing preset and overrides)."""
    return make_head(
        config.model.get("head", "db"),
        targets=config.data.get("targets", "default"),
        postprocess=config.postprocess.preset,
        overrides=dict(config.postprocess.get("overrides", {})),
        max_instances=int(config.data.get("max_instances", 256)),
        official_broadcast=bool(config.model.get("aux_official_broadcast", False)),
    )


class SubsetSource:
    """The items ``indices`` of a random-access source (picklable when the source is)."""

    def __init__(self, source: Sequence, indices: Sequence[int]):
        self.source, self.indices = source, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[self.indices[i]]


def fraction_size(n: int, fraction: float) -> int:
    """``round(fraction n)``, at least 1; ``fraction`` must be in (0, 1]."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--config.data.fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * n))


def fraction_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """``fraction_size(n, fraction)`` sorted distinct indices of ``range(n)``, drawn with ``seed``."""
    return np.sort(np.random.default_rng(seed).choice(n, size=fraction_size(n, fraction), replace=False))


def detection_sources(data: ml_collections.ConfigDict, seed: int) -> tuple[Any, Any]:
    """(train, eval) random-access sources: synthetic scenes, or prepared TFDS splits under ``data.root``; with
    ``data.fraction < 1`` the train source is the few-shot subset (module docstring)."""
    fraction = float(data.get("fraction", 1.0))
    if data.name == "synthetic":
        style = TextStyle(**{**DET_STYLE.__dict__, **dict(data.get("style", {}))})
        kw = dict(image_size=tuple(data.image_size), num_words=tuple(data.num_words), style=style, seed=seed)
        pool = int(data.get("synthetic_pool", 10_000_000))
        return (
            SyntheticDetSource(fraction_size(pool, fraction), split="train", **kw),
            SyntheticDetSource(int(data.eval_samples), split="eval", **kw),
        )
    from clip_text_spot.data.prepare import open_split

    return few_shot(open_split(data.root, data.train_split), data), open_split(data.root, data.eval_split)


def few_shot(train: Sequence, data: ml_collections.ConfigDict) -> Sequence:
    """A prepared train source cut to its ``data.fraction`` subset (``data.fraction_seed``); itself at 1."""
    fraction = float(data.get("fraction", 1.0))
    if fraction == 1.0:
        return train
    return SubsetSource(train, fraction_indices(len(train), fraction, int(data.get("fraction_seed", 0))))


def subset_lines(data: ml_collections.ConfigDict, train: Sequence) -> list[str]:
    """The lines of ``train_subset.txt`` for the train source ``detection_sources`` gave (none without a
    fraction): the image names, or the range of synthetic scenes."""
    if float(data.get("fraction", 1.0)) == 1.0:
        return []
    if data.name == "synthetic":
        return [
            f"synthetic train scenes 0..{len(train) - 1} of a pool of {int(data.get('synthetic_pool', 10_000_000))}"
        ]
    return [as_det_sample(train[i]).name for i in range(len(train))]


def write_train_subset(workdir: str, data: ml_collections.ConfigDict, train: Sequence) -> None:
    """``WORKDIR/train_subset.txt`` (``subset_lines``; process 0, once; nothing without ``data.fraction``)."""
    path = os.path.join(workdir, "train_subset.txt")
    if jax.process_index() != 0 or os.path.exists(path):
        return
    lines = subset_lines(data, train)
    if lines:
        with open(path, "w") as f:
            f.write("".join(f"{line}\n" for line in lines))


def _prediction(model: FastTCMDetector, images: jax.Array, text_cache: jax.Array | None) -> Any:
    """The arrays the head's post-processing reads (DB: probability map) of normalised images (eval mode)."""
    return model.head_kind.prediction(model(images, text_cache))


class FastTCMTask:
    """Task protocol implementation (``clip_text_spot.trainer.Task``) for FastTCM / TCM with any head."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        data = config.data
        if data.name != "synthetic" and not data.root:
            raise ValueError(
                f"dataset {data.name!r} needs --config.data.root=DIR (a directory written by "
                "`python -m clip_text_spot.data.prepare`); or run the embedded demo: --config=configs/fasttcm.py:demo"
            )
        if config.model.require_clip and not config.model.clip_checkpoint:
            raise ValueError(
                "the paper recipe starts from CLIP RN50: set --config.model.clip_checkpoint=PATH (an OpenAI RN50 "
                "re-saved as safetensors; README 'CLIP weights'), or run the demo: --config=configs/fasttcm.py:demo"
            )
        self.det_config = detector_config(config.model)
        self.head = detection_head(config)
        self._sources = None

    @property
    def sources(self) -> tuple[Any, Any]:
        """(train, eval) sources, opened on first use (prediction from a checkpoint needs no dataset)."""
        if self._sources is None:
            self._sources = detection_sources(self.config.data, self.config.seed)
        return self._sources

    def write_subset(self, workdir: str) -> None:
        """``WORKDIR/train_subset.txt``: the few-shot train subset (nothing without ``data.fraction``)."""
        write_train_subset(workdir, self.config.data, self.sources[0])

    def build_model(self, rngs: nnx.Rngs) -> FastTCMDetector:
        return FastTCMDetector(self.det_config, rngs=rngs)

    def load_pretrained(self, model: FastTCMDetector) -> None:
        path = self.config.model.clip_checkpoint
        if path:
            logging.info("initialising the CLIP towers from %s", path)
            model.load_clip(load_pretrained(path))

    def train_batches(self, *, seed: int, process_index: int, process_count: int):
        data = self.config.data
        aug = DetAugConfig(crop_size=data.crop_size, scale_range=tuple(data.scale_range))
        return make_det_train_iter(
            self.sources[0],
            batch_size=self.config.batch_size // process_count,
            crop_size=data.crop_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            workers=data.workers,
            aug=aug,
            targets=self.head.targets,
        )

    def loss(self, model: FastTCMDetector, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        out = model(batch["image"], rngs=rng)
        total, parts = self.head.loss(out, batch)
        aux = self.head.aux_loss(out["score_map"], batch, model.config.tau)
        total = total + self.config.model.aux_weight * aux
        return total, {**parts, "loss_aux": aux}

    # -- evaluation --------------------------------------------------------------------------------------------------

    def predict_fn(self, model: FastTCMDetector):
        """A jitted ``images -> prediction`` (device arrays, dispatched asynchronously; DB: the probability map)
        for ``model`` in eval mode (FastTCM: text embedding computed once here); ``postprocess`` reads it."""
        text_cache = inference_fn(FastTCMDetector.precompute_text, model)() if model.config.fast else None
        prediction = inference_fn(_prediction, model)
        return lambda images: prediction(images, text_cache)

    def postprocess(
        self,
        prediction: Any,
        scales: Sequence[Sequence[float]],
        valid_sizes: Sequence[Sequence[int]],
        **overrides,
    ) -> list[list[tuple[np.ndarray, float]]]:
        """Per image ``[(polygon in original-image pixels, score)]`` from a host copy of ``predict_fn``'s output;
        ``scales`` (sx, sy) and ``valid_sizes`` (h, w) per image, as the eval batches carry them; ``overrides``
        replace post-processing fields on top of the config's."""
        head = self.head.with_overrides(**overrides) if overrides else self.head
        return head.postprocess(prediction, scales, valid_sizes)

    def evaluate(self, model: FastTCMDetector, step: int, workdir: str) -> dict[str, float]:
        data = self.config.data
        self.write_subset(workdir)
        predict = self.predict_fn(model)
        batches = make_det_eval_batches(
            self.sources[1],
            batch_size=int(data.eval_batch_size),
            eval_size=tuple(data.eval_size),
            with_targets=False,
            max_polys=int(data.max_polys),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        gts, dets, pictures = {}, {}, []
        for batch, prediction in overlapped(batches, lambda b: predict(b["image"])):
            valid = np.asarray(batch["valid"])
            preds = self.postprocess(prediction, batch["scale"], batch["resized_shape"])
            for row in np.flatnonzero(valid):
                key = int(batch["index"][row])
                gts[key] = _gt_instances(batch, row)
                dets[key] = TextInstances.from_predictions(preds[row])
                if len(pictures) < int(self.config.get("vis_images", 4)):
                    pictures.append((key, batch["image"][row], batch["scale"][row], gts[key], dets[key]))
        gts, dets = _gather_instances(gts), _gather_instances(dets)
        protocol = protocol_for("icdar2015" if data.get("protocol", "icdar2015") == "icdar2015" else "curved", "mmocr0")
        result = evaluate_detection(gts, dets, protocol=protocol, sweep="mmocr0", score_thr=None)
        precision, recall, hmean = result.counts.rates()
        metrics = {"hmean": hmean, "precision": precision, "recall": recall, "images": len(gts)}
        if result.best is not None:
            thr, counts = result.best
            metrics.update(sweep_hmean=counts.rates()[2], sweep_thr=thr)
        if jax.process_index() == 0:
            self._save_pictures(pictures, os.path.join(workdir, "vis", f"step_{step}"))
        return metrics

    def _save_pictures(self, pictures: list, directory: str) -> None:
        for key, image, scale, gt, det in pictures:
            img = vis.denormalize(image, DB_MEAN, DB_STD)
            factor = np.asarray(scale, np.float64)[:2]

            def scaled(polys, factor=factor):
                return [np.asarray(p) * factor for p in polys]

            care = [p for p, dc in zip(gt.polygons, gt.dont_care, strict=True) if not dc]
            dont = [p for p, dc in zip(gt.polygons, gt.dont_care, strict=True) if dc]
            img = vis.draw_polygons(img, scaled(care), vis.GT_COLOR, thickness=1)
            img = vis.draw_polygons(img, scaled(dont), vis.IGNORE_COLOR, thickness=1)
            labels = [f"{s:.2f}" for s in det.scores] if det.scores is not None else None
            img = vis.draw_polygons(img, scaled(det.polygons), vis.PRED_COLOR, labels=labels)
            vis.save_png(os.path.join(directory, f"{key:06d}.png"), img)


def _gt_instances(batch: dict[str, np.ndarray], row: int) -> TextInstances:
    """Ground-truth polygons of one eval-batch row (original image pixels) as ``TextInstances``."""
    n = np.asarray(batch["polygon_mask"][row])
    polys = [
        np.asarray(batch["polygons"][row, i, : int(batch["num_points"][row, i])], np.float64) for i in np.flatnonzero(n)
    ]
    ignore = np.asarray(batch["ignore"][row])[np.flatnonzero(n)]
    return TextInstances(polys, [""] * len(polys), ignore)


def _gather_instances(items: dict[int, TextInstances]) -> dict[int, TextInstances]:
    """All processes' per-image instances (multi-host evaluation: every process scores the whole set).

    Exchanged as JSON bytes through ``process_allgather`` (never pickled)."""
    if jax.process_count() == 1:
        return items
    from jax.experimental import multihost_utils

    rows = {
        k: {
            "polygons": [np.asarray(p).tolist() for p in v.polygons],
            "dont_care": v.dont_care.tolist(),
            "scores": None if v.scores is None else v.scores.tolist(),
        }
        for k, v in items.items()
    }
    payload = np.frombuffer(json.dumps(rows).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([payload.size]))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    merged: dict[int, TextInstances] = {}
    for blob, size in zip(np.asarray(multihost_utils.process_allgather(padded)), sizes, strict=True):
        for k, v in json.loads(blob[: int(size)].tobytes()).items():
            polys = [np.asarray(p, np.float64).reshape(-1, 2) for p in v["polygons"]]
            scores = None if v["scores"] is None else np.asarray(v["scores"])
            merged[int(k)] = TextInstances(polys, [""] * len(polys), np.asarray(v["dont_care"], bool), scores)
    return merged
