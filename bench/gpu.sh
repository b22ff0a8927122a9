#!/usr/bin/env bash
# The GPU benchmarks of issue #8 in one run that fits a 10-minute device call, merged into
# bench/results/<date>-<device>.json (under $OUT when set, as on the device machine).
#
#   bash bench/gpu.sh            # FastTCM train (bf16, batch 16, 640x640) + inference FPS, DPTR speeds, spotting
#
# The device image has jax, flax, optax, orbax, transformers and OpenCV but not grain, ml_collections,
# tensorflow-datasets, pyclipper or shapely: download those wheels into .whl here first (device README, "Notes")
# and start the device command with its pip-install line. Each step's JSON line is kept even if a later one fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
dest=${OUT:-bench/results}
mkdir -p "$dest"
parts=$(mktemp -d)
python bench/fasttcm.py --train_batch=16 --steps=10 --infer_images=30 --dtype=bfloat16 --output="$parts/fasttcm_bf16.json"
python bench/fasttcm.py --skip_train --infer_images=30 --dtype=float32 --output="$parts/fasttcm_f32.json"
python bench/dptr_speed.py --batch=256 --steps=10 --dtype=bfloat16 --output="$parts/dptr_speed_bf16.json"
python bench/spot.py --images=20 --output="$parts/spot.json"
python bench/collect.py "$parts"/*.json --output="$dest"
