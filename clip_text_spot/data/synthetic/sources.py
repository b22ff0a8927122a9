"""Deterministic random-access sources of synthetic scene text (usable as ``grain.MapDataset.source``).

``source[i]`` is a pure function of (task, split, seed, i): its random generator is seeded with the entropy tuple
``(task tag, split tag, seed, i)`` (hashed by ``numpy.random.SeedSequence``). The split tags of ``"train"`` and
``"eval"`` differ, so the two splits never share a seed, whatever the seed and index.
"""

from __future__ import annotations

import operator

import cv2
import numpy as np

from clip_text_spot.data.synthetic.backgrounds import make_background
from clip_text_spot.data.synthetic.render import DET_STYLE, ShapedWord, TextStyle, paste_word, place_word, shape_word
from clip_text_spot.data.synthetic.words import sample_word, vocabulary
from clip_text_spot.data.types import DetSample, RecSample

SPLIT_TAGS = {"train": 0x7472_6169, "eval": 0x6576_616C}
TASK_TAGS = {"det": 1, "rec": 2}

REC_STYLE = TextStyle(font_size=(28, 56), min_chars=1, max_rotation=5.0, perspective=0.04, curve_prob=0.1)
"""Default style of recognition crops: the detection variety with milder geometry."""


def sample_entropy(task: str, split: str, seed: int, index: int) -> tuple[int, int, int, int]:
    """Seed material of one sample; distinct for distinct (task, split, seed, index)."""
    if task not in TASK_TAGS:
        raise ValueError(f"task must be one of {sorted(TASK_TAGS)}, got {task!r}")
    if split not in SPLIT_TAGS:
        raise ValueError(f"split must be one of {sorted(SPLIT_TAGS)}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return (TASK_TAGS[task], SPLIT_TAGS[split], int(seed), int(index))


def sample_rng(task: str, split: str, seed: int, index: int) -> np.random.Generator:
    """The random generator of one sample."""
    return np.random.default_rng(np.random.SeedSequence(sample_entropy(task, split, seed, index)))


class _Source:
    """Length, index checking and seeding shared by the synthetic sources."""

    task = ""

    def __init__(self, num_samples: int, split: str, seed: int, style: TextStyle):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        sample_entropy(self.task, split, seed, 0)  # validates split and seed
        self.num_samples = int(num_samples)
        self.split = split
        self.seed = int(seed)
        self.style = style

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> tuple[int, np.random.Generator]:
        index = operator.index(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} synthetic samples")
        return index, sample_rng(self.task, self.split, self.seed, index)

    def _name(self, index: int) -> str:
        return f"synth_{self.task}_{self.split}_{self.seed}_{index}"


class SyntheticDetSource(_Source):
    """Images with several non-overlapping words; ``source[i]`` is a ``DetSample`` with a uint8 HWC image.

    Args:
      num_samples: length of the source.
      split: ``"train"`` or ``"eval"`` (disjoint seeds).
      seed: base seed.
      image_size: (H, W) of the images.
      num_words: (min, max) words attempted per image; a word that finds no free place after ``tries`` positions
        is replaced by another, up to twice the drawn count, so crowded images may hold fewer.
      style: appearance (fonts, sizes, geometry, colours, backgrounds).
      margin: smallest distance in pixels between two words' polygons and from a polygon to the image border.
      tries: positions tried per word.
    """

    task = "det"

    def __init__(
        self,
        num_samples: int = 10000,
        *,
        split: str = "train",
        seed: int = 0,
        image_size: tuple[int, int] = (640, 640),
        num_words: tuple[int, int] = (4, 12),
        style: TextStyle = DET_STYLE,
        margin: float = 4.0,
        tries: int = 20,
    ):
        super().__init__(num_samples, split, seed, style)
        if min(image_size) < 32:
            raise ValueError(f"image_size must be at least 32x32, got {image_size}")
        if not 0 <= num_words[0] <= num_words[1]:
            raise ValueError(f"num_words must be (min, max) with 0 <= min <= max, got {num_words}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_words = num_words
        self.margin = float(margin)
        self.tries = int(tries)

    def __getitem__(self, index: int) -> DetSample:
        index, rng = self._rng(index)
        h, w = self.image_size
        style = self.style
        image = make_background(rng, h, w, style.background_weights, style.background_contrast)
        vocab = vocabulary(style.vocab_size, style.min_chars)
        wanted = int(rng.integers(self.num_words[0], self.num_words[1] + 1))
        placed, polygons, texts = [], [], []
        for _ in range(2 * wanted):
            if len(polygons) == wanted:
                break
            word = shape_word(rng, sample_word(rng, vocab, style.word_kind_weights), style)
            offset = place_word(rng, word, (h, w), placed, self.margin, self.tries)
            if offset is None:
                continue
            paste_word(image, word, offset, rng, style.min_contrast)
            polygons.append((word.polygon + offset).astype(np.float32))
            texts.append(word.text)
        return DetSample(
            image=image, polygons=polygons, texts=texts, ignore=[False] * len(texts), name=self._name(index)
        )


class SyntheticRecSource(_Source):
    """Single-word crops; ``source[i]`` is a ``RecSample`` with a uint8 HWC image of variable size.

    The crop is the word's bounding box plus a margin drawn per side in ``margin`` (fractions of the box height);
    crops are resized by the recognition pipeline, not here. With ``box_jitter`` > 0 a straight word is instead cut
    out along its own quadrilateral, as a spotter's rectification does: the quad grown by the per-side margins,
    each corner moved by normal noise of ``box_jitter`` x the word height (the error of detected boxes), and
    warped to an upright crop.
    """

    task = "rec"

    def __init__(
        self,
        num_samples: int = 100000,
        *,
        split: str = "train",
        seed: int = 0,
        style: TextStyle = REC_STYLE,
        margin: tuple[float, float] = (0.05, 0.25),
        box_jitter: float = 0.0,
    ):
        super().__init__(num_samples, split, seed, style)
        if not 0 <= margin[0] <= margin[1]:
            raise ValueError(f"margin must be (min, max) with 0 <= min <= max, got {margin}")
        if box_jitter < 0:
            raise ValueError(f"box_jitter must be >= 0, got {box_jitter}")
        self.margin = margin
        self.box_jitter = float(box_jitter)

    def __getitem__(self, index: int) -> RecSample:
        index, rng = self._rng(index)
        style = self.style
        text = sample_word(rng, vocabulary(style.vocab_size, style.min_chars), style.word_kind_weights)
        word = shape_word(rng, text, style)
        if self.box_jitter > 0 and len(word.polygon) == 4:
            return RecSample(image=self._quad_crop(rng, word), label=text, name=self._name(index))
        lo, hi = word.polygon.min(axis=0), word.polygon.max(axis=0)
        left, top, right, bottom = rng.uniform(*self.margin, size=4) * (hi[1] - lo[1])
        w = int(np.ceil(hi[0] - lo[0] + left + right))
        h = int(np.ceil(hi[1] - lo[1] + top + bottom))
        image = make_background(rng, h, w, style.background_weights, style.background_contrast)
        paste_word(image, word, np.array([left, top]) - lo, rng, style.min_contrast)
        return RecSample(image=image, label=text, name=self._name(index))

    def _quad_crop(self, rng: np.random.Generator, word: ShapedWord) -> np.ndarray:
        """The word cut out along its grown and jittered quad (TL, TR, BR, BL), warped upright."""
        tl, tr, br, bl = word.polygon
        across, along = 0.5 * ((bl - tl) + (br - tr)), 0.5 * ((tr - tl) + (br - bl))
        height, width = float(np.linalg.norm(across)), float(np.linalg.norm(along))
        u, v = along / max(width, 1e-6), across / max(height, 1e-6)
        left, top, right, bottom = rng.uniform(*self.margin, size=4) * height
        quad = np.stack([tl - left * u - top * v, tr + right * u - top * v, br + right * u + bottom * v,
                         bl - left * u + bottom * v])  # fmt: skip
        quad = quad + rng.normal(0.0, self.box_jitter * height, size=(4, 2))
        lo = np.floor(np.minimum(quad.min(axis=0), word.polygon.min(axis=0))) - 2  # canvas holds word and quad
        size = np.ceil(np.maximum(quad.max(axis=0), word.polygon.max(axis=0)) - lo).astype(int) + 2
        canvas = make_background(rng, int(size[1]), int(size[0]), self.style.background_weights,
                                 self.style.background_contrast)  # fmt: skip
        paste_word(canvas, word, -lo, rng, self.style.min_contrast)
        out_w, out_h = max(2, round(width + left + right)), max(2, round(height + top + bottom))
        target = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], np.float32)
        hom = cv2.getPerspectiveTransform((quad - lo).astype(np.float32), target)
        return cv2.warpPerspective(canvas, hom, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
