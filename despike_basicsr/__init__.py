"""DeSpike for BasicSR: sharp images from defocused spike-camera streams.

Importing the package is cheap: it loads neither basicsr nor torch, so the physics commands and
:mod:`despike_basicsr.spike` start fast. The BasicSR side is switched on by one call::

    import despike_basicsr
    despike_basicsr.register()   # compat patches, then archs, data, losses, metrics and models fill the registries

after which ``basicsr.archs.build_network``, ``basicsr.models.build_model``, ``basicsr.data.build_dataset``,
``basicsr.losses.build_loss`` and ``basicsr.metrics.calculate_metric`` find every class this plugin provides. The
entries (``despike_basicsr/train.py``, ``test.py``, ``despike-infer``), the options checker, the reconstructor API and
the tests' ``conftest.py`` call it; importing any registered subpackage (``despike_basicsr.archs``, ...) applies the
compat patches itself, since those modules import basicsr. See docs/architecture.md.
"""
from despike_basicsr.version import __version__

__all__ = ['__version__', 'register']

#: The subpackages whose modules register classes with BasicSR (each scans its ``*_arch.py``, ``*_dataset.py``, ...).
REGISTERED_SUBPACKAGES = ('archs', 'data', 'losses', 'metrics', 'models')


def register() -> None:
    """Make every class of this plugin known to BasicSR's registries. Idempotent; returns quickly after the first call.

    Applies :func:`despike_basicsr.compat.apply` (basicsr 1.4.2 must be adapted before ``basicsr.data`` loads), then
    imports :data:`REGISTERED_SUBPACKAGES`, whose modules register their classes as a side effect (BasicSR's own
    convention).
    """
    import importlib

    from despike_basicsr import compat
    compat.apply()
    for name in REGISTERED_SUBPACKAGES:
        importlib.import_module(f'{__name__}.{name}')
