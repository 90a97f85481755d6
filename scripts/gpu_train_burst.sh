#!/usr/bin/env bash
# A GPU burst of the current campaign (default options/train_despike_ssim_heavy_harm.yml, the shipped phase of issue 28;
# --opt for another): at most 8 minutes of training at GPU batch size from the best
# committed weights; the checkpoint lands in OUT_DIR (despike_basicsr/training/gpu_burst.py says what it writes).
#
#   bash scripts/gpu_train_burst.sh OUT_DIR [MINUTES]
#   bash scripts/gpu_train_burst.sh OUT_DIR 7 --widen 2   # a twice-wider network that starts as the shipped one
#
# On a machine without this project installed, wheels of basicsr, lmdb, lpips and their missing needs in .whl/ are
# installed to /tmp/site first (docs/pretrained.md, "GPU burst", lists them). Then, back on the CPU machine:
#   python scripts/evaluate_heldout.py --weights OUT_DIR/net_g_burst.pth
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu_train_burst.sh OUT_DIR [MINUTES]}
minutes=${2:-7}
py=python3
if [ -x .venv/bin/python ]; then
  py=.venv/bin/python
elif [ -d .whl ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
PYTHONUNBUFFERED=1 "$py" -m despike_basicsr.training.gpu_burst --out "$out" --minutes "$minutes" "${@:3}"
