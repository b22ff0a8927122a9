"""CLIP BPE tokenizer from a checkpoint directory, with OpenAI-style and Hugging Face-style padding.

The BPE itself is transformers' ``CLIPTokenizer`` (lower-casing, CLIP's regex incl. the contraction quirk, byte-level
fallback), loaded from local files only: a checkpoint directory's ``vocab.json`` + ``merges.txt`` (or
``tokenizer.json``), or, with no path, OpenAI's own 49,408-token vocabulary bundled in ``clip_text_spot/assets``
(for OpenAI-format checkpoints such as RN50, which ship no tokenizer files).

* ``padding="openai"`` (OpenAI ``clip.tokenize``, used by TCM and DPTR): ``[SOT] + tokens + [EOT]``, then zeros;
  a text that does not fit is an error unless ``truncate=True`` (then the last kept slot becomes EOT).
* ``padding="hf"``: the same ids padded with the tokenizer's pad token (``<|endoftext|>``), plus an attention mask.
"""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np

OPENAI_BPE = os.path.join(os.path.dirname(__file__), "..", "..", "assets", "bpe_simple_vocab_16e6.txt.gz")
OPENAI_NUM_MERGES = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in keep] + [symbols[b] for b in range(256) if b not in keep]


@functools.lru_cache(maxsize=1)
def openai_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's vocabulary and merges, built from the bundled merge list as OpenAI's tokenizer builds them:
    byte symbols, byte symbols + ``</w>``, one token per merge, then ``<|startoftext|>``, ``<|endoftext|>``."""
    with gzip.open(OPENAI_BPE, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : OPENAI_NUM_MERGES + 1]]
    byte_syms = _byte_symbols()
    tokens = byte_syms + [s + "</w>" for s in byte_syms] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


class CLIPTokenizer:
    """Tokenise texts into fixed-length CLIP id arrays (``path=None``: OpenAI's bundled vocabulary)."""

    def __init__(self, path: str | None = None, context_length: int = 77):
        from transformers.models.clip.tokenization_clip import CLIPTokenizer as HFCLIPTokenizer  # tokenizer only

        if path is None:
            vocab, merges = openai_vocab()
            self._tok = HFCLIPTokenizer(vocab=dict(vocab), merges=list(merges))
        else:
            has_bpe = all(os.path.exists(os.path.join(path, f)) for f in ("vocab.json", "merges.txt"))
            if not (has_bpe or os.path.exists(os.path.join(path, "tokenizer.json"))):
                raise FileNotFoundError(
                    f"{path}: no CLIP tokenizer files (need vocab.json + merges.txt, or tokenizer.json)"
                )
            self._tok = HFCLIPTokenizer.from_pretrained(path, local_files_only=True)
        self.context_length = context_length
        self.sot_id = int(self._tok.bos_token_id)
        self.eot_id = int(self._tok.eos_token_id)
        self.pad_id = int(self._tok.pad_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        return list(self._tok.encode(text, add_special_tokens=False))

    def __call__(
        self,
        texts: str | list[str],
        context_length: int | None = None,
        padding: str = "openai",
        truncate: bool = False,
    ) -> dict[str, np.ndarray]:
        """Returns ``input_ids`` int32 [B, L] and ``attention_mask`` int32 [B, L] (1 on SOT..EOT)."""
        if padding not in ("openai", "hf"):
            raise ValueError(f"padding must be 'openai' or 'hf', got {padding!r}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        pad = 0 if padding == "openai" else self.pad_id
        ids = np.full((len(texts), length), pad, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for i, text in enumerate(texts):
            toks = [self.sot_id, *self.encode(text), self.eot_id]
            if len(toks) > length:
                if not truncate:
                    raise ValueError(f"text {text!r} has {len(toks)} tokens, more than the context length {length}")
                toks = toks[:length]
                toks[-1] = self.eot_id
            ids[i, : len(toks)] = toks
            mask[i, : len(toks)] = 1
        return {"input_ids": ids, "attention_mask": mask}
