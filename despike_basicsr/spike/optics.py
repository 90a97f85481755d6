"""Thin-lens defocus: circle of confusion, Gaussian PSF, uniform and depth-varying blur, layered rendering with any
PSF family, display gamma.

Lengths (depth, focus distance, focal length, aperture, pixel pitch) share one unit, e.g. metres. Images are (H, W)
float arrays of linear light unless a function says otherwise.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ._torch import is_tensor


def image_distance(depth, focal_length: float):
    """Thin lens  ``1/f = 1/u + 1/v``  solved for the image distance:  ``v = f·d / (d - f)``  (needs d > f)."""
    d = np.asarray(depth, dtype=np.float64)
    if np.any(d <= focal_length):
        raise ValueError(f'image_distance: every depth must exceed the focal length {focal_length}, '
                         f'found min {d.min()}')
    return focal_length * d / (d - focal_length)


def coc_diameter(depth,
                 focus_distance: float,
                 focal_length: float,
                 f_number: Optional[float] = None,
                 aperture: Optional[float] = None):
    """Circle-of-confusion diameter on the sensor:  ``c = D·f·|d - d_f| / (d·(d_f - f))``,  ``D = f / N``.

    This is ``D·|v - v_f| / v`` with the thin-lens image distances of depth d and of the focus distance d_f.

    Args:
        depth: Object depth d (scalar or array; arrays broadcast).
        focus_distance: Focus distance d_f (> f).
        focal_length: Focal length f.
        f_number: N, giving the aperture D = f / N.
        aperture: Aperture diameter D, instead of ``f_number``.

    Returns:
        c in the unit of ``focal_length``.
    """
    if (f_number is None) == (aperture is None):
        raise ValueError('coc_diameter: give exactly one of f_number and aperture')
    if focus_distance <= focal_length:
        raise ValueError(f'coc_diameter: focus distance {focus_distance} must exceed the focal length {focal_length}')
    d = np.asarray(depth, dtype=np.float64)
    if np.any(d <= focal_length):
        raise ValueError(f'coc_diameter: every depth must exceed the focal length {focal_length}, found min {d.min()}')
    diameter = focal_length / f_number if aperture is None else aperture
    return diameter * focal_length * np.abs(d - focus_distance) / (d * (focus_distance - focal_length))


def coc_radius_px(depth, focus_distance: float, focal_length: float, f_number: float, pixel_pitch: float):
    """Circle-of-confusion radius in pixels:  ``r_px = c / 2 / pixel_pitch``."""
    return coc_diameter(depth, focus_distance, focal_length, f_number=f_number) / 2.0 / pixel_pitch


def coc_to_sigma(coc_diameter_px):
    """Gaussian PSF width from the CoC diameter in pixels:  ``σ = max(c_px - 1, 0) / 4``  (the SYNDOF rule).

    Why: a uniform disc of diameter c has a per-axis standard deviation of c/4 (= r/2), so ``c/4`` moment-matches
    the Gaussian to the geometric PSF; subtracting one pixel treats a CoC no wider than a pixel as sharp (the pixel
    itself integrates that much), which keeps the in-focus layer exactly sharp and matches the SYNDOF/DPDD synthesis
    practice that defocus-deblurring data follows.
    """
    return np.maximum(np.asarray(coc_diameter_px, dtype=np.float64) - 1.0, 0.0) / 4.0


@dataclass
class ThinLens:
    """A thin lens focused at ``focus_distance``, imaged on a sensor of ``pixel_pitch`` (all lengths in one unit)."""

    focal_length: float
    f_number: float
    focus_distance: float
    pixel_pitch: float

    def __post_init__(self):
        for name in ('focal_length', 'f_number', 'focus_distance', 'pixel_pitch'):
            if not getattr(self, name) > 0:
                raise ValueError(f'ThinLens: {name} must be > 0, got {getattr(self, name)}')
        if self.focus_distance <= self.focal_length:
            raise ValueError(f'ThinLens: focus_distance {self.focus_distance} must exceed focal_length '
                             f'{self.focal_length}')

    @property
    def aperture(self) -> float:
        """Aperture diameter D = f / N."""
        return self.focal_length / self.f_number

    def coc_px(self, depth):
        """CoC diameter in pixels at ``depth``."""
        return coc_diameter(depth, self.focus_distance, self.focal_length, f_number=self.f_number) / self.pixel_pitch

    def signed_coc_px(self, depth):
        """CoC diameter in pixels, negative in front of the focus plane (monotonic in depth, used for layering)."""
        d = np.asarray(depth, dtype=np.float64)
        return np.sign(d - self.focus_distance) * self.coc_px(d)

    def sigma_px(self, depth):
        """Gaussian σ in pixels at ``depth`` (:func:`coc_to_sigma` of :meth:`coc_px`)."""
        return coc_to_sigma(self.coc_px(depth))


def gaussian_kernel(sigma: float, radius: Optional[int] = None) -> np.ndarray:
    """Normalised 2-D Gaussian PSF  ``G(x, y; σ) ∝ exp(-(x² + y²) / (2σ²))``  on a (2r+1, 2r+1) grid, sum 1.

    ``radius`` defaults to ``ceil(3σ)``; σ = 0 gives a delta (a single 1 at the centre).
    """
    if sigma < 0:
        raise ValueError(f'gaussian_kernel: sigma must be >= 0, got {sigma}')
    one_d = _gaussian_1d(sigma, radius)
    return np.outer(one_d, one_d)


def _gaussian_1d(sigma: float, radius: Optional[int] = None) -> np.ndarray:
    r = int(math.ceil(3.0 * sigma)) if radius is None else int(radius)
    if r < 0:
        raise ValueError(f'gaussian_kernel: radius must be >= 0, got {radius}')
    x = np.arange(-r, r + 1, dtype=np.float64)
    if sigma == 0:
        k = (x == 0).astype(np.float64)
    else:
        k = np.exp(-0.5 * (x / sigma)**2)
    return k / k.sum()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur the last two axes with a Gaussian of ``sigma`` pixels (separable, mirrored borders).

    Borders mirror with the edge pixel repeated (numpy ``'symmetric'``, OpenCV ``BORDER_REFLECT``): with a
    symmetric kernel this keeps the image sum, and so its mean, exactly.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim < 2:
        raise ValueError(f'gaussian_blur: expected an (H, W) image, found shape {img.shape}')
    if sigma == 0:
        return img.copy()
    k = _gaussian_1d(sigma)
    r = len(k) // 2
    out = img
    for axis in (-2, -1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode='symmetric')
        n = out.shape[axis]
        acc = np.zeros_like(out)
        window = [slice(None)] * img.ndim
        for i, weight in enumerate(k):
            window[axis] = slice(i, i + n)
            acc += weight * padded[tuple(window)]
        out = acc
    return out


def render_depth_defocus(image: np.ndarray, depth: np.ndarray, lens: ThinLens, num_layers: int = 16) -> np.ndarray:
    """Spatially varying defocus from a depth map by occlusion-aware layered compositing (SYNDOF-style).

    Pixels are split into ``num_layers`` layers by their signed CoC (equal-width bins). Each layer's image and mask
    are blurred with the layer's PSF and composited from back to front:
    ``C ← C·(1 - M_l*G_l) + (I·M_l)*G_l``,  ``α ← α·(1 - M_l*G_l) + M_l*G_l``;  result ``C / α``.
    Nearer layers blur over farther ones; dividing by the accumulated blurred mask keeps a uniform image uniform
    (energy preserving). A layer's σ comes from the median |CoC| of its pixels, so a layer holding the focus depth
    gets σ = 0 and stays sharp.

    Args:
        image: (H, W) linear image.
        depth: (H, W) depth map in the lens' length unit (every depth > focal length).
        lens: The :class:`ThinLens`.
        num_layers: Number of depth layers.

    Returns:
        (H, W) float64 defocused image.
    """
    dep = np.asarray(depth, dtype=np.float64)
    if dep.shape != np.shape(image) or np.ndim(image) != 2:
        raise ValueError(f'render_depth_defocus: image and depth must both be (H, W) of one shape, found '
                         f'{np.shape(image)} and {dep.shape}')
    if not np.all(np.isfinite(dep)):
        raise ValueError('render_depth_defocus: depth map holds non-finite values')
    return render_layered_defocus(image, lens.signed_coc_px(dep), gaussian_psf_for_coc, num_layers,
                                  layer_coc=lambda coc: np.median(np.abs(coc)))


def gaussian_psf_for_coc(signed_coc_px: float) -> np.ndarray:
    """The thin-lens Gaussian PSF of a CoC diameter (σ from :func:`coc_to_sigma`): a PSF family for
    :func:`render_layered_defocus`."""
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
        psf_for_coc: Signed CoC diameter → normalised 2-D kernel (:func:`gaussian_psf_for_coc`, or a lens'
            :meth:`~despike_basicsr.spike.lens_psf.LensPSF.kernel`).
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


def linear_to_display(x, gamma: float = 2.2):
    """Linear light to display values:  ``y = clip(x, 0, 1)^(1/γ)``  (numpy or torch)."""
    if is_tensor(x):
        return x.clamp(0.0, 1.0)**(1.0 / gamma)
    return np.clip(x, 0.0, 1.0)**(1.0 / gamma)


def display_to_linear(x, gamma: float = 2.2):
    """Display values to linear light:  ``x = clip(y, 0, 1)^γ``  (numpy or torch)."""
    if is_tensor(x):
        return x.clamp(0.0, 1.0)**gamma
    return np.clip(x, 0.0, 1.0)**gamma
