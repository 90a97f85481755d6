"""Lens-like defocus PSFs and occlusion-aware layered rendering with any PSF family.

Real lenses do not blur with Gaussians. The geometric PSF of a defocused point is the image of the aperture stop,
scaled to the circle of confusion: a disc for a round iris, a polygon for a bladed one, clipped to a "cat's eye" by
mechanical vignetting towards the corners of the frame, with a bright or a soft rim from spherical aberration (which
swaps sides in front of and behind the focus plane). :class:`LensPSF` draws those, anti-aliased by supersampling;
:func:`render_layered_defocus` composites depth layers with any such PSF, and :func:`psf_sigma` gives the one number
a PSF of any shape maps to (its per-axis standard deviation, what a Gaussian of the same second moment would have).

Everything is numpy; images are (H, W) linear light.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

#: Supersampling factor of the PSF rasteriser (anti-aliased aperture edges).
PSF_SUPERSAMPLE = 4
#: PSF families :func:`draw_lens_psf` knows (``gaussian`` is the thin-lens Gaussian of :mod:`.optics`).
PSF_FAMILIES = ('gaussian', 'lens')


@dataclass(frozen=True)
class LensPSF:
    """The shape of one lens' defocus PSF; :meth:`kernel` scales it to a circle of confusion.

    Attributes:
        blades: Aperture blades (0 = a round iris, else a regular polygon with this many sides, ≥ 3).
        rotation: Polygon rotation in radians.
        rim: Spherical-aberration profile behind the focus plane: intensity ∝ max(0, 1 + rim·(2ρ² − 1)) at the
            normalised radius ρ, so rim > 0 gives a bright rim and rim < 0 a soft, centre-weighted disc. In front of
            the focus plane the sign flips (under- and over-corrected sides of the caustic swap).
        edge_softness: Gaussian softening of the aperture edge in pixels (diffraction, sensor MTF).
        vignetting: Cat's-eye strength: the aperture is intersected with a second disc of the same radius shifted by
            ``vignetting · |field| · R`` along the field direction (0 = none).
        field: ``(dy, dx)`` position in the frame, each in [−1, 1] from the centre (the direction of the cat's eye).
    """

    blades: int = 0
    rotation: float = 0.0
    rim: float = 0.0
    edge_softness: float = 0.0
    vignetting: float = 0.0
    field: Tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        if self.blades != 0 and self.blades < 3:
            raise ValueError(f'LensPSF: blades must be 0 (round) or >= 3, got {self.blades}')
        if not -1.0 <= self.rim <= 1.0:
            raise ValueError(f'LensPSF: rim must lie in [-1, 1], got {self.rim}')
        if self.edge_softness < 0 or self.vignetting < 0:
            raise ValueError('LensPSF: edge_softness and vignetting must be >= 0')

    def kernel(self, signed_coc_px: float) -> np.ndarray:
        """The PSF for a circle of confusion of diameter ``|signed_coc_px|`` pixels (negative: in front of focus).

        Returns:
            (2r+1, 2r+1) float64 kernel, sum 1; a CoC under one pixel gives a delta.
        """
        radius = 0.5 * abs(float(signed_coc_px))
        if radius < 0.5:
            return _delta()
        half = int(math.ceil(radius + 3 * self.edge_softness + 1))
        s = PSF_SUPERSAMPLE
        coords = (np.arange((2 * half + 1) * s) + 0.5) / s - (half + 0.5)
        yy, xx = np.meshgrid(coords, coords, indexing='ij')
        inside = aperture_mask(yy, xx, radius, self.blades, self.rotation)
        if self.vignetting > 0:
            fy, fx = self.field
            shift = self.vignetting * radius * min(math.hypot(fy, fx), 1.0)
            norm = max(math.hypot(fy, fx), 1e-9)
            inside &= (yy - shift * fy / norm)**2 + (xx - shift * fx / norm)**2 <= radius**2
        rim = self.rim if signed_coc_px >= 0 else -self.rim
        rho2 = (yy**2 + xx**2) / radius**2
        weight = np.where(inside, np.maximum(1.0 + rim * (2.0 * rho2 - 1.0), 0.0), 0.0)
        kernel = weight.reshape(2 * half + 1, s, 2 * half + 1, s).mean(axis=(1, 3))
        if self.edge_softness > 0:
            kernel = np.maximum(convolve_same(kernel, _gaussian_2d(self.edge_softness)), 0.0)  # FFT round-off
        total = kernel.sum()
        return kernel / total if total > 0 else _delta()


def aperture_mask(yy: np.ndarray, xx: np.ndarray, radius: float, blades: int, rotation: float) -> np.ndarray:
    """Points inside a disc of ``radius`` (``blades`` = 0) or the regular ``blades``-gon inscribed in it.

    A regular n-gon of circumradius R holds the points whose distance along the nearest edge normal is at most the
    apothem:  ``r·cos(((θ − φ) mod 2π/n) − π/n) ≤ R·cos(π/n)``.
    """
    r = np.hypot(yy, xx)
    if blades == 0:
        return r <= radius
    sector = 2.0 * math.pi / blades
    theta = np.mod(np.arctan2(yy, xx) - rotation, sector) - sector / 2.0
    return r * np.cos(theta) <= radius * math.cos(math.pi / blades)


def psf_sigma(kernel: np.ndarray) -> float:
    """Per-axis standard deviation of a PSF:  ``σ = sqrt(Σ k(x, y)·((x − x̄)² + (y − ȳ)²) / 2)``  (k sums to 1).

    It is the σ of the Gaussian with the same second moment, so a uniform disc of radius r maps to r/2 (the rule of
    :func:`~despike_basicsr.spike.optics.coc_to_sigma`) and PSFs of every shape share one blur scale.
    """
    k = np.asarray(kernel, dtype=np.float64)
    k = k / k.sum()
    yy, xx = np.mgrid[0:k.shape[0], 0:k.shape[1]].astype(np.float64)
    cy, cx = float((k * yy).sum()), float((k * xx).sum())
    return float(math.sqrt(max((k * ((yy - cy)**2 + (xx - cx)**2)).sum() / 2.0, 0.0)))


def draw_lens_psf(rng: np.random.Generator, field: Tuple[float, float] = (0.0, 0.0)) -> LensPSF:
    """A random lens: round or 5-9 bladed iris, rim from soft to bright, some edge softness and cat's-eye vignetting.

    Args:
        rng: Random generator.
        field: Where in the frame the rendered region lies, ``(dy, dx)`` in [−1, 1] (sets the cat's-eye direction).
    """
    round_iris = rng.random() < 0.5
    return LensPSF(blades=0 if round_iris else int(rng.integers(5, 10)),
                   rotation=float(rng.uniform(0, 2 * math.pi)),
                   rim=float(rng.uniform(-0.6, 0.8)),
                   edge_softness=float(rng.uniform(0.0, 0.8)),
                   vignetting=float(rng.uniform(0.0, 0.7)) if rng.random() < 0.6 else 0.0,
                   field=(float(field[0]), float(field[1])))


def gaussian_psf_for_coc(signed_coc_px: float) -> np.ndarray:
    """The thin-lens Gaussian PSF of a CoC diameter (σ from :func:`~despike_basicsr.spike.optics.coc_to_sigma`)."""
    from .optics import coc_to_sigma, gaussian_kernel
    return gaussian_kernel(float(coc_to_sigma(abs(signed_coc_px))))


def render_layered_defocus(image: np.ndarray,
                           signed_coc_px: np.ndarray,
                           psf_for_coc: Callable[[float], np.ndarray],
                           num_layers: int = 16,
                           layer_coc: Callable[[np.ndarray], float] = np.median) -> np.ndarray:
    """Spatially varying defocus by occlusion-aware layered compositing, with any PSF family.

    Pixels are split into ``num_layers`` equal-width bins of their signed CoC (negative in front of the focus plane,
    so the bins run from near to far). Each layer's image and mask are blurred with its PSF k_l, composited back to
    front:  ``C ← C·(1 − M_l*k_l) + (I·M_l)*k_l``,  ``α ← α·(1 − M_l*k_l) + M_l*k_l``;  result ``C / α``.
    A layer's PSF is that of ``layer_coc`` (default the median) of its pixels' signed CoC.

    Args:
        image: (H, W) linear image.
        signed_coc_px: (H, W) signed CoC diameter in pixels.
        psf_for_coc: Signed CoC diameter → normalised 2-D kernel (e.g. :meth:`LensPSF.kernel`).
        num_layers: Number of depth layers.
        layer_coc: The CoC a layer's PSF is drawn for, from its pixels' signed CoCs.

    Returns:
        (H, W) float64 defocused image.
    """
    img = np.asarray(image, dtype=np.float64)
    signed = np.asarray(signed_coc_px, dtype=np.float64)
    if img.ndim != 2 or signed.shape != img.shape:
        raise ValueError(f'render_layered_defocus: image and CoC map must both be (H, W) of one shape, found '
                         f'{img.shape} and {signed.shape}')
    if not np.all(np.isfinite(signed)):
        raise ValueError('render_layered_defocus: CoC map holds non-finite values')
    if num_layers < 1:
        raise ValueError(f'render_layered_defocus: num_layers must be >= 1, got {num_layers}')
    lo, hi = float(signed.min()), float(signed.max())
    if hi > lo:
        layer = np.minimum(((signed - lo) / (hi - lo) * num_layers).astype(np.int64), num_layers - 1)
    else:
        layer = np.zeros(signed.shape, np.int64)
    color = np.zeros_like(img)
    alpha = np.zeros_like(img)
    for index in range(num_layers - 1, -1, -1):  # farthest first
        mask = layer == index
        if not mask.any():
            continue
        kernel = psf_for_coc(float(layer_coc(signed[mask])))
        soft = np.minimum(convolve_same(mask.astype(np.float64), kernel), 1.0)  # round-off must not pass 1
        color = color * (1.0 - soft) + convolve_same(img * mask, kernel)
        alpha = alpha * (1.0 - soft) + soft
    result = color / np.maximum(alpha, 1e-12)
    return np.maximum(result, 0.0) if img.min() >= 0 else result


def convolve_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution with mirrored borders (numpy ``'symmetric'``), output the size of ``image`` (FFT based)."""
    kh, kw = kernel.shape
    if kh == 1 and kw == 1:
        return image * float(kernel[0, 0])
    ry, rx = kh // 2, kw // 2
    padded = np.pad(image, ((ry, ry), (rx, rx)), mode='symmetric')
    shape = (padded.shape[0] + kh - 1, padded.shape[1] + kw - 1)
    full = np.fft.irfft2(np.fft.rfft2(padded, shape) * np.fft.rfft2(kernel, shape), shape)
    out = full[2 * ry:2 * ry + image.shape[0], 2 * rx:2 * rx + image.shape[1]]
    if image.min() >= 0 and kernel.min() >= 0:  # FFT round-off leaves ~1e-16 negatives where light is >= 0
        out = np.maximum(out, 0.0)
    return out


def _delta() -> np.ndarray:
    return np.ones((1, 1), np.float64)


def _gaussian_2d(sigma: float, radius: Optional[int] = None) -> np.ndarray:
    r = int(math.ceil(3 * sigma)) if radius is None else radius
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / max(sigma, 1e-9))**2)
    g /= g.sum()
    return np.outer(g, g)
