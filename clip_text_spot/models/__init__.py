"""Flax NNX models: CLIP towers and the FastTCM/DPTR components built on them."""
