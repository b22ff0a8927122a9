"""The paper-size TCM / FastTCM matcher forward: clip_text_spot (JAX) vs a PyTorch implementation, same weights.

    python bench/tcm_vs_torch.py [--sizes=640,1024x1824] [--rounds=9] [--fast_rounds=0] [--threads=0] [--output=FILE]

One random official-name state dict (CLIP-RN50 with the dense attention pool on a 20x20 grid, 12-layer text tower,
4 contexts, prompt generator, ``meta_query``, visual prompt generator and context decoder of width 256; BatchNorm
statistics and the residual scales randomised so every module shows) is made by ``bench/torch_tcm.py``'s
``TorchTCM`` and read by both sides: ours with ``from_official_tcm`` (TCM with ``fast=False``, FastTCM with
``fast=True``), PyTorch's by ``TorchTCM.load_official``. The PyTorch side is that bench-only module: the official
code's computation (``F.multi_head_attention_forward`` attention pool, ``nn.MultiheadAttention`` text blocks,
einsum attention in the decoders) written from the spec, run under ``torch.no_grad()`` in eval mode.

Per size (``S`` or ``HxW``, batch 1): every ``match`` output of ours against PyTorch's (``max_abs_err_*``: the
largest difference over c2..c5, the pooled features, prompt cue, text at each step, visual features and the score
map), then rounds of four calls (TCM ours / PyTorch's with the text tower per image, FastTCM ours / PyTorch's with
the cached text from ``precompute_text``), their order rotating each round. ``ratio_tcm_*`` and
``ratio_fasttcm_cached_*`` are medians over rounds of ours / PyTorch's time (< 1: ours faster), ``fast_over_tcm_*``
the median of ours FastTCM-cached / ours TCM, ``fast_faster_rounds_*`` in how many rounds ours FastTCM-cached beat
ours TCM (all of 9 happens by chance with probability 2^-9 when the two take the same time); ``*_s`` median seconds.
``--fast_rounds=N`` adds N rounds of ours TCM and FastTCM-cached alone, order alternating: ``fast_saving_ms_*`` is
the mean per-frame saving of the text cache and ``fast_saving_ci95_ms_*`` its 95% confidence half-width (a saving
of 1% of a 2.6 s frame needs many rounds on a machine whose frames vary by a few percent). PyTorch's intra-op
threads are set to the cores XLA's CPU client uses (``--threads=0``: this process's CPU affinity), so both use the
same cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from clip_vs_torch import seconds  # noqa: E402
from report import device_fields, emit  # noqa: E402
from torch_tcm import TorchTCM, nhwc  # noqa: E402

from clip_text_spot.models.fasttcm import from_official_tcm  # noqa: E402
from clip_text_spot.models.fasttcm.config import FastTCMConfig  # noqa: E402

DEFAULT_OUTPUT = os.path.join(os.path.dirname(__file__), "results", "tcm_vs_torch-cpu.json")


def build(seed: int = 0):
    """(ours TCM, ours FastTCM, PyTorch TCM, PyTorch FastTCM, prompt ids) on one random paper-size state dict."""
    torch.manual_seed(seed)
    fast_ref = TorchTCM(FastTCMConfig())
    fast_ref.randomize(seed)
    sd = fast_ref.official_state_dict()
    fast_ref.eval()
    tcm_ref = TorchTCM(FastTCMConfig(fast=False)).load_official(sd)
    ours_fast = from_official_tcm(sd, fast=True)
    ours_tcm = from_official_tcm({k: v for k, v in sd.items() if k != "meta_query"}, fast=False)
    return ours_tcm, ours_fast, tcm_ref, fast_ref, np.asarray(ours_fast.prompt_ids, np.int64)


def max_err(ours: dict, theirs: dict) -> tuple[float, str]:
    """(largest |ours - theirs| over the shared keys, the key where it occurs)."""
    theirs = nhwc(theirs)
    errs = {k: float(np.abs(np.asarray(v) - theirs[k]).max()) for k, v in ours.items() if k in theirs}
    worst = max(errs, key=errs.get)
    return errs[worst], worst


def rotated_times(fns: list, rounds: int) -> list[list[float]]:
    """Seconds of each of ``fns`` per round (after one untimed call each); the calling order rotates by one each
    round, so every function runs in every position equally often."""
    for fn in fns:
        fn()
    times = [[0.0] * len(fns) for _ in range(rounds)]
    for r in range(rounds):
        for j in range(len(fns)):
            i = (r + j) % len(fns)
            times[r][i] = seconds(fns[i])
    return times


def fast_saving(tcm, fast, rounds: int, spec: str) -> dict:
    """What the text cache saves per frame: the mean over ``rounds`` paired rounds (order alternating) of ours TCM's
    time minus ours FastTCM-cached's, in ms, with its 95% confidence half-width (Student t)."""
    from scipy import stats

    diffs = []
    for r in range(rounds):
        pair = [tcm, fast] if r % 2 == 0 else [fast, tcm]
        t = [seconds(lambda f=f: jax.block_until_ready(f())) for f in pair]
        diffs.append(1e3 * (t[0] - t[1] if r % 2 == 0 else t[1] - t[0]))
    half = stats.t.ppf(0.975, rounds - 1) * statistics.stdev(diffs) / rounds**0.5
    return {
        f"fast_saving_ms_{spec}": round(statistics.mean(diffs), 1),
        f"fast_saving_ci95_ms_{spec}": round(float(half), 1),
        f"fast_saving_rounds_{spec}": rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="640,1024x1824", help="image sizes, S or HxW (batch 1)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--fast_rounds", type=int, default=0, help="extra rounds of ours TCM vs FastTCM-cached alone")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch intra-op threads (0: the cores XLA uses)")
    ap.add_argument("--output", default=DEFAULT_OUTPUT)
    a = ap.parse_args()
    threads = a.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    ours_tcm, ours_fast, tcm_ref, fast_ref, ids_np = build()
    ids = torch.from_numpy(ids_np)
    cache = ours_fast.precompute_text()
    with torch.no_grad():
        cache_ref = fast_ref.precompute_text(ids)
    out = {
        "bench": "tcm_vs_torch",
        "model": "CLIP-RN50 TCM/FastTCM matcher (paper size, random weights), batch 1, float32",
        **device_fields(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "rounds": a.rounds,
        "max_abs_err_text_cache": float(np.abs(np.asarray(cache) - cache_ref.numpy()).max()),
    }
    rng = np.random.default_rng(0)
    for spec in a.sizes.split(","):
        h, w = (int(v) for v in (spec.split("x") if "x" in spec else (spec, spec)))
        x = rng.normal(size=(1, h, w, 3)).astype(np.float32)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

        def run_torch(model, text_cache=None, xt=xt):
            with torch.no_grad():
                return model.match(xt, ids, text_cache)

        calls = {
            "ours_tcm": lambda x=x: ours_tcm.match(x),
            "torch_tcm": lambda: run_torch(tcm_ref),
            "ours_fast": lambda x=x: ours_fast.match(x, text_cache=cache),
            "torch_fast": lambda: run_torch(fast_ref, cache_ref),
        }
        for name, ours_key, torch_key in (
            ("tcm", "ours_tcm", "torch_tcm"),
            ("fasttcm_cached", "ours_fast", "torch_fast"),
        ):
            err, key = max_err(calls[ours_key](), calls[torch_key]())
            out[f"max_abs_err_{name}_{spec}"], out[f"worst_output_{name}_{spec}"] = err, key
            print(spec, name, "max abs err", err, "at", key, file=sys.stderr, flush=True)
        fns = [(lambda f=f: jax.block_until_ready(f())) if k.startswith("ours") else f for k, f in calls.items()]
        per_round = dict(zip(calls, zip(*rotated_times(fns, a.rounds), strict=True), strict=True))
        for name, t in per_round.items():
            out[f"{name}_{spec}_s"] = round(statistics.median(t), 4)
        for name, num, den in (
            ("ratio_tcm", "ours_tcm", "torch_tcm"),
            ("ratio_fasttcm_cached", "ours_fast", "torch_fast"),
            ("fast_over_tcm", "ours_fast", "ours_tcm"),
            ("torch_fast_over_tcm", "torch_fast", "torch_tcm"),
        ):
            ratios = [n / d for n, d in zip(per_round[num], per_round[den], strict=True)]
            out[f"{name}_{spec}"] = round(statistics.median(ratios), 3)
        faster = sum(f < t for f, t in zip(per_round["ours_fast"], per_round["ours_tcm"], strict=True))
        out[f"fast_faster_rounds_{spec}"] = f"{faster}/{a.rounds}"
        if a.fast_rounds:
            out.update(fast_saving(calls["ours_tcm"], calls["ours_fast"], a.fast_rounds, spec))
        print(spec, {k: v for k, v in out.items() if spec in k}, file=sys.stderr, flush=True)
    emit(out, a.output)


if __name__ == "__main__":
    main()
