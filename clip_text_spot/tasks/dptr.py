"""DPTR's two trainer tasks: decoder pre-training with text only (``dptr_pretrain``) and fine-tuning on word crops
(``dptr_finetune``). See ``configs/dptr.py`` for every field and ``dptr.md`` for the method.

``dptr_pretrain``: labels from a text source (``clip_text_spot.dptr.text_sources``) -> prompt ``a photo of a
'{label}'`` -> frozen CLIP text tower -> [B, 1 + 77, 512] pseudo visual embeddings (or precomputed ones from a text
cache) + ORP noise -> decoder, PLM loss. The frozen CLIP weights are model parameters in a frozen optimiser group
(the config's ``optim.groups``) and its output is under ``stop_gradient`` (no backward pass through CLIP).
Evaluation: text reconstruction of held-out labels without noise (``word_accuracy``, ``ned``).

``dptr_finetune``: word crops -> ViT -> FMU -> decoder, PLM loss; the decoder starts from a pre-training checkpoint
(``--config.init.decoder``, ``"stage:pretrain"`` in multi-stage runs; an official ``.safetensors`` too) or from
scratch, encoder and FMU fresh; or the whole model starts from a fine-tuned one (``--config.init.model``: a
``dptr_finetune`` workdir or an official PARSeq / OpenOCR DPTR ``.safetensors``).
Evaluation on held-out synthetic crops, LMDB benchmarks and crop folders: ``word_accuracy``/``ned`` over all
sets (sample-weighted) plus ``<set>/word_accuracy`` and ``<set>/ned`` per set.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image

from clip_text_spot import checkpoint
from clip_text_spot.data.augment import PARSEQ_AUG
from clip_text_spot.data.pipeline import make_rec_train_iter
from clip_text_spot.data.readers import find_lmdb_dirs, read_crop_folder, read_lmdb
from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.data.synthetic import REC_STYLE, SyntheticRecSource, TextStyle
from clip_text_spot.data.synthetic.backgrounds import make_background
from clip_text_spot.data.types import RecSample
from clip_text_spot.dptr.data import BatchExtras, BatchRandomMap, PretrainTransform, make_pretrain_iter
from clip_text_spot.dptr.load import is_official, load_official
from clip_text_spot.dptr.orp import OrpSampler, clip_pixels, encode_in_batches
from clip_text_spot.dptr.predict import crop_pixels, predict_texts, score
from clip_text_spot.dptr.text_cache import TextMemoryCache, open_or_build_text_cache
from clip_text_spot.dptr.text_sources import open_text_source
from clip_text_spot.models.clip import CLIP, load_pretrained, preset
from clip_text_spot.models.clip.convert import assign_flat, model_flat_state
from clip_text_spot.models.clip.tokenizer import CLIPTokenizer
from clip_text_spot.models.dptr.config import DecoderConfig, EncoderConfig, from_mapping
from clip_text_spot.models.dptr.pretrain import ClipTextMemory, DptrPretrainModel, check_clip_widths, prompt_ids
from clip_text_spot.models.dptr.recognizer import DptrRecognizer
from clip_text_spot.models.inference import inference_fn


def _decode_memory(model: DptrPretrainModel, memory: jax.Array) -> jax.Array:
    """Decoder logits of pseudo visual embeddings ``memory`` (pre-training evaluation)."""
    return model.decoder.predict(memory)


def _teacher_forced_accuracy(logits: jax.Array, label: jax.Array, pad: int) -> jax.Array:
    """Fraction of sequences whose canonical-order argmax matches every non-PAD target."""
    tgt_out = label[:, 1:]
    ok = (jnp.argmax(logits, axis=-1) == tgt_out) | (tgt_out == pad)
    return jnp.mean(jnp.all(ok, axis=-1))


class _DptrTask:
    """Charset and decoder shared by both stages."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.decoder_cfg = from_mapping(DecoderConfig, config.model.decoder.to_dict(), "model.decoder")
        self.charset = Charset(
            config.model.charset, max_len=self.decoder_cfg.max_len, unicode_to_ascii=config.model.unicode_to_ascii
        )

    @property
    def compute_dtype(self) -> jnp.dtype:
        """``config.model.dtype`` (float32 for configs saved before it existed)."""
        return jnp.dtype(self.config.model.get("dtype", "float32"))

    def loss(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        rngs = nnx.Rngs(dropout=rng)
        loss, logits = self._loss(model, batch, rngs)
        return loss, {"tf_word_accuracy": _teacher_forced_accuracy(logits, batch["label"], self.charset.PAD)}


# ------------------------------------------------------------------------------------------------ pre-training


class DptrPretrainTask(_DptrTask):
    """Text-only decoder pre-training (Task protocol, see ``clip_text_spot.trainer.Task``)."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        clip_cfg = config.clip
        if clip_cfg.require and not clip_cfg.checkpoint:
            raise ValueError(
                "--config.clip.checkpoint is required: DPTR pre-trains on the text embeddings of OpenAI CLIP ViT-B/16 "
                "(a .safetensors / Hugging Face folder / `python -m clip_text_spot.convert` output). To try the "
                "pipeline without downloads run --config=configs/dptr.py:demo (a small random-init CLIP)."
            )
        self._loaded_clip: CLIP | None = None
        if clip_cfg.checkpoint:
            if not Path(clip_cfg.checkpoint).exists():
                raise FileNotFoundError(f"--config.clip.checkpoint={clip_cfg.checkpoint} does not exist")
            self._loaded_clip = load_pretrained(clip_cfg.checkpoint, dtype=clip_cfg.dtype)
            self.clip_config = self._loaded_clip.config
        else:
            self.clip_config = preset(clip_cfg.preset, **clip_cfg.overrides.to_dict()).replace(dtype=clip_cfg.dtype)
        check_clip_widths(self.clip_config, self.decoder_cfg.dim)
        self.memory_len = self.clip_config.text.context_length + 1
        self.cache: TextMemoryCache | None = None
        if config.text.cache:
            self.cache = self._open_cache()
        self.orp = self._orp_sampler()

    # -- CLIP on the host (text cache, ORP bank of the demo, evaluation in cache mode) ---------------------------

    @functools.cached_property
    def host_clip(self) -> CLIP:
        """The run's CLIP: the loaded checkpoint, or the random init the model also gets (``clip.seed``)."""
        if self._loaded_clip is not None:
            return self._loaded_clip
        return CLIP(self.clip_config, rngs=nnx.Rngs(self.config.clip.seed))

    def _clip_description(self) -> dict[str, Any]:
        c = self.config.clip
        return {"checkpoint": c.checkpoint} if c.checkpoint else {"config": self.clip_config.to_dict(), "seed": c.seed}

    @functools.cached_property
    def tokenizer(self) -> CLIPTokenizer:
        return CLIPTokenizer(context_length=self.clip_config.text.context_length)

    @functools.cached_property
    def _host_text_encoder(self):
        return inference_fn(ClipTextMemory.__call__, ClipTextMemory(self.host_clip))

    def _encode_labels(self, labels: list[str]) -> np.ndarray:
        """[n, memory_len, width] CLIP text memories of ``labels`` with the host CLIP (fixed-size batches)."""
        out = np.zeros((len(labels), self.memory_len, self.clip_config.embed_dim), np.float32)
        ids = prompt_ids(self.tokenizer, labels)
        encode_in_batches(iter(ids), len(labels), self._host_text_encoder, out, int(self.config.eval_batch_size))
        return out

    def _open_cache(self) -> TextMemoryCache:
        text = self.config.text
        labels: list[str] = []
        for spec, split in ((text.train, "train"), (text.eval, "eval")):
            source = self._text_source(spec, split)
            if len(source) > text.cache_max_labels:
                raise ValueError(
                    f"--config.text.cache: the text source {spec!r} has {len(source)} labels, more than "
                    f"--config.text.cache_max_labels={text.cache_max_labels}; use a smaller corpus "
                    "(--config.text.num_samples for wordfreq) or --config.text.cache='' (CLIP runs in the step)"
                )
            n = len(source) if split == "train" else min(len(source), text.eval_samples)
            labels += [lab for lab in (self.charset.filter_label(source[i]) for i in range(n)) if lab is not None]
        return open_or_build_text_cache(
            text.cache,
            labels,
            self._encode_labels,
            shape=(self.memory_len, self.clip_config.embed_dim),
            meta={"clip": self._clip_description(), "prompt": "a photo of a '{}'"},
            batch_size=int(self.config.eval_batch_size),
        )

    def _text_source(self, spec: str, split: str) -> Sequence[str]:
        text = self.config.text
        return open_text_source(
            spec,
            split=split,
            seed=self.config.seed,
            num_samples=text.num_samples,
            vocab_size=text.vocab_size,
            charset=self.charset.chars,
            max_chars=self.charset.max_len,
            kind_weights=tuple(text.kind_weights),
        )

    def _orp_sampler(self) -> OrpSampler | None:
        orp = self.config.orp
        if orp.lam == 0:
            return None
        if orp.bank:
            bank: str | np.ndarray = orp.bank
        elif orp.synthetic_images:
            bank = self._synthetic_bank(int(orp.synthetic_images))
        else:
            raise ValueError(
                f"--config.orp.lam={orp.lam} needs an ORP bank: --config.orp.bank=FILE.npy (build it with python -m "
                "clip_text_spot.dptr.build_orp_bank --clip=... --images=DIR --output=FILE.npy), or "
                "--config.orp.synthetic_images=N (photos from the synthetic backgrounds), or --config.orp.lam=0"
            )
        sampler = OrpSampler(bank, lam=orp.lam, tokens=self.memory_len, shared_tokens=orp.shared_tokens)
        if sampler.bank.shape[2] != self.decoder_cfg.dim:
            raise ValueError(
                f"--config.orp.bank: token width {sampler.bank.shape[2]} differs from the decoder dim "
                f"{self.decoder_cfg.dim}"
            )
        return sampler

    def _synthetic_bank(self, count: int) -> np.ndarray:
        """A small in-memory ORP bank: crops of the natural photos behind the synthetic text, through the run's
        CLIP image tower (the demo's stand-in for COCO images)."""
        clip = self.host_clip
        if clip.is_resnet:
            raise ValueError("--config.orp.synthetic_images needs a CLIP with a ViT image tower")
        size = clip.config.vision.image_size
        tokens = (size // clip.config.vision.patch_size) ** 2 + 1
        rng = np.random.default_rng(self.config.seed)
        images = (
            clip_pixels(Image.fromarray(make_background(rng, 256, 320, (0.1, 0.0, 0.2, 0.7))), size)
            for _ in range(count)
        )
        out = np.zeros((count, tokens, clip.config.embed_dim), np.float16)
        encode_in_batches(images, count, inference_fn(CLIP.encode_image_tokens, clip), out, min(count, 32))
        return out

    # -- Task protocol ---------------------------------------------------------------------------------------------

    def build_model(self, rngs: nnx.Rngs) -> DptrPretrainModel:
        clip = None if self.cache is not None else CLIP(self.clip_config, rngs=nnx.Rngs(self.config.clip.seed))
        return DptrPretrainModel(clip, self.decoder_cfg, self.charset, rngs=rngs, dtype=self.compute_dtype)

    def load_pretrained(self, model: DptrPretrainModel) -> None:
        if self._loaded_clip is None or model.clip_text is None:
            return
        flat = {
            k: v
            for k, v in model_flat_state(self._loaded_clip).items()
            if k.startswith(("text_model/", "text_projection/"))
        }
        assign_flat(model.clip_text, flat, f"--config.clip.checkpoint={self.config.clip.checkpoint}")

    def train_batches(self, *, seed: int, process_index: int, process_count: int) -> Iterator[dict[str, Any]]:
        labels = self._text_source(self.config.text.train, "train")
        transform = PretrainTransform(self.charset, self.clip_config.text.context_length, self.cache)
        return make_pretrain_iter(
            labels,
            transform,
            BatchExtras(self.decoder_cfg, self.orp, process_index, process_count),
            batch_size=self.config.batch_size // process_count,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            workers=self.config.data.workers,
        )

    def _loss(self, model: DptrPretrainModel, batch: dict[str, jax.Array], rngs: nnx.Rngs):
        return model.decoder.loss(model.memory(batch), batch, rngs)

    @functools.cached_property
    def _eval_labels(self) -> list[str]:
        source = self._text_source(self.config.text.eval, "eval")
        n = min(len(source), int(self.config.text.eval_samples))
        labels = [lab for lab in (self.charset.filter_label(source[i]) for i in range(n)) if lab is not None]
        if not labels:
            raise ValueError(f"--config.text.eval={self.config.text.eval!r} gives no label the charset accepts")
        return labels

    def evaluate(self, model: DptrPretrainModel, step: int, workdir: str) -> dict[str, float]:
        """Text reconstruction of the held-out labels from their (noise-free) pseudo visual embeddings."""
        del step, workdir
        labels = self._eval_labels
        if self.cache is not None:
            memory = np.stack([self.cache[label] for label in labels]).astype(np.float32)
        else:
            ids = prompt_ids(self.tokenizer, labels)
            memory = np.zeros((len(labels), self.memory_len, self.decoder_cfg.dim), np.float32)
            encode = inference_fn(ClipTextMemory.__call__, model.clip_text)
            encode_in_batches(iter(ids), len(labels), encode, memory, int(self.config.eval_batch_size))
        decode = inference_fn(_decode_memory, model)
        texts = predict_texts(decode, memory, self.charset, int(self.config.eval_batch_size))
        names = [str(i) for i in range(len(labels))]
        return score(dict(zip(names, labels, strict=True)), dict(zip(names, texts, strict=True)))


# -------------------------------------------------------------------------------------------------- fine-tuning


def _init_weights(path: str, stage: str, flag: str) -> tuple[dict[str, np.ndarray], str]:
    """(flat ``/``-named parameters of the whole source model, its description) of an official ``.safetensors``
    checkpoint (``clip_text_spot.dptr.load``) or a trainer workdir/checkpoint (a multi-stage workdir's ``stage``)."""
    if is_official(path):
        return model_flat_state(load_official(path)), f"{flag}={path}"
    step_dir = checkpoint.resolve_step_dir(path, prefer="latest", stage=stage)
    return checkpoint.flat_names(checkpoint.read_step_arrays(step_dir, ("params",))), f"{flag}={path} ({step_dir})"


def _lmdb_sets(root: str) -> list[tuple[str, Sequence[RecSample]]]:
    base = Path(root)
    return [(d.relative_to(base).as_posix() if d != base else base.name, read_lmdb(d)) for d in find_lmdb_dirs(base)]


class DptrFinetuneTask(_DptrTask):
    """ViT + FMU + (pre-trained) decoder on word crops (Task protocol, see ``clip_text_spot.trainer.Task``)."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.encoder_cfg = from_mapping(EncoderConfig, config.model.encoder.to_dict(), "model.encoder")

    def build_model(self, rngs: nnx.Rngs) -> DptrRecognizer:
        return DptrRecognizer(self.encoder_cfg, self.decoder_cfg, self.charset, rngs=rngs, dtype=self.compute_dtype)

    def load_pretrained(self, model: DptrRecognizer) -> None:
        """``--config.init.model``: every weight from a fine-tuned recogniser (a ``dptr_finetune`` workdir or an
        official PARSeq / OpenOCR DPTR ``FILE.safetensors``; its architecture must be the config's);
        ``--config.init.decoder``: the decoder only, from a pre-training workdir/checkpoint (its latest step) or an
        official checkpoint; what is not copied stays fresh."""
        init = self.config.init
        if init.get("model"):
            flat, source = _init_weights(init.model, "finetune", "--config.init.model")
            assign_flat(model, flat, source)
            logging.info("model initialised from %s", source)
        if init.decoder:
            flat, source = _init_weights(init.decoder, "pretrain", "--config.init.decoder")
            assign_flat(model.decoder, {k[len("decoder/") :]: v for k, v in flat.items() if k.startswith("decoder/")},
                        source)  # fmt: skip
            logging.info("decoder initialised from %s", source)

    def _style(self) -> TextStyle:
        """REC_STYLE with ``--config.data.style`` overrides (lists become tuples)."""
        overrides = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in self.config.data.style.items()}
        try:
            return dataclasses.replace(REC_STYLE, **overrides)
        except TypeError as err:
            raise ValueError(f"--config.data.style: {err}") from None

    def _synthetic(self, split: str, size: int, seed: int) -> SyntheticRecSource:
        """Synthetic crops of ``--config.data.style`` (``data.margin``, ``data.box_jitter``: see the source)."""
        data = self.config.data
        return SyntheticRecSource(
            size, split=split, seed=seed, style=self._style(), margin=tuple(data.get("margin", (0.05, 0.25))),
            box_jitter=float(data.get("box_jitter", 0.0)),
        )  # fmt: skip

    def train_batches(self, *, seed: int, process_index: int, process_count: int) -> Iterator[dict[str, Any]]:
        data = self.config.data
        if data.train == "synthetic":
            source: Sequence = self._synthetic("train", 10_000_000, seed)
        elif data.train.startswith("lmdb:"):
            source = read_lmdb(data.train[len("lmdb:") :])
        else:
            raise ValueError(f"--config.data.train={data.train!r}: expected 'synthetic' or 'lmdb:ROOT'")
        batches = make_rec_train_iter(
            source,
            batch_size=self.config.batch_size // process_count,
            seed=seed,
            charset=self.charset,
            image_size=self.encoder_cfg.image_size,
            aug=PARSEQ_AUG if data.augment else None,
            process_index=process_index,
            process_count=process_count,
            workers=data.workers,
        )
        return BatchRandomMap(batches, BatchExtras(self.decoder_cfg), seed)

    def _loss(self, model: DptrRecognizer, batch: dict[str, jax.Array], rngs: nnx.Rngs):
        return model.loss(batch, rngs)

    def eval_sets(self) -> list[tuple[str, Sequence[RecSample]]]:
        """(name, samples) of every evaluation set named by ``--config.data.eval``."""
        sets: list[tuple[str, Sequence[RecSample]]] = []
        for spec in self.config.data.eval:
            kind, _, arg = spec.partition(":")
            if kind == "synthetic":
                n = int(self.config.data.eval_samples)
                sets.append(("synthetic", self._synthetic("eval", n, self.config.seed)))
            elif kind == "lmdb" and arg:
                sets += _lmdb_sets(arg)
            elif kind == "folder" and arg:
                sets.append((Path(arg).parent.name, read_crop_folder(arg)))
            else:
                raise ValueError(
                    f"--config.data.eval entry {spec!r}: expected 'synthetic', 'lmdb:ROOT' or 'folder:LABELS_FILE'"
                )
        return sets

    def evaluate(self, model: DptrRecognizer, step: int, workdir: str) -> dict[str, float]:
        del step, workdir
        size = int(self.config.eval_batch_size)
        metrics: dict[str, float] = {}
        labels_all, preds_all = {}, {}
        predict = inference_fn(DptrRecognizer.predict, model)
        for name, samples in self.eval_sets():
            gt, pred = {}, {}
            for start in range(0, len(samples), size):
                items = [samples[i] for i in range(start, min(start + size, len(samples)))]
                pixels = np.stack([crop_pixels(s.image, self.encoder_cfg.image_size) for s in items])
                texts = predict_texts(predict, pixels, self.charset, size)
                for i, (item, text) in enumerate(zip(items, texts, strict=True)):
                    gt[f"{name}/{start + i}"], pred[f"{name}/{start + i}"] = item.label, text
            result = score(gt, pred)
            metrics.update({f"{name}/word_accuracy": result["word_accuracy"], f"{name}/ned": result["ned"]})
            labels_all.update(gt)
            preds_all.update(pred)
        overall = score(labels_all, preds_all)
        metrics.update(word_accuracy=overall["word_accuracy"], ned=overall["ned"], eval_samples=overall["total"])
        logging.info("eval: %s", json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        return metrics
