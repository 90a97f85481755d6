"""The one place where basicsr 1.4.2 is adapted to current torch/torchvision/numpy and to machines without CUDA.

(Work in progress: filled in by the foundation issue.)
"""
import sys
import types


def _install_functional_tensor_alias() -> None:
    """basicsr <= 1.4.2: ``basicsr.data.degradations`` imports ``torchvision.transforms.functional_tensor``.

    torchvision 0.17 removed that private module; its one function basicsr uses, ``rgb_to_grayscale``, lives in
    ``torchvision.transforms.functional`` now. We register a stand-in module under the old name.
    """
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (older torchvision: nothing to do)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional
    shim = types.ModuleType(name)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[name] = shim


_install_functional_tensor_alias()
