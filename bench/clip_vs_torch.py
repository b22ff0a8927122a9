"""CLIP towers: clip_text_spot (JAX) vs PyTorch, same random weights and inputs, float32.

    python bench/clip_vs_torch.py [--preset=vit_b16] [--batch=8] [--text-batches=8,32] [--rounds=15] [--threads=0]
                                  [--call=method] [--sizes=224,640,1024x1824] [--output=FILE]

ViT presets: a transformers ``CLIPModel`` with the preset's architecture and random weights, saved with
``save_pretrained`` and read with ``load_pretrained``; ``encode_image`` at the native size (row ``image``, ``--batch``
images) and ``encode_text`` at 77 tokens (rows ``text_bN``, one per ``--text-batches``) against
``get_image_features`` / ``get_text_features``.

``--preset=rn50``: the bench-only PyTorch CLIP-RN50 of ``bench/torch_clip_rn50.py`` (OpenAI's architecture and
state-dict names, random weights and BatchNorm statistics), saved as an OpenAI-format safetensors file and read with
``load_pretrained``; batch 1 unless ``--batch`` is given. Rows: ``encode_image`` (OpenAI attention pool) and
``encode_dense`` (C2..C5 plus the dense pool, what TCM uses) at each of ``--sizes`` (``S`` or ``HxW``), and
``encode_text`` on 8 prompts of 77 tokens. open_clip's ModifiedResNet would need torchvision, which we do not
install; the reference is the same computation written from the architecture, and never a project dependency.

Every row first checks that the outputs agree (``max_abs_err_*``). After a warm-up, each round calls ours and
PyTorch's back to back, which one goes first alternating; ``ratio_*`` is the median over rounds of ours /
PyTorch's (a shared machine drifts by tens of percent between minutes, much less between two adjacent calls),
``*_s`` are median seconds; ``ratio`` < 1 means ours is faster. ``--call``: ``method`` (default) times the documented
calls (``model.encode_image(x)``, compiled by ``models.inference.compiled``); ``bound`` the same through
``models.inference.inference_fn``; ``nnx`` through ``nnx.jit`` (what its graph walk per call costs). Requires torch
(a test dependency).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402
from report import device_fields, emit  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402

from clip_text_spot.models.clip import CLIP, load_pretrained, preset  # noqa: E402
from clip_text_spot.models.inference import inference_fn  # noqa: E402


def hf_config(name: str) -> CLIPConfig:
    """transformers' CLIPConfig for one of our ViT presets."""
    c = preset(name)
    t, v = c.text, c.vision
    return CLIPConfig(
        text_config=dict(
            vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.mlp_dim, num_hidden_layers=t.layers,
            num_attention_heads=t.heads, max_position_embeddings=t.context_length, hidden_act=t.act, eos_token_id=2,
        ),
        vision_config=dict(
            image_size=v.image_size, patch_size=v.patch_size, hidden_size=v.width, intermediate_size=v.mlp_dim,
            num_hidden_layers=v.layers, num_attention_heads=v.heads, hidden_act=v.act,
        ),
        projection_dim=c.embed_dim,
    )  # fmt: skip


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired_times(ours, theirs, rounds: int) -> tuple[float, float, float]:
    """(median seconds of ``ours``, of ``theirs``, median per-round ratio); each round calls both back to back, which
    one goes first alternating between rounds."""
    ours(), theirs()
    pairs = []
    for i in range(rounds):
        if i % 2:
            b, a = seconds(theirs), seconds(ours)
        else:
            a, b = seconds(ours), seconds(theirs)
        pairs.append((a, b))
    a, b = zip(*pairs, strict=True)
    return statistics.median(a), statistics.median(b), statistics.median(x / y for x, y in pairs)


def jax_call(call: str, model: CLIP, name: str):
    """``model.<name>`` as timed: the compiled method itself, or through ``inference_fn`` / ``nnx.jit``."""
    method = getattr(CLIP, name)
    if call == "method":
        return getattr(model, name)
    if call == "nnx":
        return functools.partial(nnx.jit(method.__wrapped__), model)
    return inference_fn(method.__wrapped__, model)


def no_grad(fn):
    def run(*args):
        with torch.no_grad():
            return fn(*args)

    return run


Row = tuple[str, object, object, object, object]  # (name, ours, theirs, our input, their input)


def vit_rows(a: argparse.Namespace) -> list[Row]:
    """Image and text rows against transformers' CLIPModel (the preset's architecture, random weights)."""
    hf = CLIPModel(hf_config(a.preset)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_pretrained(d)
    size = ours.config.vision.image_size
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(a.batch or 8, 3, size, size)).astype(np.float32)

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    image = no_grad(lambda px: feats(hf.get_image_features(pixel_values=px)))
    text = no_grad(lambda i: feats(hf.get_text_features(input_ids=i)))
    px_nhwc = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    rows: list[Row] = [("image", jax_call(a.call, ours, "encode_image"), image, px_nhwc, torch.from_numpy(pixels))]
    for batch in (int(b) for b in a.text_batches.split(",")):
        ids = rng.integers(1, 49000, size=(batch, 77)).astype(np.int64)
        ids[:, -1] = 49407
        rows.append((f"text_b{batch}", jax_call(a.call, ours, "encode_text"), text, ids, torch.from_numpy(ids)))
    return rows


def resnet_rows(a: argparse.Namespace) -> list[Row]:
    """encode_image and encode_dense at each size, and encode_text, against the bench-only PyTorch CLIP-RN50."""
    from torch_clip_rn50 import build_pair

    if a.preset != "rn50":
        raise SystemExit("the PyTorch ResNet reference is CLIP-RN50 only")
    ref, ours = build_pair()
    rng = np.random.default_rng(0)
    rows = []
    for spec in a.sizes.split(","):
        h, w = (int(v) for v in (spec.split("x") if "x" in spec else (spec, spec)))
        pixels = rng.normal(size=(a.batch or 1, 3, h, w)).astype(np.float32)
        px_nhwc, px = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)), torch.from_numpy(pixels)
        rows.append((f"image_{spec}", jax_call(a.call, ours, "encode_image"), no_grad(ref.encode_image), px_nhwc, px))
        rows.append((f"dense_{spec}", jax_call(a.call, ours, "encode_dense"), no_grad(ref.encode_dense), px_nhwc, px))
    ids = rng.integers(1, 49000, size=(8, 77)).astype(np.int64)
    ids[:, 20] = 49407
    rows.append(("text", jax_call(a.call, ours, "encode_text"), no_grad(ref.encode_text), ids, torch.from_numpy(ids)))
    return rows


def max_abs_err(ours, theirs) -> float:
    """Largest difference over matching leaves; PyTorch feature maps are NCHW, ours NHWC."""
    errs = []
    for o, t in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        t = t.numpy()
        if t.ndim == 4:
            t = t.transpose(0, 2, 3, 1)
        errs.append(float(np.abs(np.asarray(o) - t).max()))
    return max(errs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vit_b16")
    ap.add_argument("--batch", type=int, default=0, help="0: 8 for ViT presets, 1 for rn50")
    ap.add_argument("--text-batches", default="8,32", help="ViT presets: encode_text batch sizes, one row each")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sizes", default="224,640,1024x1824", help="rn50: image sizes, S or HxW")
    ap.add_argument("--call", choices=("method", "bound", "nnx"), default="method")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--output", default="")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = resnet_rows(a) if a.preset.startswith("rn") else vit_rows(a)
    out = {
        "bench": "clip_vs_torch",
        "preset": a.preset,
        "batch": a.batch or (1 if a.preset.startswith("rn") else 8),
        **device_fields(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "call": a.call,
        "rounds": a.rounds,
    }
    for name, ours, theirs, x_ours, x_theirs in rows:
        out[f"max_abs_err_{name}"] = max_abs_err(ours(x_ours), theirs(x_theirs))
        ours_s, theirs_s, ratio = paired_times(
            lambda f=ours, x=x_ours: jax.block_until_ready(f(x)), lambda f=theirs, x=x_theirs: f(x), a.rounds
        )
        out[f"torch_{name}_s"], out[f"jax_{name}_s"] = round(theirs_s, 4), round(ours_s, 4)
        out[f"ratio_{name}"] = round(ratio, 3)
        print(name, out[f"ratio_{name}"], out[f"max_abs_err_{name}"], file=sys.stderr, flush=True)
    emit(out, a.output)


if __name__ == "__main__":
    main()
