"""TCMMatcher structure and behaviour: full-size shapes (abstract), dropout modes, gradients, ``from_clip`` loading."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from clip_text_spot.models.clip import CLIP, CLIPConfig, ResNetConfig, TextConfig
from clip_text_spot.models.fasttcm import CODE_PROMPT, DecoderConfig, FastTCMConfig, TCMMatcher
from clip_text_spot.models.fasttcm.matcher import tokenize_prompts
from clip_text_spot.optim import path_str

TINY_CLIP = CLIPConfig(
    embed_dim=32,
    text=TextConfig(width=16, layers=1, heads=2, mlp_dim=64),
    vision=ResNetConfig(layers=(1, 1, 1, 1), width=8, heads=4, image_size=224),
)


IDS = np.array([[49406, 7, 8, 49407] + [0] * 10])


def materialize(make, seed: int = 0):
    """A concrete module with random numpy values (XLA-compiled initialisers take ~15 s for a ResNet on 2 CPUs).

    Kernels/embeddings ~ N(0, 1/fan_in), LayerNorm scales ~ 1 + N(0, 0.1), BatchNorm variances in [0.5, 1.5].
    """
    graphdef, state = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = path_str(path).split("/")[-1], leaf.shape
        if name == "var":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "scale":
            value = 1 + 0.1 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]) if len(shape) > 1 else 10)
        return jnp.asarray(value, leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def tiny_config(**kw) -> FastTCMConfig:
    dec = DecoderConfig(width=16, heads=4, layers=1, dropout=0.1)
    base = FastTCMConfig(clip=TINY_CLIP.replace(vision={"image_size": 64}), vpg=dec, context_decoder=dec)
    return base.replace(**kw)


def test_full_size_fasttcm_shapes_at_640_abstract():
    model = nnx.eval_shape(lambda: TCMMatcher(FastTCMConfig(), rngs=nnx.Rngs(0)))
    model.eval()
    out = nnx.eval_shape(lambda m, x: m.match(x), model, jax.ShapeDtypeStruct((2, 640, 640, 3), jnp.float32))
    expected = {
        "c2": (2, 160, 160, 256),
        "c3": (2, 80, 80, 512),
        "c4": (2, 40, 40, 1024),
        "c5": (2, 20, 20, 2048),
        "global_feat": (2, 1024),
        "local_feat": (2, 20, 20, 1024),
        "prompt_gen": (2, 512),
        "text_from_encoder": (2, 1, 1024),
        "text_after_bsm": (2, 1, 1024),
        "visual_after_vpg": (2, 20, 20, 1024),
        "text_final": (2, 1, 1024),
        "score_map": (2, 20, 20, 1),
    }
    assert {k: v.shape for k, v in out.items()} == expected
    assert all(v.dtype == jnp.float32 for v in out.values())
    # TCM defaults: 20x20 stored pool grid, 14 + 4 text positions, the code's prompt tokenised by OpenAI's rules
    assert model.backbone.attnpool.positional_embedding.shape == (401, 2048)
    assert model.text_encoder.text_model.embeddings.position_embedding.embedding.shape == (18, 512)
    assert model.contexts.shape == (1, 4, 512) and model.meta_query.shape == (1024,) and model.gamma.shape == (1024,)
    ids = np.asarray(model.prompt_ids)
    assert ids.shape == (1, 14) and ids[0, 0] == 49406 and ids[0, 13] == 49407  # the code prompt fills all 14 slots
    assert len(model.context_decoder.decoder) == 3 and len(model.visual_prompt_generator.decoder) == 3
    # top-level names the trainer's optimiser groups rely on
    params = nnx.state(model, nnx.Param)
    tops = {path_str(p).split("/")[0] for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert tops == {
        "backbone",
        "text_encoder",
        "contexts",
        "prompt_generator",
        "meta_query",
        "visual_prompt_generator",
        "context_decoder",
        "gamma",
        "vis_gamma",
    }


def test_new_modules_initialised_as_tcm():
    def init():  # under jit only these values are computed (the towers' initialisers are dead code)
        m = TCMMatcher(tiny_config(), rngs=nnx.Rngs(0), prompt_ids=IDS)
        return m.contexts[...], m.meta_query[...], m.gamma[...], m.vis_gamma[...], m.prompt_generator.hidden.linear

    contexts, meta_query, gamma, vis_gamma, linear = jax.jit(init)()
    assert contexts.shape == (1, 4, 16) and 0.8 < float(contexts.std()) < 1.2 and float(jnp.abs(contexts).max()) <= 2
    assert meta_query.shape == (32,) and float(meta_query.std()) > 0.5
    np.testing.assert_array_equal(np.asarray(gamma), np.full(32, 1e-3, np.float32))
    assert float(vis_gamma) == pytest.approx(1e-3)
    assert 0.01 < float(linear.kernel[...].std()) < 0.03 and float(jnp.abs(linear.bias[...]).max()) == 0


def test_train_step_dropout_keys_and_gradients():
    """The trainer's functional pattern: merge inside jit, dropout key passed to ``match``."""
    model = materialize(lambda: TCMMatcher(tiny_config(), rngs=nnx.Rngs(0), prompt_ids=IDS))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 64, 96, 3)), jnp.float32)

    @jax.jit
    def step(params, key):
        def loss(p):
            out = nnx.merge(graphdef, p, rest).match(x, rngs=key)
            return out["score_map"].sum(), (out["visual_after_vpg"], out["text_final"])

        return jax.grad(loss, has_aux=True)(params)

    k1, k2 = jax.random.key(2), jax.random.key(3)
    (grads, a), (_, b), (_, a2) = step(params, k1), step(params, k2), step(params, k1)
    for u, v, u2 in zip(a, b, a2, strict=True):
        assert np.abs(np.asarray(u) - np.asarray(v)).max() > 1e-5  # different keys, different masks
        np.testing.assert_array_equal(np.asarray(u), np.asarray(u2))  # same key, same masks
    for name in ("contexts", "prompt_generator", "meta_query", "visual_prompt_generator", "context_decoder"):
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0, name
    with pytest.raises(ValueError, match="rngs"):
        model.match(x)
    model.eval()  # every dropout off: the key does not matter (checked on the decoders, the only dropout users)
    queries, memory = a[0].reshape(2, -1, 32), a[1]

    def twice(decoder):
        return [np.asarray(decoder(queries, memory, rngs=nnx.Rngs(dropout=k))) for k in (k1, k2)]

    for decoder in (model.visual_prompt_generator, model.context_decoder):
        np.testing.assert_array_equal(*twice(decoder))
    model.train()
    first, second = twice(model.visual_prompt_generator)
    assert np.abs(first - second).max() > 1e-5


def test_text_cache_and_precompute_are_fasttcm_only():
    model = nnx.eval_shape(lambda: TCMMatcher(tiny_config(fast=False), rngs=nnx.Rngs(0), prompt_ids=IDS))
    with pytest.raises(ValueError, match="FastTCM"):
        model.precompute_text()
    with pytest.raises(ValueError, match="FastTCM"):
        model.match(jnp.zeros((1, 64, 64, 3)), text_cache=jnp.zeros((1, 1, 32)))
    with pytest.raises(ValueError, match="prompt_ids"):
        TCMMatcher(tiny_config(), rngs=nnx.Rngs(0), prompt_ids=np.zeros((1, 9), np.int32))


@pytest.fixture(scope="module")
def clip():
    model = materialize(lambda: CLIP(TINY_CLIP, rngs=nnx.Rngs(0)), seed=7)
    model.eval()
    return model


def test_from_clip_resizes_pool_positions_like_torch_and_truncates_text(clip):
    dec = DecoderConfig(16, 4, 1)
    config = FastTCMConfig(clip=TINY_CLIP.replace(vision={"image_size": 640}), vpg=dec, context_decoder=dec)
    model = materialize(lambda: TCMMatcher(config, rngs=nnx.Rngs(0)))
    model.load_clip(clip)
    pos = np.array(clip.vision_model.attnpool.positional_embedding[...])  # [1 + 7*7, 256]
    assert pos.shape == (50, 256)
    with torch.no_grad():
        grid = torch.from_numpy(pos[1:]).reshape(1, 7, 7, 256).permute(0, 3, 1, 2)
        resized = F.interpolate(grid, size=(20, 20), mode="bilinear", align_corners=False)
    expected = np.concatenate([pos[:1], resized.permute(0, 2, 3, 1).reshape(400, 256).numpy()])
    got = np.asarray(model.backbone.attnpool.positional_embedding[...])
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    text_pos = np.asarray(clip.text_model.embeddings.position_embedding.embedding[...])
    np.testing.assert_array_equal(
        np.asarray(model.text_encoder.text_model.embeddings.position_embedding.embedding[...]), text_pos[:18]
    )
    np.testing.assert_array_equal(np.asarray(model.backbone.bn1.mean[...]), np.asarray(clip.vision_model.bn1.mean[...]))
    np.testing.assert_array_equal(
        np.asarray(model.backbone.layer4[0].conv3.kernel[...]),
        np.asarray(clip.vision_model.layer4[0].conv3.kernel[...]),
    )
    np.testing.assert_array_equal(
        np.asarray(model.text_encoder.text_projection.kernel[...]), np.asarray(clip.text_projection.kernel[...])
    )
    other = config.replace(clip=config.clip.replace(text={"layers": 2}))
    with pytest.raises(ValueError, match="layers"):
        nnx.eval_shape(lambda: TCMMatcher(other, rngs=nnx.Rngs(0))).load_clip(clip)


def test_text_tower_without_contexts_or_cue_equals_clip_encode_text(clip):
    dec = DecoderConfig(16, 4, 1)
    config = FastTCMConfig(
        clip=TINY_CLIP, n_ctx=0, use_prompt_generator=False, fast=False, vpg=dec, context_decoder=dec
    )
    model = materialize(lambda: TCMMatcher(config, rngs=nnx.Rngs(0)))
    model.load_clip(clip)
    ids = jnp.asarray(model.prompt_ids)
    assert model.contexts is None and ids.shape == (1, 14)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(tokenize_prompts((CODE_PROMPT,), 14)))
    ours = model.text_encoder(ids)
    np.testing.assert_allclose(np.asarray(ours[0]), np.asarray(clip.encode_text(ids)), atol=1e-6, rtol=0)
    # contexts go right after SOT, the cue is added to every position, EOT is read at argmax(ids) + N: the same
    # sequence built by hand through CLIP's own embedding-input path
    model2 = materialize(lambda: TCMMatcher(config.replace(n_ctx=2), rngs=nnx.Rngs(0)))
    model2.load_clip(clip)
    ctx = jax.random.normal(jax.random.key(5), (1, 2, 16))
    cue = jax.random.normal(jax.random.key(6), (3, 16))
    tokens = clip.text_model.embed_tokens(ids)
    seq = jnp.concatenate([tokens[:, :1], ctx, tokens[:, 1:]], axis=1) + cue[:, None, :]
    eot = jnp.full((3,), int(ids[0].argmax()) + 2)
    expected = clip.encode_text_embeddings(seq, eot)
    got = model2.text_encoder(ids, ctx, cue)
    assert got.shape == (3, 1, 32)
    np.testing.assert_allclose(np.asarray(got[:, 0]), np.asarray(expected), atol=1e-6, rtol=0)


def test_config_json_round_trip_and_paper_prompt():
    config = FastTCMConfig(fast=False, n_ctx=32, paper_prompt=True, vpg=DecoderConfig(layers=2))
    back = FastTCMConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    assert back.prompt_texts == ("Text",) and back.text_config.context_length == 46 and back.grid == 20
    with pytest.raises(ValueError, match="vpg.depth"):
        FastTCMConfig.from_dict({**config.to_dict(), "vpg": {"depth": 3}})
    with pytest.raises(ValueError, match="bogus"):
        FastTCMConfig.from_dict({**config.to_dict(), "bogus": 1})
    assert dataclasses.replace(config, paper_prompt=False).prompt_texts == (CODE_PROMPT,)
