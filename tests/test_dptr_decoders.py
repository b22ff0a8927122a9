"""DPTR decoders and fine-tuning modules on random weights: AR decoding (dptr.md §10 item 6), FMU (item 7)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clip_text_spot.data.rec_labels import Charset
from clip_text_spot.models.dptr.config import DecoderConfig, EncoderConfig
from clip_text_spot.models.dptr.parseq import causal_mask, cloze_mask
from clip_text_spot.models.dptr.recognizer import DptrRecognizer, FeatureMergeUnit, RecViT, build_decoder

CHARSET = Charset(max_len=6)  # 7 decoding steps keep the step-by-step reference quick
STEPS = 7


def _sharpen(decoder):
    """Random init gives near-uniform logits; larger embeddings/head make the greedy path non-trivial."""
    key = jax.random.key(7)
    decoder.text_embed.embedding[...] = jax.random.normal(key, decoder.text_embed.embedding.shape)
    decoder.head.kernel[...] = 3.0 * jax.random.normal(jax.random.fold_in(key, 1), decoder.head.kernel.shape)
    return decoder


def _decoder(kind):
    cfg = DecoderConfig(kind=kind, dim=32, depth=2, heads=4, dropout=0.1, max_len=6)
    decoder = _sharpen(build_decoder(cfg, CHARSET, rngs=nnx.Rngs(0)))
    decoder.eval()
    return decoder


def _memory(b=3, m=10):
    return jax.random.normal(jax.random.key(1), (b, m, 32))


@nnx.jit
def _logits(decoder, tgt_in, kv, content_mask, query_mask, queries=None):
    """``decoder.logits`` compiled per shape (op-by-op execution of the growing contexts is slow on CPU)."""
    return decoder.logits(tgt_in, kv, content_mask, query_mask, queries=queries)


def _incremental_parseq(decoder, memory, refine):
    """PARSeq's forward_test, growing the context one token at a time (masks built here with numpy)."""
    b = memory.shape[0]
    kv = decoder.memory_kv(memory)
    masked = np.triu(np.ones((STEPS, STEPS), bool), 1)  # torch convention: True = masked
    pos = decoder.pos_queries[...]
    tgt_in = np.full((b, STEPS), CHARSET.PAD, np.int32)
    tgt_in[:, 0] = CHARSET.BOS
    logits = []
    for i in range(STEPS):
        j = i + 1
        out = _logits(decoder, jnp.asarray(tgt_in[:, :j]), kv, ~masked[:j, :j], ~masked[i:j, :j], pos[:, i:j])
        logits.append(np.asarray(out))
        if j < STEPS:
            tgt_in[:, j] = np.asarray(out)[:, 0].argmax(-1)
    logits = np.concatenate(logits, axis=1)
    if refine:
        query_masked = masked.copy()
        query_masked[np.triu(np.ones((STEPS, STEPS), bool), 2)] = False  # cloze: only content i + 1 hidden
        tgt_in = np.concatenate([np.full((b, 1), CHARSET.BOS), logits[:, :-1].argmax(-1)], axis=1)
        padded = np.cumsum(tgt_in == CHARSET.EOS, axis=-1) > 0
        keep = ~padded[:, None, None, :]
        # the official content and query masks are one tensor: the cloze edit reaches the content stream too
        # (tests/data/parseq_tiny/README.md; this reference used the causal content mask before the official
        # fixtures showed otherwise)
        logits = np.asarray(_logits(decoder, jnp.asarray(tgt_in), kv, ~query_masked & keep, ~query_masked & keep))
    return logits


@pytest.mark.parametrize("refine", [0, 1])
def test_parseq_fixed_length_decode_equals_incremental_decode(refine):
    decoder, memory = _decoder("parseq"), _memory()
    got = np.asarray(nnx.jit(lambda d, m: d.predict(m, refine_iters=refine))(decoder, memory))
    ref = _incremental_parseq(decoder, memory, refine)
    assert got.shape == (3, STEPS, CHARSET.num_classes)
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)
    np.testing.assert_array_equal(got.argmax(-1), ref.argmax(-1))
    assert len(set(ref.argmax(-1).ravel().tolist())) > 3  # a non-trivial greedy path was compared


def test_refinement_changes_the_logits():
    decoder, memory = _decoder("parseq"), _memory()
    assert not np.allclose(decoder.predict(memory, refine_iters=0), decoder.predict(memory, refine_iters=1))


def test_causal_refinement_content_mask_is_an_option():
    decoder, memory = _decoder("parseq"), _memory()  # depth 2: the content stream feeds the last layer
    causal = build_decoder(dataclasses.replace(decoder.cfg, refine_content_mask="causal"), CHARSET, rngs=nnx.Rngs(0))
    nnx.update(causal, nnx.state(decoder))
    causal.eval()
    kv = decoder.memory_kv(memory)
    first = decoder.initial_logits(kv, True)
    official, intended = decoder.refine(kv, first), causal.refine(kv, first)
    assert not np.allclose(official, intended, atol=1e-3)
    bos = jnp.full((3, 1), CHARSET.BOS, jnp.int32)
    context = jnp.concatenate([bos, jnp.argmax(first[:, :-1], -1).astype(jnp.int32)], axis=1)
    padding = jnp.cumsum(context == CHARSET.EOS, axis=-1) > 0
    keep = ~padding[:, None, None, :]
    cloze = cloze_mask(STEPS) & keep
    np.testing.assert_allclose(intended, decoder.logits(context, kv, causal_mask(STEPS) & keep, cloze), atol=1e-5)


def test_nrtr_fixed_length_decode_equals_incremental_decode():
    decoder, memory = _decoder("nrtr"), _memory()
    kv = decoder.memory_kv(memory)
    nrtr_logits = nnx.jit(lambda d, t, kv: d.logits(t, kv))
    tgt_in = np.full((3, STEPS), CHARSET.PAD, np.int32)
    tgt_in[:, 0] = CHARSET.BOS
    ref = []
    for i in range(STEPS):
        out = np.asarray(nrtr_logits(decoder, jnp.asarray(tgt_in[:, : i + 1]), kv))[:, -1]
        ref.append(out)
        if i + 1 < STEPS:
            tgt_in[:, i + 1] = out.argmax(-1)
    ref = np.stack(ref, axis=1)
    got = np.asarray(nnx.jit(lambda d, m: d.predict(m))(decoder, memory))
    np.testing.assert_allclose(got, ref, atol=2e-4, rtol=1e-4)
    assert len(set(ref.argmax(-1).ravel().tolist())) > 3


@pytest.mark.parametrize("kind", ["parseq", "nrtr"])
def test_training_loss_is_finite_and_trains_in_train_mode(kind):
    from clip_text_spot.models.dptr.perms import batch_perm_masks

    decoder = _decoder(kind)
    decoder.train()
    batch = {"label": jnp.asarray(np.stack([CHARSET.encode("Hi"), CHARSET.encode("there")]))}
    batch.update({k: jnp.asarray(v) for k, v in batch_perm_masks(2, 6, 6, np.random.default_rng(0)).items()})
    memory = _memory(2)
    loss_a, logits = decoder.loss(memory, batch, nnx.Rngs(dropout=0))
    loss_b, _ = decoder.loss(memory, batch, nnx.Rngs(dropout=1))
    assert logits.shape == (2, STEPS, CHARSET.num_classes) and np.isfinite(float(loss_a))
    assert float(loss_a) != float(loss_b)  # dropout is active in train mode


def test_fmu_shapes_and_structure():
    fmu = FeatureMergeUnit(32, 4, STEPS, 24, rate=0.1, rngs=nnx.Rngs(0))
    fmu.eval()
    params = nnx.to_pure_dict(nnx.state(fmu, nnx.Param))
    assert sorted(params) == ["cross_attn", "mlp", "norm", "token_query"]  # one LN (before the MLP), no final LN
    assert params["token_query"].shape == (1, STEPS, 32)
    assert params["cross_attn"]["k_proj"]["kernel"].shape == (24, 32)  # image features of another width
    feats = jax.random.normal(jax.random.key(2), (2, 12, 24))
    out = np.asarray(fmu(feats))
    assert out.shape == (2, STEPS, 32)

    # the FMU equations by hand: Q = Q0 + MHA(Q0, F); F_u = Q + W2 GELU(W1 LN(Q))
    def lin(x, p):
        return x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])

    a = params["cross_attn"]
    q0 = np.broadcast_to(np.asarray(params["token_query"]), (2, STEPS, 32))
    q, k, v = lin(q0, a["q_proj"]), lin(feats, a["k_proj"]), lin(feats, a["v_proj"])
    split = lambda x: x.reshape(x.shape[0], x.shape[1], 4, 8).transpose(0, 2, 1, 3)  # noqa: E731
    att = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(8)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    mixed = (att @ split(v)).transpose(0, 2, 1, 3).reshape(2, STEPS, 32)
    q1 = q0 + lin(mixed, a["out_proj"])
    mu, var = q1.mean(-1, keepdims=True), q1.var(-1, keepdims=True)
    ln = (q1 - mu) / np.sqrt(var + 1e-5) * np.asarray(params["norm"]["scale"]) + np.asarray(params["norm"]["bias"])
    hidden = np.asarray(jax.nn.gelu(lin(ln, params["mlp"]["fc1"]), approximate=False))
    np.testing.assert_allclose(out, q1 + lin(hidden, params["mlp"]["fc2"]), atol=1e-5)


def test_rec_vit_and_recognizer_shapes():
    enc = EncoderConfig(width=24, depth=1, heads=4)
    vit = RecViT(enc, rngs=nnx.Rngs(0))
    assert vit(jnp.zeros((2, 32, 128, 3))).shape == (2, 128, 24)  # 8 x 16 patches of 4 x 8, no class token
    with pytest.raises(ValueError, match=r"expected \[B, 32, 128, 3\]"):
        vit(jnp.zeros((2, 32, 100, 3)))
    model = DptrRecognizer(enc, DecoderConfig(dim=32, depth=1, heads=4, max_len=6), CHARSET, rngs=nnx.Rngs(0))
    model.eval()
    assert sorted(nnx.to_pure_dict(nnx.state(model, nnx.Param))) == ["decoder", "encoder", "fmu"]
    assert model.memory(jnp.zeros((2, 32, 128, 3))).shape == (2, STEPS, 32)
    assert model.predict(jnp.zeros((2, 32, 128, 3))).shape == (2, STEPS, 95)
    with pytest.raises(ValueError, match="patch_size"):
        EncoderConfig(patch_size=(5, 8))


def test_recognizer_bfloat16_compute_keeps_float32_params_and_logits():
    enc, dec = EncoderConfig(width=24, depth=1, heads=4), DecoderConfig(dim=32, depth=1, heads=4, max_len=6)
    model = DptrRecognizer(enc, dec, CHARSET, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    model.eval()
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    assert model.memory(jnp.zeros((2, 32, 128, 3))).dtype == jnp.bfloat16
    logits = model.predict(jnp.ones((2, 32, 128, 3)))
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
