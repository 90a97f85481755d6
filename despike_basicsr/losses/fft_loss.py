"""Frequency-domain L1 loss: L_FFT = mean |rFFT2(output) − rFFT2(gt)| over real and imaginary parts."""
import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn

_REDUCTIONS = ('none', 'mean', 'sum')
_NORMS = ('backward', 'ortho', 'forward')


def fft_l1(pred: Tensor, target: Tensor, norm: str = 'backward') -> Tensor:
    """Element-wise |Re ΔF| and |Im ΔF| with ΔF = rFFT2(pred) − rFFT2(target) over the last two dimensions.

    Returns:
        ``(..., H, W // 2 + 1, 2)`` absolute differences (last dimension: real, imaginary).
    """
    diff = torch.fft.rfft2(pred.float(), norm=norm) - torch.fft.rfft2(target.float(), norm=norm)
    return torch.view_as_real(diff).abs()


@LOSS_REGISTRY.register()
class FFTLoss(nn.Module):
    """L1 distance between the 2-D real FFTs of output and ground truth (real and imaginary parts).

    Args:
        loss_weight: Multiplies the loss.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'`` over all spectral elements.
        norm: ``torch.fft`` normalisation: ``'backward'`` (unscaled, as MIMO-UNet/NRKNet use) or ``'ortho'``
            (scaled by 1/√(HW), which keeps the loss size independent of the crop size).
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean', norm: str = 'backward') -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f'FFTLoss: reduction must be one of {_REDUCTIONS}, got {reduction!r}')
        if norm not in _NORMS:
            raise ValueError(f'FFTLoss: norm must be one of {_NORMS}, got {norm!r}')
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.norm = norm

    def forward(self, pred: Tensor, target: Tensor, **kwargs) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f'FFTLoss: pred and target must have the same shape, got {tuple(pred.shape)} and '
                             f'{tuple(target.shape)}')
        diff = fft_l1(pred, target, self.norm)
        if self.reduction == 'mean':
            diff = diff.mean()
        elif self.reduction == 'sum':
            diff = diff.sum()
        return self.loss_weight * diff
