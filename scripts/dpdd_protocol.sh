#!/usr/bin/env bash
# The DPDD protocol behind results/dpdd/ and results/dpdd_low/ (issues 14 and 22): DeSpike, the eight "spike
# reconstruction -> frame deblurring" cascades (TFP, TFI, RSIR, Spk2ImgNet front ends, each followed by GKMNet and by
# NRKNet; RSIR and Spk2ImgNet are trained first as their own stage, with the defocused photograph as target, then
# frozen) and, at the bright level, the five DeSpike ablations, all trained from scratch on spikes simulated from DPDD's
# real defocused photographs on one budget (options/dpdd_cpu/, options/dpdd_low/: same data, crops, batch,
# iterations, schedule, EMA and seed), none of them on the 12 train pairs of preparation.scoring_holdout, and scored on
# 16 images: the 4 DPDD val pairs and those 12 (<data>/scoring.lmdb). The table accumulates across sittings (issue 29):
#
#   results/<level>/rows/<row>.json            one finished row: per-image and per-tile scores, weights' size, wall and
#                                              CPU seconds (committed; a row with a file is never trained again)
#   results/<level>/state/<experiment>/        the small state (weights, optimizer, iteration) of an unfinished training
#                                              (removed once its row is scored)
#   results/<level>/benchmark.{md,json}        assembled from rows/ (despike_basicsr.evaluation.protocol): scores,
#                                              paired differences to DeSpike, still training / not started
#   results/dpdd/ablations.{md,json}           DeSpike and its five ablations, from the same row files
#   results/<level>/short_{64,32}/             the same rows on 64- and 32-step streams: rows/<row>.json written when
#                                              the row is scored (its weights are here then), benchmark.* assembled
#   results/<level>/training_times.md          wall and CPU seconds of every training run and evaluation
#
# Levels: bright (theta 2, eta 1: 0.09-0.14 spikes per step on the val pairs) and low (eta 0.18: about 0.02 spikes per
# step, where TFP-41 falls under 20 dB), each with its own LMDBs (datasets/dpdd_cpu, datasets/dpdd_cpu_low).
# Finished trainings (experiments/<name>/models/net_g_latest.pth) are reused, interrupted ones resume
# (--auto_resume, from experiments/ or the committed state). CPU estimate, one core per training: about 22 hours for
# the bright level and 19 for the low one in float32
# (Spk2ImgNet's stage and its two cascades are about 60 % of it; docs/baselines.md has the table).
#
# Usage: bash scripts/dpdd_protocol.sh [DPDD_ROOT] [--level bright|low|all] [--device cuda] [--skip-train]
#                                      [--train-limit SECONDS] [--snapshot-every SECONDS] [--rows ROW[,ROW...]]
#                                      [--amp bf16|fp16] [--short-windows] [--dry-run]
#   DPDD_ROOT     default ../shared/data/dpdd_gray768 ({train,val}_c/{source,target})
#   --skip-train  score what is trained, train nothing (rows without weights stay "still training" / "not started")
#   --train-limit stop a training after SECONDS, save its state to results/<level>/state/ (commit it), assemble the
#                 table and stop: the next sitting resumes it (a state over 30 MB is kept in half precision without
#                 Adam's moments, a cascade's front end with it; it resumes with a warm-up: evaluation/protocol.py)
#   --snapshot-every  while a training runs, copy its newest saved state to results/<level>/state/ every SECONDS
#                 (default 1800; 0: only when it stops), so that a sitting cut off before its end keeps what it
#                 trained up to the last checkpoint (experiments/ is not kept; commit the state folder)
#   --rows        train only these rows (e.g. despike,tfp_gkmnet at the low level, before its RSIR rows, as the issue
#                 orders); every row is still scored when trained and listed in the tables
#   --amp         train in mixed precision (BasicSR --force_yml train:amp=...; every time-table line says how it was
#                 trained). bf16 on a CPU with AMX runs Spk2ImgNet's stage about 3x faster (docs/baselines.md)
#   --short-windows  train again the scored rows (those of --rows, else all) that have no 64/32-step scores (scored
#                 before short windows were scored with each row; experiments/ is not kept) and score them at 64 and
#                 32 steps; their full-length row files stay as they are. Times-table label "<row> (again)"
#   --dry-run     print what would run (data, trainings in order, benchmark commands) and run nothing
set -euo pipefail
cd "$(dirname "$0")/.."
py=${DESPIKE_VENV:-.venv}/bin/python
root=../shared/data/dpdd_gray768
device=cpu
levels=(bright)
skip_train=0
dry=0
limit=0
snapshot_every=1800
short_windows=0
only=
amp=
while [ $# -gt 0 ]; do
  case $1 in
    --device) device=$2; shift 2 ;;
    --level) case $2 in all) levels=(bright low) ;; bright|low) levels=("$2") ;;
               *) echo "--level must be bright, low or all, got $2" >&2; exit 2 ;; esac; shift 2 ;;
    --skip-train) skip_train=1; shift ;;
    --train-limit) limit=$2; shift 2 ;;
    --snapshot-every) snapshot_every=$2; shift 2 ;;
    --rows) only=",$2,"; shift 2 ;;
    --amp) case $2 in bf16|fp16) amp=$2 ;; *) echo "--amp must be bf16 or fp16, got $2" >&2; exit 2 ;; esac; shift 2 ;;
    --short-windows) short_windows=1; shift ;;
    --dry-run) dry=1; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) root=$1; shift ;;
  esac
done
LOW_ETA=0.18
# Trained on the protocol's train LMDB (issue 29): experiments/<name>/<marker>, and experiments/.<marker>/<name>
# written before the training starts (BasicSR archives a folder it starts afresh, the marker inside with it, and a run
# killed before the end cannot mark the new folder: the record outside keeps that training from being set aside).
marker=trained_without_scoring_holdout

say() { echo "[dpdd] $*"; }
run() {  # run (or, with --dry-run, print) a command
  if [ $dry = 1 ]; then echo "  $*"; else "$@"; fi
}
option_name() { "$py" -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$1"; }

# Prepare an LMDB unless it is there; one prepared before the defocused image was stored (<key>/blurred, the target
# of the front-end stages), or a training LMDB that still holds the scoring holdout, is prepared again: the same seed
# gives the same streams, byte for byte.
prepare() {  # split seed out eta [prepare_dpdd.py options...]
  local split=$1 seed=$2 out=$3 eta=$4; shift 4
  local sensor=(--steps 256 --threshold 2.0 --eta "$eta" --gain-std 0.058 --shot-noise --no-progress "$@")
  if [ -d "$out" ] && [ $dry = 0 ] && ! "$py" -c "import sys; from despike_basicsr.data.spike_lmdb import \
SpikeLMDBReader; from despike_basicsr.data import preparation as p; r = SpikeLMDBReader(sys.argv[1]); \
n = len(p.select_scoring_holdout(p.dpdd_pairs(sys.argv[2], 'train'), 'exclude')); \
sys.exit(0 if r.has_blurred() and (sys.argv[3] != 'exclude' or len(r) == n) else 1)" "$out" "$root" "${@: -1}"; then
    say "$out stores no defocused images or still holds the scoring holdout: preparing it again, same seed"
    run "$py" scripts/prepare_dpdd.py --dpdd-root "$root" --split "$split" --out "$out" --seed "$seed" "${sensor[@]}" \
      --overwrite
  elif [ ! -d "$out" ]; then
    run "$py" scripts/prepare_dpdd.py --dpdd-root "$root" --split "$split" --out "$out" --seed "$seed" "${sensor[@]}"
  fi
}

cpu_seconds() { awk -v u="$1" -v s="$2" 'BEGIN { printf "%.1f", u + s }'; }
weights_of() { echo "experiments/$(option_name "$1")/models/net_g_latest.pth"; }
marked_name() { [ -f "experiments/$1/$marker" ] || [ -f "experiments/.$marker/$1" ]; }
marked() { marked_name "$(option_name "$1")"; }  # trained without the scoring holdout

# Train one row unless its weights exist (or a committed row file says it is done); every run's wall and CPU seconds
# (children included) go to the times table. Returns 1 when --train-limit stopped it (its state is saved).
train() {  # row options [times-table label]
  local row=$1 options=$2 label=${3:-$1} name weights status=0
  name=$(option_name "$options")
  weights=experiments/$name/models/net_g_latest.pth
  if { [ -f "$weights" ] && marked_name "$name"; } || [ $skip_train = 1 ]; then return 0; fi
  local precision=()
  [ -n "$amp" ] && precision=(--force_yml "train:amp=$amp")
  say "training $label ($options${amp:+, amp $amp}), log experiments/${level}_$row.log"
  if [ $dry = 1 ]; then echo "  $py despike_basicsr/train.py -opt $options --auto_resume ${precision[*]}"; return 0; fi
  # An experiment folder without the marker was trained before the scoring holdout was left out: set it aside.
  if [ -d "experiments/$name" ] && ! marked_name "$name"; then
    say "experiments/$name predates the scoring holdout: moved to experiments/${name}_before_holdout, training again"
    rm -rf "experiments/${name}_before_holdout"; mv "experiments/$name" "experiments/${name}_before_holdout"
  fi
  mkdir -p "experiments/$name" "experiments/.$marker" && touch "experiments/$name/$marker" "experiments/.$marker/$name"
  "$py" -m despike_basicsr.evaluation.protocol restore --results "$results" --name "$name" --options "$options"
  local measured stop=() watcher=
  [ "$limit" -gt 0 ] && stop=(timeout --signal INT "$limit")
  if [ "$snapshot_every" -gt 0 ]; then  # a sitting cut off before its end keeps its last checkpoint in results/
    ( while sleep "$snapshot_every"; do
        "$py" -m despike_basicsr.evaluation.protocol snapshot --results "$results" --name "$name" \
          --options "$options" --settled 120 || true
      done ) >> "experiments/${level}_$row.snapshots.log" 2>&1 &
    watcher=$!
  fi
  measured=$( { TIMEFORMAT='%R %U %S'; time "${stop[@]}" "$py" despike_basicsr/train.py -opt "$options" \
    --auto_resume "${precision[@]}" > "experiments/${level}_$row.log" 2>&1 || echo "rc $?" >&2; } 2>&1 )
  if [ -n "$watcher" ]; then pkill -P "$watcher" 2>/dev/null || true; kill "$watcher" 2>/dev/null || true; fi
  # BasicSR archives a folder it does not resume from (the marker with it): mark the folder the training wrote
  [ -d "experiments/$name" ] && touch "experiments/$name/$marker"
  case $measured in *"rc 124"*|*"rc 130"*) status=1 ;;
    *"rc "*) tail -n 30 "experiments/${level}_$row.log" >&2; say "training $row failed (log above)"; exit 1 ;; esac
  read -r wall user sys <<< "$(echo "$measured" | head -n 1)"
  local cpu; cpu=$(cpu_seconds "$user" "$sys")
  echo "| $label | train | $options${amp:+ (amp $amp)} | $wall | $cpu | ${OMP_NUM_THREADS:-all} |" >> "$times"
  if [ $status = 1 ]; then
    "$py" -m despike_basicsr.evaluation.protocol snapshot --results "$results" --name "$name" --options "$options"
    say "$row stopped (by --train-limit $limit or a signal): commit $results/state/$name, the next run resumes it"
  fi
  return $status
}

bench() {  # label out-dir log-name args...
  local label=$1 out=$2 log=$2/$3.log; shift 3
  if [ $dry = 1 ]; then echo "  $py scripts/benchmark.py --out-dir $out $*"; return 0; fi
  mkdir -p "$out"
  local measured
  measured=$( { TIMEFORMAT='%R %U %S'; time "$py" scripts/benchmark.py --device "$device" --out-dir "$out" "$@" \
    > "$log" 2>&1; } 2>&1 ) || { tail -n 30 "$log" >&2; say "benchmark $label failed (log above)"; exit 1; }
  read -r wall user sys <<< "$measured"
  echo "| $label | evaluate | $out | $wall | $(cpu_seconds "$user" "$sys") | ${OMP_NUM_THREADS:-all} |" >> "$times"
  tail -n 20 "$log"
}

# Score one row on the 16 scoring images, at full length (the options' val_len) and/or on 64- or 32-step streams, and
# write its committed row file: <results>/rows/<row>.json, <results>/short_<steps>/rows/<row>.json. Nothing where the
# file is there or the row is not trained. Short windows are scored with the full-length row, while the weights are
# here (experiments/ is not kept between clones); a network that refuses streams that short gets a row file saying so.
score() {  # full|64|32[,...] row method-spec [weights [times-table label]]
  local row=$2 method=$3 weights=${4:-} label=${5:-$2} steps out length
  if [ -n "$weights" ] && [ ! -f "$weights" ] && [ $dry = 0 ]; then return 0; fi
  for steps in ${1//,/ }; do
    out=$results length=()
    [ "$steps" = full ] || { out=$results/short_$steps length=(--val-len "$steps"); }
    [ -f "$out/rows/$row.json" ] && continue
    bench "$level: $row${length[*]:+, $steps steps}" "$out/rows/.work/$row" benchmark --lmdb "$data/scoring.lmdb" \
      "${length[@]}" --reference despike --methods "$method"
    if [ $dry = 1 ]; then echo "  $py -m despike_basicsr.evaluation.protocol write-row --results $out"; continue; fi
    "$py" -m despike_basicsr.evaluation.protocol write-row --results "$out" --row "$row" --times "$times" \
      --times-row "$label" --benchmark "$out/rows/.work/$row/benchmark.json" ${weights:+--weights "$weights"}
  done
}

# The front-end stages that cascades load: kept in half precision in $results/front_ends/ (commit it) once trained, so
# that a fresh clone can train or resume their cascades (protocol restore puts them back).
keep_stage() {  # row options
  case $1 in rsir|spk2imgnet) ;; *) return 0 ;; esac
  local weights; weights=$(weights_of "$2")
  if [ $dry = 1 ]; then
    echo "  $py -m despike_basicsr.evaluation.protocol keep-front-end --weights $weights"; return 0
  fi
  [ -f "$weights" ] && marked "$2" || return 0
  "$py" -m despike_basicsr.evaluation.protocol keep-front-end --results "$results" --weights "$weights"
}

# A scored row is never trained again: its committed training state goes (commit the removal with the row).
drop_state() {  # row options
  [ -f "$results/rows/$1.json" ] && [ -d "$results/state" ] || return 0
  local name; name=$(option_name "$2")
  [ -d "$results/state/$name" ] || return 0
  if [ $dry = 1 ]; then echo "  $py -m despike_basicsr.evaluation.protocol drop-state --name $name"; return 0; fi
  "$py" -m despike_basicsr.evaluation.protocol drop-state --results "$results" --name "$name"
}

settle_row() { keep_stage "$@"; drop_state "$@"; }  # a scored row: its front end kept, its state dropped

assemble() {  # name rows...
  local name=$1; shift
  local legacy=()
  [ -f "$results/val4/benchmark.json" ] && legacy=(--legacy "$results/val4/benchmark.json")
  run "$py" -m despike_basicsr.evaluation.protocol assemble --results "$results" --name "$name" "${legacy[@]}" \
    --rows "$@"
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
  prepare train 0 $data/train.lmdb $eta --scoring-holdout exclude
  prepare scoring 1 $data/scoring.lmdb $eta
  [ $dry = 1 ] || mkdir -p $results/rows
  times=$results/training_times.md
  [ -f $times ] || [ $dry = 1 ] || printf '%s\n\n%s %s\n\n%s\n%s\n' \
    "# DPDD protocol ($level level): wall and CPU time of every run" \
    'CPU: user + system seconds of the process and its children (bash `time`); threads: OMP_NUM_THREADS.' \
    'A training that took several sittings has one line per run.' \
    '| row | step | options / output | wall (s) | CPU (s) | threads |' \
    '| --- | --- | --- | ---: | ---: | --- |' > $times

  # Rows in the order the issue asks for (front-end stages before the cascades that load them): at the bright level
  # the five ablations and the two RSIR cascades first; then DeSpike and the TFP/TFI cascades; then Spk2ImgNet's stage
  # and its two cascades. Benchmark name = options file.
  rows=(despike=train_despike)
  ablations=()
  if [ "$level" = bright ]; then
    for part in multi_temporal multi_scale fpn fusion physical_kernels; do
      ablations+=("despike_wo_$part=train_despike_wo_$part")
    done
  fi
  rows+=(rsir=train_rsir rsir_gkmnet=train_rsir_gkmnet rsir_nrknet=train_rsir_nrknet
         tfp_gkmnet=train_gkmnet_tfp tfp_nrknet=train_nrknet_tfp tfi_gkmnet=train_gkmnet_tfi tfi_nrknet=train_nrknet_tfi
         spk2imgnet=train_spk2imgnet spk2imgnet_gkmnet=train_spk2imgnet_gkmnet
         spk2imgnet_nrknet=train_spk2imgnet_nrknet)
  classical=("defocused=defocused:$root" tfp=tfp tfp191=tfp:191 tfi=tfi)
  if [ "$level" = bright ]; then
    rows+=(despike_small=train_despike_small tfp_nrknet_fpn=train_nrknet_tfp_fpn)
    classical+=(tfp191_fpn=tfp:191+fpn tfi_fpn=tfi+fpn)
  fi
  ordered=("${rows[0]}" "${ablations[@]}" "${rows[@]:1}")
  known=","; for entry in "${ordered[@]}"; do known+="${entry%%=*},"; done
  for row in ${only//,/ }; do
    [[ $known == *",$row,"* ]] || { echo "--rows: no row $row at the $level level (rows: ${known:1:-1})" >&2; exit 2; }
  done

  for entry in "${classical[@]}"; do score full "${entry%%=*}" "${entry#*=}"; done
  for method in tfp tfi; do score 64,32 $method $method; done
  stopped=0
  for entry in "${ordered[@]}"; do
    row=${entry%%=*}; options=$opts/${entry#*=}.yml
    weights=$(weights_of "$options")
    if [ -f "$results/rows/$row.json" ]; then
      label=$row
      if [ $short_windows = 1 ] && { [ -z "$only" ] || [[ $only == *",$row,"* ]]; } && \
         { [ ! -f "$results/short_64/rows/$row.json" ] || [ ! -f "$results/short_32/rows/$row.json" ]; }; then
        label="$row (again)"
        train "$row" "$options" "$label" || { stopped=1; break; }
      fi
      { marked "$options" || [ $dry = 1 ]; } && score 64,32 "$row" "$row:$options:$weights" "$weights" "$label"
      settle_row "$row" "$options"; continue
    fi
    [ -z "$only" ] || [[ $only == *",$row,"* ]] || continue
    train "$row" "$options" || { stopped=1; break; }
    marked "$options" || [ $dry = 1 ] || continue
    score full,64,32 "$row" "$row:$options:$weights" "$weights"
    settle_row "$row" "$options"
  done

  # The tables, from the committed row files: what is scored, still training, not started.
  table=(); for entry in "${classical[@]}"; do table+=("${entry%%=*}"); done
  for entry in "${rows[@]}"; do table+=("${entry%%=*}=$opts/${entry#*=}.yml"); done
  assemble benchmark "${table[@]}"
  if [ ${#ablations[@]} -gt 0 ]; then
    table=()
    for entry in despike=train_despike "${ablations[@]}"; do table+=("${entry%%=*}=$opts/${entry#*=}.yml"); done
    assemble ablations "${table[@]}"
  fi
  # The short-window tables: TFP, TFI and every trained row, ablations included (rows without a file say why)
  for frames in 64 32; do
    table=(tfp tfi); for entry in "${ordered[@]}"; do table+=("${entry%%=*}"); done
    run "$py" -m despike_basicsr.evaluation.protocol assemble --results "$results/short_$frames" --name benchmark \
      --full-results "$results" --rows "${table[@]}"
  done
  if [ $stopped = 1 ]; then
    say "stopped by --train-limit: commit $results/rows, $results/state and the tables"; exit 0
  fi
done
