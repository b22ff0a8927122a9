"""Recognisers for the command-line tools and fine-tuning: a DPTR fine-tuning workdir / trainer checkpoint, or an
official PARSeq / OpenOCR DPTR checkpoint re-saved as ``.safetensors`` (README, DPTR section).

An official checkpoint ``NAME.safetensors`` needs ``NAME.json`` beside it: ``{"kind": "parseq", ...}`` with
``strhub.models.utils.create_model``'s keywords (``load_parseq``), or ``{"kind": "openocr_dptr", "decoder": {...},
"encoder": {...}, "charset": "..."}`` (``from_openocr_dptr``'s keywords); ``{"kind": "parseq"}`` alone is the
released ``parseq``. Shapes come from the tensors, so the JSON only names what they cannot tell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flax import nnx

OFFICIAL_KINDS = ("parseq", "openocr_dptr")
SUFFIX = ".safetensors"


def is_official(path: str) -> bool:
    """Whether ``path`` names an official checkpoint file (``*.safetensors``) rather than a trainer workdir."""
    return path.endswith(SUFFIX)


def official_keywords(path: str) -> tuple[str, dict[str, Any]]:
    """(kind, keywords) from the JSON file beside the official checkpoint ``path``."""
    meta_path = Path(path).with_suffix(".json")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not meta_path.is_file():
        raise FileNotFoundError(
            f'{path} needs {meta_path.name} beside it naming the model: {{"kind": "parseq", ...create_model '
            f'keywords}} or {{"kind": "openocr_dptr", "decoder": {{...}}, "encoder": {{...}}}}'
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    kind = meta.pop("kind", None) if isinstance(meta, dict) else None
    if kind not in OFFICIAL_KINDS:
        raise ValueError(f'{meta_path}: "kind" must be one of {OFFICIAL_KINDS}, got {kind!r}')
    return kind, meta


def load_official(path: str) -> nnx.Module:
    """The model of an official checkpoint (``DptrRecognizer``; an OpenOCR pre-training checkpoint gives a
    decoder-only ``DptrPretrainModel``), in eval mode."""
    from clip_text_spot.models.dptr.official import from_openocr_dptr, load_parseq

    kind, keywords = official_keywords(path)
    if kind == "parseq":
        return load_parseq(path, **keywords)
    unknown = sorted(set(keywords) - {"decoder", "encoder", "charset"})
    if unknown:
        raise ValueError(f"{Path(path).with_suffix('.json')}: unknown key(s) {unknown} for openocr_dptr")
    return from_openocr_dptr(path, decoder=keywords.pop("decoder", {}), **keywords)


def load_recognizer(path: str, *, best: bool = False, flag: str = "--recognizer") -> tuple[nnx.Module, str]:
    """(``DptrRecognizer`` in eval mode, what was loaded) from an official ``.safetensors`` checkpoint or a DPTR
    fine-tuning workdir / checkpoint (latest step, or the best-eval one with ``best``; a multi-stage workdir's
    ``finetune`` stage)."""
    from clip_text_spot import checkpoint
    from clip_text_spot.models.dptr.recognizer import DptrRecognizer
    from clip_text_spot.tasks.dptr import DptrFinetuneTask
    from clip_text_spot.trainer import restore_model

    if is_official(path):
        model = load_official(path)
        if not isinstance(model, DptrRecognizer):
            raise ValueError(f"{flag}={path} is a pre-training checkpoint (decoder only); a recogniser is needed")
        return model, path
    step_dir = checkpoint.resolve_step_dir(path, "best" if best else "latest", stage="finetune")

    def finetune_task(config):
        if config.task != "dptr_finetune":
            raise ValueError(
                f"{flag}={path} ({step_dir}) holds a {config.task!r} model; reading text needs a dptr_finetune "
                "checkpoint or an official one (FILE.safetensors)"
            )
        return DptrFinetuneTask(config)

    _, _, model, _ = restore_model(str(step_dir), build_task=finetune_task)
    return model, str(step_dir)
