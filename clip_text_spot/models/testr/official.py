"""Import official TESTR checkpoints (AdelaiDet / TCM ``spotter/`` state dicts re-saved as safetensors).

Names are the official ``TESTR`` module's (``transformer.encoder.layers.0.self_attn.value_proj.weight``...), with or
without the ``testr.`` prefix of detectron2 checkpoints. Sizes come from tensor shapes: width and levels
(``transformer.level_embed``), encoder / decoder depth, FFN width, sampling points per MSDeformAttn (its
``attention_weights`` rows / (heads x levels)), control points, characters, vocabulary (``text_class`` rows - 1),
backbone channels (``input_proj``). What shapes cannot tell are keyword arguments with the official defaults:
``heads`` 8, ``num_queries`` 100, ``use_polygon``, ``strides``; ``enc_points`` / ``dec_points`` / ``voc_size``, when
given, are checked against the shapes.

Shared modules appear under several official names (``ctrl_point_class.{0..n-1}``, ``ctrl_point_coord.{i}``, and
``transformer.bbox_class_embed`` / ``transformer.bbox_embed`` = ``bbox_class`` / ``bbox_coord``): each copy must hold
the same values. ``text_pos_embed.inv_freq`` is a fixed buffer, checked against the formula. PyTorch's packed
``in_proj_weight`` is split into q / k / v. Backbone tensors (``backbone.*``) are not part of this model and are
skipped. A missing, unexpected or mis-shaped tensor is an error naming it (official name). Pickles are refused.

TESTR-CLIP checkpoints (TCM's ``CLIPTransformerDetector``) hold the same TESTR tensors plus the CLIP side under
``backbone.0.`` (text tower, contexts, prompt generator, decoders, residual scales): ``from_official_testr_clip``
loads both into a ``TESTRTCM`` (the CLIP names through ``models.fasttcm.official``, shared with TCM-DBNet).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from clip_text_spot.models.clip.convert import (
    PICKLE_SUFFIXES,
    CheckpointMismatchError,
    _count,
    assign_flat,
    model_flat_state,
)
from clip_text_spot.models.fasttcm import official as fasttcm_official
from clip_text_spot.models.fasttcm.config import FastTCMConfig, default_clip
from clip_text_spot.models.fasttcm.matcher import TextPrompting
from clip_text_spot.models.fasttcm.official import read_official_state
from clip_text_spot.models.testr.backbone import STAGES, ResNet, ResNetConfig
from clip_text_spot.models.testr.model import TESTR, TESTRConfig, TESTRDetector
from clip_text_spot.models.testr.tcm import TESTRTCM, TESTRTCMConfig

Flat = dict[str, np.ndarray]

PICKLE_HELP = """\
{path} is a pickle file; clip_text_spot never unpickles (it can run arbitrary code).
Re-save the detectron2 TESTR checkpoint once, on a machine with PyTorch, as safetensors:

  python -c "import torch; from safetensors.torch import save_file; \\
      ck = torch.load('pretrain_testr_R_50_polygon.pth', map_location='cpu', weights_only=False); \\
      sd = ck.get('model', ck); save_file({{k: v.float().contiguous() for k, v in sd.items()}}, 'testr.safetensors')"
"""
BACKBONE_PREFIX = "backbone."
# detectron2 ResNet tensors inside a TESTR checkpoint (Joiner -> MaskedBackbone -> ResNet), or under an FPN's bottom_up
RESNET_PREFIXES = ("backbone.0.backbone.", "backbone.bottom_up.")
CLIP_PREFIX = "backbone.0."  # TESTR-CLIP: CLIPMaskedBackbone's own tensors (beside its ResNet)
UNUSED_CLIP = ("score_map_concat_gamma",)
# official module path -> ours (on the name without its leaf; first match wins)
_RULES = [
    (r"^input_proj\.(\d+)\.0$", r"input_proj/\1/conv"),
    (r"^input_proj\.(\d+)\.1$", r"input_proj/\1/norm"),
    (
        r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.linear([12])(_text)?$",
        r"transformer/\1_layers/\2/ffn\4/linear\3",
    ),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)$", r"transformer/\1_layers/\2/\3"),
    (r"^transformer\.bbox_class_embed$", "bbox_class"),
    (r"^transformer\.bbox_embed\.layers\.(\d+)$", r"bbox_coord/layers/\1"),
    (r"^ctrl_point_class\.\d+$", "ctrl_point_class"),
    (r"^ctrl_point_coord\.\d+\.layers\.(\d+)$", r"ctrl_point_coord/layers/\1"),
    (r"^(ctrl_point_embed|text_embed)$", r"\1"),
    (r"^(.+)$", r"\1"),
]
_RULES = [(re.compile(a), b) for a, b in _RULES]
_MHA = re.compile(r"^(.+)\.in_proj_(weight|bias)$")


def _leaf(module: str, leaf: str, w: np.ndarray) -> tuple[str, np.ndarray]:
    """(our name, Flax-layout array) of one official tensor, ``module`` already in our path form."""
    if module in ("ctrl_point_embed", "text_embed", "transformer/level_embed") and leaf in ("weight", ""):
        return module, w
    if leaf == "bias":
        return f"{module}/bias", w
    if leaf == "weight" and w.ndim == 4:
        return f"{module}/kernel", w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if leaf == "weight" and w.ndim == 2:
        return f"{module}/kernel", w.T
    if leaf == "weight" and w.ndim == 1:
        return f"{module}/scale", w
    raise CheckpointMismatchError(f"unexpected tensor layout {module}.{leaf} {w.shape}")


def _convert(name: str, w: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """One official tensor -> [(our name, array)] (three for a packed attention projection)."""
    mha = _MHA.match(name)
    if mha:
        module = next(rx.sub(repl, mha.group(1)) for rx, repl in _RULES if rx.match(mha.group(1))).replace(".", "/")
        parts = np.split(w, 3, axis=0)
        kind = "kernel" if mha.group(2) == "weight" else "bias"
        return [
            (f"{module}/{p}_proj/{kind}", x.T if kind == "kernel" else x) for p, x in zip("qkv", parts, strict=True)
        ]
    if name == "transformer.level_embed":
        return [("transformer/level_embed", w)]
    module, leaf = name.rsplit(".", 1)
    module = next(rx.sub(repl, module) for rx, repl in _RULES if rx.match(module)).replace(".", "/")
    return [_leaf(module, leaf, w)]


_INVERSE = [
    (r"^input_proj/(\d+)/conv/", r"input_proj.\1.0."),
    (r"^input_proj/(\d+)/norm/", r"input_proj.\1.1."),
    (r"^transformer/(\w+)_layers/(\d+)/ffn(_text)?/linear([12])/", r"transformer.\1.layers.\2.linear\4\3."),
    (r"^transformer/(\w+)_layers/", r"transformer.\1.layers."),
    (r"/[qkv]_proj/kernel$", ".in_proj_weight"),
    (r"/[qkv]_proj/bias$", ".in_proj_bias"),
    (r"^(ctrl_point_class|ctrl_point_coord)/", r"\1.0."),
    (r"^(ctrl_point_embed|text_embed)$", r"\1.weight"),
    (r"[./](kernel|scale)$", ".weight"),
]


def official_name(ours: str) -> str:
    """The official name of one of our flat parameter names (for error messages)."""
    for rx, repl in _INVERSE:
        ours = re.sub(rx, repl, ours)
    return ours.replace("/", ".")


def official_to_flat(sd: Flat) -> tuple[Flat, dict[str, str]]:
    """Official tensors -> (our flat ``/`` names, our name -> the official name it came from). Copies of a shared
    module must agree; ``text_pos_embed.inv_freq`` must equal the formula."""
    out: Flat = {}
    origin: dict[str, str] = {}
    for name in sorted(sd):
        w = np.asarray(sd[name])
        if name == "text_pos_embed.inv_freq":
            dim = 2 * w.shape[0]
            expected = 1.0 / 10000.0 ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
            if not np.allclose(w, expected, rtol=1e-6, atol=0):
                raise CheckpointMismatchError(f"{name} differs from PositionalEncoding1D's fixed frequencies")
            continue
        for key, value in _convert(name, w):
            if key in out:
                if out[key].shape != value.shape or not np.array_equal(out[key], value):
                    raise CheckpointMismatchError(
                        f"{name} and {origin[key]} are one shared module in TESTR but hold different values"
                    )
                continue
            out[key], origin[key] = value, name
    return out, origin


def _points(sd: Flat, name: str, heads: int, levels: int, given: int | None, what: str) -> int:
    rows = sd[name].shape[0]
    points, rest = divmod(rows, heads * levels)
    if rest or points == 0:
        raise CheckpointMismatchError(
            f"{name} {sd[name].shape}: {rows} rows are not heads {heads} x levels {levels} x points"
        )
    if given is not None and given != points:
        raise CheckpointMismatchError(
            f"{what}={given}, but {name} {sd[name].shape} holds {points} points per head and level"
        )
    return points


def config_from_official(
    sd: Flat,
    *,
    heads: int = 8,
    enc_points: int | None = None,
    dec_points: int | None = None,
    voc_size: int | None = None,
    **fields: Any,
) -> TESTRConfig:
    """A ``TESTRConfig`` from the (un-prefixed, backbone-free) official tensors: sizes from their shapes (the given
    ``enc_points`` / ``dec_points`` / ``voc_size`` checked against them), ``heads`` and the other ``TESTRConfig``
    ``fields`` (``num_queries``, ``use_polygon``, ``strides``, ``dropout``...) from the arguments."""

    def need(name: str) -> np.ndarray:
        if name not in sd:
            raise CheckpointMismatchError(f"official TESTR checkpoint lacks tensor {name!r}")
        return sd[name]

    levels, dim = need("transformer.level_embed").shape
    if dim % heads:
        raise CheckpointMismatchError(f"width {dim} (transformer.level_embed) is not divisible by heads={heads}")
    enc_layers = _count(sd, r"transformer\.encoder\.layers\.(\d+)\.")
    dec_layers = _count(sd, r"transformer\.decoder\.layers\.(\d+)\.")
    if not enc_layers or not dec_layers:
        raise CheckpointMismatchError(
            f"official TESTR checkpoint has {enc_layers} encoder / {dec_layers} decoder layers"
        )
    need("transformer.encoder.layers.0.self_attn.attention_weights.weight")
    need("transformer.decoder.layers.0.attn_cross.attention_weights.weight")
    enc_points = _points(
        sd, "transformer.encoder.layers.0.self_attn.attention_weights.weight", heads, levels, enc_points, "enc_points"
    )
    dec_points = _points(
        sd, "transformer.decoder.layers.0.attn_cross.attention_weights.weight", heads, levels, dec_points, "dec_points"
    )
    texts = need("text_class.weight").shape[0]
    if voc_size is not None and voc_size + 1 != texts:
        raise CheckpointMismatchError(
            f"voc_size={voc_size}, but text_class.weight {sd['text_class.weight'].shape} has {texts} classes"
        )
    n_proj = _count(sd, r"input_proj\.(\d+)\.0\.weight")
    if levels > 1:
        fields["backbone_channels"] = tuple(
            int(need(f"input_proj.{i}.0.weight").shape[1])
            for i in range(n_proj)
            if need(f"input_proj.{i}.0.weight").shape[2:] == (1, 1)
        )
    return TESTRConfig(
        dim=int(dim),
        heads=heads,
        levels=int(levels),
        enc_layers=enc_layers,
        dec_layers=dec_layers,
        ffn=int(need("transformer.encoder.layers.0.linear1.weight").shape[0]),
        enc_points=enc_points,
        dec_points=dec_points,
        ctrl_points=int(need("ctrl_point_embed.weight").shape[0]),
        chars=int(need("text_embed.weight").shape[0]),
        voc_size=texts - 1,
        **fields,
    )


def read_testr_state(path: str) -> Flat:
    """The tensors of an official TESTR checkpoint re-saved as ``.safetensors`` (pickles refused with the recipe)."""
    if path.endswith(PICKLE_SUFFIXES):
        raise ValueError(PICKLE_HELP.format(path=path))
    return read_official_state(path)


def split_official_state(sd: Flat) -> tuple[Flat, Flat]:
    """(TESTR tensors, ``backbone.*`` tensors), both without the detectron2 ``testr.`` prefix."""
    sd = {k.removeprefix("testr."): v for k, v in sd.items()}
    backbone = {k: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
    return {k: v for k, v in sd.items() if k not in backbone}, backbone


@functools.lru_cache(maxsize=8)
def _abstract(build: Callable[..., nnx.Module], *args: Any) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph and abstract state of ``build(*args)`` (cached: tracing the initialisers takes about a second)."""
    return nnx.split(nnx.eval_shape(lambda: build(*args)))


def _zeros_model(build: Callable[..., nnx.Module], *args: Any) -> nnx.Module:
    """A zero-filled concrete model of ``build(*args)``'s structure (its values are overwritten right after)."""
    graphdef, state = _abstract(build, *args)
    return nnx.merge(graphdef, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state))


def _build_testr(config: TESTRConfig) -> TESTR:
    return TESTR(config, rngs=nnx.Rngs(0))


def _build_resnet(cfg: ResNetConfig, dtype: str) -> ResNet:
    return ResNet(cfg, rngs=nnx.Rngs(0), dtype=dtype)


def _check_assign(model: nnx.Module, flat: Flat, origin: dict[str, str], source: str, describe: str) -> None:
    """Copy ``flat`` into ``model``; a missing, unexpected or mis-shaped tensor is an error naming it officially."""
    target = model_flat_state(model)
    problems = [f"unexpected tensor {origin[k]!r}" for k in sorted(set(flat) - set(target))]
    problems += [f"missing tensor {official_name(k)!r}" for k in sorted(set(target) - set(flat))]
    problems += [
        f"tensor {origin[k]!r} has shape {tuple(np.shape(flat[k]))} in Flax layout, the model needs "
        f"{tuple(target[k].shape)}"
        for k in sorted(set(flat) & set(target))
        if tuple(np.shape(flat[k])) != tuple(target[k].shape)
    ]
    if problems:
        raise CheckpointMismatchError(f"{source} does not match {describe}:\n  " + "\n  ".join(problems[:20]))
    assign_flat(model, flat)


def from_official_testr(
    path: str | Flat,
    *,
    heads: int = 8,
    enc_points: int | None = None,
    dec_points: int | None = None,
    num_queries: int = 100,
    voc_size: int | None = None,
    use_polygon: bool = True,
    strides: tuple[int, ...] = (8, 16, 32),
    dropout: float = 0.1,
    isolate_padding: bool = False,
    dtype: str = "float32",
) -> TESTR:
    """A ``TESTR`` (eval mode) holding an official checkpoint (a ``.safetensors`` path or a state dict); see the
    module docstring for what is inferred and what the keyword arguments set."""
    raw = read_testr_state(path) if isinstance(path, str) else dict(path)
    sd, backbone = split_official_state(raw)
    if backbone:
        logging.info("from_official_testr: %d backbone tensors are not part of TESTR; skipped", len(backbone))
    config = config_from_official(
        sd,
        heads=heads,
        enc_points=enc_points,
        dec_points=dec_points,
        voc_size=voc_size,
        num_queries=num_queries,
        use_polygon=use_polygon,
        strides=tuple(strides),
        dropout=dropout,
        isolate_padding=isolate_padding,
        dtype=dtype,
    )
    flat, origin = official_to_flat(sd)
    model = _zeros_model(_build_testr, config)
    source = path if isinstance(path, str) else "official TESTR state dict"
    _check_assign(model, flat, origin, source, f"TESTR {config}")
    model.eval()
    return model


def split_clip_state(backbone: Flat) -> tuple[Flat, Flat]:
    """(TESTR-CLIP's own tensors with the ``backbone.0.`` prefix removed, the other ``backbone.*`` tensors) of the
    ``backbone.*`` part of a checkpoint (``CLIPMaskedBackbone``: ``backbone.0.text_encoder.*``, ``contexts``, ...
    beside its detectron2 ResNet ``backbone.0.backbone.*``)."""
    is_clip = {k: k.startswith(CLIP_PREFIX) and not k.startswith(RESNET_PREFIXES) for k in backbone}
    clip = {k.removeprefix(CLIP_PREFIX): v for k, v in backbone.items() if is_clip[k]}
    return clip, {k: v for k, v in backbone.items() if not is_clip[k]}


def _build_prompting(config: FastTCMConfig, prompt_ids: tuple | None) -> TextPrompting:
    return TextPrompting(config, rngs=nnx.Rngs(0), prompt_ids=None if prompt_ids is None else np.asarray(prompt_ids))


def from_official_testr_clip(
    path: str | Flat,
    *,
    fast: bool = False,
    text_heads: int = 8,
    decoder_heads: int = 4,
    prompt_ids: np.ndarray | None = None,
    clip_dropout: float = 0.1,
    pixel_target: str = "binary",
    pix_loss_weight: float = 1.0,
    stride_in_1x1: bool = False,
    freeze_at: int = 2,
    **testr_kwargs,
) -> TESTRTCM:
    """A ``TESTRTCM`` (eval mode, ``backbone="r50"``) holding an official TESTR-CLIP checkpoint (TCM's
    ``CLIPTransformerDetector``; ``fast=True`` for an ``is_v2`` one, whose ``pix_w`` must then be [C, C]: the
    released [1024, 512] one cannot run, tcm.md §2.5).

    TESTR's tensors load as in ``from_official_testr`` (``testr_kwargs`` go there; ``isolate_padding`` defaults to
    True here, False reproduces the official code on padded batches); the CLIP side (``backbone.0.text_encoder.*``,
    ``contexts``, ``prompt_generator.*``, ``visual_prompt_generator.*``, ``context_decoder.*``, ``gamma``,
    ``vis_gamma``, ``meta_query``, ``pix_w``) as in ``models.fasttcm.official`` (sizes from shapes; CLIP text heads
    ``text_heads``, decoder heads ``decoder_heads``; ``prompt_ids`` [1, L]: the tokenised prompt, None = OpenAI's
    tokenizer on the code's prompt); ``score_map_concat_gamma`` (used only with ``use_score_map_concat_gamma``,
    off in every released config) is skipped. The detectron2 ResNet (``backbone.0.backbone.*``) becomes the
    backbone when present; without it the model runs ``forward_features`` on given res3..res5."""
    raw = read_testr_state(path) if isinstance(path, str) else dict(path)
    sd = {k.removeprefix("testr."): v for k, v in raw.items()}
    testr_sd, backbone_sd = split_official_state(sd)
    clip_sd, resnet_sd = split_clip_state(backbone_sd)
    if not clip_sd:
        raise CheckpointMismatchError(f"no TESTR-CLIP tensors ({CLIP_PREFIX}text_encoder.* ...) in the checkpoint")
    clip_sd = {k: v for k, v in clip_sd.items() if k not in UNUSED_CLIP}
    if "logit_scale" in clip_sd:
        raise CheckpointMismatchError("logit_scale (scale_matching_score_map=True) is not supported")
    testr_kwargs.setdefault("isolate_padding", True)
    testr = from_official_testr(testr_sd, **testr_kwargs)
    text_proj = fasttcm_official._need(clip_sd, "text_encoder.text_projection")
    prompting = fasttcm_official.prompting_config_from_official(
        clip_sd,
        vision=default_clip().vision,
        embed_dim=int(text_proj.shape[1]),
        fast=fast,
        text_heads=text_heads,
        decoder_heads=decoder_heads,
        dropout=clip_dropout,
        dtype=testr.config.dtype,
    )
    fasttcm_official.check_prompt_ids(prompting, prompt_ids)
    ids = None if prompt_ids is None else tuple(tuple(int(i) for i in row) for row in np.asarray(prompt_ids))
    clip = _zeros_model(_build_prompting, prompting, ids)
    source = path if isinstance(path, str) else "official TESTR-CLIP state dict"
    assign_flat(clip, fasttcm_official.official_to_flat(clip_sd), f"{source} (CLIP side)")
    backbone = None
    resnet_prefix = next((p for p in RESNET_PREFIXES if any(k.startswith(p) for k in resnet_sd)), None)
    if resnet_prefix is not None:
        resnet = {k.removeprefix(resnet_prefix): v for k, v in resnet_sd.items() if k.startswith(resnet_prefix)}
        backbone = resnet_from_official(resnet, stride_in_1x1=stride_in_1x1, freeze_at=freeze_at)
    stray = sorted(k for k in resnet_sd if resnet_prefix is None or not k.startswith(resnet_prefix))
    if stray:
        raise CheckpointMismatchError(f"unexpected backbone tensor(s): {stray[:12]}")
    config = TESTRTCMConfig(
        testr=testr.config,
        prompting=prompting,
        backbone="r50",
        resnet=backbone.cfg if backbone is not None else ResNetConfig(),
        pixel_target=pixel_target,
        pix_loss_weight=pix_loss_weight,
    )
    model = TESTRTCM(config, backbone, clip, testr)
    model.eval()
    return model


def resnet_from_official(
    sd: Flat, *, stride_in_1x1: bool = False, freeze_at: int = 2, dtype: str = "float32"
) -> ResNet:
    """detectron2 ResNet tensors (``stem.*``, ``res2..res5.*``, no prefix) -> ``ResNet`` with the layout read from
    their shapes (blocks per stage, widths); the stride position and frozen stages are arguments."""
    for name in ("stem.conv1.weight", *(f"{s}.0.conv{k}.weight" for s in STAGES for k in (1, 3))):
        if name not in sd:
            raise CheckpointMismatchError(f"official ResNet weights lack tensor {name!r}")
    cfg = ResNetConfig(
        blocks=tuple(_count(sd, rf"{s}\.(\d+)\.") for s in STAGES),
        stem_width=int(sd["stem.conv1.weight"].shape[0]),
        bottleneck=tuple(int(sd[f"{s}.0.conv1.weight"].shape[0]) for s in STAGES),
        out=tuple(int(sd[f"{s}.0.conv3.weight"].shape[0]) for s in STAGES),
        stride_in_1x1=stride_in_1x1,
        freeze_at=freeze_at,
    )
    flat = {k.replace(".", "/"): (v.transpose(2, 3, 1, 0) if v.ndim == 4 else v) for k, v in sd.items()}
    model = _zeros_model(_build_resnet, cfg, dtype)
    _check_assign(model, flat, {k.replace(".", "/"): k for k in sd}, "official ResNet weights", f"ResNet {cfg}")
    return model


def from_official_testr_detector(
    path: str | Flat, *, stride_in_1x1: bool = False, freeze_at: int = 2, **testr_kwargs
) -> TESTRDetector:
    """The whole official detector: detectron2 ResNet (``backbone.0.backbone.*``) + TESTR, eval mode.
    ``testr_kwargs`` go to ``from_official_testr``."""
    raw = read_testr_state(path) if isinstance(path, str) else dict(path)
    sd = {k.removeprefix("testr."): v for k, v in raw.items()}
    prefix = next((p for p in RESNET_PREFIXES if any(k.startswith(p) for k in sd)), None)
    if prefix is None:
        raise CheckpointMismatchError(
            f"no detectron2 ResNet tensors ({' or '.join(RESNET_PREFIXES)}*) in the checkpoint"
        )
    resnet = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    stray = sorted(k for k in sd if k.startswith(BACKBONE_PREFIX) and not k.startswith(prefix))
    if stray:
        raise CheckpointMismatchError(f"unexpected backbone tensor(s): {stray[:12]}")
    backbone = resnet_from_official(
        resnet, stride_in_1x1=stride_in_1x1, freeze_at=freeze_at, dtype=testr_kwargs.get("dtype", "float32")
    )
    testr = from_official_testr({k: v for k, v in sd.items() if not k.startswith(BACKBONE_PREFIX)}, **testr_kwargs)
    if backbone.cfg.out[-len(testr.config.backbone_channels) :] != testr.config.backbone_channels:
        raise CheckpointMismatchError(
            f"ResNet outputs {backbone.cfg.out} do not feed TESTR's input_proj ({testr.config.backbone_channels})"
        )
    model = TESTRDetector(backbone, testr)
    model.eval()
    return model


def from_official_spotter(path: str | Flat, **kwargs) -> TESTRDetector | TESTRTCM:
    """The official spotter a checkpoint holds: TESTR-CLIP (``from_official_testr_clip``) when it has the
    ``backbone.0.text_encoder.*`` tensors, plain TESTR with its ResNet (``from_official_testr_detector``)
    otherwise; ``kwargs`` go to the one chosen (``spot --spotter=FILE.safetensors`` and ``configs/testr.py:eval``)."""
    raw = read_testr_state(path) if isinstance(path, str) else dict(path)
    tcm = any(k.removeprefix("testr.").startswith(f"{CLIP_PREFIX}text_encoder.") for k in raw)
    return (from_official_testr_clip if tcm else from_official_testr_detector)(raw, **kwargs)
