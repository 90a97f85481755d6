#!/usr/bin/env bash
# The DPDD protocol behind results/dpdd/ (issue 14): DeSpike (paper setting, and the shipped model's size) and the
# four TFP/TFI -> GKMNet/NRKNet cascades trained from scratch on spikes simulated from DPDD's real defocused
# photographs, one budget for all (options/dpdd_cpu/: same data, crops, batch, iterations, schedule, EMA and seed),
# then scored on the 4 DPDD val pairs in one benchmark run, beside the defocused photographs themselves. About 2.5
# hours on this project's 2-core CPU (run two at a time with OMP_NUM_THREADS=1 to use both cores); finished runs are
# reused, interrupted ones resume (--auto_resume).
# Usage: bash scripts/dpdd_protocol.sh [DPDD_ROOT] [--device cuda]   (DPDD_ROOT default ../shared/data/dpdd_gray768)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${DESPIKE_VENV:-.venv}/bin/python
root=../shared/data/dpdd_gray768
device=cpu
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    *) root=$1; shift ;;
  esac
done
data=datasets/dpdd_cpu
# One stated sensor for both splits: theta 2, eta 1, 5.8 % FPN (a sensor pattern per LMDB), shot noise, 256 steps.
sensor=(--steps 256 --threshold 2.0 --eta 1.0 --gain-std 0.058 --shot-noise --no-progress)
[ -d $data/val.lmdb ] || "$py" scripts/prepare_dpdd.py --dpdd-root "$root" --split val --out $data/val.lmdb --seed 1 "${sensor[@]}"
[ -d $data/train.lmdb ] || "$py" scripts/prepare_dpdd.py --dpdd-root "$root" --split train --out $data/train.lmdb --seed 0 "${sensor[@]}"

mkdir -p results/dpdd experiments
times=results/dpdd/training_seconds.md
[ -f $times ] || printf '# DPDD protocol: wall time of each training\n\n| method | seconds |\n| --- | ---: |\n' > $times
methods=("defocused:$root" tfp tfp:191 tfi tfp:191+fpn tfi+fpn)
for method in despike despike_small nrknet_tfp nrknet_tfp_fpn gkmnet_tfp nrknet_tfi gkmnet_tfi; do
  options=options/dpdd_cpu/train_$method.yml
  name=$("$py" -c "import yaml; print(yaml.safe_load(open('$options'))['name'])")
  weights=experiments/$name/models/net_g_latest.pth
  if [ ! -f "$weights" ]; then
    echo "[dpdd] training $method ($options), log experiments/dpdd_$method.log"
    start=$(date +%s)
    "$py" despike_basicsr/train.py -opt "$options" --auto_resume > "experiments/dpdd_$method.log" 2>&1
    echo "| $method | $(( $(date +%s) - start )) |" >> $times
  fi
  methods+=("$method:$options:$weights")
done
"$py" scripts/benchmark.py --lmdb $data/val.lmdb --out-dir results/dpdd --device "$device" --methods "${methods[@]}"
