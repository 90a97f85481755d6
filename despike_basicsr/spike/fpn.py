"""Fixed-pattern-noise calibration from uniform-light (and optional dark) recordings.

A pixel's firing rate under uniform light is ``R(x, y) = (η·g(x, y)·I + dark(x, y)) / θ``. From recordings of a uniform
field we estimate the response ``R = rate_uniform - rate_dark`` and the correction
``γ(x, y) = R_ref / R(x, y)`` (DeSpike's ``R(x_m, y_m) / R(x, y)``), which equalises the pixels when it multiplies
their spikes (or rates). Hot pixels (firing far too often, or in the dark) and dead pixels (far too rarely) are
marked in ``bad`` and get γ = 1: their true response is unknown, so the calibration leaves them as recorded rather than
amplifying noise; the network (or an inpainting step) sees them through the ``bad`` map.
"""
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from .io import DEFAULT_HEIGHT, DEFAULT_WIDTH, SpikeFileError, frame_bytes, load_spikes

Recording = Union[str, os.PathLike, np.ndarray]
FPN_KEYS = ('gamma', 'response', 'dark', 'bad', 'ref')


@dataclass
class FPNCalibration:
    """Result of :func:`calibrate_fpn`.

    Attributes:
        response: (H, W) float32 response R (spikes per step under the uniform field, dark rate removed).
        gamma: (H, W) float32 correction γ = R_ref / R (1 at bad pixels).
        dark: (H, W) float32 dark firing rate (spikes per step; zeros without dark recordings).
        bad: (H, W) bool, True at hot or dead pixels.
        ref: The reference response R_ref.
    """

    response: np.ndarray
    gamma: np.ndarray
    dark: np.ndarray
    bad: np.ndarray
    ref: float


def _mean_rate(recordings: Sequence[Recording], load_kwargs: dict, chunk_frames: int,
               what: str) -> Tuple[np.ndarray, int]:
    """Per-pixel mean spikes per step over all frames of all recordings (read in chunks)."""
    if isinstance(recordings, (str, os.PathLike, np.ndarray)):
        recordings = [recordings]
    total, frames = None, 0
    for rec in recordings:
        for block in _blocks(rec, load_kwargs, chunk_frames):
            counts = block.sum(axis=0, dtype=np.int64)
            if total is None:
                total = counts
            elif counts.shape != total.shape:
                raise SpikeFileError(f'{what} recording {_name(rec)}: frame shape {counts.shape} differs from the '
                                     f'first recording\'s {total.shape}')
            else:
                total += counts
            frames += block.shape[0]
    if total is None or frames == 0:
        raise ValueError(f'calibrate_fpn: no frames in the {what} recordings')
    return (total / frames).astype(np.float64), frames


def _name(rec: Recording) -> str:
    return str(rec) if not isinstance(rec, np.ndarray) else f'array{rec.shape}'


def _blocks(rec: Recording, load_kwargs: dict, chunk_frames: int) -> Iterable[np.ndarray]:
    if isinstance(rec, np.ndarray):
        if rec.ndim != 3:
            raise ValueError(f'calibrate_fpn: expected (T, H, W) recordings, found shape {rec.shape}')
        for t0 in range(0, rec.shape[0], chunk_frames):
            yield rec[t0:t0 + chunk_frames]
        return
    path = str(rec)
    if path.lower().endswith('.dat') and os.path.isfile(path):  # stream large raw recordings through the memory map
        nbytes = frame_bytes(load_kwargs.get('height') or DEFAULT_HEIGHT, load_kwargs.get('width') or DEFAULT_WIDTH,
                             load_kwargs.get('head', False))
        total = os.path.getsize(path) // nbytes
        if total == 0 or os.path.getsize(path) % nbytes:
            yield load_spikes(path, **load_kwargs)  # raises the reader's size error
            return
        for start in range(0, total, chunk_frames):
            yield load_spikes(path, frames=(start, min(total, start + chunk_frames)), **load_kwargs)
    else:
        yield load_spikes(path, **load_kwargs)


def reference_response(response: np.ndarray, good: np.ndarray, reference: Union[str, Tuple[int, int]]) -> float:
    """R_ref: the median or mean response of good pixels, or the response of one pixel ``(row, col)``."""
    if isinstance(reference, str):
        if reference == 'median':
            return float(np.median(response[good]))
        if reference == 'mean':
            return float(np.mean(response[good]))
        raise ValueError(f"calibrate_fpn: reference must be 'median', 'mean' or (row, col), got {reference!r}")
    row, col = reference
    if not (0 <= row < response.shape[0] and 0 <= col < response.shape[1]):
        raise ValueError(f'calibrate_fpn: reference pixel {reference} outside the {response.shape} frame')
    if not good[row, col]:
        raise ValueError(f'calibrate_fpn: reference pixel {reference} is a hot or dead pixel')
    return float(response[row, col])


def fpn_correction(response: np.ndarray, ref: float) -> np.ndarray:
    """DeSpike's FPN correction:  ``γ(x, y) = R(x_m, y_m) / R(x, y) = R_ref / R``."""
    return ref / response


def calibrate_fpn(recordings: Sequence[Recording],
                  dark_recordings: Optional[Sequence[Recording]] = None,
                  reference: Union[str, Tuple[int, int]] = 'median',
                  dead_below: float = 0.5,
                  hot_above: float = 1.5,
                  hot_dark_above: float = 0.5,
                  chunk_frames: int = 4096,
                  **load_kwargs) -> FPNCalibration:
    """Estimate per-pixel response, FPN correction γ, dark rate and hot/dead pixels from uniform-field recordings.

    Args:
        recordings: (T, H, W) arrays or spike files of a uniform light field (all one shape); more frames, less noise.
        dark_recordings: Optional recordings with the lens capped; their rate is subtracted and flags hot pixels.
        reference: ``'median'`` (default) or ``'mean'`` of good pixels, or a ``(row, col)`` reference pixel.
        dead_below: A pixel whose response is below this fraction of the median is dead.
        hot_above: A pixel whose response is above this multiple of the median is hot.
        hot_dark_above: A pixel whose dark rate exceeds this fraction of the median response is hot.
        chunk_frames: Frames read at a time from files.
        **load_kwargs: Passed to :func:`despike_basicsr.spike.io.load_spikes` (height, width, flipud, head, key).

    Returns:
        The :class:`FPNCalibration`.
    """
    uniform, _ = _mean_rate(recordings, load_kwargs, chunk_frames, 'uniform')
    dark = np.zeros_like(uniform)
    if dark_recordings:
        dark, _ = _mean_rate(dark_recordings, load_kwargs, chunk_frames, 'dark')
        if dark.shape != uniform.shape:
            raise SpikeFileError(f'calibrate_fpn: dark recordings are {dark.shape}, uniform ones {uniform.shape}')
    response = uniform - dark
    positive = response > 0
    if not positive.any():
        raise ValueError('calibrate_fpn: no pixel fires more under the uniform field than in the dark')
    median = float(np.median(response[positive]))
    bad = (response < dead_below * median) | (response > hot_above * median) | (dark > hot_dark_above * median)
    good = ~bad
    ref = reference_response(response, good, reference)
    gamma = np.ones_like(response)
    gamma[good] = fpn_correction(response[good], ref)
    return FPNCalibration(response=response.astype(np.float32), gamma=gamma.astype(np.float32),
                          dark=dark.astype(np.float32), bad=bad, ref=ref)


def save_fpn(path: Union[str, os.PathLike], calib: FPNCalibration) -> None:
    """Write a calibration as one ``.npz`` with keys gamma, response, dark, bad, ref."""
    np.savez(path, gamma=calib.gamma.astype(np.float32), response=calib.response.astype(np.float32),
             dark=calib.dark.astype(np.float32), bad=calib.bad.astype(bool), ref=np.float64(calib.ref))


def load_fpn(path: Union[str, os.PathLike], shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Read and validate a γ map: the one FPN loader (``despike-infer --fpn``, datasets' ``fpn:``, the API).

    ``path`` is a calibration ``.npz`` (:func:`save_fpn`; its ``gamma``) or a bare ``.npy`` (H, W) float γ map.

    Returns:
        γ, (H, W) float32.

    Raises:
        FileNotFoundError: No file at ``path``.
        SpikeFileError: Not a readable ``.npz``/``.npy``, no ``gamma`` key, wrong shape, NaN/inf, zero or negative
            values.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such FPN calibration file')
    bare = os.fspath(path).lower().endswith('.npy')
    try:
        if bare:
            gamma = np.asarray(np.load(path, allow_pickle=False))
        else:
            with np.load(path, allow_pickle=False) as archive:
                if 'gamma' not in archive.files:
                    raise SpikeFileError(f'{path}: FPN calibration needs key "gamma", found keys {list(archive.files)}')
                gamma = np.asarray(archive['gamma'])
    except SpikeFileError:
        raise
    except Exception as err:
        kind = '.npy array' if bare else 'FPN .npz'
        raise SpikeFileError(f'{path}: not a readable {kind} ({type(err).__name__}: {err})') from err
    if gamma.ndim != 2:
        raise SpikeFileError(f'{path}: gamma must be (H, W), found shape {gamma.shape}')
    if shape is not None and tuple(gamma.shape) != tuple(shape):
        raise SpikeFileError(f'{path}: gamma shape {gamma.shape} does not match the expected {tuple(shape)}')
    if not np.issubdtype(gamma.dtype, np.floating):
        raise SpikeFileError(f'{path}: gamma must be a float array, found dtype {gamma.dtype}')
    if not np.all(np.isfinite(gamma)):
        raise SpikeFileError(f'{path}: gamma must be finite and positive; it holds {int((~np.isfinite(gamma)).sum())} '
                             'NaN/inf values')
    if np.any(gamma <= 0):
        raise SpikeFileError(f'{path}: gamma must be finite and positive; it holds {int((gamma <= 0).sum())} zero or '
                             f'negative values (min {gamma.min()})')
    return gamma.astype(np.float32)
