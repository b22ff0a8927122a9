"""The spotting demo end to end in one command (FastTCM detector, DPTR pre-training and fine-tuning, spotting
evaluation; tiny overrides), then the CLIs on its checkpoints with real data: predict_rec on real word crops
(PARSeq demo images, mmocr's toy LMDB), spot on real scenes (ICDAR2015 toy images, an OpenCV sample photo)."""

import json
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import DATA
from PIL import Image
from test_cli_bad_inputs import write_bad_images

from clip_text_spot import predict_rec, spot
from clip_text_spot.logs import read_metrics
from clip_text_spot.metrics.recognition import read_labels
from clip_text_spot.spotter import SpotOptions, Spotter
from configs import dptr
from configs import spot as spot_config


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spot_demo")
    tiny = [
        "--config.pretrain.text.eval_samples=8", "--config.pretrain.orp.synthetic_images=8",
        "--config.pretrain.eval_batch_size=8", "--config.finetune.data.eval_samples=8",
        "--config.finetune.eval_batch_size=8", "--config.detector.data.eval_samples=4",
        "--config.detector.data.eval_batch_size=4", "--config.spot.data.eval_samples=4",
        "--config.spot.spot.batch_size=2",
    ]  # fmt: skip
    for stage in ("pretrain", "finetune"):
        tiny += [f"--config.{stage}.model.decoder.dim=32", f"--config.{stage}.model.decoder.depth=1"]
    tiny += ["--config.pretrain.clip.overrides.embed_dim=32", "--config.pretrain.clip.overrides.text.width=32",
             "--config.pretrain.clip.overrides.text.layers=1", "--config.finetune.model.encoder.width=32",
             "--config.finetune.model.encoder.depth=1"]  # fmt: skip
    cmd = [sys.executable, "-m", "clip_text_spot.main", "--config=configs/spot.py:demo,steps=2,batch=4",
           f"--workdir={workdir}", *tiny]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decoder initialised from" in proc.stderr and str(workdir / "pretrain" / "ckpt" / "2") in proc.stderr
    return workdir


def test_recogniser_stages_are_the_dptr_demo_with_the_detectors_words():
    demo, ours = dptr.get_config("demo"), spot_config.get_config("demo")
    changed = {"text", "model", "optim", "data", "total_steps", "eval_every", "ckpt_every"}
    for stage in ("pretrain", "finetune"):
        a, b = demo[stage].to_dict(), ours[stage].to_dict()
        assert {k: v for k, v in a.items() if k not in changed} == {k: v for k, v in b.items() if k not in changed}
        assert ours[stage].model.to_dict() == demo[stage].model.to_dict()  # the DPTR demo's recogniser
    style = ours.finetune.data.style
    for key, value in spot_config.DEMO_STYLE.items():
        assert ours.detector.data.style[key] == style[key] == value, key
    assert ours.pretrain.text.vocab_size == style.vocab_size
    assert ours.spot.data.to_dict() == ours.detector.data.to_dict()  # the detector's held-out scenes


def test_spotting_stage_logs_end_to_end_and_detection_hmean(demo_workdir):
    (row,) = [r for r in read_metrics(str(demo_workdir), "eval") if r["stage"] == "spot"]
    assert row["step"] == 0 and row["images"] == 4 and row["gt_words"] > 0
    for key in ("e2e_hmean", "e2e_precision", "e2e_recall", "hmean", "precision", "recall", "word_accuracy"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["e2e_hmean"] <= row["hmean"]  # a word read correctly was detected
    assert len(list((demo_workdir / "spot" / "vis").glob("*.png"))) == 4


def test_demo_runs_both_stages_and_logs_word_accuracy(demo_workdir):
    evals = [r for r in read_metrics(str(demo_workdir), "eval") if r["stage"] in ("pretrain", "finetune")]
    assert [(r["stage"], r["step"]) for r in evals] == [("pretrain", 1), ("pretrain", 2), ("finetune", 1),
                                                        ("finetune", 2)]  # fmt: skip
    for row in evals:
        assert 0.0 <= row["word_accuracy"] <= 1.0 and 0.0 <= row["ned"] <= 1.0
    assert evals[-1]["synthetic/word_accuracy"] == evals[-1]["word_accuracy"]
    assert (demo_workdir / "pretrain" / "ckpt" / "2").is_dir() and (demo_workdir / "finetune" / "best").is_dir()


def test_predict_rec_on_real_crops(demo_workdir, tmp_path, capsys):
    out = tmp_path / "pred.tsv"
    labels = DATA / "readers" / "parseq_demo" / "labels.tsv"
    assert predict_rec.main([f"--workdir={demo_workdir}", f"--labels={labels}", f"--output={out}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["images"] == 6 and summary["total"] == 6 and 0.0 <= summary["word_accuracy"] <= 1.0
    assert summary["checkpoint"].endswith("finetune/ckpt/2")
    assert set(read_labels(out)) == set(read_labels(labels))  # a TSV that `evaluate rec` pairs with the labels
    assert [line.split("\t")[0] for line in lines[:-1]] == list(read_labels(labels))

    lmdb = DATA / "readers" / "rec_toy" / "imgs.lmdb"
    crops = DATA / "readers" / "parseq_demo" / "cute-184.jpg"
    assert predict_rec.main([f"--checkpoint={demo_workdir}", f"--lmdb={lmdb}", str(crops)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 11 and summary["total"] == 10  # the loose crop has no label


def test_predict_rec_errors_name_the_problem(demo_workdir, tmp_path, capsys):
    assert predict_rec.main([f"--workdir={tmp_path}", str(tmp_path)]) == 2
    assert "no trainer checkpoint" in capsys.readouterr().err
    assert predict_rec.main([f"--workdir={demo_workdir / 'pretrain'}", str(DATA / "readers" / "parseq_demo")]) == 2
    assert "needs a dptr_finetune checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert predict_rec.main([f"--workdir={demo_workdir}", str(bad)]) == 2
    assert "bad.png" in capsys.readouterr().err


def test_spot_cli_on_real_scenes(demo_workdir, tmp_path, capsys):
    ic15 = DATA / "readers" / "det_toy" / "imgs" / "test"
    photo = tmp_path / "scene_7.jpg"  # the OpenCV sample photo, numbered for the submission
    photo.write_bytes((DATA / "readers" / "opencv_text" / "scenetext01.jpg").read_bytes())
    out, zip_path = tmp_path / "out", tmp_path / "e2e.zip"
    args = [f"--detector={demo_workdir}", f"--recognizer={demo_workdir}", f"--output={out}", "--batch_size=2"]
    assert spot.main([*args, str(ic15), str(photo), f"--submission={zip_path}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["images_per_s"] > 0
    assert set(summary["stage_share"]) == {"preprocess", "detector", "postprocess", "rectify", "recognizer"}
    assert abs(sum(summary["stage_share"].values()) - 1.0) < 0.01
    for name, (w, h) in {"img_1": (1280, 720), "img_2": (1280, 720), "scene_7": (800, 600)}.items():
        record = json.loads((out / f"{name}.json").read_text())
        assert (record["width"], record["height"]) == (w, h)
        for word in record["words"]:
            assert set(word) == {"polygon", "score", "text", "confidence"} and 0.0 <= word["confidence"] <= 1.0
        assert (out / f"{name}.png").stat().st_size > 1000
    words = [json.loads((out / f"{n}.json").read_text())["words"] for n in ("img_1", "img_2", "scene_7")]
    assert summary["words"] == sum(len(w) for w in words)
    lines = {n: zipfile.ZipFile(zip_path).read(n).decode().splitlines() for n in zipfile.ZipFile(zip_path).namelist()}
    assert sorted(lines) == ["res_img_1.txt", "res_img_2.txt", "res_img_7.txt"]
    assert [len(lines[f"res_img_{k}.txt"]) for k in (1, 2, 7)] == [len(w) for w in words]

    photo.rename(tmp_path / "scene_1.jpg")
    assert spot.main([*args, str(ic15), str(tmp_path / "scene_1.jpg"), f"--submission={zip_path}"]) == 2
    assert "same image number 1" in capsys.readouterr().err


def test_pipelined_batches_give_each_image_its_own_words(demo_workdir):
    """Batch k+1 is launched before batch k is read: 3 images in batches of 2 (one padded) give the words that each
    image gets alone, in order (boxes re-fitted to the ink of each image's own pixels)."""
    spotter = Spotter.from_checkpoints(
        str(demo_workdir), str(demo_workdir), options=SpotOptions(batch_size=2, refine=True)
    )
    scenes = sorted((DATA / "readers" / "det_toy" / "imgs" / "test").glob("*.jpg"))
    images = [p.read_bytes() for p in scenes] + [(DATA / "readers" / "opencv_text" / "scenetext01.jpg").read_bytes()]
    together = spotter.spot(images)
    alone = [spotter.spot([image])[0] for image in images]
    assert len(together) == len(images) and sum(map(len, together)) > 0
    for got, want in zip(together, alone, strict=True):
        assert [w.text for w in got] == [w.text for w in want]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a.polygon, b.polygon, atol=1e-3)
    assert set(spotter.timings) == {"preprocess", "detector", "postprocess", "rectify", "recognizer"}


def test_spotter_reads_with_an_official_recogniser(demo_workdir, tmp_path):
    """--recognizer=FILE.safetensors (+ FILE.json): the PARSeq fixture reads the detector's regions."""
    recognizer = tmp_path / "parseq.safetensors"
    recognizer.write_bytes((DATA / "parseq_tiny" / "parseq.safetensors").read_bytes())
    kwargs = json.loads((DATA / "parseq_tiny" / "config.json").read_text())["model_kwargs"]
    (tmp_path / "parseq.json").write_text(json.dumps({"kind": "parseq", **kwargs}))
    spotter = Spotter.from_checkpoints(str(demo_workdir), str(recognizer), options=SpotOptions(batch_size=1))
    assert spotter.crop_size == (32, 128) and spotter.charset.max_len == kwargs["max_label_length"]
    image = np.asarray(Image.open(DATA / "readers" / "opencv_text" / "scenetext01.jpg").convert("RGB"))
    device_images, batch = spotter.prepare([image])
    quad = np.array([[40, 40], [200, 40], [200, 90], [40, 90]], np.float32)
    ((text, confidence),) = spotter.read_regions(device_images, batch["resized_shape"], [(0, quad)])
    assert isinstance(text, str) and len(text) <= kwargs["max_label_length"] and 0.0 <= confidence <= 1.0


def test_spot_cli_errors_name_the_problem(demo_workdir, tmp_path, capsys):
    image = str(DATA / "readers" / "opencv_text" / "scenetext01.jpg")
    assert spot.main([f"--detector={demo_workdir / 'finetune'}", f"--recognizer={demo_workdir}", image]) == 2
    assert "a fasttcm detector is needed" in capsys.readouterr().err
    assert spot.main([f"--detector={demo_workdir}", f"--recognizer={demo_workdir / 'detector'}", image]) == 2
    assert "needs a dptr_finetune checkpoint" in capsys.readouterr().err
    assert spot.main([f"--detector={demo_workdir}", f"--recognizer={demo_workdir}", str(tmp_path / "none.jpg")]) == 2
    assert "none.jpg: no such file" in capsys.readouterr().err


def test_clis_skip_unreadable_images_and_restore_without_warnings(demo_workdir, tmp_path, capsys):
    """predict, predict_rec and spot on folders with a truncated JPEG, a text file named .png and an empty file
    among good images: output for every good one, the bad ones in ``skipped``, exit 0; with --strict, exit 2.
    predict runs as ``python -m clip_text_spot predict``, whose restore and prediction log no warning."""
    scenes, crops = tmp_path / "scenes", tmp_path / "crops"
    bad_scenes, bad_crops = write_bad_images(scenes), write_bad_images(crops)
    for name in ("img_1.jpg", "img_2.jpg"):
        (scenes / name).write_bytes((DATA / "readers" / "det_toy" / "imgs" / "test" / name).read_bytes())
    for name in ("cute-184.jpg", "ic15_word_26.png"):
        (crops / name).write_bytes((DATA / "readers" / "parseq_demo" / name).read_bytes())

    args = [f"--detector={demo_workdir}", f"--recognizer={demo_workdir}", f"--output={tmp_path / 'spotted'}"]
    assert spot.main([*args, str(scenes)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["skipped"] == bad_scenes
    assert sorted(p.name for p in (tmp_path / "spotted").iterdir()) == ["img_1.json", "img_1.png", "img_2.json",
                                                                      "img_2.png"]  # fmt: skip
    assert [line.split(":")[0] for line in err.splitlines()] == [f"skipped {p}" for p in bad_scenes]
    assert spot.main([*args, str(scenes), "--strict"]) == 2
    assert f"{bad_scenes[0]}: corrupt" in capsys.readouterr().err

    assert predict_rec.main([f"--workdir={demo_workdir}", str(crops), f"--output={tmp_path / 'read.tsv'}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 2 and summary["skipped"] == bad_crops
    assert sorted(read_labels(tmp_path / "read.tsv")) == ["cute-184.jpg", "ic15_word_26.png"]
    assert predict_rec.main([f"--workdir={demo_workdir}", str(crops), "--strict"]) == 2

    cmd = [sys.executable, "-m", "clip_text_spot", "predict", f"--workdir={demo_workdir / 'detector'}", str(scenes),
           f"--output={tmp_path / 'detected'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["skipped"] == bad_scenes
    assert sorted(p.name for p in (tmp_path / "detected").glob("*.json")) == ["img_1.json", "img_2.json"]
    noise = [line for line in proc.stderr.splitlines() if not re.match(r"I\d{4} |skipped ", line)]
    assert noise == [], noise  # no warning (W1203 ...), error or stray line: only the skips and INFO
    proc = subprocess.run([*cmd, "--strict"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and f"{bad_scenes[0]}: corrupt" in proc.stderr
