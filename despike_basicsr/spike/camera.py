"""Integrate-and-fire spike-camera simulator (reset by subtraction, fixed-pattern noise, dark current, shot noise).

Per pixel and step t (DESIGN.md §3):  A(t) = A(t-1) + η·g·I(t) + dark (+ shot noise);  S(t) = [A(t) ≥ θ];
A(t) -= θ·S(t), with A(0) ~ U(0, θ).

The potential is kept as a 32-bit fixed-point phase ``X = A / θ · 2**32`` (uint32). Reset by subtraction is then the
wrap-around of 32-bit addition, and a spike is a carry: ``S(t) = [X(t) < ρ(t)]`` with ``ρ = r / θ · 2**32``, ``r`` the
increment. All paths (closed form, per-step loop, numpy, torch, CPU, CUDA) therefore agree bit for bit, and rates are
exact to 2**-32 of θ (increments are rounded through float32, about 1e-7 relative). A pixel whose increment reaches θ
saturates: it fires every step and its potential is held (at most one spike per step, the excess is discarded).
"""
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple, Union

import numpy as np

from ._torch import is_tensor

if TYPE_CHECKING:  # pragma: no cover
    import torch

PHASE_SCALE = 2.0**32
MAX_PHASE_F32 = np.float32(4294967040.0)  # largest float32 below 2**32, so the uint32 cast never overflows
DEFAULT_ELECTRONS_PER_UNIT = 500.0  # shot_noise=True: photo-electrons per unit potential (θ = 2 -> 1000 e- per spike)
_BLOCK = 8  # steps per closed-form block: one packed byte plane; small enough to stay in cache

Intensity = Union[np.ndarray, 'torch.Tensor', Callable[[np.ndarray], np.ndarray]]


def firing_rate(intensity, threshold: float = 2.0, eta: float = 1.0, gain=1.0, dark=0.0):
    """Expected spikes per step of a constant scene: ``rate = min(1, (η·g·I + dark) / θ)``."""
    return np.minimum(1.0, (eta * np.asarray(gain) * np.asarray(intensity) + np.asarray(dark)) / threshold)


def spike_count_closed_form(initial_potential, increment, steps, threshold: float = 2.0):
    """Spikes fired up to step t by a constant increment r < θ:  ``C(t) = floor((A0 + t·r) / θ)``.

    The spike at step t is ``C(t) - C(t-1)``. :func:`simulate` evaluates this identity in 32-bit fixed point, where
    ``C(t) - C(t-1) = [ (X0 + t·ρ) mod 2**32 < ρ ]``; this float version is the reference the tests check it against.
    """
    t = np.asarray(steps)
    return np.floor((np.asarray(initial_potential) + t * np.asarray(increment)) / threshold).astype(np.int64)


def structured_gain(shape: Tuple[int, int],
                    column_std: float = 0.0,
                    row_std: float = 0.0,
                    shading: float = 0.0,
                    rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Structured part of the gain: ``s(x, y) = c(x)·r(y)·(1 − shading·ρ(x, y)²)``.

    ``c ~ N(1, column_std)`` per column (column amplifiers / comparators), ``r ~ N(1, row_std)`` per row (row drivers)
    and a smooth radial shading, 1 at the centre and ``1 − shading`` at the corners (ρ = distance from the centre over
    the half-diagonal; lens vignetting and illumination falloff look like it).

    Args:
        shape: ``(H, W)``.
        column_std: Spread of the column gains.
        row_std: Spread of the row gains.
        shading: Relative falloff from the centre to the corners, in [0, 1).
        rng: Random generator (columns drawn first, then rows).

    Returns:
        ``(H, W)`` float64 multiplicative map (all ones when every argument is 0).
    """
    if column_std < 0 or row_std < 0 or not 0 <= shading < 1:
        raise ValueError(f'structured_gain: column_std and row_std must be >= 0 and shading in [0, 1), got '
                         f'{column_std}, {row_std}, {shading}')
    rng = np.random.default_rng() if rng is None else rng
    height, width = shape
    columns = rng.normal(1.0, column_std, size=width) if column_std > 0 else np.ones(width)
    rows = rng.normal(1.0, row_std, size=height) if row_std > 0 else np.ones(height)
    y = (np.arange(height) - (height - 1) / 2.0)[:, None]
    x = (np.arange(width) - (width - 1) / 2.0)[None, :]
    rho2 = (x * x + y * y) / max(((height - 1) / 2.0)**2 + ((width - 1) / 2.0)**2, 1e-12)
    return rows[:, None] * columns[None, :] * (1.0 - shading * rho2)


def sample_fpn(shape: Tuple[int, int],
               gain_std: float = 0.058,
               dark_rate: float = 0.0,
               dark_std: float = 0.0,
               seed: Optional[int] = None,
               column_std: float = 0.0,
               row_std: float = 0.0,
               shading: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Draw a camera-like fixed-pattern-noise pair: gain ``g = w·s`` with white ``w ~ N(1, gain_std)`` and the
    structured ``s`` of :func:`structured_gain` (columns, rows, smooth shading); dark ~ N(dark_rate, dark_std).

    Both are clipped at 0 (a gain or dark current cannot be negative); the dark map is in potential units per step.
    With ``column_std = row_std = shading = 0`` (the defaults) the draw is exactly the white one of earlier versions:
    the structured terms use the generator only after the white gain and the dark map.

    Args:
        shape: ``(H, W)``.
        gain_std: White (pixel to pixel) gain spread.
        dark_rate: Mean dark increment per step (potential units).
        dark_std: Spread of the dark increment.
        seed: Random seed.
        column_std: Spread of per-column gains.
        row_std: Spread of per-row gains.
        shading: Smooth radial falloff to the corners, in [0, 1).

    Returns:
        ``(gain, dark)`` float32 maps of ``shape``.
    """
    if gain_std < 0 or dark_std < 0 or dark_rate < 0:
        raise ValueError(f'sample_fpn: gain_std, dark_rate and dark_std must be >= 0, got {gain_std}, {dark_rate}, '
                         f'{dark_std}')
    rng = np.random.default_rng(seed)
    gain = rng.normal(1.0, gain_std, size=shape)
    dark = np.clip(rng.normal(dark_rate, dark_std, size=shape), 0.0, None).astype(np.float32)
    if column_std or row_std or shading:
        gain = gain * structured_gain(shape, column_std, row_std, shading, rng)
    return np.clip(gain, 0.0, None).astype(np.float32), dark


def _as_numpy_map(value, shape, name: str) -> Optional[np.ndarray]:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim and arr.shape != tuple(shape):
        raise ValueError(f'simulate: {name} must be a scalar or shaped {tuple(shape)}, found {arr.shape}')
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f'simulate: {name} must be finite and >= 0')
    return arr


def _electrons_per_unit(shot_noise) -> float:
    if shot_noise is True:
        return DEFAULT_ELECTRONS_PER_UNIT
    q = float(shot_noise)
    if q <= 0:
        raise ValueError(f'simulate: shot_noise must be True or a positive electrons-per-unit scale, got {shot_noise}')
    return q


class _PhaseModel:
    """Per-pixel constants of the fixed-point model, shared by the numpy and torch paths so they agree bit for bit.

    The phase increment is ``ρ = I·(η·g·2**32/θ) + dark·2**32/θ`` evaluated in float32, clipped below 2**32 and
    truncated to an integer; every path computes it with exactly these operations.
    """

    def __init__(self, shape, threshold, eta, gain, dark):
        scale = np.float32(PHASE_SCALE / threshold)
        gain_map = _as_numpy_map(gain, shape, 'gain')
        dark_map = _as_numpy_map(dark, shape, 'dark')
        self.gain_scale = np.float32(eta) * scale if gain_map is None else (np.float32(eta) * gain_map) * scale
        self.dark_scale = None if dark_map is None else dark_map * scale
        self.max_gain_scale = float(np.max(self.gain_scale))
        self.max_dark_scale = 0.0 if dark_map is None else float(np.max(self.dark_scale))

    def may_saturate(self, max_intensity: float) -> bool:
        """Whether some increment can reach θ (a float64 bound with margin, so float32 rounding cannot slip past)."""
        return max_intensity * self.max_gain_scale + self.max_dark_scale >= 0.999 * float(MAX_PHASE_F32)

    def phase_float(self, intensity: np.ndarray, out_f: np.ndarray) -> np.ndarray:
        """Mean phase increment ``I·(η·g·2**32/θ) + dark·2**32/θ`` in float32, written into ``out_f``."""
        np.multiply(intensity, self.gain_scale, out=out_f)
        if self.dark_scale is not None:
            np.add(out_f, self.dark_scale, out=out_f)
        return out_f

    def phase_increment(self, intensity: np.ndarray, out_f: np.ndarray, out_u: np.ndarray,
                        clip: bool) -> Optional[np.ndarray]:
        """Write ρ for ``intensity`` (float32 frame or block) into ``out_u``; return the saturation mask if clipping."""
        return _quantise_phase(self.phase_float(intensity, out_f), out_u, clip)


def _quantise_phase(phase_f: np.ndarray, out_u: np.ndarray, clip: bool) -> Optional[np.ndarray]:
    """float32 phase increment -> uint32 ρ (truncation); with ``clip``, saturate at θ and return the mask."""
    saturated = None
    if clip:
        saturated = phase_f >= MAX_PHASE_F32
        np.minimum(phase_f, MAX_PHASE_F32, out=phase_f)
    np.copyto(out_u, phase_f, casting='unsafe')
    return saturated


def _check_intensity_values(block: np.ndarray, where: str) -> float:
    """Reject NaN/inf/negative light; return the block maximum (NaN fails both comparisons)."""
    if not block.size:
        return 0.0
    low, high = float(block.min()), float(block.max())
    if not (low >= 0 and high < np.inf):
        raise ValueError(f'simulate: {where} must be finite and >= 0 (linear light), found values in [{low}, {high}]')
    return high


def _simulate_numpy(intensity, steps, threshold, eta, gain, dark, shot_noise, rng, packed, chunk_steps, x0, progress):
    static = not callable(intensity) and np.ndim(intensity) == 2
    if callable(intensity):
        probe = np.asarray(intensity(np.arange(0, 1)))
        if probe.ndim != 3 or probe.shape[0] != 1:
            raise ValueError(f'simulate: intensity callable returned shape {probe.shape} for 1 step, expected '
                             f'(1, H, W)')
        shape = probe.shape[1:]
    else:
        intensity = np.asarray(intensity)
        shape = intensity.shape[-2:]
        if intensity.ndim == 3 and intensity.shape[0] < steps:
            raise ValueError(f'simulate: time-varying intensity has {intensity.shape[0]} frames, fewer than '
                             f'steps={steps}')
    electrons = _electrons_per_unit(shot_noise) if shot_noise else None
    model = _PhaseModel(shape, threshold, eta, gain, dark)
    x = _initial_phase_numpy(x0, shape, threshold, rng)
    h, w = shape
    out = np.empty(((steps + 7) // 8 if packed else steps, h, w), dtype=np.uint8)
    chunk_steps = max(_BLOCK, (int(chunk_steps) // _BLOCK) * _BLOCK)  # whole bytes per chunk when packing
    bar = _progress_bar(progress, steps)
    rho = np.empty(shape, np.uint32)
    scratch = np.empty(shape, np.float32)
    fired = np.empty((_BLOCK, h, w), np.bool_)

    if static:
        frame = intensity.astype(np.float32, copy=False)
        peak = _check_intensity_values(frame, 'intensity')
        saturated = model.phase_increment(frame, scratch, rho, clip=model.may_saturate(peak))
    if static and not shot_noise:
        offsets = np.arange(1, _BLOCK + 1, dtype=np.uint32)[:, None, None] * rho  # k·ρ for k = 1..8, mod 2**32
        block_step = np.uint32(_BLOCK) * rho
        phase = np.empty((_BLOCK, h, w), np.uint32)
        for t0 in range(0, steps, _BLOCK):
            # closed form: X(t0 + k) = X(t0) + k·ρ (mod 2**32); spike <=> carry <=> X < ρ
            n = min(_BLOCK, steps - t0)
            np.add(offsets, x, out=phase)
            # uint8 output: compare straight into the output frames (one pass fewer than via ``fired``)
            target = fired if packed or n < _BLOCK else out[t0:t0 + n].view(np.bool_)
            np.less(phase, rho, out=target)
            if saturated is not None:
                target |= saturated
            if target is fired:
                _emit_numpy(out, fired, t0, n, packed)
            x += block_step
            if bar is not None and (t0 // _BLOCK) % 64 == 63:
                bar.update(64 * _BLOCK)
        _close_bar(bar, steps)
        return out

    if shot_noise:
        # photo-electrons are Poisson: ρ = Poisson(Q·r)·(2**32/(Q·θ)), drawn frame by frame in step order, so neither
        # the chunking nor the packing changes the random stream
        electron_phase = np.float32(PHASE_SCALE / threshold / electrons)
        lam = np.empty(shape, np.float64)
        if static:
            np.multiply(model.phase_float(frame, scratch), 1.0 / float(electron_phase), out=lam)
    for t0 in range(0, steps, chunk_steps):
        n = min(chunk_steps, steps - t0)
        clip = saturated is not None if static else False
        if not static:
            if callable(intensity):
                block = np.asarray(intensity(np.arange(t0, t0 + n)))
                if block.shape != (n, h, w):
                    raise ValueError(f'simulate: intensity callable returned shape {block.shape} for {n} steps, '
                                     f'expected {(n, h, w)}')
            else:
                block = intensity[t0:t0 + n]
            block = block.astype(np.float32, copy=False)
            clip = model.may_saturate(_check_intensity_values(block, f'intensity frames {t0}..{t0 + n - 1}'))
        for b0 in range(0, n, _BLOCK):
            m = min(_BLOCK, n - b0)
            for k in range(m):  # per-step loop only where each step has its own increment
                if shot_noise:
                    if not static:
                        np.multiply(model.phase_float(block[b0 + k], scratch), 1.0 / float(electron_phase), out=lam)
                    np.multiply(rng.poisson(lam), electron_phase, out=scratch, casting='unsafe')
                    sat = _quantise_phase(scratch, rho, clip=True)  # a noisy step may exceed θ
                elif static:
                    sat = saturated
                else:
                    sat = model.phase_increment(block[b0 + k], scratch, rho, clip=clip)
                x += rho
                np.less(x, rho, out=fired[k])
                if sat is not None:
                    fired[k] |= sat
            _emit_numpy(out, fired, t0 + b0, m, packed)
        if bar is not None:
            bar.update(n)
    _close_bar(bar, None)
    return out


def _initial_phase_numpy(x0, shape, threshold, rng) -> np.ndarray:
    """A(0) as a uint32 phase: uniform over [0, θ) from the seed, or the given potential map."""
    if x0 is None:
        return rng.integers(0, 2**32, size=shape, dtype=np.uint32)
    a0 = np.broadcast_to(np.asarray(x0, dtype=np.float64), shape)
    if not np.all((a0 >= 0) & (a0 < threshold)):
        raise ValueError(f'simulate: initial_potential must lie in [0, threshold={threshold})')
    return np.floor(a0 / threshold * PHASE_SCALE).astype(np.uint32)


def _emit_numpy(out: np.ndarray, fired: np.ndarray, t0: int, n: int, packed: bool) -> None:
    """Write n <= 8 boolean frames starting at step t0 (a multiple of 8 when packing) into ``out``."""
    if not packed:
        out[t0:t0 + n] = fired[:n]
        return
    plane = out[t0 // 8]
    bits = fired[:n].view(np.uint8)
    h, w = plane.shape
    if (h * w) % 8 == 0:  # combine 8 pixels at a time through uint64 views
        words = bits.reshape(n, -1).view(np.uint64)
        acc = words[0].copy()
        for b in range(1, n):
            acc |= words[b] << np.uint64(b)
        plane[...] = acc.view(np.uint8).reshape(h, w)
    else:
        plane[...] = bits[0]
        for b in range(1, n):
            plane |= bits[b] << b


def _progress_bar(progress: bool, steps: int):
    if not progress:
        return None
    from tqdm import tqdm  # only the command line asks for a bar
    return tqdm(total=steps, unit='step', desc='simulate')


def _close_bar(bar, steps) -> None:
    if bar is not None:
        if steps is not None:
            bar.update(steps - bar.n)
        bar.close()


def _to_numpy(value):
    return value.detach().cpu().numpy() if is_tensor(value) else value


def _simulate_torch(intensity, steps, threshold, eta, gain, dark, shot_noise, seed, packed, chunk_steps, x0, progress):
    """torch path (CPU or CUDA), int64 arithmetic mod 2**32; same numbers as numpy when noise-free."""
    import torch
    device = intensity.device
    static = intensity.ndim == 2
    h, w = intensity.shape[-2:]
    if intensity.ndim == 3 and intensity.shape[0] < steps:
        raise ValueError(f'simulate: time-varying intensity has {intensity.shape[0]} frames, fewer than '
                         f'steps={steps}')
    mask = (1 << 32) - 1
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(_initial_phase_numpy(x0, (h, w), threshold, rng).astype(np.int64)).to(device)
    max_phase = torch.tensor(float(MAX_PHASE_F32), dtype=torch.float32, device=device)

    model = _PhaseModel((h, w), threshold, eta, _to_numpy(gain), _to_numpy(dark))
    gain_scale = torch.as_tensor(model.gain_scale, device=device)
    dark_scale = None if model.dark_scale is None else torch.as_tensor(model.dark_scale, device=device)
    electrons = _electrons_per_unit(shot_noise) if shot_noise else None
    generator = None
    if shot_noise:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(rng.integers(0, 2**63 - 1)))
        electron_phase = float(np.float32(PHASE_SCALE / threshold / electrons))

    def phase_float(i):
        if not bool(torch.isfinite(i).all()) or bool((i < 0).any()):
            raise ValueError('simulate: intensity must be finite and >= 0 (linear light)')
        r = i.to(torch.float32) * gain_scale
        return r if dark_scale is None else r + dark_scale

    def to_phase(phase):
        if shot_noise:
            phase = torch.poisson(phase.to(torch.float64) / electron_phase, generator=generator).to(torch.float32)
            phase = phase * electron_phase
        return torch.minimum(phase, max_phase).to(torch.int64), phase >= max_phase

    out = torch.empty(((steps + 7) // 8 if packed else steps, h, w), dtype=torch.uint8, device=device)
    # int64 scratch is 8 bytes per pixel-step: keep a chunk at most 256 steps
    chunk_steps = min(256, max(_BLOCK, (int(chunk_steps) // _BLOCK) * _BLOCK))
    bar = _progress_bar(progress, steps)
    static_rate = phase_float(intensity) if static else None
    for t0 in range(0, steps, chunk_steps):
        n = min(chunk_steps, steps - t0)
        if static and not shot_noise:
            rho, saturated = to_phase(static_rate)
            k = torch.arange(1, n + 1, device=device, dtype=torch.int64)[:, None, None]
            phase = (x + k * rho) & mask  # closed form over the whole chunk
            fired = (phase < rho) | saturated
            x = phase[-1].clone()
        else:
            rates = static_rate.expand(n, h, w) if static else phase_float(intensity[t0:t0 + n])
            rho, saturated = to_phase(rates)
            phase = (x + torch.cumsum(rho, dim=0)) & mask  # per-step sums, vectorised as a running total
            fired = (phase < rho) | saturated
            x = phase[-1].clone()
        fired = fired.to(torch.uint8)
        if packed:
            planes = (n + 7) // 8
            pad = planes * 8 - n
            if pad:
                fired = torch.cat([fired, fired.new_zeros((pad, h, w))])
            fired = fired.view(planes, 8, h, w)
            shifts = torch.arange(8, device=device, dtype=torch.uint8).view(1, 8, 1, 1)
            out[t0 // 8:t0 // 8 + planes] = (fired << shifts).sum(dim=1, dtype=torch.uint8)
        else:
            out[t0:t0 + n] = fired
        if bar is not None:
            bar.update(n)
    _close_bar(bar, None)
    return out


def simulate(intensity: Intensity,
             steps: int,
             threshold: float = 2.0,
             eta: float = 1.0,
             gain=None,
             dark=None,
             shot_noise: Union[bool, float] = False,
             seed: Optional[int] = None,
             packed: bool = False,
             chunk_steps: int = 1024,
             initial_potential=None,
             progress: bool = False):
    """Simulate a spike camera watching ``intensity`` for ``steps`` steps (integrate and fire, reset by subtraction).

    ``A(t) = A(t-1) + η·g·I(t) + dark (+ shot noise);  S(t) = [A(t) ≥ θ];  A(t) -= θ·S(t);  A(0) ~ U(0, θ)``.

    A static noise-free scene uses the closed form ``C(t) = floor((A0 + t·r) / θ)``, ``S(t) = C(t) - C(t-1)``
    (in fixed point, see the module docstring); noise or time-varying light run a vectorised per-step loop. Work runs
    over ``chunk_steps`` steps at a time, so memory beyond the output is bounded, and the result does not depend on
    ``chunk_steps``.

    Args:
        intensity: Linear light in [0, 1]: (H, W) static, (T, H, W) time-varying (frame t drives step t), or a callable
            mapping an int array of step indices to (len, H, W). numpy, or a torch tensor (CPU/CUDA) for a torch
            result on the same device.
        steps: Number of steps T.
        threshold: Firing threshold θ.
        eta: Photo-electric conversion η.
        gain: Per-pixel gain g (FPN), (H, W) or scalar; ``None`` for 1.
        dark: Per-pixel dark increment per step, (H, W) or scalar; ``None`` for 0.
        shot_noise: ``True`` for Poisson shot noise with :data:`DEFAULT_ELECTRONS_PER_UNIT` electrons per unit
            potential, or that scale as a number (smaller is noisier).
        seed: Seed for A(0) and the noise; the output is a deterministic function of the inputs and the seed.
            (torch shot noise uses torch's generator, so it differs from the numpy stream for the same seed.)
        packed: Return the stream time-packed, (ceil(T/8), H, W) uint8 as :func:`despike_basicsr.spike.io.pack_time`.
        chunk_steps: Steps processed together (rounded to a multiple of 8).
        initial_potential: A(0) map in [0, θ) instead of the random draw.
        progress: Show a tqdm progress bar.

    Returns:
        (T, H, W) uint8 0/1 (or packed bytes), numpy or torch like ``intensity``.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f'simulate: steps must be a positive integer, got {steps}')
    if threshold <= 0 or eta <= 0:
        raise ValueError(f'simulate: threshold and eta must be > 0, got threshold={threshold}, eta={eta}')
    steps = int(steps)
    if is_tensor(intensity):
        if intensity.ndim not in (2, 3):
            raise ValueError(f'simulate: intensity must be (H, W) or (T, H, W), found {tuple(intensity.shape)}')
        return _simulate_torch(intensity, steps, threshold, eta, gain, dark, shot_noise, seed, packed, chunk_steps,
                               initial_potential, progress)
    if not callable(intensity) and np.ndim(intensity) not in (2, 3):
        raise ValueError(f'simulate: intensity must be (H, W), (T, H, W) or callable, found shape '
                         f'{np.shape(intensity)}')
    rng = np.random.default_rng(seed)
    return _simulate_numpy(intensity, steps, threshold, eta, gain, dark, shot_noise, rng, packed, chunk_steps,
                           initial_potential, progress)


def light_for_mean_rate(intensity: np.ndarray, mean_rate: float, threshold: float = 2.0, eta: float = 1.0,
                        max_rate: float = 0.95, percentile: float = 99.5) -> float:
    """The light level L that makes a scene fire at ``mean_rate`` spikes per step on average.

    The rate of a pixel of linear intensity I under light L is η·L·I/θ, so ``L = mean_rate·θ / (η·mean(I))``. L is
    lowered where that would drive the ``percentile`` brightest pixels above ``max_rate`` (a real exposure keeps
    highlights below saturation), so the realised mean rate can fall short of ``mean_rate`` in high-contrast scenes.

    Args:
        intensity: ``(H, W)`` linear intensity (the defocused scene).
        mean_rate: Wanted mean firing rate per step, in (0, 1).
        threshold: θ.
        eta: η.
        max_rate: Rate the bright pixels may reach.
        percentile: Which pixels count as the bright ones.

    Returns:
        The light factor L (multiply the intensity by it before :func:`simulate`).
    """
    if not 0 < mean_rate < 1:
        raise ValueError(f'light_for_mean_rate: mean_rate must lie in (0, 1), got {mean_rate}')
    image = np.asarray(intensity, dtype=np.float64)
    mean = max(float(image.mean()), 1e-6)
    bright = max(float(np.percentile(image, percentile)), mean)
    return min(mean_rate * threshold / (eta * mean), max_rate * threshold / (eta * bright))


def simulate_sensor(intensity: Intensity, sensor: Dict[str, float], steps: int, seed: int,
                    reference: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, float]:
    """Spikes of a scene seen by one camera at one light level: the evaluation camera and every training draw.

    ``sensor`` holds ``mean_rate`` (wanted spikes per step), ``threshold`` θ, ``eta`` η, ``gain_std`` (white gain
    spread), ``dark_rate`` (dark spikes per step), ``electrons`` (photo-electrons per unit potential: shot noise) and,
    optionally, ``max_rate`` (the rate the brightest 0.5 % may reach, default 0.95; above 1 some highlights saturate).
    The light L is set by :func:`light_for_mean_rate` on ``reference`` (default: ``intensity`` itself, which must then
    be a still ``(H, W)`` scene); a moving scene passes its frame sequence or callable with a still reference frame.

    Returns:
        ``(spikes (T, H, W) uint8, gain (H, W), rate_per_unit)``, ``rate_per_unit`` = η·L/θ.
    """
    still = reference if reference is not None else intensity
    if callable(still) or np.ndim(still) != 2:
        raise ValueError('simulate_sensor: a moving scene needs a still (H, W) reference frame for its light level')
    threshold, eta = sensor['threshold'], sensor['eta']
    light = light_for_mean_rate(still, sensor['mean_rate'], threshold, eta, max_rate=sensor.get('max_rate', 0.95))
    dark_potential = sensor['dark_rate'] * threshold
    gain, dark = sample_fpn(np.shape(still), sensor['gain_std'], dark_potential, 0.5 * dark_potential, seed=seed + 1)
    if callable(intensity):
        lit: Intensity = lambda t: intensity(t) * np.float32(light)  # noqa: E731
    else:
        lit = (np.asarray(intensity) * light).astype(np.float32)
    spikes = simulate(lit, steps, threshold=threshold, eta=eta, gain=gain, dark=dark, shot_noise=sensor['electrons'],
                      seed=seed)
    return spikes, gain, eta * light / threshold
