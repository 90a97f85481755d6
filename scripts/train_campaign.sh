#!/usr/bin/env bash
# The deblurring campaign (options/train_despike_deblur.yml), one thread, in the background, resumable across sittings.
#
#   bash scripts/train_campaign.sh [OPTIONS_FILE]      # starts or resumes; log: experiments/campaign_<name>.log
#   python scripts/training_snapshot.py [OPTIONS_FILE] # copies the newest state into results/training/state (commit it)
#
# A fresh checkout has no experiments/ folder: the committed state (weights, EMA, optimiser, scheduler, iteration) in
# results/training/state/<name>/ is put back where BasicSR's --auto_resume looks for it, so the run continues where the
# last sitting stopped. An existing experiments/<name> with a newer state is left as it is. Stop it with
# `kill -INT <pid>` (not -9): the last finished iteration is saved (docs/reliability.md, "Clean stop").
set -euo pipefail
cd "$(dirname "$0")/.."
opt=${1:-options/train_despike_deblur.yml}
bash scripts/install.sh >/dev/null
py=.venv/bin/python
name=$("$py" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$opt")
"$py" -m despike_basicsr.training.campaign restore --name "$name"
mkdir -p experiments
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nohup "$py" despike_basicsr/train.py -opt "$opt" --auto_resume >>"experiments/campaign_$name.log" 2>&1 &
echo "[campaign] $name running in the background (pid $!); log: experiments/campaign_$name.log"
