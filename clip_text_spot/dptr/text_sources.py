"""Text-only corpora for DPTR pre-training: random-access sequences of label strings.

A source is named by a spec string (``--config.text.train`` / ``--config.text.eval``):

``wordfreq`` or ``wordfreq:LANG``
    The embedded default: words of the ``vocab_size`` most frequent words of ``LANG`` (``wordfreq`` package,
    offline; English by default) that fit the charset, drawn in the synthetic-text word kinds (lower / Title /
    UPPER / numbers / mixed, ``clip_text_spot.data.synthetic.words``). ``source[i]`` is a pure function of
    (split, seed, i), so it is deterministic and the ``train`` and ``eval`` splits differ.
``lmdb:ROOT``
    The labels (only) of every recognition LMDB under ``ROOT`` (PARSeq layout, ``read_lmdb(labels_only=True)``),
    as DPTR's ``TextLMDBDataSet`` reads them.
``file:PATH``
    A UTF-8 text file with one label per line (line ends removed, empty lines skipped).

Labels are returned raw; normalisation and charset filtering belong to the pipeline (``Charset.filter_label``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clip_text_spot.data.readers import read_lmdb
from clip_text_spot.data.rec_labels import EN_CHARSET
from clip_text_spot.data.synthetic.sources import SPLIT_TAGS
from clip_text_spot.data.synthetic.words import WORD_KINDS, sample_word, vocabulary

TEXT_TAG = 3  # distinct from the synthetic image sources' task tags, so labels never replay a crop stream


class WordfreqText(Sequence):
    """``num_samples`` words of the most frequent ``lang`` words in the synthetic word kinds (see module doc)."""

    def __init__(
        self,
        num_samples: int,
        *,
        split: str = "train",
        seed: int = 0,
        vocab_size: int = 10000,
        lang: str = "en",
        charset: str = EN_CHARSET,
        max_chars: int = 25,
        kind_weights: Sequence[float] = (0.6, 0.15, 0.1, 0.1, 0.05),
    ):
        if num_samples < 1:
            raise ValueError(f"wordfreq text source: num_samples must be >= 1, got {num_samples}")
        if split not in SPLIT_TAGS:
            raise ValueError(f"wordfreq text source: split must be one of {sorted(SPLIT_TAGS)}, got {split!r}")
        if len(kind_weights) != len(WORD_KINDS) or min(kind_weights) < 0 or sum(kind_weights) <= 0:
            raise ValueError(f"wordfreq text source: kind_weights needs {len(WORD_KINDS)} weights >= 0 {WORD_KINDS}")
        self.num_samples = int(num_samples)
        self.entropy = (TEXT_TAG, SPLIT_TAGS[split], int(seed))
        self.vocab = vocabulary(vocab_size, 1, max_chars, charset, lang)
        self.kind_weights = tuple(kind_weights)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> str:
        index = operator.index(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} wordfreq labels")
        rng = np.random.default_rng(np.random.SeedSequence((*self.entropy, index)))
        return sample_word(rng, self.vocab, self.kind_weights)


def read_lmdb_labels(root: str | Path) -> list[str]:
    """The labels of every LMDB under ``root`` (images are never read; undecodable labels are skipped and counted)."""
    return [sample.label for sample in read_lmdb(root, labels_only=True, strict=False)]


def read_text_file(path: str | Path) -> list[str]:
    """One label per line of a UTF-8 file (BOM tolerated, ``\\r\\n``/``\\n`` removed, empty lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text source: {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"text source: {path} is not valid UTF-8 (byte offset {err.start})") from None
    labels = [line.rstrip("\r") for line in text.split("\n")]
    labels = [label for label in labels if label]
    if not labels:
        raise ValueError(f"text source: {path} has no labels")
    return labels


def open_text_source(
    spec: str,
    *,
    split: str = "train",
    seed: int = 0,
    num_samples: int = 10_000_000,
    vocab_size: int = 10000,
    charset: str = EN_CHARSET,
    max_chars: int = 25,
    kind_weights: Sequence[float] = (0.6, 0.15, 0.1, 0.1, 0.05),
) -> Sequence[str]:
    """The labels named by ``spec`` (see module docstring); the keyword arguments configure ``wordfreq``."""
    kind, _, arg = spec.partition(":")
    if kind == "wordfreq":
        return WordfreqText(
            num_samples,
            split=split,
            seed=seed,
            vocab_size=vocab_size,
            lang=arg or "en",
            charset=charset,
            max_chars=max_chars,
            kind_weights=kind_weights,
        )
    if kind == "lmdb" and arg:
        return read_lmdb_labels(arg)
    if kind == "file" and arg:
        return read_text_file(arg)
    raise ValueError(f"text source {spec!r}: expected 'wordfreq[:LANG]', 'lmdb:ROOT' or 'file:PATH'")
