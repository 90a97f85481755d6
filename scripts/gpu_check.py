#!/usr/bin/env python
"""GPU readiness check (the command line of :mod:`despike_basicsr.evaluation.gpu_check`,
where the pieces and sizes are described).

Example:
    python scripts/gpu_check.py --json gpu_check.json          # CUDA
    python scripts/gpu_check.py --device cpu --dry-run         # CPU, toy sizes
"""
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)  # run from a checkout without installing

from despike_basicsr.evaluation.gpu_check import main  # noqa: E402

if __name__ == '__main__':
    main()
