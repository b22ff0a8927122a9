"""Where CLIP-RN50's time goes on this machine: each stage of ours (jitted on its own) next to the same stage of the
bench-only PyTorch reference (``bench/torch_clip_rn50.py``), same weights, interleaved rounds, medians.

    python bench/rn50_profile.py [--size=640] [--width=0] [--batch=1] [--rounds=5] [--threads=0] [--output=FILE]

Stages: stem (3 convs + pool), layer1..layer4, the dense attention pool on C5, and the 12-layer text tower on 8
prompts of 77 tokens. ``ratio_<stage>`` is ours / PyTorch's time (median of per-round ratios); a stage's input is
the previous stage's output, computed once. ``--width`` (default: ``--size``) makes the input non-square.
``--threads`` sets PyTorch's intra-op threads (0: its default). On a machine shared with other jobs, PyTorch's
OpenMP threads slow down far more than XLA's; ``taskset -c 1 ... --threads=1`` compares both on one core.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from clip_vs_torch import paired_times  # noqa: E402
from report import device_fields, emit  # noqa: E402
from torch_clip_rn50 import build_pair  # noqa: E402

from clip_text_spot.models.inference import inference_fn  # noqa: E402


def _stem(m, x):
    return m.vision_model.stem(x)


def _stage(i):
    def run(m, x):
        for block in getattr(m.vision_model, f"layer{i}"):
            x = block(x)
        return x

    run.__name__ = f"layer{i}"
    return run


def _pool(m, x):
    return m.vision_model.attnpool(x, dense=True)


def _text(m, ids):
    return m.encode_text(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--width", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--output", default="")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ref, ours = build_pair()
    rv = ref.visual
    h, w = a.size, a.width or a.size
    x = np.random.default_rng(0).normal(size=(a.batch, h, w, 3)).astype(np.float32)
    ids = np.random.default_rng(1).integers(1, 49000, size=(8, 77)).astype(np.int64)
    ids[:, 20] = 49407
    torch_stages = [rv.stem, rv.layer1, rv.layer2, rv.layer3, rv.layer4, lambda t: rv.attnpool(t, dense=True)]
    jax_stages = [_stem, _stage(1), _stage(2), _stage(3), _stage(4), _pool]
    names = ["stem", "layer1", "layer2", "layer3", "layer4", "attnpool_dense"]
    out = {"bench": "rn50_profile", "size": [h, w], "batch": a.batch, **device_fields(), "torch": torch.__version__}
    out["torch_threads"] = torch.get_num_threads()
    xj, xt = x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    for name, jf, tf in zip(names, jax_stages, torch_stages, strict=True):
        fn = inference_fn(jf, ours)
        with torch.no_grad():
            yt = tf(xt)
        yj = fn(xj)
        yt0 = yt[0] if isinstance(yt, tuple) else yt
        yj0 = yj[0] if isinstance(yj, tuple) else yj
        if yt0.ndim == 4:
            yt0 = yt0.permute(0, 2, 3, 1)
        out[f"err_{name}"] = float(np.abs(np.asarray(yj0) - yt0.numpy()).max())

        def run_jax(fn=fn, xj=xj):
            jax.block_until_ready(fn(xj))

        def run_torch(tf=tf, xt=xt):
            with torch.no_grad():
                tf(xt)

        tj, tt, r = paired_times(run_jax, run_torch, a.rounds)
        out[f"jax_{name}_s"], out[f"torch_{name}_s"], out[f"ratio_{name}"] = round(tj, 4), round(tt, 4), round(r, 3)
        if not isinstance(yj, tuple):
            xj, xt = np.asarray(yj), yt
    text = inference_fn(_text, ours)
    ids_t = torch.from_numpy(ids)

    def run_text_torch():
        with torch.no_grad():
            ref.encode_text(ids_t)

    out["err_text"] = float(np.abs(np.asarray(text(ids)) - ref.encode_text(ids_t).detach().numpy()).max())
    tj, tt, r = paired_times(lambda: jax.block_until_ready(text(ids)), run_text_torch, a.rounds)
    out["jax_text_s"], out["torch_text_s"], out["ratio_text"] = round(tj, 4), round(tt, 4), round(r, 3)
    emit(out, a.output)


if __name__ == "__main__":
    main()
