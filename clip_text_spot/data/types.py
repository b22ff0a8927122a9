"""Sample records shared by the dataset readers, the preparation tool, the synthetic sources and the pipelines.

A detection sample is one image with any number of text instances; each instance is a polygon (>= 3 points for a
valid one, quads for ICDAR2015), its transcription and an ``ignore`` flag (``###`` don't-care, degenerate
geometry, ...). A recognition sample is one word crop with its label.

On disk (ArrayRecord written through TFDS, see ``clip_text_spot.data.prepare``) polygons are stored flat:
``polygon_points`` float32 [P_total, 2] and ``polygon_lengths`` int32 [N]; ``to_record``/``from_record`` convert.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class DetSample:
    """One detection image: encoded image bytes (or a decoded uint8 HWC array) plus its text instances."""

    image: bytes | np.ndarray
    polygons: list[np.ndarray]  # each float32 [n_i, 2], (x, y) in pixels of `image`
    texts: list[str]
    ignore: list[bool]
    name: str = ""  # image id, e.g. "img_12" (used to name submission files)

    def __post_init__(self):
        if not (len(self.polygons) == len(self.texts) == len(self.ignore)):
            raise ValueError(
                f"DetSample {self.name!r}: {len(self.polygons)} polygons, {len(self.texts)} texts, "
                f"{len(self.ignore)} ignore flags; they must be equal"
            )

    def to_record(self) -> dict:
        """Flat dict of numpy arrays / bytes / strings, the layout stored on disk."""
        lengths = np.array([len(p) for p in self.polygons], np.int32)
        points = (
            np.concatenate([np.asarray(p, np.float32).reshape(-1, 2) for p in self.polygons])
            if self.polygons
            else np.zeros((0, 2), np.float32)
        )
        return {
            "image": self.image,
            "polygon_points": points,
            "polygon_lengths": lengths,
            "texts": list(self.texts),
            "ignore": np.array(self.ignore, bool),
            "name": self.name,
        }

    @classmethod
    def from_record(cls, record: dict) -> DetSample:
        """Inverse of ``to_record``; accepts bytes or str texts (TFDS returns bytes)."""
        lengths = np.asarray(record["polygon_lengths"], np.int64)
        points = np.asarray(record["polygon_points"], np.float32).reshape(-1, 2)
        splits = np.cumsum(lengths)[:-1]
        polygons = list(np.split(points, splits)) if len(lengths) else []
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in record["texts"]]
        name = record.get("name", "")
        name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        return cls(
            image=record["image"],
            polygons=polygons,
            texts=texts,
            ignore=[bool(x) for x in np.asarray(record["ignore"]).reshape(-1)],
            name=name,
        )


@dataclasses.dataclass
class RecSample:
    """One word crop: encoded image bytes (or decoded uint8 HWC array) and its label."""

    image: bytes | np.ndarray
    label: str
    name: str = ""

    def to_record(self) -> dict:
        return {"image": self.image, "label": self.label, "name": self.name}

    @classmethod
    def from_record(cls, record: dict) -> RecSample:
        def _s(x):
            return x.decode("utf-8") if isinstance(x, bytes) else str(x)

        return cls(image=record["image"], label=_s(record["label"]), name=_s(record.get("name", "")))
