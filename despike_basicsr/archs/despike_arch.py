"""DeSpikeNet: a sharp image from a defocused spike stream (our reading of the CVPR 2026 DeSpike paper).

Pipeline, for each temporal scale i (windows shortest first, weights shared across i):

1. multi-temporal-scale integration: non-spiking IF neurons integrate the stream over a window T_i centred on the
   target frame, with the per-pixel FPN factor γ (:func:`integrate_windows`), normalised to a rate (SN,
   :func:`normalise_spike_count`) and lifted to features F_i; F_i is merged with the hidden features of scale i−1;
2. the physical discrete PSF prior: a bank of m kernels initialised as Gaussians gives candidates D_{i,j} = k_j * F_i
   (:func:`psf_candidates`);
3. attention fusion across the m candidates (each pixel/region picks its deconvolution strength);
4. multi-spatial-scale refinement over ``num_scales`` levels, coarsest first (:class:`RefinementLevel`).

``forward`` returns the final image, and with ``return_intermediates=True`` also ``grid[i][s]`` (temporal scale i,
spatial scale s, s = 0 the coarsest) for the hierarchical loss. See docs/despike.md for the design choices.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from despike_basicsr.archs.despike_blocks import (CandidateAttentionFusion, ConcatConvFusion, LearnedKernelBank,
                                                  PhysicalKernelBank, ResBlock, pad_to_multiple, upsample_to)

PAPER_WINDOWS = (64, 96, 128, 160, 192)


def centred_window_bounds(length: int, windows: Sequence[int]) -> List[Tuple[int, int]]:
    """Frame ranges ``[start, end)`` of windows centred on the target frame ``length // 2``, clipped to the stream.

    Args:
        length: Number of time steps T of the stream.
        windows: Window lengths |T_i|.

    Returns:
        One ``(start, end)`` pair per window.
    """
    centre = length // 2
    bounds = []
    for window in windows:
        start = centre - window // 2
        bounds.append((max(start, 0), min(start + window, length)))
    return bounds


def integrate_windows(spikes: Tensor, bounds: Sequence[Tuple[int, int]], gamma: Optional[Tensor] = None) -> Tensor:
    """Non-spiking IF neurons over each window: V(t) = V(t−1) + γ(x, y)·S(t), V(start) = 0.

    Without reset the membrane potential at the window's end is γ·Σ_{t∈T_i} S(t); all windows are read from one
    cumulative sum over time (no loop over steps).

    Args:
        spikes: ``(B, T, H, W)`` 0/1 stream.
        bounds: ``(start, end)`` frame range of every window.
        gamma: ``(B or 1, 1, H, W)`` FPN compensation factor γ = R_ref / R, or ``None`` for γ = 1.

    Returns:
        ``(B, N_t, H, W)`` membrane potentials V_i.
    """
    lo = min(start for start, _ in bounds)
    hi = max(end for _, end in bounds)
    counts = spikes[:, lo:hi].float().cumsum(1)
    counts = F.pad(counts, (0, 0, 0, 0, 1, 0))  # counts[:, t] = number of spikes in frames [lo, lo + t)
    potential = torch.stack([counts[:, end - lo] - counts[:, start - lo] for start, end in bounds], dim=1)
    return potential if gamma is None else potential * gamma


def normalise_spike_count(potential: Tensor, bounds: Sequence[Tuple[int, int]]) -> Tensor:
    """SN: the integrated potential as a firing rate, SN(V_i) = V_i / |T_i| (|T_i| the window's length after clipping).

    Makes windows of different lengths comparable, so one feature extractor serves all temporal scales.

    Args:
        potential: ``(B, N_t, H, W)`` from :func:`integrate_windows`.
        bounds: The same window ranges.

    Returns:
        ``(B, N_t, H, W)`` rates (in [0, 1] for γ = 1).
    """
    lengths = torch.tensor([end - start for start, end in bounds], dtype=potential.dtype, device=potential.device)
    return potential / lengths[None, :, None, None]


def psf_candidates(feat: Tensor, bank: nn.Module) -> Tensor:
    """Physical discrete PSF prior: D_{i,j} = k_j * F_i for every kernel k_j of the bank (depthwise).

    Args:
        feat: ``(B, C, H, W)`` features F_i (at any spatial scale).
        bank: :class:`PhysicalKernelBank` (Gaussian-initialised, shared over channels) or its ablation.

    Returns:
        ``(B, m, C, H, W)`` candidates, one per defocus level.
    """
    return bank(feat)


class RefinementLevel(nn.Module):
    """One level of the multi-spatial-scale iterative refinement.

    Args:
        num_feat: Feature channels C.
        num_kernels: m, candidates per feature map.
        num_blocks: Residual blocks in M.
        first: True for the coarsest level (nothing to upsample from).
        transformer_fusion: Attention fusion T (True) or the plain concat + conv ablation (False).
        num_heads: Attention heads.
        region_size: Attention token size in pixels (1 = per pixel).
    """

    def __init__(self, num_feat: int, num_kernels: int, num_blocks: int, first: bool, transformer_fusion: bool,
                 num_heads: int, region_size: int) -> None:
        super().__init__()
        self.first = first
        if not first:
            self.query_merge = nn.Conv2d(2 * num_feat, num_feat, 1)
            self.merge = nn.Conv2d(2 * num_feat, num_feat, 3, padding=1)
        if transformer_fusion:
            self.fusion = CandidateAttentionFusion(num_feat, num_heads, region_size)
        else:
            self.fusion = ConcatConvFusion(num_feat, num_kernels)
        self.body = nn.Sequential(*[ResBlock(num_feat) for _ in range(num_blocks)])
        self.head = nn.Conv2d(num_feat, 1, 3, padding=1)

    def forward(self,
                feat: Tensor,
                candidates: Tensor,
                prev_feat: Optional[Tensor] = None,
                prev_img: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Rec_j = M(T(F), Rec_{j−1}↑ ⊗ ∪_p k_p * F).

        The upsampled previous reconstruction Rec_{j−1}↑ is merged into the attention query, so it decides (⊗) how
        the candidates ∪_p k_p * F are weighted; M concatenates the fused features with Rec_{j−1}↑ and refines them.
        The image of this level is a residual on top of the upsampled previous image.

        Args:
            feat: ``(B, C, h, w)`` features F at this level.
            candidates: ``(B, m, C, h, w)`` = ∪_p k_p * F.
            prev_feat: Reconstruction features of the coarser level (``None`` at the coarsest).
            prev_img: Image of the coarser level (``None`` at the coarsest).

        Returns:
            ``(features, image)`` of this level, ``(B, C, h, w)`` and ``(B, 1, h, w)``.
        """
        size = feat.shape[-2:]
        if self.first:
            rec = self.fusion(feat, candidates)
        else:
            prev_up = upsample_to(prev_feat, size)
            query = self.query_merge(torch.cat([feat, prev_up], dim=1))
            rec = self.merge(torch.cat([self.fusion(query, candidates), prev_up], dim=1))
        rec = self.body(rec)
        img = self.head(rec)
        if prev_img is not None:
            img = img + upsample_to(prev_img, size)
        return rec, img


@ARCH_REGISTRY.register()
class DeSpikeNet(nn.Module):
    """DeSpike network: multi-temporal IF integration, Gaussian PSF kernel bank, attention fusion, multi-scale
    refinement. Input ``(B, T, H, W)`` spikes of any T ≥ the smallest window and any H, W; output ``(B, 1, H, W)``.

    Args:
        num_feat: Feature width C.
        windows: Integration window lengths |T_i| (frames), centred on the target frame ``T // 2``.
        num_kernels: m, kernels in the PSF bank.
        kernel_size: Odd side length of every kernel.
        sigma_range: (σ_min, σ_max) of the Gaussian initialisation, in pixels.
        num_scales: Spatial refinement levels (3 in the paper).
        num_blocks: Residual blocks per refinement level.
        num_heads: Attention heads (must divide ``num_feat``).
        region_size: Attention token size in pixels (1 = per-pixel tokens).
        multi_temporal: False keeps one window (``single_window``) — the "w/o multi-temporal scale" ablation.
        single_window: The window kept when ``multi_temporal`` is False; default the largest of ``windows``.
        multi_spatial: False uses one full-resolution level — the "w/o multi-spatial scale" ablation.
        fpn_compensation: False ignores γ — the "w/o FPN compensation" ablation.
        transformer_fusion: False fuses candidates by concat + conv — the "w/o transformer fusion" ablation.
        physical_kernels: False replaces the Gaussian bank with plain, randomly initialised depthwise convolutions —
            the "w/o physical kernels" ablation.
    """

    def __init__(self,
                 num_feat: int = 32,
                 windows: Sequence[int] = PAPER_WINDOWS,
                 num_kernels: int = 8,
                 kernel_size: int = 11,
                 sigma_range: Sequence[float] = (0.5, 3.0),
                 num_scales: int = 3,
                 num_blocks: int = 2,
                 num_heads: int = 2,
                 region_size: int = 1,
                 multi_temporal: bool = True,
                 single_window: Optional[int] = None,
                 multi_spatial: bool = True,
                 fpn_compensation: bool = True,
                 transformer_fusion: bool = True,
                 physical_kernels: bool = True) -> None:
        super().__init__()
        windows = [int(w) for w in windows]
        if not windows or min(windows) < 1:
            raise ValueError(f'windows must be a non-empty list of positive frame counts, got {windows}')
        if num_scales < 1:
            raise ValueError(f'num_scales must be >= 1, got {num_scales}')
        self.min_stream_len = min(windows)
        self.windows = sorted(windows) if multi_temporal else [int(single_window or max(windows))]
        self.num_scales = num_scales if multi_spatial else 1
        self.fpn_compensation = fpn_compensation

        self.lift = nn.Sequential(nn.Conv2d(1, num_feat, 3, padding=1), ResBlock(num_feat))
        if len(self.windows) > 1:
            self.temporal_merge = nn.Conv2d(2 * num_feat, num_feat, 1)
        if physical_kernels:
            self.bank = PhysicalKernelBank(num_kernels, kernel_size, sigma_range)
        else:
            self.bank = LearnedKernelBank(num_feat, num_kernels, kernel_size)
        self.levels = nn.ModuleList([
            RefinementLevel(num_feat, num_kernels, num_blocks, s == 0, transformer_fusion, num_heads, region_size)
            for s in range(self.num_scales)
        ])

    @property
    def frames_needed(self) -> int:
        """Frames around the target that the network reads (the longest window); more are ignored."""
        return max(self.windows)

    def window_bounds(self, length: int) -> List[Tuple[int, int]]:
        """The ``[start, end)`` frames each temporal scale integrates, for a stream of ``length`` steps."""
        return centred_window_bounds(length, self.windows)

    def _check_inputs(self, spikes: Tensor, gamma: Optional[Tensor]) -> None:
        if spikes.dim() != 4:
            raise ValueError(f'DeSpikeNet expects spikes shaped (B, T, H, W), got shape {tuple(spikes.shape)}')
        length = spikes.shape[1]
        if length < self.min_stream_len:
            raise ValueError(f'DeSpikeNet needs streams of at least {self.min_stream_len} time steps (its smallest '
                             f'window), got {length} steps')
        if gamma is not None:
            b, _, h, w = spikes.shape
            if gamma.dim() != 4 or gamma.shape[1] != 1 or gamma.shape[0] not in (1, b) or gamma.shape[-2:] != (h, w):
                raise ValueError(f'gamma must be shaped ({b} or 1, 1, {h}, {w}) to match spikes {tuple(spikes.shape)}, '
                                 f'got {tuple(gamma.shape)}')

    def forward(self,
                spikes: Tensor,
                gamma: Optional[Tensor] = None,
                return_intermediates: bool = False) -> Union[Tensor, Tuple[Tensor, List[List[Tensor]]]]:
        """Reconstruct the frame at ``T // 2``.

        Args:
            spikes: ``(B, T, H, W)`` 0/1 stream (float, uint8 or bool).
            gamma: ``(B or 1, 1, H, W)`` FPN factor, or ``None`` (identity).
            return_intermediates: Also return ``grid[i][s]``.

        Returns:
            ``(B, 1, H, W)`` image, or ``(image, grid)`` with ``grid[i][s]`` shaped ``(B, 1, ⌈H/2^(S−1−s)⌉,
            ⌈W/2^(S−1−s)⌉)``.
        """
        self._check_inputs(spikes, gamma)
        b, length, h, w = spikes.shape
        bounds = self.window_bounds(length)
        gamma = gamma.to(spikes.device).float() if (gamma is not None and self.fpn_compensation) else None
        rates = normalise_spike_count(integrate_windows(spikes, bounds, gamma), bounds)
        rates = pad_to_multiple(rates, 2**(self.num_scales - 1))

        num_windows = len(bounds)
        lifted = self.lift(rates.reshape(b * num_windows, 1, *rates.shape[-2:]))
        lifted = lifted.reshape(b, num_windows, -1, *rates.shape[-2:])
        grid, hidden = [], None
        for i in range(num_windows):
            feat = lifted[:, i]
            if hidden is not None:
                feat = self.temporal_merge(torch.cat([feat, hidden], dim=1))
            pyramid = [feat]
            for _ in range(self.num_scales - 1):
                pyramid.insert(0, F.avg_pool2d(pyramid[0], 2))
            rec, img, row = None, None, []
            for s, level in enumerate(self.levels):
                rec, img = level(pyramid[s], psf_candidates(pyramid[s], self.bank), rec, img)
                factor = 2**(self.num_scales - 1 - s)
                row.append(img[..., :-(-h // factor), :-(-w // factor)])
            grid.append(row)
            hidden = rec
        final = grid[-1][-1]
        return (final, grid) if return_intermediates else final
