"""Fine-tuning starts from the pre-trained decoder: exactly the decoder subtree is copied (dptr.md §10 item 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from clip_text_spot.checkpoint import TrainCheckpointer, read_step_config, resolve_step_dir
from clip_text_spot.models.clip import CheckpointMismatchError
from clip_text_spot.tasks.dptr import DptrFinetuneTask, DptrPretrainTask
from configs.dptr import get_config

SMALL_DECODER = dict(dim=32, depth=1, heads=4)
SMALL_CLIP = dict(
    embed_dim=32,
    text=dict(width=32, layers=1, heads=4, mlp_dim=64, context_length=77),
    vision=dict(image_size=32, patch_size=16, width=16, layers=1, heads=4, mlp_dim=32),
)


def _flat(tree):
    tree = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree
    return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope="module")
def pretrain_workdir(tmp_path_factory):
    """A multi-stage workdir whose pretrain stage holds one trainer checkpoint (decoder + frozen CLIP text)."""
    workdir = tmp_path_factory.mktemp("dptr")
    config = get_config("demo").pretrain
    config.model.decoder.update(SMALL_DECODER)
    config.clip.overrides.update(SMALL_CLIP)
    config.orp.lam = 0.0
    task = DptrPretrainTask(config)
    model = task.build_model(nnx.Rngs(5))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    state = {"step": jnp.asarray(7, jnp.int32), "params": params, "opt": jax.tree.map(jnp.zeros_like, params)}
    ckpt = TrainCheckpointer(str(workdir / "pretrain"), save_every=1, async_save=False)
    ckpt.save(7, state, None, {"config": config.to_dict()}, force=True)
    ckpt.close()
    return workdir, params


def _finetune_task(init, **decoder):
    config = get_config("demo").finetune
    config.model.decoder.update({**SMALL_DECODER, **decoder})
    config.model.encoder.update(dict(width=16, depth=1, heads=4))
    config.init.decoder = init
    return DptrFinetuneTask(config)


def test_only_the_decoder_subtree_is_copied(pretrain_workdir):
    workdir, saved = pretrain_workdir
    assert "clip_text" in saved and "decoder" in saved  # the checkpoint also holds the frozen CLIP text tower
    task = _finetune_task(str(workdir / "pretrain"))
    model = task.build_model(nnx.Rngs(0))
    fresh = _flat(nnx.state(model, nnx.Param))
    task.load_pretrained(model)
    after = _flat(nnx.state(model, nnx.Param))
    assert {k.split("/")[0] for k in after} == {"encoder", "fmu", "decoder"}
    decoder_keys = [k for k in after if k.startswith("decoder/")]
    assert len(decoder_keys) == len(_flat(saved["decoder"])) > 10
    saved_decoder = _flat(saved["decoder"])
    for key in decoder_keys:  # text_embed, pos_queries, layers, norm, head: all from the checkpoint
        np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(saved_decoder[key[len("decoder/") :]]))
    assert any(not np.array_equal(after[k], fresh[k]) for k in decoder_keys)
    for key in after:  # encoder and FMU keep their fresh initialisation
        if not key.startswith("decoder/"):
            np.testing.assert_array_equal(np.asarray(after[key]), np.asarray(fresh[key]))


def test_checkpoint_lookup_and_config(pretrain_workdir):
    workdir, _ = pretrain_workdir
    step_dir = workdir / "pretrain" / "ckpt" / "7"
    assert resolve_step_dir(workdir / "pretrain") == step_dir
    assert resolve_step_dir(workdir, stage="pretrain") == step_dir
    assert resolve_step_dir(step_dir) == step_dir
    assert read_step_config(step_dir)["task"] == "dptr_pretrain"
    with pytest.raises(FileNotFoundError, match="no trainer checkpoint"):
        resolve_step_dir(workdir / "pretrain" / "ckpt" / "7" / "meta")


def test_mismatching_decoder_is_a_clear_error(pretrain_workdir):
    workdir, _ = pretrain_workdir
    for decoder in (dict(depth=2), dict(kind="nrtr")):
        task = _finetune_task(str(workdir / "pretrain"), **decoder)
        with pytest.raises(CheckpointMismatchError, match="--config.init.decoder"):
            task.load_pretrained(task.build_model(nnx.Rngs(0)))


def test_no_init_keeps_a_random_decoder():
    task = _finetune_task("")
    model = task.build_model(nnx.Rngs(0))
    before = _flat(nnx.state(model, nnx.Param))
    task.load_pretrained(model)
    after = _flat(nnx.state(model, nnx.Param))
    assert all(np.array_equal(before[k], after[k]) for k in before)
