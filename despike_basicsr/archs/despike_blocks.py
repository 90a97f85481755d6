"""Layers shared by DeSpikeNet: channel LayerNorm, residual block, the physical PSF kernel bank, candidate fusion.

Each module is small and works on ``(B, C, H, W)`` feature maps; the kernel bank produces ``m`` candidates per
feature map, shaped ``(B, m, C, H, W)``, which the fusion modules reduce back to ``(B, C, H, W)``.
"""
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def gaussian_kernel_2d(sigma: float, kernel_size: int) -> Tensor:
    """A normalised isotropic Gaussian G(x, y; σ) ∝ exp(−(x² + y²) / 2σ²) on a ``kernel_size`` square grid.

    σ = 0 gives a discrete delta (an in-focus point spread function).

    Args:
        sigma: Standard deviation in pixels (≥ 0).
        kernel_size: Odd side length of the kernel.

    Returns:
        ``(kernel_size, kernel_size)`` float32 tensor summing to 1.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd integer, got {kernel_size}')
    if sigma < 0:
        raise ValueError(f'sigma must be >= 0, got {sigma}')
    radius = kernel_size // 2
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    if sigma == 0:
        kernel = torch.zeros(kernel_size, kernel_size, dtype=torch.float64)
        kernel[radius, radius] = 1.0
        return kernel.float()
    profile = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = profile[:, None] * profile[None, :]
    return (kernel / kernel.sum()).float()


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a ``(B, C, H, W)`` map (one token per pixel).

    A map in channels-last memory takes ``F.layer_norm`` over its ``(B, H, W, C)`` view (one fused pass); others the
    explicit formula. Both compute (x − mean) / sqrt(var + eps) · weight + bias with the biased variance.

    Args:
        channels: Number of channels C.
        eps: Added to the variance for stability.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last):
            # channels-last memory: the channels of a pixel are contiguous, so the fused layer norm over the last
            # dimension of the (B, H, W, C) view applies without a copy (about 10x fewer passes over the map)
            out = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), self.weight, self.bias, self.eps)
            return out.permute(0, 3, 1, 2)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ResBlock(nn.Module):
    """conv3×3 → GELU → conv3×3 with an identity skip.

    Args:
        channels: Number of input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.gelu(self.conv1(x)))


class PhysicalKernelBank(nn.Module):
    """The physical discrete PSF prior: m learnable kernels, initialised as Gaussians with σ_j over a range.

    Every kernel is depthwise and shared across channels, so each candidate D_j = k_j * F is "F seen through one
    defocus level". Borders are replicate-padded so a kernel does not darken the image edge.

    Args:
        num_kernels: m, the number of kernels (defocus levels).
        kernel_size: Odd side length of every kernel.
        sigma_range: (σ_min, σ_max) in pixels; σ_j is spaced evenly over it (σ_min = 0 includes a delta).
    """

    def __init__(self, num_kernels: int = 8, kernel_size: int = 11, sigma_range: Sequence[float] = (0.5, 3.0)) -> None:
        super().__init__()
        if num_kernels < 1:
            raise ValueError(f'num_kernels must be >= 1, got {num_kernels}')
        if len(sigma_range) != 2 or not 0 <= sigma_range[0] <= sigma_range[1]:
            raise ValueError(f'sigma_range must be (min, max) with 0 <= min <= max, got {sigma_range}')
        sigmas = torch.linspace(float(sigma_range[0]), float(sigma_range[1]), num_kernels)
        kernels = torch.stack([gaussian_kernel_2d(float(s), kernel_size) for s in sigmas])
        self.register_buffer('init_sigmas', sigmas)
        self.weight = nn.Parameter(kernels[:, None])  # (m, 1, k, k)
        self.num_kernels = num_kernels
        self.kernel_size = kernel_size

    def forward(self, feat: Tensor) -> Tensor:
        """Apply every kernel to every channel: ``(B, C, H, W)`` → ``(B, m, C, H, W)``."""
        return convolve_bank(feat, self.weight[:, 0])


#: The kernel bank's implementations (:func:`bank_implementation`): every one computes k_j * F_c, replicate borders.
BANK_IMPLS = ('grouped_cl', 'grouped', 'depthwise_cl', 'direct', 'unshuffle2', 'unshuffle4', 'fft')
#: Environment variable naming one of :data:`BANK_IMPLS` to use everywhere instead of measuring.
BANK_IMPL_ENV = 'DESPIKE_BANK_IMPL'
#: Kernel entries smaller than this fraction of their kernel's largest magnitude are treated as zero by the spatial
#: convolutions (:func:`flush_tiny_kernel_entries`).
KERNEL_FLUSH_RATIO = 1e-20

#: Inputs with fewer elements than this take the fixed default without measuring: the forms differ by fractions of
#: a millisecond there, less than measuring them costs (tests and toy runs build many such shapes).
MIN_MEASURED_ELEMENTS = 1 << 16

_PLANS: Dict[tuple, str] = {}  # measured choices, by layout, gradients, shapes and dtype (any thread count)
_forced_impl: Optional[str] = None


def flush_tiny_kernel_entries(kernels: Tensor, ratio: float = KERNEL_FLUSH_RATIO) -> Tensor:
    """Set kernel entries below ``ratio`` × the kernel's largest magnitude to zero (forward only).

    A Gaussian of σ = 0.5 on an 11×11 grid has corner entries of 1e-44, float32 denormals (and products of features
    with entries near 1e-38 are denormal too). Many x86 CPUs take a microcode assist for every such multiply: measured
    on a CPU whose oneDNN reports AVX10.1/AMX, the bank's grouped convolution took 250 ms instead of 30–40 ms with the
    untrained (Gaussian-initialised) kernels. Dropping entries 1e-20 times smaller than the kernel's peak changes the
    output by less than 1e-20 of its magnitude, far below float32 rounding. The gradient still reaches every entry
    (straight-through), so training is unchanged.

    Args:
        kernels: ``(..., k, k)`` kernels.
        ratio: Relative size below which an entry counts as zero.

    Returns:
        The kernels with tiny entries zeroed, same shape and dtype.
    """
    limit = kernels.detach().abs().amax(dim=(-2, -1), keepdim=True) * ratio
    flushed = torch.where(kernels.detach().abs() < limit, torch.zeros_like(kernels), kernels)
    if kernels.requires_grad:
        return kernels + (flushed - kernels).detach()
    return flushed


#: Kernel-derived weights kept between calls without gradients (:func:`_cached_weight`), at most this many.
MAX_CACHED_WEIGHTS = 32
_WEIGHT_CACHE: Dict[tuple, tuple] = {}


def _cached_weight(kind: str, kernels: Tensor, build: Callable[[], Tensor], *extra: Any) -> Tensor:
    """``build()``, remembered per kernels tensor, version, dtype and ``extra`` while no gradient is recorded.

    In eval mode the bank's weights do not change between calls, so the flushed, flipped kernels and the
    space-to-depth weight need not be rebuilt for each of the network's fifteen bank calls. The entry keeps a
    reference to ``kernels`` (so its memory, hence its address, is not reused while the entry exists) and carries its
    version counter, which every in-place change (an optimiser step, ``load_state_dict``) increments. With
    gradients, while tracing or exporting, or for a tensor without a version counter, nothing is cached.
    """
    if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return build()
    try:
        version = kernels._version
    except RuntimeError:  # an inference tensor has no version counter
        return build()
    key = (kind, kernels.data_ptr(), tuple(kernels.shape), tuple(kernels.stride()), kernels.dtype, kernels.device,
           torch.is_inference_mode_enabled()) + extra
    entry = _WEIGHT_CACHE.get(key)
    if entry is None or entry[1] != version:
        if len(_WEIGHT_CACHE) >= MAX_CACHED_WEIGHTS:
            _WEIGHT_CACHE.clear()
        entry = (kernels, version, build())
        _WEIGHT_CACHE[key] = entry
    return entry[2]


def _spatial_kernels(kernels: Tensor, dtype: torch.dtype) -> Tensor:
    """The correlation weights of a true convolution: flipped, tiny entries flushed, in ``dtype``."""
    return _cached_weight('spatial', kernels, lambda: flush_tiny_kernel_entries(kernels).flip(-1, -2).to(dtype), dtype)


def set_bank_implementation(name: Optional[str]) -> None:
    """Use ``name`` (one of :data:`BANK_IMPLS`) for every kernel-bank call, or ``None`` to measure again.

    Also :data:`BANK_IMPL_ENV` in the environment; this call takes precedence. For benchmarks and tests.
    """
    if name is not None and name not in BANK_IMPLS:
        raise ValueError(f'unknown kernel-bank implementation {name!r}; choose one of {", ".join(BANK_IMPLS)}')
    global _forced_impl
    _forced_impl = name


def bank_plans() -> Dict[tuple, str]:
    """The implementations chosen so far by measurement: ``(layout, grad, feat shape, dtype, kernels shape)`` →
    name (one choice for every thread count: :func:`_measure_fastest` measures at one thread)."""
    return dict(_PLANS)


def clear_bank_plans() -> None:
    """Forget every measured choice (the next call of each shape measures again)."""
    _PLANS.clear()


def _default_impl(layout: str, grad: bool) -> str:
    if grad:
        return 'fft'
    if layout == 'subpixel':
        return 'grouped'  # contiguous pixels for the consumer
    return 'grouped_cl' if layout == 'bhwcm' else 'direct'


def _can_measure(feat: Tensor) -> bool:
    """Measuring needs eager CPU execution: not while tracing, exporting, compiling or under autocast."""
    if feat.device.type != 'cpu' or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return False
    return not torch.is_autocast_enabled('cpu')


def bank_implementation(feat: Tensor, kernels: Tensor, layout: str) -> str:
    """Which of :data:`BANK_IMPLS` computes the bank for this call.

    On the CPU the fastest one is measured the first time a shape is seen (per layout, with or without gradients and
    dtype) and remembered, whatever the thread count then or later (:func:`_measure_fastest` times at one thread):
    oneDNN picks a different kernel for each convolution form on each
    instruction set, and the fastest form differs between CPUs (a grouped convolution with one input and m output
    channels per group, a depthwise one without channel multiplier, single-channel maps, the FFT). With gradients the
    forward and backward passes are timed together. Elsewhere (CUDA, tracing, ONNX export, ``torch.compile``,
    autocast, inputs under :data:`MIN_MEASURED_ELEMENTS`) a fixed default is used: the FFT with gradients, else the
    grouped convolution (channels-last layout) or single-channel maps. :func:`set_bank_implementation` or
    :data:`BANK_IMPL_ENV` fix the choice.
    """
    grad = torch.is_grad_enabled() and (feat.requires_grad or kernels.requires_grad)
    forced = _forced_impl or os.environ.get(BANK_IMPL_ENV) or None
    if forced is not None:
        if forced not in BANK_IMPLS:
            raise ValueError(f'{BANK_IMPL_ENV}={forced!r} is not a kernel-bank implementation; choose one of '
                             f'{", ".join(BANK_IMPLS)}')
        return forced
    if not _can_measure(feat) or feat.numel() < MIN_MEASURED_ELEMENTS:
        return _default_impl(layout, grad)
    key = (layout, grad, tuple(feat.shape), feat.dtype, tuple(kernels.shape))
    if key not in _PLANS:
        _PLANS[key] = _measure_fastest(feat, kernels, layout, grad)
    return _PLANS[key]


def _measure_fastest(feat: Tensor, kernels: Tensor, layout: str, grad: bool, rounds: int = 3) -> str:
    """The fastest of :data:`BANK_IMPLS` on these inputs: best of ``rounds − 1`` timed rounds after a warm-up
    round, the implementations taking turns (reversed every other round) so that load changes fall on all.

    Timed in CPU time of this process (``time.process_time``), not wall-clock time: on a loaded machine a wall-clock
    measurement charges the time this process waited for a core to whichever form ran then, and picked, beside a
    training, a form that needs twice the operations (the 4×4 space-to-depth grid at 64 × 128×200).

    Timed at **one thread** (``torch.set_num_threads(1)``, the caller's count restored afterwards, also on an
    error), and the choice is kept for every thread count (issue 23): with two OpenMP threads on two busy cores the
    process's CPU time also counts the threads' spin-waiting at each operator's barrier, as noisy as the wall clock,
    and the two-thread measurement picked the 4×4 space-to-depth form and the FFT (62 instead of 52 GFLOP a forward).
    At one thread the CPU time is the work each form does on this CPU's kernels (an operation count, measured). The
    choice is kept for more threads on the assumption that the forms parallelise alike (each is one or a few large
    oneDNN or FFT calls over all channels), so the least work stays the fastest; :data:`BANK_IMPL_ENV` overrides it
    where that does not hold. While measuring (the first call of a shape only) torch ops run by other Python threads
    of this process also run at one thread."""
    feat, kernels = feat.detach(), kernels.detach()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_candidates(feat, kernels, layout, grad, rounds)
    finally:
        torch.set_num_threads(threads)


def _time_candidates(feat: Tensor, kernels: Tensor, layout: str, grad: bool, rounds: int) -> str:
    """The loop of :func:`_measure_fastest` at the current thread count: the name with the lowest best CPU time
    (ties go to the earlier name in :data:`BANK_IMPLS`)."""
    best = {name: math.inf for name in BANK_IMPLS}
    out_grad = None
    for round_index in range(rounds):
        for name in (BANK_IMPLS if round_index % 2 == 0 else BANK_IMPLS[::-1]):
            if grad:
                with torch.enable_grad():
                    x, k = feat.clone().requires_grad_(True), kernels.clone().requires_grad_(True)
                    start = time.process_time()
                    out = _run_bank(name, x, k, layout)
                    if out_grad is None:
                        out_grad = torch.ones_like(out)
                    out.backward(out_grad)
            else:
                with torch.no_grad():
                    start = time.process_time()
                    out = _run_bank(name, feat, kernels, layout)
                    if layout == 'subpixel':  # with its consumer, which reads the candidates in their layout
                        _subpixel_consumer(feat, out)
            if round_index:
                best[name] = min(best[name], time.process_time() - start)
    return min(best, key=best.get)


def _subpixel_consumer(feat: Tensor, candidates: Tensor) -> None:
    """What reads :func:`subpixel_convolve_bank`'s output, for timing it: the attention over key/value halves."""
    b, c, h, w = feat.shape
    if c % 2:
        candidates.sum(2)
    else:
        subpixel_candidate_attention(feat.new_zeros(b, c // 2, h, w), candidates, 1)


def _run_bank(name: str, feat: Tensor, kernels: Tensor, layout: str) -> Tensor:
    """Implementation ``name`` of the bank, as a contiguous tensor in ``layout`` (``bmchw`` or ``bhwcm``), or, for
    ``subpixel``, in the implementation's own layout (:func:`subpixel_convolve_bank`)."""
    if layout == 'subpixel':
        return _subpixel_bank(name, feat, kernels)
    if name == 'fft':
        out = fft_convolve_bank(feat, kernels)  # (B, m, C, H, W)
        return out if layout == 'bmchw' else out.permute(0, 3, 4, 2, 1).contiguous()
    if name == 'direct':
        out = direct_convolve_bank(feat, kernels)  # (B, m, C, H, W), a transposed view of (B, C, m, H, W)
        return out.contiguous() if layout == 'bmchw' else out.permute(0, 3, 4, 2, 1).contiguous()
    if name in ('grouped_cl', 'grouped', 'depthwise_cl', 'unshuffle2', 'unshuffle4'):
        if name.startswith('unshuffle'):
            out = unshuffled_convolve_bank(feat, kernels, int(name[len('unshuffle'):]))  # (B, H, W, C, m)
        else:
            out = _grouped_convolve_bank(feat, kernels, name)  # (B, H, W, C, m)
        return out.permute(0, 4, 3, 1, 2).contiguous() if layout == 'bmchw' else out.contiguous()
    raise ValueError(f'unknown kernel-bank implementation {name!r}; choose one of {", ".join(BANK_IMPLS)}')


def convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """k_j * F for every channel and kernel, replicate borders: ``(B, C, H, W)``, ``(m, k, k)`` → ``(B, m, C, H, W)``.

    The implementation is chosen by :func:`bank_implementation` (measured on the CPU; the FFT with gradients and
    single-channel maps without them elsewhere). All give the same convolution to float rounding.
    """
    return _run_bank(bank_implementation(feat, kernels, 'bmchw'), feat, kernels, 'bmchw')


def subpixel_convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """:func:`convolve_bank` in whatever layout the chosen implementation produces, without copying it.

    ``(B, C, H, W)``, ``(m, k, k)`` → ``(B, C, m, s, s, R, Q)`` (possibly a strided view) with entry
    ``[b, c, j, a_y, a_x, r, q]`` = (k_j * F_c)(s·r + a_y, s·q + a_x): the space-to-depth forms (``unshuffleS``) give
    their convolution's output as it is, s = S, R = ⌈H/s⌉, Q = ⌈W/s⌉ (pixels past H, W are extras to crop); every
    other form gives s = 1, R = H, Q = W. Consumers that treat all pixels alike (:func:`subpixel_candidate_attention`)
    then need no copy of the m·C maps. The implementation is measured per shape with a reduction over the candidates
    as the consumer (:func:`bank_implementation`, layout ``subpixel``).
    """
    return _run_bank(bank_implementation(feat, kernels, 'subpixel'), feat, kernels, 'subpixel')


def _subpixel_bank(name: str, feat: Tensor, kernels: Tensor) -> Tensor:
    """Implementation ``name`` in the layout of :func:`subpixel_convolve_bank`."""
    b, c, h, w = feat.shape
    m = kernels.shape[0]
    if name.startswith('unshuffle'):
        factor = int(name[len('unshuffle'):])
        out = _unshuffled_conv(feat, kernels, factor, channels_last=False)  # (B·C, m·s², R, Q), contiguous
        return out.reshape(b, c, m, factor, factor, *out.shape[-2:])
    if name == 'fft':
        out = fft_convolve_bank(feat, kernels).transpose(1, 2)  # (B, C, m, H, W) view
    elif name == 'direct':
        out = direct_convolve_bank(feat, kernels).transpose(1, 2)  # (B, C, m, H, W), contiguous
    elif name in ('grouped_cl', 'grouped', 'depthwise_cl'):
        out = _grouped_convolve_bank(feat, kernels, name).permute(0, 3, 4, 1, 2)  # (B, C, m, H, W) view
    else:
        raise ValueError(f'unknown kernel-bank implementation {name!r}; choose one of {", ".join(BANK_IMPLS)}')
    return out[:, :, :, None, None]


def channels_last_convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """:func:`convolve_bank` in channels-last layout: ``(B, C, H, W)``, ``(m, k, k)`` → ``(B, H, W, C, m)``.

    Entry ``[..., c, j]`` is k_j * F_c, replicate borders; the implementation is chosen by
    :func:`bank_implementation` (a depthwise convolution with m output channels per input channel on channels-last
    memory where nothing is measured).
    """
    return _run_bank(bank_implementation(feat, kernels, 'bhwcm'), feat, kernels, 'bhwcm')


def direct_convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """:func:`fft_convolve_bank` as a spatial convolution: ``(B, C, H, W)``, ``(m, k, k)`` → ``(B, m, C, H, W)``.

    One single-channel map per (batch, channel) through the m kernels (a transposed view of ``(B, C, m, H, W)``).
    """
    b, c, h, w = feat.shape
    radius = kernels.shape[-1] // 2
    padded = F.pad(feat.reshape(b * c, 1, h, w), (radius, radius, radius, radius), mode='replicate')
    out = F.conv2d(padded, _spatial_kernels(kernels, feat.dtype)[:, None])  # conv2d correlates: flipped kernels
    return out.reshape(b, c, kernels.shape[0], h, w).transpose(1, 2)


def _grouped_convolve_bank(feat: Tensor, kernels: Tensor, form: str) -> Tensor:
    """The bank as one convolution of all C channels: ``(B, C, H, W)``, ``(m, k, k)`` → ``(B, H, W, C, m)``.

    Output channel ``c·m + j`` is k_j * F_c. ``form``:

    - ``grouped_cl``: ``groups=C``, one input and m output channels per group, channels-last memory (the output is
      then already ``(B, H, W, C, m)``);
    - ``grouped``: the same in contiguous (NCHW) memory, permuted afterwards;
    - ``depthwise_cl``: every channel repeated m times, then a depthwise convolution (``groups=C·m``, no channel
      multiplier), channels-last memory.
    """
    b, c, h, w = feat.shape
    m, size = kernels.shape[0], kernels.shape[-1]
    radius = size // 2
    dtype = feat.dtype
    weight = _cached_weight(
        'grouped', kernels,
        lambda: _spatial_kernels(kernels, dtype)[None].expand(c, m, size, size).reshape(c * m, 1, size, size), dtype, c)
    padded = F.pad(feat, (radius, radius, radius, radius), mode='replicate')
    if form == 'grouped':
        out = F.conv2d(padded, weight, groups=c)
    elif form == 'grouped_cl':
        out = F.conv2d(padded.contiguous(memory_format=torch.channels_last), weight, groups=c)
    else:
        repeated = padded.permute(0, 2, 3, 1)[..., None].expand(-1, -1, -1, -1, m)
        repeated = repeated.reshape(b, *padded.shape[-2:], c * m)
        out = F.conv2d(repeated.permute(0, 3, 1, 2), weight, groups=c * m)  # channels-last memory
    return out.permute(0, 2, 3, 1).reshape(b, h, w, c, m)


def unshuffled_convolve_bank(feat: Tensor, kernels: Tensor, factor: int) -> Tensor:
    """The bank as a dense convolution on a space-to-depth grid: ``(B, C, H, W)``, ``(m, k, k)`` → ``(B, H, W, C, m)``.

    Every channel map, replicate-padded, is pixel-unshuffled by ``factor`` s into s² maps on an s-times coarser grid;
    a k×k kernel then acts as a dense convolution from s² to m·s² channels with ⌈(k + s − 1) / s⌉-sized kernels
    (:func:`unshuffled_bank_weight`), whose pixel shuffle is the full-resolution result. The products are the same as
    a direct convolution's (plus products with zeros); dense convolutions with several input and output channels run
    near the CPU's peak where a one-input-channel or depthwise one does not.

    Args:
        feat: ``(B, C, H, W)``.
        kernels: ``(m, k, k)`` with k odd.
        factor: Space-to-depth factor s ≥ 1.

    Returns:
        ``(B, H, W, C, m)``, entry ``[..., c, j]`` = k_j * F_c.
    """
    b, c, h, w = feat.shape
    out = _unshuffled_conv(feat, kernels, factor, channels_last=True)  # (B·C, m·s², rows, cols)
    s, rows, cols = factor, out.shape[-2], out.shape[-1]
    # whatever its memory layout: one copy to (B, rows, s, cols, s, C, m) = (B, H', W', C, m)
    out = out.reshape(b, c, -1, s, s, rows, cols).permute(0, 5, 3, 6, 4, 1, 2).reshape(b, rows * s, cols * s, c, -1)
    return out[:, :h, :w]


def _unshuffled_conv(feat: Tensor, kernels: Tensor, factor: int, channels_last: bool) -> Tensor:
    """The convolution of :func:`unshuffled_convolve_bank` before its pixel shuffle: ``(B·C, m·s², ⌈H/s⌉, ⌈W/s⌉)``.

    Output channel ``j·s² + a_y·s + a_x`` at ``(r, q)`` is k_j * F at pixel ``(s·r + a_y, s·q + a_x)`` (rows and columns
    past ``H``, ``W`` are border-replicated extras). ``channels_last`` lays the space-to-depth grid out channels-last
    (and so, in oneDNN, the output); else both are contiguous. ``feat`` may be in either memory layout.
    """
    b, c, h, w = feat.shape
    size, s = kernels.shape[-1], factor
    radius = size // 2
    taps = (s + size - 2) // s + 1
    rows, cols = -(-h // s), -(-w // s)  # output grid; input grid rows + taps − 1 (the extra rows feed cropped outputs)
    pads = (radius, s * (cols + taps - 1) - w - radius, radius, s * (rows + taps - 1) - h - radius)
    padded = F.pad(feat, pads, mode='replicate')
    in_rows, in_cols = padded.shape[-2] // s, padded.shape[-1] // s
    grid = padded.reshape(b * c, in_rows, s, in_cols, s)
    if channels_last:  # pixel unshuffle straight into channels-last memory: (B·C, rows', cols', s, s)
        grid = grid.permute(0, 1, 3, 2, 4).reshape(b * c, in_rows, in_cols, s * s).permute(0, 3, 1, 2)
    else:
        grid = grid.permute(0, 2, 4, 1, 3).reshape(b * c, s * s, in_rows, in_cols)
    dtype = feat.dtype
    weight = _cached_weight('unshuffled', kernels, lambda: unshuffled_bank_weight(_spatial_kernels(kernels, dtype), s),
                            dtype, s)
    return F.conv2d(grid, weight)


def unshuffled_bank_weight(weights: Tensor, factor: int) -> Tensor:
    """Correlation weights ``(m, k, k)`` as the dense ``(m·s², s², t, t)`` weight of :func:`unshuffled_convolve_bank`.

    Output channel ``j·s² + a_y·s + a_x`` (output sub-pixel a), input channel ``b_y·s + b_x`` (input sub-pixel b), tap
    q: weight ``w_j[s·q_y + b_y − a_y, s·q_x + b_x − a_x]``, zero outside the kernel. A gather, so gradients flow.
    """
    m, size = weights.shape[0], weights.shape[-1]
    index = _unshuffle_index(size, factor, str(weights.device))
    flat = torch.cat([weights.reshape(m, size * size), weights.new_zeros(m, 1)], dim=1)  # last column: zero
    taps = (factor + size - 2) // factor + 1
    return flat[:, index].reshape(m * factor**2, factor**2, taps, taps)


_UNSHUFFLE_INDEX: Dict[tuple, Tensor] = {}


def _unshuffle_index(size: int, factor: int, device: str) -> Tensor:
    """Flat kernel index (``size²`` = the zero column) of every entry of :func:`unshuffled_bank_weight`."""
    key = (size, factor, device)
    if key not in _UNSHUFFLE_INDEX:
        with torch.inference_mode(False):  # a cached tensor made under inference_mode could not serve autograd later
            _UNSHUFFLE_INDEX[key] = _make_unshuffle_index(size, factor).to(device)
    return _UNSHUFFLE_INDEX[key]


def _make_unshuffle_index(size: int, factor: int) -> Tensor:
    """The index of :func:`_unshuffle_index`, built on the CPU."""
    s, taps = factor, (factor + size - 2) // factor + 1
    sub = torch.arange(s)
    q = torch.arange(taps)
    # offset along one axis for (a, b, q): s·q + b − a
    offset = s * q[None, None, :] + sub[None, :, None] - sub[:, None, None]  # (a, b, q)
    valid = (offset >= 0) & (offset < size)
    dy = offset[:, None, :, None, :, None]  # (a_y, ·, b_y, ·, q_y, ·)
    dx = offset[None, :, None, :, None, :]  # (·, a_x, ·, b_x, ·, q_x)
    inside = valid[:, None, :, None, :, None] & valid[None, :, None, :, None, :]
    index = torch.where(inside, dy * size + dx, torch.full_like(dy * size + dx, size * size))
    return index.reshape(-1)


def fft_convolve_bank(feat: Tensor, kernels: Tensor) -> Tensor:
    """True convolution (k_j * F, kernel flipped) of every channel with every kernel, replicate borders, via FFT.

    The cost does not grow with the kernel size, and the backward pass is cheap on CPUs; the image is
    replicate-padded by the kernel radius on each side, so the circular wrap-around falls only on rows and columns
    that are cropped away.

    Args:
        feat: ``(B, C, H, W)``.
        kernels: ``(m, k, k)`` with k odd.

    Returns:
        ``(B, m, C, H, W)``.
    """
    radius = kernels.shape[-1] // 2
    dtype = feat.dtype
    # float32 whatever autocast chose: cuFFT has no bf16 and takes fp16 only for power-of-two sizes
    with torch.autocast(feat.device.type, enabled=False):
        padded = F.pad(feat.float(), (radius, radius, radius, radius), mode='replicate')
        height, width = padded.shape[-2:]
        # transform sizes with only small prime factors are several times faster; a larger size adds no wrap-around
        size = (smooth_fft_size(height), smooth_fft_size(width))
        spectrum = torch.fft.rfft2(padded, s=size)[:, None] * torch.fft.rfft2(kernels.float(), s=size)[None, :, None]
        return torch.fft.irfft2(spectrum, s=size)[..., 2 * radius:height, 2 * radius:width].to(dtype)


def smooth_fft_size(length: int) -> int:
    """The smallest n >= ``length`` of the form 2^a·3^b·5^c (fast FFT sizes)."""
    n = max(int(length), 1)
    while True:
        rest = n
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


class LearnedKernelBank(nn.Module):
    """Ablation of :class:`PhysicalKernelBank`: plain learned depthwise convolutions, randomly initialised.

    Each channel has its own m kernels (PyTorch's default initialisation); no Gaussian prior, no sharing.

    Args:
        channels: Number of feature channels C.
        num_kernels: m, the number of candidates produced.
        kernel_size: Odd side length of every kernel.
    """

    def __init__(self, channels: int, num_kernels: int = 8, kernel_size: int = 11) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels,
            channels * num_kernels,
            kernel_size,
            padding=kernel_size // 2,
            padding_mode='replicate',
            groups=channels)
        self.num_kernels = num_kernels

    def forward(self, feat: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, m, C, H, W)``."""
        b, c, h, w = feat.shape
        return self.conv(feat).reshape(b, c, self.num_kernels, h, w).transpose(1, 2)


def psf_candidates(feat: Tensor, bank: nn.Module) -> Tensor:
    """Physical discrete PSF prior: D_{i,j} = k_j * F_i for every kernel k_j of the bank (depthwise).

    The fusion modules call it on the features, or on their key/value projections, which is the
    same up to the projection (:class:`CandidateAttentionFusion`).

    Args:
        feat: ``(B, C, H, W)`` features F_i (at any spatial scale).
        bank: :class:`PhysicalKernelBank` (Gaussian-initialised, shared over channels) or its ablation.

    Returns:
        ``(B, m, C, H, W)`` candidates, one per defocus level.
    """
    return bank(feat)


def candidate_attention(query: Tensor, keys: Tensor, values: Tensor, num_heads: int) -> Tensor:
    """Per-token softmax attention across the m candidates: A_j = softmax_j(q·k_j / √d), out = Σ_j A_j v_j.

    Every pixel (or region) is one query token; its keys and values are the m candidates at the same place, so the
    weights say how strongly each defocus level (deconvolution strength) is used there.

    Args:
        query: ``(B, C, h, w)``.
        keys: ``(B, m, C, h, w)`` (same ``h, w`` as ``query``).
        values: ``(B, m, C, H, W)``; when ``(H, W)`` differs from ``(h, w)`` (region tokens) the weights are spread
            over each region by nearest-neighbour upsampling.
        num_heads: C is split into this many heads, each with its own weights.

    Returns:
        ``(B, C, H, W)`` fused values.
    """
    b, m, c, h, w = keys.shape
    d = c // num_heads
    q = query.reshape(b, 1, num_heads, d, h, w)
    k = keys.reshape(b, m, num_heads, d, h, w)
    weights = torch.softmax((q * k).sum(3) / math.sqrt(d), dim=1)  # (B, m, heads, h, w)
    big_h, big_w = values.shape[-2:]
    if (big_h, big_w) != (h, w):
        weights = F.interpolate(weights.reshape(b, m * num_heads, h, w), size=(big_h, big_w), mode='nearest')
        weights = weights.reshape(b, m, num_heads, big_h, big_w)
    v = values.reshape(b, m, num_heads, d, big_h, big_w)
    return (weights[:, :, :, None] * v).sum(1).reshape(b, c, big_h, big_w)


def subpixel_candidate_attention(query: Tensor, candidates: Tensor, num_heads: int) -> Tensor:
    """:func:`candidate_attention` per pixel, with the candidates as :func:`subpixel_convolve_bank` lays them out.

    Keys and values are blurred in one bank call; the attention reads them where they are, pixels innermost, as one
    multiply-add per channel (the logits) and one per candidate (the fused values), each over all pixels at once.
    Only the query and the result are moved between the image's pixel order and the candidates'. Works in place on
    its own temporaries: for use without gradients.

    Args:
        query: ``(B, C, H, W)`` query projections (any memory layout).
        candidates: ``(B, 2C, m, s, s, R, Q)`` from :func:`subpixel_convolve_bank` of the key and value projections
            (channels ``[0, C)`` keys, ``[C, 2C)`` values), ``R·s ≥ H``, ``Q·s ≥ W``.
        num_heads: C is split into this many heads, each with its own weights.

    Returns:
        ``(B, C, H, W)`` fused values, in channels-last memory.
    """
    b, c, h, w = query.shape
    m, s, rows, cols = candidates.shape[2], candidates.shape[3], candidates.shape[-2], candidates.shape[-1]
    heads, d, pixels = num_heads, c // num_heads, s * s * rows * cols
    if s * rows != h or s * cols != w:  # the extra rows and columns the space-to-depth grid computed
        query = F.pad(query, (0, s * cols - w, 0, s * rows - h))
    # the query in the candidates' pixel order (B, heads, d, s·s·R·Q): one copy of C maps
    q = query.reshape(b, c, rows, s, cols, s).permute(0, 1, 3, 5, 2, 4).reshape(b, heads, 1, d, pixels)
    kv = candidates.reshape(b, 2, heads, d, m, pixels)
    keys, values = kv[:, 0], kv[:, 1]  # (B, heads, d, m, pixels) views
    logits = keys[:, :, 0] * q[:, :, :, 0]  # (B, heads, m, pixels); q·k_j accumulated channel by channel
    for i in range(1, d):
        logits.addcmul_(keys[:, :, i], q[:, :, :, i])
    logits.mul_(1.0 / math.sqrt(d))
    # softmax over m written out (torch.softmax over a short, strided dimension is slow on CPUs)
    weights = logits.sub_(logits.amax(2, keepdim=True)).exp_()
    weights.div_(weights.sum(2, keepdim=True))
    fused = values[:, :, :, 0] * weights[:, :, None, 0]  # (B, heads, d, pixels)
    for j in range(1, m):
        fused.addcmul_(values[:, :, :, j], weights[:, :, None, j])
    # back to the image's pixel order, channels-last: one copy of C maps
    fused = fused.reshape(b, c, s, s, rows, cols).permute(0, 4, 2, 5, 3, 1).reshape(b, rows * s, cols * s, c)
    return fused[:, :h, :w].permute(0, 3, 1, 2)


class CandidateAttentionFusion(nn.Module):
    """Transformer-style fusion of m candidates: pre-norm cross-attention (query = features, keys/values = the m
    defocus candidates) with a residual, then a pre-norm feed-forward block with a residual.

    The candidates are formed in key/value space: a 1×1 projection commutes with a depthwise spatial kernel,
    W·(k_j * F) = k_j * (W·F), so the bank blurs the projected keys and values K = W_k·LN(F), V = W_v·LN(F) (2C
    channels) instead of projecting m blurred copies of F (2m 1×1 convolutions and m LayerNorms over C channels).

    Args:
        channels: Number of feature channels C.
        num_heads: Attention heads (must divide C).
        region_size: Tokens are ``region_size²`` pixel regions (average-pooled queries and keys); 1 = per pixel.
        ffn_expand: Hidden width of the feed-forward block, as a multiple of C.
    """

    def __init__(self, channels: int, num_heads: int = 1, region_size: int = 1, ffn_expand: int = 2) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f'num_heads must divide the channel count: got {num_heads} heads for {channels} channels')
        self.num_heads = num_heads
        self.region_size = region_size
        self.norm_q = LayerNorm2d(channels)
        self.norm_kv = LayerNorm2d(channels)
        self.to_q = nn.Conv2d(channels, channels, 1)
        self.to_kv = nn.Conv2d(channels, 2 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.norm_ffn = LayerNorm2d(channels)
        self.ffn = nn.Sequential(
            nn.Conv2d(channels, channels * ffn_expand, 1), nn.GELU(), nn.Conv2d(channels * ffn_expand, channels, 1))

    def _tokens(self, x: Tensor) -> Tensor:
        if self.region_size == 1:
            return x
        return F.avg_pool2d(x, self.region_size, ceil_mode=True)

    def forward(self, query: Tensor, feat: Tensor, bank: nn.Module) -> Tensor:
        """``query`` and ``feat`` ``(B, C, H, W)``, ``bank`` the PSF kernel bank → ``(B, C, H, W)``.

        Without gradients (inference) per-pixel tokens take :meth:`_attend_subpixel`, the same arithmetic in a
        faster memory layout; training and region tokens take the reference layout below.
        """
        if self.region_size == 1 and isinstance(bank, PhysicalKernelBank) and not torch.is_grad_enabled():
            fused = query + self.proj(self._attend_subpixel(query, feat, bank))
            return fused + self.ffn(self.norm_ffn(fused))
        b, c, h, w = feat.shape
        keys, values = self.to_kv(self.norm_kv(feat)).chunk(2, dim=1)
        keys, values = psf_candidates(keys, bank), psf_candidates(values, bank)  # (B, m, C, H, W): k_j * K, k_j * V
        m = keys.shape[1]
        keys = self._tokens(keys.reshape(b * m, c, h, w))
        q = self._tokens(self.to_q(self.norm_q(query)))
        fused = query + self.proj(
            candidate_attention(q, keys.reshape(b, m, c, *keys.shape[-2:]), values, self.num_heads))
        return fused + self.ffn(self.norm_ffn(fused))

    def _attend_subpixel(self, query: Tensor, feat: Tensor, bank: 'PhysicalKernelBank') -> Tensor:
        """:func:`psf_candidates` of K and V and :func:`candidate_attention`, per pixel, without reordering the
        candidates.

        One bank call blurs all 2C key and value channels with all m kernels (:func:`subpixel_convolve_bank`, in the
        layout its implementation produces) and :func:`subpixel_candidate_attention` reads them there. Returns
        ``(B, C, H, W)`` in channels-last memory.
        """
        kv = self.to_kv(self.norm_kv(feat))  # (B, 2C, H, W): keys, then values
        candidates = subpixel_convolve_bank(kv, bank.weight[:, 0])
        return subpixel_candidate_attention(self.to_q(self.norm_q(query)), candidates, self.num_heads)


class PlainQKVFusion(nn.Module):
    """Ablation "attention replaced by plain QKV" of :class:`CandidateAttentionFusion` (``fusion_attention:
    plain_qkv``): standard scaled dot-product attention over the same m candidates, nothing else.

    The candidates are the bank's D_j = k_j * F (as :class:`ConcatConvFusion` gets them); query, keys and values are
    plain learned 1×1 projections, q = W_q·Q, k_j = W_k·D_j, v_j = W_v·D_j (one W_k, W_v shared by the m
    candidates), and out = Q + W_o · Σ_j softmax_j(q·k_j / √d) v_j per pixel, split into ``num_heads`` heads.

    Removed with respect to :class:`CandidateAttentionFusion`: the pre-norm LayerNorms (of the query, of the
    features before the key/value projection, and before the feed-forward block), the feed-forward block and its
    residual, region tokens (``region_size`` > 1; tokens here are always pixels), and the candidates formed in
    key/value space (the bank blurring W_k·LN(F) and W_v·LN(F), one bank call for all keys and values, and its
    inference layout): here each candidate is projected after the blur, so the projection biases are not blurred.
    That last change is not a modelling one (1×1 projections commute with the depthwise kernels up to their
    biases); the attention still weighs the defocus levels of the physical bank, which stays in
    ``physical_kernels``. So the ablation measures the Transformer-layer parts around the attention.

    Args:
        channels: Number of feature channels C.
        num_heads: Attention heads (must divide C).
    """

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f'num_heads must divide the channel count: got {num_heads} heads for {channels} channels')
        self.num_heads = num_heads
        self.to_q = nn.Conv2d(channels, channels, 1)
        self.to_kv = nn.Conv2d(channels, 2 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, query: Tensor, feat: Tensor, bank: nn.Module) -> Tensor:
        """``query`` and ``feat`` ``(B, C, H, W)``, ``bank`` the PSF kernel bank → ``(B, C, H, W)``."""
        candidates = psf_candidates(feat, bank)  # (B, m, C, H, W): k_j * F
        b, m, c, h, w = candidates.shape
        keys, values = self.to_kv(candidates.reshape(b * m, c, h, w)).chunk(2, dim=1)
        attended = candidate_attention(
            self.to_q(query), keys.reshape(b, m, c, h, w), values.reshape(b, m, c, h, w), self.num_heads)
        return query + self.proj(attended)


class ConcatConvFusion(nn.Module):
    """Ablation of :class:`CandidateAttentionFusion`: concatenate the query and the m candidates k_j * F, then a
    1×1 conv.

    Args:
        channels: Number of feature channels C.
        num_kernels: m, the number of candidates.
    """

    def __init__(self, channels: int, num_kernels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels * (num_kernels + 1), channels, 1)

    def forward(self, query: Tensor, feat: Tensor, bank: nn.Module) -> Tensor:
        candidates = psf_candidates(feat, bank)
        b, m, c, h, w = candidates.shape
        return query + self.conv(torch.cat([query, candidates.reshape(b, m * c, h, w)], dim=1))
