"""Small layers shared by the GKMNet and NRKNet baselines (no registered class here).

Both baselines work on an image pyramid (1/4, 1/2, 1), apply a bank of fixed or learned blur kernels to whole images,
and need sizes that halve cleanly, so the cropping, pyramid and separable-filtering helpers live here once (padding and
resizing, shared with DeSpikeNet, are in ``arch_util``).
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def check_image_batch(x: Tensor, in_channels: int, name: str) -> None:
    """Raise a clear error unless ``x`` is a float ``(B, in_channels, H, W)`` tensor.

    Args:
        x: Network input.
        in_channels: Channel count the network was built for.
        name: Network name used in the message.
    """
    if not torch.is_tensor(x) or x.dim() != 4:
        found = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f'{name} expects a (B, {in_channels}, H, W) tensor, found shape {found}')
    if x.shape[1] != in_channels:
        raise ValueError(f'{name} was built for in_channels={in_channels}, found input with {x.shape[1]} channels '
                         f'(shape {tuple(x.shape)})')
    if not x.is_floating_point():
        raise TypeError(f'{name} expects a floating-point tensor, found dtype {x.dtype}')


def crop_outputs(outputs: List[Tensor], size: Tuple[int, int], factors: Sequence[int]) -> List[Tensor]:
    """Crop pyramid outputs back to the unpadded size: output ``i`` at scale ``1/factors[i]`` keeps ceil(size/f)."""
    height, width = size
    return [out[..., :math.ceil(height / f), :math.ceil(width / f)] for out, f in zip(outputs, factors)]


def image_pyramid(x: Tensor, num_scales: int) -> List[Tensor]:
    """Return ``[x/2^(n-1), ..., x/2, x]`` (coarse to fine) by 2x2 averaging; H and W must be divisible."""
    levels = [x]
    for _ in range(num_scales - 1):
        levels.append(F.avg_pool2d(levels[-1], 2))
    return levels[::-1]


def separable_filter_bank(x: Tensor, kernels_1d: Tensor) -> Tensor:
    """Filter every channel of ``x`` with each of N separable, symmetric kernels.

    Args:
        x: ``(B, C, H, W)`` images.
        kernels_1d: ``(N, K)`` one-dimensional kernels (K odd), applied along rows and then columns.

    Returns:
        ``(B, C, N, H, W)``: ``out[:, c, n] = k_n^T * (k_n * x[:, c])``, borders replicated.
    """
    batch, channels, height, width = x.shape
    num, size = kernels_1d.shape
    radius = size // 2
    flat = F.pad(x.reshape(batch * channels, 1, height, width), (radius, ) * 4, mode='replicate')
    rows = F.conv2d(flat, kernels_1d.view(num, 1, 1, size))
    both = F.conv2d(rows, kernels_1d.view(num, 1, size, 1), groups=num)
    return both.view(batch, channels, num, height, width)


def pixel_mixture(stack: Tensor, weights: Tensor) -> Tensor:
    """Per-pixel weighted sum over a filter stack: ``out(p) = sum_n weights_n(p) * stack_n(p)``.

    Args:
        stack: ``(B, C, N, H, W)`` filtered copies of an image.
        weights: ``(B, N, H, W)`` weights shared by all channels (a defocus kernel does not depend on the colour).
    """
    return (stack * weights.unsqueeze(1)).sum(dim=2)


class ResBlock(nn.Module):
    """conv-ReLU-conv with an identity shortcut (the residual block of SRN / MIMO-UNet style backbones)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x), inplace=True))


def res_stage(channels: int, num_blocks: int) -> nn.Sequential:
    """``num_blocks`` residual blocks at one width."""
    return nn.Sequential(*[ResBlock(channels) for _ in range(num_blocks)])


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (Shi et al. 2015): the four gates come from one 3x3 conv over ``[x, h]``."""

    def __init__(self, in_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, 3, padding=1)

    def forward(self, x: Tensor, state: Tuple[Tensor, Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """One step; ``state=None`` starts from zeros. Returns ``h`` and the new ``(h, c)``."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[-2:])
            state = (zeros, zeros)
        hidden, cell = state
        in_gate, forget_gate, out_gate, candidate = self.gates(torch.cat([x, hidden], dim=1)).chunk(4, dim=1)
        cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
        hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
        return hidden, (hidden, cell)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
