"""DPTR recognition models (``config``, ``parseq``, ``nrtr``, ``recognizer``, ``pretrain``, ``perms``) and the
loaders of official PARSeq / OpenOCR DPTR checkpoints (``official``: ``load_parseq``, ``from_openocr_dptr``, imported
on first use so that importing the configs stays light)."""

from __future__ import annotations

from typing import Any

_LOADERS = ("from_openocr_dptr", "load_parseq")


def __getattr__(name: str) -> Any:
    if name in _LOADERS:
        from clip_text_spot.models.dptr import official

        return getattr(official, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
