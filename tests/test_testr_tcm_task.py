"""TESTR-TCM / TESTR-FastTCM through the trainer: the config variants build, a tiny FastTCM demo trains 2 steps with
the pixel loss and evaluates (text embedding cached), ``spot --spotter`` loads its workdir; ``data.fraction`` cuts
TESTR's train split and writes the subset list."""

import json

import numpy as np
import pytest
from PIL import Image

from clip_text_spot import spot, trainer
from clip_text_spot.data.synthetic import SyntheticDetSource
from clip_text_spot.data.types import DetSample
from clip_text_spot.logs import read_metrics
from clip_text_spot.models.testr.spotter import TESTRSpotter
from clip_text_spot.models.testr.tcm import TESTRTCM
from clip_text_spot.tasks import build_task
from clip_text_spot.tasks.fasttcm import fraction_indices
from configs import testr as testr_config

TINY = dict(dim=32, heads=2, enc_layers=1, dec_layers=1, ffn=32, enc_points=1, dec_points=1, num_queries=4,
            ctrl_points=4, chars=4)  # fmt: skip


def tiny(arg: str):
    config = testr_config.get_config(arg)
    config.model.update(TINY)
    config.model.tcm.decoder_width = 16
    config.data.update(image_size=(96, 96), num_words=(1, 2), eval_samples=2, short_sizes=(64,), max_size=64,
                       box=(64, 64), crop_prob=1.0, max_instances=2)  # fmt: skip
    config.data.style.font_size = (16, 20)
    config.spot.update(test_size=64, max_size=64, threshold=0.0, batch_size=2)
    config.update(eval_every=2, log_every=1, batch_size=2, tensorboard=False, vis_images=1)
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    config = tiny("demo_fasttcm,steps=2")
    config.data.fraction, config.data.synthetic_pool = 0.5, 8
    path = tmp_path_factory.mktemp("testr_fasttcm")
    result = trainer.train(config, str(path), build_task(config))
    return path, result


@pytest.mark.parametrize(
    "arg, variant, backbone, groups",
    [
        ("totaltext,fasttcm,cr50", "fasttcm", "cr50", [("^(backbone|clip)/", 0.1), ("sampling_offsets", 0.1)]),
        ("ctw1500,tcm,freeze_text", "tcm", "r50", [("^clip/text_encoder/", 0.0), ("^(backbone|clip)/", 0.1)]),
        ("icdar2015,fasttcm,r50", "fasttcm", "r50", [("^(backbone|clip)/", 0.1)]),
    ],
)
def test_config_variants_build(arg, variant, backbone, groups):
    config = testr_config.get_config(arg)
    config.data.root = "prepared"
    config.model.tcm.clip_checkpoint = "RN50.safetensors"  # not read: the task only checks that it is set
    config.model.init = "testr.safetensors"
    tcm = build_task(config).tcm
    assert config.model.variant == variant and tcm.backbone == backbone and tcm.prompting.fast == (variant == "fasttcm")
    assert tcm.testr.backbone_channels == (512, 1024, 2048) and tcm.testr.isolate_padding
    assert config.optim.groups[: len(groups)] == groups and config.batch_size == 1
    config.model.tcm.clip_checkpoint = ""
    with pytest.raises(ValueError, match="clip_checkpoint"):
        build_task(config)
    with pytest.raises(ValueError, match="one of tcm / fasttcm"):
        testr_config.get_config("totaltext,tcm,fasttcm")


def test_fasttcm_demo_trains_evaluates_and_writes_the_subset(workdir):
    path, result = workdir
    rows = read_metrics(str(path))
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) for r in train)
    assert all(0.0 < r["loss_pix_cls"] <= 1.0 for r in train) and train[0]["num_inst"] >= 2
    assert len(evals) == 1 and {"hmean", "e2e_hmean"} <= set(evals[0])
    assert evals[0]["detections"] == 2 * TINY["num_queries"] and result.stopped_early is None
    assert (path / "train_subset.txt").read_text() == "synthetic train scenes 0..3 of a pool of 8\n"


def test_spot_loads_the_fasttcm_workdir(workdir, tmp_path, capsys):
    path, _ = workdir
    spotter = TESTRSpotter.load(str(path), threshold=0.0, batch_size=2)
    assert isinstance(spotter.model, TESTRTCM) and spotter.model.config.prompting.fast and spotter._text is not None
    uncached = TESTRSpotter(spotter.model, spotter.options, text_cache=False)
    source = SyntheticDetSource(2, split="eval", image_size=(80, 120), num_words=(1, 2))
    images = [source[i].image for i in range(2)]
    for a, b in zip(spotter.spot(images), uncached.spot(images), strict=True):
        # the cached text is its own compiled program, whose CPU kernels may differ from the spotter's (the text tower
        # is dot-bound, the spotter convolutional: models.inference.cpu_options), so sums may round differently
        np.testing.assert_allclose([w.polygon for w in a], [w.polygon for w in b], rtol=1e-5, atol=1e-4)
        assert [w.text for w in a] == [w.text for w in b]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"img_{i + 1}.png")
        Image.fromarray(image).save(files[-1])
    argv = [f"--spotter={path}", *map(str, files), f"--output={tmp_path / 'out'}", "--threshold=0.0", "--batch_size=2"]
    assert spot.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 2 and summary["words"] == 2 * TINY["num_queries"]


def test_fraction_cuts_the_prepared_train_split(monkeypatch, tmp_path):
    from clip_text_spot.data import prepare

    image = np.zeros((32, 32, 3), np.uint8)
    records = {s: [DetSample(image, [], [], [], name=f"{s}_{i}").to_record() for i in range(n)] for s, n in
               (("train", 20), ("test", 3))}  # fmt: skip
    monkeypatch.setattr(prepare, "open_split", lambda root, split: records[split])
    config = testr_config.get_config("totaltext,fasttcm")
    config.data.root, config.model.require_init = "a,b", False
    config.data.fraction, config.data.fraction_seed = 0.1, 3
    task = build_task(config)
    train = task.sources[0]
    names = [f"train_{i % 20}" for i in fraction_indices(40, 0.1, 3)]  # two roots of 20 images, concatenated
    assert len(train) == 4 and [train[i]["name"] for i in range(4)] == names
    task.write_subset(str(tmp_path))
    assert (tmp_path / "train_subset.txt").read_text().split() == names
