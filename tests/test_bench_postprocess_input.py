"""``bench/fasttcm.py`` times each head's post-processing on ``scene_prediction`` (a synthetic scene made by the head's
own target function) instead of the random network's maps: the scene must be one the head reads as the words it was
made from, one instance per word, in place (DB's unclipped kernel
is not the word's exact box: IoU > 0.5)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from fasttcm import SCENE_WORDS, bench_config, scene_prediction  # noqa: E402

from clip_text_spot.tasks.fasttcm import FastTCMTask  # noqa: E402


@pytest.mark.parametrize("head", ["db", "fce", "pan"])
def test_scene_prediction_recovers_its_words(head):
    config = bench_config("fasttcm", "ic15", head, "float32")
    hw = tuple(v // 2 for v in config.data.eval_size)  # half the bench's size: a quarter of FCE's candidates
    task = FastTCMTask(config)
    prediction, words = scene_prediction(task, hw, np.random.default_rng(1))
    instances = task.postprocess(prediction, [(1.0, 1.0)], [hw])[0]
    assert len(words) == SCENE_WORDS
    assert len(instances) == len(words)
    found = shapely.polygons([p for p, _ in instances])
    for word in shapely.polygons(words):
        iou = shapely.area(shapely.intersection(word, found)) / shapely.area(shapely.union(word, found))
        assert iou.max() > 0.5, (head, iou.max())
    assert min(s for _, s in instances) > 0.9
