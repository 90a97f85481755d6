"""Low-frequency tone loss: L_tone = Σ_b w_b · mean_x |G_σ * out − G_σ * gt| / (G_σ * gt + ε) / Σ_b w_b.

The pixel, SSIM and gradient losses leave a small bias where a pixel fires a spike or less per window: the shipped
network renders flat dark regions of an in-focus dim stream 1.75 grey levels too dark (DPDD val in focus,
results/heldout/heldout_phase12.md), where a plain average is 9.6 too dark (the concave display gamma of mostly-empty
pixels). This term prices the local level directly, relative to it, so a dark region's bias weighs as much as its few
grey levels deserve. It is meant only for samples whose target is photometrically the scene that fired the spikes
(``w_b``, the ``photometric`` flag of NaturalSpikeDataset: in-focus and synthetically defocused draws): on a real pair
the two photographs differ in exposure and vignetting, and a level loss would teach that difference.
"""
from typing import Optional

from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn

from despike_basicsr.archs.arch_util import gaussian_smooth


@LOSS_REGISTRY.register()
class LowFrequencyToneLoss(nn.Module):
    """Relative L1 distance between the Gaussian-smoothed output and ground truth, per sample, weighted.

    Args:
        loss_weight: Multiplies the loss.
        sigma: σ of the smoothing, in pixels: the scale of a "level" (noise and edges below it do not count).
        eps: ε of the relative error, in display units (0.05: a dark region at grey 20 weighs 7.6× its absolute error,
            a mid-grey one 1.8×).
    """

    def __init__(self, loss_weight: float = 1.0, sigma: float = 4.0, eps: float = 0.05) -> None:
        super().__init__()
        if sigma <= 0 or eps <= 0:
            raise ValueError(f'LowFrequencyToneLoss: sigma and eps must be positive, got {sigma}, {eps}')
        self.loss_weight, self.sigma, self.eps = loss_weight, float(sigma), float(eps)

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None, **kwargs) -> Tensor:
        """``weight``: ``(B,)`` per-sample weights (``None``: all 1); a batch whose weights are all 0 gives 0."""
        if pred.shape != target.shape:
            raise ValueError(f'LowFrequencyToneLoss: pred and target must have the same shape, got '
                             f'{tuple(pred.shape)} and {tuple(target.shape)}')
        level = gaussian_smooth(target.float(), self.sigma)
        error = (gaussian_smooth(pred.float(), self.sigma) - level).abs() / (level.clamp_min(0.0) + self.eps)
        per_sample = error.flatten(1).mean(1)
        if weight is None:
            return self.loss_weight * per_sample.mean()
        weight = weight.to(per_sample).reshape(-1)
        return self.loss_weight * (weight * per_sample).sum() / weight.sum().clamp_min(1.0)
