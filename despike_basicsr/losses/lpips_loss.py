"""LPIPS perceptual loss (AlexNet backbone, lpips package) for single-channel or RGB outputs in [0, 1]."""
from typing import Optional

from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn

from despike_basicsr.losses.lpips_net import build_lpips_net, lpips_distance

_REDUCTIONS = ('none', 'mean', 'sum')


@LOSS_REGISTRY.register()
class LPIPSLoss(nn.Module):
    """LPIPS distance as a loss; the LPIPS network is frozen and stays in eval mode.

    Args:
        loss_weight: Multiplies the loss.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'`` over the batch.
        pretrained: True needs the AlexNet ImageNet weights (clear error when missing); False uses a random
            backbone (tests only).
        backbone_path: Explicit AlexNet weights file, else torchvision's cache (``$TORCH_HOME/hub/checkpoints``).
    """

    def __init__(self,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 pretrained: bool = True,
                 backbone_path: Optional[str] = None) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f'LPIPSLoss: reduction must be one of {_REDUCTIONS}, got {reduction!r}')
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.net = build_lpips_net(pretrained=pretrained, backbone_path=backbone_path)

    def train(self, mode: bool = True) -> 'LPIPSLoss':
        super().train(mode)
        self.net.eval()  # its dropout layers must never be active
        return self

    def forward(self, pred: Tensor, target: Tensor, **kwargs) -> Tensor:
        """``pred``, ``target``: ``(B, 1 or 3, H, W)`` in [0, 1], at least 31 × 31 pixels."""
        dist = lpips_distance(self.net, pred, target)
        if self.reduction == 'mean':
            dist = dist.mean()
        elif self.reduction == 'sum':
            dist = dist.sum()
        return self.loss_weight * dist
