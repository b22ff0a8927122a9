"""CLIP BPE tokenizer from a checkpoint directory, with OpenAI-style and Hugging Face-style padding.

The BPE itself is transformers' ``CLIPTokenizer`` (lower-casing, CLIP's regex incl. the contraction quirk, byte-level
fallback), loaded from local files only (``vocab.json`` + ``merges.txt``, or ``tokenizer.json``).

* ``padding="openai"`` (OpenAI ``clip.tokenize``, used by TCM and DPTR): ``[SOT] + tokens + [EOT]``, then zeros;
  a text that does not fit is an error unless ``truncate=True`` (then the last kept slot becomes EOT).
* ``padding="hf"``: the same ids padded with the tokenizer's pad token (``<|endoftext|>``), plus an attention mask.
"""

from __future__ import annotations

import os

import numpy as np


class CLIPTokenizer:
    """Tokenise texts into fixed-length CLIP id arrays."""

    def __init__(self, path: str, context_length: int = 77):
        from transformers import CLIPTokenizer as HFCLIPTokenizer  # tokenizer only

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
