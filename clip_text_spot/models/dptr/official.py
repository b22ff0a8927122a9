"""Official recognition checkpoints in our modules: baudm/parseq's PARSeq and OpenOCR's DPTR (``DptrParseq``).

Both take a state dict re-saved as ``.safetensors`` (this project never unpickles; see the README's DPTR section
for the one-line re-save) and the official constructor's keyword names; whatever tensor shapes tell (widths,
depths, MLP ratios, patch size, ``max_label_length``, the FMU's query count, the class count) is read from them,
and a keyword that contradicts a shape is an error naming both. A missing, unexpected or mis-shaped tensor is an
error naming it. The result is in eval mode.

* ``load_parseq``: names as in the released ``.pt`` files (``encoder.*``, ``decoder.*``, ``head.*``,
  ``text_embed.embedding.weight``, ``pos_queries``) or with the Lightning ``model.`` prefix. The timm ViT encoder
  (no class token, LayerNorm eps 1e-6, packed ``qkv``) becomes our ``RecViT`` with ``norm_eps=1e-6``, the decoder
  our ``ParseqDecoder`` reading the encoder tokens directly (no FMU).
* ``from_openocr_dptr``: OpenOCR's ``BaseRecognizer`` state dict. A fine-tuning checkpoint (``encoder.*`` = the
  OpenOCR ViT, ``decoder.token_query`` + ``decoder.fmu.*`` = the FMU, ``decoder.decoder.*``, ``decoder.head.*``,
  ``decoder.text_embed.*``, ``decoder.pos_queries``) gives a ``DptrRecognizer``; a pre-training checkpoint (the
  decoder only) a ``DptrPretrainModel`` without CLIP, whose ``decoder.predict(memory)`` decodes CLIP memories
  [B, 78, d]. The frozen CLIP kept in pre-training checkpoints (``decoder.clip_encoder.*``, OpenAI ViT-B/16) is
  skipped: load it with ``clip_text_spot.models.clip.load_pretrained``.

Token layout of both: EOS 0, the charset 1..C, BOS C+1, PAD C+2 (``Charset``); the default charset is the 94
English characters (PARSeq's ``94_full``, OpenOCR's ``EN_symbol_dict.txt``). Inputs: RGB resized to ``img_size``
(bicubic), ``x = (u8 / 255 - 0.5) / 0.5``, NHWC.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from clip_text_spot.data.rec_labels import EN_CHARSET, Charset
from clip_text_spot.models.clip.convert import (
    PICKLE_SUFFIXES,
    CheckpointMismatchError,
    _materialize,
    assign_flat,
    model_flat_state,
)
from clip_text_spot.models.dptr.config import DecoderConfig, EncoderConfig
from clip_text_spot.models.dptr.pretrain import DptrPretrainModel
from clip_text_spot.models.dptr.recognizer import DptrRecognizer

Flat = dict[str, np.ndarray]

RESAVE_HELP = """\
{path} is a pickle file; clip_text_spot never unpickles (it can run arbitrary code). Re-save it once as
safetensors on a machine with PyTorch:

  python -c "import torch; from safetensors.torch import save_file; \\
      sd = torch.load('{path}', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); \\
      save_file({{k: v.float().contiguous() for k, v in sd.items()}}, 'model.safetensors')"
"""

PARSEQ_DEFAULTS: dict[str, Any] = {
    "img_size": (32, 128),
    "decode_ar": True,
    "refine_iters": 1,
    "dropout": 0.1,
    "perm_num": 6,
    "perm_forward": True,
    "perm_mirrored": True,
    "charset_train": EN_CHARSET,
}
"""The released ``parseq`` model's values of what shapes cannot tell (``configs/main.yaml``, ``model/parseq.yaml``);
the head counts default to ``embed_dim / 64`` (encoder) and ``embed_dim / 32`` (decoder): 6 and 12 for
``parseq`` (d 384), 3 and 6 for ``parseq_tiny`` (d 192)."""

PARSEQ_SHAPED = (
    "embed_dim",
    "max_label_length",
    "patch_size",
    "enc_depth",
    "dec_depth",
    "enc_mlp_ratio",
    "dec_mlp_ratio",
)
PARSEQ_TRAINING_ONLY = ("charset_test", "batch_size", "lr", "warmup_pct", "weight_decay", "name", "_target_")

DPTR_DECODER_DEFAULTS: dict[str, Any] = {
    "dec_num_heads": 8,
    "perm_num": 6,
    "perm_forward": True,
    "perm_mirrored": True,
    "decode_ar": True,
    "refine_iters": 1,
    "dropout": 0.1,
}
"""``DptrParseq``'s constructor defaults of what shapes cannot tell."""

DPTR_DECODER_SHAPED = ("embed_dim", "max_label_length", "dec_depth", "dec_mlp_ratio", "out_channels")
DPTR_DECODER_IGNORED = ("in_channels", "is_pretrain", "ORP_path", "name")

VIT_DEFAULTS: dict[str, Any] = {"img_size": (32, 128), "num_heads": 8}
"""The DPTR fine-tuning config's ``ViT`` (``embed_dim=512, num_heads=8``, OpenOCR's 32x128 default input)."""

VIT_SHAPED = ("embed_dim", "patch_size", "depth", "mlp_ratio")
VIT_FIXED = {
    "in_channels": 3,
    "qkv_bias": True,
    "qk_scale": None,
    "last_stage": False,
    "feat2d": False,
    "use_cls_token": False,
}
"""OpenOCR ``ViT`` keywords whose other values our ``RecViT`` does not implement (their defaults, DPTR's config)."""
VIT_IGNORED = ("out_channels", "drop_rate", "attn_drop_rate", "drop_path_rate", "name")


class StateDict:
    """An official state dict being mapped: every read tensor is marked used, so leftovers can be named, and
    ``origin`` maps our names to the official ones they came from, so mis-shaped tensors can be."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str):
        self.tensors = dict(tensors)
        self.source = source
        self.used: set[str] = set()
        self.origin: dict[str, str] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.tensors:
            raise CheckpointMismatchError(f"{self.source}: missing tensor {name!r}")
        return tuple(self.tensors[name].shape)

    def take(self, name: str, *ours: str) -> np.ndarray:
        """The float32 tensor ``name``, which becomes our tensor(s) ``ours``."""
        self.shape(name)
        self.used.add(name)
        self.origin.update(dict.fromkeys(ours, name))
        return np.asarray(self.tensors[name], np.float32)

    def count(self, prefix: str) -> int:
        """Number of consecutive indices ``N`` with tensors named ``{prefix}N.*``."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = {int(m.group(1)) for name in self.tensors if (m := pattern.match(name))}
        if sorted(found) != list(range(len(found))):
            raise CheckpointMismatchError(f"{self.source}: layers {sorted(found)} under {prefix!r} are not 0..N-1")
        return len(found)

    def check_all_used(self, skip: tuple[str, ...] = ()) -> None:
        left = sorted(k for k in self.tensors if k not in self.used and not k.startswith(skip))
        if left:
            raise CheckpointMismatchError(f"{self.source}: unexpected tensor(s) ({len(left)}): {left[:12]}")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A ``.safetensors`` state dict; pickles are refused with the re-save instructions."""
    if path.endswith(PICKLE_SUFFIXES):
        raise ValueError(RESAVE_HELP.format(path=path))
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a .safetensors file")
    return load_file(path)


def _options(
    given: Mapping[str, Any], defaults: Mapping[str, Any], shaped: Iterable[str], ignored: Iterable[str], what: str
) -> dict[str, Any]:
    """``defaults`` updated by ``given``; a name that is none of defaults/shaped/ignored is an error."""
    known = set(defaults) | set(shaped) | set(ignored)
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown {what} keyword(s) {unknown}; known: {sorted(known)}")
    return {**defaults, **given}


def _agree(given: Mapping[str, Any], key: str, value: Any, tensor: str) -> Any:
    """``value`` (read from ``tensor``'s shape); a given ``key`` must equal it."""
    if key in given:
        want = tuple(given[key]) if isinstance(given[key], list | tuple) else given[key]
        if want != value:
            raise CheckpointMismatchError(
                f"{key}={given[key]!r} contradicts the checkpoint: {tensor} implies {value!r}"
            )
    return value


def _ratio(sd: StateDict, hidden: str, width: int, given: Mapping[str, Any], key: str) -> int:
    rows = sd.shape(hidden)[0]
    if rows % width:
        raise CheckpointMismatchError(f"{hidden}: hidden width {rows} is not a whole multiple of {width}")
    ratio = _agree(given, key, rows // width, hidden)
    return int(ratio)


# ----------------------------------------------------------------------------------------------------------------
# name mapping (official names -> our flat ``/`` names)


def _copy(sd: StateDict, src: str, dst: str) -> Flat:
    return {dst: sd.take(src, dst)}


def _linear(sd: StateDict, src: str, dst: str) -> Flat:
    kernel, bias = f"{dst}/kernel", f"{dst}/bias"
    return {kernel: sd.take(f"{src}.weight", kernel).T, bias: sd.take(f"{src}.bias", bias)}


def _norm(sd: StateDict, src: str, dst: str) -> Flat:
    return {f"{dst}/scale": sd.take(f"{src}.weight", f"{dst}/scale"), **_copy(sd, f"{src}.bias", f"{dst}/bias")}


def _packed_attention(sd: StateDict, weight: str, bias: str, out: str, dst: str) -> Flat:
    """A packed [3d, d] q/k/v projection (torch ``in_proj_*``, timm ``qkv``) and its output projection."""
    flat = _linear(sd, out, f"{dst}/out_proj")
    names = ("q_proj", "k_proj", "v_proj")
    for src, leaf in ((weight, "kernel"), (bias, "bias")):
        if sd.shape(src)[0] % 3:
            raise CheckpointMismatchError(f"{sd.source}: {src} {sd.shape(src)} does not split into q, k and v")
        parts = np.split(sd.take(src, *(f"{dst}/{n}/{leaf}" for n in names)), 3)
        flat |= {f"{dst}/{n}/{leaf}": p.T for n, p in zip(names, parts, strict=True)}
    return flat


def _torch_mha(sd: StateDict, src: str, dst: str) -> Flat:
    return _packed_attention(sd, f"{src}.in_proj_weight", f"{src}.in_proj_bias", f"{src}.out_proj", dst)


def _vit(sd: StateDict, src: str, depth: int) -> Flat:
    """timm / OpenOCR ViT (``patch_embed.proj``, ``pos_embed``, ``blocks.N``, ``norm``) -> our ``RecViT``."""
    flat = {
        "encoder/patch_embed/kernel": sd.take(f"{src}patch_embed.proj.weight", "encoder/patch_embed/kernel").transpose(
            2, 3, 1, 0
        ),
        **_copy(sd, f"{src}patch_embed.proj.bias", "encoder/patch_embed/bias"),
        **_copy(sd, f"{src}pos_embed", "encoder/pos_embed"),
        **_norm(sd, f"{src}norm", "encoder/norm"),
    }
    for i in range(depth):
        s, d = f"{src}blocks.{i}", f"encoder/blocks/layers/{i}"
        flat |= _packed_attention(sd, f"{s}.attn.qkv.weight", f"{s}.attn.qkv.bias", f"{s}.attn.proj", f"{d}/self_attn")
        flat |= _norm(sd, f"{s}.norm1", f"{d}/layer_norm1") | _norm(sd, f"{s}.norm2", f"{d}/layer_norm2")
        flat |= _linear(sd, f"{s}.mlp.fc1", f"{d}/mlp/fc1") | _linear(sd, f"{s}.mlp.fc2", f"{d}/mlp/fc2")
    return flat


def _decoder(sd: StateDict, top: str, stack: str, depth: int) -> Flat:
    """PARSeq's decoder: ``{top}text_embed``, ``{top}pos_queries``, ``{top}head``, ``{stack}layers.N``,
    ``{stack}norm`` -> our ``decoder`` subtree."""
    flat = {
        **_copy(sd, f"{top}text_embed.embedding.weight", "decoder/text_embed/embedding"),
        **_copy(sd, f"{top}pos_queries", "decoder/pos_queries"),
        **_linear(sd, f"{top}head", "decoder/head"),
        **_norm(sd, f"{stack}norm", "decoder/norm"),
    }
    for i in range(depth):
        s, d = f"{stack}layers.{i}", f"decoder/layers/{i}"
        flat |= _torch_mha(sd, f"{s}.self_attn", f"{d}/self_attn") | _torch_mha(
            sd, f"{s}.cross_attn", f"{d}/cross_attn"
        )
        flat |= _linear(sd, f"{s}.linear1", f"{d}/mlp/fc1") | _linear(sd, f"{s}.linear2", f"{d}/mlp/fc2")
        for norm in ("norm1", "norm2", "norm_q", "norm_c"):
            flat |= _norm(sd, f"{s}.{norm}", f"{d}/{norm}")
    return flat


def _fmu(sd: StateDict) -> Flat:
    return {
        **_copy(sd, "decoder.token_query", "fmu/token_query"),
        **_torch_mha(sd, "decoder.fmu.cross_attn", "fmu/cross_attn"),
        **_linear(sd, "decoder.fmu.linear1", "fmu/mlp/fc1"),
        **_linear(sd, "decoder.fmu.linear2", "fmu/mlp/fc2"),
        **_norm(sd, "decoder.fmu.norm", "fmu/norm"),
    }


# ----------------------------------------------------------------------------------------------------------------
# configs read from shapes


def _decoder_config(
    sd: StateDict,
    top: str,
    stack: str,
    opts: Mapping[str, Any],
    given: Mapping[str, Any],
    heads_key: str,
    fmu_queries: int,
) -> DecoderConfig:
    _, steps, dim = sd.shape(f"{top}pos_queries")
    dim = _agree(given, "embed_dim", dim, f"{top}pos_queries")
    max_len = _agree(given, "max_label_length", steps - 1, f"{top}pos_queries")
    return DecoderConfig(
        dim=dim,
        depth=_agree(given, "dec_depth", sd.count(f"{stack}layers."), f"{stack}layers.*"),
        heads=int(opts[heads_key]),
        mlp_ratio=_ratio(sd, f"{stack}layers.0.linear1.weight", dim, given, "dec_mlp_ratio"),
        dropout=float(opts["dropout"]),
        max_len=max_len,
        num_perms=int(opts["perm_num"]),
        perm_forward=bool(opts["perm_forward"]),
        perm_mirrored=bool(opts["perm_mirrored"]),
        refine_iters=int(opts["refine_iters"]),
        decode_ar=bool(opts["decode_ar"]),
        fmu_queries=fmu_queries,
    )


def _encoder_config(
    sd: StateDict, src: str, img_size: Any, heads: int, given: Mapping[str, Any], keys: Mapping[str, str], eps: float
) -> EncoderConfig:
    """``keys`` maps our roles (width, depth, mlp_ratio, patch_size) to the official keyword names."""
    proj = f"{src}patch_embed.proj.weight"
    width, _, ph, pw = sd.shape(proj)
    width = _agree(given, keys["width"], width, proj)
    patch = _agree(given, "patch_size", (ph, pw), proj)
    cfg = EncoderConfig(
        image_size=tuple(int(s) for s in img_size),
        patch_size=patch,
        width=width,
        depth=_agree(given, keys["depth"], sd.count(f"{src}blocks."), f"{src}blocks.*"),
        heads=int(heads),
        mlp_ratio=_ratio(sd, f"{src}blocks.0.mlp.fc1.weight", width, given, keys["mlp_ratio"]),
        norm_eps=eps,
    )
    positions = sd.shape(f"{src}pos_embed")[1]
    if positions != cfg.num_patches:
        raise CheckpointMismatchError(
            f"{src}pos_embed has {positions} positions but img_size {cfg.image_size} with patch {patch} gives "
            f"{cfg.num_patches} (pass the model's img_size)"
        )
    return cfg


def _charset(sd: StateDict, head: str, chars: str, max_len: int) -> Charset:
    classes = sd.shape(f"{head}.weight")[0]
    if classes != len(chars) + 1:
        raise CheckpointMismatchError(
            f"{head}.weight predicts {classes} classes but the charset has {len(chars)} characters (+ EOS)"
        )
    return Charset(chars, max_len=max_len, unicode_to_ascii=all(ord(c) < 128 for c in chars))


def _build(klass: type, sd: StateDict, flat: Flat, *args: Any) -> Any:
    """``klass(*args)`` holding ``flat``; a tensor whose shape differs from the model's is named as ``sd`` calls it."""
    model = _materialize(nnx.eval_shape(lambda: klass(*args, rngs=nnx.Rngs(0))))
    want = model_flat_state(model)
    bad = [
        f"{sd.origin.get(k, k)}: {tuple(v.shape)} (as {k}) vs model {tuple(want[k].shape)}"
        for k, v in flat.items()
        if k in want and tuple(v.shape) != tuple(want[k].shape)
    ]
    if bad:
        raise CheckpointMismatchError(f"{sd.source}: mis-shaped tensor(s) ({len(bad)}): {bad[:12]}")
    assign_flat(model, flat, sd.source)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------------------
# entry points


def load_parseq(path: str, **kwargs: Any) -> DptrRecognizer:
    """A released PARSeq checkpoint (re-saved as safetensors) as a ``DptrRecognizer`` (no FMU).

    ``kwargs`` are ``strhub.models.utils.create_model``'s names (``img_size``, ``enc_num_heads``,
    ``dec_num_heads``, ``decode_ar``, ``refine_iters``, ``charset_train``, ...; shape-given ones are checked; the
    training-only ``charset_test``, ``batch_size``, ``lr``, ``warmup_pct``, ``weight_decay`` are ignored); defaults:
    the released ``parseq`` (``PARSEQ_DEFAULTS``).
    """
    tensors = read_state_dict(path)
    if tensors and all(k.startswith("model.") for k in tensors):
        tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    sd = StateDict(tensors, f"PARSeq checkpoint {path}")
    opts = _options(
        kwargs, PARSEQ_DEFAULTS, (*PARSEQ_SHAPED, "enc_num_heads", "dec_num_heads"), PARSEQ_TRAINING_ONLY, "PARSeq"
    )
    dim = sd.shape("pos_queries")[2]
    opts.setdefault("enc_num_heads", max(dim // 64, 1))
    opts.setdefault("dec_num_heads", max(dim // 32, 1))
    decoder = _decoder_config(sd, "", "decoder.", opts, kwargs, "dec_num_heads", fmu_queries=0)
    roles = {"width": "embed_dim", "depth": "enc_depth", "mlp_ratio": "enc_mlp_ratio"}
    encoder = _encoder_config(sd, "encoder.", opts["img_size"], opts["enc_num_heads"], kwargs, roles, eps=1e-6)
    charset = _charset(sd, "head", opts["charset_train"], decoder.max_len)
    flat = _vit(sd, "encoder.", encoder.depth) | _decoder(sd, "", "decoder.", decoder.depth)
    sd.check_all_used()
    return _build(DptrRecognizer, sd, flat, encoder, decoder, charset)


def from_openocr_dptr(
    path: str, *, decoder: Mapping[str, Any], encoder: Mapping[str, Any] | None = None, charset: str = EN_CHARSET
) -> DptrRecognizer | DptrPretrainModel:
    """An OpenOCR DPTR checkpoint (re-saved as safetensors): fine-tuning -> ``DptrRecognizer`` (ViT, FMU with the
    checkpoint's query count, decoder); pre-training -> ``DptrPretrainModel`` without CLIP (see module docstring).

    ``decoder``: ``DptrParseq``'s keywords (``dec_num_heads``, ``refine_iters``, ``out_channels``, ...);
    ``encoder``: OpenOCR ``ViT``'s (``num_heads``, ``img_size``, ...), unused for pre-training checkpoints;
    defaults: the official configs (``DPTR_DECODER_DEFAULTS``, ``VIT_DEFAULTS``). ``charset``: the characters of
    ids 1..C (default: ``EN_symbol_dict.txt``).
    """
    sd = StateDict(read_state_dict(path), f"OpenOCR DPTR checkpoint {path}")
    opts = _options(decoder, DPTR_DECODER_DEFAULTS, DPTR_DECODER_SHAPED, DPTR_DECODER_IGNORED, "DptrParseq")
    if "out_channels" in decoder:
        _agree(decoder, "out_channels", sd.shape("decoder.head.weight")[0] + 2, "decoder.head.weight")
    finetune = "decoder.token_query" in sd or any(k.startswith(("encoder.", "decoder.fmu.")) for k in sd.tensors)
    queries = sd.shape("decoder.token_query")[1] if finetune else None
    dec_cfg = _decoder_config(sd, "decoder.", "decoder.decoder.", opts, decoder, "dec_num_heads", fmu_queries=queries)
    chars = _charset(sd, "decoder.head", charset, dec_cfg.max_len)
    flat = _decoder(sd, "decoder.", "decoder.decoder.", dec_cfg.depth)
    if not finetune:
        sd.check_all_used(skip=("decoder.clip_encoder.",))
        return _build(DptrPretrainModel, sd, flat, None, dec_cfg, chars)
    given = dict(encoder or {})
    vit = _options(given, VIT_DEFAULTS, VIT_SHAPED, (*VIT_IGNORED, *VIT_FIXED), "ViT")
    for key, supported in VIT_FIXED.items():
        if key in given and given[key] != supported:
            raise ValueError(f"ViT {key}={given[key]!r} is not supported (only {supported!r})")
    roles = {"width": "embed_dim", "depth": "depth", "mlp_ratio": "mlp_ratio"}
    enc_cfg = _encoder_config(sd, "encoder.", vit["img_size"], vit["num_heads"], given, roles, eps=1e-5)
    flat |= _vit(sd, "encoder.", enc_cfg.depth) | _fmu(sd)
    sd.check_all_used()
    return _build(DptrRecognizer, sd, flat, enc_cfg, dec_cfg, chars)
