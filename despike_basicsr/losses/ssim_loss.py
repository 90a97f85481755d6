"""Structural-similarity loss: L_SSIM = 1 − mean SSIM(output, gt) over 11×11 Gaussian windows (σ 1.5).

SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), C1 = (0.01 L)², C2 = (0.03 L)², L the
data range: the standard window of Wang et al. (2004), as ``basicsr.metrics.calculate_ssim`` scores it. A pixel loss
weighs an error the same in a flat patch and on an edge; SSIM charges noise left in flat regions and contrast lost on
structure, which is where a spike reconstruction loses to a noise-free photograph.
"""
import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """``(1, 1, size, size)`` normalised Gaussian window."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-coords**2 / (2 * sigma**2))
    line = line / line.sum()
    return (line[:, None] * line[None, :]).reshape(1, 1, size, size)


def ssim_map(pred: Tensor, target: Tensor, window: Tensor, data_range: float = 1.0) -> Tensor:
    """Per-window SSIM of ``(B, C, H, W)`` images (valid windows only), every channel on its own."""
    channels = pred.shape[1]
    window = window.to(pred).expand(channels, 1, *window.shape[-2:])

    def blur(image: Tensor) -> Tensor:
        return F.conv2d(image, window, groups=channels)

    c1, c2 = (0.01 * data_range)**2, (0.03 * data_range)**2
    mu_x, mu_y = blur(pred), blur(target)
    var_x = blur(pred * pred) - mu_x**2
    var_y = blur(target * target) - mu_y**2
    cov = blur(pred * target) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


@LOSS_REGISTRY.register()
class SSIMLoss(nn.Module):
    """1 − SSIM between output and ground truth.

    Args:
        loss_weight: Multiplies the loss.
        window_size: Side of the Gaussian window (odd, at most the images' smaller side).
        sigma: Its standard deviation in pixels.
        data_range: L, the range of the images' values (1 for display images in [0, 1]).
    """

    def __init__(self, loss_weight: float = 1.0, window_size: int = 11, sigma: float = 1.5,
                 data_range: float = 1.0) -> None:
        super().__init__()
        if window_size < 1 or window_size % 2 == 0 or sigma <= 0 or data_range <= 0:
            raise ValueError(f'SSIMLoss: window_size must be odd and positive, sigma and data_range positive; got '
                             f'{window_size}, {sigma}, {data_range}')
        self.loss_weight = loss_weight
        self.data_range = data_range
        self.register_buffer('window', gaussian_window(window_size, sigma), persistent=False)

    def forward(self, pred: Tensor, target: Tensor, **kwargs) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f'SSIMLoss: pred and target must have the same shape, got {tuple(pred.shape)} and '
                             f'{tuple(target.shape)}')
        if min(pred.shape[-2:]) < self.window.shape[-1]:
            raise ValueError(f'SSIMLoss: images of {tuple(pred.shape[-2:])} are smaller than the '
                             f'{self.window.shape[-1]}-pixel window')
        similarity = ssim_map(pred.float(), target.float(), self.window, self.data_range)
        return self.loss_weight * (1.0 - similarity.mean())
