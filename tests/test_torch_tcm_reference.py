"""The bench-only PyTorch TCM / FastTCM matcher (``bench/torch_tcm.py``, what ``bench/tcm_vs_torch.py`` times ours
against) reproduces the official modules' outputs stored in the tcm_tiny fixture, so that bench compares like with
like."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from torch_tcm import TorchTCM, nhwc  # noqa: E402

from clip_text_spot.models.fasttcm.official import config_from_official, split_official_state  # noqa: E402

TINY = DATA / "tcm_tiny"


@pytest.mark.parametrize("fast", [False, True], ids=["tcm", "fasttcm"])
def test_pytorch_reference_matches_official_outputs(fast):
    ref = np.load(TINY / "reference.npz")
    sd, _ = split_official_state(load_file(str(TINY / "tcm_tiny.safetensors")))
    used = sd if fast else {k: v for k, v in sd.items() if k != "meta_query"}
    model = TorchTCM(config_from_official(used, fast=fast, text_heads=4, decoder_heads=4)).load_official(sd)
    images = torch.from_numpy(ref["image_nhwc"].transpose(0, 3, 1, 2).copy())
    ids = torch.from_numpy(ref["texts"])
    with torch.no_grad():
        out = nhwc(model.match(images, ids))
        cached = nhwc(model.match(images, ids, model.precompute_text(ids))) if fast else out
    prefix = "fasttcm_" if fast else "tcm_"
    assert sorted(out) == sorted(k[len(prefix) :] for k in ref if k.startswith(prefix))
    for key, value in out.items():
        np.testing.assert_allclose(value, ref[prefix + key], atol=1e-5, rtol=0, err_msg=key)
        np.testing.assert_allclose(cached[key], value, atol=1e-6, rtol=0, err_msg=key)
