"""Shared config pieces: argument parsing for ``get_config(arg)`` and the trainer defaults every task uses."""

from __future__ import annotations

from typing import Any

import ml_collections

# Logical parameter axes -> mesh axes (see clip_text_spot.parallel). Data parallel by default; with
# --config.mesh.fsdp=N large matrices shard over "fsdp", with --config.mesh.model=N wide layers over "model".
SHARDING_RULES = [
    ("embed", "fsdp"),
    ("joint", "fsdp"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("conv_in", "fsdp"),
    ("conv_out", "model"),
]


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse ``"name"`` / ``"key=value,flag"`` config arguments (big_vision style) into typed fields.

    A bare word sets ``variant`` (e.g. ``configs/fasttcm.py:demo``) if ``variant`` is a default, else it is a
    boolean flag set to True. Values are cast to the type of the default.
    """
    out = ml_collections.ConfigDict(defaults)
    for part in filter(None, (arg or "").split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            if "variant" in defaults and key not in defaults:
                out.variant = key
                continue
            key, value = key, "True"
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        out[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return out


def trainer_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fill the trainer fields every task shares (each can be overridden with --config.X=Y)."""
    config.seed = 0
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
    config.sharding_rules = SHARDING_RULES
    config.log_every = 10
    config.eval_every = 100
    config.ckpt_every = 100
    config.ckpt_keep = 2
    config.max_bad_steps = 5
    config.best_metric = ""
    config.tensorboard = True
    return config
