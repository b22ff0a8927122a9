"""Our interpolation matrices reproduce PyTorch F.interpolate (align_corners=False) exactly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_text_spot.models.resize import resize_grid


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("out_hw", [(20, 20), (57, 32), (3, 4), (7, 7), (1, 5)])
def test_matches_torch_interpolate(method, out_hw):
    x = np.random.default_rng(0).normal(size=(7, 7, 6)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], size=out_hw, mode=method, align_corners=False)
    ours = np.asarray(resize_grid(x, out_hw, method))
    np.testing.assert_allclose(ours, ref[0].permute(1, 2, 0).numpy(), atol=1e-5)


def test_same_size_is_identity_and_no_antialias():
    x = np.random.default_rng(1).normal(size=(20, 20, 3)).astype(np.float32)
    assert resize_grid(x, (20, 20), "bilinear") is x
    # 20 -> 10 without antialiasing samples between pixel pairs: the mean of neighbours 2i, 2i+1
    down = np.asarray(resize_grid(x, (10, 10), "bilinear"))
    expect = 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])
    np.testing.assert_allclose(down, expect, atol=1e-6)


def test_unknown_method():
    with pytest.raises(ValueError, match="bilinear"):
        resize_grid(np.zeros((2, 2, 1), np.float32), (3, 3), "nearest")
