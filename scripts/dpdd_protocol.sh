#!/usr/bin/env bash
# The DPDD protocol behind results/dpdd/ and results/dpdd_low/ (issues 14 and 22): DeSpike, the eight "spike
# reconstruction -> frame deblurring" cascades (TFP, TFI, RSIR, Spk2ImgNet front ends, each followed by GKMNet and by
# NRKNet; RSIR and Spk2ImgNet are trained first as their own stage, with the defocused photograph as target, then
# frozen) and, at the bright level, the five DeSpike ablations, all trained from scratch on spikes simulated from DPDD's
# real defocused photographs on one budget (options/dpdd_cpu/, options/dpdd_low/: same data, crops, batch,
# iterations, schedule, EMA and seed), then scored on the 4 DPDD val pairs beside the defocused photographs:
#
#   results/<level>/benchmark.{md,json,png}    every method, per image, paired differences to DeSpike (tiles, intervals)
#   results/dpdd/ablations.{md,json,png}       DeSpike and its five ablations (bright level)
#   results/<level>/short_{64,32}/benchmark.*  the same trained models on 64- and 32-step streams (robustness)
#   results/<level>/training_times.md          wall and CPU seconds of every training and evaluation row
#
# Levels: bright (theta 2, eta 1: 0.09-0.14 spikes per step on the val pairs) and low (eta 0.18: about 0.02 spikes per
# step, where TFP-41 falls under 20 dB), each with its own LMDBs (datasets/dpdd_cpu, datasets/dpdd_cpu_low).
# Finished trainings (experiments/<name>/models/net_g_latest.pth) are reused, interrupted ones resume
# (--auto_resume). CPU estimate, one core per training: about 22 hours for the bright level and 19 for the low one
# (Spk2ImgNet's stage and its two cascades are about 60 % of it; docs/baselines.md has the table).
#
# Usage: bash scripts/dpdd_protocol.sh [DPDD_ROOT] [--level bright|low|all] [--device cuda] [--skip-train] [--dry-run]
#   DPDD_ROOT     default ../shared/data/dpdd_gray768 ({train,val}_c/{source,target})
#   --skip-train  score what is trained, train nothing (rows without weights are left out, with a line saying so)
#   --dry-run     print what would run (data, trainings in order, benchmark commands) and run nothing
set -euo pipefail
cd "$(dirname "$0")/.."
py=${DESPIKE_VENV:-.venv}/bin/python
root=../shared/data/dpdd_gray768
device=cpu
levels=(bright)
skip_train=0
dry=0
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --level) case $2 in all) levels=(bright low) ;; bright|low) levels=("$2") ;;
               *) echo "--level must be bright, low or all, got $2" >&2; exit 2 ;; esac; shift 2 ;;
    --skip-train) skip_train=1; shift ;;
    --dry-run) dry=1; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) root=$1; shift ;;
  esac
done
LOW_ETA=0.18

say() { echo "[dpdd] $*"; }
run() {  # run (or, with --dry-run, print) a command
  if [ $dry = 1 ]; then echo "  $*"; else "$@"; fi
}
option_name() { "$py" -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$1"; }

# Prepare an LMDB unless it is there; one prepared before the defocused image was stored (<key>/blurred, the target
# of the front-end stages) is prepared again: the same seed gives the same streams, byte for byte.
prepare() {  # split seed out eta
  local split=$1 seed=$2 out=$3 eta=$4
  local sensor=(--steps 256 --threshold 2.0 --eta "$eta" --gain-std 0.058 --shot-noise --no-progress)
  if [ -d "$out" ] && [ $dry = 0 ] && ! "$py" -c "import sys; from despike_basicsr.data.spike_lmdb import \
SpikeLMDBReader; sys.exit(0 if SpikeLMDBReader(sys.argv[1]).has_blurred() else 1)" "$out"; then
    say "$out stores no defocused images (prepared before they were stored): preparing it again, same seed"
    run "$py" scripts/prepare_dpdd.py --dpdd-root "$root" --split "$split" --out "$out" --seed "$seed" "${sensor[@]}" \
      --overwrite
  elif [ ! -d "$out" ]; then
    run "$py" scripts/prepare_dpdd.py --dpdd-root "$root" --split "$split" --out "$out" --seed "$seed" "${sensor[@]}"
  fi
}

# Train one row unless its weights exist; append its wall and CPU seconds (children included) to the times table.
train() {  # row options
  local row=$1 options=$2 name weights
  name=$(option_name "$options")
  weights=experiments/$name/models/net_g_latest.pth
  if [ -f "$weights" ] || [ $skip_train = 1 ]; then return 0; fi
  say "training $row ($options), log experiments/${level}_$row.log"
  if [ $dry = 1 ]; then echo "  $py despike_basicsr/train.py -opt $options --auto_resume"; return 0; fi
  local measured
  measured=$( { TIMEFORMAT='%R %U %S'; time "$py" despike_basicsr/train.py -opt "$options" --auto_resume \
    > "experiments/${level}_$row.log" 2>&1; } 2>&1 ) || {
    tail -n 30 "experiments/${level}_$row.log" >&2; say "training $row failed (log above)"; exit 1; }
  read -r wall user sys <<< "$measured"
  echo "| $row | train | $options | $wall | $(cpu_seconds "$user" "$sys") | ${OMP_NUM_THREADS:-all} |" >> "$times"
}

# The benchmark spec of a trained row ("NAME:OPTIONS:WEIGHTS"), or nothing (with a line) when it is not trained.
spec() {  # row options
  local row=$1 options=$2 weights
  weights=experiments/$(option_name "$options")/models/net_g_latest.pth
  if [ -f "$weights" ] || [ $dry = 1 ]; then echo "$row:$options:$weights"; else say "$row: not trained, left out" >&2; fi
}

cpu_seconds() { awk -v u="$1" -v s="$2" 'BEGIN { printf "%.1f", u + s }'; }

bench() {  # label out-dir log-name args...
  local label=$1 out=$2 log=$2/$3.log; shift 3
  if [ $dry = 1 ]; then echo "  $py scripts/benchmark.py --out-dir $out $*"; return 0; fi
  local measured
  measured=$( { TIMEFORMAT='%R %U %S'; time "$py" scripts/benchmark.py --device "$device" --out-dir "$out" "$@" \
    > "$log" 2>&1; } 2>&1 ) || { tail -n 30 "$log" >&2; say "benchmark $label failed (log above)"; exit 1; }
  read -r wall user sys <<< "$measured"
  echo "| $label | evaluate | $out | $wall | $(cpu_seconds "$user" "$sys") | ${OMP_NUM_THREADS:-all} |" >> "$times"
  tail -n 40 "$log"
}

[ $dry = 1 ] || mkdir -p experiments
for level in "${levels[@]}"; do
  if [ "$level" = bright ]; then
    data=datasets/dpdd_cpu; opts=options/dpdd_cpu; results=results/dpdd; eta=1.0
  else
    data=datasets/dpdd_cpu_low; opts=options/dpdd_low; results=results/dpdd_low; eta=$LOW_ETA
  fi
  say "level $level: eta $eta, data $data, options $opts, results $results"
  prepare val 1 $data/val.lmdb $eta
  prepare train 0 $data/train.lmdb $eta
  [ $dry = 1 ] || mkdir -p $results
  times=$results/training_times.md
  [ -f $times ] || [ $dry = 1 ] || printf '# DPDD protocol (%s level): wall and CPU time of every row\n\nCPU: user + system seconds of the process and its children (bash `time`); threads: OMP_NUM_THREADS.\n\n| row | step | options / output | wall (s) | CPU (s) | threads |\n| --- | --- | --- | ---: | ---: | --- |\n' "$level" > $times

  # Rows: benchmark name = options file. The front-end stages come first: the learned cascades load their weights.
  rows=(rsir=train_rsir spk2imgnet=train_spk2imgnet despike=train_despike
        tfp_gkmnet=train_gkmnet_tfp tfp_nrknet=train_nrknet_tfp tfi_gkmnet=train_gkmnet_tfi tfi_nrknet=train_nrknet_tfi
        rsir_gkmnet=train_rsir_gkmnet rsir_nrknet=train_rsir_nrknet
        spk2imgnet_gkmnet=train_spk2imgnet_gkmnet spk2imgnet_nrknet=train_spk2imgnet_nrknet)
  ablations=()
  classical=("defocused:$root" tfp tfp:191 tfi)
  if [ "$level" = bright ]; then
    rows+=(despike_small=train_despike_small tfp_nrknet_fpn=train_nrknet_tfp_fpn)
    for part in multi_temporal multi_scale fpn fusion physical_kernels; do
      ablations+=("despike_wo_$part=train_despike_wo_$part")
    done
    classical+=(tfp:191+fpn tfi+fpn)
  fi
  for entry in "${rows[@]}" "${ablations[@]}"; do
    train "${entry%%=*}" "$opts/${entry#*=}.yml"
  done

  # The table: every row, the paired differences to DeSpike, per image and per tile.
  methods=("${classical[@]}")
  for entry in "${rows[@]}"; do
    s=$(spec "${entry%%=*}" "$opts/${entry#*=}.yml"); [ -n "$s" ] && methods+=("$s")
  done
  bench "$level: all methods" $results benchmark --lmdb $data/val.lmdb --reference despike --methods "${methods[@]}"

  if [ ${#ablations[@]} -gt 0 ]; then
    methods=()
    for entry in despike=train_despike "${ablations[@]}"; do
      s=$(spec "${entry%%=*}" "$opts/${entry#*=}.yml"); [ -n "$s" ] && methods+=("$s")
    done
    bench "$level: ablations" $results ablations --name ablations --lmdb $data/val.lmdb --reference despike \
      --methods "${methods[@]}"
  fi

  # Short windows: the same models on 64- and 32-step streams (a network that needs more frames is listed as such).
  for frames in 64 32; do
    methods=(tfp tfi)
    for entry in "${rows[@]}"; do
      case ${entry%%=*} in despike_small|tfp_nrknet_fpn) continue ;; esac
      s=$(spec "${entry%%=*}" "$opts/${entry#*=}.yml"); [ -n "$s" ] && methods+=("$s")
    done
    [ $dry = 1 ] || mkdir -p $results/short_$frames
    bench "$level: $frames-step streams" $results/short_$frames benchmark --lmdb $data/val.lmdb --val-len $frames \
      --reference despike --methods "${methods[@]}"
  done
done
