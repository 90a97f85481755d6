#!/usr/bin/env bash
# Installs (scripts/install.sh) and runs the whole test suite, slow end-to-end tests included.
# Extra arguments go to pytest, e.g. `bash scripts/run_tests.sh -m "not slow"` for the quick part only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
venv=${DESPIKE_VENV:-.venv}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"
