"""Multi-scale deformable attention against the official ``ms_deform_attn_core_pytorch`` / ``MSDeformAttn``
(``testr_tiny`` fixture or ``CTS_TESTR_FIXTURE``): core output and its gradients (w.r.t. value, locations, weights;
locations in [-0.3, 1.3] so samples leave the maps), the module with 2-D and 4-D references and a padding mask,
and the sampling-offset bias init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_testr_model import EFF, FIXTURE, TOL, load

from clip_text_spot.models.testr.deform_attn import MSDeformAttn, ms_deform_attn_core, offset_bias_init


@pytest.fixture(scope="module")
def ref():
    return np.load(FIXTURE / "reference.npz")


def shapes_of(ref):
    return tuple(tuple(s) for s in ref["msda_core_spatial_shapes"].tolist())


@pytest.fixture(scope="module")
def results(ref):
    """Core output + gradients and both modules' outputs, one jit."""
    model = load()
    shapes = shapes_of(ref)
    attn = nnx.split((model.transformer.encoder_layers[0].self_attn, model.transformer.decoder_layers[0].attn_cross))
    graphdef, state = attn

    @jax.jit
    def run(state, r):
        enc, dec = nnx.merge(graphdef, state)
        weights = r["msda_core_attention_weights"]

        def loss(value, locations, weights):
            out = ms_deform_attn_core(value, shapes, locations, weights)
            return (out * r["msda_core_grad_out"]).sum(), out

        grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(
            r["msda_core_value"], r["msda_core_locations"], weights
        )
        q, x, mask = r["msda_module_query"], r["msda_module_input"], r["msda_module_mask"]
        return {
            "msda_core_out": out,
            "msda_core_grad_value": grads[0],
            "msda_core_grad_locations": grads[1],
            "msda_core_grad_attention_weights": grads[2],
            "msda_module_enc0_out_ref2": enc(q, r["msda_module_ref2"], x, shapes, mask),
            "msda_module_dec0_out_ref4": dec(q, r["msda_module_ref4"], x, shapes, mask),
        }

    inputs = {k: jnp.asarray(ref[k]) for k in ref.files if k.startswith("msda_core_") or k.startswith("msda_module_")}
    return jax.tree.map(np.asarray, run(state, inputs))


def test_core_and_gradients(ref, results):
    n, lq, m, levels, points, _ = ref["msda_core_locations"].shape
    np.testing.assert_allclose(
        ref["msda_core_attention_weights"],
        np.asarray(jax.nn.softmax(ref["msda_core_attention_logits"], -1)).reshape(n, lq, m, levels, points),
        atol=1e-6,
    )
    for name in ("out", "grad_value", "grad_locations", "grad_attention_weights"):
        key = f"msda_core_{name}"
        np.testing.assert_allclose(results[key], ref[key], rtol=TOL, atol=TOL, err_msg=key)
    assert np.abs(ref["msda_core_grad_locations"]).max() > 0.1  # the location gradient is not trivially zero


@pytest.mark.parametrize("key", ["msda_module_enc0_out_ref2", "msda_module_dec0_out_ref4"])
def test_module(ref, results, key):
    np.testing.assert_allclose(results[key], ref[key], rtol=TOL, atol=TOL, err_msg=key)


def test_sampling_offset_bias_init(ref):
    heads, levels = EFF["nhead"], EFF["num_feature_levels"]
    for part, points in (("enc", EFF["enc_n_points"]), ("dec", EFF["dec_n_points"])):
        module = MSDeformAttn(EFF["d_model"], levels, heads, points, rngs=nnx.Rngs(0))
        np.testing.assert_array_equal(
            np.asarray(module.sampling_offsets.bias[...]), offset_bias_init(heads, levels, points)
        )
        np.testing.assert_array_equal(
            offset_bias_init(heads, levels, points), ref[f"msda_init_sampling_offsets_bias_{part}"]
        )
        assert not np.any(np.asarray(module.sampling_offsets.kernel[...]))
        assert not np.any(np.asarray(module.attention_weights.kernel[...]))


def test_bfloat16_samples_in_float32(ref):
    """Under bf16 compute, locations and weights stay float32 and the output stays close to float32's."""
    shapes = shapes_of(ref)
    dim, heads, levels, points = EFF["d_model"], EFF["nhead"], len(shapes), EFF["enc_n_points"]
    f32 = MSDeformAttn(dim, levels, heads, points, rngs=nnx.Rngs(1))
    bf16 = MSDeformAttn(dim, levels, heads, points, rngs=nnx.Rngs(1), dtype=jnp.bfloat16)
    q, x, mask = (jnp.asarray(ref[f"msda_module_{k}"]) for k in ("query", "input", "mask"))

    ref2 = jnp.asarray(ref["msda_module_ref2"])
    sampled = jax.eval_shape(lambda: bf16.sampling(q.astype(jnp.bfloat16), ref2, shapes))
    assert [s.dtype for s in sampled] == [jnp.float32, jnp.float32]
    want, got = jax.jit(lambda r: (f32(q, r, x, shapes, mask), bf16(q, r, x, shapes, mask)))(ref2)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=0.05 * float(np.abs(want).max()))
