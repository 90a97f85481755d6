"""Layout helpers shared by every network (DeSpikeNet and the baselines): one name and one signature each."""
import math
from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Replicate-pad the last two dimensions of ``x`` (bottom and right) up to multiples of ``multiple``.

    Replicate (not reflect) padding works for any size, even when the pad is larger than the image. ``x`` is
    ``(C, H, W)`` or ``(B, C, H, W)``; callers that crop back keep ``x.shape[-2:]`` before padding.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    squeeze = x.dim() == 3
    x = x[None] if squeeze else x
    x = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
    return x[0] if squeeze else x


def upsample_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of ``(B, C, h, w)`` to ``size`` ``(H, W)`` (``other.shape[-2:]`` to match another tensor)."""
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


def gaussian_taps(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian of σ pixels over ±max(1, ⌈3σ⌉) taps (float32)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma)**2)
    return kernel / kernel.sum()


def gaussian_smooth(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of σ pixels over the last two dimensions of ``x`` (any leading shape): separable, 3σ taps,
    reflected at the border (replicated along a side shorter than the kernel's radius), so a constant stays one."""
    kernel = gaussian_taps(sigma).to(x)
    radius = kernel.numel() // 2
    out = x.reshape(-1, 1, *x.shape[-2:])
    for dim in (2, 3):
        pad = [0, 0, radius, radius] if dim == 2 else [radius, radius, 0, 0]
        mode = 'reflect' if out.shape[dim] > radius else 'replicate'
        out = F.conv2d(F.pad(out, pad, mode=mode), kernel.reshape((1, 1, -1, 1) if dim == 2 else (1, 1, 1, -1)))
    return out.reshape(x.shape)
