"""Lens-like defocus PSFs, for occlusion-aware layered rendering with any PSF family.

Real lenses do not blur with Gaussians. The geometric PSF of a defocused point is the image of the aperture stop,
scaled to the circle of confusion: a disc for a round iris, a polygon for a bladed one, clipped to a "cat's eye" by
mechanical vignetting towards the corners of the frame, with a bright or a soft rim from spherical aberration (which
swaps sides in front of and behind the focus plane). :class:`LensPSF` draws those, anti-aliased by supersampling;
:func:`~.optics.render_layered_defocus` composites depth layers with any such PSF, and :func:`psf_sigma` gives the one
number a PSF of any shape maps to (its per-axis standard deviation, what a Gaussian of the same second moment would
have). This module builds on :mod:`.optics` (Gaussian kernels, FFT convolution, the layered rendering).

Everything is numpy; images are (H, W) linear light.
"""
import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from .optics import convolve_same, gaussian_kernel
# The thin-lens Gaussian PSF and the layered rendering live in optics (which imports nothing from here); they are named
# here too, beside the lens-shaped PSFs they are used with.
from .optics import gaussian_psf_for_coc, render_layered_defocus  # noqa: F401

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
            kernel = np.maximum(convolve_same(kernel, gaussian_kernel(self.edge_softness)), 0.0)  # FFT round-off
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


def _delta() -> np.ndarray:
    return np.ones((1, 1), np.float64)
