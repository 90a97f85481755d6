"""Held-out evaluation on natural data no training draw saw: DPDD val pairs and sample photographs with synthetic depth.

Every scene is simulated at a bright and a dim light level (4× less light) by one fixed camera (θ = 2, η = 1, 5 % gain
spread, shot noise, the perfect FPN calibration γ = 1/g handed to every method), and reconstructed by DeSpike, TFP
(41 and 192 frames), TFI and the no-deblur oracle (the defocused image itself, noise-free). Scores (BasicSR's PSNR and
SSIM on uint8):

- ``raw``: every method brought to the ground truth's display scale with the known exposure (the simulated rate per
  unit intensity η·L/θ): TFP/TFI as display(rate·γ / (η·L/θ)), DeSpike as output·(exposure)^(−1/γ_display);
- ``fit``: after a least-squares gain/offset fit of each image to its ground truth (a reconstruction of a real
  recording is only defined up to its display scale, DESIGN.md §11);
- ``by region``: raw SSIM where defocus removed detail from the photograph and elsewhere (in focus or flat), see
  :func:`defocus_loss_mask`. The photograph is noise-free, so outside the defocused region it is the ground truth
  itself and a spike reconstruction can only lose there (shot noise); the defocused region is where deblurring pays.
- ``dark bias``: the mean signed error (grey levels of 255) in flat dark regions, :func:`flat_dark_bias`: a tone error
  there costs SSIM's luminance term most, and it is where a wrong dark-current prior shows.

``scripts/evaluate_heldout.py`` is the command line; results go to ``results/heldout/``.
"""
import json
import os
import os.path as osp
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from despike_basicsr.spike.camera import simulate_sensor
from despike_basicsr.data.preparation import (display_to_linear_luminance, dpdd_pairs, fit_thin_lens,
                                              read_linear_intensity)
from despike_basicsr.data.motion import MovingScene
from despike_basicsr.data.scenes import synthetic_depth_map
from despike_basicsr.inference.recording_report import to_uint8
from despike_basicsr.spike import optics
from despike_basicsr.spike.reconstruct import tfi, tfp

#: Sample photographs that scikit-image ships inside its wheel, all public domain or CC0 (see its ``skimage.data``).
SKIMAGE_SCENES = ('astronaut', 'camera', 'coffee', 'chelsea', 'rocket', 'brick', 'grass', 'gravel')
#: Mean firing rates per step of the two light levels (the dim one receives 4× less light).
LIGHT_LEVELS = {'bright': 0.3, 'dim': 0.075}
#: The camera of every held-out stream.
EVAL_CAMERA = {'threshold': 2.0, 'eta': 1.0, 'gain_std': 0.05, 'dark_rate': 0.0, 'electrons': 500.0}
METHODS = ('defocused', 'tfp41', 'tfp192', 'tfi', 'despike')
LABELS = {
    'defocused': 'defocused image (oracle)', 'tfp41': 'TFP-41', 'tfp192': 'TFP-192', 'tfi': 'TFI', 'despike': 'DeSpike'
}
DISPLAY_GAMMA = 2.2


@dataclass
class HeldoutScene:
    """One held-out scene: sharp and defocused linear intensity (``blurred`` is ``sharp`` for an in-focus scene).

    A moving scene carries its :class:`~despike_basicsr.data.motion.MovingScene`: the camera then watches its frames,
    ``sharp`` is the picture at the centre step and ``blurred`` what the camera sees then.
    """

    set_name: str
    key: str
    sharp: np.ndarray
    blurred: np.ndarray
    motion: Optional[MovingScene] = None


def dpdd_val_scenes(dpdd_root: str, split: str = 'val', set_name: Optional[str] = None,
                    pairs: Optional[Sequence[Tuple[str, str]]] = None) -> List[HeldoutScene]:
    """The DPDD pairs of ``split`` (or the given ``(blurred, sharp)`` ``pairs``): real lens defocus (``source``) and
    the all-in-focus ``target``, as set ``set_name`` (default ``'dpdd-<split>'``)."""
    scenes = []
    for blurred_path, sharp_path in (dpdd_pairs(dpdd_root, split) if pairs is None else pairs):
        key = osp.splitext(osp.basename(sharp_path))[0]
        scenes.append(HeldoutScene(set_name or 'dpdd-' + split, key, read_linear_intensity(sharp_path),
                                   read_linear_intensity(blurred_path)))
    return scenes


def photo_linear(image: np.ndarray, max_side: int) -> np.ndarray:
    """A display-referred photograph as linear luminance, shrunk (area) so its longer side is at most ``max_side``."""
    linear = display_to_linear_luminance(np.asarray(image, dtype=np.float32))
    scale = min(1.0, max_side / max(linear.shape))
    if scale < 1.0:
        size = (int(round(linear.shape[1] * scale)), int(round(linear.shape[0] * scale)))
        linear = cv2.resize(linear, size, interpolation=cv2.INTER_AREA)
    return linear


def synthetic_depth_scenes(images: Dict[str, np.ndarray], seed: int = 0, sigma_range: Tuple[float, float] = (0.5, 4.0),
                           max_side: int = 512, set_name: str = 'photos+depth') -> List[HeldoutScene]:
    """Thin-lens defocus of display-referred photographs over :func:`synthetic_depth_map` (one seed per image)."""
    scenes = []
    for index, (key, image) in enumerate(sorted(images.items())):
        linear = photo_linear(image, max_side)
        rng = np.random.default_rng([seed, index])
        depth = synthetic_depth_map(*linear.shape, rng)
        lens = fit_thin_lens(float(depth.min()), float(depth.max()) * 1.0001, *sigma_range)
        blurred = optics.render_depth_defocus(linear, depth, lens).astype(np.float32)
        scenes.append(HeldoutScene(set_name, key, linear.astype(np.float32), blurred))
    return scenes


def skimage_images(names: Sequence[str] = SKIMAGE_SCENES) -> Dict[str, np.ndarray]:
    """scikit-image's bundled sample photographs as float32 display values in [0, 1] (gray or RGB)."""
    from skimage import data

    images = {}
    for name in names:
        image = np.asarray(getattr(data, name)())
        images[name] = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    return images


def to_display(linear: np.ndarray) -> np.ndarray:
    """Display-referred float32 image of a linear one (``linear_to_display`` clips to [0, 1])."""
    return optics.linear_to_display(linear, DISPLAY_GAMMA).astype(np.float32)


def gain_offset_fit(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``a·image + b`` with (a, b) the least-squares fit to ``target``, clipped to [0, 1]."""
    x = image.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, target.astype(np.float64).ravel(), rcond=None)
    return np.clip(a * image + b, 0.0, 1.0).astype(np.float32)


def local_detail(image: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Local detail: the Sobel gradient magnitude of ``image`` averaged by a Gaussian of ``sigma`` px."""
    image = image.astype(np.float32)
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.GaussianBlur(np.sqrt(gx * gx + gy * gy), (0, 0), sigma)


def defocus_loss_mask(defocused: np.ndarray, target: np.ndarray, keep_ratio: float = 0.5) -> np.ndarray:
    """Where the defocused photograph kept less than ``keep_ratio`` of the sharp image's local detail (bool, H×W).

    Defined from the photograph and the ground truth only, so it is the same for every method.
    """
    return local_detail(np.clip(defocused, 0.0, 1.0)) < keep_ratio * local_detail(target)


def ssim_map(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two uint8 images, BasicSR's ``calculate_ssim`` before its mean (11×11 Gaussian window, σ 1.5,
    the 5-pixel border cropped), so that a region's mean matches BasicSR's figure when the region is the image."""
    c1, c2 = (0.01 * 255)**2, (0.03 * 255)**2
    img, ref = image.astype(np.float64), target.astype(np.float64)
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]

    mu1, mu2 = blur(img), blur(ref)
    var1, var2, cov = blur(img * img) - mu1**2, blur(ref * ref) - mu2**2, blur(img * ref) - mu1 * mu2
    return ((2 * mu1 * mu2 + c1) * (2 * cov + c2)) / ((mu1**2 + mu2**2 + c1) * (var1 + var2 + c2))


def ssim_window_stats(image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Local mean and standard deviation (grey levels) of a uint8 image in SSIM's 11×11 Gaussian window (σ 1.5)."""
    img = image.astype(np.float64)
    mean = cv2.GaussianBlur(img, (11, 11), 1.5)
    return mean, np.sqrt(np.maximum(cv2.GaussianBlur(img * img, (11, 11), 1.5) - mean**2, 0.0))


#: Flat dark regions of :func:`flat_dark_bias`: the target's grey levels (of 255) and its largest local std there.
DARK_BAND = (8, 32)
FLAT_STD = 2.0


def flat_dark_bias(image: np.ndarray, target: np.ndarray) -> float:
    """Mean of uint8(image) − uint8(target) where the target is flat (local std under :data:`FLAT_STD` grey levels,
    11×11 Gaussian window σ 1.5, as SSIM's) and dark (grey level in :data:`DARK_BAND`); NaN when there is no such
    pixel. A spike reconstruction is unbiased there only if it models the camera's dark current as it is."""
    img, ref = to_uint8(image).astype(np.float64), to_uint8(target).astype(np.float64)
    _, std = ssim_window_stats(ref)
    region = (std < FLAT_STD) & (ref >= DARK_BAND[0]) & (ref < DARK_BAND[1])
    return float((img - ref)[region].mean()) if region.any() else float('nan')


def region_ssim(image: np.ndarray, target: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """Raw SSIM inside ``mask`` (``ssim_defocus``) and outside it (``ssim_rest``); NaN for an empty region."""
    values, inside = ssim_map(to_uint8(image), to_uint8(target)), mask[5:-5, 5:-5]
    return {
        'ssim_defocus': float(values[inside].mean()) if inside.any() else float('nan'),
        'ssim_rest': float(values[~inside].mean()) if (~inside).any() else float('nan'),
    }


def scores(image: np.ndarray, target: np.ndarray) -> Dict[str, float]:
    """BasicSR PSNR / SSIM on uint8 of the raw image and of its gain/offset fit."""
    from basicsr.metrics import calculate_psnr, calculate_ssim

    gt = to_uint8(target)
    fitted = gain_offset_fit(image, target)
    return {
        'psnr': float(calculate_psnr(to_uint8(image), gt, crop_border=0)),
        'ssim': float(calculate_ssim(to_uint8(image), gt, crop_border=0)),
        'psnr_fit': float(calculate_psnr(to_uint8(fitted), gt, crop_border=0)),
        'ssim_fit': float(calculate_ssim(to_uint8(fitted), gt, crop_border=0)),
    }


def reconstruct_all(scene: HeldoutScene, mean_rate: float, steps: int, seed: int,
                    despike: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]],
                    reference_rate: float = 0.5, camera: Optional[Dict[str, float]] = None) -> Dict[str, np.ndarray]:
    """Every method's display-referred image of ``scene`` at one light level (raw scale, see the module doc), seen by
    ``camera`` (default :data:`EVAL_CAMERA`)."""
    sensor = dict(camera or EVAL_CAMERA, mean_rate=mean_rate)
    if scene.motion is not None:
        spikes, gain, rate_per_unit = simulate_sensor(scene.motion.as_intensity(), sensor, steps, seed,
                                                      reference=scene.blurred)
    else:
        spikes, gain, rate_per_unit = simulate_sensor(scene.blurred, sensor, steps, seed)
    gamma = (1.0 / np.maximum(gain, 1e-3)).astype(np.float32)
    images = {'defocused': to_display(scene.blurred)}
    for name, rate in (('tfp41', tfp(spikes, window=41)), ('tfp192', tfp(spikes, window=192)), ('tfi', tfi(spikes))):
        images[name] = to_display(rate * gamma / rate_per_unit)
    if despike is not None:
        exposure = rate_per_unit / reference_rate
        images['despike'] = np.clip(despike(spikes, gamma) * exposure**(-1.0 / DISPLAY_GAMMA), 0.0, 1.0)
    return images


def evaluate(scenes: Sequence[HeldoutScene], despike: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]],
             reference_rate: float = 0.5, steps: int = 192, seed: int = 0,
             levels: Dict[str, float] = LIGHT_LEVELS, keep_images: int = 1,
             progress: Optional[Callable[[str], None]] = None,
             camera: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """Score every method on every scene at every light level.

    Args:
        scenes: Held-out scenes.
        despike: ``f(spikes (T, H, W) uint8, gamma (H, W)) -> (H, W)`` display image, or ``None`` to skip DeSpike;
            unclipped, since the exposure correction may bring values above 1 back into range.
        reference_rate: ρ_ref of the DeSpike network (its display scale).
        steps: Stream length (TFP-192 uses all of it when 192).
        seed: Simulation seed (each scene and level derives its own).
        levels: ``{name: mean rate per step}``.
        keep_images: How many scenes per set keep their images for the picture.
        progress: Called with a line per finished scene.
        camera: Sensor of every stream (default :data:`EVAL_CAMERA`; e.g. with a dark current).

    Returns:
        ``{'rows': [{set, key, level, method, psnr, ssim, psnr_fit, ssim_fit, ssim_defocus, ssim_rest,
        defocus_fraction}], 'summary': ..., '_images': ...}``.
    """
    rows, images = [], {}
    kept: Dict[str, int] = {}
    for index, scene in enumerate(scenes):
        target = to_display(scene.sharp)
        keep = kept.get(scene.set_name, 0) < keep_images
        kept[scene.set_name] = kept.get(scene.set_name, 0) + 1
        for level_index, (level, rate) in enumerate(levels.items()):
            outputs = reconstruct_all(scene, rate, steps, seed * 100003 + index * 101 + level_index,
                                      despike, reference_rate, camera)
            mask = defocus_loss_mask(outputs['defocused'], target)
            for method, image in outputs.items():
                rows.append(dict(set=scene.set_name, key=scene.key, level=level, method=method,
                                 defocus_fraction=float(mask.mean()), **scores(image, target),
                                 **region_ssim(image, target, mask), dark_bias=flat_dark_bias(image, target)))
            if keep:
                images[(scene.set_name, scene.key, level)] = dict(outputs, truth=target)
        if progress is not None:
            progress(f'{scene.set_name}/{scene.key} done')
    return {'rows': rows, 'summary': summarise(rows), '_images': images}


def summarise(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean scores per (set, level, method)."""
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row['set'], row['level'], row['method']), []).append(row)
    summary = []
    for (set_name, level, method), members in groups.items():
        entry = dict(set=set_name, level=level, method=method, count=len(members))
        for metric in ('psnr', 'ssim', 'psnr_fit', 'ssim_fit', 'ssim_defocus', 'ssim_rest', 'dark_bias'):
            if all(metric in m for m in members):
                values = np.array([m[metric] for m in members], dtype=float)  # NaN: no defocused region (in focus)
                entry[metric] = float(np.nanmean(values)) if not np.isnan(values).all() else float('nan')
        summary.append(entry)
    return summary


def markdown(summary: Sequence[Dict[str, Any]]) -> str:
    """One table per set: rows = methods, columns = light level × (raw, fit) PSNR/SSIM."""
    lines = []
    sets = list(dict.fromkeys(s['set'] for s in summary))
    for set_name in sets:
        entries = [s for s in summary if s['set'] == set_name]
        levels = list(dict.fromkeys(s['level'] for s in entries))
        count = entries[0]['count']
        lines += [f'### {set_name} ({count} scenes)', '']
        header = '| method | ' + ' | '.join(f'{lv} PSNR / SSIM | {lv} fit PSNR / SSIM' for lv in levels) + ' |'
        lines += [header, '| --- |' + ' ---: | ---: |' * len(levels)]
        for method in dict.fromkeys(s['method'] for s in entries):
            cells = []
            for level in levels:
                e = next(s for s in entries if s['method'] == method and s['level'] == level)
                cells += [f"{e['psnr']:.2f} / {e['ssim']:.3f}", f"{e['psnr_fit']:.2f} / {e['ssim_fit']:.3f}"]
            lines.append(f'| {LABELS.get(method, method)} | ' + ' | '.join(cells) + ' |')
        lines.append('')
        if all('ssim_defocus' in s for s in entries):
            lines += region_markdown(entries, levels)
        if all('dark_bias' in s for s in entries) and not all(np.isnan(s['dark_bias']) for s in entries):
            lines += dark_bias_markdown(entries, levels)
    return '\n'.join(lines)


def region_markdown(entries: Sequence[Dict[str, Any]], levels: Sequence[str]) -> List[str]:
    """Lines of the raw-SSIM-by-region table of one set (see the module doc)."""
    lines = ['Raw SSIM where defocus removed detail from the photograph / elsewhere (in focus or flat; there the '
             'noise-free photograph is the truth itself):', '',
             '| method | ' + ' | '.join(f'{lv} defocused region / elsewhere' for lv in levels) + ' |',
             '| --- |' + ' ---: |' * len(levels)]
    for method in dict.fromkeys(s['method'] for s in entries):
        cells = []
        for level in levels:
            e = next(s for s in entries if s['method'] == method and s['level'] == level)
            cells.append(f"{e['ssim_defocus']:.3f} / {e['ssim_rest']:.3f}")
        lines.append(f'| {LABELS.get(method, method)} | ' + ' | '.join(cells) + ' |')
    return lines + ['']


def dark_bias_markdown(entries: Sequence[Dict[str, Any]], levels: Sequence[str]) -> List[str]:
    """Lines of the flat-dark-region bias table of one set (:func:`flat_dark_bias`; – for none of its pixels)."""
    lines = [f'Mean error in flat dark regions (target grey {DARK_BAND[0]}–{DARK_BAND[1] - 1} of 255, local std under '
             f'{FLAT_STD:g}), grey levels:', '', '| method | ' + ' | '.join(levels) + ' |',
             '| --- |' + ' ---: |' * len(levels)]
    for method in dict.fromkeys(s['method'] for s in entries):
        values = [next(s for s in entries if s['method'] == method and s['level'] == lv)['dark_bias']
                  for lv in levels]
        cells = ['–' if np.isnan(v) else f'{v:+.2f}' for v in values]
        lines.append(f'| {LABELS.get(method, method)} | ' + ' | '.join(cells) + ' |')
    return lines + ['']


def picture(images: Dict[Tuple[str, str, str], Dict[str, np.ndarray]], crop: int = 192, zoom: int = 1) -> np.ndarray:
    """Rows: (set, scene, light level); columns: every method then the ground truth, on the same centre crop."""
    columns = [m for m in METHODS if any(m in v for v in images.values())] + ['truth']
    gap, label_h, rows = 4, 20, []
    for (set_name, key, level), outputs in images.items():
        tiles = []
        for method in columns:
            image = outputs[method]
            height, width = image.shape
            y0, x0 = max((height - crop) // 2, 0), max((width - crop) // 2, 0)
            tile = np.clip(np.round(image[y0:y0 + crop, x0:x0 + crop] * 255), 0, 255).astype(np.uint8)
            tiles.append(cv2.resize(tile, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST))
        band = np.full((label_h, sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)), 255, np.uint8)
        cv2.putText(band, f'{set_name} / {key} / {level}', (2, label_h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1,
                    cv2.LINE_AA)
        row = tiles[0]
        for tile in tiles[1:]:
            row = np.concatenate([row, np.full((row.shape[0], gap), 255, np.uint8), tile], axis=1)
        rows += [band, row]
    body = np.concatenate(rows, axis=0)
    header = np.full((label_h, body.shape[1]), 255, np.uint8)
    width = crop * zoom + gap
    for i, method in enumerate(columns):
        cv2.putText(header, LABELS.get(method, method)[:24], (i * width + 2, label_h - 6), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, 0, 1, cv2.LINE_AA)
    return np.concatenate([header, body], axis=0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation: Pearson's correlation of the ranks (ties share their mean rank); NaN when either
    input is constant or has fewer than two values."""
    from scipy.stats import rankdata

    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f'spearman: inputs differ in size ({x.size} and {y.size})')
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float('nan')
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def defocus_map_scores(predicted: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """Spearman correlation and mean absolute error (px) of a σ map against the true σ on the pixels of ``mask``
    (the textured ones, :func:`~despike_basicsr.data.defocus_map_data.texture_mask`), and the share of those pixels."""
    predicted, truth, mask = np.asarray(predicted), np.asarray(truth), np.asarray(mask, bool)
    if predicted.shape != truth.shape or mask.shape != truth.shape:
        raise ValueError(f'defocus_map_scores: shapes differ: {predicted.shape}, {truth.shape}, {mask.shape}')
    if not mask.any():
        raise ValueError('defocus_map_scores: the mask selects no pixel')
    p, t = predicted[mask].astype(np.float64), truth[mask].astype(np.float64)
    return {'spearman': spearman(p, t), 'mae': float(np.abs(p - t).mean()), 'textured': float(mask.mean())}


#: Held-out defocus-map setting (docs/pretrained.md, "Defocus map"): true σ from 0 to this many pixels, 256-step
#: streams at the bright and dim light levels of :data:`EVAL_CAMERA` (5 % gain spread), no FPN calibration.
DEFOCUS_MAX_SIGMA = 3.5
DEFOCUS_STEPS = 256
#: PSF families of the defocus-map sets: the thin-lens Gaussian and random lens-like PSFs (discs, polygons, rims).
DEFOCUS_FAMILIES = ('gaussian', 'lens')


@dataclass
class DefocusScene:
    """One held-out scene with known blur: sharp and defocused linear intensity and the true σ (px) per pixel."""

    set_name: str
    key: str
    sharp: np.ndarray
    blurred: np.ndarray
    sigma: np.ndarray


def defocus_map_scenes(images: Dict[str, np.ndarray], seed: int = 24, max_sigma: float = DEFOCUS_MAX_SIGMA,
                       psf_family: str = 'gaussian', max_side: int = 512) -> List[DefocusScene]:
    """Photographs defocused over :func:`synthetic_depth_map` with their true σ map (one seed per image).

    The CoC grows from 0 to its largest value c_max, with the focus plane in front of the scene (even-numbered
    images) or inside it (odd-numbered: both sides blur). Gaussian family: c_max = 4·``max_sigma`` + 1, so σ =
    max(c − 1, 0)/4 spans 0 to ``max_sigma``; lens family (one random lens per image,
    :func:`~despike_basicsr.spike.lens_psf.draw_lens_psf`): c_max = 4·``max_sigma`` (a uniform disc's σ is c/4).
    The true σ is the second moment of the PSF at each pixel
    (:func:`~despike_basicsr.data.defocus_map_data.sigma_for_coc`).
    """
    from despike_basicsr.data.defocus_map_data import defocus_scene
    from despike_basicsr.spike import lens_psf

    scenes = []
    for index, (key, image) in enumerate(sorted(images.items())):
        linear = photo_linear(image, max_side)
        rng = np.random.default_rng([seed, index, 24])
        if psf_family == 'gaussian':
            psf, coc_max = lens_psf.gaussian_psf_for_coc, 4.0 * max_sigma + 1.0
        else:
            psf, coc_max = lens_psf.draw_lens_psf(rng).kernel, 4.0 * max_sigma
        blurred, sigma = defocus_scene(linear, rng, 0.0, coc_max, index % 2 == 1, psf, num_layers=16)
        scenes.append(DefocusScene(f'photos+depth/{psf_family}', key, linear.astype(np.float32), blurred, sigma))
    return scenes


def evaluate_defocus_map(scenes: Sequence[DefocusScene],
                         estimator: Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray],
                         steps: int = DEFOCUS_STEPS, seed: int = 0, levels: Dict[str, float] = LIGHT_LEVELS,
                         progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Spearman correlation and MAE of a σ map against the truth, on the textured pixels of every scene and level.

    Args:
        scenes: Scenes from :func:`defocus_map_scenes`.
        estimator: ``f(spikes (T, H, W) uint8, gamma or None) -> (H, W)`` σ map; called with ``gamma=None`` (no FPN
            file: the 5 % gain spread stays in the stream).
        steps: Stream length.
        seed: Simulation seed (each scene and level derives its own).
        levels: ``{name: mean rate per step}``.
        progress: Called with a line per finished scene.

    Returns:
        ``{'rows': [{set, key, level, spearman, mae, textured, sigma_max}], 'summary': [mean per (set, level)],
        '_maps': {(set, key, level): {sharp, blurred, truth, predicted, mask}} of each set's first scene at the
        first level}``.
    """
    from despike_basicsr.data.defocus_map_data import texture_mask

    rows, maps = [], {}
    for index, scene in enumerate(scenes):
        mask = texture_mask(to_display(scene.sharp))
        for level_index, (level, rate) in enumerate(levels.items()):
            sensor = dict(EVAL_CAMERA, mean_rate=rate)
            spikes, _, _ = simulate_sensor(scene.blurred, sensor, steps, seed * 100003 + index * 101 + level_index + 7)
            predicted = np.asarray(estimator(spikes, None), dtype=np.float32)
            rows.append(dict(set=scene.set_name, key=scene.key, level=level, sigma_max=float(scene.sigma.max()),
                             **defocus_map_scores(predicted, scene.sigma, mask)))
            if level_index == 0 and not any(k[0] == scene.set_name for k in maps):
                maps[(scene.set_name, scene.key, level)] = dict(
                    sharp=to_display(scene.sharp), blurred=to_display(scene.blurred), truth=scene.sigma,
                    predicted=predicted, mask=mask)
        if progress is not None:
            progress(f'{scene.set_name}/{scene.key} defocus map done')
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row['set'], row['level']), []).append(row)
    summary = [dict(set=set_name, level=level, count=len(members),
                    **{m: float(np.mean([r[m] for r in members])) for m in ('spearman', 'mae', 'textured')})
               for (set_name, level), members in groups.items()]
    return {'rows': rows, 'summary': summary, '_maps': maps}


def defocus_map_markdown(report: Dict[str, Any]) -> str:
    """One table per set: a row per scene, Spearman / MAE at every light level, and the mean."""
    lines = []
    for set_name in dict.fromkeys(r['set'] for r in report['rows']):
        rows = [r for r in report['rows'] if r['set'] == set_name]
        levels = list(dict.fromkeys(r['level'] for r in rows))
        header = ' | '.join(f'{lv} Spearman | {lv} MAE (px)' for lv in levels)
        lines += [f'### defocus map, {set_name}', '', f'| scene | textured | true σ max (px) | {header} |',
                  '| --- | ---: | ---: |' + ' ---: | ---: |' * len(levels)]
        for key in dict.fromkeys(r['key'] for r in rows):
            cells = []
            for level in levels:
                r = next(r for r in rows if r['key'] == key and r['level'] == level)
                cells += [f"{r['spearman']:.3f}", f"{r['mae']:.3f}"]
            first = next(r for r in rows if r['key'] == key)
            lines.append(f"| {key} | {100 * first['textured']:.0f} % | {first['sigma_max']:.2f} | " +
                         ' | '.join(cells) + ' |')
        cells = []
        for level in levels:
            s = next(s for s in report['summary'] if s['set'] == set_name and s['level'] == level)
            cells += [f"**{s['spearman']:.3f}**", f"**{s['mae']:.3f}**"]
        lines += ['| **mean** | | | ' + ' | '.join(cells) + ' |', '']
    return '\n'.join(lines)


def defocus_map_picture(maps: Dict[Tuple[str, str, str], Dict[str, np.ndarray]], top: float = 4.0,
                        crop: int = 224) -> np.ndarray:
    """Rows: (set, scene, level); columns: sharp, defocused, true σ, predicted σ (with colour bar), BGR uint8; the
    same centre crop of at most ``crop`` pixels in every column."""
    from despike_basicsr.inference.defocus_map import colour_map_image

    gap, label_h, rows = 4, 18, []
    for (set_name, key, level), full in maps.items():
        height, width = full['truth'].shape
        y0, x0 = max((height - crop) // 2, 0), max((width - crop) // 2, 0)
        m = {name: value[y0:y0 + crop, x0:x0 + crop] for name, value in full.items()}
        gray = [cv2.cvtColor(np.clip(np.round(m[n] * 255), 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
                for n in ('sharp', 'blurred')]
        truth = colour_map_image(m['truth'], top)[:, :m['truth'].shape[1]]
        tiles = gray + [truth, colour_map_image(m['predicted'], top)]
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in tiles]
        row = tiles[0]
        for tile in tiles[1:]:
            row = np.concatenate([row, np.full((height, gap, 3), 255, np.uint8), tile], axis=1)
        band = np.full((label_h, row.shape[1], 3), 255, np.uint8)
        cv2.putText(band, f'{set_name} / {key} / {level}: sharp | defocused | true sigma | predicted sigma (px)',
                    (2, label_h - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows += [band, row]
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def _write_outputs(out_dir: str, stem: str, title: str, report: Dict[str, Any], info: Dict[str, Any], table: str,
                   image: Optional[np.ndarray]) -> Dict[str, str]:
    """``<stem>.json`` (rows + summary + info), ``<stem>.md`` (title, info, table) and ``<stem>.png`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: osp.join(out_dir, f'{stem}.{name}') for name in ('json', 'md', 'png')}
    with open(paths['json'], 'w', encoding='utf-8') as f:
        extra = {'no_harm': report['no_harm']} if 'no_harm' in report else {}
        json.dump({'info': info, 'summary': report['summary'], 'rows': report['rows'], **extra}, f, indent=1)
    with open(paths['md'], 'w', encoding='utf-8') as f:
        f.write(f'# {title}\n\n' + '\n'.join(f'- {k}: {v}' for k, v in info.items()) + '\n\n' + table)
    if image is not None:
        cv2.imwrite(paths['png'], image)
    return paths


def write_results(report: Dict[str, Any], out_dir: str, info: Dict[str, Any], extra: str = '') -> Dict[str, str]:
    """``heldout.json`` (rows + summary + info, and ``no_harm`` when the report has it), ``heldout.md`` (the tables,
    then ``extra``) and ``heldout.png`` in ``out_dir``."""
    image = picture(report['_images']) if report['_images'] else None
    return _write_outputs(out_dir, 'heldout', 'Held-out natural data', report, info,
                          markdown(report['summary']) + extra, image)


def write_defocus_map_results(report: Dict[str, Any], out_dir: str, info: Dict[str, Any]) -> Dict[str, str]:
    """``defocus_map.json`` (rows + summary + info), ``defocus_map.md`` and ``defocus_map.png`` in ``out_dir``."""
    image = defocus_map_picture(report['_maps']) if report['_maps'] else None
    return _write_outputs(out_dir, 'defocus_map', 'Held-out defocus maps', report, info, defocus_map_markdown(report),
                          image)
