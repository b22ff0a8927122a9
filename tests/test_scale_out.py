"""Scale-out on simulated CPU devices: sharding rules on the full FastTCM and DPTR configs (abstract, no memory),
the ``--dry_run`` memory report, and a 2-process x 4-device run restored by 1 process x 8 devices."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clip_text_spot.logs import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MESH = {"data": 1, "fsdp": 4, "model": 2}
# configs/common.py SHARDING_RULES, restated: the test checks the code against the documented rules
RULES = dict(embed="fsdp", joint="fsdp", vocab="model", mlp="model", heads="model", conv_in="fsdp", conv_out="model")

SHARDINGS_SCRIPT = """
import json, sys
sys.path.insert(0, ".")
from flax import nnx
from clip_text_spot import trainer
from clip_text_spot.tasks import build_task
from configs import dptr, fasttcm

def full_configs():
    det = fasttcm.get_config("ic15")
    det.model.require_clip, det.data.root = False, "unused"
    pre = dptr.get_config("pretrain")
    pre.clip.require, pre.orp.lam = False, 0.0
    return {"fasttcm": det, "dptr_pretrain": pre, "dptr_finetune": dptr.get_config("finetune")}

out = {}
for name, config in full_configs().items():
    config.mesh.data, config.mesh.fsdp, config.mesh.model = 1, 4, 2
    task = build_task(config)
    run = trainer.setup(config, task)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    rows = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        sharding = run.state_sh["params"]
        for key in path:
            sharding = sharding[key]
        spec = [list(s) if isinstance(s, tuple) else s for s in sharding.spec]
        spec += [None] * (len(var.get_value().shape) - len(spec))
        logical = var.get_metadata().get("out_sharding")
        rows.append(["/".join(map(str, path)), list(var.get_value().shape), logical and list(logical), spec])
    out[name] = {"params": rows, "memory": trainer.memory_report(run)}
print(json.dumps(out))
"""


def _env(devices: int) -> dict:
    return dict(
        os.environ,
        XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )


@pytest.fixture(scope="module")
def full_shardings():
    proc = subprocess.run(
        [sys.executable, "-c", SHARDINGS_SCRIPT], capture_output=True, text=True, env=_env(8), cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _axes(entry):
    return [] if entry is None else [entry] if isinstance(entry, str) else list(entry)


@pytest.mark.parametrize("name", ["fasttcm", "dptr_pretrain", "dptr_finetune"])
def test_every_parameter_follows_the_rules(full_shardings, name):
    """For every parameter: sharded dims use their logical axis's mesh axis, divide evenly, never reuse a mesh axis,
    vectors never go over fsdp, and no dim that could be sharded (rule, free axis, divisible) is left replicated."""
    rows = full_shardings[name]["params"]
    assert len(rows) > 50
    counts = {"fsdp": 0, "model": 0}
    for path, shape, logical, spec in rows:
        used = [a for entry in spec for a in _axes(entry)]
        assert len(used) == len(set(used)), (path, spec)
        if logical is None:
            assert not used, (path, spec)
            continue
        for dim, (size, axis_name, entry) in enumerate(zip(shape, logical, spec, strict=True)):
            axes = _axes(entry)
            assert all(RULES.get(axis_name) == a for a in axes), (path, dim, axis_name, spec)
            assert size % math.prod(MESH[a] for a in axes) == 0, (path, shape, spec)
            if len(shape) < 2:
                assert "fsdp" not in axes, (path, spec)
            rule = RULES.get(axis_name)
            could = rule and rule not in used and (rule != "fsdp" or len(shape) > 1) and size % MESH[rule] == 0
            assert axes or not could, f"{path}: dim {dim} ({axis_name}, {size}) left replicated: {spec}"
            for a in axes:
                counts[a] += 1
    assert counts["fsdp"] > 10 and counts["model"] > 10, counts


def test_representative_specs(full_shardings):
    def spec(name, suffix):
        found = [r for r in full_shardings[name]["params"] if r[0].endswith(suffix)]
        assert found, suffix
        return found[0][1], found[0][3]

    # CLIP text MLP [512, 2048] (embed, mlp); token embedding [49408, 512] (vocab, embed)
    assert spec("fasttcm", "text_model/encoder/layers/0/mlp/fc1/kernel") == ([512, 2048], ["fsdp", "model"])
    shape, s = spec("dptr_pretrain", "token_embedding/embedding")
    assert shape == [49408, 512] and s == ["model", "fsdp"]
    # CLIP-RN50 conv [3, 3, 64, 64]: conv_in -> fsdp, conv_out -> model; LayerNorm scales stay replicated
    assert spec("fasttcm", "backbone/layer1/0/conv2/kernel") == ([3, 3, 64, 64], [None, None, "fsdp", "model"])
    assert spec("dptr_finetune", "decoder/norm/scale")[1] == [None]
    # the PARSeq head [512, 95]: 95 classes do not divide over model=2, so only embed is sharded
    assert spec("dptr_finetune", "decoder/head/kernel") == ([512, 95], ["fsdp", None])


@pytest.mark.parametrize("name", ["fasttcm", "dptr_finetune"])
def test_memory_report_matches_the_shardings(full_shardings, name):
    """Bytes per device from the report = what the specs imply, parameter by parameter (float32)."""
    rows, memory = full_shardings[name]["params"], full_shardings[name]["memory"]

    def shard_bytes(shape, spec):
        return 4 * math.prod(shape) // math.prod(MESH[a] for entry in spec for a in _axes(entry))

    expected = sum(shard_bytes(shape, spec) for _, shape, _, spec in rows)
    per_device = memory["per_device"]
    assert memory["mesh"] == MESH and len(per_device) == 8
    assert all(d["params_bytes"] == expected for d in per_device)
    assert memory["params_bytes"] == sum(4 * math.prod(shape) for _, shape, _, _ in rows)
    assert expected < memory["params_bytes"] / 4  # most of the weights are split 8 ways
    assert 0 < max(d["opt_bytes"] for d in per_device) <= 2 * expected + 1024  # Adam moments shard like params


def test_dry_run_cli_prints_per_device_bytes():
    cmd = [sys.executable, "-m", "clip_text_spot.main", "--config=configs/fasttcm.py:ic15", "--dry_run",
           "--config.model.require_clip=False", "--config.data.root=unused", "--config.mesh.data=1",
           "--config.mesh.fsdp=4", "--config.mesh.model=2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(8), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mesh"] == MESH and len(report["per_device"]) == 8
    assert report["num_params"] > 100_000_000  # CLIP-RN50 (both towers) + decoders + DBNet
    assert max(d["params_bytes"] for d in report["per_device"]) < report["params_bytes"] / 4


def _main(args, *, devices, processes=1, timeout=600):
    env = _env(devices)
    if processes == 1:
        cmd = [sys.executable, "-m", "clip_text_spot.main", *args]
    else:
        env.update(DEVICES_PER_PROCESS=str(devices), PYTHON=sys.executable)
        cmd = ["bash", str(ROOT / "launch" / "local_multiprocess.sh"), str(processes), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def test_two_processes_then_one_process_on_another_mesh(tmp_path):
    """2 processes x 4 devices train 4 steps (checkpoints at 3 and 4); with step 4's checkpoints removed, as if
    the run had died during step 4, 1 process x 8 devices on another mesh restores step 3 and trains step 4 again:
    same loss and same evaluation as the 2-process step 4 (same weights, same global batch). This is also the main
    job's smoke test: evaluation, latest and best checkpoints, resume, the JSON summary."""
    workdir = tmp_path / "run"
    common = ["--config=configs/clip_demo.py:batch=8", f"--workdir={workdir}", "--config.total_steps=4",
              "--config.log_every=1", "--config.eval_every=4", "--config.ckpt_every=3", "--config.tensorboard=False",
              "--config.data.eval_samples=8"]  # fmt: skip
    proc = _main([*common, "--config.mesh.data=8"], devices=4, processes=2)
    assert "[p0]" in proc.stdout and "[p1]" in proc.stdout
    assert (workdir / "ckpt" / "3").is_dir() and (workdir / "ckpt" / "4").is_dir()
    shutil.rmtree(workdir / "ckpt" / "4")
    shutil.rmtree(workdir / "best")
    proc = _main([*common, "--config.mesh.data=4", "--config.mesh.model=2"], devices=8)
    assert "resumed from" in proc.stderr and "at step 3" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 4
    assert (workdir / "ckpt" / "4").is_dir() and (workdir / "best").is_dir()
    train, evals = read_metrics(str(workdir), "train"), read_metrics(str(workdir), "eval")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 4] and [r["step"] for r in evals] == [4, 4]
    two, one = train[3], train[4]
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-4, abs=1e-5)
    assert one["grad_norm"] == pytest.approx(two["grad_norm"], rel=1e-3)
    assert 0.0 <= evals[1]["retrieval_top1"] <= 1.0
    assert evals[1]["retrieval_top1"] == pytest.approx(evals[0]["retrieval_top1"], abs=1e-6)
