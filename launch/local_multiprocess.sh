#!/usr/bin/env bash
# N JAX processes on this machine, joined over loopback, each with K simulated CPU devices: the multi-controller
# code paths of a pod or cluster (per-process data, global batches, cross-process collectives, checkpoints written
# by every process) without one.
#
#   bash launch/local_multiprocess.sh N ARGS...       # ARGS go to `python -m clip_text_spot.main`
#   bash launch/local_multiprocess.sh 2 --config=configs/fasttcm.py:demo --workdir=runs/mp2 --config.total_steps=4
#
# Environment: DEVICES_PER_PROCESS (K, default 4), PORT (coordinator port on 127.0.0.1, default: a free one),
# PYTHON (default: the python on PATH), JAX_PLATFORMS (default cpu). Every output line is prefixed with [pI]. Exits
# with the first non-zero status (the other processes are then stopped), else 0.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES ARGS..." >&2
  exit 2
fi
nproc=$1
shift
python=${PYTHON:-python}
devices=${DEVICES_PER_PROCESS:-4}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < nproc; i++)); do
  "$python" -u -m clip_text_spot.main --distributed --coordinator_address="127.0.0.1:$port" \
    --num_processes="$nproc" --process_id="$i" "$@" > >(sed -u "s/^/[p$i] /") 2>&1 &
  pids+=($!)
done

status=0
remaining=$nproc
while ((remaining > 0)); do
  for idx in "${!pids[@]}"; do
    pid=${pids[$idx]}
    [[ $pid == done ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    pids[idx]=done
    remaining=$((remaining - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "[launch] process $idx exited with status $rc; stopping the others" >&2
      stop_all
    fi
  done
  if ((remaining > 0)); then sleep 1; fi
done
wait  # let the log prefixers flush
exit "$status"
