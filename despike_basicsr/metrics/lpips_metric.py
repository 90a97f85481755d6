"""LPIPS metric on BasicSR's convention: uint8 (or [0, 255] float) images, HWC BGR or HW grayscale."""
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from basicsr.metrics.metric_util import reorder_image
from basicsr.utils.registry import METRIC_REGISTRY

from despike_basicsr.losses.lpips_net import build_lpips_net, lpips_distance

_NETS: Dict[Tuple[bool, Optional[str], str], torch.nn.Module] = {}


def _cached_net(pretrained: bool, backbone_path: Optional[str], device: torch.device) -> torch.nn.Module:
    """One LPIPS network per (weights, device), built on first use (validation calls the metric once per image)."""
    key = (pretrained, backbone_path, str(device))
    if key not in _NETS:
        _NETS[key] = build_lpips_net(pretrained=pretrained, backbone_path=backbone_path).to(device)
    return _NETS[key]


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC BGR (or HW) in [0, 255] → ``(1, C, H, W)`` RGB float in [0, 1]."""
    img = img.astype(np.float32) / 255.0
    if img.shape[2] == 3:
        img = img[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


@METRIC_REGISTRY.register()
def calculate_lpips(img: np.ndarray,
                    img2: np.ndarray,
                    crop_border: int,
                    input_order: str = 'HWC',
                    pretrained: bool = True,
                    backbone_path: Optional[str] = None,
                    **kwargs) -> float:
    """LPIPS (AlexNet, v0.1; lower is better) between two images in [0, 255].

    Args:
        img: HWC (BGR, as BasicSR's ``tensor2img`` returns) or HW grayscale image.
        img2: The reference, same shape.
        crop_border: Pixels cropped from every border before the comparison.
        input_order: ``'HWC'`` or ``'CHW'``.
        pretrained: False uses a random backbone (tests only; not LPIPS).
        backbone_path: Explicit AlexNet weights file (see :mod:`despike_basicsr.losses.lpips_net`).

    Returns:
        The LPIPS distance.
    """
    if img.shape != img2.shape:
        raise ValueError(f'calculate_lpips: image shapes differ: {img.shape} and {img2.shape}')
    img, img2 = reorder_image(img, input_order=input_order), reorder_image(img2, input_order=input_order)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    net = _cached_net(pretrained, backbone_path, device)
    with torch.no_grad():
        return float(lpips_distance(net, _to_tensor(img).to(device), _to_tensor(img2).to(device))[0])
