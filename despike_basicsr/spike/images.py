"""Image and depth-map files: the one reader of sharp images, blurred images and depth maps.

Used by the command line (``despike-simulate``) and by data preparation (``despike_basicsr.data.preparation``), so a
picture gives the same linear intensity whichever path reads it:

- Image files are display-referred (sRGB-like). A pixel value v in [0, 1] (8-bit / 255, 16-bit / 65535, float as is)
  is linearised per channel with the plain power law ``v ** γ`` (``optics.display_to_linear``), and the single-channel
  linear intensity is the Rec. 709 luminance ``0.2126 R + 0.7152 G + 0.0722 B`` of the linear channels: a monochrome
  sensor integrates linear light, so the weighting happens after linearisation, not on display values.
- Depth maps are metres: ``.npy`` arrays hold metres; images (typically 16-bit PNG) hold integers times
  ``depth_scale`` metres, :data:`DEFAULT_DEPTH_SCALE` = 0.001 (millimetres) by default. Every depth must be positive
  and finite.

OpenCV is imported when a file is read, so importing this module stays cheap.
"""
import os.path as osp

import numpy as np

from despike_basicsr.errors import DespikeUserError

from . import optics

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
DEPTH_EXTENSIONS = IMAGE_EXTENSIONS + ('.npy', )
#: Rec. 709 luminance weights of linear R, G, B.
LUMINANCE_WEIGHTS = np.array([0.2126, 0.7152, 0.0722], np.float32)
#: Metres per unit of a depth map stored as an image (millimetres).
DEFAULT_DEPTH_SCALE = 0.001


class ImageReadError(DespikeUserError, ValueError):
    """An image (or depth map) file that cannot be read or has an unsupported format."""


def read_image(path: str) -> np.ndarray:
    """Read an 8- or 16-bit (or float) image as display-referred float32 in [0, 1], (H, W) or RGB (H, W, 3).

    Raises:
        FileNotFoundError: If there is no file at ``path``.
        ImageReadError: If the file cannot be decoded or has an unsupported bit depth.
    """
    import cv2
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: no such image file')
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f'cannot read image {path}: not an image format OpenCV can decode')
    if image.dtype == np.uint8:
        scaled = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        scaled = image.astype(np.float32) / 65535.0
    elif image.dtype == np.float32:
        scaled = np.clip(image, 0.0, 1.0)
    else:
        raise ImageReadError(f'cannot read image {path}: unsupported pixel type {image.dtype} (expected 8 or 16 bit)')
    if scaled.ndim == 3:
        if scaled.shape[2] == 1:
            scaled = scaled[:, :, 0]
        elif scaled.shape[2] in (3, 4):
            scaled = cv2.cvtColor(scaled[:, :, :3], cv2.COLOR_BGR2RGB)
        else:
            raise ImageReadError(f'cannot read image {path}: {scaled.shape[2]} channels (expected 1, 3 or 4)')
    return np.ascontiguousarray(scaled, dtype=np.float32)


def display_to_linear_luminance(image: np.ndarray, gamma: float = 2.2) -> np.ndarray:
    """Linear single-channel intensity of a display-referred image.

    ``I = 0.2126 R^γ + 0.7152 G^γ + 0.0722 B^γ`` (per-channel power-law linearisation, then Rec. 709 luminance);
    a grayscale image is simply ``v^γ``.
    """
    linear = optics.display_to_linear(np.clip(image, 0.0, 1.0), gamma)
    if linear.ndim == 3:
        linear = linear @ LUMINANCE_WEIGHTS
    return np.ascontiguousarray(linear, dtype=np.float32)


def read_linear_intensity(path: str, gamma: float = 2.2) -> np.ndarray:
    """Read an image file as single-channel linear intensity (H, W) float32 in [0, 1]."""
    return display_to_linear_luminance(read_image(path), gamma)


def read_depth(path: str, depth_scale: float = DEFAULT_DEPTH_SCALE) -> np.ndarray:
    """Read a depth map in metres, (H, W) float32.

    ``.npy`` files hold metres; image files (typically 16-bit PNG) hold integers times ``depth_scale`` metres
    (default 0.001: millimetres).

    Raises:
        FileNotFoundError: If there is no file at ``path``.
        ImageReadError: If the file cannot be read, is not 2-D, or holds non-positive or non-finite depths.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path}: no such depth file')
    if path.lower().endswith('.npy'):
        try:
            depth = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as err:
            raise ImageReadError(f'cannot read depth map {path}: {err}') from None
    else:
        import cv2
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ImageReadError(f'cannot read depth map {path}: not an image format OpenCV can decode')
        if raw.ndim == 3:
            raw = raw[:, :, 0]
        depth = raw.astype(np.float32) * depth_scale
    if depth.ndim != 2:
        raise ImageReadError(f'depth map {path} must be 2-D (H, W), got shape {depth.shape}')
    bad = int(np.count_nonzero(~np.isfinite(depth) | (depth <= 0)))
    if bad:
        raise ImageReadError(f'depth map {path} has {bad} pixels that are not positive finite meters '
                             f'(check --depth-scale, now {depth_scale} m per unit)')
    return depth
