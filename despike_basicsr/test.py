"""Test (evaluate) with BasicSR's own pipeline and this plugin's registries.

Usage::

    python despike_basicsr/test.py -opt options/test_despike_demo.yml
    python -m despike_basicsr.test -opt options/test_despike_demo.yml
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
    """Entry point of ``despike-test`` and of this file; arguments are BasicSR's (``-opt``, ``--launcher``,
    ``--force_yml``)."""
    run_pipeline('test', argv)


if __name__ == '__main__':
    main()
