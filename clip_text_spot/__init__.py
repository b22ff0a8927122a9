"""clip_text_spot: FastTCM (CLIP scene text detection/spotting) and DPTR (text-only decoder pre-training) in JAX."""

__version__ = "0.1.0"
