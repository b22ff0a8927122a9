"""models.inference: bound jitted calls on a fixed module, and host work overlapped with the next launch."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.inference import inference_fn, overlapped

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
