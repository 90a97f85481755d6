"""No-reference image quality for real recordings (no ground truth): RMS contrast and NIQE on grayscale images.

Both are registered in BasicSR's ``METRIC_REGISTRY`` so an options file can list them under ``val.metrics``
(``type: calculate_rms_contrast`` / ``type: calculate_niqe_gray``); BasicSR passes ``img`` (the output) and, when the
data has one, ``img2`` (the ground truth), which these functions ignore.

Intensity scale: ``max_value`` maps the input to [0, 1] (RMS contrast) or [0, 255] (NIQE). When it is ``None`` it
follows the dtype: uint8 → 255, uint16 → 65535, floats → 1.0 (spike reconstructions are floats in [0, 1]). Pass
``max_value=255`` for BasicSR-style float images in [0, 255].
"""
import os
import warnings
from typing import Optional

import cv2
import numpy as np
from basicsr.metrics.metric_util import reorder_image
from basicsr.metrics.niqe import calculate_niqe
from basicsr.utils.registry import METRIC_REGISTRY

__all__ = ['calculate_rms_contrast', 'calculate_niqe_gray', 'niqe_params_path', 'NIQE_BLOCK']

# BasicSR's NIQE splits the image into 96 × 96 blocks (the official recommendation) and fits a covariance to their
# features: fewer than two blocks leave that covariance undefined.
NIQE_BLOCK = 96


def niqe_params_path() -> str:
    """Path of the pristine-model parameters (``niqe_pris_params.npz``) that ship inside the basicsr package."""
    import basicsr.metrics.niqe as niqe_module
    return os.path.join(os.path.dirname(os.path.abspath(niqe_module.__file__)), 'niqe_pris_params.npz')


def _default_max(img: np.ndarray, max_value: Optional[float]) -> float:
    if max_value is not None:
        if max_value <= 0:
            raise ValueError(f'max_value must be positive, got {max_value}')
        return float(max_value)
    if img.dtype == np.uint8:
        return 255.0
    if img.dtype == np.uint16:
        return 65535.0
    if np.issubdtype(img.dtype, np.floating):
        return 1.0
    raise TypeError(f'unsupported image dtype {img.dtype}: expected uint8, uint16 or float (or pass max_value)')


def _to_gray_unit(img: np.ndarray, crop_border: int, input_order: str, max_value: Optional[float]) -> np.ndarray:
    """Return a float64 (H, W) image in the unit range; colour (BGR, BasicSR's order) is converted to gray."""
    img = np.asarray(img)
    scale = _default_max(img, max_value)
    if img.ndim == 2:
        gray = img.astype(np.float64) / scale
    elif img.ndim == 3:
        if input_order not in ('HWC', 'CHW'):
            raise ValueError(f"input_order must be 'HWC' or 'CHW' for a 3-D image, got {input_order!r}")
        hwc = reorder_image(img, input_order=input_order).astype(np.float64) / scale
        if hwc.shape[2] == 1:
            gray = hwc[..., 0]
        elif hwc.shape[2] == 3:
            gray = cv2.cvtColor(hwc.astype(np.float32), cv2.COLOR_BGR2GRAY).astype(np.float64)
        else:
            raise ValueError(f'expected 1 or 3 channels, got image of shape {img.shape} ({input_order})')
    else:
        raise ValueError(f'expected a 2-D or 3-D image, got shape {img.shape}')
    if crop_border:
        gray = gray[crop_border:-crop_border, crop_border:-crop_border]
    if gray.size == 0:
        raise ValueError(f'image of shape {img.shape} is empty after cropping {crop_border} border pixels')
    return gray


@METRIC_REGISTRY.register()
def calculate_rms_contrast(img: np.ndarray,
                           crop_border: int = 0,
                           input_order: str = 'HWC',
                           max_value: Optional[float] = None,
                           **kwargs) -> float:
    """RMS contrast: the standard deviation of the intensities scaled to [0, 1].

    C_rms = sqrt(mean((I - mean(I))^2)) over all pixels, I in [0, 1] (population standard deviation). A flat image
    scores 0, a half-black/half-white one 0.5 (the maximum). Colour images (BGR) are converted to gray first.

    Args:
        img: Image (H, W), (H, W, C) or (C, H, W) with C in {1, 3}.
        crop_border: Pixels removed at each edge before measuring.
        input_order: 'HWC' or 'CHW' for 3-D inputs (ignored for 2-D ones).
        max_value: Value that maps to 1; ``None`` picks it from the dtype (module docstring).
        **kwargs: Ignored (BasicSR passes ``img2`` too).

    Returns:
        The RMS contrast as a float in [0, 0.5] for inputs within range.
    """
    gray = _to_gray_unit(img, crop_border, input_order, max_value)
    return float(np.std(gray))


@METRIC_REGISTRY.register()
def calculate_niqe_gray(img: np.ndarray,
                        crop_border: int = 0,
                        input_order: str = 'HWC',
                        max_value: Optional[float] = None,
                        **kwargs) -> float:
    """NIQE (lower is better) of a single-channel image, through BasicSR's ``calculate_niqe``.

    BasicSR's function wants [0, 255] and converts 3-channel input to Y; a (H, W, 1) image, a float image in [0, 1]
    and a 1-channel CHW image need adapting first, which this wrapper does before calling it with ``input_order='HW'``.
    It also checks the size up front: NIQE uses 96 × 96 blocks and needs at least two of them.

    Args:
        img: Image (H, W), (H, W, C) or (C, H, W) with C in {1, 3}; colour (BGR) goes to gray.
        crop_border: Pixels removed at each edge before measuring.
        input_order: 'HWC' or 'CHW' for 3-D inputs (ignored for 2-D ones).
        max_value: Value that maps to 255; ``None`` picks it from the dtype (module docstring).
        **kwargs: Ignored (BasicSR passes ``img2`` too).

    Returns:
        The NIQE score, or NaN for an image without structure (e.g. flat), where the feature fit is undefined.

    Raises:
        ValueError: The (cropped) image holds fewer than two 96 × 96 blocks.
    """
    gray = _to_gray_unit(img, crop_border, input_order, max_value)
    height, width = gray.shape
    blocks = (height // NIQE_BLOCK) * (width // NIQE_BLOCK)
    if blocks < 2:
        raise ValueError(f'NIQE needs at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks (e.g. '
                         f'{NIQE_BLOCK}x{2 * NIQE_BLOCK} pixels); got an image of {height}x{width} after cropping')
    gray255 = np.clip(gray, 0.0, 1.0) * 255.0
    try:
        with warnings.catch_warnings(), np.errstate(all='ignore'):
            warnings.simplefilter('ignore', RuntimeWarning)  # empty-slice means of flat blocks; handled below
            score = calculate_niqe(gray255, crop_border=0, input_order='HW')
    except np.linalg.LinAlgError:
        # flat regions make the block features NaN and the covariance fit fails: no meaningful score
        return float('nan')
    return float(score) if np.isfinite(score) else float('nan')
