"""Words for synthetic text: English words by frequency (the ``wordfreq`` package, offline) plus numbers.

A word is drawn in one of several *kinds*: ``lower`` / ``title`` / ``upper`` (a vocabulary word in that case),
``number`` (digits, possibly with a separator or a unit sign, e.g. ``12:30``, ``$45``, ``3.5``) and ``mixed``
(a vocabulary word with digits appended or random per-letter case, e.g. ``room12``, ``hOuSe``).
"""

from __future__ import annotations

import functools

import numpy as np
import wordfreq

from clip_text_spot.data.rec_labels import EN_CHARSET

WORD_KINDS = ("lower", "title", "upper", "number", "mixed")


@functools.lru_cache(maxsize=8)
def vocabulary(
    size: int, min_chars: int = 1, max_chars: int = 25, charset: str = EN_CHARSET, lang: str = "en"
) -> tuple[str, ...]:
    """The ``size`` most frequent words of ``lang`` (English by default), restricted to ``charset`` and
    ``min_chars..max_chars`` characters."""
    if size < 1:
        raise ValueError(f"vocabulary size must be >= 1, got {size}")
    allowed = set(charset)
    words = tuple(w for w in wordfreq.top_n_list(lang, size) if min_chars <= len(w) <= max_chars and set(w) <= allowed)
    if not words:
        raise ValueError(f"no word of {min_chars}..{max_chars} characters in the top {size} {lang!r} words")
    return words


def _number(rng: np.random.Generator) -> str:
    digits = str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
    form = int(rng.integers(0, 6))
    if form == 0:
        return f"{digits}.{int(rng.integers(0, 100)):02d}"
    if form == 1:
        return f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
    if form == 2:
        return "$" + digits
    if form == 3:
        return digits + "%"
    return digits


def _mixed(rng: np.random.Generator, word: str) -> str:
    if rng.random() < 0.5:
        return word + str(int(rng.integers(0, 1000)))
    upper = rng.random(len(word)) < 0.5
    return "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))


def sample_word(rng: np.random.Generator, vocab: tuple[str, ...], kind_weights: tuple[float, ...]) -> str:
    """One word; ``kind_weights`` are the relative probabilities of ``WORD_KINDS``."""
    cdf = np.cumsum(kind_weights)
    kind = WORD_KINDS[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(WORD_KINDS) - 1)]
    if kind == "number":
        return _number(rng)
    word = vocab[int(rng.integers(len(vocab)))]
    if kind == "title":
        return word.capitalize()
    if kind == "upper":
        return word.upper()
    if kind == "mixed":
        return _mixed(rng, word)
    return word
