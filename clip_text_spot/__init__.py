"""clip_text_spot: FastTCM (CLIP scene text detection/spotting) and DPTR (text-only decoder pre-training) in JAX."""

import flax

# Parameters carry logical axis names as metadata; the trainer turns them into shardings explicitly
# (jit with out_shardings), so variables are not sharded eagerly at creation (which would need a mesh context).
flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
