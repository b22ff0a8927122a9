"""Optimiser groups: frozen parameters never move, lr multipliers scale updates, no decay on norms/biases."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from clip_text_spot.optim import decay_mask, make_optimizer, param_labels


def cfg(**kw):
    base = dict(name="adamw", lr=0.1, weight_decay=0.5, schedule="constant", groups=[("^text/", 0.0), ("^vis/", 0.1)])
    return ml_collections.ConfigDict(base | kw)


PARAMS = {
    "text": {"w": jnp.ones((3, 3)), "norm": {"scale": jnp.ones(3)}},
    "vis": {"w": jnp.ones((3, 3)), "b": jnp.ones(3)},
    "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2), "layer_norm": {"scale": jnp.ones(2)}},
}


def step(tx, params, grads):
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    return optax.apply_updates(params, updates)


def test_labels_and_decay_mask():
    labels = param_labels(PARAMS, cfg().groups)
    assert labels["text"]["w"] == "g0" and labels["vis"]["b"] == "g1" and labels["head"]["kernel"] == "default"
    mask = decay_mask(PARAMS)
    assert mask["head"]["kernel"] and not mask["head"]["bias"] and not mask["head"]["layer_norm"]["scale"]


def test_frozen_group_is_bit_identical_and_multiplier_scales():
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    new = step(make_optimizer(cfg(weight_decay=0.0), PARAMS, 10), PARAMS, grads)
    np.testing.assert_array_equal(new["text"]["w"], PARAMS["text"]["w"])
    np.testing.assert_array_equal(new["text"]["norm"]["scale"], PARAMS["text"]["norm"]["scale"])
    # Adam's first step moves every coordinate by lr (sign of the gradient): 0.1 default, 0.01 for lr x 0.1
    np.testing.assert_allclose(new["head"]["kernel"], 1 - 0.1, rtol=1e-5)
    np.testing.assert_allclose(new["vis"]["w"], 1 - 0.01, rtol=1e-5)


def test_decoupled_weight_decay_skips_norms_and_biases():
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    new = step(make_optimizer(cfg(), PARAMS, 10), PARAMS, zero)
    np.testing.assert_allclose(new["head"]["kernel"], 1 - 0.1 * 0.5, rtol=1e-6)  # -lr * wd * p
    np.testing.assert_allclose(new["vis"]["w"], 1 - 0.01 * 0.5, rtol=1e-6)  # group lr multiplier applies
    np.testing.assert_array_equal(new["head"]["bias"], 1.0)
    np.testing.assert_array_equal(new["head"]["layer_norm"]["scale"], 1.0)
    np.testing.assert_array_equal(new["text"]["w"], 1.0)  # frozen: no decay either


def test_poly_schedule_is_finite_past_the_end_and_matches_mmocr():
    from clip_text_spot.optim import schedule

    sched = schedule(ml_collections.ConfigDict(dict(lr=0.1, schedule="poly", poly_power=0.9, min_lr=1e-7)), 10)
    np.testing.assert_allclose(float(sched(4)), (0.1 - 1e-7) * (1 - 0.4) ** 0.9 + 1e-7, rtol=1e-6)
    assert float(sched(10)) == pytest.approx(1e-7) and float(sched(25)) == pytest.approx(1e-7)


def test_ranger_on_plain_params_matches_torch_radam_with_lookahead():
    """``ranger`` = RAdam + Lookahead(k=6, alpha=0.5) on the trainer's plain parameter tree, against PyTorch's RAdam
    with the slow-weight sync done on its tensors as Ranger does (14 steps: two syncs, RAdam's warm and rectified
    phases; the two place RAdam's eps differently, within 1e-5 here)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    grads = rng.normal(size=(14, 4, 3)).astype(np.float32)
    c = cfg(name="ranger", weight_decay=0.0, groups=[], lr=0.01, b1=0.95, eps=1e-5)
    params = {"w": jnp.asarray(w0)}
    tx = make_optimizer(c, params, 100)
    state = tx.init(params)
    step_fn = jax.jit(tx.update)
    w = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.RAdam([w], lr=0.01, betas=(0.95, 0.999), eps=1e-5)
    slow = w.detach().clone()
    for i, g in enumerate(grads):
        updates, state = step_fn({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        w.grad = torch.from_numpy(g)
        opt.step()
        if (i + 1) % 6 == 0:
            with torch.no_grad():
                slow += 0.5 * (w - slow)
                w.copy_(slow)
        np.testing.assert_allclose(np.asarray(params["w"]), w.detach().numpy(), atol=1e-5, err_msg=f"step {i + 1}")
