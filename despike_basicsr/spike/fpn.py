"""Fixed-pattern-noise calibration from uniform-light (and optional dark) recordings.

A pixel's firing rate under uniform light is ``R(x, y) = (η·g(x, y)·I + dark(x, y)) / θ``. From recordings of a uniform
field we estimate the response ``R = rate_uniform - rate_dark`` and the correction
``γ(x, y) = R_ref / R(x, y)`` (DeSpike's ``R(x_m, y_m) / R(x, y)``), which equalises the pixels when it multiplies
their spikes (or rates). Hot pixels (firing far too often, or in the dark) and dead pixels (far too rarely) are
marked in ``bad`` and get γ = 1: their true response is unknown, so the calibration leaves them as recorded rather than
amplifying noise; the network (or an inpainting step) sees them through the ``bad`` map.

Without a flat field, :func:`estimate_fpn_from_scene` estimates γ from ordinary recordings of a moving scene
(scene-based non-uniformity correction, as infrared imaging does it). Where the scene moves as a whole across the
sensor (a pan), the motion is registered and every pixel is compared with the other pixels that saw the same scene
points (:class:`SceneRegistration`, :func:`registration_gain`); otherwise each pixel's long-run mean rate, over the
local median of its neighbours' in the log domain, is its gain (constant statistics; see that function and
docs/physics.md).
"""
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from despike_basicsr.errors import DespikeUserError

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
        confidence: (H, W) float32 in [0, 1], how far γ can be trusted at each pixel (scene-based estimates), or
            ``None`` (a flat-field calibration: trusted everywhere).
        method: ``'flat-field'`` (:func:`calibrate_fpn`) or ``'scene'`` (:func:`estimate_fpn_from_scene`, whose
            ``response`` is the relative gain, median 1, rather than spikes per step).
        note: One line on how the estimate was made and how far to trust it (empty for flat fields).
        info: Numbers behind the note (steps, moving fraction, ...), JSON-serialisable.
    """

    response: np.ndarray
    gamma: np.ndarray
    dark: np.ndarray
    bad: np.ndarray
    ref: float
    confidence: Optional[np.ndarray] = None
    method: str = 'flat-field'
    note: str = ''
    info: Dict[str, Any] = field(default_factory=dict)


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
    """Write a calibration as one ``.npz`` with keys gamma, response, dark, bad, ref; a scene-based estimate adds
    method, note, info and confidence (a flat field writes the five keys alone, as before; readers need only gamma)."""
    extra: Dict[str, np.ndarray] = {}
    if calib.method != 'flat-field' or calib.note or calib.info or calib.confidence is not None:
        extra = dict(method=np.str_(calib.method), note=np.str_(calib.note), info=np.str_(json.dumps(calib.info)))
    if calib.confidence is not None:
        extra['confidence'] = calib.confidence.astype(np.float32)
    np.savez(path, gamma=calib.gamma.astype(np.float32), response=calib.response.astype(np.float32),
             dark=calib.dark.astype(np.float32), bad=calib.bad.astype(bool), ref=np.float64(calib.ref), **extra)


def load_fpn_calibration(path: Union[str, os.PathLike]) -> FPNCalibration:
    """Read a whole calibration written by :func:`save_fpn` (older files: method ``'flat-field'``, no confidence).

    Raises:
        FileNotFoundError: No file at ``path``.
        SpikeFileError: Not a calibration ``.npz`` (a key is missing) or γ fails :func:`load_fpn`'s checks.
    """
    gamma = load_fpn(path)
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in FPN_KEYS if key not in archive.files]
        if missing:
            raise SpikeFileError(f'{path}: not a full FPN calibration, keys {missing} are missing')
        files = archive.files
        return FPNCalibration(response=archive['response'], gamma=gamma, dark=archive['dark'],
                              bad=archive['bad'].astype(bool), ref=float(archive['ref']),
                              confidence=archive['confidence'] if 'confidence' in files else None,
                              method=str(archive['method']) if 'method' in files else 'flat-field',
                              note=str(archive['note']) if 'note' in files else '',
                              info=json.loads(str(archive['info'])) if 'info' in files else {})


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


# ---------------------------------------------------------------------------------------------------------------------
# Scene-based estimate: γ from ordinary recordings of a moving scene (no flat field)
# ---------------------------------------------------------------------------------------------------------------------

#: Steps per short window; the spread of the window counts tells whether the scene changed at a pixel.
SCENE_WINDOW = 64
#: Fewest steps a scene-based estimate accepts by default (the scene must move across many pixels meanwhile).
SCENE_MIN_STEPS = 1000
#: Side (px) of the square neighbourhood whose median log rate is a pixel's reference.
SCENE_REFERENCE_SIZE = 7
#: Temporal contrast (beyond counting noise) of the short-window rates from which a pixel counts as having seen motion.
SCENE_MOTION_CONTRAST = 0.1
#: Fraction of pixels that must have seen motion; below it the scene is taken as static and γ is left at 1.
SCENE_MIN_MOVING_FRACTION = 0.5
#: Consecutive time segments whose separate estimates give each pixel's standard error.
SCENE_SEGMENTS = 4
#: Standard error of log γ (relative) at which a moving pixel's confidence is one half.
SCENE_ERROR_SCALE = 0.01
#: Mean rate (spikes per step) above which a pixel is too close to saturation to measure its gain.
SCENE_SATURATED_RATE = 0.9

ProgressArg = Union[bool, Callable[[int], Any], None]


class SceneFPNError(DespikeUserError, ValueError):
    """A recording that cannot give a scene-based FPN estimate (too short, a single frame, NaN, no light, ...)."""


class SceneStatistics:
    """Per-pixel statistics of ordinary recordings, accumulated chunk by chunk in bounded memory.

    Memory is a few (H, W) arrays plus one per time segment, whatever the length of the recordings. Feed blocks of
    consecutive frames with :meth:`add` and call :meth:`end_recording` between recordings (a short window never
    straddles two recordings).

    Per pixel it keeps the total spike count, the count per time segment and, over windows of ``window`` steps with
    counts ``c_k``, the sums of ``n_k = c_k / ĉ_k`` and ``n_k²`` (``ĉ_k`` the frame-mean count of window k, so light
    flicker common to all pixels does not count as motion) and of ``c_k / ĉ_k²`` (the Poisson variance of ``n_k``).

    Args:
        shape: ``(H, W)``.
        total_steps: Steps of all recordings together (sets the segment boundaries).
        window: Steps per short window.
        segments: Number of consecutive time segments.
    """

    def __init__(self, shape: Tuple[int, int], total_steps: int, window: int = SCENE_WINDOW,
                 segments: int = SCENE_SEGMENTS, registration: bool = True) -> None:
        if window < 1 or segments < 1 or total_steps < 1:
            raise ValueError(f'SceneStatistics: window, segments and total_steps must be >= 1, got {window}, '
                             f'{segments}, {total_steps}')
        self.shape = tuple(int(v) for v in shape)
        self.total_steps = int(total_steps)
        self.window = int(window)
        self.count = np.zeros(self.shape, np.int64)
        self.segment_count = np.zeros((segments, ) + self.shape, np.int64)
        self.segment_steps = np.zeros(segments, np.int64)
        self.sum_n = np.zeros(self.shape, np.float64)
        self.sum_n2 = np.zeros(self.shape, np.float64)
        self.sum_poisson = np.zeros(self.shape, np.float64)
        self.windows = 0
        self.steps = 0
        self.recordings = 0
        self._partial = np.zeros(self.shape, np.int64)
        self._partial_steps = 0
        bounds = np.round(np.linspace(0, self.total_steps, segments + 1)).astype(np.int64)
        self._bounds = bounds
        self.registration = SceneRegistration(self.shape, bounds) if registration else None

    def add(self, block: np.ndarray, where: str = 'recording') -> None:
        """Accumulate ``block``, (n, H, W) 0/1 spikes of consecutive steps following the previous block."""
        block = _check_spike_block(block, self.shape, where)
        n = block.shape[0]
        if self.steps + n > self.total_steps:
            raise ValueError(f'SceneStatistics: {self.steps + n} steps fed, more than the announced {self.total_steps}')
        self.count += block.sum(axis=0, dtype=np.int64)
        if self.registration is not None:
            self.registration.add(block)
        for s in range(len(self.segment_steps)):  # split the block at the segment boundaries
            lo, hi = max(self._bounds[s], self.steps), min(self._bounds[s + 1], self.steps + n)
            if hi > lo:
                self.segment_count[s] += block[lo - self.steps:hi - self.steps].sum(axis=0, dtype=np.int64)
                self.segment_steps[s] += hi - lo
        self.steps += n
        i = 0
        if self._partial_steps:
            take = min(n, self.window - self._partial_steps)
            self._partial += block[:take].sum(axis=0, dtype=np.int64)
            self._partial_steps += take
            i = take
            if self._partial_steps == self.window:
                self._add_windows(self._partial[None])
                self._partial[:] = 0
                self._partial_steps = 0
        full = (n - i) // self.window
        if full:
            counts = block[i:i + full * self.window].reshape(full, self.window, *self.shape)
            counts = counts.sum(axis=1, dtype=np.int32)
            self._add_windows(counts)
            i += full * self.window
        if i < n:
            self._partial += block[i:].sum(axis=0, dtype=np.int64)
            self._partial_steps += n - i

    def end_recording(self) -> None:
        """Close a recording: drop its unfinished short window (its spikes stay in the totals)."""
        self._partial[:] = 0
        self._partial_steps = 0
        self.recordings += 1
        if self.registration is not None:
            self.registration.end_recording()

    def _add_windows(self, counts: np.ndarray) -> None:
        frame_mean = counts.reshape(counts.shape[0], -1).mean(axis=1)
        lit = frame_mean > 0
        if not lit.any():
            return
        counts = counts[lit].astype(np.float64)
        scale = (1.0 / frame_mean[lit])[:, None, None]
        normalised = counts * scale
        self.sum_n += normalised.sum(axis=0)
        self.sum_n2 += (normalised * normalised).sum(axis=0)
        self.sum_poisson += (normalised * scale).sum(axis=0)
        self.windows += int(lit.sum())


def _check_spike_block(block: np.ndarray, shape: Tuple[int, ...], where: str) -> np.ndarray:
    """A (n, H, W) block of 0/1 spikes as uint8, or a :class:`SceneFPNError` naming what is wrong."""
    block = np.asarray(block)
    if block.ndim != 3:
        raise SceneFPNError(f'{where}: expected (T, H, W) spikes, found shape {block.shape}')
    if tuple(block.shape[1:]) != tuple(shape):
        raise SceneFPNError(f'{where}: frame shape {block.shape[1:]} differs from the first recording\'s '
                            f'{tuple(shape)}')
    if block.dtype == np.bool_:
        return block.view(np.uint8)
    if np.issubdtype(block.dtype, np.floating) and not np.all(np.isfinite(block)):
        raise SceneFPNError(f'{where}: the spikes hold {int((~np.isfinite(block)).sum())} NaN/inf values')
    fractional = np.issubdtype(block.dtype, np.floating) and bool(np.any(block != np.round(block)))
    if block.size and (block.min() < 0 or block.max() > 1 or fractional):
        raise SceneFPNError(f'{where}: spikes must be 0 or 1, found values in [{block.min()}, {block.max()}]')
    return block if block.dtype == np.uint8 else block.astype(np.uint8)


def local_log_reference(log_rate: np.ndarray, size: int = SCENE_REFERENCE_SIZE) -> np.ndarray:
    """A pixel's reference: the median of its neighbours' log rates, ``B(x) = median_{k×k around x} log m``.

    The median ignores isolated hot or dead pixels and follows a soft edge of the motion-averaged scene; over a k×k
    square the white FPN averages to about 0 and a column (row) pattern to its mean over k columns (rows).
    """
    from scipy.ndimage import median_filter

    return median_filter(log_rate, size=int(size), mode='reflect')


def relative_gain(log_rate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Scene-based gain estimate:  ``ĝ(x) = exp(log m(x) − B(x)) = m(x) / exp(B(x))``.

    With the scene moving, ``m(x) = g(x)·μ(x)`` (mean rate = gain times the pixel's time-averaged light μ), and μ is
    smooth wherever the motion averaged the scene over more than the reference neighbourhood, so ``B ≈ log μ`` and
    ``ĝ ≈ g`` up to the local mean gain.
    """
    return np.exp(log_rate - reference)


def excess_temporal_contrast(mean_n: np.ndarray, mean_n2: np.ndarray, poisson: np.ndarray) -> np.ndarray:
    """Squared temporal contrast of a pixel's short-window rate beyond counting noise:
    ``ν = (E[n²] − E[n]² − E[c/ĉ²]) / E[n]²``,  ``n = c/ĉ``.

    ``c`` is the pixel's count in a window and ``ĉ`` the frame mean count of that window. A Poisson count has
    variance equal to its mean (``E[c/ĉ²]`` in units of ``n``); integrate-and-fire counts vary less, so ν ≤ 0 for a
    static scene and ν ≈ (std/mean of the light the pixel saw)² for a moving one.
    """
    safe = np.maximum(mean_n, 1e-12)
    return (mean_n2 - mean_n * mean_n - poisson) / (safe * safe)


def motion_weight(nu: np.ndarray, contrast: float = SCENE_MOTION_CONTRAST) -> np.ndarray:
    """How far a pixel saw the scene move:  ``w = clip(ν / κ², 0, 1)``, κ = ``contrast``."""
    return np.clip(nu / (contrast * contrast), 0.0, 1.0)


def scene_confidence(weight: np.ndarray, standard_error: np.ndarray,
                     error_scale: float = SCENE_ERROR_SCALE) -> np.ndarray:
    """Per-pixel confidence:  ``conf = w / (1 + (se / s0)²)``, se the standard error of log ĝ across time segments.

    Low where the scene did not move (w → 0: γ cannot be told from scene texture) and where the segments disagree
    (counting noise, or scene texture the motion has not yet averaged out).
    """
    return weight / (1.0 + (standard_error / error_scale)**2)


def shrinkage(log_gain: np.ndarray, standard_error: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Empirical-Bayes weight of a pixel's estimate: ``s = τ² / (τ² + se²)``, ``τ² = max(var(log ĝ) − mean(se²), 0)``.

    τ² is the spread of the true gains (the spread of the estimates less their noise); a pixel whose standard error
    is large next to it keeps little of its estimate, so a noisy estimate is pulled towards γ = 1 instead of adding
    its noise to the image.
    """
    error2 = standard_error * standard_error
    tau2 = max(float(np.var(log_gain[good]) - np.mean(error2[good])), 0.0)
    return tau2 / (tau2 + error2 + 1e-12)


def robust_shrinkage(log_gain: np.ndarray, standard_error: np.ndarray, good: np.ndarray) -> np.ndarray:
    """:func:`shrinkage` with a robust spread:  ``s = τ² / (τ² + se²)``,  ``τ² = max((1.4826·MAD)² − median se², 0)``,
    MAD the median absolute deviation of log ĝ.

    The registration estimate's standard error is heavy-tailed (pixels near the edge of a short path are seen with
    few others); a handful of such pixels must not drive τ² to 0 and switch the correction off everywhere.
    """
    values = log_gain[good]
    spread = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    tau2 = max(spread * spread - float(np.median(standard_error[good]**2)), 0.0)
    error2 = standard_error * standard_error
    return tau2 / (tau2 + error2 + 1e-12)


def structured_shrinkage(log_gain: np.ndarray, standard_error: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Shrunk log gain with column and row patterns kept apart from the white part:

    ``log ĝ = c_j + r_i + e_ij``  (c: column medians, r: row medians of the rest, e: the white residual), then
    ``ŝ·log ĝ := s_c·c_j + s_r·r_i + s_e·e_ij``, each weight :func:`robust_shrinkage`'s ``τ² / (τ² + se²)`` with the
    component's own standard error (``se / √n`` for a median over n pixels).

    Column-parallel readout gives column gains; a column's gain is measured by all its pixels together, so it
    survives the shrinkage that a single noisy pixel needs (short or dim recordings).
    """
    masked = np.where(good, log_gain, np.nan)
    columns_seen = good.any(0)
    column = np.zeros(log_gain.shape[1])
    column[columns_seen] = np.nanmedian(masked[:, columns_seen], axis=0)
    rest = masked - column[None, :]
    rows_seen = good.any(1)
    row = np.zeros(log_gain.shape[0])
    row[rows_seen] = np.nanmedian(rest[rows_seen], axis=1)
    residual = log_gain - column[None, :] - row[:, None]
    error = float(np.median(standard_error[good]))

    def component_weight(values: np.ndarray, count: np.ndarray) -> np.ndarray:
        se = np.sqrt(np.pi / 2) * error / np.sqrt(np.maximum(count, 1))  # a median's error over `count` pixels
        return robust_shrinkage(values, se, count > 0)

    s_column = component_weight(column, good.sum(0))
    s_row = component_weight(row, good.sum(1))
    s_residual = robust_shrinkage(residual, standard_error, good)
    return s_column[None, :] * column[None, :] + s_row[:, None] * row[:, None] + s_residual * residual


def shrunk_correction(gain: np.ndarray, ref: float, weight: np.ndarray) -> np.ndarray:
    """γ shrunk towards 1 where the scene did not move:  ``γ = (R_ref / ĝ)^w``  (w = 1: the plain ``R_ref / ĝ``)."""
    return np.exp(weight * np.log(ref / gain))


def texture_correlation(log_gain: np.ndarray, good: np.ndarray) -> float:
    """Diagonal-neighbour correlation of log ĝ after removing row and column medians (0 for a white FPN).

    Fixed-pattern noise is white apart from its row and column patterns, so a clear correlation between diagonal
    neighbours means motion-averaged scene texture leaked into the estimate (too little motion for the reference size).
    """
    r = np.where(good, log_gain, np.nan)
    r = r - np.nanmedian(r, axis=0, keepdims=True)
    r = r - np.nanmedian(r, axis=1, keepdims=True)
    r = np.where(np.isfinite(r), r, 0.0)
    a, b = r[1:, 1:].ravel(), r[:-1, :-1].ravel()
    denominator = float(np.sqrt(np.mean(a * a) * np.mean(b * b)))
    return float(np.mean(a * b) / denominator) if denominator > 0 else 0.0


def _segment_standard_error(stats: SceneStatistics, dark: np.ndarray, size: int) -> np.ndarray:
    """Standard error of log ĝ from the spread of the per-segment estimates (zeros with a single segment)."""
    logs = []
    for count, steps in zip(stats.segment_count, stats.segment_steps):
        if steps > 0:
            rate = np.maximum(count / steps - dark, 0.5 / steps)
            log_rate = np.log(rate)
            logs.append(log_rate - local_log_reference(log_rate, size))
    if len(logs) < 2:
        return np.zeros(stats.shape)
    return np.std(np.stack(logs), axis=0, ddof=1) / np.sqrt(len(logs))


def estimate_fpn_from_stats(stats: SceneStatistics,
                            dark: Optional[np.ndarray] = None,
                            reference_size: int = SCENE_REFERENCE_SIZE,
                            motion_contrast: float = SCENE_MOTION_CONTRAST,
                            min_moving_fraction: float = SCENE_MIN_MOVING_FRACTION,
                            min_steps: int = SCENE_MIN_STEPS,
                            dead_below: float = 0.5,
                            hot_above: float = 1.5,
                            registration: bool = True) -> FPNCalibration:
    """γ, confidence and hot/dead pixels from accumulated :class:`SceneStatistics` (see
    :func:`estimate_fpn_from_scene` for the model and its limits).

    The registration-based estimate (:func:`registration_gain`) is used when the statistics hold registered mosaics
    whose path visited enough positions; otherwise the constant-statistics one (:func:`relative_gain`).

    Raises:
        SceneFPNError: Too few steps or windows, no spikes at all, or a non-finite result.
    """
    if stats.steps < max(min_steps, 1):
        raise SceneFPNError(f'recording too short: {stats.steps} steps, need {min_steps} (a scene-based FPN '
                            'estimate needs the scene to move across the sensor meanwhile)')
    if not np.any(stats.count):
        raise SceneFPNError(f'no spikes in {stats.steps} steps: a scene-based FPN estimate needs light')
    if stats.windows < 2:
        raise SceneFPNError(f'recording too short: {stats.windows} whole lit windows of {stats.window} steps, need 2')
    if reference_size < 3:
        raise ValueError(f'estimate_fpn_from_stats: reference_size must be >= 3, got {reference_size}')
    dark = np.zeros(stats.shape) if dark is None else np.asarray(dark, np.float64)
    rate = stats.count / stats.steps
    response = np.maximum(rate - dark, 0.5 / stats.steps)  # a pixel that never fired: half a spike
    log_rate = np.log(response)
    reference = local_log_reference(log_rate, reference_size)
    gain = relative_gain(log_rate, reference)
    saturated = rate > SCENE_SATURATED_RATE
    dead = (stats.count == 0) | (gain < dead_below)
    hot = gain > hot_above
    bad = (dead | hot) & ~saturated
    measurable = ~bad & ~saturated
    if not measurable.any():
        raise SceneFPNError('no pixel has a measurable gain (all dead, hot or saturated)')
    ref = float(np.median(gain[measurable]))

    mean_n = stats.sum_n / stats.windows
    nu = excess_temporal_contrast(mean_n, stats.sum_n2 / stats.windows, stats.sum_poisson / stats.windows)
    moving = motion_weight(nu, motion_contrast)
    moving_fraction = float(np.mean(moving[measurable] > 0.5))
    size = 3 * int(reference_size)
    import cv2  # a box average of the motion weight: a moving neighbourhood vouches for a flat patch inside it
    weight = np.clip(cv2.blur(moving.astype(np.float32), (size, size), borderType=cv2.BORDER_REFLECT), 0.0, 1.0)
    weight = np.where(measurable, weight, 0.0)
    standard_error = _segment_standard_error(stats, dark, reference_size)
    correlation = texture_correlation(np.log(gain), measurable)
    static = moving_fraction < min_moving_fraction
    info = dict(steps=int(stats.steps), recordings=int(stats.recordings), windows=int(stats.windows),
                window=stats.window, reference_size=int(reference_size), moving_fraction=round(moving_fraction, 4),
                min_moving_fraction=min_moving_fraction, texture_correlation=round(correlation, 4),
                mean_rate=round(float(rate.mean()), 5), bad=int(bad.sum()), saturated=int(saturated.sum()),
                static=bool(static))
    registered, registration_info = _registration_estimate(stats, dark) if registration else (None, {})
    info.update(registration_info)
    info['estimator'] = 'registration' if registered is not None else 'constant-statistics'
    if registered is not None:
        reg_gain, reg_error = registered
        good = measurable & (reg_gain > 0)
        bad = bad | (~saturated & (reg_gain <= 0))
        ref = float(np.median(reg_gain[good]))
        gain = np.where(reg_gain > 0, reg_gain, gain)
        log_gain = np.log(np.where(good, gain, ref) / ref)
        weight = robust_shrinkage(log_gain, reg_error, good)
        gamma = np.where(good, np.exp(-structured_shrinkage(log_gain, reg_error, good)), 1.0)
        confidence = np.where(good, scene_confidence(weight, reg_error), 0.0)
        info['static'] = False
        note = (f'scene-based estimate from {stats.steps} steps ({stats.recordings} recording(s)), registration: '
                f'{registration_info["registered_fraction"]:.0%} of the frames registered to a global motion over '
                f'{registration_info["path_positions"]:.0f} sensor positions, median confidence '
                f'{float(np.median(confidence)):.2f}')
    elif static:
        gamma = np.ones(stats.shape)
        confidence = np.zeros(stats.shape)
        note = (f'static scene: only {moving_fraction:.0%} of the pixels saw the light change (need '
                f'{min_moving_fraction:.0%}); gain cannot be told from scene texture, so γ is left at 1 '
                '(record the scene moving across the sensor, or use a flat field)')
    else:
        weight = weight * shrinkage(np.log(gain / ref), standard_error, measurable)
        gamma = np.where(measurable, shrunk_correction(gain, ref, weight), 1.0)
        confidence = np.where(measurable, scene_confidence(weight, standard_error), 0.0)
        note = (f'scene-based estimate from {stats.steps} steps ({stats.recordings} recording(s)): '
                f'{moving_fraction:.0%} of the pixels saw the scene move, median confidence '
                f'{float(np.median(confidence)):.2f}; gain patterns smoother than {reference_size} px are not '
                'separable from scene shading and are left in')
        if correlation > 0.2:
            note += (f'; warning: the estimate correlates with its diagonal neighbours ({correlation:.2f}), scene '
                     'texture may have leaked in (too little motion)')
    if not np.all(np.isfinite(gamma)):
        raise SceneFPNError(f'scene-based FPN estimate gave {int((~np.isfinite(gamma)).sum())} NaN/inf γ values')
    info['median_confidence'] = round(float(np.median(confidence)), 4)
    return FPNCalibration(response=gain.astype(np.float32), gamma=gamma.astype(np.float32),
                          dark=dark.astype(np.float32), bad=bad, ref=ref, confidence=confidence.astype(np.float32),
                          method='scene', note=note, info=info)


# ---------------------------------------------------------------------------------------------------------------------
# Registration-based estimate: the scene's global motion tells which pixels saw the same scene point
# ---------------------------------------------------------------------------------------------------------------------

#: Steps per sub-frame registered against the mosaic and added to it.
REGISTRATION_SUBFRAME = 16
#: Width (px) of the Gaussian peak of the low-pass weighted phase correlation (suppresses white FPN and counting noise).
REGISTRATION_SIGMA = 1.5
#: Lowest normalised phase-correlation peak accepted as a registration (1: identical frames).
REGISTRATION_MIN_QUALITY = 0.05
#: Largest distance (px) between a registered shift and the one predicted from the previous velocity.
REGISTRATION_MAX_SURPRISE = 16.0
#: Fewest sub-frames a mosaic needs to be used.
REGISTRATION_MIN_FRAMES = 16
#: Fewest distinct sensor positions (effective number, 1/Σp²) the pooled path needs for the registration estimate.
REGISTRATION_MIN_POSITIONS = 16.0
#: Most mosaics kept at once (a new one starts at each recording, segment, registration failure or canvas edge).
REGISTRATION_MAX_MOSAICS = 12
#: Fixed-point iterations of :func:`registration_gain`.
REGISTRATION_ITERATIONS = 3


@functools.lru_cache(maxsize=16)
def _correlation_weights(h: int, w: int, sigma: float) -> Tuple[np.ndarray, np.ndarray, float]:
    """Hann taper, the Gaussian frequency weight of :func:`phase_correlation_shift` and its peak for a zero shift."""
    taper = np.outer(np.hanning(h), np.hanning(w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    weight = np.exp(-2.0 * np.pi**2 * sigma**2 * (fy * fy + fx * fx))
    weight[0, :] = 0.0
    weight[:, 0] = 0.0
    full = float(np.fft.irfft2(weight.astype(np.complex128), s=(h, w))[0, 0])
    return taper, weight, full


def phase_correlation_shift(reference: np.ndarray, moving: np.ndarray,
                            sigma: float = REGISTRATION_SIGMA) -> Tuple[float, float, float]:
    """Global shift ``d`` with ``moving(x) ≈ reference(x + d)``, by low-pass weighted phase correlation.

    ``Q(ω) = conj(F_ref(ω))·F_mov(ω) / |F_ref·F_mov| · exp(−2π²σ²|ω|²)``,  ``q(x) = IFFT(Q)``,  ``d = −argmax q``

    (ω in cycles per pixel; both frames have their mean removed and a Hann taper). The Gaussian weight makes the peak a
    Gaussian of width σ, so a three-point log-parabola per axis gives the sub-pixel peak; it also keeps the white FPN
    and counting noise (flat spectra, same in both frames, so they pull towards d = 0) out of the high frequencies.
    The lines ω_y = 0 and ω_x = 0 are left out: column and row patterns live there.

    Returns:
        ``(dy, dx, quality)``; quality is the peak over its value for identical frames (≤ 1).
    """
    h, w = reference.shape
    taper, weight, full = _correlation_weights(h, w, float(sigma))
    a = np.fft.rfft2((reference - reference.mean()) * taper)
    b = np.fft.rfft2((moving - moving.mean()) * taper)
    cross = b * np.conj(a)
    cross /= np.abs(cross) + 1e-12
    surface = np.fft.irfft2(cross * weight, s=(h, w))
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)

    def refine(m1: float, c: float, p1: float) -> float:
        if m1 > 0 and c > 0 and p1 > 0:  # log-parabola: exact for a Gaussian peak
            m1, c, p1 = np.log(m1), np.log(c), np.log(p1)
        denominator = m1 - 2.0 * c + p1
        return float(np.clip(0.5 * (m1 - p1) / denominator, -0.5, 0.5)) if denominator < 0 else 0.0

    c = surface[iy, ix]
    oy = refine(surface[(iy - 1) % h, ix], c, surface[(iy + 1) % h, ix])
    ox = refine(surface[iy, (ix - 1) % w], c, surface[iy, (ix + 1) % w])
    py = (iy + oy + h / 2.0) % h - h / 2.0
    px = (ix + ox + w / 2.0) % w - w / 2.0
    return -py, -px, float(c / full) if full > 0 else 0.0


def registered_shift(reference: np.ndarray, moving: np.ndarray, sigma: float = REGISTRATION_SIGMA,
                     refinements: int = 2) -> Tuple[float, float, float]:
    """:func:`phase_correlation_shift` refined on the overlap: ``d = round(d₀) + d₁``, d₁ measured between the parts
    of the two frames that saw the same scene (``moving[x]`` against ``reference[x + round(d₀)]``).

    The taper is fixed to the frame, so a whole-frame correlation leans towards d = 0 when the shift is large; on the
    overlap the remaining shift is sub-pixel and the lean vanishes.
    """
    h, w = reference.shape
    dy, dx, quality = phase_correlation_shift(reference, moving, sigma)
    for _ in range(refinements):
        iy, ix = int(round(dy)), int(round(dx))
        if abs(iy) > h // 2 or abs(ix) > w // 2 or (iy == 0 and ix == 0):  # (0, 0): the overlap is the frame
            break
        ref = reference[max(iy, 0):h + min(iy, 0), max(ix, 0):w + min(ix, 0)]
        mov = moving[max(-iy, 0):h + min(-iy, 0), max(-ix, 0):w + min(-ix, 0)]
        ry, rx, quality = phase_correlation_shift(ref, mov, sigma)
        dy, dx = iy + ry, ix + rx
        if abs(ry) < 0.5 and abs(rx) < 0.5:
            break
    return dy, dx, quality


class _Mosaic:
    """One motion-compensated mosaic: ``S(u) = Σ_k Σ_x b(u − x − p_k)·c_k(x)`` on a canvas, the position kernel
    ``P(j) = Σ_k b(j − p_k)``, the coverage ``W = P ∗ 1`` and the per-pixel count ``N(x) = Σ_k c_k(x)``
    (b: bilinear weights, c_k: sub-frames, p_k: their positions)."""

    def __init__(self, shape: Tuple[int, int], margin: int, segment: int) -> None:
        self.shape = shape
        self.margin = margin
        size = 2 * margin + 2
        self.canvas = np.zeros((shape[0] + size - 1, shape[1] + size - 1), np.float64)
        self.cover = np.zeros_like(self.canvas)
        self.kernel = np.zeros((size, size), np.float64)
        self.count = np.zeros(shape, np.float64)
        self.frames = 0
        self.segment = segment

    def _corner(self, position: np.ndarray) -> Tuple[int, int, float, float]:
        y, x = self.margin + float(position[0]), self.margin + float(position[1])
        iy, ix = int(np.floor(y)), int(np.floor(x))
        return iy, ix, y - iy, x - ix

    def inside(self, position: np.ndarray) -> bool:
        """Whether a frame at ``position`` fits on the canvas."""
        iy, ix, _, _ = self._corner(position)
        return 0 <= iy and 0 <= ix and iy + 1 < self.kernel.shape[0] and ix + 1 < self.kernel.shape[1]

    def splat(self, frame: np.ndarray, position: np.ndarray) -> None:
        """Add a sub-frame seen at ``position`` (dy, dx), which must be :meth:`inside`."""
        iy, ix, fy, fx = self._corner(position)
        h, w = self.shape
        for dy, dx, b in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
            if b > 0:
                self.canvas[iy + dy:iy + dy + h, ix + dx:ix + dx + w] += b * frame
                self.cover[iy + dy:iy + dy + h, ix + dx:ix + dx + w] += b
                self.kernel[iy + dy, ix + dx] += b
        self.count += frame
        self.frames += 1

    def view(self, position: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
        """The mean frame the mosaic holds at the integer position nearest ``position``: ``(image, integer position,
        covered fraction)``; points never seen take the mean of the seen ones."""
        iy, ix = int(round(self.margin + float(position[0]))), int(round(self.margin + float(position[1])))
        h, w = self.shape
        iy = min(max(iy, 0), self.canvas.shape[0] - h)
        ix = min(max(ix, 0), self.canvas.shape[1] - w)
        cover = self.cover[iy:iy + h, ix:ix + w]
        seen = cover > 0.5
        image = np.where(seen, self.canvas[iy:iy + h, ix:ix + w] / np.maximum(cover, 1e-12), 0.0)
        if seen.any():
            image[~seen] = image[seen].mean()
        return image, np.array([iy - self.margin, ix - self.margin], np.float64), float(seen.mean())

    def compact(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(S, P, N)`` cropped to the positions the path visited."""
        rows, cols = np.nonzero(self.kernel)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        h, w = self.shape
        return self.canvas[r0:r1 + h - 1, c0:c1 + w - 1], self.kernel[r0:r1, c0:c1], self.count


def effective_positions(kernel: np.ndarray) -> float:
    """How many distinct sensor positions a path visited:  ``n_eff = (Σ_j P(j))² / Σ_j P(j)²``."""
    total = float(kernel.sum())
    return total * total / max(float((kernel * kernel).sum()), 1e-12)


class SceneRegistration:
    """Registers the scene's global motion and accumulates motion-compensated mosaics, in bounded memory.

    Every ``subframe``-step sub-frame is registered (:func:`registered_shift`) against the mosaic built so far, viewed
    at the position predicted from the previous two (constant velocity), which gives the sensor's position ``p_k`` in
    the scene; the sub-frame is then added to the mosaic there, bilinearly (:class:`_Mosaic`). Registering against the
    mosaic rather than the previous frame keeps the positions from drifting, and the mosaic has the FPN averaged out.
    A registration that fails (weak peak, a jump off the predicted path, too little of the view seen before), a new
    recording, a new time segment or the canvas edge start a new mosaic. Memory: at most ``max_mosaics`` canvases of
    ``(H + 2M + 1) × (W + 2M + 1)``, M = ``margin`` (default max(H, W)).
    """

    def __init__(self, shape: Tuple[int, int], bounds: np.ndarray, subframe: int = REGISTRATION_SUBFRAME,
                 margin: Optional[int] = None, sigma: float = REGISTRATION_SIGMA,
                 min_quality: float = REGISTRATION_MIN_QUALITY, max_surprise: float = REGISTRATION_MAX_SURPRISE,
                 max_mosaics: int = REGISTRATION_MAX_MOSAICS) -> None:
        if subframe < 1:
            raise ValueError(f'SceneRegistration: subframe must be >= 1, got {subframe}')
        self.shape = tuple(int(v) for v in shape)
        self.bounds = np.asarray(bounds)
        self.subframe = int(subframe)
        self.margin = int(margin if margin is not None else max(self.shape))
        self.sigma, self.min_quality, self.max_surprise = sigma, min_quality, max_surprise
        self.max_mosaics = int(max_mosaics)
        self.mosaics: list = []
        self.frames = 0
        self.registered = 0
        self.failures = 0
        self.qualities: list = []
        self._partial = np.zeros(self.shape, np.int64)
        self._partial_steps = 0
        self._fed = 0
        self._sub_start = 0
        self._mosaic: Optional[_Mosaic] = None
        self._positions: list = []

    def add(self, block: np.ndarray) -> None:
        """Feed (n, H, W) 0/1 spikes following the previous block of the same recording."""
        n, i = block.shape[0], 0
        while i < n:
            if self._partial_steps == 0 and n - i >= self.subframe:  # whole sub-frames at once
                full = (n - i) // self.subframe
                sums = block[i:i + full * self.subframe].reshape(full, self.subframe, *self.shape).sum(
                    axis=1, dtype=np.int64)
                for q, s in enumerate(sums):
                    self._add_sub(s, self._fed + i + q * self.subframe)
                i += full * self.subframe
                continue
            take = min(n - i, self.subframe - self._partial_steps)
            if self._partial_steps == 0:
                self._sub_start = self._fed + i
            self._partial += block[i:i + take].sum(axis=0, dtype=np.int64)
            self._partial_steps += take
            i += take
            if self._partial_steps == self.subframe:
                self._add_sub(self._partial.copy(), self._sub_start)
                self._partial[:] = 0
                self._partial_steps = 0
        self._fed += n

    def end_recording(self) -> None:
        """Close the recording: its mosaic is closed, an unfinished sub-frame dropped."""
        self._close()
        self._fed -= self._partial_steps
        self._fed += self._partial_steps  # (its steps still count for the segment bounds)
        self._partial[:] = 0
        self._partial_steps = 0

    def _add_sub(self, sub: np.ndarray, start: int) -> None:
        frame = sub.astype(np.float64)
        self.frames += 1
        segment = int(np.searchsorted(self.bounds, start, side='right') - 1)
        if frame.mean() <= 0:
            self._close()
            return
        if self._mosaic is not None and self._mosaic.segment != segment:
            self._close()
        if self._mosaic is None:
            self._start(frame, segment)
            return
        last = self._positions[-1]
        predicted = last + ((last - self._positions[-2]) if len(self._positions) > 1 else 0.0)
        if not self._mosaic.inside(predicted):
            self._close()
            self._start(frame, segment)
            return
        view, corner, seen = self._mosaic.view(predicted)
        dy, dx, quality = registered_shift(view, frame, self.sigma)
        self.qualities.append(quality)
        position = corner + np.array([dy, dx])
        if (quality < self.min_quality or seen < 0.5 or np.hypot(*(position - predicted)) > self.max_surprise
                or not self._mosaic.inside(position)):
            self.failures += 1
            self._close()
            self._start(frame, segment)
            return
        self.registered += 1
        self._mosaic.splat(frame, position)
        self._positions.append(position)

    def _start(self, frame: np.ndarray, segment: int) -> None:
        self._mosaic = _Mosaic(self.shape, self.margin, segment)
        self._mosaic.splat(frame, np.zeros(2))
        self._positions = [np.zeros(2)]

    def _close(self) -> None:
        mosaic, self._mosaic, self._positions = self._mosaic, None, []
        if mosaic is None or mosaic.frames < REGISTRATION_MIN_FRAMES:
            return
        self.mosaics.append(mosaic)
        if len(self.mosaics) > self.max_mosaics:
            self.mosaics.remove(min(self.mosaics, key=lambda m: m.frames))

    def usable(self) -> list:
        """The closed mosaics as ``(S, P, N)`` (close the recording first)."""
        return [m.compact() for m in self.mosaics]


def mosaic_spread(gain: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The summed gain each mosaic point was seen with:  ``G(u) = (g ∗ P)(u) = Σ_j P(j)·g(u − j)``."""
    from scipy.signal import fftconvolve

    return fftconvolve(gain, kernel, mode='full')


def mosaic_scene(canvas: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """The scene on the mosaic, gain removed:  ``L̂(u) = S(u) / G(u)`` (0 where nothing was seen)."""
    floor = 1e-6 * max(float(spread.max()), 1e-12)
    return np.where(spread > floor, canvas / np.maximum(spread, floor), 0.0)


def mosaic_gather(scene: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The light each pixel saw along the path:  ``D(x) = Σ_j P(j)·L̂(x + j) = Σ_k L̂(x + p_k)`` (bilinear)."""
    from scipy.signal import fftconvolve

    return fftconvolve(scene, kernel[::-1, ::-1], mode='valid')


def registration_gain(mosaics: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                      iterations: int = REGISTRATION_ITERATIONS,
                      initial: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Registration-based gain: the fixed point of  ``ĝ(x) = Σ_m N_m(x) / Σ_m D_m(x)``  over mosaics m.

    A sub-frame placed at ``p_k`` counts ``c_k(x) = g(x)·L(x + p_k)·t``, so ``N(x) = Σ_k c_k(x) = g(x)·Σ_k L(x + p_k)``
    and, with ``L̂ = S / (ĝ ∗ P)`` (:func:`mosaic_scene`, :func:`mosaic_spread`) and ``D`` its sum along the path
    (:func:`mosaic_gather`), ``N / D = g`` at the fixed point: every pixel is compared with the other pixels that saw
    the same scene points. Gain is fixed up to one constant; the result has median 1. Each iteration starts from the
    previous ``ĝ`` (``initial``, or 1).

    Args:
        mosaics: ``(S, P, N)`` per mosaic (canvas sums, position kernel, per-pixel counts; dark removed).
        iterations: Fixed-point iterations.
        initial: Starting gain, or ``None`` for 1.

    Returns:
        ``(ĝ, N)``: the gain (0 where a pixel never fired) and the summed counts behind it.
    """
    shape = mosaics[0][2].shape
    gain = np.ones(shape) if initial is None else np.asarray(initial, np.float64).copy()
    counts = np.sum([m[2] for m in mosaics], axis=0)
    for _ in range(max(int(iterations), 1)):
        seen = np.zeros(shape)
        for canvas, kernel, _ in mosaics:
            seen += mosaic_gather(mosaic_scene(canvas, mosaic_spread(gain, kernel)), kernel)
        gain = np.where(seen > 0, counts / np.maximum(seen, 1e-12), 0.0)
        positive = gain > 0
        if not positive.any():
            break
        gain = gain / np.median(gain[positive])  # a dead pixel keeps gain 0: it added nothing to S
    return gain, counts


def _dark_free(mosaic: Tuple[np.ndarray, np.ndarray, np.ndarray], dark: np.ndarray,
               subframe: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A mosaic with the dark counts removed:  ``S − t·(d ∗ P)``,  ``N − t·d·Σ_j P(j)``  (t steps per sub-frame)."""
    canvas, kernel, count = mosaic
    if not np.any(dark):
        return mosaic
    return (np.maximum(canvas - subframe * mosaic_spread(dark, kernel), 0.0), kernel,
            np.maximum(count - subframe * dark * float(kernel.sum()), 0.0))


def _registration_estimate(stats: SceneStatistics,
                           dark: np.ndarray) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray]], Dict[str, Any]]:
    """``((ĝ, se), info)`` of the registration path, or ``(None, info)`` where it cannot be trusted.

    Used only when at least half the frames registered and a mosaic's path visited at least
    :data:`REGISTRATION_MIN_POSITIONS` positions (:func:`effective_positions`). se is the spread of log ĝ over the
    time segments' separate estimates over √segments (the constant-statistics one with a single segment).
    """
    reg = stats.registration
    if reg is None:
        return None, {}
    kept = [m for m in reg.mosaics if effective_positions(m.kernel) >= REGISTRATION_MIN_POSITIONS]
    fraction = reg.registered / max(reg.frames, 1)
    positions = float(sum(effective_positions(m.kernel) for m in kept))
    info = dict(registered_fraction=round(fraction, 4), mosaics=len(kept), path_positions=round(positions, 1))
    if not kept or fraction < 0.5:
        return None, info
    parts = [_dark_free(m.compact(), dark, reg.subframe) for m in kept]
    gain, _ = registration_gain(parts)
    segments = sorted({m.segment for m in kept})
    if len(segments) >= 2:
        logs = [np.log(np.maximum(registration_gain([p for p, m in zip(parts, kept) if m.segment == s])[0], 1e-6))
                for s in segments]
        error = np.std(np.stack(logs), axis=0, ddof=1) / np.sqrt(len(logs))
    else:
        error = _segment_standard_error(stats, dark, SCENE_REFERENCE_SIZE)
    return (gain, error), info


def _scene_sources(recordings, load_kwargs: dict) -> list:
    """(name, frames, read(start, stop)) of each recording: arrays, paths (read window by window) or readers."""
    from .io import RecordingReader

    if isinstance(recordings, (str, os.PathLike, np.ndarray)) or hasattr(recordings, 'read'):
        recordings = [recordings]
    sources = []
    for rec in recordings:
        if isinstance(rec, np.ndarray) or not hasattr(rec, 'read') and not isinstance(rec, (str, os.PathLike)):
            array = np.asarray(rec)
            name = f'array{array.shape}'
            if array.ndim == 2 or (array.ndim == 3 and array.shape[0] == 1):
                raise SceneFPNError(f'{name}: a single frame; a scene-based FPN estimate needs a recording over '
                                    'time (T, H, W) with the scene moving')
            if array.ndim != 3:
                raise SceneFPNError(f'{name}: expected (T, H, W) spikes, found {array.ndim} dimensions')
            sources.append((name, array.shape[0], array.shape[1:], lambda a, b, arr=array: arr[a:b]))
            continue
        reader = rec if hasattr(rec, 'read') else RecordingReader(rec, **load_kwargs)
        name = str(getattr(reader, 'path', rec))
        if reader.frames == 1:
            raise SceneFPNError(f'{name}: a single frame; a scene-based FPN estimate needs a recording over time')
        sources.append((name, reader.frames, (reader.height, reader.width), reader.read))
    if not sources:
        raise SceneFPNError('no recordings given')
    return sources


def _progress_callback(progress: ProgressArg, total: int) -> Tuple[Optional[Callable[[int], Any]], Any]:
    if callable(progress):
        return progress, None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit='step', desc='scene FPN', mininterval=1.0)
        return bar.update, bar
    return None, None


def estimate_fpn_from_scene(recordings,
                            dark_recordings: Optional[Sequence[Recording]] = None,
                            window: int = SCENE_WINDOW,
                            reference_size: int = SCENE_REFERENCE_SIZE,
                            min_steps: int = SCENE_MIN_STEPS,
                            motion_contrast: float = SCENE_MOTION_CONTRAST,
                            min_moving_fraction: float = SCENE_MIN_MOVING_FRACTION,
                            chunk_frames: int = 1024,
                            progress: ProgressArg = None,
                            registration: bool = True,
                            **load_kwargs) -> FPNCalibration:
    """Estimate the FPN correction γ from ordinary recordings of a moving scene (no flat field).

    Registration (used when it holds): the scene's global motion is registered every 16 steps against a mosaic of
    what was seen so far (:class:`SceneRegistration`); a sub-frame at sensor position ``p_k`` counts
    ``c_k(x) = g(x)·L(x + p_k)·t``, so the pixels that saw the same scene point L(u) share it and::

        S(u) = Σ_k c_k(u − p_k),   L̂ = S / (ĝ ∗ P),   ĝ(x) = Σ_k c_k(x) / Σ_k L̂(x + p_k)     (iterated, median ĝ = 1)

    with ``P`` the histogram of positions (:func:`registration_gain`). It recovers every spatial frequency of the gain
    (shading included) and no scene texture leaks in. It needs one global translation: frames that do not register
    (weak correlation peak, a jump off the path), a path over fewer than :data:`REGISTRATION_MIN_POSITIONS`
    positions (a still camera) or fewer than half the frames registered fall back to constant statistics below.
    ``info['estimator']`` says which was used; the standard error is the spread of the 4 time segments' estimates
    and shrinks γ towards 1 (:func:`robust_shrinkage`, :func:`scene_confidence`).

    Constant statistics (the fall-back): pixel x fires at ``m(x) = g(x)·μ(x) + d(x)`` spikes per step on average,
    with ``μ(x)`` the light it saw averaged over time. When the scene moves across the sensor every pixel sees about
    the same mixture of the scene, so μ varies only slowly across the sensor and::

        B(x) = median_{k×k} log m,   ĝ(x) = exp(log m(x) − B(x)),   γ(x) = (R_ref / ĝ(x))^w(x),   R_ref = median ĝ

    with ``w`` the motion weight (:func:`motion_weight`, :func:`excess_temporal_contrast`). White and column/row
    patterns (finer than k px) separate from the scene; a smooth shading (vignetting) cannot be told from the scene's
    own shading and stays in the image. A measured dark rate (``dark_recordings``) is subtracted from m; without it
    the dark rate is taken as 0 (a pixel's dark offset cannot be told from its gain by the mean alone).

    A static scene (fewer than ``min_moving_fraction`` of the pixels saw their light change by more than
    ``motion_contrast`` beyond counting noise) returns γ = 1 and confidence 0 with a note saying so: its texture
    would otherwise be taken for gain.

    Args:
        recordings: One or more (T, H, W) 0/1 arrays, ``.dat``/``.npz`` paths or :class:`~.io.RecordingReader`
            objects (files are read ``chunk_frames`` at a time).
        dark_recordings: Optional lens-capped recordings; their mean rate is subtracted.
        window: Steps per short window (motion measure).
        reference_size: Side of the neighbourhood whose median log rate is the reference, px (odd).
        min_steps: Fewest steps of all recordings together.
        motion_contrast: κ of :func:`motion_weight`.
        min_moving_fraction: Fraction of moving pixels below which the scene counts as static.
        chunk_frames: Frames read at a time.
        progress: True for a progress bar, or a callable receiving each block's number of steps.
        registration: Register the scene's global motion and use the registration-based estimate where it holds
            (False: constant statistics only).
        **load_kwargs: Passed to the readers (height, width, flipud, head, key).

    Returns:
        An :class:`FPNCalibration` with method ``'scene'``, ``confidence``, ``note`` and ``info``.

    Raises:
        SceneFPNError: A single frame, too few steps, NaN or non-0/1 spikes, frames of different shapes, no light.
    """
    sources = _scene_sources(recordings, load_kwargs)
    shape = tuple(sources[0][2])
    for name, _, frame_shape, _ in sources[1:]:
        if tuple(frame_shape) != shape:
            raise SceneFPNError(f'{name}: frame shape {tuple(frame_shape)} differs from the first recording\'s {shape}')
    total = sum(frames for _, frames, _, _ in sources)
    if total < max(min_steps, 2):
        detail = f' in {len(sources)} recordings' if len(sources) > 1 else ''
        raise SceneFPNError(f'recording too short: {total} steps{detail}, need {min_steps} (a scene-based FPN estimate '
                            'needs the scene to move across the sensor meanwhile)')
    dark = None
    if dark_recordings:
        dark, _ = _mean_rate(dark_recordings, load_kwargs, chunk_frames, 'dark')
        if dark.shape != shape:
            raise SceneFPNError(f'dark recordings are {dark.shape}, the scene recordings {shape}')
    stats = SceneStatistics(shape, total, window=window, registration=registration)
    update, bar = _progress_callback(progress, total)
    try:
        for name, frames, _, read in sources:
            for start in range(0, frames, chunk_frames):
                block = read(start, min(frames, start + chunk_frames))
                stats.add(block, name)
                if update is not None:
                    update(block.shape[0])
            stats.end_recording()
    finally:
        if bar is not None:
            bar.close()
    return estimate_fpn_from_stats(stats, dark, reference_size=reference_size, motion_contrast=motion_contrast,
                                   min_moving_fraction=min_moving_fraction, min_steps=min_steps,
                                   registration=registration)


def estimate_fpn_for_recording(recording, min_steps: int = SCENE_MIN_STEPS, progress: ProgressArg = None,
                               **kwargs) -> FPNCalibration:
    """``despike-infer --fpn auto``: the scene-based γ of the recording being reconstructed.

    Args:
        recording: (T, H, W) 0/1 array, a ``.dat``/``.npz`` path, or the :class:`~.io.RecordingReader` already open.
        min_steps: Fewest steps accepted.
        progress: As :func:`estimate_fpn_from_scene`.
        **kwargs: Further options of :func:`estimate_fpn_from_scene` (reader options for a path).

    Returns:
        The :class:`FPNCalibration`; its ``note`` says how far to trust it (γ = 1 and a note for a static scene).

    Raises:
        SceneFPNError: ``recording too short: N steps, need M``, a single frame, NaN spikes, no light.
    """
    return estimate_fpn_from_scene([recording], min_steps=min_steps, progress=progress, **kwargs)
