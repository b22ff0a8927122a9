"""Input pipelines of DPTR: text-only pre-training batches, and the per-batch extras both stages need.

Pre-training (``make_pretrain_iter``), per sample: ``Charset.filter_label`` (NFKD/ASCII, whitespace removed, too
long or empty -> skipped, characters outside the charset deleted), then either the CLIP ids of the prompt
``a photo of a '{label}'`` (OpenAI zero padding; ``clip_ids`` int32 [context_length]) or, with a text cache, the
cached memory (``memory`` float16 [1 + context_length, width]); ``label`` int32 [max_len + 2] (BOS, ids, EOS, PAD).

Per batch (``BatchExtras``, host side, after batching): PARSeq's permutation masks (``perm_content_mask`` /
``perm_query_mask`` bool [B, K, L, L], the same K permutations for the whole batch, repeated per sample so that
they shard with the batch) and, in pre-training, the ORP noise (``orp_noise`` [B, 1 + context_length, width],
already multiplied by lambda). The random generator of batch ``n`` is seeded with ``(seed, n)`` and ``n`` is part
of the iterator state (``BatchRandomMap``), so a restored iterator replays exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.dptr.orp import OrpSampler
from clip_text_spot.dptr.text_cache import TextMemoryCache
from clip_text_spot.models.clip.tokenizer import CLIPTokenizer
from clip_text_spot.models.dptr.config import DecoderConfig
from clip_text_spot.models.dptr.perms import batch_perm_masks
from clip_text_spot.models.dptr.pretrain import prompt_ids

Batch = dict[str, np.ndarray]


class BatchRandomMap(grain.DatasetIterator):
    """Applies ``fn(batch, rng)`` to each batch of ``parent``; batch ``n`` gets ``default_rng((seed, n))``."""

    def __init__(self, parent: Iterator[Batch], fn: Callable[[Batch, np.random.Generator], Batch], seed: int):
        super().__init__(parent)
        self._fn = fn
        self._seed = int(seed)
        self._count = 0

    def __next__(self) -> Batch:
        batch = next(self._parent)
        rng = np.random.default_rng((self._seed, self._count))
        self._count += 1
        return self._fn(batch, rng)

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "count": self._count}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._count = int(state["count"])


@dataclasses.dataclass(frozen=True)
class BatchExtras:
    """Adds permutation masks (PARSeq decoders) and ORP noise (when a sampler is given) to a batch."""

    decoder: DecoderConfig
    orp: OrpSampler | None = None
    process_index: int = 0  # ORP draws for the global batch and keeps this process's rows
    process_count: int = 1

    def __call__(self, batch: Batch, rng: np.random.Generator) -> Batch:
        batch = dict(batch)
        size = len(batch["label"])
        if self.decoder.kind == "parseq":
            batch.update(
                batch_perm_masks(
                    size,
                    self.decoder.max_len,
                    self.decoder.num_perms,
                    rng,
                    forward=self.decoder.perm_forward,
                    mirrored=self.decoder.perm_mirrored,
                )
            )
        if self.orp is not None:
            batch["orp_noise"] = self.orp.sample(size, rng, self.process_index, self.process_count)
        return batch


class PretrainTransform:
    """Label -> pre-training row (see module docstring), or None when the charset filters the label out."""

    def __init__(self, charset: Charset, context_length: int = 77, cache: TextMemoryCache | None = None):
        self.charset = charset
        self.context_length = context_length
        self.cache = cache
        self._tokenizer: CLIPTokenizer | None = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _tokenizer=None)  # rebuilt lazily in each data worker

    def __call__(self, raw: str) -> Batch | None:
        label = self.charset.filter_label(raw)
        if label is None:
            return None
        row = {"label": self.charset.encode(label)}
        if self.cache is not None:
            row["memory"] = self.cache[label]
        else:
            if self._tokenizer is None:
                self._tokenizer = CLIPTokenizer(context_length=self.context_length)
            row["clip_ids"] = prompt_ids(self._tokenizer, [label])[0]
        return row


def make_pretrain_iter(
    labels: Sequence[str],
    transform: PretrainTransform,
    extras: BatchExtras,
    *,
    batch_size: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    workers: int = 0,
) -> BatchRandomMap:
    """Endless, checkpointable iterator of pre-training batches over a label source (reshuffled every epoch)."""
    if len(labels) == 0:
        raise ValueError("the pre-training text source is empty")
    ds = grain.MapDataset.source(labels).shuffle(seed=seed).repeat(None).map(transform)
    ds = ds[process_index::process_count].to_iter_dataset().batch(batch_size, drop_remainder=True)
    if workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return BatchRandomMap(iter(ds), extras, seed)
