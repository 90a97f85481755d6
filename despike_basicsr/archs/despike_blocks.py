"""Layers shared by DeSpikeNet: channel LayerNorm, residual block, the physical PSF kernel bank, candidate fusion.

Each module is small and works on ``(B, C, H, W)`` feature maps; the kernel bank produces ``m`` candidates per
feature map, shaped ``(B, m, C, H, W)``, which the fusion modules reduce back to ``(B, C, H, W)``.
"""
import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def gaussian_kernel_2d(sigma: float, kernel_size: int) -> Tensor:
    """A normalised isotropic Gaussian G(x, y; σ) ∝ exp(−(x² + y²) / 2σ²) on a ``kernel_size`` square grid.

    σ = 0 gives a discrete delta (an in-focus point spread function).

    Args:
        sigma: Standard deviation in pixels (≥ 0).
        kernel_size: Odd side length of the kernel.

    Returns:
        ``(kernel_size, kernel_size)`` float32 tensor summing to 1.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size}')
    if sigma < 0:
        raise ValueError(f'sigma must be >= 0, got {sigma}')
    radius = kernel_size // 2
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    if sigma == 0:
        kernel = torch.zeros(kernel_size, kernel_size, dtype=torch.float64)
        kernel[radius, radius] = 1.0
        return kernel.float()
    profile = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = profile[:, None] * profile[None, :]
    return (kernel / kernel.sum()).float()


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a ``(B, C, H, W)`` map (one token per pixel).

    Args:
        channels: Number of channels C.
        eps: Added to the variance for stability.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ResBlock(nn.Module):
    """conv3×3 → GELU → conv3×3 with an identity skip.

    Args:
        channels: Number of input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.gelu(self.conv1(x)))


class PhysicalKernelBank(nn.Module):
    """The physical discrete PSF prior: m learnable kernels, initialised as Gaussians with σ_j over a range.

    Every kernel is depthwise and shared across channels, so each candidate D_j = k_j * F is "F seen through one
    defocus level". Borders are replicate-padded so a kernel does not darken the image edge.

    Args:
        num_kernels: m, the number of kernels (defocus levels).
        kernel_size: Odd side length of every kernel.
        sigma_range: (σ_min, σ_max) in pixels; σ_j is spaced evenly over it (σ_min = 0 includes a delta).
    """

    def __init__(self, num_kernels: int = 8, kernel_size: int = 11, sigma_range: Sequence[float] = (0.5, 3.0)) -> None:
        super().__init__()
        if num_kernels < 1:
            raise ValueError(f'num_kernels must be >= 1, got {num_kernels}')
        if len(sigma_range) != 2 or not 0 <= sigma_range[0] <= sigma_range[1]:
            raise ValueError(f'sigma_range must be (min, max) with 0 <= min <= max, got {sigma_range}')
        sigmas = torch.linspace(float(sigma_range[0]), float(sigma_range[1]), num_kernels)
        kernels = torch.stack([gaussian_kernel_2d(float(s), kernel_size) for s in sigmas])
        self.register_buffer('init_sigmas', sigmas)
        self.weight = nn.Parameter(kernels[:, None])  # (m, 1, k, k)
        self.num_kernels = num_kernels
        self.kernel_size = kernel_size

    def forward(self, feat: Tensor) -> Tensor:
        """Apply every kernel to every channel: ``(B, C, H, W)`` → ``(B, m, C, H, W)``."""
        return convolve_bank(feat, self.weight[:, 0])


def convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """k_j * F for every channel and kernel, replicate borders: by FFT when gradients are recorded, else directly.

    Both give the same convolution (to float rounding). On CPUs the direct convolution is about 2× faster forward
    (measured: 31 against 63 ms for 32 channels × 8 kernels of 11×11 at 125×200), but PyTorch's backward pass of
    a one-input-channel convolution on CPUs is an order of magnitude slower than the FFT's, so training keeps the FFT.
    """
    if torch.is_grad_enabled() and (feat.requires_grad or kernels.requires_grad):
        return fft_convolve_bank(feat, kernels)
    return direct_convolve_bank(feat, kernels)


def direct_convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """:func:`fft_convolve_bank` as a spatial convolution: ``(B, C, H, W)``, ``(m, k, k)`` → ``(B, m, C, H, W)``.

    One single-channel map per (batch, channel) through the m kernels. A depthwise ``groups=C`` convolution in
    channels-last memory convolves twice as fast, but leaves the candidates in a layout that costs more to read
    (attention) or to copy back than it saves.
    """
    b, c, h, w = feat.shape
    radius = kernels.shape[-1] // 2
    padded = F.pad(feat.reshape(b * c, 1, h, w), (radius, radius, radius, radius), mode='replicate')
    out = F.conv2d(padded, kernels.flip(-1, -2)[:, None].to(feat.dtype))  # conv2d correlates: flip for a convolution
    return out.reshape(b, c, kernels.shape[0], h, w).transpose(1, 2)


def channels_last_convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """:func:`direct_convolve_bank` in channels-last layout: ``(B, C, H, W)``, ``(m, k, k)`` → ``(B, H, W, C, m)``.

    One depthwise (``groups=C``) convolution with m output channels per input channel, on channels-last memory,
    which oneDNN runs about twice as fast on CPUs as m passes over single-channel maps. Entry ``[..., c, j]`` is
    k_j * F_c, replicate borders, exactly as in the other two routes.
    """
    b, c, h, w = feat.shape
    m, size = kernels.shape[0], kernels.shape[-1]
    radius = size // 2
    weight = kernels.flip(-1, -2).to(feat.dtype)[None].expand(c, m, size, size).reshape(c * m, 1, size, size)
    padded = F.pad(feat, (radius, radius, radius, radius), mode='replicate')
    out = F.conv2d(padded.contiguous(memory_format=torch.channels_last), weight.contiguous(), groups=c)
    return out.permute(0, 2, 3, 1).reshape(b, h, w, c, m)


def fft_convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """True convolution (k_j * F, kernel flipped) of every channel with every kernel, replicate borders, via FFT.

    On CPUs PyTorch's backward pass for a one-input-channel convolution is an order of magnitude slower than this
    FFT route; the image is replicate-padded by the kernel radius on each side, so the circular wrap-around falls
    only on rows and columns that are cropped away.

    Args:
        feat: ``(B, C, H, W)``.
        kernels: ``(m, k, k)`` with k odd.

    Returns:
        ``(B, m, C, H, W)``.
    """
    radius = kernels.shape[-1] // 2
    dtype = feat.dtype
    # float32 whatever autocast chose: cuFFT has no bf16 and takes fp16 only for power-of-two sizes
    with torch.autocast(feat.device.type, enabled=False):
        padded = F.pad(feat.float(), (radius, radius, radius, radius), mode='replicate')
        height, width = padded.shape[-2:]
        # transform sizes with only small prime factors are several times faster; a larger size adds no wrap-around
        size = (smooth_fft_size(height), smooth_fft_size(width))
        spectrum = torch.fft.rfft2(padded, s=size)[:, None] * torch.fft.rfft2(kernels.float(), s=size)[None, :, None]
        return torch.fft.irfft2(spectrum, s=size)[..., 2 * radius:height, 2 * radius:width].to(dtype)


def smooth_fft_size(length: int) -> int:
    """The smallest n >= ``length`` of the form 2^a·3^b·5^c (fast FFT sizes)."""
    n = max(int(length), 1)
    while True:
        rest = n
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


class LearnedKernelBank(nn.Module):
    """Ablation of :class:`PhysicalKernelBank`: plain learned depthwise convolutions, randomly initialised.

    Each channel has its own m kernels (PyTorch's default initialisation); no Gaussian prior, no sharing.

    Args:
        channels: Number of feature channels C.
        num_kernels: m, the number of candidates produced.
        kernel_size: Odd side length of every kernel.
    """

    def __init__(self, channels: int, num_kernels: int = 8, kernel_size: int = 11) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels,
            channels * num_kernels,
            kernel_size,
            padding=kernel_size // 2,
            padding_mode='replicate',
            groups=channels)
        self.num_kernels = num_kernels

    def forward(self, feat: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, m, C, H, W)``."""
        b, c, h, w = feat.shape
        return self.conv(feat).reshape(b, c, self.num_kernels, h, w).transpose(1, 2)


def psf_candidates(feat: Tensor, bank: nn.Module) -> Tensor:
    """Physical discrete PSF prior: D_{i,j} = k_j * F_i for every kernel k_j of the bank (depthwise).

    The fusion modules call it on the features, or on their key/value projections, which is the
    same up to the projection (:class:`CandidateAttentionFusion`).

    Args:
        feat: ``(B, C, H, W)`` features F_i (at any spatial scale).
        bank: :class:`PhysicalKernelBank` (Gaussian-initialised, shared over channels) or its ablation.

    Returns:
        ``(B, m, C, H, W)`` candidates, one per defocus level.
    """
    return bank(feat)


def candidate_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int) -> Tensor:
    """Per-token softmax attention across the m candidates: A_j = softmax_j(q·k_j / √d), out = Σ_j A_j v_j.

    Every pixel (or region) is one query token; its keys and values are the m candidates at the same place, so the
    weights say how strongly each defocus level (deconvolution strength) is used there.

    Args:
        query: ``(B, C, h, w)``.
        keys: ``(B, m, C, h, w)`` (same ``h, w`` as ``query``).
        values: ``(B, m, C, H, W)``; when ``(H, W)`` differs from ``(h, w)`` (region tokens) the weights are spread
            over each region by nearest-neighbour upsampling.
        num_heads: C is split into this many heads, each with its own weights.

    Returns:
        ``(B, C, H, W)`` fused values.
    """
    b, m, c, h, w = keys.shape
    d = c // num_heads
    q = query.reshape(b, 1, num_heads, d, h, w)
    k = keys.reshape(b, m, num_heads, d, h, w)
    weights = torch.softmax((q * k).sum(3) / math.sqrt(d), dim=1)  # (B, m, heads, h, w)
    big_h, big_w = values.shape[-2:]
    if (big_h, big_w) != (h, w):
        weights = F.interpolate(weights.reshape(b, m * num_heads, h, w), size=(big_h, big_w), mode='nearest')
        weights = weights.reshape(b, m, num_heads, big_h, big_w)
    v = values.reshape(b, m, num_heads, d, big_h, big_w)
    return (weights[:, :, :, None] * v).sum(1).reshape(b, c, big_h, big_w)


class CandidateAttentionFusion(nn.Module):
    """Transformer-style fusion of m candidates: pre-norm cross-attention (query = features, keys/values = the m
    defocus candidates) with a residual, then a pre-norm feed-forward block with a residual.

    The candidates are formed in key/value space: a 1×1 projection commutes with a depthwise spatial kernel,
    W·(k_j * F) = k_j * (W·F), so the bank blurs the projected keys and values K = W_k·LN(F), V = W_v·LN(F) (2C
    channels) instead of projecting m blurred copies of F (2m 1×1 convolutions and m LayerNorms over C channels).

    Args:
        channels: Number of feature channels C.
        num_heads: Attention heads (must divide C).
        region_size: Tokens are ``region_size²`` pixel regions (average-pooled queries and keys); 1 = per pixel.
        ffn_expand: Hidden width of the feed-forward block, as a multiple of C.
    """

    def __init__(self, channels: int, num_heads: int = 1, region_size: int = 1, ffn_expand: int = 2) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f'num_heads must divide the channel count: got {num_heads} heads for {channels} channels')
        self.num_heads = num_heads
        self.region_size = region_size
        self.norm_q = LayerNorm2d(channels)
        self.norm_kv = LayerNorm2d(channels)
        self.to_q = nn.Conv2d(channels, channels, 1)
        self.to_kv = nn.Conv2d(channels, 2 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.norm_ffn = LayerNorm2d(channels)
        self.ffn = nn.Sequential(
            nn.Conv2d(channels, channels * ffn_expand, 1), nn.GELU(), nn.Conv2d(channels * ffn_expand, channels, 1))

    def _tokens(self, x: Tensor) -> Tensor:
        if self.region_size == 1:
            return x
        return F.avg_pool2d(x, self.region_size, ceil_mode=True)

    def forward(self, query: Tensor, feat: Tensor, bank: nn.Module) -> Tensor:
        """``query`` and ``feat`` ``(B, C, H, W)``, ``bank`` the PSF kernel bank → ``(B, C, H, W)``.

        Without gradients (inference) per-pixel tokens take :meth:`_attend_channels_last`, the same arithmetic in a
        faster memory layout; training and region tokens take the reference layout below.
        """
        if self.region_size == 1 and isinstance(bank, PhysicalKernelBank) and not torch.is_grad_enabled():
            fused = query + self.proj(self._attend_channels_last(query, feat, bank))
            return fused + self.ffn(self.norm_ffn(fused))
        b, c, h, w = feat.shape
        keys, values = self.to_kv(self.norm_kv(feat)).chunk(2, dim=1)
        keys, values = psf_candidates(keys, bank), psf_candidates(values, bank)  # (B, m, C, H, W): k_j * K, k_j * V
        m = keys.shape[1]
        keys = self._tokens(keys.reshape(b * m, c, h, w))
        q = self._tokens(self.to_q(self.norm_q(query)))
        fused = query + self.proj(
            candidate_attention(q, keys.reshape(b, m, c, *keys.shape[-2:]), values, self.num_heads))
        return fused + self.ffn(self.norm_ffn(fused))

    def _attend_channels_last(self, query: Tensor, feat: Tensor, bank: 'PhysicalKernelBank') -> Tensor:
        """:func:`psf_candidates` of K and V and :func:`candidate_attention`, per pixel, in channels-last layout.

        A depthwise convolution blurs the C key (and the C value) channels with all m kernels into a channels-last
        ``(B, H, W, C, m)`` block (on CPUs faster than m single-channel passes), and the attention reads every
        pixel's m candidates from contiguous memory as small matrix products, so nothing is copied back to
        ``(B, m, C, H, W)``.
        """
        b, c, h, w = feat.shape
        heads, d = self.num_heads, c // self.num_heads
        keys, values = (channels_last_convolve_bank(x, bank.weight[:, 0]).reshape(b, h, w, heads, d, -1)
                        for x in self.to_kv(self.norm_kv(feat)).chunk(2, dim=1))  # (B, H, W, heads, d, m)
        q = self.to_q(self.norm_q(query)).permute(0, 2, 3, 1).reshape(b, h, w, heads, 1, d)
        weights = torch.softmax(torch.matmul(q, keys) / math.sqrt(d), dim=-1)  # (B, H, W, heads, 1, m)
        fused = torch.matmul(values, weights.transpose(-1, -2))  # (B, H, W, heads, d, 1)
        return fused.reshape(b, h, w, c).permute(0, 3, 1, 2)


class ConcatConvFusion(nn.Module):
    """Ablation of :class:`CandidateAttentionFusion`: concatenate the query and the m candidates k_j * F, then a
    1×1 conv.

    Args:
        channels: Number of feature channels C.
        num_kernels: m, the number of candidates.
    """

    def __init__(self, channels: int, num_kernels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * (num_kernels + 1), channels, 1)

    def forward(self, query: Tensor, feat: Tensor, bank: nn.Module) -> Tensor:
        candidates = psf_candidates(feat, bank)
        b, m, c, h, w = candidates.shape
        return query + self.conv(torch.cat([query, candidates.reshape(b, m * c, h, w)], dim=1))
