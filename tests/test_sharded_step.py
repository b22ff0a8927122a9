"""A train step on 8 simulated CPU devices with a data x model mesh shards parameters as the rules say."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, "tests")
    import jax, numpy as np
    from clip_text_spot import parallel, trainer
    from clip_text_spot.tasks.fasttcm import FastTCMTask
    from test_fasttcm_train import tiny_config

    config = tiny_config(batch_size=8)
    config.mesh.data, config.mesh.model = 4, 2
    run = trainer.setup(config, FastTCMTask(config))
    state = run.init_state()
    batch = FastTCMTask(config).train_batches(seed=0, process_index=0, process_count=1)
    with jax.set_mesh(run.mesh):
        state, metrics = run.step_fn(state, parallel.global_batch(next(batch), run.mesh))
    p = state["params"]
    specs = {
        "mlp_fc1": p["text_encoder"]["text_model"]["encoder"]["layers"][0]["mlp"]["fc1"]["kernel"],
        "lateral": p["neck"]["lateral_convs"][0]["conv"]["kernel"],
        "gamma": p["gamma"],
    }
    out = {k: str(v.sharding.spec) for k, v in specs.items() if v is not None}
    out["devices"] = jax.device_count()
    out["mesh"] = dict(run.mesh.shape)
    out["loss_finite"] = bool(np.isfinite(float(metrics["loss"])))
    out["fc1_shard"] = list(specs["mlp_fc1"].addressable_shards[0].data.shape)
    out["fc1_shape"] = list(specs["mlp_fc1"].shape)
    print(json.dumps(out))
    """
)


def test_data_model_mesh_on_8_cpu_devices():
    env = dict(
        os.environ, XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and out["mesh"] == {"data": 4, "fsdp": 1, "model": 2}
    assert out["mlp_fc1"] == "P(None, 'model')"  # ("embed", "mlp"): mlp -> model
    assert out["fc1_shard"] == [out["fc1_shape"][0], out["fc1_shape"][1] // 2]
    assert out["lateral"] == "P(None, None, None, 'model')"  # conv_out -> model
    assert out["gamma"] in ("P()", "P(None,)")  # no logical axes: replicated
    assert out["loss_finite"]
