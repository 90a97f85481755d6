#!/usr/bin/env bash
# The main job end to end on the built-in default, on a CPU, in about ten minutes:
#   install → generate demo scenes and their defocused spike streams → train a small DeSpike →
#   reconstruct the held-out streams (TFP, TFI, the fresh DeSpike and the shipped pretrained one)
#   → results/quickstart/{benchmark.png, benchmark.md, benchmark.json}
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
py=${DESPIKE_VENV:-.venv}/bin/python

if [ -d datasets/demo/demo_train.lmdb ] && [ -d datasets/demo/demo_val.lmdb ]; then
  echo "[quickstart] using the existing demo data set in datasets/demo (delete it to regenerate)"
else
  echo "[quickstart] generating the demo data set"
  "$py" scripts/make_demo_dataset.py --out datasets/demo
fi

echo "[quickstart] training DeSpike on the CPU (options/train_despike_demo.yml)"
"$py" despike_basicsr/train.py -opt options/train_despike_demo.yml

name=$("$py" -c "import yaml; print(yaml.safe_load(open('options/train_despike_demo.yml'))['name'])")
weights=experiments/$name/models/net_g_latest.pth
echo "[quickstart] reconstructing the held-out streams with TFP, TFI, DeSpike ($weights) and the shipped model"
"$py" scripts/benchmark.py --lmdb datasets/demo/demo_val.lmdb --out-dir results/quickstart --device cpu \
  --methods tfp tfp:191 tfi "despike:options/test_despike_demo.yml:$weights" \
  "despike_pretrained:options/test_despike_general.yml:despike_basicsr/weights/despike_general.pth"
echo "[quickstart] done: results/quickstart/benchmark.png and results/quickstart/benchmark.md"
cat results/quickstart/benchmark.md
