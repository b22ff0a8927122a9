"""The DPTR demo end to end (both stages in one command, tiny overrides), then predict_rec on its checkpoint with
real word crops (PARSeq demo images, mmocr's toy LMDB)."""

import json
import subprocess
import sys

import pytest
from conftest import DATA

from clip_text_spot import predict_rec
from clip_text_spot.logs import read_metrics
from clip_text_spot.metrics.recognition import read_labels


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dptr_demo")
    tiny = [
        "--config.pretrain.text.eval_samples=8", "--config.pretrain.orp.synthetic_images=8",
        "--config.pretrain.eval_batch_size=8", "--config.finetune.data.eval_samples=8",
        "--config.finetune.eval_batch_size=8",
    ]  # fmt: skip
    for stage in ("pretrain", "finetune"):
        tiny += [f"--config.{stage}.model.decoder.dim=32", f"--config.{stage}.model.decoder.depth=1"]
    tiny += ["--config.pretrain.clip.overrides.embed_dim=32", "--config.pretrain.clip.overrides.text.width=32",
             "--config.pretrain.clip.overrides.text.layers=1", "--config.finetune.model.encoder.width=32",
             "--config.finetune.model.encoder.depth=1"]  # fmt: skip
    cmd = [sys.executable, "-m", "clip_text_spot.main", "--config=configs/dptr.py:demo,steps=2,batch=4",
           f"--workdir={workdir}", *tiny]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decoder initialised from" in proc.stderr and str(workdir / "pretrain" / "ckpt" / "2") in proc.stderr
    return workdir


def test_demo_runs_both_stages_and_logs_word_accuracy(demo_workdir):
    evals = read_metrics(str(demo_workdir), "eval")
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
