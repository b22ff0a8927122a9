"""The main entry point's errors. (Training, evaluation, checkpoints and resume through `main` run in
``test_scale_out.py::test_two_processes_then_one_process_on_another_mesh``.)"""

import subprocess
import sys


def test_unknown_task_is_a_clear_error(tmp_path):
    cmd = [
        sys.executable, "-m", "clip_text_spot.main", "--config=configs/clip_demo.py", f"--workdir={tmp_path}",
        "--config.task=nope",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--config.task='nope' is unknown" in proc.stderr


def test_flag_errors_name_the_flag(tmp_path):
    base = [sys.executable, "-m", "clip_text_spot.main", "--config=configs/clip_demo.py"]
    proc = subprocess.run([*base, f"--workdir={tmp_path}", "--num_processes=2"], capture_output=True, text=True)
    assert proc.returncode != 0 and "need --distributed" in proc.stderr
    proc = subprocess.run(base, capture_output=True, text=True)
    assert proc.returncode != 0 and "--workdir is required (except with --dry_run)" in proc.stderr
