"""GKMNet (Quan, Wu, Ji, NeurIPS 2021): Gaussian kernel mixture network for single-image defocus deblurring.

Written from the paper's description (no public code copied):

* Blur model (GKM): the defocus kernel at pixel p is a mixture of a fixed bank of isotropic Gaussians,
  ``k_p = sum_i beta_i(p) g_{sigma_i}`` with ``sigma_i = 0.25 i`` (i = 1..21) plus the identity (sigma_0 = 0).
* Deblurring unrolls the fixed-point iteration of ``y = K x``, ``x <- x + alpha (y - K x)``, one step per scale,
  scale-recurrent over 1/4, 1/2 and 1: the estimate of the previous scale, upsampled, starts the next step.
* The mixing coefficients beta (and the step alpha) come from one encoder-decoder shared by all scales, whose
  ConvLSTM bottleneck carries its state from scale to scale (the scale-recurrent attention module).

``forward(x)`` returns the three estimates from coarse to fine; the last one is full resolution.
"""
import math
from typing import List, Optional, Tuple

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from despike_basicsr.archs.arch_util import pad_to_multiple, upsample_to
from despike_basicsr.archs.baseline_blocks import (ConvLSTMCell, check_image_batch, crop_outputs, image_pyramid,
                                                   pixel_mixture, res_stage, separable_filter_bank)

NUM_SCALES = 3


def gaussian_bank_1d(sigmas: List[float]) -> Tensor:
    """One-dimensional Gaussians ``g_sigma(t) ∝ exp(-t^2 / (2 sigma^2))`` on a common support of radius ceil(3 max σ).

    The identity (a delta, sigma = 0) is prepended, so row 0 leaves an image unchanged. Every row sums to 1.

    Returns:
        ``(len(sigmas) + 1, 2r + 1)`` float32 kernels.
    """
    radius = math.ceil(3 * max(sigmas))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    rows = [(taps == 0).double()]
    rows += [torch.exp(-taps**2 / (2 * sigma**2)) for sigma in sigmas]
    bank = torch.stack(rows)
    return (bank / bank.sum(dim=1, keepdim=True)).float()


def gaussian_mixture_blur(x: Tensor, mixture: Tensor, bank_1d: Tensor) -> Tensor:
    """GKM blur: ``(K x)(p) = sum_{i=0}^{21} beta_i(p) (g_{sigma_i} * x)(p)``, sigma_0 = 0 the identity.

    Args:
        x: ``(B, C, H, W)`` image.
        mixture: ``(B, 22, H, W)`` per-pixel mixing coefficients beta (non-negative, summing to 1).
        bank_1d: ``(22, K)`` separable Gaussian bank from :func:`gaussian_bank_1d`.
    """
    return pixel_mixture(separable_filter_bank(x, bank_1d), mixture)


def gkm_fixed_point_step(blurred: Tensor, estimate: Tensor, mixture: Tensor, step: Tensor, bank_1d: Tensor) -> Tensor:
    """One unrolled fixed-point step of ``y = K x``: ``x_{t+1} = x_t + alpha (y - K x_t)``.

    Args:
        blurred: The observation y at this scale, ``(B, C, H, W)``.
        estimate: Current estimate x_t (the previous scale's output, upsampled), ``(B, C, H, W)``.
        mixture: Per-pixel GKM coefficients beta, ``(B, 22, H, W)``.
        step: Per-pixel step size alpha >= 0, ``(B, 1, H, W)``.
        bank_1d: The Gaussian bank.
    """
    return estimate + step * (blurred - gaussian_mixture_blur(estimate, mixture, bank_1d))


class MixtureEstimator(nn.Module):
    """Three-level encoder-decoder with a ConvLSTM bottleneck; predicts GKM coefficients and the step size.

    The same weights serve every scale; the ConvLSTM state is upsampled from one scale to the next.
    """

    def __init__(self, in_channels: int, width: int, num_blocks: int, num_kernels: int) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.head = nn.Conv2d(2 * in_channels, w1, 5, padding=2)
        self.enc1 = res_stage(w1, num_blocks)
        self.down1 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.enc2 = res_stage(w2, num_blocks)
        self.down2 = nn.Conv2d(w2, w3, 3, stride=2, padding=1)
        self.enc3 = res_stage(w3, num_blocks)
        self.recurrent = ConvLSTMCell(w3, w3)
        self.dec3 = res_stage(w3, num_blocks)
        self.up2 = nn.ConvTranspose2d(w3, w2, 4, stride=2, padding=1)
        self.dec2 = res_stage(w2, num_blocks)
        self.up1 = nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1)
        self.dec1 = res_stage(w1, num_blocks)
        self.tail = nn.Conv2d(w1, num_kernels + 1, 3, padding=1)

    def forward(self, blurred: Tensor, estimate: Tensor,
                state: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor]]:
        """Return ``(mixture (B, N, H, W), step (B, 1, H, W), new ConvLSTM state)``; H, W divisible by 4."""
        f1 = self.enc1(F.relu(self.head(torch.cat([blurred, estimate], dim=1)), inplace=True))
        f2 = self.enc2(F.relu(self.down1(f1), inplace=True))
        f3 = self.enc3(F.relu(self.down2(f2), inplace=True))
        if state is not None:  # carry the coarser scale's memory to this scale's bottleneck size
            state = tuple(upsample_to(s, f3.shape[-2:]) for s in state)
        hidden, state = self.recurrent(f3, state)
        d2 = self.dec2(F.relu(self.up2(self.dec3(hidden)), inplace=True) + f2)
        d1 = self.dec1(F.relu(self.up1(d2), inplace=True) + f1)
        logits = self.tail(d1)
        mixture = torch.softmax(logits[:, :-1], dim=1)
        step = F.softplus(logits[:, -1:] + 1.0)  # starts near 1.3: a plain fixed-point step
        return mixture, step, state


@ARCH_REGISTRY.register()
class GKMNet(nn.Module):
    """Gaussian kernel mixture network, scale-recurrent over 1/4, 1/2, 1.

    Args:
        in_channels: Image channels (1 for spike reconstructions, 3 for RGB).
        width: Channels of the estimator's first level (levels use width, 2 width, 4 width). The default gives about
            1.41 M parameters at 3 channels, as published.
        num_blocks: Residual blocks per encoder/decoder level.
        num_gaussians: Gaussians in the fixed bank, sigma_i = sigma_step * i.
        sigma_step: Spacing of the bank's standard deviations in pixels.
    """

    def __init__(self, in_channels: int = 3, width: int = 22, num_blocks: int = 2, num_gaussians: int = 21,
                 sigma_step: float = 0.25) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f'GKMNet needs in_channels >= 1, found {in_channels}')
        self.in_channels = in_channels
        self.sigmas = [sigma_step * i for i in range(1, num_gaussians + 1)]
        # Fixed by design (not learned); kept out of the state dict so checkpoints hold only trained weights.
        self.register_buffer('bank_1d', gaussian_bank_1d(self.sigmas), persistent=False)
        self.estimator = MixtureEstimator(in_channels, width, num_blocks, num_gaussians + 1)

    def forward(self, x: Tensor) -> List[Tensor]:
        """Deblur ``x`` ``(B, C, H, W)``; returns ``[1/4, 1/2, full]`` resolution estimates (coarse to fine)."""
        check_image_batch(x, self.in_channels, 'GKMNet')
        # Pyramid levels must halve twice and each level's encoder halves twice more.
        size = tuple(x.shape[-2:])
        padded = pad_to_multiple(x, 4)
        outputs, state = [], None
        for level, blurred in enumerate(image_pyramid(padded, NUM_SCALES)):
            estimate = blurred if level == 0 else upsample_to(outputs[-1], blurred.shape[-2:])
            level_size = blurred.shape[-2:]
            level_in = pad_to_multiple(torch.cat([blurred, estimate], dim=1), 4)
            mixture, step, state = self.estimator(*level_in.split(self.in_channels, dim=1), state)
            mixture, step = mixture[..., :level_size[0], :level_size[1]], step[..., :level_size[0], :level_size[1]]
            outputs.append(gkm_fixed_point_step(blurred, estimate, mixture, step, self.bank_1d))
        return crop_outputs(outputs, size, factors=[4, 2, 1])
