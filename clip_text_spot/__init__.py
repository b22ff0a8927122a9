"""clip_text_spot: FastTCM (CLIP scene text detection/spotting) and DPTR (text-only decoder pre-training) in JAX."""

import os

import flax

# XLA's CPU backend hands each convolution and dot to XNNPACK with this flag (same sums in our parity tests). It cut
# CLIP-RN50 at 640x640 to about 0.75x the time on a 2-core CPU and left ViT-B/16 unchanged
# (``bench/clip_vs_torch.py``). XLA reads XLA_FLAGS when the first backend starts, so this only applies when the
# package is imported before anything runs; a user's own value of the flag wins, and CLIP_TEXT_SPOT_XLA_DEFAULTS=0
# leaves XLA_FLAGS alone.
CPU_XLA_FLAGS = "--xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot"
if os.environ.get("CLIP_TEXT_SPOT_XLA_DEFAULTS", "1") != "0":
    _flags = os.environ.get("XLA_FLAGS", "")
    if CPU_XLA_FLAGS.split("=")[0] not in _flags:
        os.environ["XLA_FLAGS"] = f"{_flags} {CPU_XLA_FLAGS}".strip()

# Parameters carry logical axis names as metadata; the trainer turns them into shardings explicitly
# (jit with out_shardings), so variables are not sharded eagerly at creation (which would need a mesh context).
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
