"""Image-gradient L1 loss: L_grad = mean |∂x(output) − ∂x(gt)| + mean |∂y(output) − ∂y(gt)|.

A blurred output loses its gradients while its pixels stay close to the target, so a pixel loss alone lets a
network settle for blur; this term prices the missing edges directly.
"""
from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn


def image_gradients(image: Tensor) -> tuple:
    """Forward differences ``(∂y I, ∂x I)`` over the last two dimensions (each one row / column shorter)."""
    return image[..., 1:, :] - image[..., :-1, :], image[..., :, 1:] - image[..., :, :-1]


@LOSS_REGISTRY.register()
class GradientL1Loss(nn.Module):
    """L1 distance between the forward-difference gradients of output and ground truth.

    Args:
        loss_weight: Multiplies the loss.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor, **kwargs) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f'GradientL1Loss: pred and target must have the same shape, got {tuple(pred.shape)} and '
                             f'{tuple(target.shape)}')
        (pred_y, pred_x), (target_y, target_x) = image_gradients(pred.float()), image_gradients(target.float())
        loss = (pred_y - target_y).abs().mean() + (pred_x - target_x).abs().mean()
        return self.loss_weight * loss
