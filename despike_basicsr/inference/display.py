"""From a reconstruction to pixels: exposure, highlight roll-off and the file formats that keep the data.

A spike camera has no shutter to set: the same scene lit 4× more fires 4× more spikes, and an exposure-normalised
DeSpike shows it as its reference camera would (brighter by 4^(1/γ)). Written to an 8-bit PNG as it is, a bright
scene clips and a dim one is dark. :func:`expose` maps any reconstruction to display values:

- ``'auto'`` (default): a robust exposure estimate, the median linear intensity of the frame, is mapped to a fixed
  mid-grey (:data:`MID_GREY`, linear), and display values above :data:`KNEE` roll off smoothly towards 1
  (:func:`highlight_rolloff`), so the same scene is shown at the same brightness at any light level and only what
  is many times brighter than the frame's median approaches white;
- ``'fixed'``: the reference camera's scale as it is (values above 1 clip in 8-bit formats);
- a number g: the reference scale times a linear gain g, with the same roll-off as ``'auto'``.

Formats (:data:`FORMATS`): ``png8`` and ``png16`` store the exposed, rolled-off image; ``npy`` and ``tiff`` store
float32 display values after the exposure gain and before any roll-off or clipping, so every value is kept.
"""
import math
import os.path as osp
from typing import Optional, Tuple, Union

import cv2
import numpy as np

#: Linear intensity the frame's median is mapped to by ``'auto'`` (the photographic 18 % grey: display 0.46).
MID_GREY = 0.18
#: Display value above which highlights are compressed (below it the mapping is the identity).
KNEE = 0.8
#: Display gamma of every image this package writes.
DISPLAY_GAMMA = 2.2
#: What :func:`expose` and ``--exposure`` accept besides a positive number.
EXPOSURE_MODES = ('auto', 'fixed')
#: Output formats and their file extensions.
FORMATS = {'png8': '.png', 'png16': '.png', 'npy': '.npy', 'tiff': '.tiff'}

Exposure = Union[str, float]


def parse_exposure(value: Union[str, float]) -> Exposure:
    """``'auto'``, ``'fixed'`` or a positive finite gain (a string from the command line is converted)."""
    if isinstance(value, str) and value in EXPOSURE_MODES:
        return value
    try:
        gain = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'exposure must be one of {EXPOSURE_MODES} or a positive number, got {value!r}') from None
    if not (math.isfinite(gain) and gain > 0):
        raise ValueError(f'exposure gain must be a positive finite number, got {value!r}')
    return gain


def auto_exposure_gain(linear: np.ndarray, mid_grey: float = MID_GREY, floor: float = 1e-6) -> float:
    """Linear gain that maps the frame's median intensity to ``mid_grey``:  ``g = mid_grey / median(I)``.

    The median ignores hot pixels, specular highlights and dead regions that would move a mean, and is stable against
    the shot noise of a dim recording. Non-finite pixels are left out; an all-dark frame gets gain 1.
    """
    values = np.asarray(linear, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0
    median = float(np.median(values))
    return mid_grey / median if median > floor else 1.0


def highlight_rolloff(display: np.ndarray, knee: float = KNEE) -> np.ndarray:
    """Soft shoulder:  ``y = d`` for d ≤ k,  ``y = k + (1 − k)·(1 − exp(−(d − k)/(1 − k)))`` above.

    Continuous with slope 1 at the knee and below 1 for every finite d, so highlights compress instead of clipping.
    """
    d = np.asarray(display, dtype=np.float32)
    span = 1.0 - knee
    over = np.maximum(d - knee, 0.0)
    return np.where(d <= knee, d, knee + span * (1.0 - np.exp(-over / span))).astype(np.float32)


def expose(display: np.ndarray, exposure: Exposure = 'auto', gamma: float = DISPLAY_GAMMA,
           gain: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray, float]:
    """Apply an exposure to a display-referred reconstruction (the reference camera's scale).

    Args:
        display: (H, W) display values, possibly above 1 (an unclipped network output, or a classical
            reconstruction's rate·θ/η through the display gamma).
        exposure: ``'auto'``, ``'fixed'`` or a linear gain (:func:`parse_exposure`).
        gamma: Display gamma.
        gain: A gain to use instead of measuring one (``'auto'`` only): e.g. DeSpike's gain applied to TFP/TFI of
            the same recording would be unfair, so each method measures its own; a video may hold one gain.

    Returns:
        ``(shown, kept, gain)``: ``shown`` in [0, 1] for 8/16-bit files (rolled off; clipped for ``'fixed'``),
        ``kept`` the float32 display values after the gain alone (for npy/tiff), and the linear gain used.
    """
    exposure = parse_exposure(exposure)
    d = np.asarray(display, dtype=np.float32)
    if exposure == 'fixed':
        return np.clip(d, 0.0, 1.0), d.copy(), 1.0
    linear = np.maximum(d.astype(np.float64), 0.0)**gamma  # float64 until back in display units: no overflow
    if exposure == 'auto':
        gain = auto_exposure_gain(linear) if gain is None else float(gain)
    else:
        gain = float(exposure)
    kept = ((linear * gain)**(1.0 / gamma)).astype(np.float32)
    return np.clip(highlight_rolloff(kept), 0.0, 1.0), kept, gain


def output_path(path_without_extension: str, fmt: str) -> str:
    """``path`` plus the extension of ``fmt`` (:data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f'format must be one of {tuple(FORMATS)}, got {fmt!r}')
    return path_without_extension + FORMATS[fmt]


def write_image(path: str, shown: np.ndarray, kept: np.ndarray, fmt: str) -> None:
    """Write one reconstruction in ``fmt``: 8/16-bit PNG of ``shown``, float32 ``.npy``/``.tiff`` of ``kept``.

    Raises:
        OSError: When the file cannot be written (the message names it).
    """
    if fmt == 'npy':
        np.save(path, kept.astype(np.float32))
        return
    if fmt == 'tiff':
        ok = cv2.imwrite(path, kept.astype(np.float32))
    elif fmt == 'png16':
        ok = cv2.imwrite(path, (np.clip(shown, 0.0, 1.0) * 65535.0).round().astype(np.uint16))
    elif fmt == 'png8':
        ok = cv2.imwrite(path, (np.clip(shown, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    else:
        raise ValueError(f'format must be one of {tuple(FORMATS)}, got {fmt!r}')
    if not ok:
        raise OSError(f'{path}: could not write the image ({fmt}; folder {osp.dirname(path) or "."})')
