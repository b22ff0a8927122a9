"""What every bench script reports: the device it ran on, and one JSON line printed and optionally saved."""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple


def device_fields() -> dict[str, Any]:
    """Device kind, platform, device count and jax version of this process."""
    import jax

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    return {"device": kind, "platform": dev.platform, "devices": jax.device_count(), "jax": jax.__version__}


# Dense bf16 tensor-core / MXU peak TFLOP/s per chip, by a substring of jax's ``device_kind`` (vendor data sheets;
# the first match wins, so more specific names come first). MFU is reported against these whatever the dtype.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("L4", 121.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5", 459.0),
    ("TPU v6", 918.0),
)


def bf16_peak_flops(device_kind: str) -> float | None:
    """Peak bf16 FLOP/s of one chip of ``device_kind``, or None when it is not in ``BF16_PEAK_TFLOPS`` (CPUs)."""
    for name, tflops in BF16_PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def compiled_flops(compiled: Any) -> float | None:
    """The ``flops`` XLA's cost analysis gives a compiled executable (a dict, or a list of one per program)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None else None


def compiled_peak_bytes(compiled: Any) -> int | None:
    """Device bytes XLA's buffer assignment gives a compiled executable: arguments, outputs and temporaries, less the
    donated buffers outputs reuse (None where the backend reports no memory analysis)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    used = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return int(used - m.alias_size_in_bytes)


def compile_train_step(run: Any, batch: dict) -> Any:
    """A ``trainer.setup`` run's step compiled ahead of time for ``batch`` (global arrays or ``ShapeDtypeStruct``s)
    on its abstract state: nothing is allocated."""
    import jax

    with jax.set_mesh(run.mesh):
        return run.step_fn.lower(run.abstract_state, batch).compile()


def gib(n: int | None) -> float | None:
    """Bytes as GiB (None stays None)."""
    return None if n is None else n / 2**30


class StepTiming(NamedTuple):
    seconds: float  # per step
    flops: float | None  # of one device's program
    peak_bytes: int | None  # per device (compiled_peak_bytes)


def time_train_step(run: Any, batch_np: dict, steps: int) -> StepTiming:
    """Seconds per step, FLOPs and device bytes of a ``trainer.setup`` run's step on ``batch_np``: the step is
    compiled ahead of time (its cost and memory analyses give the FLOPs and bytes), run once untimed, then ``steps``
    times."""
    import jax

    from clip_text_spot import parallel

    state = run.init_state(load_pretrained=False)
    with jax.set_mesh(run.mesh):
        data = parallel.global_batch(batch_np, run.mesh)
        step_fn = compile_train_step(run, data)
        state, metrics = step_fn(state, data)
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, metrics = step_fn(state, data)
        jax.block_until_ready(metrics)
    return StepTiming((time.perf_counter() - t0) / steps, compiled_flops(step_fn), compiled_peak_bytes(step_fn))


def train_step_figures(run: Any, batch_np: dict, batch: int, steps: int) -> dict[str, float | None]:
    """A train step's figures: ``img_per_s``, ``mfu`` (with ``steps > 0``), ``step_tflops_per_device`` and
    ``step_gib_per_device``; ``steps=0`` compiles only (no timing, nothing allocated)."""
    import jax

    if steps == 0:
        compiled = compile_train_step(run, {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch_np.items()})
        flops = compiled_flops(compiled)
        return {
            "step_tflops_per_device": None if flops is None else flops / 1e12,
            "step_gib_per_device": gib(compiled_peak_bytes(compiled)),
        }
    t = time_train_step(run, batch_np, steps)
    return {
        "img_per_s": batch / t.seconds,
        "step_tflops_per_device": None if t.flops is None else t.flops / 1e12,
        "mfu": mfu(t.flops, t.seconds),
        "step_gib_per_device": gib(t.peak_bytes),
    }


def mfu(flops: float | None, seconds: float) -> float | None:
    """Model FLOPs utilisation of one chip doing ``flops`` in ``seconds`` (None off the peak table)."""
    import jax

    peak = bf16_peak_flops(jax.devices()[0].device_kind)
    return None if flops is None or peak is None else flops / seconds / peak


def emit(record: dict[str, Any], path: str | None = None) -> None:
    """Print ``record`` as one JSON line and, when ``path`` is given, write the same line there."""
    line = json.dumps(record)
    print(line)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(line + "\n")
