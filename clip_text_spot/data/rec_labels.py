"""Recognition labels: normalisation, filtering, the character set and fixed-length token targets.

Token layout (PARSeq, used by DPTR; ``dptr.md`` §1.3 and §8 item 18): ``EOS = 0``, the characters of the charset are
``1..C`` in charset order, ``BOS = C + 1``, ``PAD = C + 2``. The English charset has C = 94 characters in the order of
OpenOCR's ``EN_symbol_dict.txt``: digits, lowercase, uppercase, then the 32 ASCII punctuation marks from ``!`` to
``~``; so EOS = 0, chars 1..94, BOS = 95, PAD = 96 and the head predicts 95 classes (EOS + chars).

Label processing follows PARSeq's LMDB reader (``dptr.md`` §6.4) with DPTR's order of the two normalisation steps
(§1.3): NFKD then ASCII (optional; must be off for non-Latin charsets), whitespace removed, dropped when longer than
``max_len`` (checked before the charset filter, as PARSeq does), then the CharsetAdapter step (lowercase when the
charset has no uppercase letters, uppercase when it has no lowercase letters, characters outside the charset deleted),
dropped when empty. DPTR itself applies no CharsetAdapter (an unknown character raises there); deleting unknown
characters is the recommended deviation (``dptr.md`` §8 item 8).

Targets are ``[BOS] + ids + [EOS]`` right-padded with PAD to ``max_len + 2`` (27 for the default ``max_len = 25``).
"""

from __future__ import annotations

import string
import unicodedata

import numpy as np

EN_CHARSET = string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation
"""The 94-character English charset, in token-id order (``string.punctuation`` is in ASCII order)."""

LOWER_ALNUM_CHARSET = string.digits + string.ascii_lowercase
"""The 36-character evaluation charset of PARSeq / CLIP4STR (``charset_test``)."""

DEFAULT_MAX_LEN = 25


def normalize_label(label: str, *, unicode_to_ascii: bool = True) -> str:
    """NFKD-decompose and keep the ASCII part (when ``unicode_to_ascii``), then remove all whitespace."""
    if unicode_to_ascii:
        label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode("ascii")
    return "".join(label.split())


class Charset:
    """A recognition character set with PARSeq token ids (EOS = 0, chars 1..C, BOS = C + 1, PAD = C + 2)."""

    EOS = 0

    def __init__(self, chars: str = EN_CHARSET, *, max_len: int = DEFAULT_MAX_LEN, unicode_to_ascii: bool = True):
        if not chars:
            raise ValueError("charset: `chars` must not be empty")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"charset: `chars` has repeated characters {dup!r}")
        if any(c.isspace() for c in chars):
            raise ValueError("charset: `chars` must not contain whitespace (labels have it removed)")
        if max_len < 1:
            raise ValueError(f"charset: `max_len` must be >= 1, got {max_len}")
        self.chars = chars
        self.max_len = max_len
        self.unicode_to_ascii = unicode_to_ascii
        self.BOS = len(chars) + 1
        self.PAD = len(chars) + 2
        self._stoi = {c: i + 1 for i, c in enumerate(chars)}
        self._lowercase_only = chars == chars.lower()
        self._uppercase_only = chars == chars.upper()

    @property
    def num_tokens(self) -> int:
        """Vocabulary size including EOS, BOS and PAD (97 for the English charset)."""
        return len(self.chars) + 3

    @property
    def num_classes(self) -> int:
        """Classes the decoder head predicts: EOS plus the characters (95 for the English charset)."""
        return len(self.chars) + 1

    @property
    def target_len(self) -> int:
        """Length of an encoded target: BOS + max_len characters + EOS."""
        return self.max_len + 2

    def adapt(self, label: str) -> str:
        """PARSeq's CharsetAdapter: fold case when the charset is single-case, delete characters outside it."""
        if self._lowercase_only:
            label = label.lower()
        elif self._uppercase_only:
            label = label.upper()
        return "".join(c for c in label if c in self._stoi)

    def filter_label(self, label: str | bytes) -> str | None:
        """The label as the model sees it, or None when the sample must be skipped (too long, or empty)."""
        if isinstance(label, bytes):
            label = label.decode("utf-8")
        label = normalize_label(label, unicode_to_ascii=self.unicode_to_ascii)
        if len(label) > self.max_len:
            return None
        label = self.adapt(label)
        return label or None

    def encode(self, label: str) -> np.ndarray:
        """int32 [max_len + 2]: BOS, the ids of ``label`` (already filtered), EOS, then PAD."""
        if len(label) > self.max_len:
            raise ValueError(f"label {label!r} has {len(label)} characters, more than max_len={self.max_len}")
        try:
            ids = [self._stoi[c] for c in label]
        except KeyError as err:
            raise ValueError(f"label {label!r} has character {err.args[0]!r} outside the charset") from None
        out = np.full(self.target_len, self.PAD, np.int32)
        out[0] = self.BOS
        out[1 : 1 + len(ids)] = ids
        out[1 + len(ids)] = self.EOS
        return out

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Characters up to the first EOS; BOS and PAD are skipped (so both targets and predictions decode)."""
        chars = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == self.EOS:
                break
            if 1 <= i <= len(self.chars):
                chars.append(self.chars[i - 1])
            elif i not in (self.BOS, self.PAD):
                raise ValueError(f"token id {i} is outside the vocabulary of {self.num_tokens} tokens")
        return "".join(chars)
