"""Import official TCM / FastTCM checkpoints (mmocr 0.x ``OCRCLIP`` state dicts re-saved as safetensors).

The architecture is inferred from tensor shapes: backbone stages and width, attention-pool grid (its stored
position table; resized to the input's H/32 x W/32 at every forward), joint width, text tower (layers, width,
context length), number of learnable contexts (prompt length = text context length - contexts), which of the
prompt generator / visual prompt generator / context decoder are present, decoder width and depth. What shapes
cannot tell comes from arguments with the official defaults: attention-pool heads 32 (hard-coded in TCM's
``CLIPResNetWithAttention``), CLIP text heads ``text_heads`` (8 for RN50), decoder heads ``decoder_heads`` (4).

``neck.*`` and ``bbox_head.*`` tensors (mmocr 0.4 FPNC + DB head) are not part of the matcher: ``split_official_state``
returns them separately, under their original names, for the DBNet neck/head. Any other tensor the matcher does not
use is an error naming it. Pickle files (``.pth``) are refused; see ``PICKLE_HELP``.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
from absl import logging
from flax import nnx

from clip_text_spot.models.clip.config import CLIPConfig, ResNetConfig, TextConfig
from clip_text_spot.models.clip.convert import (
    PICKLE_SUFFIXES,
    CheckpointMismatchError,
    _count,
    _materialize,
    _read_safetensors,
    assign_flat,
    openai_resnet_to_flat,
    openai_text_to_flat,
)
from clip_text_spot.models.fasttcm.config import DecoderConfig, FastTCMConfig
from clip_text_spot.models.fasttcm.matcher import TCMMatcher

Flat = dict[str, np.ndarray]

EXTRA_PREFIXES = ("neck.", "bbox_head.")
DECODERS = ("visual_prompt_generator", "context_decoder")
PICKLE_HELP = """\
{path} is a pickle file; clip_text_spot never unpickles (it can run arbitrary code).
Re-save the released TCM checkpoint once, on a machine with PyTorch, as safetensors:

  python -c "import torch; from safetensors.torch import save_file; \\
      ck = torch.load('tcm_ic15.pth', map_location='cpu', weights_only=False); sd = ck.get('state_dict', ck); \\
      save_file({{k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}}, \\
      'tcm_ic15.safetensors')"
"""

_TEXT_NAMES = re.compile(
    r"text_encoder\.(token_embedding\.weight|positional_embedding|text_projection|ln_final\.(weight|bias)"
    r"|transformer\.resblocks\.\d+\.(attn\.(in_proj_weight|in_proj_bias|out_proj\.(weight|bias))"
    r"|ln_[12]\.(weight|bias)|mlp\.c_(fc|proj)\.(weight|bias)))$"
)
# official module path -> ours (applied to the name without its leaf)
_MODULE_RULES = [
    (re.compile(r"^prompt_generator\.prompt_proj\.0$"), "prompt_generator/hidden/norm"),
    (re.compile(r"^prompt_generator\.prompt_proj\.1$"), "prompt_generator/hidden/linear"),
    (re.compile(r"^prompt_generator\.prompt_proj\.3$"), "prompt_generator/out/norm"),
    (re.compile(r"^prompt_generator\.prompt_proj\.4$"), "prompt_generator/out/linear"),
    (re.compile(r"^(\w+)\.(text_proj|out_proj)\.0$"), r"\1/\2/norm"),
    (re.compile(r"^(\w+)\.(text_proj|out_proj|memory_proj)\.1$"), r"\1/\2/linear"),
    (re.compile(r"^(\w+)\.memory_proj\.0$"), r"\1/memory_proj/norm"),
    (re.compile(r"^(\w+)\.memory_proj\.2$"), r"\1/memory_proj/norm_out"),
    (re.compile(r"^(\w+)\.decoder\.(\d+)\.(self_attn|cross_attn)\.([qkv]_proj)$"), r"\1/decoder/\2/\3/\4"),
    (re.compile(r"^(\w+)\.decoder\.(\d+)\.(self_attn|cross_attn)\.proj$"), r"\1/decoder/\2/\3/out_proj"),
    (re.compile(r"^(\w+)\.decoder\.(\d+)\.(norm[123])$"), r"\1/decoder/\2/\3"),
    (re.compile(r"^(\w+)\.decoder\.(\d+)\.mlp\.0$"), r"\1/decoder/\2/mlp/fc1"),
    (re.compile(r"^(\w+)\.decoder\.(\d+)\.mlp\.3$"), r"\1/decoder/\2/mlp/fc2"),
]
_PARAMS = ("contexts", "gamma", "vis_gamma", "meta_query", "pix_w")


def read_official_state(path: str) -> Flat:
    """The tensors of an official checkpoint re-saved as ``.safetensors`` (a file, or a directory holding one)."""
    if path.endswith(PICKLE_SUFFIXES):
        raise ValueError(PICKLE_HELP.format(path=path))
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if len(files) != 1:
            raise FileNotFoundError(f"{path}: expected exactly one *.safetensors file, found {files}")
        path = os.path.join(path, files[0])
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a .safetensors file (official TCM weights re-saved; see PICKLE_HELP)")
    return _read_safetensors(path)


def split_official_state(source: str | Flat) -> tuple[Flat, Flat]:
    """(matcher tensors, ``neck.*``/``bbox_head.*`` tensors under their original names) of a checkpoint path or an
    already-read state dict."""
    sd = read_official_state(source) if isinstance(source, str) else dict(source)
    extra = {k: v for k, v in sd.items() if k.startswith(EXTRA_PREFIXES)}
    return {k: v for k, v in sd.items() if k not in extra}, extra


def _need(sd: Flat, name: str) -> np.ndarray:
    if name not in sd:
        raise CheckpointMismatchError(f"official TCM checkpoint lacks tensor {name!r}")
    return sd[name]


def _decoder_config(sd: Flat, prefix: str, heads: int, dropout: float) -> DecoderConfig:
    if not any(k.startswith(f"{prefix}.") for k in sd):
        return DecoderConfig(heads=heads, dropout=dropout)  # module absent: unused
    return DecoderConfig(
        width=_need(sd, f"{prefix}.text_proj.1.weight").shape[0],
        heads=heads,
        layers=_count(sd, rf"{prefix}\.decoder\.(\d+)\."),
        dropout=dropout,
    )


def config_from_official(
    sd: Flat,
    *,
    fast: bool,
    text_heads: int = 8,
    decoder_heads: int = 4,
    pool_heads: int = 32,
    dropout: float = 0.1,
    dtype: str = "float32",
) -> FastTCMConfig:
    """Infer a ``FastTCMConfig`` from the matcher tensors of an official checkpoint (see module docstring)."""
    pos = _need(sd, "backbone.attnpool.positional_embedding")
    grid = math.isqrt(pos.shape[0] - 1)
    if grid * grid != pos.shape[0] - 1:
        raise CheckpointMismatchError(f"backbone.attnpool.positional_embedding {pos.shape} is not 1 + a square grid")
    vision = ResNetConfig(
        layers=tuple(_count(sd, rf"backbone\.layer{i}\.(\d+)\.") for i in range(1, 5)),
        width=_need(sd, "backbone.layer1.0.conv1.weight").shape[0],
        heads=pool_heads,
        image_size=grid * 32,
    )
    embed_dim = _need(sd, "backbone.attnpool.c_proj.weight").shape[0]
    return prompting_config_from_official(
        sd,
        vision=vision,
        embed_dim=embed_dim,
        fast=fast,
        text_heads=text_heads,
        decoder_heads=decoder_heads,
        dropout=dropout,
        dtype=dtype,
    )


def prompting_config_from_official(
    sd: Flat,
    *,
    vision: ResNetConfig,
    embed_dim: int,
    fast: bool,
    text_heads: int = 8,
    decoder_heads: int = 4,
    dropout: float = 0.1,
    dtype: str = "float32",
) -> FastTCMConfig:
    """The ``FastTCMConfig`` of an official checkpoint's prompt modules (text tower, contexts, prompt generator,
    decoders, FastTCM tensors) around a visual space of width ``embed_dim``; ``vision`` is stored as given (the
    TESTR spotter's CLIP side has no image tower of its own)."""
    text_width = _need(sd, "text_encoder.ln_final.weight").shape[0]
    text = TextConfig(
        vocab_size=_need(sd, "text_encoder.token_embedding.weight").shape[0],
        width=text_width,
        layers=_count(sd, r"text_encoder\.transformer\.resblocks\.(\d+)\."),
        heads=text_heads,
        mlp_dim=_need(sd, "text_encoder.transformer.resblocks.0.mlp.c_fc.weight").shape[0],
        context_length=_need(sd, "text_encoder.positional_embedding").shape[0],
    )
    n_ctx = sd["contexts"].shape[1] if "contexts" in sd else 0
    if text.context_length - n_ctx < 2:
        raise CheckpointMismatchError(
            f"contexts {sd['contexts'].shape} fill the whole text context ({text.context_length}): the "
            "learnable-prompt-only ablation is not supported"
        )
    if fast and "meta_query" not in sd:
        raise CheckpointMismatchError("fast=True but the checkpoint lacks 'meta_query' (a TCM checkpoint: fast=False)")
    bsm_projection = fast and "pix_w" in sd
    if bsm_projection and sd["pix_w"].shape != (embed_dim, embed_dim):
        raise CheckpointMismatchError(
            f"pix_w has shape {sd['pix_w'].shape}; BSM needs [{embed_dim}, {embed_dim}] (the released code's "
            f"[1024, 512] projection cannot be applied to {embed_dim}-d text, tcm.md §2.5)"
        )
    return FastTCMConfig(
        clip=CLIPConfig(embed_dim, text, vision),
        prompt_length=text.context_length - n_ctx,
        n_ctx=n_ctx,
        fast=fast,
        bsm_projection=bsm_projection,
        use_prompt_generator=any(k.startswith("prompt_generator.") for k in sd),
        use_vpg=any(k.startswith(f"{DECODERS[0]}.") for k in sd),
        use_context_decoder=any(k.startswith(f"{DECODERS[1]}.") for k in sd),
        vpg=_decoder_config(sd, DECODERS[0], decoder_heads, dropout),
        context_decoder=_decoder_config(sd, DECODERS[1], decoder_heads, dropout),
        dtype=dtype,
    )


def _leaf(path: str, leaf: str, w: np.ndarray) -> tuple[str, np.ndarray]:
    """(our name, Flax-layout array) of a Linear / LayerNorm tensor."""
    if leaf == "bias":
        return f"{path}/bias", w
    if leaf == "weight" and w.ndim == 2:
        return f"{path}/kernel", w.T
    if leaf == "weight" and w.ndim == 1:
        return f"{path}/scale", w
    raise CheckpointMismatchError(f"unexpected tensor layout {path}.{leaf} {w.shape}")


def official_to_flat(sd: Flat) -> Flat:
    """Matcher tensors in official names -> our flat ``/`` names; a tensor with no counterpart is an error."""
    stray = [
        k
        for k in sd
        if not (
            k.startswith("backbone.")
            or _TEXT_NAMES.match(k)
            or k in _PARAMS
            or k.startswith(("prompt_generator.", *(f"{d}." for d in DECODERS)))
        )
    ]
    if stray:
        raise CheckpointMismatchError(f"unexpected tensor(s) in official TCM checkpoint: {sorted(stray)[:12]}")
    out = openai_resnet_to_flat(sd, "backbone.", "backbone")
    try:
        text = openai_text_to_flat(sd, "text_encoder.")
    except KeyError as e:
        raise CheckpointMismatchError(f"official TCM checkpoint lacks tensor {e.args[0]!r}") from None
    out.update({f"text_encoder/{k}": v for k, v in text.items()})
    out.update({k: sd[k] for k in _PARAMS if k in sd})
    for name, w in sd.items():
        if not name.startswith(("prompt_generator.", *(f"{d}." for d in DECODERS))):
            continue
        module, leaf = name.rsplit(".", 1)
        for rx, repl in _MODULE_RULES:
            if rx.match(module):
                k, v = _leaf(rx.sub(repl, module), leaf, w)
                out[k] = v
                break
        else:
            raise CheckpointMismatchError(f"unexpected tensor {name!r} in official TCM checkpoint")
    return out


def check_prompt_ids(config: FastTCMConfig, prompt_ids: np.ndarray | None) -> None:
    """Error unless ``prompt_ids`` fit the checkpoint's vocabulary (None needs OpenAI's 49,408 tokens)."""
    vocab = config.clip.text.vocab_size
    if prompt_ids is None and vocab != 49408:
        raise ValueError(
            f"the checkpoint's vocabulary has {vocab} tokens, not OpenAI's 49408: "
            "pass prompt_ids tokenised with its own tokenizer"
        )
    if prompt_ids is not None and int(np.max(prompt_ids)) >= vocab:
        raise ValueError(f"prompt_ids hold id {int(np.max(prompt_ids))} >= vocab size {vocab}")


def from_official_tcm(
    path: str | Flat,
    fast: bool = False,
    text_heads: int = 8,
    decoder_heads: int = 4,
    prompt_ids: np.ndarray | None = None,
    *,
    pool_heads: int = 32,
    dropout: float = 0.1,
    dtype: str = "float32",
) -> TCMMatcher:
    """A ``TCMMatcher`` (eval mode) holding an official TCM (``fast=False``) or FastTCM checkpoint.

    ``path``: a ``.safetensors`` re-save of the released state dict (or the dict itself). ``prompt_ids`` int
    [K, L]: the tokenised predefined prompt(s); None tokenises the configured prompt with OpenAI's vocabulary
    (needs the standard 49,408-token embedding). ``neck.*``/``bbox_head.*`` tensors are ignored here; get them
    with ``split_official_state``. With ``fast=False`` the FastTCM-only ``meta_query``/``pix_w`` are skipped (with a
    warning), so one checkpoint can be run both ways.
    """
    sd, _ = split_official_state(path)
    sd = {k: v for k, v in sd.items() if not (k == "contexts" and v.shape[1] == 0)}
    if not fast:
        unused = sorted(k for k in ("meta_query", "pix_w") if k in sd)
        if unused:
            logging.warning("TCM (fast=False) does not use the checkpoint's FastTCM tensor(s) %s", unused)
            sd = {k: v for k, v in sd.items() if k not in unused}
    config = config_from_official(
        sd,
        fast=fast,
        text_heads=text_heads,
        decoder_heads=decoder_heads,
        pool_heads=pool_heads,
        dropout=dropout,
        dtype=dtype,
    )
    check_prompt_ids(config, prompt_ids)
    flat = official_to_flat(sd)
    model = nnx.eval_shape(lambda: TCMMatcher(config, rngs=nnx.Rngs(0), prompt_ids=prompt_ids))
    model = _materialize(model)
    source = path if isinstance(path, str) else "official TCM state dict"
    assign_flat(model, flat, source)
    model.eval()
    return model
