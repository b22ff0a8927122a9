"""Official-module parity of the recognisers: baudm/parseq's PARSeq and OpenOCR's DPTR (``DptrParseq``) loaded with
``load_parseq`` / ``from_openocr_dptr`` against golden data of the official code (tests/data/parseq_tiny and
tests/data/dptr_tiny; ``CTS_PARSEQ_FIXTURE`` / ``CTS_DPTR_FIXTURE`` point at other fixtures of the same layout,
whose ``config.json`` gives the constructor keywords)."""

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from clip_text_spot.dptr.orp import OrpSampler
from clip_text_spot.models.clip.convert import CheckpointMismatchError
from clip_text_spot.models.dptr import from_openocr_dptr, load_parseq
from clip_text_spot.models.dptr.official import DPTR_DECODER_DEFAULTS, VIT_DEFAULTS
from clip_text_spot.models.dptr.parseq import causal_mask, cloze_mask, perm_cross_entropy, plm_loss
from clip_text_spot.models.dptr.perms import perm_masks
from clip_text_spot.models.dptr.pretrain import DptrPretrainModel
from clip_text_spot.models.dptr.recognizer import DptrRecognizer

DATA = Path(__file__).parent / "data"
PARSEQ_DIR = Path(os.environ.get("CTS_PARSEQ_FIXTURE", DATA / "parseq_tiny"))
DPTR_DIR = Path(os.environ.get("CTS_DPTR_FIXTURE", DATA / "dptr_tiny"))
LOGITS_ATOL = 1e-5
LOSS_RTOL = 1e-5


def _fixture(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with open(directory / "config.json") as f:
        config = json.load(f)
    with np.load(directory / "reference.npz") as ref:
        return config, dict(ref)


def _nhwc(images_nchw: np.ndarray) -> jax.Array:
    return jnp.asarray(images_nchw.transpose(0, 2, 3, 1))


def _masks(perms: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Our masks of the official permutations (True = may attend), repeated per sample: [B, K, L, L] each."""
    content, query = (np.stack(m) for m in zip(*(perm_masks(p) for p in perms), strict=True))
    return np.broadcast_to(content, (batch, *content.shape)), np.broadcast_to(query, (batch, *query.shape))


def _decodings(decoder, memory: jax.Array) -> dict[str, jax.Array]:
    """Greedy AR / NAR logits with 0 and 1 refinements (full length, no early exit)."""
    return {
        f"{'ar' if ar else 'nar'}_refine{r}": decoder.predict(memory, r, decode_ar=ar)
        for ar in (True, False)
        for r in (0, 1)
    }


def _losses(decoder, memory: jax.Array, tgt: jax.Array, content: jax.Array, query: jax.Array) -> dict[str, jax.Array]:
    logits = decoder.perm_logits(memory, tgt[:, :-1], content, query)
    ce, n = perm_cross_entropy(logits, tgt[:, 1:], eos=decoder.eos, pad=decoder.pad)
    loss, _ = plm_loss(logits, tgt[:, 1:], eos=decoder.eos, pad=decoder.pad)
    return {"perm_logits": logits, "perm_ce": ce, "perm_n": n, "loss": loss}


def _check_decodings(got: dict, ref: dict, charset, prefix: str, modes: list[str]) -> None:
    """Every fixture mode: logits (the first steps when the official loop exited early), token ids and strings."""
    for mode in modes:
        name = mode.removesuffix("_full")
        want = ref[f"{prefix}logits_{mode}"]
        logits = np.asarray(got[name])[:, : want.shape[1]]
        np.testing.assert_allclose(logits, want, atol=LOGITS_ATOL, rtol=0, err_msg=mode)
        np.testing.assert_array_equal(logits.argmax(-1), ref[f"{prefix}token_ids_{mode}"], err_msg=mode)
        strings = [charset.decode(ids) for ids in np.asarray(got[name]).argmax(-1)]
        assert strings == ref[f"{prefix}pred_strings_{mode}"].tolist(), mode


def _check_losses(got: dict, ref: dict, prefix: str, loss_key: str) -> None:
    np.testing.assert_allclose(np.asarray(got["perm_logits"]), ref[f"{prefix}perm_logits"], atol=LOGITS_ATOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(got["perm_n"]), ref[f"{prefix}perm_n"])
    np.testing.assert_allclose(np.asarray(got["perm_ce"]), ref[f"{prefix}perm_ce"], rtol=LOSS_RTOL, atol=0)
    np.testing.assert_allclose(float(got["loss"]), float(ref[loss_key]), rtol=LOSS_RTOL, atol=0)


def _modes(ref: dict, prefix: str) -> list[str]:
    modes = sorted(k.removeprefix(f"{prefix}logits_") for k in ref if k.startswith(f"{prefix}logits_"))
    assert modes, f"no {prefix}logits_* arrays in the fixture"
    return modes


# ----------------------------------------------------------------------------------------------------------------
# PARSeq (baudm/parseq)


@pytest.fixture(scope="module")
def parseq():
    config, ref = _fixture(PARSEQ_DIR)
    model = load_parseq(str(PARSEQ_DIR / "parseq.safetensors"), **config["model_kwargs"])
    content, query = _masks(ref["perms"], len(ref["tgt"]))

    @nnx.jit
    def run(model, images, tgt, content, query):
        tokens = model.encoder(images)
        out = {"encoder_out": tokens, "decode_logits": model.decode_logits(images, refine_iters=1)}
        return out | _decodings(model.decoder, tokens) | _losses(model.decoder, tokens, tgt, content, query)

    out = run(model, _nhwc(ref["images"]), jnp.asarray(ref["tgt"], jnp.int32), content, query)
    return config, ref, model, out


def test_parseq_loader_reads_the_fixture_sizes(parseq):
    config, _, model, _ = parseq
    kwargs = config["model_kwargs"]
    assert isinstance(model, DptrRecognizer) and model.fmu is None
    cfg, enc = model.decoder.cfg, model.encoder.cfg
    dim = kwargs["embed_dim"]
    heads = kwargs.get("dec_num_heads", dim // 32)
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.max_len) == (dim, kwargs["dec_depth"], heads, kwargs["max_label_length"])
    assert (enc.depth, enc.heads, enc.norm_eps) == (kwargs["enc_depth"], kwargs.get("enc_num_heads", dim // 64), 1e-6)
    assert model.charset.chars == config["charset_train"]


def test_parseq_encoder_decoding_and_loss_match_the_official_model(parseq):
    config, ref, model, out = parseq
    np.testing.assert_allclose(np.asarray(out["encoder_out"]), ref["encoder_out"], atol=LOGITS_ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out["decode_logits"]), ref["logits_ar_refine1_full"], atol=LOGITS_ATOL)
    _check_decodings(out, ref, model.charset, "", _modes(ref, ""))
    _check_losses(out, ref, "", "loss")
    steps = config["model_kwargs"]["max_label_length"] + 1
    np.testing.assert_array_equal(np.asarray(causal_mask(steps)), ~ref["causal_mask"])
    np.testing.assert_array_equal(np.asarray(cloze_mask(steps)), ~ref["cloze_mask"])


def test_official_permutation_masks(parseq):
    _, ref, _, _ = parseq
    for perm, content, query in zip(ref["perms"], ref["perm_content_masks"], ref["perm_query_masks"], strict=True):
        ours_content, ours_query = perm_masks(perm)
        np.testing.assert_array_equal(ours_content, ~content)
        np.testing.assert_array_equal(ours_query, ~query)


def test_parseq_lightning_prefix_and_errors(tmp_path):
    config, _ = _fixture(PARSEQ_DIR)
    kwargs = config["model_kwargs"]
    tensors = load_file(PARSEQ_DIR / "parseq.safetensors")
    prefixed = tmp_path / "lightning.safetensors"
    save_file({f"model.{k}": v for k, v in tensors.items()}, str(prefixed))
    assert load_parseq(str(prefixed), **kwargs).decoder.cfg.max_len == kwargs["max_label_length"]

    def broken(name, change):
        path = tmp_path / f"{name}.safetensors"
        save_file(change(dict(tensors)), str(path))
        return str(path)

    missing = broken("missing", lambda t: {k: v for k, v in t.items() if k != "decoder.layers.0.norm_q.bias"})
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.layers\.0\.norm_q\.bias"):
        load_parseq(missing, **kwargs)
    extra = broken("extra", lambda t: t | {"encoder.cls_token": np.zeros((1, 1, 8), np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"encoder\.cls_token"):
        load_parseq(extra, **kwargs)
    width = tensors["decoder.layers.0.linear2.bias"].shape[0]
    shaped = broken("shaped", lambda t: t | {"decoder.layers.0.linear2.bias": np.zeros(width + 1, np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.layers\.0\.linear2\.bias"):
        load_parseq(shaped, **kwargs)
    with pytest.raises(CheckpointMismatchError, match="embed_dim"):
        load_parseq(str(PARSEQ_DIR / "parseq.safetensors"), **(kwargs | {"embed_dim": kwargs["embed_dim"] + 8}))
    with pytest.raises(ValueError, match="safetensors"):
        load_parseq(str(tmp_path / "parseq.pt"))


# ----------------------------------------------------------------------------------------------------------------
# DPTR (OpenOCR)


def _pretrain_checkpoint(path: Path) -> Path:
    """The fixture's decoder as a pre-training checkpoint (no encoder, FMU or token queries; a frozen-CLIP tensor
    as real ones carry, which the loader skips)."""
    tensors = load_file(path / "dptr.safetensors")
    keep = {k: v for k, v in tensors.items() if not k.startswith(("encoder.", "decoder.fmu.", "decoder.token_query"))}
    keep["decoder.clip_encoder.positional_embedding"] = np.zeros((77, 8), np.float32)
    return keep


@pytest.fixture(scope="module")
def dptr(tmp_path_factory):
    config, ref = _fixture(DPTR_DIR)
    kwargs = {"decoder": config["decoder_kwargs"], "encoder": config["encoder_kwargs"]}
    model = from_openocr_dptr(str(DPTR_DIR / "dptr.safetensors"), **kwargs)
    pre_path = tmp_path_factory.mktemp("dptr") / "pretrain.safetensors"
    save_file(_pretrain_checkpoint(DPTR_DIR), str(pre_path))
    pretrain = from_openocr_dptr(str(pre_path), decoder=config["decoder_kwargs"])
    orp = config["orp"]
    sampler = OrpSampler(ref["orp_bank"], lam=orp["lambda"], tokens=ref["clip_memory"].shape[1])
    noise = sampler.sample(len(ref["tgt"]), np.random.RandomState(orp["np_seed"]))
    content, query = _masks(ref["perms"], len(ref["tgt"]))

    @nnx.jit
    def run(model, pretrain, images, clip_memory, noise, tgt, content, query):
        tokens = model.encoder(images)
        fmu = model.fmu(tokens)
        memory = pretrain.memory({"memory": clip_memory, "orp_noise": noise})
        out = {
            "encoder_tokens": tokens,
            "fmu_of_official_tokens": model.fmu(jnp.asarray(ref["encoder_tokens"])),
            "decode_logits": model.decode_logits(images, refine_iters=1),
            "pretrain_memory": memory,
        }
        out |= {f"finetune_{k}": v for k, v in _decodings(model.decoder, fmu).items()}
        out |= {f"pretrain_{k}": v for k, v in _decodings(pretrain.decoder, clip_memory).items()}
        finetune = _losses(model.decoder, fmu, tgt, content, query)
        pre = _losses(pretrain.decoder, memory, tgt, content, query)
        return out, finetune, pre

    args = (_nhwc(ref["images"]), ref["clip_memory"], noise, jnp.asarray(ref["tgt"], jnp.int32), content, query)
    out, finetune, pre = run(model, pretrain, *args)
    return config, ref, model, pretrain, out, finetune, pre


def test_dptr_loader_reads_the_fixture_sizes(dptr):
    config, _, model, pretrain, *_ = dptr
    dec, enc = config["decoder_kwargs"], config["encoder_kwargs"]
    assert isinstance(model, DptrRecognizer) and isinstance(pretrain, DptrPretrainModel)
    assert pretrain.clip_text is None and not hasattr(pretrain, "fmu")
    assert model.fmu.token_query.shape[1] == config["fmu_num_queries"]
    cfg = model.decoder.cfg
    heads = dec.get("dec_num_heads", DPTR_DECODER_DEFAULTS["dec_num_heads"])
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.max_len) == (
        dec["embed_dim"],
        dec["dec_depth"],
        heads,
        dec["max_label_length"],
    )
    assert model.encoder.cfg.heads == enc.get("num_heads", VIT_DEFAULTS["num_heads"])
    assert model.encoder.cfg.depth == enc["depth"] and model.encoder.cfg.width == enc["embed_dim"]
    assert model.charset.chars == config["charset"]
    assert pretrain.decoder.cfg == dataclasses.replace(cfg, fmu_queries=None)


def test_dptr_encoder_fmu_and_orp_match_the_official_model(dptr):
    _, ref, _, _, out, _, _ = dptr
    np.testing.assert_allclose(np.asarray(out["encoder_tokens"]), ref["encoder_tokens"], atol=LOGITS_ATOL, rtol=0)
    # the FMU given the official encoder tokens; values reach ~4, where 1e-6 is a few float32 ulps
    np.testing.assert_allclose(np.asarray(out["fmu_of_official_tokens"]), ref["fmu_out"], atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["pretrain_memory"]), ref["pretrain_memory"], atol=1e-6, rtol=0)


def test_dptr_decoding_matches_the_official_model(dptr):
    _, ref, model, _, out, _, _ = dptr
    np.testing.assert_allclose(np.asarray(out["decode_logits"]), ref["finetune_logits_ar_refine1_full"], atol=1e-5)
    for stage in ("finetune", "pretrain"):
        got = {k.removeprefix(f"{stage}_"): v for k, v in out.items() if k.startswith(f"{stage}_")}
        _check_decodings(got, ref, model.charset, f"{stage}_", _modes(ref, f"{stage}_"))


def test_dptr_losses_match_the_official_model(dptr):
    _, ref, _, _, _, finetune, pre = dptr
    _check_losses(finetune, ref, "finetune_", "finetune_loss")
    np.testing.assert_allclose(np.asarray(finetune["perm_logits"][0]), ref["finetune_final_out"], atol=LOGITS_ATOL)
    _check_losses(pre, ref, "pretrain_", "pretrain_loss")
    np.testing.assert_allclose(np.asarray(pre["perm_logits"][0]), ref["pretrain_final_out"], atol=LOGITS_ATOL)


def test_dptr_keywords_are_checked():
    config, _ = _fixture(DPTR_DIR)
    path = str(DPTR_DIR / "dptr.safetensors")
    dec, enc = config["decoder_kwargs"], config["encoder_kwargs"]
    with pytest.raises(CheckpointMismatchError, match="dec_depth"):
        from_openocr_dptr(path, decoder=dec | {"dec_depth": dec["dec_depth"] + 1}, encoder=enc)
    with pytest.raises(ValueError, match="unknown DptrParseq"):
        from_openocr_dptr(path, decoder=dec | {"dec_heads": 2}, encoder=enc)
    with pytest.raises(ValueError, match="use_cls_token"):
        from_openocr_dptr(path, decoder=dec, encoder=enc | {"use_cls_token": True})
    with pytest.raises(CheckpointMismatchError, match="img_size"):
        from_openocr_dptr(path, decoder=dec, encoder=enc | {"img_size": [64, 128]})
