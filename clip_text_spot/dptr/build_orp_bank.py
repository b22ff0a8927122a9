"""Build DPTR's ORP bank: CLIP image tokens of a folder of natural images, as a float16 ``.npy`` [N, tokens, dim].

    python -m clip_text_spot.dptr.build_orp_bank --clip=PATH --images=DIR --output=FILE.npy [--limit=10000]

``--clip``: any CLIP checkpoint ``clip_text_spot.models.clip.load_pretrained`` reads (a ViT image tower is needed;
ViT-B/16 gives 197 tokens of 512). ``--images``: every ``.png/.jpg/.jpeg`` below DIR (sorted); ``--limit N`` keeps
N of them chosen at random with ``--seed`` (the paper's bank: 10,000 random COCO images, ~2 GB). Preprocessing and
encoding: ``clip_text_spot.dptr.orp``. The bank is written incrementally into a memory-mapped ``FILE.partial``
(never held whole in memory) and renamed to FILE when complete. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clip_text_spot.dptr.orp import clip_pixels, encode_in_batches

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(root: str | Path, limit: int = 0, seed: int = 0) -> list[Path]:
    """Sorted image files below ``root``; with ``limit`` > 0, that many chosen at random (kept in sorted order)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--images={root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"--images={root} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    if 0 < limit < len(files):
        keep = np.sort(np.random.default_rng(seed).choice(len(files), size=limit, replace=False))
        files = [files[i] for i in keep]
    return files


def _load(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return clip_pixels(image, size)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from None


def build_bank(
    clip_path: str, images: str, output: str, *, limit: int = 0, seed: int = 0, batch_size: int = 32
) -> dict:
    """Encode the images and write the bank; returns a summary (images, shape, bytes, seconds)."""
    from clip_text_spot.models.clip import CLIP, load_pretrained
    from clip_text_spot.models.inference import inference_fn

    if not output.endswith(".npy"):
        raise ValueError(f"--output={output} must end with .npy")
    start = time.perf_counter()
    files = list_images(images, limit, seed)
    clip = load_pretrained(clip_path)
    if clip.is_resnet:
        raise ValueError(f"--clip={clip_path} has a ResNet image tower; the ORP bank needs a ViT (e.g. ViT-B/16)")
    size = clip.config.vision.image_size
    tokens = (size // clip.config.vision.patch_size) ** 2 + 1
    encode = inference_fn(CLIP.encode_image_tokens, clip)
    partial = output + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    bank = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.float16, shape=(len(files), tokens, clip.config.embed_dim)
    )
    encode_in_batches((_load(f, size) for f in files), len(files), encode, bank, batch_size)
    bank.flush()
    shape = bank.shape
    del bank
    os.replace(partial, output)
    return {
        "output": output,
        "images": len(files),
        "shape": list(shape),
        "bytes": os.path.getsize(output),
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", required=True, help="CLIP checkpoint (ViT image tower)")
    parser.add_argument("--images", required=True, help="folder of natural images (searched recursively)")
    parser.add_argument("--output", required=True, help="bank file to write (.npy, float16)")
    parser.add_argument("--limit", type=int, default=0, help="use N random images (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--batch_size", type=int, default=32, help="images encoded per step")
    args = parser.parse_args(argv)
    try:
        summary = build_bank(
            args.clip, args.images, args.output, limit=args.limit, seed=args.seed, batch_size=args.batch_size
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
