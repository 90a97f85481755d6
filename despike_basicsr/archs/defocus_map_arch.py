"""DefocusMapNet: how blurred each pixel of a spike stream's scene is, as a Gaussian σ in image pixels.

A network of its own, independent of DeSpikeNet's weights: it reads the stream with DeSpikeNet's front end
(:func:`~despike_basicsr.archs.despike_arch.integrate_windows` over windows centred on ``T // 2``,
:func:`~despike_basicsr.archs.despike_arch.normalise_spike_count`, division by the
:func:`~despike_basicsr.archs.despike_arch.exposure_level` ℓ), so it is blind to the light level and the camera's η, θ.

1. display values ``d_i = (r_i / ℓ)^(1/γ)`` of every window i (γ = 2.2);
2. fixed scale-space features of the longest window: ``log |∇(G_s * d)|`` for Gaussian scales s. A step edge blurred
   by σ has a peak gradient ∝ 1/sqrt(σ² + s²), so differences of these logs across s measure σ independently of
   the edge's contrast (the gradient-ratio principle of classical defocus estimation);
3. a small encoder–decoder (full, 1/2 and 1/4 resolution, dilated convolutions at 1/4) maps them to σ ≥ 0
   (softplus), spreading the estimate from edges into their neighbourhood.

Input ``(B, T, H, W)`` spikes of any T ≥ 1 (windows are clipped to the stream) and any H, W; output ``(B, 1, H, W)``.
Trained by ``scripts/train_defocus_map.py``; docs/pretrained.md ("Defocus map") has the recipe and its scores.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from despike_basicsr.archs.arch_util import gaussian_taps
from despike_basicsr.archs.despike_arch import (centred_window_bounds, exposure_level, integrate_windows,
                                                normalise_spike_count)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation), nn.LeakyReLU(0.1))


@ARCH_REGISTRY.register()
class DefocusMapNet(nn.Module):
    """Per-pixel defocus σ (pixels) from a spike stream.

    Args:
        num_feat: Feature width C at full resolution (2C at 1/2 and 1/4).
        windows: Integration window lengths |T_i| (frames), centred on ``T // 2``; the last (longest) one gives ℓ and
            the scale-space features.
        scales: Gaussian scales s (pixels) of the log-gradient features.
        display_gamma: γ of the display transform of the rates.
        fpn_compensation: Multiply the spikes by the FPN factor γ(x, y) when one is given.
    """

    def __init__(self,
                 num_feat: int = 16,
                 windows: Sequence[int] = (64, 128, 256),
                 scales: Sequence[float] = (1.0, 2.0, 4.0),
                 display_gamma: float = 2.2,
                 fpn_compensation: bool = True) -> None:
        super().__init__()
        if not windows or any(int(w) < 1 for w in windows):
            raise ValueError(f'DefocusMapNet: windows must be positive frame counts, got {windows}')
        self.windows = sorted(int(w) for w in windows)
        self.scales = [float(s) for s in scales]
        self.display_gamma = float(display_gamma)
        self.fpn_compensation = bool(fpn_compensation)
        self.exposure_norm = True  # reconstruct_tiled hands every tile the whole frame's exposure level
        for k, s in enumerate(self.scales):
            self.register_buffer(f'gauss{k}', gaussian_taps(s), persistent=False)
        c = num_feat
        self.head = _conv(len(self.windows) + len(self.scales), c)
        self.down1 = nn.Sequential(_conv(c, 2 * c, stride=2), _conv(2 * c, 2 * c))
        self.down2 = nn.Sequential(_conv(2 * c, 2 * c, stride=2), _conv(2 * c, 2 * c, dilation=2),
                                   _conv(2 * c, 2 * c, dilation=4), _conv(2 * c, 2 * c))
        self.up2 = _conv(4 * c, 2 * c)
        self.up1 = _conv(3 * c, c)
        self.tail = nn.Conv2d(c, 1, 3, padding=1)

    @property
    def frames_needed(self) -> int:
        """Frames around the target that the network reads (its longest window)."""
        return self.windows[-1]

    @property
    def min_stream_len(self) -> int:
        """Any stream of at least one frame is accepted (windows are clipped to it)."""
        return 1

    size_multiple = 1

    def window_bounds(self, length: int) -> List[Tuple[int, int]]:
        """The ``[start, end)`` frames of every window for a stream of ``length`` steps."""
        return centred_window_bounds(length, self.windows)

    def rates(self, spikes: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
        """``(B, N_t, H, W)`` firing rates of every window (γ applied when ``fpn_compensation``)."""
        if spikes.dim() != 4:
            raise ValueError(f'DefocusMapNet expects spikes shaped (B, T, H, W), got shape {tuple(spikes.shape)}')
        bounds = self.window_bounds(spikes.shape[1])
        gamma = gamma.to(spikes.device).float() if (gamma is not None and self.fpn_compensation) else None
        return normalise_spike_count(integrate_windows(spikes, bounds, gamma), bounds)

    def stream_exposure(self, spikes: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
        """``(B, 1, 1, 1)`` exposure levels ℓ (mean rate of the longest window), for tiled use."""
        return exposure_level(self.rates(spikes, gamma)[:, -1])

    def features(self, display: Tensor) -> Tensor:
        """Display values and ``log |∇(G_s * d)|`` of the longest window for every scale s: ``(B, N_t + N_s, H, W)``."""
        image = display[:, -1:]
        feats = [display]
        for k in range(len(self.scales)):
            g = getattr(self, f'gauss{k}')
            r = g.numel() // 2
            smooth = F.pad(image, (r, r, r, r), mode='replicate')
            smooth = F.conv2d(F.conv2d(smooth, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
            padded = F.pad(smooth, (1, 1, 1, 1), mode='replicate')
            gy = 0.5 * (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1])
            gx = 0.5 * (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2])
            feats.append(0.5 * torch.log(gx**2 + gy**2 + 1e-6))
        return torch.cat(feats, dim=1)

    def predict(self, rates: Tensor, exposure: Optional[Tensor] = None) -> Tensor:
        """σ map from ``(B, N_t, H, W)`` rates (:meth:`rates`); ``exposure`` overrides their own level ℓ."""
        level = exposure_level(rates[:, -1]) if exposure is None else exposure.reshape(-1, 1, 1, 1).to(rates)
        display = (rates / level).clamp_min(0).pow(1.0 / self.display_gamma)
        full = self.head(self.features(display))
        half = self.down1(full)
        quarter = self.down2(half)
        half = self.up2(torch.cat([half, F.interpolate(quarter, size=half.shape[-2:], mode='bilinear')], dim=1))
        full = self.up1(torch.cat([full, F.interpolate(half, size=full.shape[-2:], mode='bilinear')], dim=1))
        return F.softplus(self.tail(full))

    def forward(self, spikes: Tensor, gamma: Optional[Tensor] = None, exposure: Optional[Tensor] = None) -> Tensor:
        """Defocus σ in pixels at every pixel of the frame ``T // 2``.

        Args:
            spikes: ``(B, T, H, W)`` 0/1 stream (uint8, bool or float).
            gamma: ``(B or 1, 1, H, W)`` FPN factor, or ``None``.
            exposure: ``(B, 1, 1, 1)`` levels ℓ of the whole frame when ``spikes`` is one tile of it.

        Returns:
            ``(B, 1, H, W)`` σ ≥ 0.
        """
        return self.predict(self.rates(spikes, gamma), exposure)
