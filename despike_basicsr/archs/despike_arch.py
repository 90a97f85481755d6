"""DeSpikeNet: a sharp image from a defocused spike stream (our reading of the CVPR 2026 DeSpike paper).

Pipeline, for each temporal scale i (windows shortest first, weights shared across i):

1. multi-temporal-scale integration: non-spiking IF neurons integrate the stream over a window T_i centred on the
   target frame, with the per-pixel FPN factor γ (:func:`integrate_windows`), normalised to a rate (SN,
   :func:`normalise_spike_count`) and lifted to features F_i; F_i is merged with the hidden features of scale i−1;
2. the physical discrete PSF prior: a bank of m kernels initialised as Gaussians gives candidates D_{i,j} = k_j * F_i
   (:func:`psf_candidates`);
3. attention fusion across the m candidates (each pixel/region picks its deconvolution strength);
4. multi-spatial-scale refinement over ``num_scales`` levels, coarsest first (:class:`RefinementLevel`).

With ``base_windows`` the network corrects a plain reconstruction instead of drawing the image from nothing
(:func:`gated_plain_reconstruction`): every level also predicts per-pixel weights over plain averages of several window
lengths (short where the scene moves, long where it is still) and its image is a correction on top of their mix. The
heads start at zero with the longest window preferred, so an untrained network returns the long-window average: a
still, in-focus, well-lit pixel that needs nothing costs nothing.

``forward`` returns the final image, and with ``return_intermediates=True`` also ``grid[i][s]`` (temporal scale i,
spatial scale s, s = 0 the coarsest) for the hierarchical loss. See docs/despike.md for the design choices.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from despike_basicsr.archs.arch_util import gaussian_smooth, pad_to_multiple, upsample_to
from despike_basicsr.archs.despike_blocks import (CandidateAttentionFusion, ConcatConvFusion, LearnedKernelBank,
                                                  PhysicalKernelBank, PlainQKVFusion, ResBlock)

PAPER_WINDOWS = (64, 96, 128, 160, 192)
#: Shortest stream DeSpikeNet reads (unless its smallest window is shorter): every window is clipped to the stream,
#: so a 32-step stream gives five windows of 32 steps (the paper's short-window test). The floor is a choice, not a
#: measurement: below 8 steps a pixel's rate takes fewer than nine values, too coarse to call a reconstruction.
MIN_STREAM_LEN = 8
#: Values of ``fusion_attention``: the attention fusion (default) and the "plain QKV" ablation.
FUSION_ATTENTIONS = ('physical', 'plain_qkv')


def centred_window_bounds(length: int, windows: Sequence[int]) -> List[Tuple[int, int]]:
    """Frame ranges ``[start, end)`` of windows centred on the target frame ``length // 2``, clipped to the stream.

    Args:
        length: Number of time steps T of the stream.
        windows: Window lengths |T_i|.

    Returns:
        One ``(start, end)`` pair per window.
    """
    centre = length // 2
    bounds = []
    for window in windows:
        start = centre - window // 2
        bounds.append((max(start, 0), min(start + window, length)))
    return bounds


def integrate_windows(spikes: Tensor, bounds: Sequence[Tuple[int, int]], gamma: Optional[Tensor] = None) -> Tensor:
    """Non-spiking IF neurons over each window: V(t) = V(t−1) + γ(x, y)·S(t), V(start) = 0.

    Without reset the membrane potential at the window's end is γ·Σ_{t∈T_i} S(t). The frames are summed once, segment
    by segment between the windows' edges (exact integer counts; uint8 streams are never converted to float), and
    every window is a difference of two running segment totals.

    Args:
        spikes: ``(B, T, H, W)`` 0/1 stream (uint8, bool or float).
        bounds: ``(start, end)`` frame range of every window.
        gamma: ``(B or 1, 1, H, W)`` FPN compensation factor γ = R_ref / R, or ``None`` for γ = 1.

    Returns:
        ``(B, N_t, H, W)`` float32 membrane potentials V_i.
    """
    edges = sorted({t for pair in bounds for t in pair})
    dtype = spikes.dtype if spikes.is_floating_point() else torch.int32
    totals = [spikes.new_zeros(spikes.shape[:1] + spikes.shape[2:], dtype=dtype)]  # spikes in [edges[0], edges[k])
    for start, end in zip(edges[:-1], edges[1:]):
        totals.append(totals[-1] + spikes[:, start:end].sum(1, dtype=dtype))
    index = {t: k for k, t in enumerate(edges)}
    potential = torch.stack([totals[index[end]] - totals[index[start]] for start, end in bounds], dim=1).float()
    return potential if gamma is None else potential * gamma


def normalise_spike_count(potential: Tensor, bounds: Sequence[Tuple[int, int]]) -> Tensor:
    """SN: the integrated potential as a firing rate, SN(V_i) = V_i / |T_i| (|T_i| the window's length after clipping).

    Makes windows of different lengths comparable, so one feature extractor serves all temporal scales.

    Args:
        potential: ``(B, N_t, H, W)`` from :func:`integrate_windows`.
        bounds: The same window ranges.

    Returns:
        ``(B, N_t, H, W)`` rates (in [0, 1] for γ = 1).
    """
    lengths = torch.tensor([end - start for start, end in bounds], dtype=potential.dtype, device=potential.device)
    return potential / lengths[None, :, None, None]


def exposure_level(rates: Tensor, floor: float = 1e-4) -> Tensor:
    """The stream's exposure ℓ = mean_{x,y} r(x, y), a robust statistic of the firing rate r of the longest window.

    A pixel's rate is r = η·g·I/θ: the scene's light and the camera's η, θ are unknown to the network and only scale
    r. Dividing every rate by ℓ removes that scale (ℓ is homogeneous of degree one: ℓ(c·r) = c·ℓ(r)); the mean of
    all pixels is the statistic least disturbed by shot noise and spike quantisation at low light.

    Args:
        rates: ``(B, H, W)`` or ``(B, 1, H, W)`` firing rates.
        floor: Smallest level returned (a stream without spikes would divide by zero).

    Returns:
        ``(B, 1, 1, 1)`` levels ℓ.
    """
    return rates.reshape(rates.shape[0], -1).mean(1).clamp_min(floor)[:, None, None, None]


def display_scale(level: Tensor, reference_rate: float, display_gamma: float) -> Tensor:
    """Scale back to the stream's brightness: out = y · (ℓ / ρ_ref)^(1/γ).

    The network reconstructs y from exposure-normalised rates r / ℓ. A display-referred image of linear intensity
    I is I^(1/γ), so a scene c times brighter is c^(1/γ) times brighter on the display; multiplying y by
    (ℓ / ρ_ref)^(1/γ) gives the image as the reference camera (ρ_ref spikes per step per unit intensity, η/θ = 1/2 for
    θ = 2, η = 1) would display it. The same scene at c times less light therefore gives the same image up to the
    display scale c^(−1/γ).

    Args:
        level: ``(B, 1, 1, 1)`` exposure levels ℓ from :func:`exposure_level`.
        reference_rate: ρ_ref.
        display_gamma: γ of the display-referred ground truth.

    Returns:
        ``(B, 1, 1, 1)`` factors.
    """
    return (level / reference_rate).pow(1.0 / display_gamma)


def plain_display(rates: Tensor, display_gamma: float) -> Tensor:
    """The plain reconstruction of a window as a display image: P = max(r̂, 0)^(1/γ).

    ``r̂`` is a window's rate divided by the stream's exposure ℓ (or by ρ_ref without exposure normalisation), so P is
    on the same scale as the network's own output before :func:`display_scale`: a TFP average of that window through
    the display gamma.

    Args:
        rates: ``(B, K, H, W)`` normalised rates r̂ of K windows.
        display_gamma: γ of the display-referred ground truth.

    Returns:
        ``(B, K, H, W)`` display images P_k.
    """
    return rates.clamp_min(0.0).pow(1.0 / display_gamma)


def smoothed_plain_display(rates: Tensor, sigmas: Sequence[float], display_gamma: float) -> Tensor:
    """Plain reconstructions of one window smoothed before the display gamma: P_σ = max(G_σ * r̂, 0)^(1/γ).

    Where a pixel fires a spike or less per window (dark, dim), its own rate is mostly 0 or one spike, and P = r̂^(1/γ)
    of it is both noisy and biased low (the display gamma is concave: the mean of r̂^(1/γ) is under (mean r̂)^(1/γ)).
    Averaging the rates of a flat region first, in linear units, gives its level without that bias and with far less
    noise; the gated mix picks these bases only where the region is flat (:func:`gated_plain_reconstruction`).

    Args:
        rates: ``(B, 1, H, W)`` normalised rates r̂ of one window (the longest).
        sigmas: Gaussian σ of each smoothed base, in pixels.
        display_gamma: γ of the display-referred ground truth.

    Returns:
        ``(B, len(sigmas), H, W)`` display images P_σ.
    """
    smoothed = [gaussian_smooth(rates, sigma) for sigma in sigmas]
    return plain_display(torch.cat(smoothed, dim=1), display_gamma)


def segment_deviations(spikes: Tensor, bound: Tuple[int, int], segments: int, gamma: Optional[Tensor],
                       norm: Tensor) -> Tensor:
    """Motion evidence: d_k = r̂_k − (1/n)·Σ_j r̂_j, the normalised rates of n consecutive parts of one window.

    An integrate-and-fire pixel watching a still scene fires almost periodically, so its counts in equal parts of a
    window differ by about one spike; a moving edge changes them by far more. The deviations show where, and when in
    the window, the scene moved, which a few nested centred windows cannot.

    Args:
        spikes: ``(B, T, H, W)`` 0/1 stream.
        bound: ``(start, end)`` of the window to split (the longest).
        segments: n.
        gamma: FPN factor or ``None``.
        norm: ``(B or 1, 1, 1, 1)`` rate normalisation (the exposure ℓ, or ρ_ref).

    Returns:
        ``(B, n, H, W)`` deviations.
    """
    start, end = bound
    edges = [start + (k * (end - start)) // segments for k in range(segments + 1)]  # integer maths: traceable
    parts = [(a, max(b, a + 1)) for a, b in zip(edges[:-1], edges[1:])]
    rates = normalise_spike_count(integrate_windows(spikes, parts, gamma), parts) / norm
    return rates - rates.mean(1, keepdim=True)


def count_noise_level(spikes: Tensor, bound: Tuple[int, int]) -> Tensor:
    """Noise evidence: ν = (1 + N)^(−1/2), N the spike count of a pixel in one window (the longest).

    The plain reconstruction of that window is uncertain by about one spike in N (integrate-and-fire quantisation)
    plus photon shot noise, so ν says how noisy it is. The rates the network sees are divided by the exposure level,
    which removes exactly this: a well-lit texture and a dim, noisy one look alike, and without ν the network
    smooths fine in-focus texture at any light level as if it were noise.

    Args:
        spikes: ``(B, T, H, W)`` 0/1 stream (raw counts: no FPN factor, the noise is that of the spikes counted).
        bound: ``(start, end)`` of the window.

    Returns:
        ``(B, 1, H, W)`` ν in (0, 1].
    """
    return (1.0 + integrate_windows(spikes, [bound])).rsqrt()


def correction_dead_zone(correction: Tensor, threshold: Union[float, Tensor]) -> Tensor:
    """S_τ(c) = sign(c)·max(|c| − τ, 0): a correction smaller than τ is dropped, a larger one shortened by τ.

    Where a scene is already sharp the correction can only add error; on a bright in-focus photograph the trained one
    is a few grey levels of invented texture (soft fur "sharpened" as if defocused), while deblurring an edge or
    following motion takes tens of grey levels. The dead zone keeps the second and drops the first; its gradient is
    that of the identity outside it, so a network trained through it learns to exceed τ where it is sure.

    Args:
        correction: ``(B, 1, H, W)`` α·g·Δ.
        threshold: τ in the correction's units, a float or ``(B, 1, 1, 1)`` per sample (0: the identity).

    Returns:
        ``(B, 1, H, W)`` S_τ(c).
    """
    if not torch.is_tensor(threshold) and threshold == 0:
        return correction
    return torch.sign(correction) * torch.relu(correction.abs() - threshold)


def gated_plain_reconstruction(head: Tensor, plains: Tensor, prior: Tensor, delta_gate: bool = False,
                               strength: float = 1.0, threshold: Union[float, Tensor] = 0.0) -> Tensor:
    """Rec = S_τ(α·g·Δ) + Σ_k softmax_k(z + z₀)·P_k: a correction Δ on a per-pixel mix of plain reconstructions P_k.

    ``head`` holds Δ (channel 0), the logits z over the K windows (channels 1..K) and, with ``delta_gate``, the gate
    logit z_g (channel K + 1) of g = 2·σ(z_g); without it g = 1. z₀ (``prior``) favours the longest window, so Δ = 0,
    z = 0 (zero-initialised heads) gives the long-window average almost exactly, and the network only has to learn
    where to leave it (motion: a shorter window; defocus and noise: Δ). The gate is 1 at z_g = 0 and turns the
    correction off (g → 0) where the mix is already right: a network can drive a product to zero far more easily
    than it can make an additive correction exactly zero on fine in-focus texture.

    Args:
        head: ``(B, 1 + K (+ 1), H, W)`` correction, window logits (and gate logit).
        plains: ``(B, K, H, W)`` plain reconstructions P_k (:func:`plain_display`) at this resolution.
        prior: ``(1, K, 1, 1)`` logit offsets z₀.
        delta_gate: ``head`` carries the gate logit as its last channel.
        strength: α, the user's trust in the correction (1: as trained; 0: the window mix alone, which cannot
            sharpen defocus but never invents detail).
        threshold: τ of the dead zone :func:`correction_dead_zone` (0: none).

    Returns:
        ``(B, 1, H, W)`` image.
    """
    num_windows = plains.shape[1]
    weights = torch.softmax(head[:, 1:1 + num_windows] + prior, dim=1)
    delta = head[:, :1]
    if delta_gate:
        delta = delta * 2.0 * torch.sigmoid(head[:, 1 + num_windows:2 + num_windows])
    return correction_dead_zone(strength * delta, threshold) + (weights * plains).sum(1, keepdim=True)


class RefinementLevel(nn.Module):
    """One level of the multi-spatial-scale iterative refinement.

    Args:
        num_feat: Feature channels C.
        num_kernels: m, candidates per feature map.
        num_blocks: Residual blocks in M.
        first: True for the coarsest level (nothing to upsample from).
        transformer_fusion: Attention fusion T (True) or the plain concat + conv ablation (False).
        num_heads: Attention heads.
        region_size: Attention token size in pixels (1 = per pixel).
        unshuffle: Space-to-depth factor u of the features: the head predicts u² channels that a pixel shuffle puts
            back on a u-times finer grid.
        fusion_attention: With ``transformer_fusion``, ``'physical'`` (:class:`CandidateAttentionFusion`) or
            ``'plain_qkv'`` (:class:`PlainQKVFusion`).
        out_channels: Channels of the level's output: 1 (the image) or 1 + K (a correction and K window logits,
            :func:`gated_plain_reconstruction`); a multi-channel head starts at zero.
    """

    def __init__(self,
                 num_feat: int,
                 num_kernels: int,
                 num_blocks: int,
                 first: bool,
                 transformer_fusion: bool,
                 num_heads: int,
                 region_size: int,
                 unshuffle: int = 1,
                 fusion_attention: str = 'physical',
                 out_channels: int = 1) -> None:
        super().__init__()
        self.first = first
        if not first:
            self.query_merge = nn.Conv2d(2 * num_feat, num_feat, 1)
            self.merge = nn.Conv2d(2 * num_feat, num_feat, 3, padding=1)
        if transformer_fusion and fusion_attention == 'plain_qkv':
            self.fusion = PlainQKVFusion(num_feat, num_heads)
        elif transformer_fusion:
            self.fusion = CandidateAttentionFusion(num_feat, num_heads, region_size)
        else:
            self.fusion = ConcatConvFusion(num_feat, num_kernels)
        self.body = nn.Sequential(*[ResBlock(num_feat) for _ in range(num_blocks)])
        self.head = nn.Sequential(
            nn.Conv2d(num_feat, out_channels * unshuffle**2, 3, padding=1), nn.PixelShuffle(unshuffle))
        if out_channels > 1:  # a correction: start from "change nothing"
            nn.init.zeros_(self.head[0].weight)
            nn.init.zeros_(self.head[0].bias)

    def forward(self,
                feat: Tensor,
                bank: nn.Module,
                prev_feat: Optional[Tensor] = None,
                prev_img: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Rec_j = M(T(F), Rec_{j−1}↑ ⊗ ∪_p k_p * F).

        The upsampled previous reconstruction Rec_{j−1}↑ is merged into the attention query, so it decides (⊗) how
        the candidates ∪_p k_p * F are weighted; M concatenates the fused features with Rec_{j−1}↑ and refines them.
        The image of this level is a residual on top of the upsampled previous image.

        Args:
            feat: ``(B, C, h, w)`` features F at this level.
            bank: The PSF kernel bank giving the candidates ∪_p k_p * F (:func:`psf_candidates`).
            prev_feat: Reconstruction features of the coarser level (``None`` at the coarsest).
            prev_img: Image of the coarser level (``None`` at the coarsest).

        Returns:
            ``(features, image)`` of this level, ``(B, C, h, w)`` and ``(B, out_channels, u·h, u·w)``.
        """
        size = feat.shape[-2:]
        if self.first:
            rec = self.fusion(feat, feat, bank)
        else:
            prev_up = upsample_to(prev_feat, size)
            query = self.query_merge(torch.cat([feat, prev_up], dim=1))
            rec = self.merge(torch.cat([self.fusion(query, feat, bank), prev_up], dim=1))
        rec = self.body(rec)
        img = self.head(rec)
        if prev_img is not None:
            img = img + upsample_to(prev_img, img.shape[-2:])
        return rec, img


@ARCH_REGISTRY.register()
class DeSpikeNet(nn.Module):
    """DeSpike network: multi-temporal IF integration, Gaussian PSF kernel bank, attention fusion, multi-scale
    refinement. Input ``(B, T, H, W)`` spikes of any T ≥ :attr:`min_stream_len` (8 steps, or the smallest window if
    that is shorter; windows longer than the stream are clipped to it) and any H, W; output ``(B, 1, H, W)``.

    Args:
        num_feat: Feature width C.
        windows: Integration window lengths |T_i| (frames), centred on the target frame ``T // 2``.
        num_kernels: m, kernels in the PSF bank.
        kernel_size: Odd side length of every kernel.
        sigma_range: (σ_min, σ_max) of the Gaussian initialisation, in pixels of the feature grid (``unshuffle``
            times the image's pixels).
        num_scales: Spatial refinement levels (3 in the paper).
        num_blocks: Residual blocks per refinement level.
        num_heads: Attention heads (must divide ``num_feat``).
        region_size: Attention token size in pixels (1 = per-pixel tokens).
        unshuffle: Space-to-depth factor u: the rates enter as u² channels on a grid u times coarser (pixel
            unshuffle) and every level's image leaves through a pixel shuffle, so no information is lost and the
            finest level costs 1/u² of a full-resolution pass (1 = features at full resolution).
        exposure_norm: Divide the rates by the stream's exposure level and scale the image back
            (:func:`exposure_level`, :func:`display_scale`), so the output does not depend on the unknown light level
            and camera sensitivity beyond its display scale. False feeds the rates as they are.
        reference_rate: ρ_ref, firing rate per unit intensity of the camera whose display scale the output uses.
        display_gamma: γ of the display-referred ground truth.
        multi_temporal: False keeps one window (``single_window``) — the "w/o multi-temporal scale" ablation.
        single_window: The window kept when ``multi_temporal`` is False; default the largest of ``windows``.
        multi_spatial: False uses one full-resolution level — the "w/o multi-spatial scale" ablation.
        fpn_compensation: False ignores γ — the "w/o FPN compensation" ablation.
        transformer_fusion: False fuses candidates by concat + conv — the "w/o transformer fusion" ablation.
        fusion_attention: The attention fusion's form when ``transformer_fusion`` is True: ``'physical'`` (default:
            pre-norm cross-attention over the bank-blurred key/value projections plus a feed-forward block,
            :class:`CandidateAttentionFusion`) or ``'plain_qkv'`` — the "attention replaced by plain QKV" ablation:
            1×1 projections of the query and of the m candidates, scaled dot-product attention per pixel, residual;
            no norms, feed-forward block or region tokens (:class:`PlainQKVFusion`).
        physical_kernels: False replaces the Gaussian bank with plain, randomly initialised depthwise convolutions —
            the "w/o physical kernels" ablation.
        base_windows: Window lengths of the plain reconstructions the network corrects
            (:func:`gated_plain_reconstruction`), e.g. ``[16, 32, 64, 128, 192]``; ``None`` (default) predicts the
            image directly, as the paper does.
        base_smoothing: Gaussian σ (pixels) of extra bases: the longest base window smoothed in linear units before
            the display gamma (:func:`smoothed_plain_display`), for flat dark and dim regions where a pixel's own
            plain reconstruction is noisy and biased low; their head rows start at zero, so weights saved without
            them load (:meth:`adapt_state_dict`). Default none.
        smoothing_prior: Logit head start of each smoothed base. At 0 a base's share of the mix starts near 0.1 %
            beside the longest window's 6, and the softmax's gradient with it: 250 iterations of training left it at
            0.1 % everywhere. 3 starts each at about 5 %, where it can be learnt.
        base_prior: Logit head start z₀ of the longest base window (6: an untrained network gives 99 % of it when
            there are five windows).
        motion_segments: n > 0 adds :func:`segment_deviations` of the longest window, split into n parts, as motion
            evidence to every temporal scale's features (through a small zero-initialised branch); 0 (default) none.
        noise_evidence: True adds :func:`count_noise_level` of the longest window, the noise of the plain
            reconstruction that exposure normalisation hides, to every temporal scale's features (a small
            zero-initialised branch); False (default) none.
        delta_gate: True adds a per-pixel gain g = 2·σ(z_g) on the correction (:func:`gated_plain_reconstruction`),
            one more head channel that starts at zero (g = 1); weights saved without it load with that channel
            zero, so the network starts as the one they came from.
        correction_threshold: τ of the correction's dead zone (:func:`correction_dead_zone`) in grey levels of an
            8-bit display of the output (0, default: none); needs ``base_windows``. Holds no weights: weights load
            with any τ, and inference may change it (``DeSpikeReconstructor(correction_threshold=)``).
    """

    def __init__(self,
                 num_feat: int = 32,
                 windows: Sequence[int] = PAPER_WINDOWS,
                 num_kernels: int = 8,
                 kernel_size: int = 11,
                 sigma_range: Sequence[float] = (0.5, 3.0),
                 num_scales: int = 3,
                 num_blocks: int = 2,
                 num_heads: int = 2,
                 region_size: int = 1,
                 unshuffle: int = 2,
                 exposure_norm: bool = True,
                 reference_rate: float = 0.5,
                 display_gamma: float = 2.2,
                 multi_temporal: bool = True,
                 single_window: Optional[int] = None,
                 multi_spatial: bool = True,
                 fpn_compensation: bool = True,
                 transformer_fusion: bool = True,
                 physical_kernels: bool = True,
                 fusion_attention: str = 'physical',
                 base_windows: Optional[Sequence[int]] = None,
                 base_smoothing: Sequence[float] = (),
                 base_prior: float = 6.0,
                 smoothing_prior: float = 3.0,
                 motion_segments: int = 0,
                 noise_evidence: bool = False,
                 delta_gate: bool = False,
                 correction_threshold: float = 0.0) -> None:
        super().__init__()
        windows = [int(w) for w in windows]
        if not windows or min(windows) < 1:
            raise ValueError(f'windows must be a non-empty list of positive frame counts, got {windows}')
        if num_scales < 1:
            raise ValueError(f'num_scales must be >= 1, got {num_scales}')
        if unshuffle < 1:
            raise ValueError(f'unshuffle must be >= 1, got {unshuffle}')
        if reference_rate <= 0 or display_gamma <= 0:
            raise ValueError(
                f'reference_rate and display_gamma must be positive, got {reference_rate}, {display_gamma}')
        if fusion_attention not in FUSION_ATTENTIONS:
            raise ValueError(
                f'fusion_attention must be one of {", ".join(FUSION_ATTENTIONS)}, got {fusion_attention!r}')
        if fusion_attention != 'physical' and not transformer_fusion:
            raise ValueError(f'fusion_attention: {fusion_attention} needs transformer_fusion: true (false replaces the '
                             'attention by concatenation + 1x1 conv)')
        if fusion_attention == 'plain_qkv' and region_size != 1:
            raise ValueError(f'fusion_attention: plain_qkv attends per pixel; region_size must be 1, got {region_size}')
        base_windows = sorted(int(w) for w in base_windows) if base_windows else []
        if base_windows and min(base_windows) < 1:
            raise ValueError(f'base_windows must be positive frame counts, got {base_windows}')
        self.min_stream_len = min(MIN_STREAM_LEN, min(windows))
        self.windows = sorted(windows) if multi_temporal else [int(single_window or max(windows))]
        self.num_scales = num_scales if multi_spatial else 1
        self.fpn_compensation = fpn_compensation
        self.unshuffle = unshuffle
        self.exposure_norm = exposure_norm
        self.reference_rate = float(reference_rate)
        self.display_gamma = float(display_gamma)
        self.base_windows = base_windows
        self.base_smoothing = [float(sigma) for sigma in (base_smoothing or ())]
        if self.base_smoothing and (not base_windows or min(self.base_smoothing) <= 0):
            raise ValueError(f'base_smoothing must be positive σ and needs base_windows, got {list(base_smoothing)}')
        if motion_segments < 0:
            raise ValueError(f'motion_segments must be >= 0, got {motion_segments}')
        self.motion_segments = int(motion_segments)
        if motion_segments:
            self.motion_lift = nn.Sequential(
                nn.PixelUnshuffle(unshuffle), nn.Conv2d(motion_segments * unshuffle**2, num_feat, 3, padding=1),
                nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(num_feat, num_feat, 1))
            nn.init.zeros_(self.motion_lift[-1].weight)  # starts as no evidence: the features are unchanged
            nn.init.zeros_(self.motion_lift[-1].bias)
        self.noise_evidence = bool(noise_evidence)
        if noise_evidence:
            self.noise_lift = nn.Sequential(
                nn.PixelUnshuffle(unshuffle), nn.Conv2d(unshuffle**2, num_feat, 3, padding=1),
                nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(num_feat, num_feat, 1))
            nn.init.zeros_(self.noise_lift[-1].weight)  # starts as no evidence, like the motion branch
            nn.init.zeros_(self.noise_lift[-1].bias)
        if base_windows:
            prior = torch.zeros(1, len(base_windows) + len(self.base_smoothing), 1, 1)
            prior[:, len(base_windows) - 1] = float(base_prior)
            prior[:, len(base_windows):] = float(smoothing_prior)
            self.register_buffer('base_prior', prior, persistent=False)

        self.lift = nn.Sequential(
            nn.PixelUnshuffle(unshuffle), nn.Conv2d(unshuffle**2, num_feat, 3, padding=1), ResBlock(num_feat))
        if len(self.windows) > 1:
            self.temporal_merge = nn.Conv2d(2 * num_feat, num_feat, 1)
        if physical_kernels:
            self.bank = PhysicalKernelBank(num_kernels, kernel_size, sigma_range)
        else:
            self.bank = LearnedKernelBank(num_feat, num_kernels, kernel_size)
        self.levels = nn.ModuleList([
            RefinementLevel(num_feat, num_kernels, num_blocks, s == 0, transformer_fusion, num_heads, region_size,
                            unshuffle, fusion_attention,
                            1 + len(base_windows) + len(self.base_smoothing) + int(delta_gate))
            for s in range(self.num_scales)
        ])
        if delta_gate and not base_windows:
            raise ValueError('delta_gate gates the correction of plain reconstructions: it needs base_windows')
        self.delta_gate = bool(delta_gate)
        self.correction_strength = 1.0  # α of gated_plain_reconstruction: an inference setting, not saved
        if correction_threshold < 0 or (correction_threshold and not base_windows):
            raise ValueError(f'correction_threshold must be >= 0 and needs base_windows, got {correction_threshold}')
        self.correction_threshold = float(correction_threshold)
        if delta_gate or self.base_smoothing:
            self._register_load_state_dict_pre_hook(self._adapt_loaded_heads)

    def adapt_state_dict(self, state_dict: Dict[str, Tensor], prefix: str = '') -> Dict[str, Tensor]:
        """Weights saved without the gate or the smoothed bases, with their head rows added as zeros: the gate's
        appended (g = 1), the smoothed bases' logits inserted before it (their head start alone). The network starts
        as the one the weights came from, up to the smoothed bases' share of the window mix.

        Loaders that check shapes before ``load_state_dict`` (``despike_basicsr.checkpoint.check_fits``) call this
        first; ``load_state_dict`` applies it itself. Other weights come back unchanged. When the gate and the
        smoothed bases are one channel each, a head one channel short is read as lacking the smoothed base (weights
        of every gated network before ``base_smoothing``).
        """
        adapted = dict(state_dict)
        rows = self.unshuffle**2
        windows_end = (1 + len(self.base_windows)) * rows  # the correction's and the windows' logits' rows
        smooth_rows, gate_rows = len(self.base_smoothing) * rows, int(self.delta_gate) * rows
        for s, level in enumerate(self.levels):
            for name, param in level.head[0].named_parameters():
                key = f'{prefix}levels.{s}.head.0.{name}'
                saved = adapted.get(key)
                if saved is None or saved.shape[1:] != param.shape[1:]:
                    continue
                missing = param.shape[0] - saved.shape[0]
                if smooth_rows and missing in (smooth_rows, smooth_rows + gate_rows):
                    zeros = saved.new_zeros((smooth_rows, ) + saved.shape[1:])
                    saved = torch.cat([saved[:windows_end], zeros, saved[windows_end:]], dim=0)
                    missing -= smooth_rows
                if gate_rows and missing == gate_rows:
                    saved = torch.cat([saved, saved.new_zeros((gate_rows, ) + saved.shape[1:])], dim=0)
                adapted[key] = saved
        return adapted

    def _adapt_loaded_heads(self, state_dict: dict, prefix: str, *args) -> None:
        """``load_state_dict`` pre-hook: :meth:`adapt_state_dict` in place."""
        state_dict.update(self.adapt_state_dict(state_dict, prefix))

    @property
    def frames_needed(self) -> int:
        """Frames around the target that the network reads (the longest window); more are ignored."""
        return max(self.windows + self.base_windows)

    @property
    def size_multiple(self) -> int:
        """Inputs are padded internally to a multiple of this (tiles of such a size avoid the padding)."""
        return self.unshuffle * 2**(self.num_scales - 1)

    def window_bounds(self, length: int) -> List[Tuple[int, int]]:
        """The ``[start, end)`` frames each temporal scale integrates, for a stream of ``length`` steps."""
        return centred_window_bounds(length, self.windows)

    def stream_exposure(self, spikes: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
        """``(B, 1, 1, 1)`` exposure levels ℓ of a stream (its longest window): pass them to :meth:`forward` when a
        frame is reconstructed tile by tile, so that every tile uses the level of the whole frame."""
        bounds = self.window_bounds(spikes.shape[1])[-1:]
        gamma = gamma.to(spikes.device).float() if (gamma is not None and self.fpn_compensation) else None
        return exposure_level(normalise_spike_count(integrate_windows(spikes, bounds, gamma), bounds))

    @staticmethod
    def _channels_last(spikes: Tensor) -> bool:
        """Whether the features run in channels-last memory: at inference on the CPU (no gradient recorded, not
        traced), where oneDNN's convolutions, the fused channel LayerNorm, pooling and resampling are fastest in it.
        Training keeps the contiguous layout its FFT kernel bank and reference attention are written for."""
        return spikes.device.type == 'cpu' and not torch.is_grad_enabled() and not torch.jit.is_tracing()

    def _check_inputs(self, spikes: Tensor, gamma: Optional[Tensor]) -> None:
        if spikes.dim() != 4:
            raise ValueError(f'DeSpikeNet expects spikes shaped (B, T, H, W), got shape {tuple(spikes.shape)}')
        length = spikes.shape[1]
        if length < self.min_stream_len:
            raise ValueError(f'DeSpikeNet needs streams of at least {self.min_stream_len} time steps, got {length} '
                             f'steps (windows {self.windows} are clipped to the stream, down to {self.min_stream_len} '
                             'steps)')
        if gamma is not None:
            b, _, h, w = spikes.shape
            if gamma.dim() != 4 or gamma.shape[1] != 1 or gamma.shape[0] not in (1, b) or gamma.shape[-2:] != (h, w):
                raise ValueError(f'gamma must be shaped ({b} or 1, 1, {h}, {w}) to match spikes {tuple(spikes.shape)}, '
                                 f'got {tuple(gamma.shape)}')

    def forward(self,
                spikes: Tensor,
                gamma: Optional[Tensor] = None,
                return_intermediates: bool = False,
                exposure: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, List[List[Tensor]]]]:
        """Reconstruct the frame at ``T // 2``.

        Args:
            spikes: ``(B, T, H, W)`` 0/1 stream (uint8, bool or float; converted here, on the stream's device).
            gamma: ``(B or 1, 1, H, W)`` FPN factor, or ``None`` (identity).
            return_intermediates: Also return ``grid[i][s]``.
            exposure: ``(B, 1, 1, 1)`` exposure levels ℓ to use instead of this input's own
                (:meth:`stream_exposure` of the whole frame when ``spikes`` is one tile of it).

        Returns:
            ``(B, 1, H, W)`` image, or ``(image, grid)`` with ``grid[i][s]`` shaped ``(B, 1, ⌈H/2^(S−1−s)⌉,
            ⌈W/2^(S−1−s)⌉)``.
        """
        self._check_inputs(spikes, gamma)
        b, length, h, w = spikes.shape
        bounds = self.window_bounds(length)
        gamma = gamma.to(spikes.device).float() if (gamma is not None and self.fpn_compensation) else None
        rates = normalise_spike_count(integrate_windows(spikes, bounds, gamma), bounds)
        scale = None
        norm = rates.new_tensor(self.reference_rate).reshape(1, 1, 1, 1)
        if self.exposure_norm:
            norm = exposure_level(rates[:, -1]) if exposure is None else exposure.reshape(-1, 1, 1, 1).to(rates)
            rates = rates / norm
            scale = display_scale(norm, self.reference_rate, self.display_gamma)
        rates = pad_to_multiple(rates, self.size_multiple)
        plains = None
        if self.base_windows:
            base_bounds = centred_window_bounds(length, self.base_windows)
            base_rates = normalise_spike_count(integrate_windows(spikes, base_bounds, gamma), base_bounds) / norm
            base_plains = plain_display(base_rates, self.display_gamma)
            if self.base_smoothing:
                smoothed = smoothed_plain_display(base_rates[:, -1:], self.base_smoothing, self.display_gamma)
                base_plains = torch.cat([base_plains, smoothed], dim=1)
            plains = [pad_to_multiple(base_plains, self.size_multiple)]
            for _ in range(self.num_scales - 1):
                plains.insert(0, F.avg_pool2d(plains[0], 2))

        num_windows = len(bounds)
        lifted = rates.reshape(b * num_windows, 1, *rates.shape[-2:])
        for k, layer in enumerate(self.lift):
            lifted = layer(lifted)
            if k == 0 and self._channels_last(spikes):  # after the pixel unshuffle: every feature map channels-last
                lifted = lifted.contiguous(memory_format=torch.channels_last)
        lifted = lifted.reshape(b, num_windows, -1, *lifted.shape[-2:])
        motion = None  # the evidence branches' features, added to every temporal scale's
        longest = max(centred_window_bounds(length, self.windows + self.base_windows), key=lambda p: p[1] - p[0])
        if self.motion_segments:
            deviations = segment_deviations(spikes, longest, self.motion_segments, gamma, norm)
            motion = self.motion_lift(pad_to_multiple(deviations, self.size_multiple))
        if self.noise_evidence:
            noise = self.noise_lift(pad_to_multiple(count_noise_level(spikes, longest), self.size_multiple))
            motion = noise if motion is None else motion + noise
        threshold = self.correction_threshold / 255.0  # grey levels of the output: before its display scale
        if threshold and scale is not None:
            threshold = threshold / scale
        grid, hidden = [], None
        for i in range(num_windows):
            feat = lifted[:, i] if motion is None else lifted[:, i] + motion
            if hidden is not None:
                feat = self.temporal_merge(torch.cat([feat, hidden], dim=1))
            pyramid = [feat]
            for _ in range(self.num_scales - 1):
                pyramid.insert(0, F.avg_pool2d(pyramid[0], 2))
            rec, img, row = None, None, []
            for s, level_net in enumerate(self.levels):
                rec, img = level_net(pyramid[s], self.bank, rec, img)
                factor = 2**(self.num_scales - 1 - s)
                out = img if plains is None else gated_plain_reconstruction(
                    img, plains[s], self.base_prior, self.delta_gate, self.correction_strength, threshold)
                out = out[..., :-(-h // factor), :-(-w // factor)]
                row.append(out if scale is None else out * scale)
            grid.append(row)
            hidden = rec
        final = grid[-1][-1]
        return (final, grid) if return_intermediates else final
