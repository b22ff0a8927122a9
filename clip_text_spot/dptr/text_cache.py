"""Offline cache of CLIP text memories (``dptr.md`` §8 item 2): the prompt of a label is deterministic, so its
[1 + context_length, width] memory can be computed once. Meant for small corpora (float16: ~80 KB per label at
width 512); large corpora run the frozen CLIP text tower inside the train step instead.

Layout: ``PATH`` (a float16 ``.npy`` [U, tokens, width], memory-mapped when read) and ``PATH.json`` (the U unique
labels in row order and a description of the CLIP that made them). A cache whose labels or CLIP description differ
from what a run needs is an error, never silently reused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np


class TextMemoryCache:
    """Read-only label -> memory lookup over a cache written by ``build_text_cache`` (pickles by path)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        sidecar = Path(self.path + ".json")
        if not (Path(self.path).is_file() and sidecar.is_file()):
            raise FileNotFoundError(f"text cache {self.path} (or its {sidecar.name}) does not exist")
        info = json.loads(sidecar.read_text())
        self.meta = info["meta"]
        self.labels = info["labels"]
        self.rows = {label: i for i, label in enumerate(self.labels)}
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _array=None)

    def __contains__(self, label: str) -> bool:
        return label in self.rows

    def __getitem__(self, label: str) -> np.ndarray:
        try:
            return np.asarray(self.array[self.rows[label]])
        except KeyError:
            raise KeyError(f"label {label!r} is not in the text cache {self.path}") from None


def build_text_cache(
    path: str | Path,
    labels: Iterable[str],
    encode: Callable[[list[str]], np.ndarray],
    *,
    shape: tuple[int, int],
    meta: dict[str, Any],
    batch_size: int = 64,
) -> TextMemoryCache:
    """Encode the unique ``labels`` (``encode(list of labels) -> [n, *shape]``) into a new cache at ``path``."""
    path = str(path)
    unique = list(dict.fromkeys(labels))
    if not unique:
        raise ValueError("text cache: no labels to encode")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial.npy"
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(len(unique), *shape))
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        out[start : start + len(chunk)] = np.asarray(encode(chunk), np.float16)
    out.flush()
    del out
    os.replace(partial, path)
    Path(path + ".json").write_text(json.dumps({"meta": meta, "labels": unique}))
    return TextMemoryCache(path)


def open_or_build_text_cache(
    path: str | Path,
    labels: Iterable[str],
    encode: Callable[[list[str]], np.ndarray],
    *,
    shape: tuple[int, int],
    meta: dict[str, Any],
    batch_size: int = 64,
) -> TextMemoryCache:
    """The cache at ``path`` if it holds exactly ``labels`` made by the same CLIP (``meta``), else a new one when
    ``path`` does not exist yet; a mismatching existing cache is an error naming the file."""
    labels = list(dict.fromkeys(labels))
    meta = json.loads(json.dumps(meta))  # the form it has after a round trip through the sidecar
    if not Path(path).exists():
        return build_text_cache(path, labels, encode, shape=shape, meta=meta, batch_size=batch_size)
    cache = TextMemoryCache(path)
    if cache.meta != meta or cache.labels != labels:
        raise ValueError(
            f"text cache {path} was built for other labels or another CLIP ({cache.meta}); delete it or choose "
            "another --config.text.cache"
        )
    return cache
