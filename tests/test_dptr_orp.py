"""ORP (dptr.md §1.5): sampling from a memory-mapped bank, CLIP preprocessing, and the build_orp_bank CLI."""

import json
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from clip_text_spot.dptr import build_orp_bank
from clip_text_spot.dptr.orp import CLIP_MEAN, CLIP_STD, OrpSampler, clip_pixels, resize_crop_geometry
from clip_text_spot.models.clip import CLIP, preset, save_converted


@pytest.fixture
def bank_file(tmp_path):
    """A float16 bank [8 images, 197 tokens, 4] whose values encode (image, token): 256 * image + token."""
    codes = 256 * np.arange(8)[:, None] + np.arange(197)[None, :]
    bank = np.repeat(codes[..., None], 4, axis=2).astype(np.float16)  # integers < 2048 are exact in float16
    path = tmp_path / "bank.npy"
    np.save(path, bank)
    return path


def test_orp_one_image_per_sample_and_one_shared_token_subset(bank_file):
    sampler = OrpSampler(bank_file, lam=0.5, tokens=78)
    noise = sampler.sample(6, np.random.default_rng(0))
    assert noise.shape == (6, 78, 4) and noise.dtype == np.float16
    assert isinstance(sampler.bank, np.memmap)  # read through a memory map, never loaded whole
    codes = (noise[..., 0].astype(np.float64) / 0.5).round().astype(int)  # lambda 0.5 is exact in float16
    np.testing.assert_array_equal(noise[..., 0], noise[..., 3])
    images, tokens = codes // 256, codes % 256
    assert all(len(set(row)) == 1 for row in images)  # one bank image per sample ...
    assert len(set(images[:, 0])) == 6  # ... distinct across the batch (no replacement)
    assert (tokens == tokens[0]).all()  # one token subset shared by the batch
    assert len(set(tokens[0])) == 78 and tokens[0].max() < 197  # distinct tokens of the 197
    assert tokens[0].tolist() != sorted(tokens[0].tolist())  # in random order


def test_orp_lambda_scales_and_per_sample_token_subsets(bank_file):
    noise = OrpSampler(bank_file, lam=0.1, tokens=78).sample(4, np.random.default_rng(1))
    raw = OrpSampler(bank_file, lam=1.0, tokens=78).sample(4, np.random.default_rng(1))  # same draws
    np.testing.assert_allclose(noise.astype(np.float32), 0.1 * raw.astype(np.float32), rtol=2e-3)
    per_sample = OrpSampler(bank_file, lam=1.0, tokens=78, shared_tokens=False).sample(4, np.random.default_rng(2))
    tokens = per_sample[..., 0].astype(int) % 256
    assert tokens[0].tolist() != tokens[1].tolist()


def test_orp_sampler_pickles_by_path_and_checks_sizes(bank_file):
    sampler = OrpSampler(bank_file, tokens=78)
    sampler.sample(2, np.random.default_rng(0))
    assert len(pickle.dumps(sampler)) < 2000  # the bank data does not travel to data workers
    with pytest.raises(ValueError, match="at least the global batch size 9"):
        sampler.sample(9, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least the global batch size 10"):
        sampler.sample(5, np.random.default_rng(0), process_index=1, process_count=2)


def test_orp_process_shards_reassemble_the_single_process_draw(bank_file):
    """Process p keeps rows p::P of the global draw, so P processes (same rng) give a single process's batch."""
    for shared in (True, False):
        sampler = OrpSampler(bank_file, lam=1.0, tokens=78, shared_tokens=shared)
        whole = sampler.sample(6, np.random.default_rng(3))
        parts = [sampler.sample(2, np.random.default_rng(3), process_index=p, process_count=3) for p in range(3)]
        for p, part in enumerate(parts):
            np.testing.assert_array_equal(part, whole[p::3])
    with pytest.raises(ValueError, match="fewer than the 200 to sample"):
        OrpSampler(bank_file, tokens=200)


def test_clip_resize_and_centre_crop_geometry():
    # torchvision Resize(224) on PIL images: short side 224, long side int(224 * long / short); CenterCrop offsets
    # int(round((size - 224) / 2)) with Python's round-half-to-even
    assert resize_crop_geometry(300, 200, 224) == (336, 224, 56, 0)
    assert resize_crop_geometry(301, 200, 224) == (337, 224, 56, 0)  # round(56.5) = 56
    assert resize_crop_geometry(100, 150, 224) == (224, 336, 0, 56)
    assert resize_crop_geometry(224, 224, 224) == (224, 224, 0, 0)


def test_clip_pixels_normalises_a_flat_image():
    pixels = clip_pixels(Image.new("RGB", (40, 30), (255, 128, 0)), 16)
    assert pixels.shape == (16, 16, 3)
    expected = (np.array([255, 128, 0]) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(pixels, np.broadcast_to(expected, (16, 16, 3)), atol=1e-5)


def test_build_orp_bank_cli(tmp_path, capsys):
    clip = CLIP(preset("tiny_vit"), rngs=nnx.Rngs(0))  # ViT 64 px, patch 8 -> 65 tokens of 64
    clip.eval()
    save_converted(clip, str(tmp_path / "clip"))
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"b.png": (80, 60), "a.jpg": (50, 90), "sub/c.jpeg": (64, 64)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / name, quality=95)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "bank.npy"
    argv = [f"--clip={tmp_path / 'clip'}", f"--images={images}", f"--output={out}", "--batch_size=2"]
    assert build_orp_bank.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["shape"] == [3, 65, 64]
    bank = np.load(out, mmap_mode="r")
    assert bank.dtype == np.float16 and not (tmp_path / "bank.npy.partial").exists()
    for row, name in enumerate(["a.jpg", "b.png", "sub/c.jpeg"]):  # sorted paths
        with Image.open(images / name) as image:
            ref = clip.encode_image_tokens(jnp.asarray(clip_pixels(image, 64))[None])[0]
        np.testing.assert_allclose(bank[row].astype(np.float32), np.asarray(ref), atol=2e-3, rtol=2e-3)
    assert build_orp_bank.main(argv[:2] + [f"--output={tmp_path / 'two.npy'}", "--limit=2"]) == 0
    assert np.load(tmp_path / "two.npy").shape == (2, 65, 64)
    assert build_orp_bank.main([f"--clip={tmp_path / 'clip'}", f"--images={tmp_path / 'none'}", "--output=x.npy"]) == 2
    assert "is not a directory" in capsys.readouterr().err
