"""TESTR end-to-end text spotting for the trainer: model, data with TESTR's augmentation and targets, the set
criterion, and evaluation that spots the held-out split and scores detection and end-to-end hmean.

Model (``config.model``): a backbone — detectron2's ResNet (``backbone="resnet50"``, FrozenBN, stem + res2 frozen;
TESTR's own) or a CLIP ``ModifiedResNet`` preset (``backbone="clip:<preset>"``, e.g. ``clip:tiny_rn`` for the demo,
``clip:rn50`` for the paper's CLIP backbone) — and ``TESTR`` on its last three levels. ``model.init``: an official
TESTR detector checkpoint (safetensors re-save; every tensor whose name and shape match is copied, others keep
their fresh values, as detectron2's checkpointer skips the 25 -> 100 character ``text_embed`` of the CTW1500
fine-tune); ``model.backbone_init``: detectron2 ResNet weights (ImageNet ``R-50``, safetensors) for pre-training.

Data (``config.data``): synthetic scenes with their words (``clip_text_spot.data.synthetic``) or a prepared dataset
(``python -m clip_text_spot.data.prepare``; several roots joined by commas are concatenated, for the pre-training
mixture). Training augmentation (spotting.md §3.5): with probability ``crop_prob`` a crop keeping whole instances
(``data.instance_crop``, relative size ``min_crop_ratio``..1), then the shortest edge resized to a random choice of
``short_sizes`` with the long side at most ``max_size``; no flip, no colour changes. Images are normalised and
zero-padded (after normalisation, as detectron2's ``ImageList``) into a fixed ``box`` (H, W) so every batch has one
shape; ``image_size`` carries each image's unpadded size (TESTR's padding masks). Targets
(``models.testr.targets``): control points, boxes, character indices (``model.charset``), at most
``max_instances`` per image; don't-care words are dropped.

Loss: ``criterion_loss`` (matching through the scipy host callback inside the jitted step; with a mesh of several
devices each device matches its own images), padded encoder tokens kept out of the encoder matching and focal loss
(``loss.mask_padded_tokens``). Evaluation: ``TESTRSpotter`` on the held-out split at ``config.spot``'s test size and
threshold; ``metrics.jsonl`` gets ``hmean`` / ``precision`` / ``recall`` (detection of the spotted polygons) and
``e2e_hmean`` / ``e2e_precision`` / ``e2e_recall`` (``tasks.spot.spotting_metrics``), pictures in ``vis/step_N``.

TESTR-TCM / TESTR-FastTCM (``model.variant="tcm"|"fasttcm"``, ``models.testr.tcm``; ``configs/testr.py``): the
same backbone choice — ``resnet50`` is the released "r50" form (score map on res4, the text tower of
``model.tcm.text_clip``), ``clip:<preset>`` the paper's "CR50" form (dense attention pool, score map on C5) —
with the prompting modules of ``model.tcm``; ``model.tcm.clip_checkpoint`` loads OpenAI CLIP weights (text tower;
backbone too for "cr50") after ``model.init``. Training adds each image's shrunk-kernel target (``pixel_target``,
drawn from the augmented polygons at the network's input size, zero-padded into the box) and the pixel loss
(``tcm_criterion_loss``, logged as ``loss_pix_cls``). Evaluation and ``spot`` run it through the same
``TESTRSpotter`` (FastTCM: text embedding computed once per model). Few-shot ``data.fraction``: the train split is
cut by ``tasks.fasttcm``'s helpers (``WORKDIR/train_subset.txt`` written at the first evaluation).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from clip_text_spot import vis
from clip_text_spot.data.instance_crop import crop_instances, instance_crop_window, polygon_boxes, resize_shortest_edge
from clip_text_spot.data.pipeline import as_det_sample, decode_image, make_train_iter, normalize
from clip_text_spot.models.clip import CLIPConfig, preset
from clip_text_spot.models.fasttcm.config import DecoderConfig, FastTCMConfig
from clip_text_spot.models.testr.backbone import ResNet, ResNetConfig
from clip_text_spot.models.testr.losses import LossConfig, criterion_loss
from clip_text_spot.models.testr.model import TESTR, TESTRConfig, TESTRDetector
from clip_text_spot.models.testr.spotter import TESTR_MEAN, TESTR_STD, TESTRSpotOptions, TESTRSpotter
from clip_text_spot.models.testr.targets import SpotTargets, batch_targets, image_targets
from clip_text_spot.models.testr.tcm import (
    TESTRTCM,
    TESTRTCMConfig,
    batch_pixel_targets,
    build_testr_tcm,
    pixel_target,
    tcm_criterion_loss,
)
from clip_text_spot.spotter import draw_words
from clip_text_spot.tasks.fasttcm import few_shot, write_train_subset
from clip_text_spot.tasks.spot import SpotEvalTask, spotting_metrics

TARGET_KEYS = SpotTargets._fields


def clip_backbone(model: ml_collections.ConfigDict) -> CLIPConfig | None:
    """The CLIP config of a ``clip:<preset>`` backbone, None for ``resnet50``."""
    name = model.backbone
    if name.startswith("clip:"):
        return preset(name[len("clip:") :])
    if name == "resnet50":
        return None
    raise ValueError(f"--config.model.backbone must be 'resnet50' or 'clip:<preset>', got {name!r}")


def backbone_channels(model: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Channels of the backbone's last three levels (res3..res5 / C3..C5)."""
    clip = clip_backbone(model)
    if clip is None:
        return ResNetConfig().out[1:]
    return tuple(clip.vision.width * 8 * 2**i for i in range(3))


def build_backbone(model: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """The backbone (``features(pixels)``) of ``config.model``."""
    clip = clip_backbone(model)
    if clip is None:
        return ResNet(ResNetConfig(freeze_at=int(model.freeze_at)), rngs=rngs, dtype=model.dtype)
    from clip_text_spot.models.clip.resnet import ModifiedResNet

    return ModifiedResNet(clip.vision, clip.embed_dim, rngs=rngs, dtype=model.dtype)


def tcm_config(model: ml_collections.ConfigDict) -> TESTRTCMConfig | None:
    """``TESTRTCMConfig`` of a ``model.variant`` tcm / fasttcm config, None for plain TESTR."""
    variant = model.get("variant", "testr")
    if variant == "testr":
        return None
    if variant not in ("tcm", "fasttcm"):
        raise ValueError(f"--config.model.variant must be 'testr', 'tcm' or 'fasttcm', got {variant!r}")
    t = model.tcm
    clip = clip_backbone(model)
    decoder = DecoderConfig(width=t.decoder_width, heads=t.decoder_heads, layers=t.decoder_layers, dropout=t.dropout)
    prompting = FastTCMConfig(
        clip=clip or preset(t.text_clip), prompts=(t.prompt,), n_ctx=t.n_ctx, fast=variant == "fasttcm",
        vpg=decoder, context_decoder=decoder, tau=t.tau, dtype=model.dtype,
    )  # fmt: skip
    return TESTRTCMConfig(
        testr=testr_config(model, backbone_channels(model)), prompting=prompting,
        backbone="r50" if clip is None else "cr50", resnet=ResNetConfig(freeze_at=int(model.freeze_at)),
        pixel_target=t.pixel_target, shrink_ratio=t.shrink_ratio, pix_loss_weight=t.pix_loss_weight,
    )  # fmt: skip


def testr_config(model: ml_collections.ConfigDict, channels: tuple[int, ...]) -> TESTRConfig:
    """``TESTRConfig`` from ``config.model`` (voc_size = len(charset) + 1)."""
    return TESTRConfig(
        dim=model.dim, heads=model.heads, enc_layers=model.enc_layers, dec_layers=model.dec_layers, ffn=model.ffn,
        enc_points=model.enc_points, dec_points=model.dec_points, num_queries=model.num_queries,
        ctrl_points=model.ctrl_points, chars=model.chars, voc_size=len(model.charset) + 1,
        backbone_channels=tuple(channels), dropout=model.dropout, isolate_padding=model.isolate_padding,
        dtype=model.dtype,
    )  # fmt: skip


def spot_options(config: ml_collections.ConfigDict) -> TESTRSpotOptions:
    """Inference options from ``config.spot`` and the model's charset."""
    s = config.spot
    return TESTRSpotOptions(
        test_size=int(s.test_size), max_size=int(s.max_size), threshold=float(s.threshold),
        batch_size=int(s.batch_size), pad_multiple=int(s.pad_multiple), charset=config.model.charset,
    )  # fmt: skip


class ConcatSource:
    """Several random-access sources one after the other."""

    def __init__(self, sources: Sequence[Sequence]):
        self.sources = list(sources)
        self.starts = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.sources[k][i - int(self.starts[k])]


def spotting_sources(data: ml_collections.ConfigDict, seed: int) -> tuple[Any, Any]:
    """(train, eval) sources: synthetic scenes, or prepared TFDS splits (``data.root``: comma-separated roots are
    concatenated for training; the first one's eval split is evaluated); ``data.fraction`` < 1: the few-shot subset
    of the train source (``tasks.fasttcm.few_shot``)."""
    from clip_text_spot.tasks.fasttcm import detection_sources

    if data.name == "synthetic":
        return detection_sources(data, seed)
    from clip_text_spot.data.prepare import open_split

    roots = [r for r in str(data.root).split(",") if r]
    train = ConcatSource([open_split(r, data.train_split) for r in roots])
    return few_shot(train, data), open_split(roots[0], data.eval_split)


@dataclasses.dataclass(frozen=True)
class SpotTrainTransform:
    """TESTR's training augmentation and targets of one sample (a grain random map; module docstring)."""

    short_sizes: tuple[int, ...]
    max_size: int
    box: tuple[int, int]
    crop_prob: float
    min_crop_ratio: float
    charset: str
    ctrl_points: int
    chars: int
    max_instances: int
    layout: str = "paired"
    pixel_target: str = ""  # TESTR-TCM: "binary" / "instance" kernel target (``tcm.pixel_target``); "" none
    shrink_ratio: float = 0.9

    def __call__(self, item: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        sample = as_det_sample(item)
        image = decode_image(sample.image)
        polys = [np.asarray(p, np.float32).reshape(-1, 2) for p in sample.polygons]
        texts, ignore = list(sample.texts), list(sample.ignore)
        if polys and rng.random() < self.crop_prob:
            window = instance_crop_window(rng, image.shape[:2], polygon_boxes(polys), self.min_crop_ratio)
            image, polys, kept = crop_instances(image, polys, window)
            texts, ignore = [texts[i] for i in kept], [ignore[i] for i in kept]
        short = int(self.short_sizes[int(rng.integers(len(self.short_sizes)))])
        image, polys, _ = resize_shortest_edge(image, polys, short, self.max_size, self.box)
        h, w = image.shape[:2]
        pixels = np.zeros((*self.box, 3), np.float32)
        pixels[:h, :w] = normalize(image, TESTR_MEAN, TESTR_STD)
        per_image = image_targets(polys, texts, ignore, (h, w), self.charset, self.ctrl_points, self.chars, self.layout)
        targets = batch_targets([per_image], self.max_instances, pad_text=len(self.charset) + 1)
        out = {
            "image": pixels,
            "image_size": np.array([h, w], np.int32),
            **{k: v[0] for k, v in targets._asdict().items()},
        }
        if self.pixel_target:
            kernel = pixel_target(polys, ignore, (h, w), self.shrink_ratio, self.pixel_target == "instance")
            out["pixel_target"] = batch_pixel_targets([kernel], self.box)[0]
        return out


def _copy_matching(model: nnx.Module, source: nnx.Module, what: str) -> None:
    """Copy every variable of ``source`` whose path and shape ``model`` shares; log what is left out."""
    src = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(source))}
    copied, skipped = 0, []
    for path, var in nnx.to_flat_state(nnx.state(model)):
        value = src.get(path)
        if value is not None and value.shape == var.get_value().shape:
            var.set_value(jnp.asarray(value, var.get_value().dtype))
            copied += 1
        elif value is not None:
            skipped.append("/".join(map(str, path)))
    logging.info("%s: %d tensors copied; shape mismatch (fresh values kept): %s", what, copied, skipped or "none")


class TESTRTask:
    """Task protocol implementation (``clip_text_spot.trainer.Task``) for TESTR."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        data, m = config.data, config.model
        if data.name != "synthetic" and not data.root:
            raise ValueError(
                f"dataset {data.name!r} needs --config.data.root=DIR (written by `python -m "
                "clip_text_spot.data.prepare`; comma-separated for a mixture); or run --config=configs/testr.py:demo"
            )
        self.tcm = tcm_config(m)
        if m.require_init and not (m.init or m.backbone_init):
            raise ValueError(
                "this recipe starts from pretrained weights: set --config.model.init=TESTR.safetensors (an official "
                "TESTR checkpoint re-saved as safetensors; README 'TESTR') or --config.model.backbone_init=R-50."
                "safetensors, or --config.model.require_init=False to train from scratch"
            )
        if m.require_init and self.tcm is not None and not m.tcm.clip_checkpoint:
            raise ValueError(
                "TESTR-TCM starts from CLIP RN50: set --config.model.tcm.clip_checkpoint=RN50.safetensors (README "
                "'CLIP weights'), or --config.model.require_init=False"
            )
        self.loss_cfg = LossConfig(**dict(config.loss.weights))
        self._sources = None
        self._eval_samples = None

    @property
    def sources(self) -> tuple[Any, Any]:
        if self._sources is None:
            self._sources = spotting_sources(self.config.data, self.config.seed)
        return self._sources

    def write_subset(self, workdir: str) -> None:
        """``WORKDIR/train_subset.txt``: the few-shot train subset (nothing without ``data.fraction``)."""
        write_train_subset(workdir, self.config.data, self.sources[0])

    def build_model(self, rngs: nnx.Rngs) -> TESTRDetector | TESTRTCM:
        m = self.config.model
        if self.tcm is not None:
            return build_testr_tcm(self.tcm, rngs=rngs)
        return TESTRDetector(build_backbone(m, rngs), TESTR(testr_config(m, backbone_channels(m)), rngs=rngs))

    def load_pretrained(self, model: TESTRDetector | TESTRTCM) -> None:
        from clip_text_spot.models.testr.official import (
            from_official_testr_detector,
            read_testr_state,
            resnet_from_official,
        )

        m = self.config.model
        if m.backbone_init:
            sd = read_testr_state(m.backbone_init)
            _copy_matching(model.backbone, resnet_from_official(sd, freeze_at=int(m.freeze_at)), m.backbone_init)
        if m.init:
            cfg = model.testr.config
            official = from_official_testr_detector(
                m.init, freeze_at=int(m.freeze_at), heads=cfg.heads, enc_points=cfg.enc_points,
                dec_points=cfg.dec_points, num_queries=cfg.num_queries, use_polygon=cfg.use_polygon,
            )  # fmt: skip
            _copy_matching(model, official, m.init)
        if self.tcm is not None and m.tcm.clip_checkpoint:
            from clip_text_spot.models.clip import load_pretrained

            logging.info("TESTR-TCM: CLIP weights from %s", m.tcm.clip_checkpoint)
            model.load_clip(load_pretrained(m.tcm.clip_checkpoint))

    def train_batches(self, *, seed: int, process_index: int, process_count: int):
        d, m = self.config.data, self.config.model
        pix = {} if self.tcm is None else dict(pixel_target=self.tcm.pixel_target, shrink_ratio=self.tcm.shrink_ratio)
        transform = SpotTrainTransform(
            short_sizes=tuple(int(s) for s in d.short_sizes), max_size=int(d.max_size),
            box=tuple(int(s) for s in d.box), crop_prob=float(d.crop_prob), min_crop_ratio=float(d.min_crop_ratio),
            charset=m.charset, ctrl_points=int(m.ctrl_points), chars=int(m.chars),
            max_instances=int(d.max_instances), layout=d.layout,
            **pix,
        )  # fmt: skip
        return make_train_iter(
            self.sources[0], transform, batch_size=self.config.batch_size // process_count, seed=seed,
            process_index=process_index, process_count=process_count, workers=int(d.workers), read_threads=1,
            prefetch=16,
        )  # fmt: skip

    def loss(self, model: TESTRDetector, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        capture: dict = {}
        out = model(batch["image"], batch["image_size"], capture=capture, rngs=nnx.Rngs(dropout=rng))
        token_valid = ~capture["mask_flatten"] if self.config.loss.mask_padded_tokens else None
        targets = SpotTargets(*(batch[k] for k in TARGET_KEYS))
        mesh = jax.sharding.get_abstract_mesh()
        mesh = None if mesh.empty or mesh.size == 1 else mesh
        if self.tcm is None:
            total, terms = criterion_loss(out, targets, self.loss_cfg, token_valid, mesh)
        else:
            total, terms = tcm_criterion_loss(
                out, targets, batch["pixel_target"], batch["image_size"], self.loss_cfg, self.tcm, token_valid, mesh
            )
        keep = ("loss_ce", "loss_ctrl_points", "loss_texts", "loss_ce_enc", "loss_bbox_enc", "loss_giou_enc")
        keep += ("loss_pix_cls",) if self.tcm is not None else ()
        return total, {k: terms[k] for k in (*keep, "num_inst")}

    # -- evaluation --------------------------------------------------------------------------------------------------

    def eval_samples(self) -> list:
        """The held-out split, decoded once."""
        if self._eval_samples is None:
            source = self.sources[1]
            self._eval_samples = [as_det_sample(source[i]) for i in range(len(source))]
        return self._eval_samples

    def evaluate(self, model: TESTRDetector, step: int, workdir: str) -> dict[str, float]:
        cfg = self.config
        self.write_subset(workdir)
        samples = self.eval_samples()
        words = TESTRSpotter(model, spot_options(cfg)).spot([s.image for s in samples])
        metrics = spotting_metrics(
            samples, words, word_spotting=bool(cfg.get("word_spotting", False)),
            int_coords=cfg.data.get("protocol", "") == "icdar2015" and cfg.data.name != "synthetic",
        )  # fmt: skip
        if jax.process_index() == 0:
            directory = os.path.join(workdir, "vis", f"step_{step}")
            for i, (sample, ws) in enumerate(zip(samples[: int(cfg.get("vis_images", 4))], words, strict=False)):
                vis.save_png(
                    os.path.join(directory, f"{i:06d}.png"), draw_words(decode_image(sample.image), ws, sample)
                )
        return metrics


class TESTRSpotEvalTask(SpotEvalTask):
    """Evaluation-only stage (``configs/testr.py:eval``): a trained or official TESTR spots the test split of
    ``config.data`` and the RRC end-to-end script scores it, with the lexicon of ``config.lexicon``."""

    models = ("spotter",)
    options_from = staticmethod(spot_options)

    def build_spotter(self) -> TESTRSpotter:
        cfg = self.config
        options = dataclasses.asdict(self.options)
        if not str(cfg.spotter).endswith(".safetensors"):
            options.pop("charset")  # a workdir's model reads its own charset
        return TESTRSpotter.load(cfg.spotter, cfg.get("official_kwargs") or None, best=bool(cfg.best), **options)

    def _samples(self) -> Sequence:
        return spotting_sources(self.config.data, self.config.seed)[1]
