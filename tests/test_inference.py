"""models.inference: bound jitted calls on a fixed module, and host work overlapped with the next launch."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models import inference
from clip_text_spot.models.inference import compiled, inference_fn, overlapped

TRACES: list[int] = []


def _apply(model: nnx.Linear, x: jnp.ndarray) -> jnp.ndarray:
    TRACES.append(1)  # runs once per trace, not per call
    return model(x)


def test_inference_fn_matches_module_and_reuses_compilation():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    a, b = nnx.Linear(4, 2, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1))
    TRACES.clear()
    fa, fb = inference_fn(_apply, a), inference_fn(_apply, b)
    np.testing.assert_allclose(fa(x), a(x), rtol=1e-6)
    np.testing.assert_allclose(fb(x), b(x), rtol=1e-6)
    fa(x)
    assert len(TRACES) == 1  # same function, same graph, same shapes: one trace for both models
    assert not np.allclose(fa(x), fb(x))  # ...but each call runs its own model's weights


def test_overlapped_launches_one_ahead_and_keeps_order():
    events = []

    def launch(i):
        events.append(("launch", i))
        return {"value": jnp.full((2,), i)}

    out = []
    for i, result in overlapped(range(3), launch):
        events.append(("host", i))
        assert isinstance(result["value"], np.ndarray)
        out.append(int(result["value"][0]))
    assert out == [0, 1, 2]
    order = [("launch", 0), ("launch", 1), ("host", 0), ("launch", 2), ("host", 1), ("host", 2)]
    assert events == order
    assert list(overlapped([], launch)) == []


class _Scaled(nnx.Module):
    """A tiny model with a compiled public method (as CLIP's ``encode_*`` are)."""

    def __init__(self):
        self.linear = nnx.Linear(4, 2, rngs=nnx.Rngs(0))

    @compiled
    def embed(self, x: jnp.ndarray, times: int = 1, offset: jnp.ndarray | None = None) -> jnp.ndarray:
        TRACES.append(1)
        y = self.linear(x) * times
        return y if offset is None else y + offset


def test_compiled_method_compiles_once_per_shape_and_reads_current_weights():
    model, x = _Scaled(), np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    eager = _Scaled.embed.__wrapped__(model, x, 2)
    TRACES.clear()
    np.testing.assert_allclose(model.embed(x, 2), eager, rtol=1e-6)
    model.embed(x + 1.0, 2)  # same shapes and static values: no new trace
    assert len(TRACES) == 1
    model.embed(x[:2], 2)  # a new shape compiles once more
    model.embed(x, 3)  # so does a new value of a non-array argument
    assert len(TRACES) == 3
    np.testing.assert_allclose(model.embed(x, offset=np.ones(2, np.float32)), eager / 2 + 1, rtol=1e-6)
    model.linear.kernel[...] = model.linear.kernel[...] * 2  # new weights are used without re-binding
    np.testing.assert_allclose(model.embed(x), (x @ model.linear.kernel[...]) + model.linear.bias[...], rtol=1e-6)


def test_compiled_method_is_plain_inside_a_trace_and_in_eager_mode():
    model, x = _Scaled(), np.ones((5, 4), np.float32)
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda m_state, x: nnx.merge(graphdef, m_state).embed(x, 4))
    TRACES.clear()
    out = step(state, x)
    assert len(TRACES) == 1  # the body ran once, inside the outer trace: no compiled call nested in it
    np.testing.assert_allclose(out, _Scaled.embed.__wrapped__(model, x, 4), rtol=1e-6)
    TRACES.clear()
    with jax.disable_jit():
        model.embed(x)
        model.embed(x)
    assert len(TRACES) == 2  # eager: the Python body runs at every call


def _mixed(x, k, w, q):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = jnp.einsum("bhwc,cd->bhwd", y, w)  # a pointwise dot over the feature map: dot work
    s = jnp.einsum("bqd,bkd->bqk", q, q)  # batched (attention-like): dot work
    t = jax.lax.map(lambda a: a @ a.T, q)  # a scan of 2 trips over a [5, 6] @ [6, 5] dot
    return z, s, t


def _mixed_args():
    return (
        jnp.ones((1, 8, 8, 4)),
        jnp.ones((3, 3, 4, 16)),
        jnp.ones((16, 32)),
        jnp.ones((2, 5, 6)),
    )


def test_matmul_flops_counts_convolutions_dots_and_loop_trips():
    conv, dot, wide, narrow = inference.matmul_flops(jax.make_jaxpr(_mixed)(*_mixed_args()).jaxpr)
    assert conv == 2 * 8 * 8 * 16 * (3 * 3 * 4)
    assert dot == 2 * 8 * 8 * 32 * 16 + 2 * 2 * 5 * 5 * 6 + 2 * (2 * 5 * 5 * 6)
    assert wide == 0  # 64 rows, and batched products never count
    assert narrow == 2 * (2 * 5 * 5 * 6)  # the scan's 5-row dot, twice; the 64-row one is not narrow


def test_matmul_flops_counts_wide_dots_by_their_rows():
    rows = inference.ONEDNN_MIN_ROWS
    wide = jax.make_jaxpr(lambda x, w: x @ w)(jnp.ones((2, rows // 2, 8)), jnp.ones((8, 4))).jaxpr
    assert inference.matmul_flops(wide) == (0, 2 * rows * 8 * 4, 2 * rows * 8 * 4, 0)
    narrow = jax.make_jaxpr(lambda x, w: x @ w)(jnp.ones((rows - 1, 8)), jnp.ones((8, 4))).jaxpr
    assert inference.matmul_flops(narrow).wide_dot == 0


def test_cpu_options_pick_conv_kernels_for_convolution_programs(monkeypatch):
    conv_heavy = jax.make_jaxpr(_mixed)(*_mixed_args()).jaxpr
    dot_heavy = jax.make_jaxpr(lambda a: a @ a)(jnp.ones((64, 64))).jaxpr
    wide = jax.make_jaxpr(lambda x, w: x @ w)(jnp.ones((inference.ONEDNN_MIN_ROWS, 8)), jnp.ones((8, 8))).jaxpr
    monkeypatch.setattr(inference.platform, "machine", lambda: "x86_64")
    assert inference.cpu_options(conv_heavy) == inference.CONV_KERNELS
    assert inference.cpu_options(dot_heavy) == ()
    assert inference.cpu_options(wide) == inference.ONEDNN_DOTS
    monkeypatch.setattr(inference.platform, "machine", lambda: "aarch64")
    assert inference.cpu_options(wide) == ()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")  # the user's choice wins
    assert inference.cpu_options(conv_heavy) == ()


def test_cpu_options_pick_xla_kernels_for_convolution_programs_of_few_row_dots():
    rows = inference.XLA_MAX_ROWS - 1

    def pooled_convs(x, k, w):  # convolutions, then dots of `rows` rows on their pooled features
        y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.mean(axis=(1, 2)) @ w

    def convs(n):
        return jax.make_jaxpr(pooled_convs)(jnp.ones((n, 8, 8, 4)), jnp.ones((3, 3, 4, 16)), jnp.ones((16, 8))).jaxpr

    assert inference.matmul_flops(convs(rows)).narrow_dot == 2 * rows * 16 * 8
    assert inference.cpu_options(convs(rows)) == inference.XLA_KERNELS
    assert inference.cpu_options(convs(rows + 1)) == inference.CONV_KERNELS
    prompt = jax.make_jaxpr(lambda x, w: x @ w)(jnp.ones((1, rows, 8)), jnp.ones((8, 8))).jaxpr
    assert inference.cpu_options(prompt) == ()  # dot-bound programs of few-row dots keep the default


class _Convs(nnx.Module):
    def __init__(self):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=nnx.Rngs(0))

    @compiled
    def features(self, x: jnp.ndarray) -> jnp.ndarray:
        return jax.nn.relu(self.conv(x))


def test_compiled_convolution_program_uses_conv_kernels_with_the_same_outputs():
    model, x = _Convs(), np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(model.features(x), _Convs.features.__wrapped__(model, x), atol=1e-5)
    picked = [apply for key, apply in inference._CHOICES.items() if key[0] is _Convs.features.__wrapped__]
    assert picked == [inference._applier(inference.CONV_KERNELS)]
