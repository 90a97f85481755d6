"""One construction of the LPIPS (AlexNet) network for the LPIPS loss and the LPIPS metric.

LPIPS needs two sets of weights:

- the AlexNet ImageNet backbone, which torchvision downloads at run time to
  ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` (``~/.cache/torch`` by default);
- the LPIPS linear layers, shipped inside the ``lpips`` pip package (``lpips/weights/v0.1/alex.pth``).

Without internet the first is missing: :func:`build_lpips_net` then raises :class:`LPIPSWeightsError` naming the file
and how to provide it. ``pretrained=False`` builds a randomly initialised (seeded) backbone instead, for tests only.
"""
import os
import warnings
from typing import Dict, Optional

import lpips
import torch
from torch import Tensor

from despike_basicsr.errors import DespikeUserError

ALEXNET_URL = 'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth'
MIN_LPIPS_SIZE = 31  # smaller inputs vanish inside AlexNet's second max-pool


class LPIPSWeightsError(DespikeUserError, FileNotFoundError):
    """LPIPS weights are not on this machine and could not be downloaded."""


def alexnet_weights_path() -> str:
    """Where torchvision keeps (and looks for) the AlexNet ImageNet weights."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(ALEXNET_URL))


def lpips_linear_weights_path(version: str = '0.1') -> str:
    """The LPIPS linear-layer weights shipped inside the lpips package."""
    return os.path.join(os.path.dirname(os.path.abspath(lpips.__file__)), 'weights', f'v{version}', 'alex.pth')


def _missing_backbone_message(path: str, reason: str) -> str:
    return (f'LPIPS needs the AlexNet ImageNet weights file {os.path.basename(ALEXNET_URL)}: {reason}. '
            f'Download {ALEXNET_URL} on a machine with internet and copy it to {path} (or point TORCH_HOME at a '
            f'folder holding hub/checkpoints/{os.path.basename(ALEXNET_URL)}, or pass backbone_path). For tests only, '
            f'pretrained: false uses a random backbone.')


def load_alexnet_state(backbone_path: Optional[str] = None) -> Dict[str, Tensor]:
    """AlexNet ImageNet weights from ``backbone_path``, torchvision's cache, or a download (in that order).

    Raises:
        LPIPSWeightsError: The file is missing and the download failed (or ``backbone_path`` does not exist).
    """
    if backbone_path is not None:
        if not os.path.isfile(backbone_path):
            raise LPIPSWeightsError(_missing_backbone_message(backbone_path, f'{backbone_path} does not exist'))
        return torch.load(backbone_path, map_location='cpu', weights_only=True)
    path = alexnet_weights_path()
    if os.path.isfile(path):
        return torch.load(path, map_location='cpu', weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(ALEXNET_URL, map_location='cpu', progress=False, check_hash=True)
    except Exception as err:  # no internet, proxy, hash mismatch...: all mean "weights unavailable"
        raise LPIPSWeightsError(_missing_backbone_message(path, f'not found, and the download failed ({err})')) from err


def build_lpips_net(pretrained: bool = True, backbone_path: Optional[str] = None, seed: int = 0) -> lpips.LPIPS:
    """The LPIPS network (AlexNet, v0.1) in eval mode with every parameter frozen.

    Args:
        pretrained: True loads the AlexNet ImageNet backbone (see :func:`load_alexnet_state`); False keeps a random
            backbone drawn with ``seed`` (tests only: its distances are not LPIPS).
        backbone_path: Explicit AlexNet weights file (torchvision's ``alexnet-owt-7be5be79.pth``).
        seed: Seed of the random initialisation (does not disturb the global random state).

    Raises:
        LPIPSWeightsError: Weights are needed and missing.
    """
    linear_path = lpips_linear_weights_path()
    if not os.path.isfile(linear_path):
        raise LPIPSWeightsError(f'LPIPS linear-layer weights {linear_path} are missing: reinstall the lpips package '
                                f'(pip install --force-reinstall lpips)')
    alexnet_state = load_alexnet_state(backbone_path) if pretrained else None
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torchvision's deprecation notice for lpips's `pretrained=` call
        torch.manual_seed(seed)
        net = lpips.LPIPS(pretrained=False, net='alex', pnet_rand=True, verbose=False)
    lin_state = torch.load(linear_path, map_location='cpu', weights_only=True)
    net.load_state_dict(lin_state, strict=False)  # only the lin* layers are in this file
    if alexnet_state is not None:
        for slice_module in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
            for index, layer in slice_module.named_children():
                prefix = f'features.{index}.'
                layer_state = {k[len(prefix):]: v for k, v in alexnet_state.items() if k.startswith(prefix)}
                if list(layer.parameters()):  # convolutions; ReLU / max-pool hold nothing
                    layer.load_state_dict(layer_state)
    net.eval()
    net.requires_grad_(False)
    return net


def lpips_distance(net: lpips.LPIPS, img: Tensor, img2: Tensor) -> Tensor:
    """LPIPS between two batches in [0, 1], ``(B, 1 or 3, H, W)`` each; single channel is repeated to RGB.

    Inputs are scaled to [−1, 1] as LPIPS expects. Returns ``(B,)`` distances.
    """
    if img.shape != img2.shape:
        raise ValueError(f'LPIPS: both images must have the same shape, got {tuple(img.shape)} and '
                         f'{tuple(img2.shape)}')
    if img.dim() != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f'LPIPS expects (B, 1 or 3, H, W) tensors, got shape {tuple(img.shape)}')
    if min(img.shape[-2:]) < MIN_LPIPS_SIZE:
        raise ValueError(f'LPIPS (AlexNet) needs images of at least {MIN_LPIPS_SIZE}×{MIN_LPIPS_SIZE} pixels, got '
                         f'{img.shape[-2]}×{img.shape[-1]}')
    if img.shape[1] == 1:
        img, img2 = img.repeat(1, 3, 1, 1), img2.repeat(1, 3, 1, 1)
    return net(img * 2 - 1, img2 * 2 - 1).flatten()
