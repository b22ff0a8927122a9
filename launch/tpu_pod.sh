#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one process per TPU host, all joined by jax.distributed's TPU auto-detection).
#
#   ZONE=us-central2-b TPU_TYPE=v4-32 bash launch/tpu_pod.sh NAME ARGS...
#   ZONE=us-central2-b TPU_TYPE=v4-32 bash launch/tpu_pod.sh fasttcm-ic15 --config=configs/fasttcm.py:ic15 \
#       --workdir=gs://BUCKET/runs/ic15 --config.model.clip_checkpoint=gs://BUCKET/RN50.safetensors \
#       --config.data.root=gs://BUCKET/prepared/icdar2015
#
# Creates the slice NAME if it does not exist (reuses it otherwise), copies this checkout to every worker, installs
# requirements.txt plus jax[tpu] in a virtualenv there (once), and runs
# `python -m clip_text_spot.main --distributed ARGS...` on all workers at the same time. ARGS go to main unchanged;
# give a gs:// --workdir (orbax writes every host's shards there, and a rerun of the same command resumes). Logs and
# pictures are written by process 0; each worker's output is prefixed by gcloud with its worker index.
#
# Environment: ZONE and TPU_TYPE (required), PROJECT (default: gcloud's), RUNTIME (TPU software version, default
# tpu-ubuntu2204-base), SPOT=1 (spot capacity), JAX_VERSION (default the pinned 0.10.2), DELETE=1 (delete the
# slice after the run). Needs the gcloud CLI, authenticated, on the machine that runs this script.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: ZONE=... TPU_TYPE=... $0 NAME ARGS..." >&2
  exit 2
fi
name=$1
shift
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
: "${TPU_TYPE:?set TPU_TYPE (e.g. v4-32)}"
runtime=${RUNTIME:-tpu-ubuntu2204-base}
jax_version=${JAX_VERSION:-0.10.2}
project_flag=()
[[ -n ${PROJECT:-} ]] && project_flag=(--project="$PROJECT")
tpu=(gcloud compute tpus tpu-vm "${project_flag[@]}")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! "${tpu[@]}" describe "$name" --zone="$ZONE" > /dev/null 2>&1; then
  spot=()
  [[ ${SPOT:-0} == 1 ]] && spot=(--spot)
  echo "[tpu_pod] creating $TPU_TYPE slice $name in $ZONE" >&2
  "${tpu[@]}" create "$name" --zone="$ZONE" --accelerator-type="$TPU_TYPE" --version="$runtime" "${spot[@]}"
fi

# The same code on every worker: a tarball of this checkout (tracked and untracked-but-not-ignored files).
bundle=$(mktemp -d)/clip_text_spot.tar.gz
(cd "$root" && git ls-files -co --exclude-standard -z | tar --null -czf "$bundle" -T -)
"${tpu[@]}" scp "$bundle" "$name":clip_text_spot.tar.gz --zone="$ZONE" --worker=all

quoted=$(printf ' %q' "$@")
status=0
"${tpu[@]}" ssh "$name" --zone="$ZONE" --worker=all --command="
set -euo pipefail
mkdir -p clip_text_spot && tar -xzf clip_text_spot.tar.gz -C clip_text_spot && cd clip_text_spot
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==$jax_version'
fi
.venv/bin/python -m clip_text_spot.main --distributed$quoted
" || status=$?

if [[ ${DELETE:-0} == 1 ]]; then
  "${tpu[@]}" delete "$name" --zone="$ZONE" --quiet
fi
exit "$status"
