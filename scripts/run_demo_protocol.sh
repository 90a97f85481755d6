#!/usr/bin/env bash
# The CPU benchmark protocol behind results/benchmark.md: every method trained for the same 400 iterations on the
# built-in demo data (same crops, batch, seed, validation), then evaluated on the held-out demo streams in one run.
# About 30-40 minutes on a 2-core CPU (trained experiments are reused).
# Usage: bash scripts/run_demo_protocol.sh [--device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
py=${DESPIKE_VENV:-.venv}/bin/python
device=cpu
[ "${1:-}" = "--device" ] && device=$2

[ -d datasets/demo/demo_train.lmdb ] || "$py" scripts/make_demo_dataset.py --out datasets/demo
methods=(tfp tfp:191 tfi)
# table name : options stem (train_<stem>.yml / test_<stem>.yml)
for entry in despike:despike_demo despike_wide:despike_demo_wide gkmnet_tfp:gkmnet_tfp_demo \
             nrknet_tfp:nrknet_tfp_demo; do
  method=${entry%%:*} stem=${entry#*:}
  name=$("$py" -c "import yaml; print(yaml.safe_load(open('options/train_$stem.yml'))['name'])")
  weights=experiments/$name/models/net_g_latest.pth
  if [ ! -f "$weights" ]; then
    echo "[protocol] training $method (options/train_$stem.yml)"
    "$py" despike_basicsr/train.py -opt "options/train_$stem.yml"
  fi
  methods+=("$method:options/test_$stem.yml:$weights")
done
"$py" scripts/benchmark.py --lmdb datasets/demo/demo_val.lmdb --out-dir results --device "$device" \
  --methods "${methods[@]}"
