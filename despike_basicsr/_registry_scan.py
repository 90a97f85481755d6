"""Imports every registered-class module of a subpackage, as BasicSR's own subpackages do.

BasicSR fills its registries (ARCH_REGISTRY, DATASET_REGISTRY, ...) as a side effect of importing the modules that
define the classes. Each of our registered subpackages (archs, data, losses, metrics, models) calls
:func:`import_modules` with its file suffix, so adding a ``foo_arch.py`` file is all it takes to make ``type: Foo``
usable from an options file. Those modules import basicsr, so the compat patches are applied first.
"""
import importlib
import os
from os import path as osp
from typing import List


def import_modules(package_name: str, package_file: str, suffix: str) -> List[object]:
    """Apply :func:`despike_basicsr.compat.apply`, then import every ``*{suffix}.py`` module beside ``package_file``.

    Args:
        package_name: Dotted name of the subpackage, e.g. ``'despike_basicsr.archs'``.
        package_file: ``__file__`` of that subpackage's ``__init__.py``.
        suffix: File-name suffix without ``.py``, e.g. ``'_arch'``.

    Returns:
        The imported module objects, sorted by file name so the import order is stable.
    """
    from despike_basicsr import compat
    compat.apply()
    folder = osp.dirname(osp.abspath(package_file))
    names = sorted(osp.splitext(name)[0] for name in os.listdir(folder) if name.endswith(f'{suffix}.py'))
    return [importlib.import_module(f'{package_name}.{name}') for name in names]
