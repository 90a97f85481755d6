"""Hierarchical MSE over the temporal × spatial grid of DeSpikeNet outputs: Σ_{i,s} β_{i,s} · MSE(Rec_{i,s}, GT_s)."""
from typing import List, Optional, Sequence

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

PAPER_TEMPORAL_WEIGHTS = (0.1, 0.3, 0.5, 0.7, 1.0)


def default_temporal_weights(num_temporal: int) -> List[float]:
    """β_i of the paper for five temporal scales; otherwise evenly spaced from 0.1 to 1.0 (1.0 for a single scale)."""
    if num_temporal == len(PAPER_TEMPORAL_WEIGHTS):
        return list(PAPER_TEMPORAL_WEIGHTS)
    if num_temporal == 1:
        return [1.0]
    return [0.1 + 0.9 * i / (num_temporal - 1) for i in range(num_temporal)]


def log_mse(output: Tensor, target: Tensor, eps: float) -> Tensor:
    """The decibel loss: (1/B)·Σ_b 10·log10(MSE_b + ε), MSE_b the mean squared error of sample b (−PSNR per sample).

    Every sample counts by its error in decibels, so a nearly perfect sample (an in-focus, still, well-lit scene whose
    plain average is a 45 dB image) weighs as much as a badly blurred one: its gradient is 10/(ln 10·(MSE_b + ε))
    times that of its MSE. ε caps that weight (1e-5: 50 dB).
    """
    per_sample = (output - target).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(per_sample + eps)).mean()


def hierarchical_mse(grid: Sequence[Sequence[Tensor]], target: Tensor, weights: Tensor,
                     log_eps: Optional[float] = None) -> Tensor:
    """L_grid = Σ_i Σ_s β_i · w_s · MSE(grid[i][s], ↓_s GT), β_{i,s} = β_i · w_s.

    ↓_s resizes the ground truth to the size of the output at scale s by area averaging (box filter).

    Args:
        grid: ``grid[i][s]`` ``(B, 1, h_s, w_s)`` outputs (temporal scale i, spatial scale s).
        target: ``(B, 1, H, W)`` ground truth at full resolution.
        weights: ``(N_t, N_s)`` matrix β_{i,s}.
        log_eps: With a value, every MSE becomes :func:`log_mse` with this ε.

    Returns:
        Scalar loss.
    """
    targets = {}
    total = target.new_zeros(())
    for i, row in enumerate(grid):
        for s, output in enumerate(row):
            size = tuple(output.shape[-2:])
            if size not in targets:
                targets[size] = target if size == tuple(target.shape[-2:]) else F.interpolate(
                    target, size=size, mode='area')
            term = F.mse_loss(output, targets[size]) if log_eps is None else log_mse(output, targets[size], log_eps)
            total = total + float(weights[i, s]) * term
    return total


@LOSS_REGISTRY.register()
class HierarchicalMSELoss(nn.Module):
    """Weighted sum of MSEs over an N_t × N_s grid of intermediate outputs (ground truth downsampled per scale).

    β_{i,s} = β_i · w_s. Defaults: β_i = 0.1/0.3/0.5/0.7/1.0 for five temporal scales (shortest window first; evenly
    spaced from 0.1 to 1.0 for other counts) and w_s = 1 for every spatial scale (docs/despike.md says why).

    Args:
        loss_weight: λ1, multiplies the whole sum.
        temporal_weights: β_i per temporal scale, or ``None`` for the default.
        scale_weights: w_s per spatial scale (coarsest first), or ``None`` for all ones.
        log_per_sample: Use the decibel loss :func:`log_mse` (per-sample −PSNR) for every grid term instead of the
            MSE, so that nearly perfect samples are not drowned by blurred ones (issue 28: in focus, do no harm).
        log_eps: Its ε.
    """

    def __init__(self,
                 loss_weight: float = 1.0,
                 temporal_weights: Optional[Sequence[float]] = None,
                 scale_weights: Optional[Sequence[float]] = None,
                 log_per_sample: bool = False,
                 log_eps: float = 1e-5) -> None:
        super().__init__()
        if log_eps <= 0:
            raise ValueError(f'HierarchicalMSELoss: log_eps must be > 0, got {log_eps}')
        self.log_eps = float(log_eps) if log_per_sample else None
        self.loss_weight = loss_weight
        self.temporal_weights = None if temporal_weights is None else [float(v) for v in temporal_weights]
        self.scale_weights = None if scale_weights is None else [float(v) for v in scale_weights]

    def weights_for(self, num_temporal: int, num_scales: int) -> torch.Tensor:
        """The ``(N_t, N_s)`` matrix β_{i,s} used for a grid of that size (raises if configured lists do not fit)."""
        beta_t = self.temporal_weights or default_temporal_weights(num_temporal)
        beta_s = self.scale_weights or [1.0] * num_scales
        if len(beta_t) != num_temporal:
            raise ValueError(f'HierarchicalMSELoss: temporal_weights has {len(beta_t)} values but the grid has '
                             f'{num_temporal} temporal scales')
        if len(beta_s) != num_scales:
            raise ValueError(f'HierarchicalMSELoss: scale_weights has {len(beta_s)} values but the grid has '
                             f'{num_scales} spatial scales')
        return torch.tensor(beta_t)[:, None] * torch.tensor(beta_s)[None, :]

    def forward(self, grid: Sequence[Sequence[Tensor]], target: Tensor, **kwargs) -> Tensor:
        """Args:
            grid: ``grid[i][s]`` outputs of DeSpikeNet (``return_intermediates=True``); a single tensor counts as a
                1 × 1 grid.
            target: ``(B, 1, H, W)`` ground truth.
        """
        if torch.is_tensor(grid):
            grid = [[grid]]
        num_scales = {len(row) for row in grid}
        if len(num_scales) != 1:
            raise ValueError(f'HierarchicalMSELoss: every temporal scale needs the same number of spatial scales, got '
                             f'{sorted(num_scales)}')
        weights = self.weights_for(len(grid), num_scales.pop())
        return self.loss_weight * hierarchical_mse(grid, target, weights, self.log_eps)
