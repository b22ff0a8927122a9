"""Detection heads (DBNet, FCENet, PANet), each with its model, targets, loss, auxiliary loss and post-processing
together (``heads/<name>/``), the pieces they share in ``heads.common`` and the head-kind shape in ``heads.base``.

``HEADS`` maps ``--config.model.head`` to the head kind; ``make_head(name, **options)`` builds one with a run's
host-side options (``heads.base.HeadKind``).
"""

from clip_text_spot.heads.base import HeadKind
from clip_text_spot.heads.db.kind import DBHeadKind
from clip_text_spot.heads.fce.kind import FCEHeadKind
from clip_text_spot.heads.pan.kind import PANHeadKind

HEADS: dict[str, type[HeadKind]] = {"db": DBHeadKind, "fce": FCEHeadKind, "pan": PANHeadKind}


def head_kind(name: str) -> type[HeadKind]:
    """The head kind called ``name`` (``HEADS``)."""
    if name not in HEADS:
        raise ValueError(f"unknown detection head {name!r}; choose one of {tuple(HEADS)}")
    return HEADS[name]


def make_head(name: str, **options) -> HeadKind:
    """A head kind with a run's options (``targets``, ``postprocess``, ``overrides``, ``max_instances``,
    ``official_broadcast``)."""
    return head_kind(name)(**options)


__all__ = ["HEADS", "HeadKind", "head_kind", "make_head"]
