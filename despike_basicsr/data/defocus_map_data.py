"""Scenes whose defocus is known at every pixel: the truth that supervises and scores :class:`DefocusMapNet`.

A sharp photograph, a random depth map (:func:`~despike_basicsr.data.scenes.synthetic_depth_map`), a thin-lens signed
circle-of-confusion map over it (:func:`~despike_basicsr.data.natural_spike_dataset.signed_coc_map`) and occlusion-aware
layered rendering with a PSF family (:func:`~despike_basicsr.spike.optics.render_layered_defocus`) give the defocused
image. The true blur of a pixel is the second-moment σ (:func:`~despike_basicsr.spike.lens_psf.psf_sigma`: the σ of the
Gaussian with the same per-axis variance) of the PSF its CoC selects:

- Gaussian family (:func:`~despike_basicsr.spike.optics.gaussian_psf_for_coc`): the PSF is the Gaussian of
  σ = max(|c| − 1, 0) / 4 (:func:`~despike_basicsr.spike.optics.coc_to_sigma`), and its moment is that σ (within
  1 %, the kernel is cut at 3σ);
- lens family (discs, polygons, bright or soft rims, cat's eyes): a uniform disc of diameter c gives c / 4, a bright rim
  a little more, a soft centre-weighted disc less. One rule for every shape keeps "σ in pixels" one physical scale.
"""
from typing import Callable, Dict, Sequence, Tuple

import cv2
import numpy as np

from despike_basicsr.data.natural_spike_dataset import signed_coc_map
from despike_basicsr.data.scenes import synthetic_depth_map
from despike_basicsr.spike import lens_psf, optics

PsfForCoc = Callable[[float], np.ndarray]


def sigma_for_coc(signed_coc: np.ndarray, psf_for_coc: PsfForCoc, samples: int = 65) -> np.ndarray:
    """True σ per pixel: :func:`~despike_basicsr.spike.lens_psf.psf_sigma` of ``psf_for_coc(c)``.

    The moment is tabulated at ``samples`` CoC values spanning the map (signed: a lens' rim flips sides at the focus
    plane) and interpolated linearly.

    Args:
        signed_coc: ``(H, W)`` signed CoC diameters in pixels.
        psf_for_coc: Signed CoC diameter → normalised kernel.
        samples: Table size.

    Returns:
        ``(H, W)`` float32 σ in pixels.
    """
    c = np.asarray(signed_coc, dtype=np.float64)
    grid = np.linspace(float(c.min()), float(c.max()), samples) if c.max() > c.min() else np.array([float(c.min())])
    table = np.array([lens_psf.psf_sigma(psf_for_coc(float(v))) for v in grid])
    if grid.size == 1:
        return np.full(c.shape, table[0], np.float32)
    return np.interp(c, grid, table).astype(np.float32)


def texture_mask(display: np.ndarray, fraction: float = 0.02, smoothing: float = 2.0) -> np.ndarray:
    """Pixels where blur is observable: the Gaussian-smoothed gradient magnitude of the sharp display image exceeds
    ``fraction`` of the image's range (max − min).

    Args:
        display: ``(H, W)`` display-referred sharp image.
        fraction: Threshold as a share of the range (2 %).
        smoothing: σ in pixels of the Gaussian applied to the gradient magnitude.

    Returns:
        ``(H, W)`` bool mask.
    """
    image = np.asarray(display, dtype=np.float32)
    gy, gx = np.gradient(image)
    magnitude = cv2.GaussianBlur(np.hypot(gx, gy), (0, 0), smoothing, borderType=cv2.BORDER_REFLECT)
    return magnitude > fraction * float(image.max() - image.min())


def defocus_scene(sharp: np.ndarray,
                  rng: np.random.Generator,
                  coc_near: float,
                  coc_far: float,
                  focus_inside: bool,
                  psf_for_coc: PsfForCoc = optics.gaussian_psf_for_coc,
                  num_layers: int = 12) -> Tuple[np.ndarray, np.ndarray]:
    """Layered defocus of a linear sharp image over a random depth map, with the true σ of every pixel.

    Args:
        sharp: ``(H, W)`` linear intensity.
        rng: Random generator (depth map and focus plane).
        coc_near: |CoC| (px) at the nearest depth when the focus plane lies in front of the scene.
        coc_far: Largest |CoC| (px) in the scene.
        focus_inside: Put the focus plane inside the scene (both sides blur) instead of in front of it.
        psf_for_coc: PSF family (signed CoC → kernel).
        num_layers: Depth layers of the rendering.

    Returns:
        ``(blurred (H, W) float32, sigma (H, W) float32)``.
    """
    depth = synthetic_depth_map(*sharp.shape, rng)
    signed = signed_coc_map(depth, coc_near, coc_far, focus_inside, rng)
    blurred = optics.render_layered_defocus(sharp, signed, psf_for_coc, num_layers=num_layers)
    return np.clip(blurred, 0.0, None).astype(np.float32), sigma_for_coc(signed, psf_for_coc)  # FFT round-off < 0


def draw_training_scene(sharp: np.ndarray, rng: np.random.Generator, ranges: Dict[str, Sequence[float]],
                        lens_probability: float) -> Tuple[np.ndarray, np.ndarray]:
    """One training draw of :func:`defocus_scene`: CoC ranges, focus plane and PSF family at random.

    ``ranges`` holds ``coc_near`` and ``coc_far`` (px, uniform) and ``focus_inside`` (a probability); with probability
    ``lens_probability`` the PSF is a random lens (:func:`~despike_basicsr.spike.lens_psf.draw_lens_psf`), else
    Gaussian.
    """
    coc_near = float(rng.uniform(*ranges['coc_near']))
    coc_far = float(rng.uniform(*ranges['coc_far']))
    focus_inside = bool(rng.random() < float(ranges['focus_inside']))
    psf: PsfForCoc = optics.gaussian_psf_for_coc
    if rng.random() < lens_probability:
        psf = lens_psf.draw_lens_psf(rng, (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))).kernel
    return defocus_scene(sharp, rng, coc_near, coc_far, focus_inside, psf)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size``×``size`` crop at a random position (the whole image when it is smaller)."""
    height, width = image.shape
    y0 = int(rng.integers(0, max(height - size, 0) + 1))
    x0 = int(rng.integers(0, max(width - size, 0) + 1))
    return image[y0:y0 + size, x0:x0 + size]


def lower_contrast(linear: np.ndarray, rng: np.random.Generator, probability: float = 0.5,
                   low: float = 0.3) -> np.ndarray:
    """With ``probability``, blend the image towards its mean by a factor in [``low``, 1] (haze, flat light), so
    the estimator learns blur rather than contrast."""
    if rng.random() >= probability:
        return linear
    keep = float(rng.uniform(low, 1.0))
    return (keep * linear + (1.0 - keep) * float(linear.mean())).astype(np.float32)
