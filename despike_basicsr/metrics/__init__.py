"""Registered metrics of despike_basicsr; importing this package fills BasicSR's registry (every `*_metric.py`)."""
from despike_basicsr._registry_scan import import_modules

_modules = import_modules(__name__, __file__, '_metric')
