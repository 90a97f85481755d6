"""NRKNet (Quan, Wu, Ji, CVPR 2023): Neumann network with recursive kernels for single-image defocus deblurring.

Written from the paper's description (no public code copied):

* Recursive kernel representation (RKR): atom kernels are learnable, symmetric, positive 3-tap kernels
  ``k_n = [a_n, 1 - 2 a_n, a_n]`` (separable in x and y); kernel n is the recursion ``K_n = k_n * K_{n-1}``
  (K_0 = identity, n = 1..21), so each larger kernel reuses the smaller one.
* Blur operator: ``(A x)(p) = sum_n w_n(p) (K_n * x)(p)`` with per-pixel weights w predicted by the network.
* Inversion by a truncated Neumann series ``A^{-1} y ≈ sum_{j=0}^{J} (I - A)^j y``, spread over three scales:
  the partial sum of a coarser scale, upsampled, starts the series at the next scale.
* Backbone: a MIMO-UNet-like encoder-decoder (64/128/256 channels, inputs and outputs at 1, 1/2, 1/4 resolution,
  cross-scale feature fusion) that predicts the weights w and a residual correction at each scale.

``forward(x)`` returns the three estimates from coarse to fine; the last one is full resolution.
"""
import math
from typing import List, Sequence

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from despike_basicsr.archs.arch_util import pad_to_multiple, upsample_to
from despike_basicsr.archs.baseline_blocks import (check_image_batch, crop_outputs, image_pyramid, pixel_mixture,
                                                   res_stage)


def atom_kernels(raw: Tensor) -> Tensor:
    """Positive, symmetric, normalised 3-tap atoms ``k_n = [a_n, 1 - 2 a_n, a_n]`` with ``a_n = sigmoid(raw_n) / 4``.

    Keeping ``a_n <= 1/4`` makes each atom's frequency response ``1 - 2 a_n + 2 a_n cos(w)`` non-negative, so the
    blur operator A has a spectrum in [0, 1] and the Neumann series below converges.

    Returns:
        ``(N, 3)`` kernels.
    """
    side = torch.sigmoid(raw) / 4
    return torch.stack([side, 1 - 2 * side, side], dim=1)


def symmetric_3tap(x: Tensor, side: Tensor, dim: int) -> Tensor:
    """Filter along ``dim`` with ``[a, 1 - 2a, a]``, borders replicated.

    Written with shifted slices: for one-channel images this is far faster on CPUs than a convolution call.
    """
    length = x.shape[dim]
    before = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, length - 1)], dim=dim)
    after = torch.cat([x.narrow(dim, 1, length - 1), x.narrow(dim, length - 1, 1)], dim=dim)
    return x + side * (before + after - 2 * x)


def recursive_kernel_stack(x: Tensor, atoms: Tensor) -> Tensor:
    """Apply the recursive kernels: ``B_0 = x``, ``B_n = k_n * B_{n-1} = (k_n * ... * k_1) * x`` (separable).

    Args:
        x: ``(B, C, H, W)`` image.
        atoms: ``(N, 3)`` atom kernels from :func:`atom_kernels`.

    Returns:
        ``(B, C, N + 1, H, W)``: x blurred by K_0 (identity), K_1, ..., K_N.
    """
    levels = [x]
    for side in atoms[:, 0]:
        levels.append(symmetric_3tap(symmetric_3tap(levels[-1], side, dim=-1), side, dim=-2))
    return torch.stack(levels, dim=2)


def rkr_blur(x: Tensor, weights: Tensor, atoms: Tensor) -> Tensor:
    """RKR blur operator: ``(A x)(p) = sum_{n=0}^{N} w_n(p) (K_n * x)(p)``, ``K_n = k_n * K_{n-1}``, K_0 = identity.

    Args:
        x: ``(B, C, H, W)`` image.
        weights: ``(B, N + 1, H, W)`` per-pixel weights (non-negative, summing to 1).
        atoms: ``(N, 3)`` atom kernels.
    """
    return pixel_mixture(recursive_kernel_stack(x, atoms), weights)


def neumann_series(blurred: Tensor, weights: Tensor, atoms: Tensor, num_terms: int, start: Tensor = None) -> Tensor:
    """Truncated Neumann series ``A^{-1} y ≈ sum_{j=0}^{J} (I - A)^j y``, evaluated by Horner's rule.

    ``S_0 = y``, ``S_j = y + (I - A) S_{j-1}`` gives ``S_J = sum_{j=0}^{J} (I - A)^j y``. A ``start`` other than y
    (the upsampled partial sum of a coarser scale) continues a series begun at that scale.

    Args:
        blurred: The observation y, ``(B, C, H, W)``.
        weights: Per-pixel RKR weights of A, ``(B, N + 1, H, W)``.
        atoms: ``(N, 3)`` atom kernels.
        num_terms: J, the number of ``(I - A)`` applications.
        start: S_0; defaults to y.
    """
    partial = blurred if start is None else start
    for _ in range(num_terms):
        partial = blurred + partial - rkr_blur(partial, weights, atoms)
    return partial


class FeatureFusion(nn.Module):
    """Cross-scale fusion: all encoder levels, resized to one scale, concatenated and mixed (MIMO-UNet's AFF)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.mix = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))

    def forward(self, features: Sequence[Tensor], like: Tensor) -> Tensor:
        size = like.shape[-2:]
        return self.mix(torch.cat([f if f.shape[-2:] == size else upsample_to(f, size) for f in features], dim=1))


class ShallowInput(nn.Module):
    """MIMO-UNet's shallow convolution module: features of a downscaled input image, fused into the encoder."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(in_channels, out_channels // 2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels // 2, out_channels, 1))
        self.merge = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, encoder_features: Tensor, image: Tensor) -> Tensor:
        image_features = self.embed(image)
        return encoder_features + self.merge(encoder_features * image_features)


@ARCH_REGISTRY.register()
class NRKNet(nn.Module):
    """Neumann network with recursive kernels, three scales, MIMO-UNet-like backbone.

    Args:
        in_channels: Image channels (1 for spike reconstructions, 3 for RGB).
        widths: Backbone channels at scales 1, 1/2, 1/4 (published: 64/128/256).
        num_blocks: Residual blocks per encoder and per decoder level at scales 1, 1/2, 1/4. The defaults give about
            6.09 M parameters at 3 channels, as published.
        num_kernels: Recursion depth N of the kernel representation (21 steps of 3-tap atoms).
        neumann_terms: Neumann terms J evaluated at scales 1/4, 1/2, 1.
    """

    def __init__(self,
                 in_channels: int = 3,
                 widths: Sequence[int] = (64, 128, 256),
                 num_blocks: Sequence[int] = (2, 2, 1),
                 num_kernels: int = 21,
                 neumann_terms: Sequence[int] = (2, 2, 2)) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f'NRKNet needs in_channels >= 1, found {in_channels}')
        if len(widths) != 3 or len(num_blocks) != 3 or len(neumann_terms) != 3:
            raise ValueError(f'NRKNet works on three scales: widths, num_blocks and neumann_terms need 3 entries, '
                             f'found widths={list(widths)}, num_blocks={list(num_blocks)}, '
                             f'neumann_terms={list(neumann_terms)}')
        self.in_channels = in_channels
        self.neumann_terms = [int(t) for t in neumann_terms]
        w1, w2, w3 = widths
        n1, n2, n3 = num_blocks
        # a_n starts at 0.2 for every atom: K_n then approximates a Gaussian of variance 0.4 n.
        self.atom_logits = nn.Parameter(torch.full((num_kernels, ), math.log(4.0)))

        self.head = nn.Conv2d(in_channels, w1, 3, padding=1)
        self.enc1 = res_stage(w1, n1)
        self.down1 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.shallow2 = ShallowInput(in_channels, w2)
        self.enc2 = res_stage(w2, n2)
        self.down2 = nn.Conv2d(w2, w3, 3, stride=2, padding=1)
        self.shallow3 = ShallowInput(in_channels, w3)
        self.enc3 = res_stage(w3, n3)

        self.fuse1 = FeatureFusion(w1 + w2 + w3, w1)
        self.fuse2 = FeatureFusion(w1 + w2 + w3, w2)
        self.dec3 = res_stage(w3, n3)
        self.up2 = nn.ConvTranspose2d(w3, w2, 4, stride=2, padding=1)
        self.merge2 = nn.Conv2d(2 * w2, w2, 1)
        self.dec2 = res_stage(w2, n2)
        self.up1 = nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1)
        self.merge1 = nn.Conv2d(2 * w1, w1, 1)
        self.dec1 = res_stage(w1, n1)
        # Each scale's head predicts the RKR weights (N + 1 logits) and a residual image correction.
        self.tails = nn.ModuleList([nn.Conv2d(w, num_kernels + 1 + in_channels, 3, padding=1) for w in (w3, w2, w1)])
        with torch.no_grad():  # start close to A = I (weight ~0.5 on K_0): the series then barely amplifies noise
            for tail in self.tails:
                tail.bias[0] += math.log(num_kernels)

    def _scale_output(self, level: int, features: Tensor, blurred: Tensor, start: Tensor) -> Tensor:
        """Neumann partial sum at one scale plus the learned correction."""
        logits = self.tails[level](features)
        weights = torch.softmax(logits[:, :-self.in_channels], dim=1)
        partial = neumann_series(blurred, weights, atom_kernels(self.atom_logits), self.neumann_terms[level], start)
        return partial + logits[:, -self.in_channels:]

    def forward(self, x: Tensor) -> List[Tensor]:
        """Deblur ``x`` ``(B, C, H, W)``; returns ``[1/4, 1/2, full]`` resolution estimates (coarse to fine)."""
        check_image_batch(x, self.in_channels, 'NRKNet')
        size = tuple(x.shape[-2:])
        padded = pad_to_multiple(x, 4)
        quarter, half, full = image_pyramid(padded, 3)

        e1 = self.enc1(F.relu(self.head(full), inplace=True))
        e2 = self.enc2(self.shallow2(F.relu(self.down1(e1), inplace=True), half))
        e3 = self.enc3(self.shallow3(F.relu(self.down2(e2), inplace=True), quarter))

        d3 = self.dec3(e3)
        out_quarter = self._scale_output(0, d3, quarter, None)
        skip2 = self.fuse2([e1, e2, e3], e2)
        d2 = self.dec2(self.merge2(torch.cat([F.relu(self.up2(d3), inplace=True), skip2], dim=1)))
        out_half = self._scale_output(1, d2, half, upsample_to(out_quarter, half.shape[-2:]))
        skip1 = self.fuse1([e1, e2, e3], e1)
        d1 = self.dec1(self.merge1(torch.cat([F.relu(self.up1(d2), inplace=True), skip1], dim=1)))
        out_full = self._scale_output(2, d1, full, upsample_to(out_half, full.shape[-2:]))
        return crop_outputs([out_quarter, out_half, out_full], size, factors=[4, 2, 1])
