"""Official checkpoints in the tools: the PARSeq fixture (tests/data/parseq_tiny, re-saved safetensors + a JSON of its
``create_model`` keywords) read by ``predict_rec`` on real word crops, rejected clearly without its JSON, and used as
``--config.init.model`` for two fine-tuning steps."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import DATA

from clip_text_spot import checkpoint, parallel, predict_rec, trainer
from clip_text_spot.dptr.load import load_recognizer
from clip_text_spot.dptr.predict import crop_pixels
from clip_text_spot.metrics.recognition import read_labels
from clip_text_spot.models.clip.convert import model_flat_state
from clip_text_spot.models.dptr import load_parseq
from clip_text_spot.tasks.dptr import DptrFinetuneTask
from configs.dptr import get_config

PARSEQ = DATA / "parseq_tiny"
CROPS = DATA / "readers" / "parseq_demo"


@pytest.fixture(scope="module")
def parseq_file(tmp_path_factory):
    """The fixture's weights as ``parseq.safetensors`` with ``parseq.json`` (kind + keywords) beside it."""
    folder = tmp_path_factory.mktemp("parseq")
    shutil.copy(PARSEQ / "parseq.safetensors", folder / "parseq.safetensors")
    kwargs = json.loads((PARSEQ / "config.json").read_text())["model_kwargs"]
    (folder / "parseq.json").write_text(json.dumps({"kind": "parseq", **kwargs}))
    return folder / "parseq.safetensors", kwargs


def test_predict_rec_reads_crops_with_an_official_checkpoint(parseq_file, tmp_path, capsys):
    path, kwargs = parseq_file
    out = tmp_path / "pred.tsv"
    labels = CROPS / "labels.tsv"
    assert predict_rec.main([f"--checkpoint={path}", f"--labels={labels}", f"--output={out}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoint"] == str(path) and summary["images"] == summary["total"] == 6
    # the same texts as the loaded model's own decoding of the [-1, 1] crops (bicubic to its 32x128 input)
    model = load_parseq(str(path), **kwargs)
    names = list(read_labels(labels))
    pixels = np.stack([crop_pixels((CROPS / n).read_bytes(), tuple(kwargs["img_size"])) for n in names])
    want = [model.charset.decode(row) for row in np.asarray(model.predict(pixels)).argmax(-1)]
    assert read_labels(out) == dict(zip(names, want, strict=True))


def test_official_checkpoint_needs_its_json(parseq_file, tmp_path, capsys):
    path, _ = parseq_file
    bare = tmp_path / "bare.safetensors"
    shutil.copy(path, bare)
    assert predict_rec.main([f"--checkpoint={bare}", str(CROPS)]) == 2
    assert "needs bare.json beside it" in capsys.readouterr().err
    (tmp_path / "bare.json").write_text(json.dumps({"kind": "crnn"}))
    with pytest.raises(ValueError, match="kind"):
        load_recognizer(str(bare))


def test_finetuning_starts_from_an_official_checkpoint(parseq_file):
    path, kwargs = parseq_file
    config = get_config("demo").finetune
    config.model.decoder.update(dim=48, depth=1, heads=4, max_len=7, fmu_queries=0, dropout=0.0, num_perms=2)
    config.model.encoder.update(width=48, depth=2, heads=3, norm_eps=1e-6, patch_size=(4, 8), stem=())
    config.init.update(model=str(path), decoder="")
    config.batch_size = 4
    task = DptrFinetuneTask(config)
    run = trainer.setup(config, task)
    state = run.init_state()  # fresh init, then task.load_pretrained: every weight from the checkpoint
    want = model_flat_state(load_parseq(str(path), **kwargs))
    got = checkpoint.flat_names(jax.tree.map(np.asarray, state["params"]))
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)

    data = task.train_batches(seed=0, process_index=0, process_count=1)
    with jax.set_mesh(run.mesh):
        for _ in range(2):
            state, metrics = run.step_fn(state, parallel.global_batch(next(data), run.mesh))
    assert np.isfinite(float(metrics["loss"])) and int(state["step"]) == 2
    after = checkpoint.flat_names(jax.tree.map(np.asarray, state["params"]))
    assert not np.array_equal(after["decoder/head/kernel"], want["decoder/head/kernel"])
