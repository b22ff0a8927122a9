"""TESTR through the trainer: the demo task (tiny sizes) trains 2 steps and evaluates on held-out synthetic scenes,
then ``spot --spotter`` runs the workdir; the augmentation keeps whole instances and TESTR's resize rule."""

import json

import numpy as np
import pytest
from PIL import Image

from clip_text_spot import spot, trainer
from clip_text_spot.data.instance_crop import crop_instances, instance_crop_window, shortest_edge_size
from clip_text_spot.data.synthetic import SyntheticDetSource
from clip_text_spot.logs import read_metrics
from clip_text_spot.tasks import build_task
from configs import testr as testr_config

TINY = dict(dim=32, heads=2, enc_layers=1, dec_layers=1, ffn=32, enc_points=1, dec_points=1, num_queries=4,
            ctrl_points=4, chars=4)  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    config = testr_config.get_config("demo,steps=2")
    config.model.update(TINY)
    config.data.update(image_size=(96, 96), num_words=(1, 2), eval_samples=2, short_sizes=(64,), max_size=64,
                       box=(64, 64), crop_prob=1.0, max_instances=2)  # fmt: skip
    config.data.style.font_size = (16, 20)
    config.spot.update(test_size=64, max_size=64, threshold=0.0, batch_size=2)
    config.update(eval_every=2, log_every=1, batch_size=2, tensorboard=False, vis_images=1)
    path = tmp_path_factory.mktemp("testr")
    result = trainer.train(config, str(path), build_task(config))
    return path, result


def test_demo_task_trains_and_evaluates(workdir):
    path, result = workdir
    rows = read_metrics(str(path))
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) for r in train)
    assert train[0]["num_inst"] >= 2 and {"loss_texts", "loss_ctrl_points", "loss_giou_enc"} <= set(train[0])
    assert len(evals) == 1 and {"hmean", "e2e_hmean", "precision", "e2e_recall"} <= set(evals[0])
    assert evals[0]["detections"] == 2 * TINY["num_queries"]  # threshold 0: every query of both images
    assert (path / "vis" / "step_2" / "000000.png").exists() and result.stopped_early is None


def test_spot_cli_runs_the_testr_workdir(workdir, tmp_path, capsys):
    path, _ = workdir
    source = SyntheticDetSource(2, split="eval", image_size=(80, 120), num_words=(1, 2))
    images = []
    for i in range(2):
        images.append(tmp_path / f"img_{i + 1}.png")
        Image.fromarray(source[i].image).save(images[-1])
    out = tmp_path / "out"
    argv = [f"--spotter={path}", *map(str, images), f"--output={out}", f"--submission={tmp_path / 'e2e.zip'}",
            "--threshold=0.0", "--batch_size=2", "--submission_format=curved"]  # fmt: skip
    assert spot.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 2 and summary["words"] == 2 * TINY["num_queries"]
    assert set(summary["stage_share"]) == {"preprocess", "detector", "postprocess"}
    record = json.loads((out / "img_1.json").read_text())
    assert (record["width"], record["height"]) == (120, 80)
    polygon = np.array(record["words"][0]["polygon"])
    assert polygon.shape == (TINY["ctrl_points"], 2) and isinstance(record["words"][0]["text"], str)
    assert (out / "img_2.png").exists() and (tmp_path / "e2e.zip").exists()


def test_eval_config_scores_a_trained_spotter(workdir, tmp_path):
    path, _ = workdir
    config = testr_config.get_config("demo,eval")
    config.spotter = str(path)
    config.data.update(image_size=(96, 96), num_words=(1, 2), eval_samples=2)
    config.spot.update(test_size=64, max_size=64, threshold=0.0, batch_size=2)
    task = build_task(config)
    assert task.options.charset == config.model.charset
    metrics = task.run(str(tmp_path))
    assert metrics["images"] == 2 and metrics["detections"] == 2 * TINY["num_queries"]
    assert 0.0 <= metrics["e2e_hmean"] <= metrics["hmean"] <= 1.0


def test_spot_cli_needs_a_model():
    with pytest.raises(SystemExit):
        spot.main(["image.png"])


def test_instance_crop_never_cuts_a_word_and_resize_rule():
    rng = np.random.default_rng(0)
    boxes = np.array([[10, 10, 60, 30], [50, 25, 120, 50], [200, 200, 250, 260], [240, 100, 300, 120]], np.float32)
    polys = [np.array([[a, b], [c, b], [c, d], [a, d]], np.float32) for a, b, c, d in boxes]
    for _ in range(50):
        x0, y0, x1, y1 = instance_crop_window(rng, (256, 280), boxes, 0.1)
        assert 0 <= x0 < x1 <= 280 and 0 <= y0 < y1 <= 256
        _, kept, index = crop_instances(np.zeros((256, 280, 3), np.uint8), polys, (x0, y0, x1, y1))
        assert index  # the window holds the centre of one word
        for p, i in zip(kept, index, strict=True):  # a kept word lies whole in the window (or runs off the image)
            lo, hi = p.min(0), p.max(0)
            assert lo.min() >= 0 and (hi <= [x1 - x0, y1 - y0]).all() or (boxes[i, 2:] > [280, 256]).any()
    assert shortest_edge_size((600, 800), 1600, 1824) == (1368, 1824)  # long side capped
    assert shortest_edge_size((600, 800), 800, 1824) == (800, 1067)
    assert shortest_edge_size((800, 600), 1600, 1824, box=(1600, 1600)) == (1600, 1200)
