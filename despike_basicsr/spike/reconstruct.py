"""Classical spike-stream reconstructions: TFP (window mean) and TFI (inter-spike interval), and the display mapping.

All functions take numpy arrays or torch tensors shaped (T, H, W) or (B, T, H, W) (time is axis -3) and return the
same kind: firing rates in [0, 1] spikes per step, (H, W) or (B, H, W). To compare with a ground-truth image, map a
rate through :func:`rate_to_display` (linear intensity = rate·θ/η, clipped, then gamma).
"""
from typing import Optional

import numpy as np

from ._torch import is_tensor as _is_tensor
from .optics import linear_to_display


def _check_stream(spikes, name: str) -> int:
    if spikes.ndim not in (3, 4):
        raise ValueError(f'{name}: expected (T, H, W) or (B, T, H, W) spikes, found shape {tuple(spikes.shape)}')
    length = spikes.shape[-3]
    if length == 0:
        raise ValueError(f'{name}: the stream has no frames')
    return length


def _center(center: Optional[int], length: int, name: str) -> int:
    c = length // 2 if center is None else int(center)
    if not 0 <= c < length:
        raise ValueError(f'{name}: center {center} is outside the stream of {length} frames')
    return c


def tfp(spikes, center: Optional[int] = None, window: int = 41):
    """Texture from playback:  ``rate(x) = 1/|W| · Σ_{t ∈ W} S(x, t)``,  W = [c - window//2, c - window//2 + window).

    The window is clipped to the stream and the mean is taken over the frames it keeps.

    Args:
        spikes: (T, H, W) or (B, T, H, W) 0/1 stream.
        center: Target frame c (default T // 2).
        window: Window length in frames (41 = the common 2·20 + 1).

    Returns:
        float32 firing-rate image(s) in [0, 1].
    """
    length = _check_stream(spikes, 'tfp')
    c = _center(center, length, 'tfp')
    if window < 1:
        raise ValueError(f'tfp: window must be >= 1, got {window}')
    start = max(0, c - window // 2)
    stop = min(length, c - window // 2 + window)
    block = spikes[..., start:stop, :, :]
    if _is_tensor(spikes):
        import torch
        return block.to(torch.float32).mean(dim=-3)
    return block.mean(axis=-3, dtype=np.float64).astype(np.float32)


def tfi(spikes, center: Optional[int] = None):
    """Texture from inter-spike intervals:  ``rate(x) = 1 / (t_next - t_prev)``.

    ``t_prev`` is the last spike at or before the centre c, ``t_next`` the first spike after it. Where one side has no
    spike, a virtual spike just outside the stream (at -1 or T) closes the interval, so the rate there is a lower
    bound (the true interval is at least that long); a pixel with no spike at all gets 0.

    Args:
        spikes: (T, H, W) or (B, T, H, W) 0/1 stream.
        center: Target frame c (default T // 2).

    Returns:
        float32 firing-rate image(s) in [0, 1].
    """
    length = _check_stream(spikes, 'tfi')
    c = _center(center, length, 'tfi')
    before = spikes[..., :c + 1, :, :]
    after = spikes[..., c + 1:, :, :]
    if _is_tensor(spikes):
        import torch
        before = torch.flip(before.to(torch.uint8), dims=(-3, ))
        after = after.to(torch.uint8)
        has_prev = before.amax(dim=-3) > 0
        t_prev = torch.where(has_prev, c - before.argmax(dim=-3), torch.full_like(has_prev, -1, dtype=torch.int64))
        if after.shape[-3]:
            has_next = after.amax(dim=-3) > 0
            t_next = torch.where(has_next, c + 1 + after.argmax(dim=-3),
                                 torch.full_like(has_next, length, dtype=torch.int64))
        else:
            has_next = torch.zeros_like(has_prev)
            t_next = torch.full_like(t_prev, length)
        rate = 1.0 / (t_next - t_prev).to(torch.float32)
        return torch.where(has_prev | has_next, rate, torch.zeros_like(rate))
    before = np.asarray(before)[..., ::-1, :, :]
    after = np.asarray(after)
    has_prev = before.any(axis=-3)
    t_prev = np.where(has_prev, c - before.argmax(axis=-3), -1)
    if after.shape[-3]:
        has_next = after.any(axis=-3)
        t_next = np.where(has_next, c + 1 + after.argmax(axis=-3), length)
    else:
        has_next = np.zeros_like(has_prev)
        t_next = np.full(t_prev.shape, length)
    rate = 1.0 / (t_next - t_prev).astype(np.float32)
    return np.where(has_prev | has_next, rate, np.float32(0.0)).astype(np.float32)


def rate_to_display(rate, eta: float = 1.0, threshold: float = 2.0, gamma: float = 2.2, clip: bool = True):
    """Map a firing rate to a display image:  ``I = clip(rate·θ/η, 0, 1)``,  ``display = I^(1/γ)``.

    The inverse of the simulator's noise-free, unit-gain rate ``η·I/θ`` followed by the display gamma. ``clip=False``
    keeps intensities above 1 (``display = max(I, 0)^(1/γ)``), for an exposure applied afterwards.
    """
    linear = rate * (threshold / eta)
    if clip:
        return linear_to_display(linear, gamma=gamma)
    return (linear.clamp(min=0.0) if _is_tensor(linear) else np.maximum(linear, 0.0))**(1.0 / gamma)


METHODS = ('tfp', 'tfi')


def classical_display(spikes, method: str = 'tfp', center: Optional[int] = None, window: int = 41,
                      eta: float = 1.0, threshold: float = 2.0, gamma: float = 2.2, fpn_gamma=None,
                      clip: bool = True):
    """TFP or TFI at ``center`` as a display image: the one path from a stream to a classical picture.

    ``display = rate_to_display(rate · γ_fpn, η, θ, gamma)`` with ``rate`` from :func:`tfp` (``window`` frames) or
    :func:`tfi`. ``fpn_gamma`` (γ = R_ref / R, :mod:`despike_basicsr.spike.fpn`) turns each pixel's rate into the rate
    the reference pixel would fire at; None leaves rates as they are. The command line, the cascade front end,
    ``despike-infer`` and the benchmark all call this.

    Args:
        spikes: (T, H, W) or (B, T, H, W) 0/1 stream, numpy or torch.
        method: ``'tfp'`` or ``'tfi'``.
        center: Target frame (default T // 2).
        window: TFP window in frames.
        eta, threshold, gamma: The rescaling of :func:`rate_to_display`.
        fpn_gamma: Per-pixel FPN correction broadcastable to the rate image, or None.
        clip: Clip to [0, 1] (False: keep values above 1, :func:`rate_to_display`).

    Returns:
        Display image(s), in [0, 1] when ``clip``, (H, W) or (B, H, W), numpy or torch like ``spikes``.
    """
    if method == 'tfp':
        rate = tfp(spikes, center, window)
    elif method == 'tfi':
        rate = tfi(spikes, center)
    else:
        raise ValueError(f'classical_display: method must be one of {METHODS}, found {method!r}')
    if fpn_gamma is not None:
        rate = rate * fpn_gamma
    return rate_to_display(rate, eta=eta, threshold=threshold, gamma=gamma, clip=clip)
