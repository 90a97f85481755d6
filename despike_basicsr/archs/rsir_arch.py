"""RSIR (Zhu, Zheng, Geng, Wang, Huang, ACM MM 2023): recurrent spike-based image restoration, general illumination.

Written from the paper's description; the official code (github.com/BIT-Vision/RSIR) was read for the layer widths:

* Noise model: a pixel integrates its photocurrent, scaled by its own response (fixed-pattern noise), plus a dark
  current, and fires at a threshold; at low light the dark current and the quantisation of the firing times to the
  frame clock dominate. The stream is read as sub-windows of 16 frames (bright) or 32 (dim) whose firing rates are
  the noisy observations.
* Adaptive spike transformation: a per-pixel MLP maps each sub-window's rate and the dark-current rate to a
  dark-compensated rate, multiplied by the FPN factor γ (the calibration the noise model needs), then a second MLP
  turns it into an intensity in (0, 1). The official code pre-trains the first MLP on the noise model; here it is a
  residual on the model's own inversion, ``max(rate - dark, 0)``, so an untrained network starts from it.
* Recurrent temporal fusion, in a one-level Haar wavelet domain: a mask predicted from the low-pass bands of the
  current sub-window and of the running (recurrent) estimate blends the two, sub-window after sub-window.
* Frequency-based denoising of the last fused estimate: residual blocks and a shifted-window self-attention stage (Swin
  style) on the four wavelet bands, then a predicted per-pixel blend of the denoised and fused bands and the inverse
  transform. The denoiser does not feed the recurrence, so it runs once, after the last sub-window.

Input ``(B, T, H, W)`` spikes (uint8, bool or float), any T ≥ 1 (``max(1, T // sub_window)`` nearly equal
sub-windows), any H, W; output ``(B, 1, H, W)``. Not implemented: the camera calibration that gives γ and the dark
rate (here optional inputs, identity and zero by default) and the paper's training losses.
"""
from typing import Optional, Union

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from despike_basicsr.archs.arch_util import pad_to_multiple


def check_map(value: Tensor, spikes: Tensor, name: str) -> Tensor:
    """Return ``value`` if it is shaped ``(B or 1, 1, H, W)`` for ``spikes`` ``(B, T, H, W)``; raise otherwise."""
    b, _, h, w = spikes.shape
    if not torch.is_tensor(value) or value.dim() != 4 or value.shape[0] not in (1, b) or value.shape[1:] != (1, h, w):
        found = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f'RSIR: {name} must be shaped ({b} or 1, 1, {h}, {w}), found {found}')
    return value


def haar_filters() -> Tensor:
    """``(4, 1, 2, 2)`` orthonormal 2-D Haar filters: low-low, then the three detail bands."""
    low, high = torch.tensor([0.5**0.5, 0.5**0.5]), torch.tensor([0.5**0.5, -0.5**0.5])
    rows = [torch.outer(a, b) for a, b in ((low, low), (low, high), (high, low), (high, high))]
    return torch.stack(rows)[:, None]


def pixel_mlp(in_channels: int, hidden: int, last: nn.Module) -> nn.Sequential:
    """Per-pixel MLP (1x1 convolutions) ``in -> hidden -> hidden -> hidden -> 1``, LeakyReLU between, ``last`` after.

    He-initialised with zero biases: PyTorch's default initialisation shrinks the signal about fourfold per layer, so
    an untrained stack of these two MLPs returned the same intensity for every rate.
    """
    mlp = nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1), nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(hidden, 1, 1), last)
    for layer in mlp:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, a=0.1, nonlinearity='leaky_relu')
            nn.init.zeros_(layer.bias)
    return mlp


def mask_net(in_channels: int, out_channels: int, hidden: int = 16) -> nn.Sequential:
    """Three 3x3 convolutions ending in a sigmoid: a blending weight in (0, 1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 3, padding=1), nn.Sigmoid())


class ResidualBlock(nn.Module):
    """Two 3x3 conv + LeakyReLU(0.2) layers plus a 1x1 shortcut (which also changes the width)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.body(x)


def to_windows(x: Tensor, size: int) -> Tensor:
    """``(B, H, W, C)`` → ``(B · H/size · W/size, size², C)`` non-overlapping windows."""
    b, h, w, c = x.shape
    x = x.view(b, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c)


def from_windows(windows: Tensor, size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`to_windows`."""
    b = windows.shape[0] // ((height // size) * (width // size))
    x = windows.view(b, height // size, width // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, -1)


def shifted_window_mask(height: int, width: int, size: int, shift: int, device: torch.device) -> Tensor:
    """``(windows, size², size²)`` additive mask: after a cyclic shift, pixels from different regions do not attend."""
    labels = torch.zeros(1, height, width, 1, device=device)
    bands = (slice(0, -size), slice(-size, -shift), slice(-shift, None))
    region = 0
    for rows in bands:
        for cols in bands:
            labels[:, rows, cols] = region
            region += 1
    flat = to_windows(labels, size)[..., 0]
    different = flat[:, :, None] != flat[:, None, :]
    return different.float() * -100.0


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``size x size`` windows with a learned relative position bias."""

    def __init__(self, dim: int, heads: int, size: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads)**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * size - 1)**2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]) + size - 1  # (2, size², size²), each in [0, 2 size - 2]
        self.register_buffer('bias_index', relative[0] * (2 * size - 1) + relative[1], persistent=False)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn + self.bias_table[self.bias_index].permute(2, 0, 1)[None]
        if mask is not None:  # (windows, tokens, tokens), repeated over the batch
            attn = attn.view(-1, mask.shape[0], self.heads, tokens, tokens) + mask[None, :, None]
            attn = attn.view(n, self.heads, tokens, tokens)
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class SwinBlock(nn.Module):
    """Pre-norm transformer block on (shifted) windows: attention then a 4x MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, size: int, shift: int) -> None:
        super().__init__()
        self.size, self.shift = size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, H, W, C)`` with H, W multiples of the window size."""
        _, height, width, _ = x.shape
        shift = self.shift if min(height, width) > self.size else 0
        y = self.norm1(x)
        mask = None
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(height, width, self.size, shift, x.device)
        y = from_windows(self.attn(to_windows(y, self.size), mask), self.size, height, width)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class AttentionStage(nn.Module):
    """1x1 embedding to ``dim`` channels, Swin blocks (every other one shifted), norm and 1x1 projection back."""

    def __init__(self, channels: int, dim: int, depth: int, heads: int, size: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, 1)
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList([SwinBlock(dim, heads, size, size // 2 if i % 2 else 0) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.project = nn.Conv2d(dim, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.embed_norm(self.embed(x).permute(0, 2, 3, 1))
        for block in self.blocks:
            y = block(y)
        return x + self.project(self.norm(y).permute(0, 3, 1, 2))


@ARCH_REGISTRY.register()
class RSIR(nn.Module):
    """Recurrent spike-based image restoration: noise-aware transformation, wavelet-domain recurrence, denoising.

    Args:
        sub_window: Frames per recurrent step (published: 16 in bright light, 32 in dim light; ten steps).
        hidden: Channels of the per-pixel MLPs, masks and residual blocks (published: 16).
        num_res_blocks: Residual blocks of the denoiser (published: 4).
        attn_dim: Embedding width of the attention stage (published: 96).
        attn_depth: Swin blocks (published: 2).
        attn_heads: Attention heads (published: 3).
        window_size: Attention window at half resolution (published: 8).

    The defaults give 254,510 parameters; Spike-Zoo's measurement of the official model is 0.2545 M
    (``logs/params.log`` of github.com/chenkang455/Spike-Zoo, 2024-08-10, with 160-frame inputs).
    """

    def __init__(self,
                 sub_window: int = 16,
                 hidden: int = 16,
                 num_res_blocks: int = 4,
                 attn_dim: int = 96,
                 attn_depth: int = 2,
                 attn_heads: int = 3,
                 window_size: int = 8) -> None:
        super().__init__()
        if sub_window < 1 or num_res_blocks < 1 or attn_dim % attn_heads:
            raise ValueError(f'RSIR needs sub_window >= 1, num_res_blocks >= 1 and attn_dim divisible by attn_heads, '
                             f'found sub_window={sub_window}, num_res_blocks={num_res_blocks}, '
                             f'attn_dim={attn_dim}, attn_heads={attn_heads}')
        self.sub_window = sub_window
        self.size_multiple = 2 * window_size
        self.register_buffer('haar', haar_filters(), persistent=False)
        self.dark_compensation = pixel_mlp(2, hidden, nn.LeakyReLU(0.1))
        self.to_intensity = pixel_mlp(1, hidden, nn.Sigmoid())
        self.fusion_mask = mask_net(2, 1, hidden)
        blocks = [ResidualBlock(4, hidden)] + [ResidualBlock(hidden, hidden) for _ in range(num_res_blocks - 1)]
        self.denoise_conv = nn.Sequential(*blocks)
        self.denoise_attn = AttentionStage(hidden, attn_dim, attn_depth, attn_heads, window_size)
        self.denoise_out = nn.Conv2d(hidden, 4, 3, padding=1)
        self.refine_mask = mask_net(8, 1, hidden)

    def transform(self, rate: Tensor, dark: Tensor, gamma: Union[Tensor, float]) -> Tensor:
        """Adaptive spike transformation of a sub-window's rate ``(B, 1, H, W)``; returns ``(B, 4, H/2, W/2)`` bands."""
        dark = dark.expand(rate.shape[0], 1, *rate.shape[-2:])
        compensated = (F.relu(rate - dark) + self.dark_compensation(torch.cat([rate, dark], dim=1))) * gamma
        return F.conv2d(self.to_intensity(compensated), self.haar, stride=2)

    def forward(self, spikes: Tensor, gamma: Optional[Tensor] = None, dark: Optional[Tensor] = None) -> Tensor:
        """Restore the image of ``spikes`` ``(B, T, H, W)``.

        Args:
            spikes: 0/1 stream (uint8, bool or float).
            gamma: ``(B or 1, 1, H, W)`` FPN factor (multiplies the rates, as in DeSpikeNet), or ``None`` (ones).
            dark: ``(B or 1, 1, H, W)`` dark-current rate in spikes per frame, or ``None`` (zeros).

        Returns:
            ``(B, 1, H, W)`` image.
        """
        if not torch.is_tensor(spikes) or spikes.dim() != 4 or spikes.shape[1] < 1:
            found = tuple(spikes.shape) if torch.is_tensor(spikes) else type(spikes).__name__
            raise ValueError(f'RSIR expects spikes shaped (B, T, H, W) with T >= 1, found {found}')
        height, width = spikes.shape[-2:]
        chunks = torch.tensor_split(spikes, max(1, spikes.shape[1] // self.sub_window), dim=1)
        rates = torch.cat([c.sum(dim=1, keepdim=True, dtype=torch.float32) / c.shape[1] for c in chunks], dim=1)
        multiple = self.size_multiple
        rates = pad_to_multiple(rates, multiple)
        gamma = 1.0 if gamma is None else pad_to_multiple(check_map(gamma, spikes, 'gamma').to(rates), multiple)
        dark = rates.new_zeros(1, 1, 1, 1) if dark is None else pad_to_multiple(
            check_map(dark, spikes, 'dark').to(rates), multiple)

        state = None
        for step in range(rates.shape[1]):
            current = self.transform(rates[:, step:step + 1], dark, gamma)
            previous = current if state is None else state
            mask = self.fusion_mask(torch.cat([current[:, :1], previous[:, :1]], dim=1))
            state = current * (1 - mask) + previous * mask
        denoised = self.denoise_out(self.denoise_attn(self.denoise_conv(state)))
        omega = self.refine_mask(torch.cat([state, denoised], dim=1))
        restored = denoised * (1 - omega) + state * omega
        return F.conv_transpose2d(restored, self.haar, stride=2)[..., :height, :width]
