#!/usr/bin/env bash
# Creates a virtual environment (.venv, or $DESPIKE_VENV) and installs despike_basicsr with everything it needs.
#
# Order matters (docs/install.md): a torch/torchvision pair from requirements/torch.txt first (PyPI's torchvision
# cannot load on a CPU-only local torch build), then basicsr 1.4.2 without build isolation (its setup imports torch;
# isolation would download a second torch), then this package in editable mode with the test and onnx extras
# (onnx + onnxruntime: despike-export and its parity test).
# Re-running is cheap: a stamp records the hash of the requirement files and setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DESPIKE_VENV:-.venv}
python=${PYTHON:-python3}

stamp="$venv/.despike-install-stamp"
want=$(cat requirements/*.txt setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && "$venv/bin/python" -c "import despike_basicsr; despike_basicsr.register()" 2>/dev/null; then
  echo "[install] $venv is up to date"
  exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip setuptools wheel
echo "[install] torch/torchvision pair (first time: a few GB, a few minutes)"
"${pip[@]}" install -q -r requirements/torch.txt
"$venv/bin/python" -c "import torch, torchvision; from torchvision.ops import nms
print('[install] torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "[install] basicsr 1.4.2 (no build isolation) and this package"
"${pip[@]}" install -q --no-build-isolation basicsr==1.4.2
"${pip[@]}" install -q --no-build-isolation -e ".[test,onnx]"
"$venv/bin/python" -c "import despike_basicsr, torchvision; despike_basicsr.register()
print('[install] despike_basicsr', despike_basicsr.__version__, 'ready')"
echo "$want" > "$stamp"
