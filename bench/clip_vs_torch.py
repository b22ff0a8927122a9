"""CLIP towers: clip_text_spot (JAX, jitted) vs transformers' PyTorch CLIPModel, same random weights and inputs, f32.

    python bench/clip_vs_torch.py [--preset=vit_b16] [--batch=8] [--rounds=15] [--threads=0] [--call=bound]
                                  [--output=FILE]

Builds a PyTorch ``CLIPModel`` with the preset's architecture and random weights, saves it with ``save_pretrained``
and loads it with ``load_pretrained`` (so both run identical weights), checks the outputs agree, then times
``encode_image`` at 224x224 and ``encode_text`` at 77 tokens against ``get_image_features`` /
``get_text_features``. After a warm-up, each round calls ours and PyTorch's back to back, which one goes first
alternating; ``ratio_*`` is the median over rounds of ours / PyTorch's (a shared machine drifts by tens of percent
between minutes, much less between two adjacent calls), ``*_s`` are median seconds. ``ratio`` < 1 means ours is
faster. ``--call=nnx`` times the same model through ``nnx.jit`` instead of ``models.inference.inference_fn`` (what
its graph walk per call costs). Requires torch (a test dependency).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vit_b16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--call", choices=("bound", "nnx"), default="bound", help="inference_fn (default) or nnx.jit")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--output", default="")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    hf = CLIPModel(hf_config(a.preset)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = load_pretrained(d)
    size = ours.config.vision.image_size
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(a.batch, 3, size, size)).astype(np.float32)
    ids = rng.integers(1, 49000, size=(a.batch, 77)).astype(np.int64)
    ids[:, -1] = 49407
    px_nhwc = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    if a.call == "nnx":
        image_fn = functools.partial(nnx.jit(CLIP.encode_image), ours)
        text_fn = functools.partial(nnx.jit(CLIP.encode_text), ours)
    else:
        image_fn, text_fn = inference_fn(CLIP.encode_image, ours), inference_fn(CLIP.encode_text, ours)

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        ref_img = feats(hf.get_image_features(pixel_values=torch.from_numpy(pixels))).numpy()
        ref_txt = feats(hf.get_text_features(input_ids=torch.from_numpy(ids))).numpy()
    err_img = float(np.abs(np.asarray(image_fn(px_nhwc)) - ref_img).max())
    err_txt = float(np.abs(np.asarray(text_fn(ids)) - ref_txt).max())

    def torch_image():
        with torch.no_grad():
            hf.get_image_features(pixel_values=torch.from_numpy(pixels))

    def torch_text():
        with torch.no_grad():
            hf.get_text_features(input_ids=torch.from_numpy(ids))

    def jax_image():
        jax.block_until_ready(image_fn(px_nhwc))

    def jax_text():
        jax.block_until_ready(text_fn(ids))

    jax_image_s, torch_image_s, ratio_image = paired_times(jax_image, torch_image, a.rounds)
    jax_text_s, torch_text_s, ratio_text = paired_times(jax_text, torch_text, a.rounds)
    out = {
        "bench": "clip_vs_torch",
        "preset": a.preset,
        "batch": a.batch,
        **device_fields(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "max_abs_err_image": err_img,
        "max_abs_err_text": err_txt,
        "call": a.call,
        "rounds": a.rounds,
        "torch_image_s": round(torch_image_s, 4),
        "jax_image_s": round(jax_image_s, 4),
        "torch_text_s": round(torch_text_s, 4),
        "jax_text_s": round(jax_text_s, 4),
        "ratio_image": round(ratio_image, 3),
        "ratio_text": round(ratio_text, 3),
    }
    emit(out, a.output)


if __name__ == "__main__":
    main()
