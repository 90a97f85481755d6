"""DeSpike for BasicSR: sharp images from defocused spike-camera streams.

Importing the package first applies :mod:`despike_basicsr.compat` (so basicsr 1.4.2 imports and runs on current
torch/torchvision and on CPUs), then imports archs, data, losses, metrics and models so that BasicSR's registries hold
every class this plugin provides. The physics in :mod:`despike_basicsr.spike` needs none of that.
"""
from despike_basicsr import compat  # noqa: F401  (must run before anything imports basicsr.data)
from despike_basicsr import archs, data, losses, metrics, models  # noqa: F401,E402
from despike_basicsr.version import __version__  # noqa: F401,E402
