"""Optimisers from the config: parameter groups by regex (frozen / lr multiplier), weight-decay masks, schedules.

``config.optim`` fields::

    name: "adamw" | "adam" | "ranger" (RAdam + Lookahead, TCM's optimiser) | "sgd"
    lr, weight_decay, b1, b2, eps, grad_clip (global norm, 0 = off), accumulate (gradient accumulation steps)
    schedule: "poly" (power ``poly_power``, floor ``min_lr``; mmocr's) | "cosine" | "constant" | "multistep" (lr x
              ``gamma`` at each of ``milestones``; detectron2's WarmupMultiStepLR); warmup_steps
    groups: [(regex, multiplier)] — first match on the parameter path ("text_model/encoder/..."); multiplier 0.0
            freezes (updates are exactly zero, no weight decay), e.g. [("^clip/text_model", 0.0), ("^clip/vision", 0.1)]
    no_decay: regex of paths without weight decay (norms, biases, embeddings by default)
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

DEFAULT_NO_DECAY = r"(norm|bias|_bn|/bn\d|/bn/|embedding|gamma|positional)"


def schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule (warmup then poly/cosine/constant decay over ``total_steps``)."""
    warmup = int(cfg.get("warmup_steps", 0))
    decay_steps = max(total_steps - warmup, 1)
    name = cfg.get("schedule", "constant")
    if name == "poly":  # mmocr's: (lr - min_lr) * (1 - t / T) ** power + min_lr, held at min_lr after T
        power, min_lr = float(cfg.get("poly_power", 0.9)), float(cfg.get("min_lr", 0.0))

        def main(step):
            frac = 1.0 - jnp.minimum(jnp.asarray(step, jnp.float32), decay_steps) / decay_steps
            return (cfg.lr - min_lr) * jnp.power(jnp.maximum(frac, 0.0), power) + min_lr
    elif name == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, decay_steps)
    elif name == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif name == "multistep":
        gamma = float(cfg.get("gamma", 0.1))
        main = optax.piecewise_constant_schedule(cfg.lr, {int(m) - warmup: gamma for m in cfg.get("milestones", ())})
    else:
        raise ValueError(f"config.optim.schedule must be poly, cosine, constant or multistep; got {name!r}")
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])


def _base(cfg: Any, lr: optax.Schedule) -> optax.GradientTransformation:
    name = cfg.get("name", "adamw")
    b1, b2, eps = cfg.get("b1", 0.9), cfg.get("b2", 0.999), cfg.get("eps", 1e-8)
    if name in ("adam", "adamw"):
        return optax.adam(lr, b1=b1, b2=b2, eps=eps)
    if name == "ranger":  # RAdam + Lookahead(k=6, alpha=0.5) as in lessw2020's Ranger (TCM's configs)
        return lookahead(optax.radam(lr, b1=b1, b2=b2, eps=eps), sync_period=6, slow_step_size=0.5)
    if name == "sgd":
        return optax.sgd(lr, momentum=b1)
    raise ValueError(f"config.optim.name must be adam, adamw, ranger or sgd; got {name!r}")


class LookaheadState(NamedTuple):
    inner: optax.OptState
    slow: Any
    count: jax.Array


def lookahead(inner: optax.GradientTransformation, sync_period: int, slow_step_size: float):
    """Lookahead (Zhang et al. 2019, as Ranger runs it) on a plain parameter tree: ``inner`` moves the fast weights;
    every ``sync_period`` steps the slow weights move ``slow_step_size`` of the way to them and the fast weights
    restart from there. (``optax.lookahead`` instead wants ``LookaheadParams`` as the parameters, which the trainer's
    parameter tree is not.)"""

    def init(params):
        return LookaheadState(inner.init(params), jax.tree.map(jnp.asarray, params), jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        updates, inner_state = inner.update(updates, state.inner, params)
        count = state.count + 1
        sync = count % sync_period == 0
        fast = jax.tree.map(lambda p, u: p + u, params, updates)
        slow = jax.tree.map(lambda s, f: jnp.where(sync, s + slow_step_size * (f - s), s), state.slow, fast)
        out = jax.tree.map(lambda p, f, s: jnp.where(sync, s, f) - p, params, fast, slow)
        return out, LookaheadState(inner_state, slow, count)

    return optax.GradientTransformation(init, update)


def path_str(path: tuple) -> str:
    """``/``-joined names of a ``jax.tree_util`` key path (``text_model/encoder/layers/0/mlp/fc1/kernel``)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def param_labels(params: Any, groups: list[tuple[str, float]]) -> Any:
    """Tree of group labels ("g0", "g1", ...; "default" where no regex matches) matching ``params``."""
    compiled = [(re.compile(rx), f"g{i}") for i, (rx, _) in enumerate(groups)]

    def label(path: tuple, _: Any) -> str:
        name = path_str(path)
        return next((g for rx, g in compiled if rx.search(name)), "default")

    return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params: Any, no_decay: str = DEFAULT_NO_DECAY) -> Any:
    """True where weight decay applies: matrices/kernels whose path does not match ``no_decay``."""
    rx = re.compile(no_decay)
    return jax.tree_util.tree_map_with_path(lambda p, v: bool(v.ndim > 1 and not rx.search(path_str(p))), params)


def make_optimizer(cfg: Any, params: Any, total_steps: int) -> optax.GradientTransformation:
    """The whole update rule for a pure-dict ``params`` tree (string keys).

    Weight decay follows PyTorch: L2 added to the gradient for ``adam``/``sgd``, decoupled (``-lr * wd * param``,
    scaled by the group's multiplier) for ``adamw``/``ranger``. Frozen groups (multiplier 0) never change.
    """
    lr = schedule(cfg, total_steps)
    groups = [(rx, float(m)) for rx, m in cfg.get("groups", [])]
    labels = param_labels(params, groups)
    mults = {"default": 1.0} | {f"g{i}": m for i, (_, m) in enumerate(groups)}

    def group_tx(mult: float) -> optax.GradientTransformation:
        if mult == 0.0:
            return optax.set_to_zero()
        return _base(cfg, lr if mult == 1.0 else (lambda step: lr(step) * mult))

    tx = optax.multi_transform({k: group_tx(m) for k, m in mults.items()}, labels)
    wd = float(cfg.get("weight_decay", 0.0))
    if wd:
        mask = decay_mask(params, cfg.get("no_decay", DEFAULT_NO_DECAY))
        coeff = jax.tree.map(lambda d, label: wd * mults[label] if d else 0.0, mask, labels)
        if cfg.get("name", "adamw") in ("adam", "sgd"):
            tx = optax.chain(_add_scaled_params(coeff), tx)
        else:
            tx = optax.chain(tx, _add_scaled_params(coeff, lr))
    clip = float(cfg.get("grad_clip", 0.0))
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    accumulate = int(cfg.get("accumulate", 1))
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate)
    return tx


def _add_scaled_params(coeff: Any, lr: optax.Schedule | None = None) -> optax.GradientTransformation:
    """``update + c * param`` per leaf (L2 on gradients), or ``update - lr(step) * c * param`` when ``lr`` is given
    (decoupled decay applied after the optimiser, as AdamW does)."""

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jax.numpy.zeros([], jax.numpy.int32))

    def update(updates, state, params):
        scale = 1.0 if lr is None else -lr(state.count)
        new = jax.tree.map(lambda u, p, c: u + scale * c * p if c else u, updates, params, coeff)
        return new, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)
