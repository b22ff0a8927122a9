"""Convert CLIP weights to a clip_text_spot checkpoint (orbax + JSON model config).

Usage::

    python -m clip_text_spot.convert --source PATH --output DIR [--context_length 18] [--transformer_heads 8]

``PATH`` is a Hugging Face CLIP directory (``flax_model.msgpack`` or ``model.safetensors`` with ``config.json``), an
OpenAI/open_clip state dict saved as ``.safetensors`` (or a directory holding one), or an earlier output of this
command. Pickle files (``pytorch_model.bin``, ``RN50.pt``) are refused with instructions to re-save them as
safetensors. The output loads with ``clip_text_spot.models.clip.load_pretrained(DIR)``.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from clip_text_spot.models.clip.convert import load_pretrained, model_flat_state, save_converted

_SOURCE = flags.DEFINE_string("source", None, "CLIP checkpoint to import (file or directory).", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write (must not already hold a checkpoint).", required=True)
_CONTEXT = flags.DEFINE_integer("context_length", None, "Truncate the text position table to this many rows.")
_TEXT_HEADS = flags.DEFINE_integer("transformer_heads", None, "Text heads (OpenAI files; default width // 64).")
_VISION_HEADS = flags.DEFINE_integer("vision_heads", None, "Image heads (OpenAI files; default from widths).")


def main(argv: list[str]) -> None:
    del argv
    build_args = {
        k: v for k, v in (("transformer_heads", _TEXT_HEADS.value), ("vision_heads", _VISION_HEADS.value)) if v
    }
    try:
        model = load_pretrained(_SOURCE.value, context_length=_CONTEXT.value, **build_args)
    except (ValueError, FileNotFoundError) as e:
        logging.error("%s", e)
        sys.exit(f"convert: {e}")
    save_converted(model, _OUTPUT.value, source=_SOURCE.value)
    n_params = sum(v.size for v in model_flat_state(model).values())
    print(json.dumps({"output": _OUTPUT.value, "parameters": int(n_params), "config": model.config.to_dict()}))


if __name__ == "__main__":
    app.run(main)
