#!/usr/bin/env bash
# The CPU benchmark protocol behind results/benchmark.md: every method trained for the same 400 iterations on the
# built-in demo data (same crops, batch, seed, validation), then evaluated on the held-out demo streams in one run.
# About 30-40 minutes on a 2-core CPU (trained experiments are reused).
# Usage: bash scripts/run_demo_protocol.sh [--device cuda]
#   --device  where benchmark.py evaluates (default cpu); training follows each options file
#   --help    print this and run nothing
set -euo pipefail
device=cpu
while [ $# -gt 0 ]; do
  case $1 in
    --device) [ $# -ge 2 ] || { echo "--device needs a value (cpu, cuda)" >&2; exit 2; }; device=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
bash scripts/install.sh
py=${DESPIKE_VENV:-.venv}/bin/python

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
