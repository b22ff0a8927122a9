"""TESTR as a one-model spotter: images in, words (polygon, score, text, confidence) out, the same ``Word`` records
as the two-stage detector + recogniser pipeline (``clip_text_spot.spotter``), so ``spot``, its JSON / PNG /
submission output and the spotting evaluation take either.

Per batch (``TESTRSpotter.spot``): **preprocess** (host) detectron2's test resize (shortest edge to ``test_size``,
longest at most ``max_size``), TESTR's normalisation, zero padding after normalisation to the batch's largest
image rounded up to ``pad_multiple`` (few distinct shapes, so few compilations; the padded area is masked as in
the official padded batches); **detector** (device) the whole model; **postprocess**
(host) queries with ``score >= threshold`` (no NMS), points scaled to the original image, characters decoded
(``postprocess_words``). A word's confidence is the mean, over its non-padding characters, of the top character
probability. Batches are pipelined as in the two-stage spotter (batch k+1 dispatched before batch k is decoded).

Models come from a TESTR training workdir (``from_workdir``: ``clip_text_spot.tasks.testr``) or from an official
checkpoint (TESTR or TESTR-CLIP) re-saved as safetensors plus a JSON of ``from_official_spotter`` keyword
arguments (``from_official``: heads, points, queries, vocabulary, TESTR-CLIP's ``fast``, ...; ``"charset"`` and the
``TESTRSpotOptions`` fields may sit in the same JSON).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip_text_spot.data.instance_crop import resize_shortest_edge
from clip_text_spot.data.pipeline import decode_image, normalize
from clip_text_spot.models.inference import inference_fn, overlapped
from clip_text_spot.models.testr.model import TESTRDetector
from clip_text_spot.models.testr.postprocess import SpottedWords, postprocess_words
from clip_text_spot.models.testr.targets import CTLABELS
from clip_text_spot.models.testr.tcm import TESTRTCM
from clip_text_spot.spotter import Word

TESTR_MEAN = (123.675, 116.28, 103.53)  # RGB, Base-TESTR.yaml
TESTR_STD = (58.395, 57.12, 57.375)
STAGES = ("preprocess", "detector", "postprocess")


@dataclasses.dataclass(frozen=True)
class TESTRSpotOptions:
    """Inference settings (official test sizes: Total-Text / pretrain 1600 / 1824, CTW1500 1000 / 1824, IC15
    1440 / 4000; thresholds 0.45, 0.7, 0.3)."""

    test_size: int = 1600
    max_size: int = 1824
    threshold: float = 0.45
    batch_size: int = 1
    pad_multiple: int = 128
    charset: str = CTLABELS


def _predict(
    model: TESTRDetector | TESTRTCM, pixels: jax.Array, sizes: jax.Array, text_cache: jax.Array | None = None
) -> tuple[jax.Array, ...]:
    out = model(pixels, sizes) if text_cache is None else model(pixels, sizes, text_cache)
    return out["pred_logits"], out["pred_ctrl_points"], out["pred_texts"]


def word_records(spotted: SpottedWords, pad_class: int) -> list[Word]:
    """``Word`` records of one image's kept queries (confidence: mean top probability of the read characters)."""
    words = []
    for poly, score, rec, probs, text in zip(
        spotted.polygons, spotted.scores, spotted.recs, spotted.rec_scores, spotted.strings, strict=True
    ):
        read = rec < pad_class
        top = probs.max(-1)
        conf = float(top[read].mean()) if read.any() else 0.0
        words.append(Word(np.asarray(poly, np.float64).reshape(-1, 2), float(score), text, conf))
    return words


class TESTRSpotter:
    """A TESTR or TESTR-TCM model (eval mode) with its inference options; ``spot(images)`` -> words per image.
    A TESTR-FastTCM model runs with its text embedding computed once here (``text_cache=False``: per batch)."""

    def __init__(
        self,
        model: TESTRDetector | TESTRTCM,
        options: TESTRSpotOptions = TESTRSpotOptions(),
        text_cache: bool = True,
    ):
        self.model, self.options = model, options
        voc = model.testr.config.voc_size
        if len(options.charset) + 1 != voc:
            raise ValueError(f"charset of {len(options.charset)} characters does not fit voc_size {voc} (= chars + 1)")
        self._forward = inference_fn(_predict, model)
        fast = isinstance(model, TESTRTCM) and model.config.prompting.fast
        self._text = inference_fn(TESTRTCM.precompute_text, model)() if fast and text_cache else None
        self.timings: dict[str, float] = collections.defaultdict(float)

    @classmethod
    def from_workdir(cls, path: str, *, best: bool = False, **overrides) -> TESTRSpotter:
        """A TESTR training workdir / checkpoint, with the inference options its config holds (``overrides``
        replace fields of ``TESTRSpotOptions``)."""
        from clip_text_spot.tasks.testr import spot_options
        from clip_text_spot.trainer import restore_model

        config, _, model, _ = restore_model(path, best=best)
        if config.task != "testr":
            raise ValueError(f"{path} holds a {config.task!r} model; a testr one is needed")
        return cls(model, dataclasses.replace(spot_options(config), **overrides))

    @classmethod
    def from_official(cls, checkpoint: str, kwargs_json: str | None = None, **overrides) -> TESTRSpotter:
        """An official TESTR or TESTR-CLIP checkpoint (safetensors re-save of the detectron2 ``.pth``) and a JSON
        of keyword arguments for ``from_official_spotter`` (plus optional ``charset`` / option fields)."""
        from clip_text_spot.models.testr.official import from_official_spotter

        kwargs = {}
        if kwargs_json:
            with open(kwargs_json) as f:
                kwargs = json.load(f)
        names = {f.name for f in dataclasses.fields(TESTRSpotOptions)}
        option_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        model = from_official_spotter(checkpoint, **kwargs)
        return cls(model, TESTRSpotOptions(**{**option_fields, **overrides}))

    @classmethod
    def load(cls, path: str, kwargs_json: str | None = None, *, best: bool = False, **overrides) -> TESTRSpotter:
        """A workdir / checkpoint folder (``from_workdir``) or a ``.safetensors`` file (``from_official``)."""
        if os.path.isfile(path) and path.endswith(".safetensors"):
            return cls.from_official(path, kwargs_json, **overrides)
        return cls.from_workdir(path, best=best, **overrides)

    def _timed(self, stage: str, fn: Callable, *args):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        self.timings[stage] += time.perf_counter() - start
        return out

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[jax.Array, jax.Array, np.ndarray, np.ndarray]:
        """(padded pixels and sizes on device, resized sizes, original sizes) of up to ``batch_size`` images."""
        opts = self.options

        def run():
            resized = [resize_shortest_edge(img, [], opts.test_size, opts.max_size)[0] for img in images]
            sizes = np.array([r.shape[:2] for r in resized], np.int32)
            m = opts.pad_multiple
            box = [int(math.ceil(s / m) * m) for s in sizes.max(0)]
            pixels = np.zeros((opts.batch_size, *box, 3), np.float32)
            for i, r in enumerate(resized):
                pixels[i, : r.shape[0], : r.shape[1]] = normalize(r, TESTR_MEAN, TESTR_STD)
            padded_sizes = np.concatenate([sizes, np.repeat(sizes[:1], opts.batch_size - len(sizes), 0)])
            orig = np.array([img.shape[:2] for img in images], np.int32)
            return jax.device_put(pixels), jax.device_put(padded_sizes), sizes, orig

        return self._timed("preprocess", run)

    def spot(self, images: Sequence[np.ndarray | bytes]) -> list[list[Word]]:
        """Words of each image (uint8 RGB arrays or encoded bytes), in batches of ``options.batch_size``."""
        bs, opts = self.options.batch_size, self.options
        chunks = ([decode_image(img) for img in images[s : s + bs]] for s in range(0, len(images), bs))
        prepared = (self.prepare(chunk) for chunk in chunks)

        def fetch(out):
            return self._timed("detector", lambda o: [np.asarray(x) for x in o], out)

        results: list[list[Word]] = []
        pad_class = len(opts.charset) + 1
        for (_, _, sizes, orig), (logits, points, texts) in overlapped(
            prepared, lambda p: self._forward(p[0], p[1], self._text), fetch
        ):
            n = len(sizes)

            def run(logits=logits, points=points, texts=texts, sizes=sizes, orig=orig, n=n):
                spotted = postprocess_words(
                    jnp.asarray(logits[:n]), points[:n], jnp.asarray(texts[:n]), sizes, orig, opts.threshold,
                    opts.charset,
                )  # fmt: skip
                return [word_records(s, pad_class) for s in spotted]

            results += self._timed("postprocess", run)
        return results


def add_spotter_arguments(parser) -> None:
    """The ``spot`` CLI's TESTR options (``--spotter`` replaces ``--detector`` + ``--recognizer``)."""
    parser.add_argument("--spotter", help="TESTR workdir or checkpoint, or an official TESTR .safetensors")
    parser.add_argument("--testr_kwargs", help="JSON of from_official_spotter arguments (TESTR / TESTR-CLIP)")
    parser.add_argument("--threshold", type=float, help="TESTR score threshold (default: the checkpoint's config)")
    parser.add_argument("--test_size", type=str, help="TESTR test resize SHORT,MAX (default: the config's)")


def spotter_from_args(args) -> TESTRSpotter:
    """The TESTR spotter the ``spot`` CLI's arguments name."""
    overrides: dict = {"batch_size": args.batch_size}
    if args.threshold is not None:
        overrides["threshold"] = args.threshold
    if args.test_size:
        short, longest = (int(x) for x in args.test_size.split(","))
        overrides.update(test_size=short, max_size=longest)
    return TESTRSpotter.load(args.spotter, args.testr_kwargs, best=args.best, **overrides)
