"""FastTCM with the FCENet and PANet heads through the real task, input pipeline, train step and post-processing;
the head registry; the few-shot ``data.fraction`` switch."""

import jax
import numpy as np
import pytest

from clip_text_spot import parallel, trainer
from clip_text_spot.data.pipeline import make_det_eval_batches
from clip_text_spot.data.types import DetSample
from clip_text_spot.heads import HEADS, make_head
from clip_text_spot.models.inference import to_host
from clip_text_spot.tasks.fasttcm import FastTCMTask, fraction_indices
from configs.fasttcm import get_config


def tiny(head: str):
    config = get_config(f"demo,head={head}")
    config.model.pool_size = 96
    config.data.image_size = (96, 96)
    config.data.crop_size = 96
    config.data.eval_size = (96, 96)
    config.data.num_words = (1, 2)
    config.data.style.font_size = (10, 16)  # words well inside the crop (FCE levels take proportions < 1)
    config.data.eval_samples = 2
    config.batch_size = 2
    config.model.fce_channels = config.model.pan_channels = 16  # narrow necks: a cheaper compile
    config.model.fpem_repeat = 1
    config.data.max_instances = 4
    config.optim.warmup_steps = 0
    return config


@pytest.mark.parametrize("head", ["fce", "pan"])
def test_head_trains_and_postprocesses(head: str):
    """Two train steps on the pipeline's own targets change the head and keep the loss finite; the eval path turns
    the prediction into per-image instances in original-image pixels."""
    config = tiny(head)
    task = FastTCMTask(config)
    run = trainer.setup(config, task)
    batch = next(task.train_batches(seed=0, process_index=0, process_count=1))
    expected = {"fce": {"fce_level_0", "fce_level_3"}, "pan": {"pan_text", "pan_kernel", "pan_text_full"}}[head]
    assert expected <= set(batch)
    text = [batch[f"fce_level_{i}"][..., 0] for i in range(3)] if head == "fce" else [batch["pan_text"]]
    assert max(t.max() for t in text) > 0  # the crops hold text the targets mark
    state = run.init_state()
    before = np.asarray(jax.tree.leaves(state["params"]["bbox_head"])[0])
    with jax.set_mesh(run.mesh):
        for _ in range(2):
            state, metrics = run.step_fn(state, parallel.global_batch(batch, run.mesh))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    assert not np.array_equal(before, np.asarray(jax.tree.leaves(state["params"]["bbox_head"])[0]))
    model = run.eval_model(state)
    eval_batch = next(
        iter(make_det_eval_batches(task.sources[1], batch_size=2, eval_size=(96, 96), with_targets=False))
    )
    prediction = to_host(task.predict_fn(model)(eval_batch["image"]))
    task.head.postprocess_config = task.head.resolve(task.head.postprocess_config, **LOOSE[head])
    dets = task.postprocess(prediction, eval_batch["scale"], eval_batch["resized_shape"])
    assert len(dets) == 2
    for poly, score in (d for image in dets for d in image):
        assert poly.ndim == 2 and poly.shape[1] == 2 and 0.0 <= score <= 1.0


# thresholds low enough that an untrained head yields candidates, so the conversion to polygons is exercised
LOOSE = {"fce": {"score_thr": 0.0}, "pan": {"min_text_confidence": 0.0, "min_text_avg_confidence": 0.0}}


def test_head_registry_and_presets():
    assert set(HEADS) == {"db", "fce", "pan"}
    assert make_head("fce", postprocess="tcm").postprocess_config.alpha == 1.2
    assert (
        make_head("pan", postprocess="tcm_ic15", overrides={"min_text_area": 4}).postprocess_config.min_text_area == 4
    )
    with pytest.raises(ValueError, match="unknown PAN preset"):
        make_head("pan", postprocess="tcm")
    with pytest.raises(ValueError, match="unknown detection head"):
        make_head("east")
    for head in ("fce", "pan"):  # every head recipe's presets resolve
        for arg in ("ic15", "td500", "ctw1500", "totaltext", "synthtext_pretrain"):
            c = get_config(f"{arg},head={head}")
            make_head(head, targets=c.data.targets, postprocess=c.postprocess.preset)


def _records(n: int) -> list[dict]:
    image = np.zeros((32, 32, 3), np.uint8)
    return [DetSample(image, [], [], [], name=f"img_{i}").to_record() for i in range(n)]


def test_fraction_subset(monkeypatch, tmp_path):
    """``data.fraction`` keeps a seeded subset of a prepared train split, in source order, and writes its names."""
    from clip_text_spot.data import prepare

    monkeypatch.setattr(prepare, "open_split", lambda root, split: _records(20 if split == "train" else 3))
    config = get_config("ic15")
    config.data.root, config.model.require_clip = "prepared", False
    config.data.fraction, config.data.fraction_seed = 0.1, 7
    task = FastTCMTask(config)
    train, _ = task.sources
    names = [train[i]["name"] for i in range(len(train))]
    assert len(names) == 2 and names == [f"img_{i}" for i in fraction_indices(20, 0.1, 7)]
    task.write_subset(str(tmp_path))
    assert (tmp_path / "train_subset.txt").read_text().split() == names
    config.data.fraction_seed = 8
    other = FastTCMTask(config).sources[0]
    assert {other[i]["name"] for i in range(2)} != set(names)  # another seed, another subset (for these seeds)
    config.data.fraction = 1.5
    with pytest.raises(ValueError, match="fraction must be in"):
        FastTCMTask(config).sources  # noqa: B018


def test_fraction_synthetic_pool(tmp_path):
    config = get_config("demo")
    config.data.fraction, config.data.synthetic_pool = 0.25, 40
    task = FastTCMTask(config)
    assert len(task.sources[0]) == 10
    task.write_subset(str(tmp_path))
    assert (tmp_path / "train_subset.txt").read_text() == "synthetic train scenes 0..9 of a pool of 40\n"
