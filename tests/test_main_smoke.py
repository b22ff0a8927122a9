"""The main entry point end to end on the CLIP demo config: trains, evaluates, checkpoints, resumes."""

import json
import subprocess
import sys

from clip_text_spot.logs import read_metrics


def run_main(workdir, steps):
    cmd = [
        sys.executable, "-m", "clip_text_spot.main", f"--config=configs/clip_demo.py:steps={steps},batch=8",
        f"--workdir={workdir}", "--config.eval_every=4", "--config.ckpt_every=4", "--config.log_every=2",
        "--config.data.eval_samples=16", "--config.tensorboard=False",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_eval_checkpoint_and_resume(tmp_path):
    summary = run_main(tmp_path, 4)
    assert summary["step"] == 4
    evals = read_metrics(str(tmp_path), "eval")
    assert [r["step"] for r in evals] == [4] and 0.0 <= evals[0]["retrieval_top1"] <= 1.0
    assert (tmp_path / "ckpt" / "4").is_dir() and (tmp_path / "best").is_dir()
    # a second run with a later target resumes at step 4 instead of starting over
    summary = run_main(tmp_path, 6)
    assert summary["step"] == 6
    train_steps = [r["step"] for r in read_metrics(str(tmp_path), "train")]
    assert train_steps == [2, 4, 6]
    assert (tmp_path / "ckpt" / "6").is_dir()


def test_unknown_task_is_a_clear_error(tmp_path):
    cmd = [
        sys.executable, "-m", "clip_text_spot.main", "--config=configs/clip_demo.py", f"--workdir={tmp_path}",
        "--config.task=nope",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--config.task='nope' is unknown" in proc.stderr
