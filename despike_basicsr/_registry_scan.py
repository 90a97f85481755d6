"""Imports every registered-class module of a subpackage, as BasicSR's own subpackages do.

BasicSR fills its registries (ARCH_REGISTRY, DATASET_REGISTRY, ...) as a side effect of importing the modules that
define the classes. Each of our subpackages calls :func:`import_modules` with its file suffix, so adding a
``foo_arch.py`` file is all it takes to make ``type: Foo`` usable from an options file.
"""
import importlib
from os import path as osp
from typing import List

from basicsr.utils import scandir


def import_modules(package_name: str, package_file: str, suffix: str) -> List[object]:
    """Import all modules named ``*{suffix}.py`` that sit next to ``package_file``.

    Args:
        package_name: Dotted name of the subpackage, e.g. ``'despike_basicsr.archs'``.
        package_file: ``__file__`` of that subpackage's ``__init__.py``.
        suffix: File-name suffix without ``.py``, e.g. ``'_arch'``.

    Returns:
        The imported module objects, sorted by file name so the import order is stable.
    """
    folder = osp.dirname(osp.abspath(package_file))
    names = sorted(osp.splitext(osp.basename(v))[0] for v in scandir(folder) if v.endswith(f'{suffix}.py'))
    return [importlib.import_module(f'{package_name}.{name}') for name in names]
