"""Multi-scale MSE, the training loss of the scale-recurrent deblurring baselines (GKMNet, NRKNet)."""
from typing import Optional, Sequence, Union

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F


def resize_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """Resize the ground truth to one output's size: area averaging when shrinking, bilinear otherwise."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    shrinking = size[0] <= target.shape[-2] and size[1] <= target.shape[-1]
    if shrinking:
        return F.interpolate(target, size=tuple(size), mode='area')
    return F.interpolate(target, size=tuple(size), mode='bilinear', align_corners=False)


def multiscale_mse(outputs: Sequence[Tensor], target: Tensor, weights: Sequence[float], reduction: str) -> Tensor:
    """``L = sum_s w_s * MSE(x_s, resize(gt, size(x_s)))`` over the outputs x_s (coarse to fine).

    Args:
        outputs: Network outputs ``(B, C, H_s, W_s)``, any sizes.
        target: Ground truth ``(B, C, H, W)`` at full resolution.
        weights: One weight w_s per output.
        reduction: ``'mean'`` (mean squared error per scale) or ``'sum'``.
    """
    total = 0
    for weight, output in zip(weights, outputs):
        error = F.mse_loss(output, resize_target(target, output.shape[-2:]), reduction=reduction)
        total = total + weight * error
    return total


@LOSS_REGISTRY.register()
class MultiScaleMSELoss(nn.Module):
    """MSE between each output of a coarse-to-fine list and the ground truth resized to that output's size.

    Args:
        loss_weight: Factor on the whole loss.
        scale_weights: Weight of each output, coarse to fine; ``None`` weights every output 1. A list of a different
            length than the outputs is an error.
        reduction: ``'mean'`` or ``'sum'`` (``'none'`` cannot combine outputs of different sizes).
    """

    def __init__(self,
                 loss_weight: float = 1.0,
                 scale_weights: Optional[Sequence[float]] = None,
                 reduction: str = 'mean') -> None:
        super().__init__()
        if reduction not in ('mean', 'sum'):
            raise ValueError(f"MultiScaleMSELoss reduction must be 'mean' or 'sum', found {reduction!r}")
        self.loss_weight = loss_weight
        self.scale_weights = None if scale_weights is None else [float(w) for w in scale_weights]
        self.reduction = reduction

    def forward(self, pred: Union[Tensor, Sequence[Tensor]], target: Tensor, **kwargs) -> Tensor:
        """Args: pred a tensor or a list of tensors (coarse to fine); target ``(B, C, H, W)``."""
        outputs = [pred] if torch.is_tensor(pred) else list(pred)
        if not outputs:
            raise ValueError('MultiScaleMSELoss expects at least one output, found an empty list')
        weights = self.scale_weights if self.scale_weights is not None else [1.0] * len(outputs)
        if len(weights) != len(outputs):
            raise ValueError(f'MultiScaleMSELoss has {len(weights)} scale_weights {weights} but found '
                             f'{len(outputs)} outputs')
        for output in outputs:
            if output.dim() != 4 or output.shape[:2] != target.shape[:2]:
                raise ValueError(f'MultiScaleMSELoss expects outputs shaped (B, C, h, w) like the target '
                                 f'{tuple(target.shape)}, found {tuple(output.shape)}')
        return self.loss_weight * multiscale_mse(outputs, target, weights, self.reduction)
