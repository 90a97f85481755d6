#!/usr/bin/env bash
# The CPU benchmark protocol behind results/benchmark.md: every method trained for the same 400 iterations on the
# built-in demo data (same crops, batch, seed, validation), then evaluated on the held-out demo streams in one run.
# About 30-40 minutes on a 2-core CPU. Usage: bash scripts/run_demo_protocol.sh [--device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
py=${DESPIKE_VENV:-.venv}/bin/python
device=cpu
[ "${1:-}" = "--device" ] && device=$2

[ -d datasets/demo/demo_train.lmdb ] || "$py" scripts/make_demo_dataset.py --out datasets/demo
methods=(tfp tfi)
for method in despike gkmnet_tfp nrknet_tfp; do
  opt=options/train_${method}_demo.yml
  name=$("$py" -c "import yaml; print(yaml.safe_load(open('$opt'))['name'])")
  weights=experiments/$name/models/net_g_latest.pth
  if [ ! -f "$weights" ]; then
    echo "[protocol] training $method ($opt)"
    "$py" despike_basicsr/train.py -opt "$opt"
  fi
  methods+=("$method:options/test_${method}_demo.yml:$weights")
done
"$py" scripts/benchmark.py --lmdb datasets/demo/demo_val.lmdb --out-dir results --device "$device" --methods "${methods[@]}"
