"""Benchmark methods on one spike test LMDB: one data path, one metric code path, one table and one picture.

The evaluation core of ``scripts/benchmark.py`` (the command line, with the method syntax and an example). Every
method reads the same samples through the registered ``SpikeLMDBDataset`` and is scored with BasicSR's
``calculate_psnr`` / ``calculate_ssim`` (and LPIPS when its weights are on this machine) on the same uint8 images that
BasicSR's validation uses, and with PSNR once more after a least-squares gain/offset fit to the ground truth
(``psnr_fit``: the score with a global exposure difference forgiven; the two photographs of a real-lens pair such as
DPDD's differ in brightness, which no reconstruction from the stream can know). :func:`run_benchmark` writes
``OUT/benchmark.md`` (the table, then PSNR/SSIM per image), ``OUT/benchmark.json`` (per method, with ``per_sample``
PSNR/SSIM/PSNR fit) and ``OUT/benchmark.png`` (the same crops across methods).

Differences that mean something (:func:`paired_difference_stats`): a handful of test images is few, so every method is
compared with a reference method (``despike`` by default) image by image (paired differences of PSNR, their spread and
a t-interval over the images) and tile by tile (PSNR on a grid of non-overlapping tiles of every image, and a
bootstrap interval of the mean paired difference that resamples images, then tiles within them, since tiles of one
image are not independent). A difference is called real (``higher`` / ``lower``) only where both 95 % intervals exclude
0 on the same side (:data:`VERDICT_RULE`); otherwise it is within noise.

Importing this module registers the plugin with BasicSR (:func:`despike_basicsr.register`).
"""
import json
import os
import platform
import re
import time
from copy import deepcopy
from dataclasses import dataclass, field
from os import path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import despike_basicsr  # isort:skip

despike_basicsr.register()  # isort:skip  (compat before basicsr loads; fills the registries)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from basicsr.metrics import calculate_metric, calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from basicsr.utils.registry import DATASET_REGISTRY  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from despike_basicsr.checkpoint import load_network_weights  # noqa: E402
from despike_basicsr.data.spike_lmdb import SpikeLMDBReader  # noqa: E402
from despike_basicsr.data.preparation import resize, to_display_uint8  # noqa: E402
from despike_basicsr.device import synchronize  # noqa: E402
from despike_basicsr.evaluation.heldout import gain_offset_fit  # noqa: E402
from despike_basicsr.options_file import load_options_file  # noqa: E402
from despike_basicsr.spike.images import read_linear_intensity  # noqa: E402
from despike_basicsr.spike.reconstruct import classical_display  # noqa: E402

CLASSICAL = ('tfp', 'tfi')
SHORT_STREAM_ERROR = re.compile(r'at least \d+ (frames|time steps)')
TILE_PSNR_CAP = 100.0  # dB: a tile reproduced exactly (MSE 0) counts as this, not as infinity


def tile_psnrs(result: np.ndarray, gt: np.ndarray, grid: int) -> List[float]:
    """PSNR (uint8 scale, BasicSR's formula) of each tile of a ``grid`` × ``grid`` split of the image into
    non-overlapping tiles (the last row/column of pixels that do not divide evenly is left out), row by row.

    Args:
        result: ``(H, W)`` or ``(H, W, C)`` uint8 image.
        gt: The ground truth, same shape.
        grid: Tiles per side (1: the whole image).

    Returns:
        ``grid²`` PSNRs in dB (capped at :data:`TILE_PSNR_CAP`).

    Raises:
        ValueError: The image has fewer pixels than tiles per side, or the shapes differ.
    """
    if result.shape != gt.shape:
        raise ValueError(f'tile_psnrs: shapes differ, {result.shape} and {gt.shape}')
    height, width = gt.shape[:2]
    if grid < 1 or height < grid or width < grid:
        raise ValueError(f'tile_psnrs: cannot split a {height}x{width} image into {grid}x{grid} tiles')
    th, tw = height // grid, width // grid
    values = []
    for i in range(grid):
        for j in range(grid):
            a = result[i * th:(i + 1) * th, j * tw:(j + 1) * tw].astype(np.float64)
            b = gt[i * th:(i + 1) * th, j * tw:(j + 1) * tw].astype(np.float64)
            mse = float(np.mean((a - b)**2))
            values.append(TILE_PSNR_CAP if mse == 0 else min(TILE_PSNR_CAP, 10.0 * np.log10(255.0**2 / mse)))
    return values


#: When a paired difference counts as real: both intervals, over the images and over their tiles, must say so.
VERDICT_RULE = ('"higher" / "lower": the t-interval over the images and the bootstrap interval over their tiles both '
                'exclude 0, on the same side; otherwise "within noise" (also with one image, which has no t-interval)')


def interval_side(interval: Sequence[float]) -> Optional[str]:
    """``'higher'`` when a finite interval lies above 0, ``'lower'`` below 0, else ``None``."""
    low, high = interval
    if np.isfinite(low) and low > 0:
        return 'higher'
    if np.isfinite(high) and high < 0:
        return 'lower'
    return None


def verdict_of(t_interval: Sequence[float], bootstrap_interval: Sequence[float]) -> str:
    """:data:`VERDICT_RULE`: the side both intervals exclude 0 on, else ``'within noise'``.

    The image-level t-interval and the tile bootstrap answer one question two ways (few images, Student's t; many
    tiles, resampled images first); a difference one of them cannot tell from 0 is not called real.
    """
    side = interval_side(t_interval)
    return side if side is not None and side == interval_side(bootstrap_interval) else 'within noise'


def paired_difference_stats(scores: Dict[str, Sequence[float]],
                            reference: Dict[str, Sequence[float]],
                            image_scores: Optional[Dict[str, float]] = None,
                            reference_image_scores: Optional[Dict[str, float]] = None,
                            confidence: float = 0.95,
                            bootstrap: int = 4000,
                            seed: int = 0) -> Dict[str, Any]:
    """Paired differences of a method to a reference, per image and per tile, with their uncertainty.

    Per image: ``d_i = image_scores[i] − reference_image_scores[i]`` (by default the mean of each image's tiles), their
    mean, standard deviation (n − 1) and Student's t-interval of the mean (n − 1 degrees of freedom). Per tile:
    ``d_ij`` = the tile differences; their mean, and a two-stage (cluster) bootstrap interval of it: resample the
    images with replacement, then each chosen image's tiles with replacement, ``bootstrap`` times (percentile
    interval). Tiles of one image share its content and its exposure, so resampling tiles alone would overstate the
    precision; resampling images first keeps that. With one image only the tile stage remains.

    Args:
        scores: Per image key, the method's tile scores (e.g. :func:`tile_psnrs`).
        reference: Per image key, the reference's tile scores (same keys, same number of tiles per key).
        image_scores: Per image key, the method's whole-image score; default the mean of its tiles.
        reference_image_scores: The same for the reference.
        confidence: Level of both intervals.
        bootstrap: Bootstrap resamples.
        seed: Seed of the bootstrap.

    Returns:
        ``{'images', 'per_image', 'mean', 'sd', 't_interval', 'tiles', 'tile_mean', 'bootstrap_interval',
        'verdict'}``; ``verdict`` is ``'higher'`` / ``'lower'`` when the t-interval and the bootstrap interval both
        exclude 0 on that side, else ``'within noise'`` (:func:`verdict_of`, :data:`VERDICT_RULE`).

    Raises:
        ValueError: The keys or the tile counts of the two sides differ, or there are no images.
    """
    from scipy import stats

    keys = list(reference)
    if sorted(scores) != sorted(keys) or not keys:
        raise ValueError(f'paired differences need the same, non-empty images on both sides: {sorted(scores)} vs '
                         f'{sorted(keys)}')
    tiles = []
    for key in keys:
        a, b = np.asarray(scores[key], np.float64), np.asarray(reference[key], np.float64)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise ValueError(f'image {key}: {a.size} tile scores against {b.size}')
        tiles.append(a - b)
    own = image_scores or {k: float(np.mean(scores[k])) for k in keys}
    ref = reference_image_scores or {k: float(np.mean(reference[k])) for k in keys}
    per_image = np.array([own[k] - ref[k] for k in keys], np.float64)
    n = per_image.size
    mean = float(per_image.mean())
    sd = float(per_image.std(ddof=1)) if n > 1 else float('nan')
    if n > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
        t_interval = [mean - half, mean + half]
    else:
        t_interval = [float('nan'), float('nan')]
    rng = np.random.default_rng(seed)
    means = np.empty(bootstrap)
    for r in range(bootstrap):
        chosen = rng.integers(0, n, n) if n > 1 else np.zeros(1, int)
        means[r] = np.mean(np.concatenate([tiles[i][rng.integers(0, tiles[i].size, tiles[i].size)] for i in chosen]))
    alpha = (1 - confidence) / 2
    boot = [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]
    all_tiles = np.concatenate(tiles)
    verdict = verdict_of(t_interval, boot)
    return {
        'images': n, 'per_image': {k: float(d) for k, d in zip(keys, per_image)}, 'mean': mean, 'sd': sd,
        't_interval': t_interval, 'tiles': int(all_tiles.size), 'tile_mean': float(all_tiles.mean()),
        'bootstrap_interval': boot, 'confidence': confidence, 'verdict': verdict,
    }


@dataclass
class Method:
    """One entry of ``--methods``."""

    name: str
    kind: str  # 'tfp', 'tfi', 'defocused' or 'model'
    options: Optional[str] = None  # the model's options file; the DPDD root of 'defocused'
    weights: Optional[str] = None
    window: Optional[int] = None  # TFP window of this entry (``tfp:191``); None: --tfp-window
    fpn: bool = False  # classical entry with the LMDB's FPN correction (``tfp+fpn``)
    result: Dict[str, Any] = field(default_factory=dict)


def parse_method(spec: str) -> Method:
    """``tfp`` | ``tfp:WINDOW`` | ``tfi`` (each with an optional ``+fpn``) | ``defocused:DPDD_ROOT`` |
    ``NAME:OPTIONS.yml[:WEIGHTS]``.

    ``+fpn`` (``tfp:191+fpn``, named ``tfp191_fpn``) multiplies the classical rates by the LMDB's FPN factor γ, the
    compensation DeSpike applies; without it TFP/TFI have none, as in the published cascades. ``defocused:DPDD_ROOT``
    scores the defocused photographs a DPDD-mode LMDB was simulated from (:func:`defocused_image`).

    Raises:
        ValueError: Naming the accepted forms and what was found.
    """
    classical, plus, suffix = spec.rpartition('+')
    fpn = bool(plus) and suffix.lower() == 'fpn'
    classical = classical if fpn else spec
    suffix = '_fpn' if fpn else ''
    if classical.lower() in CLASSICAL:
        return Method(name=classical.lower() + suffix, kind=classical.lower(), fpn=fpn)
    head, _, window = classical.partition(':')
    if head.lower() == 'defocused' and window and not window.endswith(('.yml', '.yaml')) and not fpn:
        return Method(name='defocused', kind='defocused', options=window)
    if head.lower() == 'tfp' and window.isdigit() and int(window) > 0:
        return Method(name=f'tfp{window}{suffix}', kind='tfp', window=int(window), fpn=fpn)
    parts = spec.split(':', 2)
    if fpn or len(parts) < 2 or not parts[0] or not parts[1].endswith(('.yml', '.yaml')):
        raise ValueError(f"method {spec!r}: expected 'tfp', 'tfp:WINDOW', 'tfi' (each optionally with '+fpn'), "
                         "'defocused:DPDD_ROOT' or 'NAME:OPTIONS.yml[:WEIGHTS.pth]'")
    return Method(name=parts[0], kind='model', options=parts[1], weights=parts[2] if len(parts) == 3 else None)


def load_state_dict(path: str, param_key: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Network weights from a checkpoint (weights-only load; ``param_key``, else ``params_ema``, else ``params``)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'weights file {path} does not exist (train the method first, or pass '
                                f'NAME:OPTIONS.yml:WEIGHTS.pth)')
    return load_network_weights(path, param_key)


def build_method_model(method: Method, device: torch.device):
    """The method's BasicSR model in test mode, with its weights loaded (strictly) from ``method.weights``."""
    opt = deepcopy(load_options_file(method.options))
    opt.update(is_train=False, dist=False, rank=0, world_size=1, num_gpu=1 if device.type == 'cuda' else 0)
    opt['path'] = dict(opt.get('path') or {})
    method.weights = method.weights or opt['path'].get('pretrain_network_g')
    if not method.weights:
        raise ValueError(f'method {method.name!r}: no weights given and {method.options} has no '
                         f'path.pretrain_network_g')
    param_key = opt['path'].get('param_key_g')
    opt['path']['pretrain_network_g'] = None  # loaded below, with weights_only=True
    model = build_model(opt)
    for net_name in ('net_g', 'net_g_ema'):
        if hasattr(model, net_name):
            model.get_bare_model(getattr(model, net_name)).load_state_dict(
                load_state_dict(method.weights, param_key), strict=True)
    return model


def build_dataset(lmdb_path: str, val_len: int):
    """The registered SpikeLMDBDataset in evaluation mode; FPN gamma when the LMDB carries ``fpn.npz``."""
    opt = {
        'name': 'benchmark', 'type': 'SpikeLMDBDataset', 'dataroot': lmdb_path, 'io_backend': {'type': 'lmdb'},
        'phase': 'test', 'val_len': val_len, 'fpn': osp.isfile(osp.join(lmdb_path, 'fpn.npz'))
    }
    return DATASET_REGISTRY.get('SpikeLMDBDataset')(opt)


def crop_frames(spikes: torch.Tensor, lengths) -> torch.Tensor:
    """The centre ``min(lq_len)`` frames, as the models' ``feed_data`` keeps them."""
    if lengths is None:
        return spikes
    shortest = min(int(torch.as_tensor(lengths).min()), spikes.shape[1])
    start = spikes.shape[1] // 2 - shortest // 2
    return spikes[:, start:start + shortest]


def classical_image(kind: str, batch: Dict[str, Any], meta: Dict[str, Any], window: int,
                    fpn: bool = False) -> torch.Tensor:
    """TFP or TFI of the target frame, through ``rate_to_display`` with the sample's own threshold and eta; with
    ``fpn``, the rates are first multiplied by the batch's FPN factor ``gamma``.

    Raises:
        ValueError: ``fpn`` is asked for but the LMDB has no ``fpn.npz``.
    """
    spikes = crop_frames(batch['lq'], batch.get('lq_len'))
    gamma = batch.get('gamma')
    if fpn and gamma is None:
        raise ValueError('a +fpn method needs the LMDB to carry its FPN calibration fpn.npz, which it does not')
    return classical_display(spikes, kind, window=window, eta=float(meta.get('eta', 1.0)),
                             threshold=float(meta.get('threshold', 2.0)),
                             fpn_gamma=gamma[:, 0] if fpn else None)[:, None]


def defocused_image(dpdd_root: str, meta: Dict[str, Any], key: str) -> torch.Tensor:
    """The defocused photograph a ``dpdd``-mode sample was simulated from, processed as its ground truth was (linear
    luminance, rescaled by the sample's ``scale``, display gamma, uint8): the no-deblur reference that a method must
    beat to have deblurred at all.

    Args:
        dpdd_root: The DPDD layout ``{root}/{train,val,test}_c/source`` the LMDB was prepared from.
        meta: The sample's LMDB metadata (``mode``, ``blurred_file``, ``scale``, ``gamma``).
        key: The sample's key, for the messages.

    Returns:
        ``(1, 1, H, W)`` float image in [0, 1].

    Raises:
        ValueError: The sample was not simulated from a DPDD photograph.
        FileNotFoundError: Its photograph is in none of the root's ``source`` folders.
    """
    name = meta.get('blurred_file')
    if meta.get('mode') != 'dpdd' or not name:
        raise ValueError(f"sample {key}: 'defocused' needs an LMDB made by scripts/prepare_dpdd.py (mode dpdd, with "
                         f"blurred_file), but this sample has mode {meta.get('mode')!r}")
    paths = [osp.join(dpdd_root, f'{split}_c', 'source', name) for split in ('train', 'val', 'test')]
    found = [path for path in paths if osp.isfile(path)]
    if not found:
        raise FileNotFoundError(f'sample {key}: its photograph {name} is in none of '
                                f'{osp.join(dpdd_root, "{train,val,test}_c", "source")}')
    gamma = float(meta.get('gamma', 2.2))
    linear = resize(read_linear_intensity(found[0], gamma), float(meta.get('scale', 1.0)))
    return torch.from_numpy(to_display_uint8(linear, gamma).astype(np.float32) / 255.0)[None, None]


class LPIPSScorer:
    """LPIPS through the registered ``calculate_lpips`` metric, or the reason it is unavailable."""

    def __init__(self, mode: str, backbone_path: Optional[str]) -> None:
        self.backbone_path = backbone_path
        self.reason = None
        if mode == 'off':
            self.reason = 'disabled (--lpips off)'
            return
        try:
            from despike_basicsr.losses.lpips_net import build_lpips_net
            build_lpips_net(pretrained=True, backbone_path=backbone_path)
        except Exception as err:  # missing weights (no internet), missing package...: report, do not fail
            first_sentence = str(err).split('. ')[0].splitlines()[0][:200]
            self.reason = f'n/a: {first_sentence}'

    @property
    def available(self) -> bool:
        return self.reason is None

    def __call__(self, img: np.ndarray, img2: np.ndarray) -> float:
        metric_opt = {'type': 'calculate_lpips', 'crop_border': 0, 'backbone_path': self.backbone_path}
        return float(calculate_metric({'img': img, 'img2': img2}, metric_opt))


def evaluate(method: Method,
             dataset,
             device: torch.device,
             lpips: LPIPSScorer,
             reader: SpikeLMDBReader,
             tfp_window: int = 41,
             grid_samples: int = 3,
             tiles: int = 4) -> Dict[str, Any]:
    """Scores, parameter count, latency and the grid images of one method.

    Args:
        method: The method (:func:`parse_method`).
        dataset: The evaluation dataset (:func:`build_dataset`).
        device: Where the method runs.
        lpips: The LPIPS scorer (or the reason it is off).
        reader: The LMDB's reader, for each sample's threshold and eta.
        tfp_window: TFP window of a ``tfp`` method without its own.
        grid_samples: How many samples keep their images for the picture.
        tiles: Each image is also scored as ``tiles`` × ``tiles`` non-overlapping tiles (:func:`tile_psnrs`).

    Returns:
        The method's entry of ``benchmark.json`` (``per_sample`` holds each image's PSNR, SSIM, PSNR fit and tile
        PSNRs), plus ``_images``. A trained method that refuses the stream as too short (a network whose smallest
        window is longer than ``--val-len``) is returned with ``unavailable`` set to its message and no scores.
    """
    model = build_method_model(method, device) if method.kind == 'model' else None
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
    psnr, psnr_fit, ssim, lpips_values, latency, keys, images, tile_values = [], [], [], [], [], [], {}, []
    for index, batch in enumerate(loader):
        key = batch['lq_path'][0]
        repeats = 2 if index == 0 else 1  # the first pass warms up (allocations, kernels) and is not timed
        for repeat in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            if method.kind == 'defocused':
                output = defocused_image(method.options, reader.meta(key), key)
            elif model is None:
                on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                output = classical_image(method.kind, on_device, reader.meta(key), method.window or tfp_window,
                                         method.fpn)
            else:
                try:
                    model.feed_data(batch)
                    model.test()
                except ValueError as err:
                    if not SHORT_STREAM_ERROR.search(str(err)):
                        raise
                    return unavailable(method, str(err))
                output = model.output
            synchronize(device)
            elapsed = time.perf_counter() - start
        latency.append(elapsed)
        output = output.detach().float().cpu()
        result = tensor2img([output])
        gt = tensor2img([batch['gt']])
        if result.shape != gt.shape:
            raise ValueError(f'method {method.name!r}, sample {key}: the image is {result.shape[1]}x{result.shape[0]} '
                             f'but the ground truth is {gt.shape[1]}x{gt.shape[0]}')
        psnr.append(float(calculate_psnr(result, gt, crop_border=0, test_y_channel=False)))
        tile_values.append(tile_psnrs(result, gt, tiles))
        fitted = gain_offset_fit(output[0, 0].numpy(), batch['gt'][0, 0].numpy())
        psnr_fit.append(float(calculate_psnr(tensor2img([torch.from_numpy(fitted)]), gt, crop_border=0)))
        ssim.append(float(calculate_ssim(result, gt, crop_border=0, test_y_channel=False)))
        if lpips.available:
            lpips_values.append(lpips(result, gt))
        keys.append(key)
        if index < grid_samples:
            images[key] = (result, gt)
    params = 0
    if model is not None:
        params = sum(p.numel() for p in model.get_bare_model(model.net_g).parameters())
    return {
        'name': method.name,
        'kind': method.kind,
        'options': method.options,
        'weights': method.weights,
        'psnr': float(np.mean(psnr)),
        'psnr_fit': float(np.mean(psnr_fit)),
        'ssim': float(np.mean(ssim)),
        'lpips': float(np.mean(lpips_values)) if lpips.available else 'n/a',
        'lpips_note': lpips.reason or 'AlexNet v0.1',
        'params': int(params),
        'latency_ms_per_frame': 1000 * float(np.median(latency)),
        'per_sample': {k: {'psnr': p, 'ssim': s, 'psnr_fit': f, 'tile_psnr': t}
                       for k, p, s, f, t in zip(keys, psnr, ssim, psnr_fit, tile_values)},
        'tiles_per_side': tiles,
        '_images': images,
    }


def unavailable(method: Method, reason: str) -> Dict[str, Any]:
    """The entry of a method that could not run on these streams (kept in the report with the reason)."""
    return {'name': method.name, 'kind': method.kind, 'options': method.options, 'weights': method.weights,
            'unavailable': reason, 'psnr': None, 'psnr_fit': None, 'ssim': None, 'lpips': 'n/a', 'lpips_note': reason,
            'params': 0, 'latency_ms_per_frame': None, 'per_sample': {}, '_images': {}}


def paired_differences(methods: Sequence[Dict[str, Any]], reference: str, seed: int = 0) -> Dict[str, Any]:
    """:func:`paired_difference_stats` of every method's PSNR against ``reference``'s (per image and per tile).

    Returns:
        ``{method name: stats}`` for every scored method other than the reference; empty when the reference is not
        among the methods or could not run.
    """
    ref = next((m for m in methods if m['name'] == reference and m.get('per_sample')), None)
    if ref is None:
        return {}
    result = {}
    for m in methods:
        if m['name'] == reference or not m.get('per_sample'):
            continue
        keys = list(ref['per_sample'])
        result[m['name']] = paired_difference_stats(
            {k: m['per_sample'][k]['tile_psnr'] for k in keys}, {k: ref['per_sample'][k]['tile_psnr'] for k in keys},
            {k: m['per_sample'][k]['psnr'] for k in keys}, {k: ref['per_sample'][k]['psnr'] for k in keys}, seed=seed)
    return result


def differences_table(report: Dict[str, Any]) -> List[str]:
    """Markdown lines: each method's paired PSNR difference to the reference, its spread and the verdict."""
    differences = report.get('differences') or {}
    if not differences:
        return []
    reference = report['reference']
    tiles = report.get('tiles_per_side', 1)
    lines = [f'## Paired differences to {reference}', '',
             f'PSNR of each method minus {reference}\'s, image by image (Δ per image, their mean, standard deviation '
             f'and 95 % t-interval over the images), and over a {tiles}×{tiles} grid of non-overlapping tiles per '
             'image (mean of the tile differences, 95 % bootstrap interval resampling images, then tiles within '
             f'them). The verdict: {VERDICT_RULE}.', '',
             '| Method | Δ per image (dB) | mean Δ | sd | 95 % t-interval | tiles | tile mean Δ | 95 % bootstrap | '
             'verdict |', '|---|---|---:|---:|---|---:|---:|---|---|']
    for name, d in differences.items():
        per_image = ', '.join(f'{v:+.2f}' for v in d['per_image'].values())
        t_low, t_high = d['t_interval']
        b_low, b_high = d['bootstrap_interval']
        lines.append(f"| {name} | {per_image} | {d['mean']:+.2f} | {d['sd']:.2f} | [{t_low:+.2f}, {t_high:+.2f}] | "
                     f"{d['tiles']} | {d['tile_mean']:+.2f} | [{b_low:+.2f}, {b_high:+.2f}] | {d['verdict']} |")
    noise = [n for n, d in differences.items() if d['verdict'] == 'within noise']
    apart = [f"{n} ({d['verdict']})" for n, d in differences.items() if d['verdict'] != 'within noise']
    lines += ['', f"Within noise of {reference}: {', '.join(noise) or 'none'}. "
              f"Apart from {reference}: {', '.join(apart) or 'none'}.", '']
    return lines


def centre_box(height: int, width: int, size: int) -> Tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the centred ``size`` × ``size`` crop (smaller where the image is)."""
    size_h, size_w = min(size, height), min(size, width)
    y0, x0 = (height - size_h) // 2, (width - size_w) // 2
    return y0, y0 + size_h, x0, x0 + size_w


def picture_grid(results: List[Dict[str, Any]], crop: int, zoom: int) -> np.ndarray:
    """Rows: samples; columns: methods then the ground truth; the same centre crop everywhere; labelled columns."""
    keys = list(results[0]['_images'])
    columns = [r['name'] for r in results] + ['ground truth']
    rows, gap, label_h = [], 4, 22
    for key in keys:
        tiles = [r['_images'][key][0] for r in results] + [results[0]['_images'][key][1]]
        y0, y1, x0, x1 = centre_box(*tiles[0].shape[:2], crop)
        tiles = [cv2.resize(t[y0:y1, x0:x1], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST) for t in tiles]
        row = []
        for tile in tiles:
            row += [tile, np.full((tile.shape[0], gap), 255, np.uint8)]
        rows += [np.concatenate(row[:-1], axis=1), np.full((gap, sum(t.shape[1] for t in row[:-1])), 255, np.uint8)]
    body = np.concatenate(rows[:-1], axis=0)
    tile_w = (body.shape[1] + gap) // len(columns)
    header = np.full((label_h, body.shape[1]), 255, np.uint8)
    for i, name in enumerate(columns):
        cv2.putText(header, name[:max(4, tile_w // 7)], (i * tile_w + 2, label_h - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    0, 1, cv2.LINE_AA)
    return np.concatenate([header, body], axis=0)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and torch's thread count."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def markdown_table(report: Dict[str, Any]) -> str:
    """``benchmark.md``: the table of every method, the picture and the command, then PSNR/SSIM per image."""
    lines = [
        '# Benchmark', '',
        f"Test LMDB `{report['lmdb']}`: {report['num_samples']} samples, {report['val_len']}-frame windows centred on "
        f"the target frame. Device: {report['device_name']}. PSNR/SSIM: BasicSR (uint8, no border crop); PSNR fit: "
        f"PSNR after a least-squares gain/offset fit to the ground truth; LPIPS: {report['lpips_note']}. Latency: "
        f"median per reconstructed frame, front end included.", '',
        '| Method | PSNR (dB) | SSIM | PSNR fit (dB) | LPIPS | Parameters | Latency (ms/frame) |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for r in report['methods']:
        if r.get('unavailable'):
            lines.append(f"| {r['name']} | n/a | n/a | n/a | n/a | - | - |")
            continue
        lpips = r['lpips'] if isinstance(r['lpips'], str) else f"{r['lpips']:.3f}"
        params = f"{r['params'] / 1e6:.2f} M" if r['params'] else '0'
        lines.append(f"| {r['name']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['psnr_fit']:.2f} | {lpips} | {params} | "
                     f"{r['latency_ms_per_frame']:.1f} |")
    for r in report['methods']:
        if r.get('unavailable'):
            lines += ['', f"{r['name']}: not scored on these streams: {r['unavailable']}"]
    lines += ['', f"Picture: `{report['picture']}` (columns: methods, then the ground truth).", '',
              f"Command: `{report['command']}`", '']
    lines += per_image_table(report['methods'])
    lines += differences_table(report)
    return '\n'.join(lines)


def per_image_table(methods: Sequence[Dict[str, Any]]) -> List[str]:
    """Markdown lines of PSNR / SSIM per image (rows) and method (columns); none without per-sample scores."""
    keys = list(dict.fromkeys(key for m in methods for key in m.get('per_sample') or {}))
    if not keys:
        return []
    lines = ['## Per image', '', 'PSNR (dB) / SSIM of every sample.', '',
             '| Image | ' + ' | '.join(m['name'] for m in methods) + ' |', '|---' + '|---:' * len(methods) + '|']
    for key in keys:
        cells = []
        for m in methods:
            score = (m.get('per_sample') or {}).get(key)
            cells.append('-' if score is None else f"{score['psnr']:.2f} / {score['ssim']:.3f}")
        lines.append(f'| {key} | ' + ' | '.join(cells) + ' |')
    return lines + ['']


def _print_flush(line: str) -> None:
    print(line, flush=True)


def run_benchmark(methods: Sequence[str],
                  lmdb: str,
                  out_dir: str = 'results',
                  device: str = 'cpu',
                  val_len: int = 192,
                  tfp_window: int = 41,
                  lpips_mode: str = 'auto',
                  lpips_backbone: Optional[str] = None,
                  grid_samples: int = 3,
                  crop: int = 96,
                  zoom: int = 2,
                  seed: int = 0,
                  command: str = '',
                  log: Callable[[str], None] = _print_flush,
                  tiles: int = 4,
                  reference: str = 'despike',
                  stem: str = 'benchmark') -> Dict[str, Any]:
    """Score ``methods`` on one test LMDB; write ``OUT/<stem>.png``, ``<stem>.json`` and ``<stem>.md``.

    Args:
        methods: Method specs (:func:`parse_method`): ``tfp``, ``tfp:WINDOW``, ``tfi``, ``NAME:OPTIONS.yml[:WEIGHTS]``.
        lmdb: Test spike LMDB.
        out_dir: Output folder (created).
        device: ``cpu`` or ``cuda``.
        val_len: Frames per evaluated window, centred on the target.
        tfp_window: TFP window of the plain ``tfp`` method.
        lpips_mode: ``auto`` (LPIPS when its weights are on this machine) or ``off``.
        lpips_backbone: AlexNet weights file for LPIPS.
        grid_samples: Samples (rows) in the picture.
        crop: Side of the centre crop shown in the picture.
        zoom: Nearest-neighbour zoom of the picture crops.
        seed: Torch seed.
        command: The command line, recorded in the report.
        log: Receives one progress line per method start and result.
        tiles: Tiles per side of the per-tile PSNR grid of every image (:func:`tile_psnrs`).
        reference: The method every other one is compared with, image by image and tile by tile
            (:func:`paired_differences`); nothing is compared when no method has that name.
        stem: Output file name stem (``benchmark``; the DPDD protocol writes ``ablations`` too).

    Returns:
        The report written to ``benchmark.json``.

    Raises:
        ValueError: A malformed method spec, repeated method names, or a model method without weights.
        RuntimeError: ``cuda`` without a CUDA device.
        FileNotFoundError: A weights file that does not exist.
    """
    parsed = [parse_method(spec) for spec in methods]
    names = [m.name for m in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f'method names must be unique, found {names}')
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda was requested but torch sees no CUDA device')
    torch.manual_seed(seed)
    torch_device = torch.device(device)
    dataset = build_dataset(lmdb, val_len)
    reader = SpikeLMDBReader(lmdb)
    lpips = LPIPSScorer(lpips_mode, lpips_backbone)

    results = []
    for method in parsed:
        log(f'[benchmark] {method.name} ...')
        results.append(evaluate(method, dataset, torch_device, lpips, reader, tfp_window, grid_samples, tiles))
        r = results[-1]
        if r.get('unavailable'):
            log(f"[benchmark] {r['name']}: not scored on {val_len}-frame streams: {r['unavailable']}")
            continue
        log(f"[benchmark] {r['name']}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, LPIPS {r['lpips']}, "
            f"{r['latency_ms_per_frame']:.1f} ms/frame")

    os.makedirs(out_dir, exist_ok=True)
    picture = osp.join(out_dir, f'{stem}.png')
    scored = [r for r in results if not r.get('unavailable')]
    if scored:
        cv2.imwrite(picture, picture_grid(scored, crop, zoom))
    methods_json = [{k: v for k, v in r.items() if not k.startswith('_')} for r in results]
    report = {
        'lmdb': lmdb, 'num_samples': len(dataset), 'val_len': val_len, 'device': device,
        'device_name': device_name(torch_device), 'torch': torch.__version__,
        'lpips_note': lpips.reason or 'AlexNet v0.1', 'picture': picture, 'command': command,
        'tiles_per_side': tiles, 'reference': reference,
        'methods': methods_json,
        'differences': paired_differences(methods_json, reference, seed),
    }
    with open(osp.join(out_dir, f'{stem}.json'), 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)
    with open(osp.join(out_dir, f'{stem}.md'), 'w', encoding='utf-8') as f:
        f.write(markdown_table(report))
    return report
