"""Train with BasicSR's own pipeline and this plugin's registries.

Usage::

    python despike_basicsr/train.py -opt options/train_despike_demo.yml
    python -m despike_basicsr.train -opt options/train_despike_demo.yml --auto_resume
    torchrun --nproc_per_node=2 despike_basicsr/train.py -opt X.yml --launcher pytorch
"""
import sys
from os import path as osp
from typing import List, Optional

if __name__ == '__main__' and not __package__:
    # Run as a file, Python put this package's own folder first on sys.path, where its subpackages (data, models, ...)
    # would shadow top-level modules of those names; the repository root goes there instead.
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

from despike_basicsr.training.entry import run_pipeline  # noqa: E402


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``despike-train`` and of this file; arguments are BasicSR's (``-opt``, ``--launcher``,
    ``--auto_resume``, ``--debug``, ``--force_yml``)."""
    run_pipeline('train', argv)


if __name__ == '__main__':
    main()
