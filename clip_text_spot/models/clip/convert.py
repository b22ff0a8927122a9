"""Import CLIP weights into ``clip_text_spot`` models, and save/load converted checkpoints.

Accepted sources (``load_pretrained(path)``):

* a Hugging Face Flax directory: ``flax_model.msgpack`` (or sharded ``flax_model-*.msgpack`` + index) and
  ``config.json`` — read with ``flax.serialization`` (no transformers model classes);
* a Hugging Face PyTorch directory: ``model.safetensors`` (or sharded + index) and ``config.json`` — read with
  safetensors' numpy API; Linear/Conv weights are transposed to Flax layout;
* an OpenAI / open_clip state dict saved as ``.safetensors`` (``visual.*``, ``transformer.resblocks.*``,
  ``token_embedding.weight``, ``text_projection``, ``logit_scale``), or a directory holding one; the architecture is
  inferred from tensor shapes as OpenAI's ``build_model`` does (heads = width // 64; attention-pool heads =
  width * 32 // 64). A ``clip_config.json`` beside it with OpenAI's ``build_model`` arguments (``embed_dim``,
  ``transformer_heads``, ...; optional ``"quick_gelu": false``) overrides what shapes cannot tell;
* a directory written by ``python -m clip_text_spot.convert`` (orbax checkpoint + ``model_config.json``).

Pickle files (``pytorch_model.bin``, ``.pt``, ``.pth``) are refused: see ``PICKLE_HELP`` for the one-off conversion.
Every import checks that the source provides exactly the model's tensors with the right shapes; a missing,
unexpected or mis-shaped tensor is an error that names it.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization, traverse_util
from safetensors.numpy import load_file

from clip_text_spot import checkpoint
from clip_text_spot.models.clip.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig
from clip_text_spot.models.clip.model import CLIP

Flat = dict[str, np.ndarray]

MODEL_CONFIG = "model_config.json"
PARAMS_DIR = "params"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_HELP = """\
{path} is a pickle file; clip_text_spot never unpickles (it can run arbitrary code).
Convert it once, on a machine with PyTorch, to safetensors and pass that instead:

  # Hugging Face repo (pytorch_model.bin):
  python -c "from transformers import CLIPModel; CLIPModel.from_pretrained('DIR').save_pretrained('DIR_st', \\
      safe_serialization=True)"
  # OpenAI CLIP (RN50.pt, ViT-B-16.pt are TorchScript archives) or open_clip state dicts:
  python -c "import torch; from safetensors.torch import save_file; \\
      m = torch.jit.load('RN50.pt', map_location='cpu'); \\
      save_file({{k: v.float().contiguous() for k, v in m.state_dict().items()}}, 'RN50.safetensors')"
"""


class CheckpointMismatchError(ValueError):
    """The source's tensors do not match the model (names the missing, unexpected and mis-shaped tensors)."""


# ----------------------------------------------------------------------------------------------------------------
# reading files


def _refuse_pickle(path: str) -> None:
    if path.endswith(PICKLE_SUFFIXES):
        raise ValueError(PICKLE_HELP.format(path=path))


def _read_safetensors(path: str) -> Flat:
    """One ``.safetensors`` file, or a sharded set described by ``*.safetensors.index.json``."""
    if path.endswith(".index.json"):
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out: Flat = {}
        for shard in shards:
            out.update(load_file(os.path.join(os.path.dirname(path), shard)))
        return out
    return load_file(path)


def _read_msgpack(path: str) -> Flat:
    """``flax_model.msgpack`` (or a sharded set via its index) -> flat dict with ``/``-joined names."""
    if path.endswith(".index.json"):
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        flat: Flat = {}
        for shard in shards:
            flat.update(_read_msgpack(os.path.join(os.path.dirname(path), shard)))
        return flat
    with open(path, "rb") as f:
        tree = serialization.msgpack_restore(f.read())
    if set(tree) == {"params"}:
        tree = tree["params"]
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def _find(directory: str, names: list[str]) -> str | None:
    for name in names:
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    return None


# ----------------------------------------------------------------------------------------------------------------
# configs


def config_from_hf(config_json: dict[str, Any]) -> CLIPConfig:
    """Our ``CLIPConfig`` from a Hugging Face CLIP ``config.json`` (defaults filled by transformers' CLIPConfig)."""
    from transformers.models.clip.configuration_clip import CLIPConfig as HFCLIPConfig  # config class only

    hf = HFCLIPConfig.from_dict(config_json)
    t, v = hf.text_config, hf.vision_config
    text = TextConfig(
        vocab_size=t.vocab_size,
        width=t.hidden_size,
        layers=t.num_hidden_layers,
        heads=t.num_attention_heads,
        mlp_dim=t.intermediate_size,
        context_length=t.max_position_embeddings,
        act=t.hidden_act,
        eps=t.layer_norm_eps,
        eos_token_id=t.eos_token_id,
        pad_token_id=t.pad_token_id if t.pad_token_id is not None else 0,
    )
    vision = ViTConfig(
        image_size=v.image_size,
        patch_size=v.patch_size,
        width=v.hidden_size,
        layers=v.num_hidden_layers,
        heads=v.num_attention_heads,
        mlp_dim=v.intermediate_size,
        act=v.hidden_act,
        eps=v.layer_norm_eps,
    )
    return CLIPConfig(embed_dim=hf.projection_dim, text=text, vision=vision, logit_scale_init=hf.logit_scale_init_value)


def _count(sd: Flat, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def config_from_openai(sd: Flat, build_args: dict[str, Any] | None = None) -> CLIPConfig:
    """Infer the architecture from OpenAI state-dict shapes (OpenAI ``build_model``'s rules).

    ``build_args`` (OpenAI's ``build_model``/``clip_config.json`` names) override inferred values, which matters for
    head counts of non-standard widths.
    """
    a = dict(build_args or {})
    act = "quick_gelu" if a.get("quick_gelu", True) else "gelu"
    tw = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=tw,
        layers=_count(sd, r"transformer\.resblocks\.(\d+)\."),
        heads=a.get("transformer_heads", max(tw // 64, 1)),
        mlp_dim=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        context_length=sd["positional_embedding"].shape[0],
        act=act,
        eos_token_id=None,
        pad_token_id=0,
    )
    if "visual.proj" in sd:  # ViT
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision: ViTConfig | ResNetConfig = ViTConfig(
            image_size=patch * grid,
            patch_size=patch,
            width=width,
            layers=_count(sd, r"visual\.transformer\.resblocks\.(\d+)\."),
            heads=a.get("vision_heads", max(width // 64, 1)),
            mlp_dim=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            act=act,
        )
    else:  # ModifiedResNet
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = ResNetConfig(
            layers=tuple(_count(sd, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5)),
            width=width,
            heads=a.get("vision_heads", max(width * 32 // 64, 1)),
            image_size=grid * 32,
        )
    return CLIPConfig(embed_dim=sd["text_projection"].shape[1], text=text, vision=vision)


# ----------------------------------------------------------------------------------------------------------------
# name mapping to our parameter tree


def _from_torch_leaf(name: str, w: np.ndarray) -> tuple[str, np.ndarray]:
    """One HF-PyTorch tensor -> (our ``/`` name, Flax-layout array)."""
    parts = name.split(".")
    leaf = parts[-1]
    if leaf == "weight":
        if w.ndim == 4:
            return "/".join(parts[:-1] + ["kernel"]), w.transpose(2, 3, 1, 0)
        if parts[-2] in ("token_embedding", "position_embedding"):
            return "/".join(parts[:-1] + ["embedding"]), w
        if w.ndim == 2:
            return "/".join(parts[:-1] + ["kernel"]), w.T
        if w.ndim == 1:
            return "/".join(parts[:-1] + ["scale"]), w
    return "/".join(parts), w


def hf_torch_to_flat(sd: Flat) -> Flat:
    """HF PyTorch CLIP names (``text_model.encoder.layers.0.self_attn.q_proj.weight``) -> our flat names."""
    out = {}
    for name, w in sd.items():
        if name.endswith("position_ids"):
            continue
        k, v = _from_torch_leaf(name, np.asarray(w))
        out[k] = v
    return out


def _openai_block(sd: Flat, src: str, dst: str) -> Flat:
    """One OpenAI ``ResidualAttentionBlock`` (packed in_proj) -> HF-style encoder layer."""
    out = {}
    w_in, b_in = sd[f"{src}.attn.in_proj_weight"], sd[f"{src}.attn.in_proj_bias"]
    for i, p in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{dst}/self_attn/{p}/kernel"] = np.split(w_in, 3)[i].T
        out[f"{dst}/self_attn/{p}/bias"] = np.split(b_in, 3)[i]
    pairs = {
        "attn.out_proj": "self_attn/out_proj",
        "mlp.c_fc": "mlp/fc1",
        "mlp.c_proj": "mlp/fc2",
    }
    for s, d in pairs.items():
        out[f"{dst}/{d}/kernel"] = sd[f"{src}.{s}.weight"].T
        out[f"{dst}/{d}/bias"] = sd[f"{src}.{s}.bias"]
    for s, d in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
        out[f"{dst}/{d}/scale"] = sd[f"{src}.{s}.weight"]
        out[f"{dst}/{d}/bias"] = sd[f"{src}.{s}.bias"]
    return out


_OPENAI_BLOCK_RX = re.compile(r"^((?:visual\.)?transformer\.resblocks\.\d+)\.")


def openai_resnet_to_flat(sd: Flat, prefix: str, dst: str) -> Flat:
    """ModifiedResNet tensors under ``prefix`` (e.g. ``visual.`` or ``backbone.``) -> our names under ``dst``.

    Convs are transposed to HWIO, BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` become
    ``scale``/``bias``/``mean``/``var``; ``num_batches_tracked`` is dropped; attention-pool Linears transposed.
    """
    bn = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
    out = {}
    for name, w in sd.items():
        if not name.startswith(prefix) or name.endswith("num_batches_tracked"):
            continue
        parts = name[len(prefix) :].split(".")
        if parts[0] == "attnpool":
            if parts[1] == "positional_embedding":
                out[f"{dst}/attnpool/positional_embedding"] = w
            else:
                out[f"{dst}/attnpool/{parts[1]}/{'kernel' if parts[2] == 'weight' else 'bias'}"] = (
                    w.T if parts[2] == "weight" else w
                )
            continue
        if "downsample" in parts:  # layerX.N.downsample.{0 conv, 1 bn}.param
            i = parts.index("downsample")
            parts = parts[:i] + ["downsample", "conv" if parts[i + 1] == "0" else "bn"] + parts[i + 2 :]
        leaf = parts[-1]
        path = "/".join([dst] + parts[:-1])
        if w.ndim == 4:
            out[f"{path}/kernel"] = w.transpose(2, 3, 1, 0)
        elif leaf in bn and w.ndim == 1:
            out[f"{path}/{bn[leaf]}"] = w
        else:
            raise CheckpointMismatchError(f"unexpected ResNet tensor {name!r} with shape {w.shape}")
    return out


def openai_text_to_flat(sd: Flat, prefix: str = "") -> Flat:
    """OpenAI text tower (``token_embedding``, ``positional_embedding``, ``transformer.resblocks``, ``ln_final``,
    ``text_projection``) under ``prefix`` -> our ``text_model/...`` and ``text_projection`` names."""
    p = prefix
    out = {
        "text_model/embeddings/token_embedding/embedding": sd[f"{p}token_embedding.weight"],
        "text_model/embeddings/position_embedding/embedding": sd[f"{p}positional_embedding"],
        "text_model/final_layer_norm/scale": sd[f"{p}ln_final.weight"],
        "text_model/final_layer_norm/bias": sd[f"{p}ln_final.bias"],
        "text_projection/kernel": sd[f"{p}text_projection"],
    }
    layers = _count(sd, rf"{re.escape(p)}transformer\.resblocks\.(\d+)\.")
    for i in range(layers):
        out.update(_openai_block(sd, f"{p}transformer.resblocks.{i}", f"text_model/encoder/layers/{i}"))
    return out


def openai_to_flat(sd: Flat) -> Flat:
    """A whole OpenAI/open_clip CLIP state dict -> our flat names."""
    out = openai_text_to_flat(sd)
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"]
    if "visual.proj" in sd:
        v = "vision_model"
        out[f"{v}/embeddings/patch_embedding/kernel"] = sd["visual.conv1.weight"].transpose(2, 3, 1, 0)
        out[f"{v}/embeddings/class_embedding"] = sd["visual.class_embedding"]
        out[f"{v}/embeddings/position_embedding/embedding"] = sd["visual.positional_embedding"]
        for s, d in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
            out[f"{v}/{d}/scale"] = sd[f"visual.{s}.weight"]
            out[f"{v}/{d}/bias"] = sd[f"visual.{s}.bias"]
        for i in range(_count(sd, r"visual\.transformer\.resblocks\.(\d+)\.")):
            out.update(_openai_block(sd, f"visual.transformer.resblocks.{i}", f"{v}/encoder/layers/{i}"))
        out["visual_projection/kernel"] = sd["visual.proj"]
    else:
        out.update(openai_resnet_to_flat(sd, "visual.", "vision_model"))
    known = {"attn_mask", "input_resolution", "context_length", "vocab_size"}
    used_prefixes = ("visual.", "transformer.", "token_embedding", "positional_embedding", "ln_final", "text_proj")
    stray = [k for k in sd if k not in known and k != "logit_scale" and not k.startswith(used_prefixes)]
    if stray:
        raise CheckpointMismatchError(f"unexpected tensor(s) in OpenAI state dict: {sorted(stray)[:10]}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# assigning weights to a model


def model_flat_state(model: nnx.Module) -> Flat:
    """The model's variables (params and BatchNorm statistics) as a flat ``/``-named dict of arrays."""
    pure = nnx.to_pure_dict(nnx.state(model))
    return {"/".join(str(p) for p in k): v for k, v in traverse_util.flatten_dict(pure).items()}


def assign_flat(model: nnx.Module, flat: Flat, source: str = "checkpoint") -> None:
    """Copy ``flat`` into ``model`` in place; every model variable must be present once with the right shape."""
    target = model_flat_state(model)
    missing = sorted(set(target) - set(flat))
    unexpected = sorted(set(flat) - set(target))
    shapes = [
        f"{k}: checkpoint {tuple(np.shape(flat[k]))} vs model {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(flat))
        if tuple(np.shape(flat[k])) != tuple(target[k].shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the model:"]
        if missing:
            lines.append(f"  missing tensor(s) ({len(missing)}): {missing[:12]}")
        if unexpected:
            lines.append(f"  unexpected tensor(s) ({len(unexpected)}): {unexpected[:12]}")
        if shapes:
            lines.append(f"  shape mismatch(es) ({len(shapes)}): {shapes[:12]}")
        raise CheckpointMismatchError("\n".join(lines))
    nested = traverse_util.unflatten_dict(
        {
            tuple(int(p) if p.isdigit() else p for p in k.split("/")): jnp.array(v, target[k].dtype, copy=True)
            for k, v in flat.items()
        }
    )
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, nested)
    nnx.update(model, state)


# ----------------------------------------------------------------------------------------------------------------
# entry points


def read_source(path: str, **build_args: Any) -> tuple[CLIPConfig, Flat, str]:
    """Read any supported source -> (config, flat tensors in our names, a description of the source format)."""
    _refuse_pickle(path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, MODEL_CONFIG)):
            return _read_converted(path)
        cfg_path = os.path.join(path, "config.json")
        msgpack = _find(path, ["flax_model.msgpack", "flax_model.msgpack.index.json"])
        st = _find(path, ["model.safetensors", "model.safetensors.index.json"])
        if os.path.exists(cfg_path) and (msgpack or st):
            with open(cfg_path) as f:
                config = config_from_hf(json.load(f))
            if msgpack:
                return config, _read_msgpack(msgpack), f"Hugging Face Flax checkpoint {msgpack}"
            return config, hf_torch_to_flat(_read_safetensors(st)), f"Hugging Face PyTorch checkpoint {st}"
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if len(files) == 1:
            return read_source(files[0], **build_args)
        pickles = [f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            _refuse_pickle(os.path.join(path, pickles[0]))
        raise FileNotFoundError(
            f"{path}: no CLIP checkpoint found (expected config.json with flax_model.msgpack or model.safetensors, "
            f"a single OpenAI-format *.safetensors, or a '{MODEL_CONFIG}' written by clip_text_spot.convert)"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: expected a directory or a .safetensors file")
    sd = _read_safetensors(path)
    if any(k.startswith(("text_model.", "vision_model.")) for k in sd):
        cfg_path = os.path.join(os.path.dirname(path), "config.json")
        if not os.path.exists(cfg_path):
            raise FileNotFoundError(f"{path} uses Hugging Face names but {cfg_path} is missing")
        with open(cfg_path) as f:
            return config_from_hf(json.load(f)), hf_torch_to_flat(sd), f"Hugging Face PyTorch checkpoint {path}"
    if "ln_final.weight" not in sd or "text_projection" not in sd:
        raise CheckpointMismatchError(
            f"{path}: neither Hugging Face CLIP names nor OpenAI CLIP names (no 'ln_final.weight'/'text_projection')"
        )
    args = {}
    side = os.path.join(os.path.dirname(path), "clip_config.json")
    if os.path.exists(side):
        with open(side) as f:
            args = json.load(f)
    args.update(build_args)
    return config_from_openai(sd, args), openai_to_flat(sd), f"OpenAI-format checkpoint {path}"


def _truncate_text_positions(config: CLIPConfig, flat: Flat, context_length: int) -> tuple[CLIPConfig, Flat]:
    key = "text_model/embeddings/position_embedding/embedding"
    if context_length > flat[key].shape[0]:
        raise ValueError(f"context_length {context_length} exceeds the checkpoint's {flat[key].shape[0]} positions")
    flat = dict(flat)
    flat[key] = flat[key][:context_length]
    return config.replace(text={"context_length": context_length}), flat


def load_pretrained(
    path: str, *, dtype: str | None = None, context_length: int | None = None, **build_args: Any
) -> CLIP:
    """Build a ``CLIP`` from any supported checkpoint (see module docstring) and load its weights.

    ``dtype`` sets the compute dtype (params stay float32). ``context_length`` truncates the text position table
    (e.g. 18 for TCM's prompt + contexts). ``build_args`` (``transformer_heads``, ``vision_heads``, ``quick_gelu``)
    override what an OpenAI-format state dict cannot tell. The model is returned in eval mode.
    """
    config, flat, source = read_source(path, **build_args)
    if context_length is not None:
        config, flat = _truncate_text_positions(config, flat, context_length)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    model = nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0)))
    model = _materialize(model)
    assign_flat(model, flat, source)
    model.eval()
    return model


def _materialize(abstract: CLIP) -> CLIP:
    """Zero-filled concrete model with ``abstract``'s structure (its values are overwritten right after)."""
    graphdef, state = nnx.split(abstract)
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)
    return nnx.merge(graphdef, state)


def _read_converted(directory: str) -> tuple[CLIPConfig, Flat, str]:
    with open(os.path.join(directory, MODEL_CONFIG)) as f:
        meta = json.load(f)
    if meta.get("model") != "clip":
        raise ValueError(f"{directory}/{MODEL_CONFIG}: model {meta.get('model')!r} is not a CLIP checkpoint")
    config = CLIPConfig.from_dict(meta["config"])
    abstract = _nest(model_flat_state(nnx.eval_shape(lambda: CLIP(config, rngs=nnx.Rngs(0)))))
    tree = checkpoint.restore_tree(os.path.join(directory, PARAMS_DIR), abstract)
    flat = traverse_util.flatten_dict(tree, sep="/")
    return config, {k: np.asarray(v) for k, v in flat.items()}, f"converted checkpoint {directory}"


def _nest(flat: Flat) -> dict[str, Any]:
    """Flat ``/`` names -> nested dict with string keys (the on-disk layout of converted checkpoints)."""
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def save_converted(model: CLIP, output: str, source: str = "") -> None:
    """Write ``model`` as an orbax checkpoint (``output/params``) plus ``output/model_config.json``."""
    os.makedirs(output, exist_ok=True)
    if os.path.exists(os.path.join(output, PARAMS_DIR)):
        raise FileExistsError(f"{output}/{PARAMS_DIR} already exists; choose an empty output directory")
    checkpoint.save_tree(os.path.join(output, PARAMS_DIR), _nest(model_flat_state(model)))
    meta = {"model": "clip", "source": source, "config": model.config.to_dict()}
    with open(os.path.join(output, MODEL_CONFIG), "w") as f:
        json.dump(meta, f, indent=2)
