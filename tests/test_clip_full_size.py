"""Full-size towers (random init) run on CPU at the sizes FastTCM and DPTR use."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_text_spot.models.clip import CLIP, preset


def test_rn50_dense_pool_at_detection_sizes_and_text_at_77():
    model = CLIP(preset("rn50"), rngs=nnx.Rngs(0))
    model.eval()
    dense = nnx.jit(lambda m, x: m.encode_dense(x))
    for h, w in [(640, 640), (1024, 1824)]:
        feats, g, local = dense(model, jnp.zeros((1, h, w, 3)))
        assert [f.shape for f in feats] == [
            (1, h // 4, w // 4, 256),
            (1, h // 8, w // 8, 512),
            (1, h // 16, w // 16, 1024),
            (1, h // 32, w // 32, 2048),
        ]
        assert g.shape == (1, 1024) and local.shape == (1, h // 32, w // 32, 1024)
        assert np.isfinite(np.asarray(local)).all()
    assert nnx.jit(lambda m, x: m.encode_image(x))(model, jnp.zeros((1, 224, 224, 3))).shape == (1, 1024)
    text = nnx.jit(lambda m, x: m.encode_text(x))(model, jnp.ones((2, 77), jnp.int32))
    assert text.shape == (2, 1024)


def test_vit_b16_image_tokens_and_text():
    model = CLIP(preset("vit_b16"), rngs=nnx.Rngs(0))
    px = jnp.zeros((1, 224, 224, 3))
    assert nnx.jit(lambda m, x: m.encode_image(x))(model, px).shape == (1, 512)
    assert nnx.jit(lambda m, x: m.encode_image_tokens(x))(model, px).shape == (1, 197, 512)
    assert nnx.jit(lambda m, x: m.text_hidden_states(x))(model, jnp.ones((1, 77), jnp.int32)).shape == (1, 77, 512)
