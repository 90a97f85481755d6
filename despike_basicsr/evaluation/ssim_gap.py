"""Where DeSpike's raw SSIM falls short of the noise-free photograph's (issue 28's last bar), by substitution.

The photograph of a DPDD pair is blurred but noise-free; a spike reconstruction pays shot noise everywhere and earns
back only where it deblurs. To see which pixels hold the gap, parts of DeSpike's output are replaced by *oracles*
(masks and values from the ground truth, so not a method) and the raw SSIM is scored again:

- ``flat ← G_σ(DeSpike)``: DeSpike's output smoothed where the target is flat (local std under
  :data:`~.heldout.FLAT_STD` grey levels in SSIM's window): what less noise in flat regions alone would give;
- ``flat ← photograph``: the photograph pasted into those flat regions: what perfect flat regions with the
  photograph's photometry would give, so the rest of the gap is in texture;
- ``flat dark ← target``: the ground truth in flat dark regions (grey under :data:`~.heldout.DARK_BAND`'s top).

and, as candidate methods (no oracle), :func:`flat_region_smoothing` of DeSpike's output with its own mask. The
spike count per pixel in flat dark regions says how little light they hold.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter

from despike_basicsr.evaluation.heldout import (DARK_BAND, FLAT_STD, LIGHT_LEVELS, HeldoutScene, reconstruct_all,
                                                scores, ssim_window_stats, to_display)
from despike_basicsr.inference.recording_report import to_uint8

#: σ (pixels) of the oracle smoothing in flat regions.
ORACLE_SIGMA = 2.0


def flat_region_smoothing(image: np.ndarray, threshold: float, sigma: float = 2.0,
                          dark_below: Optional[float] = None) -> np.ndarray:
    """Smooth ``image`` where it is flat by its own measure.

    ``Rec' = M·(G_σ ∗ Rec) + (1 − M)·Rec``, ``M = [std_w(Rec) < T]`` (and ``mean_w(Rec) < D`` with ``dark_below``),
    ``std_w``/``mean_w`` in SSIM's 11×11 Gaussian window (σ 1.5) on the uint8 image, ``T`` and ``D`` in grey levels.

    Args:
        image: Display image in [0, 1] (H, W).
        threshold: ``T``: largest local std (grey levels of 255) that counts as flat.
        sigma: Gaussian σ (pixels) of the smoothing.
        dark_below: ``D``: only where the local mean is darker than this too (grey levels), or ``None``.

    Returns:
        The image, smoothed in its flat regions only.
    """
    mean, std = ssim_window_stats(to_uint8(image))
    mask = std < threshold
    if dark_below is not None:
        mask &= mean < dark_below
    return np.where(mask, gaussian_filter(image, sigma), image).astype(np.float32)


def target_regions(target: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Flat and flat-dark masks of a display target: local std under :data:`~.heldout.FLAT_STD` grey levels, and
    there grey under :data:`~.heldout.DARK_BAND`'s top (black included, unlike :func:`~.heldout.flat_dark_bias`)."""
    grey = to_uint8(target)
    flat = ssim_window_stats(grey)[1] < FLAT_STD
    return flat, flat & (grey < DARK_BAND[1])


def oracle_substitutions(despike: np.ndarray, photograph: np.ndarray, target: np.ndarray) -> Dict[str, np.ndarray]:
    """DeSpike's display image with parts replaced by oracles (see the module doc), by name."""
    flat, dark = target_regions(target)
    return {
        f'flat ← G{ORACLE_SIGMA:g}(DeSpike) (oracle)': np.where(flat, gaussian_filter(despike, ORACLE_SIGMA), despike),
        'flat ← photograph (oracle)': np.where(flat, photograph, despike),
        'flat dark ← target (oracle)': np.where(dark, target, despike),
    }


def filter_name(threshold: float, sigma: float, dark_below: Optional[float]) -> str:
    """Row name of :func:`flat_region_smoothing` at these settings."""
    return f'flat smoothing T {threshold:g}, σ {sigma:g}' + (f', dark < {dark_below:g}' if dark_below else '')


def ssim_gap(scenes: Sequence[HeldoutScene], despike: Callable[[np.ndarray, np.ndarray], np.ndarray],
             filters: Sequence[Tuple[float, float, Optional[float]]] = (), reference_rate: float = 0.5,
             steps: int = 192, seed: int = 0, levels: Dict[str, float] = LIGHT_LEVELS, oracles: bool = True,
             progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Score DeSpike, the photograph, TFP-192, the oracle substitutions and the flat-smoothing filters.

    The streams are :func:`~.heldout.evaluate`'s (same camera, same seeds), so ``DeSpike`` matches its figures.

    Args:
        scenes: Scenes (defocused or in focus; a moving scene is scored at its centre picture).
        despike: As :func:`~.heldout.evaluate`.
        filters: ``(T, σ, D or None)`` of :func:`flat_region_smoothing` to score.
        reference_rate, steps, seed, levels: As :func:`~.heldout.evaluate`.
        oracles: Also score :func:`oracle_substitutions`.
        progress: Called with a line per finished scene.

    Returns:
        ``{'rows': [{set, key, level, variant, psnr, ssim, psnr_fit, ssim_fit}], 'dark_spikes': [{set, key, level,
        spikes_per_pixel, dark_fraction, mean_rate}]}``; ``spikes_per_pixel`` is the mean spike count per pixel over
        the stream in the target's flat dark regions, ``mean_rate`` the stream's realised spikes per pixel and step
        (under the level's where highlights cap the light, :func:`~despike_basicsr.spike.camera.light_for_mean_rate`).
    """
    rows: List[Dict[str, Any]] = []
    dark_spikes: List[Dict[str, Any]] = []
    for index, scene in enumerate(scenes):
        target = to_display(scene.sharp)
        _, dark = target_regions(target)
        for level_index, (level, rate) in enumerate(levels.items()):
            counts: List[np.ndarray] = []

            def counting(spikes: np.ndarray, gamma: np.ndarray) -> np.ndarray:
                counts.append(spikes.sum(0))
                return despike(spikes, gamma)

            outputs = reconstruct_all(scene, rate, steps, seed * 100003 + index * 101 + level_index, counting,
                                      reference_rate)
            variants = {'DeSpike': outputs['despike'], 'photograph': outputs['defocused'], 'TFP-192': outputs['tfp192']}
            if oracles:
                variants.update(oracle_substitutions(outputs['despike'], outputs['defocused'], target))
            for threshold, sigma, dark_below in filters:
                variants[filter_name(threshold, sigma, dark_below)] = flat_region_smoothing(
                    outputs['despike'], threshold, sigma, dark_below)
            for name, image in variants.items():
                rows.append(dict(set=scene.set_name, key=scene.key, level=level, variant=name,
                                 **scores(np.clip(image, 0.0, 1.0), target)))
            dark_spikes.append(dict(set=scene.set_name, key=scene.key, level=level, dark_fraction=float(dark.mean()),
                                    spikes_per_pixel=float(counts[0][dark].mean()) if dark.any() else float('nan'),
                                    mean_rate=float(counts[0].mean() / steps)))
        if progress is not None:
            progress(f'{scene.set_name}/{scene.key} done')
    return {'rows': rows, 'dark_spikes': dark_spikes}


def gap_markdown(report: Dict[str, Any]) -> str:
    """Per set and level: mean raw SSIM, fitted PSNR and the worst image's fitted PSNR of every variant."""
    rows = report['rows']
    groups = list(dict.fromkeys((r['set'], r['level']) for r in rows))
    variants = list(dict.fromkeys(r['variant'] for r in rows))
    lines = ['| variant | ' + ' | '.join(f'{s} {lv}: SSIM / fit (worst)' for s, lv in groups) + ' |',
             '| --- |' + ' ---: |' * len(groups)]
    for variant in variants:
        cells = []
        for group in groups:
            members = [r for r in rows if (r['set'], r['level']) == group and r['variant'] == variant]
            ssim, fit = np.mean([r['ssim'] for r in members]), np.mean([r['psnr_fit'] for r in members])
            cells.append(f"{ssim:.4f} / {fit:.2f} ({min(r['psnr_fit'] for r in members):.2f})")
        lines.append(f'| {variant} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Spikes per pixel over the stream in the target\'s flat dark regions (share of the image; the '
              'realised mean rate per step, which highlights cap):', '']
    for group in groups:
        members = [d for d in report['dark_spikes'] if (d['set'], d['level']) == group]
        lines.append(f'- {group[0]} {group[1]}: ' + ', '.join(
            f"{d['key']} {d['spikes_per_pixel']:.2f} ({100 * d['dark_fraction']:.0f} %; rate {d['mean_rate']:.2f})"
            for d in members))
    return '\n'.join(lines) + '\n'
