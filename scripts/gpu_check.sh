#!/usr/bin/env bash
# GPU readiness check in one run: paper-setting DeSpike training with and without AMP (iterations/s, peak memory),
# inference latency at 250x400 and 1000x1000, simulator throughput on the device, printed as one table
# (scripts/gpu_check.py does the work; see its docstring).
#
#   scripts/gpu_check.sh                          # a CUDA machine: a few minutes
#   scripts/gpu_check.sh --compile                # also a train.compile row (compiling takes minutes)
#   scripts/gpu_check.sh --device cpu --dry-run   # every piece at toy sizes on the CPU (seconds)
#
# The table goes to stdout and, with the figures as json, to $GPU_CHECK_OUT (default results/gpu_check/).
# Without a CUDA device (and without --device cpu) it stops at once with exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${DESPIKE_PYTHON:-}
if [ -z "$py" ]; then
  if [ -x "${DESPIKE_VENV:-.venv}/bin/python" ]; then py=${DESPIKE_VENV:-.venv}/bin/python; else py=python; fi
fi

device=cuda
for arg in "$@"; do
  case "$arg" in --device=cpu) device=cpu ;; esac
done
prev=
for arg in "$@"; do
  if [ "$prev" = "--device" ]; then device=$arg; fi
  prev=$arg
done

if [ "$device" = cuda ]; then
  if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device is visible to torch ($("$py" -c 'import torch; print(torch.__version__)' 2>&1));" \
      "this check needs a GPU. For the CPU dry run: scripts/gpu_check.sh --device cpu --dry-run" >&2
    exit 2
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

out=${GPU_CHECK_OUT:-results/gpu_check}
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
report=$out/gpu_check_${device}_${stamp}
"$py" scripts/gpu_check.py "$@" --json "$report.json" 2>&1 | tee "$report.txt"
exit "${PIPESTATUS[0]}"
