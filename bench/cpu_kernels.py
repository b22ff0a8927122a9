"""Which CPU kernels suit which program: each program compiled with XLA's default (dots and convolutions handed to
YNNPACK with the elementwise work around them, ``ynn``), with XLA's own kernels for everything (``xla``), with
convolutions on XLA's kernels and each dot alone on YNNPACK (``split``: ``models.inference.CONV_KERNELS``) and with
each dot alone on oneDNN (``onednn``: ``models.inference.ONEDNN_DOTS``), timed in interleaved rounds.

    python bench/cpu_kernels.py [--programs=rn50_image_640,...] [--rounds=9] [--output=FILE]

Programs (random weights; the timing does not depend on them):
  ``rn50_image_S`` / ``rn50_dense_S``  CLIP-RN50 ``encode_image`` / ``encode_dense`` at S x S (batch 1)
  ``vit_image`` / ``vit_text``         CLIP-ViT-B/16 ``encode_image`` (8 x 224^2) / ``encode_text`` (8 x 77 tokens)
  ``vit_text_32`` / ``vit_prompt``     ``encode_text`` on 32 x 77 tokens / on one prompt of 24 tokens
  ``tcm_640`` / ``fasttcm_640``        the paper-size TCM / FastTCM (cached text) matcher's ``match`` at 640^2
  ``tcm_1024``                         TCM's ``match`` at 1024 x 1824
  ``demo_train``                       one train step of ``configs/fasttcm.py:demo`` (batch 8, 256^2)
Per program: ``<name>_<kind>_over_ynn`` is the median over rounds of that kind's time over the default's (< 1:
faster than the default), ``<name>_picked`` what ``models.inference.cpu_options`` chooses for the inference programs
(``xla``, ``split``, ``onednn`` or ``ynn``; training steps always compile with the default), ``<name>_conv_share``
the share of its matmul FLOPs in convolutions, ``<name>_wide_share`` in dots of at least ``ONEDNN_MIN_ROWS`` rows and
``<name>_narrow_share`` in dots of fewer than ``XLA_MAX_ROWS`` (``models.inference.matmul_flops``),
``<name>_max_abs_diff`` the largest output
difference of any kind from the default (inference programs). CPU only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from report import device_fields, emit  # noqa: E402

from clip_text_spot.models import inference  # noqa: E402
from clip_text_spot.models.clip import CLIP, preset  # noqa: E402

DEFAULT = ",".join(
    ("rn50_image_224", "rn50_image_640", "rn50_dense_640", "vit_image", "vit_text", "vit_text_32", "vit_prompt")
    + ("tcm_640", "fasttcm_640", "tcm_1024", "demo_train")
)
KINDS = {
    "ynn": (),
    "xla": inference.XLA_KERNELS,
    "split": inference.CONV_KERNELS,
    "onednn": inference.ONEDNN_DOTS,
}


def _method(model: nnx.Module, method, *args) -> tuple:
    """(fn(state, *args), state, args) running the plain ``method`` of ``model`` in eval mode."""
    model.eval()
    graphdef, state = nnx.split(model)
    return (lambda s, *a: method.__wrapped__(nnx.merge(graphdef, s), *a)), state, args


def program(name: str) -> tuple:
    """(fn, first argument, other arguments, training?) for one program name."""
    rng = np.random.default_rng(0)
    if name.startswith("rn50_"):
        from torch_clip_rn50 import build_pair

        _, kind, size = name.split("_")
        pixels = rng.normal(size=(1, int(size), int(size), 3)).astype(np.float32)
        return (*_method(build_pair()[1], getattr(CLIP, f"encode_{kind}"), pixels), False)
    if name.startswith("vit_"):
        clip = CLIP(preset("vit_b16"), rngs=nnx.Rngs(0))
        if name == "vit_image":
            return (*_method(clip, CLIP.encode_image, rng.normal(size=(8, 224, 224, 3)).astype(np.float32)), False)
        ids = rng.integers(1, 49000, size={"vit_text_32": (32, 77), "vit_prompt": (1, 24)}.get(name, (8, 77)))
        ids[:, -1] = 49407
        return (*_method(clip, CLIP._encode_text, ids), False)
    if name in ("tcm_640", "fasttcm_640", "tcm_1024"):
        from tcm_vs_torch import build

        from clip_text_spot.models.fasttcm.matcher import TCMMatcher

        tcm, fast = build()[:2]
        pixels = rng.normal(size=(1, *((1024, 1824) if name == "tcm_1024" else (640, 640)), 3)).astype(np.float32)
        if name.startswith("tcm_"):
            return (*_method(tcm, TCMMatcher.match, pixels), False)
        return (*_method(fast, TCMMatcher.match, pixels, np.asarray(fast.precompute_text())), False)
    if name == "demo_train":
        return (*demo_train_step(), True)
    raise SystemExit(f"unknown program {name!r}; known: {DEFAULT}")


def demo_train_step() -> tuple:
    """(jitted train step, state, (batch,)) of the FastTCM demo config."""
    import importlib.util

    from clip_text_spot import parallel, trainer
    from clip_text_spot.tasks import build_task

    spec = importlib.util.spec_from_file_location(
        "fasttcm_config", os.path.join(os.path.dirname(__file__), "..", "configs", "fasttcm.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("demo")
    task = build_task(config)
    run = trainer.setup(config, task)
    batch = next(iter(task.train_batches(seed=0, process_index=0, process_count=1)))
    with jax.set_mesh(run.mesh):
        return run.step_fn, run.init_state(load_pretrained=False), (parallel.global_batch(batch, run.mesh),)


def measure(name: str, rounds: int) -> dict:
    fn, first, rest, training = program(name)
    jitted = fn if training else jax.jit(fn)
    jaxpr = jitted.trace(first, *rest).jaxpr.jaxpr
    flops = inference.matmul_flops(jaxpr)
    compiled = {kind: jitted.lower(first, *rest).compile(compiler_options=dict(opts)) for kind, opts in KINDS.items()}
    state = {"first": first}

    def call(kind: str):
        out = compiled[kind](state["first"], *rest)
        if training:  # the step donates its state: carry it on
            state["first"], out = out
        return jax.block_until_ready(out)

    kinds = list(KINDS)
    outs = {kind: call(kind) for kind in kinds}
    diff = None  # a train step's calls start from different states
    if not training:
        diff = max(
            float(np.abs(np.asarray(a) - np.asarray(b)).max())
            for kind in kinds[1:]
            for a, b in zip(jax.tree.leaves(outs["ynn"]), jax.tree.leaves(outs[kind]), strict=True)
        )
    times = {kind: [] for kind in kinds}
    for r in range(rounds):
        for i in range(len(kinds)):  # the order rotates each round
            kind = kinds[(r + i) % len(kinds)]
            t0 = time.perf_counter()
            call(kind)
            times[kind].append(time.perf_counter() - t0)
    options = () if training else inference.cpu_options(jaxpr)
    picked = next(kind for kind, opts in KINDS.items() if opts == options)
    row = {f"{name}_{kind}_s": round(statistics.median(times[kind]), 4) for kind in kinds}
    for kind in kinds[1:]:
        ratios = (x / y for x, y in zip(times[kind], times["ynn"], strict=True))
        row[f"{name}_{kind}_over_ynn"] = round(statistics.median(ratios), 3)
    total = max(flops.conv + flops.dot, 1.0)
    shares = {"conv": flops.conv, "wide": flops.wide_dot, "narrow": flops.narrow_dot}
    return {
        **row,
        f"{name}_picked": picked,
        **{f"{name}_{part}_share": round(float(value / total), 3) for part, value in shares.items()},
        f"{name}_max_abs_diff": diff,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--output", default="")
    a = ap.parse_args()
    if jax.default_backend() != "cpu":
        raise SystemExit("bench/cpu_kernels.py compares XLA's CPU kernels: run it on a CPU backend")
    out = {"bench": "cpu_kernels", **device_fields(), "rounds": a.rounds, "cpu_cores": len(os.sched_getaffinity(0))}
    for name in a.programs.split(","):
        row = measure(name, a.rounds)
        print(row, file=sys.stderr, flush=True)
        out.update(row)
    emit(out, a.output)


if __name__ == "__main__":
    main()
