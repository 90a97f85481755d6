"""torch for the physics modules, loaded only when a tensor is handed in.

The physics functions accept numpy arrays and torch tensors. A tensor can only exist once torch has been imported, so
telling the two apart needs no ``import torch``: the command-line tools, which work on numpy arrays, start without
loading torch (about a second), and the functions import it where they work on a tensor.
"""
import sys


def is_tensor(x) -> bool:
    """Whether ``x`` is a ``torch.Tensor``, without importing torch."""
    torch = sys.modules.get('torch')
    return torch is not None and isinstance(x, torch.Tensor)
