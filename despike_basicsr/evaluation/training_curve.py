"""The learning curve of a training campaign: DPDD val per image against iterations and one-thread CPU hours.

Every saved ``experiments/<name>/models/net_g_<iter>.pth`` (EMA weights) is scored on the real DPDD val pairs at the
held-out evaluation's bright light level (:mod:`despike_basicsr.evaluation.heldout`), image by image, beside the
defocused photograph (the no-deblur reference): the gain over the photograph is what deblurring adds. Results
accumulate in ``results/training/curve.json`` (committed, so the curve spans sittings although experiments/ does not),
and ``curve.md`` / ``curve.png`` are written from it.

CPU hours come from BasicSR's training log (``time (data): t`` averaged over each print interval, times the interval):
the campaign runs on one thread, so its wall time is its CPU time. Iterations before the json's last entry keep the
hours recorded then.
"""
import glob
import json
import os
import os.path as osp
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import yaml

from despike_basicsr.evaluation.no_harm import condition_of  # a harm group is a set name or a condition

#: Log line of BasicSR's MessageLogger: iteration and the averaged seconds per iteration.
_LOG_LINE = re.compile(r'iter:\s*([\d,]+),.*?time \(data\): ([\d.]+)')


def iteration_seconds(log_paths: Sequence[str], print_freq: int) -> Dict[int, float]:
    """``{iteration: seconds spent on the print interval ending there}`` from BasicSR training logs."""
    seconds: Dict[int, float] = {}
    for path in log_paths:
        with open(path, encoding='utf-8', errors='replace') as f:
            for line in f:
                match = _LOG_LINE.search(line)
                if match:
                    seconds[int(match.group(1).replace(',', ''))] = float(match.group(2)) * print_freq
    return seconds


def cpu_hours(iteration: int, known: List[Dict[str, Any]], seconds: Dict[int, float]) -> Optional[float]:
    """Hours up to ``iteration``: the latest earlier json entry's hours plus the logged intervals since."""
    earlier = [e for e in known if e['iteration'] <= iteration and e.get('cpu_hours') is not None]
    base_iter, base_hours = (0, 0.0) if not earlier else max((e['iteration'], e['cpu_hours']) for e in earlier)
    spent = [s for i, s in seconds.items() if base_iter < i <= iteration]
    if not spent and iteration > base_iter:
        return None
    return base_hours + sum(spent) / 3600.0


def phase_checkpoints(opt_paths: Sequence[str], every: int,
                      experiments: str = 'experiments') -> Tuple[List[Tuple[int, str, str]], Dict[int, float], str]:
    """Checkpoints of one campaign or of several phases trained one after the other (each from the last).

    Returns ``[(iteration, weights, phase)]`` with iterations counted across the phases (phase k's checkpoint i is
    i plus the iterations of the earlier phases, each ending at its last saved checkpoint, or at ``total_iter`` when
    none is saved; 0 is the first phase's ``pretrain_network_g``), the logged seconds per print interval on the same
    count, and the curve's name.
    """
    found: List[Tuple[int, str, str]] = []
    seconds: Dict[int, float] = {}
    names = []
    offset = 0
    for index, opt_path in enumerate(opt_paths):
        with open(opt_path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
        name = opt['name']
        names.append(name)
        experiment = osp.join(experiments, name)
        logged = iteration_seconds(sorted(glob.glob(osp.join(experiment, 'train_*.log'))),
                                   int(opt['logger']['print_freq']))
        seconds.update({offset + i: s for i, s in logged.items()})
        start = (opt.get('path') or {}).get('pretrain_network_g')
        if index == 0 and start and osp.isfile(start):  # where the campaign started from, as iteration 0
            found.append((0, start, 'start'))
        saved = {}
        for path in glob.glob(osp.join(experiment, 'models', 'net_g_*.pth')):
            match = re.fullmatch(r'net_g_(\d+)\.pth', osp.basename(path))
            if match:
                saved[int(match.group(1))] = path
        found += [(offset + i, path, name) for i, path in saved.items() if i % every == 0]
        offset += max(saved, default=int(opt['train']['total_iter']))  # a phase stopped early ends at its last save
    return sorted(found), seconds, ' → '.join(names)


#: Per-image figures a curve entry keeps (the region SSIMs since iteration 8,000's sitting).
CURVE_METRICS = ('psnr', 'ssim', 'psnr_fit', 'ssim_fit', 'ssim_defocus', 'ssim_rest')


def score_checkpoint(weights: str, scenes, steps: int = 192, seed: int = 0, mean_rate: float = 0.3,
                     harm_scenes=(), harm: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """DeSpike (EMA weights of ``weights``) and the photograph on every scene: per-image PSNR/SSIM, raw and fitted.

    ``harm_scenes`` (in-focus and moving sets, :mod:`.no_harm`) are scored too; DeSpike's per-image differences to
    their bars (:func:`.no_harm.harm_rows`) are appended to ``harm`` when it is a list.
    """
    from despike_basicsr.evaluation import no_harm
    from despike_basicsr.evaluation import heldout
    from despike_basicsr.inference import DeSpikeReconstructor

    reconstructor = DeSpikeReconstructor(weights, device='cpu')

    def despike(spikes, gamma):
        return reconstructor.reconstruct(spikes, gamma, clip=False, exposure='fixed')

    report = heldout.evaluate(list(scenes) + list(harm_scenes), despike, reconstructor.net.reference_rate, steps,
                              seed, levels={'bright': mean_rate}, keep_images=0)
    if harm is not None:
        harm += [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                 for row in no_harm.harm_rows(report['rows']) if row['condition'] != 'defocused']
    per_image = {}
    for row in report['rows']:
        if row['method'] in ('despike', 'defocused') and no_harm.condition_of(row['set']) == 'defocused':
            per_image.setdefault(row['key'], {})[row['method']] = {
                k: round(row[k], 4) for k in CURVE_METRICS if k in row}
    return per_image


def load_curve(path: str) -> List[Dict[str, Any]]:
    """The entries of a curve json (empty when the file does not exist yet)."""
    if not osp.isfile(path):
        return []
    with open(path, encoding='utf-8') as f:
        return json.load(f)['entries']


def save_curve(path: str, name: str, entries: List[Dict[str, Any]]) -> None:
    """Write the json atomically, entries sorted by iteration."""
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump({'name': name, 'entries': sorted(entries, key=lambda e: e['iteration'])}, f, indent=1)
    os.replace(tmp, path)


def gains(entry: Dict[str, Any], metric: str = 'psnr_fit') -> Dict[str, float]:
    """Per image: DeSpike minus the photograph in ``metric``."""
    return {key: v['despike'][metric] - v['defocused'][metric] for key, v in entry['images'].items()}


def mean_of(entry: Dict[str, Any], method: str, metric: str) -> float:
    """Mean of ``metric`` over the entry's images (NaN when an image lacks it)."""
    return float(np.mean([v[method].get(metric, np.nan) for v in entry['images'].values()]))


def region_cell(entry: Dict[str, Any], method: str) -> str:
    """``SSIM defocused region / elsewhere`` of ``method``, ``n/a`` for entries scored before the split existed."""
    inside, rest = mean_of(entry, method, 'ssim_defocus'), mean_of(entry, method, 'ssim_rest')
    return 'n/a' if np.isnan(inside) or np.isnan(rest) else f'{inside:.3f} / {rest:.3f}'


def markdown(name: str, entries: List[Dict[str, Any]]) -> str:
    """The curve as a table: mean scores, then per-image gains over the photograph (fitted PSNR)."""
    if not entries:
        return f'# Learning curve: {name}\n\nNo checkpoint scored yet.\n'
    keys = sorted(entries[0]['images'])
    photo = {k: entries[0]['images'][k]['defocused'] for k in keys}
    groups = harm_groups(entries)
    lines = [
        f'# Learning curve: {name}', '',
        'DPDD val (4 real lens-defocus pairs), bright level (mean 0.3 spikes per step, θ 2, η 1, 5 % gain spread, '
        'FPN γ given), 192 frames, EMA weights. PSNR / SSIM raw, then after the gain/offset fit; the last columns are '
        'each image\'s fitted-PSNR gain over the defocused photograph (positive = deblurred past it), and the raw '
        'SSIM where defocus removed detail from the photograph / elsewhere (in focus or flat: there the noise-free '
        'photograph is the truth itself, so a spike reconstruction can only lose to it). Written by '
        '`python scripts/training_curve.py`.', '',
        'The photograph itself (no deblurring): ' + ', '.join(
            f'{k} {photo[k]["psnr_fit"]:.2f} dB fit' for k in keys) +
        f'; mean {np.mean([photo[k]["psnr_fit"] for k in keys]):.2f} dB fit, '
        f'{np.mean([photo[k]["psnr"] for k in keys]):.2f} / {np.mean([photo[k]["ssim"] for k in keys]):.3f} raw; '
        f'SSIM by region {region_cell(entries[-1], "defocused")}.', '',
        '| iteration | CPU hours | PSNR / SSIM | fit PSNR / SSIM | ' + ' | '.join(f'Δ {k}' for k in keys) +
        ' | SSIM by region | ' + ' | '.join(f'{g} − {BAR_NAMES[condition_of(g)]} (worst)' for g in groups) + ' |',
        '| ---: | ---: | ---: | ---: |' + ' ---: |' * len(keys) + ' ---: |' + ' ---: |' * len(groups)]
    for e in entries:
        hours = 'n/a' if e.get('cpu_hours') is None else f'{e["cpu_hours"]:.2f}'
        delta = ' | '.join(f'{gains(e)[k]:+.2f}' for k in keys)
        lines.append(f'| {e["iteration"]} | {hours} | {mean_of(e, "despike", "psnr"):.2f} / '
                     f'{mean_of(e, "despike", "ssim"):.3f} | {mean_of(e, "despike", "psnr_fit"):.2f} / '
                     f'{mean_of(e, "despike", "ssim_fit"):.3f} | {delta} | {region_cell(e, "despike")} | '
                     + ' | '.join(harm_cell(e, group) for group in groups) + ' |')
    if any(e.get('harm') for e in entries):
        lines += ['', 'Do no harm: DeSpike\'s fitted PSNR minus TFP-192 on sharp images seen in focus, and minus '
                  'TFP-41 on them moving across the sensor (`despike_basicsr/evaluation/no_harm.py`), per set; mean, '
                  'then the worst image.']
    if any('phase' in e for e in entries):
        phases: Dict[str, List[int]] = {}
        for e in entries:
            phases.setdefault(e.get('phase', 'start'), []).append(e['iteration'])
        lines += ['', 'Phases, in order (iterations counted across them; 0 is the first phase\'s starting weights): ' +
                  '; '.join(f'{name} {min(its)}–{max(its)}' for name, its in phases.items()) + '.']
    return '\n'.join(lines) + '\n'


#: How the tables name each condition's bar (:data:`.no_harm.BARS`).
BAR_NAMES = {'in focus': 'TFP-192', 'moving': 'TFP-41', 'defocused': 'photograph'}


def harm_groups(entries: List[Dict[str, Any]]) -> List[str]:
    """The do-no-harm columns: one per scene set in the entries' harm rows (rows scored before sets were recorded
    group by condition), in focus before moving; the two conditions when no entry has harm rows yet."""
    groups = {h.get('set', h['condition']) for e in entries for h in e.get('harm', [])}
    return sorted(groups, key=lambda g: (condition_of(g) == 'moving', g)) or ['in focus', 'moving']


def harm_cell(entry: Dict[str, Any], group: str) -> str:
    """``mean (worst)`` of DeSpike's differences to the bar over the harm rows of ``group``, ``n/a`` when none."""
    diffs = [h['diff'] for h in entry.get('harm', []) if h.get('set', h['condition']) == group]
    return f'{np.mean(diffs):+.2f} ({min(diffs):+.2f})' if diffs else 'n/a'


def plot(name: str, entries: List[Dict[str, Any]], size=(760, 420)) -> np.ndarray:
    """A line plot (OpenCV, no plotting library): per-image fitted-PSNR gain over the photograph and their mean; with
    do-no-harm rows, a second panel below with each set's worst image against its bar."""
    gain_series: Dict[str, List[Tuple[int, float]]] = {}
    for e in entries:
        for key, value in gains(e).items():
            gain_series.setdefault(key, []).append((e['iteration'], value))
        gain_series.setdefault('mean', []).append((e['iteration'], float(np.mean(list(gains(e).values())))))
    title = ascii_name(name)
    panels = [(f'{title}: DPDD val fitted-PSNR gain over the photograph (dB)', gain_series, 'mean')]
    harm_series: Dict[str, List[Tuple[int, float]]] = {}
    for e in entries:
        for group in harm_groups(entries):
            diffs = [h['diff'] for h in e.get('harm', []) if h.get('set', h['condition']) == group]
            if diffs:
                harm_series.setdefault(group, []).append((e['iteration'], min(diffs)))
    if harm_series:
        panels.append(('worst image minus its bar (in focus: TFP-192, moving: TFP-41), dB', harm_series, None))
    width, height = size
    return np.concatenate([_panel(t, series, bold, x_max=max([e['iteration'] for e in entries] + [1]),
                                  size=(width, height)) for t, series, bold in panels], axis=0)


def ascii_name(name: str) -> str:
    """``name`` as OpenCV's fonts can draw it (arrows between phases become ``>``)."""
    return name.replace(' → ', ' > ').encode('ascii', 'replace').decode()


def _panel(title: str, series: Dict[str, List[Tuple[int, float]]], bold: Optional[str], x_max: int,
           size=(760, 420)) -> np.ndarray:
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, 170, 30, 40
    values = [v for points in series.values() for _, v in points] + [0.0]
    y_lo, y_hi = min(values) - 0.1, max(values) + 0.1

    def to_px(x: float, y: float):
        return (int(left + x / x_max * (width - left - right)),
                int(top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom)))

    cv2.rectangle(img, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    cv2.line(img, to_px(0, 0), to_px(x_max, 0), (150, 150, 150), 1)
    for frac in (0.0, 0.5, 1.0):
        y = y_lo + frac * (y_hi - y_lo)
        cv2.putText(img, f'{y:+.1f}', (5, to_px(0, y)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        x = frac * x_max
        cv2.putText(img, f'{int(x)}', (to_px(x, y_lo)[0] - 15, height - bottom + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1)
    cv2.putText(img, title, (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1)
    colours = [(200, 80, 0), (0, 140, 0), (0, 0, 200), (160, 0, 160), (0, 160, 200)]
    for i, (key, points) in enumerate(sorted(series.items(), key=lambda kv: kv[0] == bold)):
        colour, thick = ((0, 0, 0), 2) if key == bold else (colours[i % len(colours)], 1)
        pts = [to_px(x, y) for x, y in points]
        for a, b in zip(pts, pts[1:]):
            cv2.line(img, a, b, colour, thick, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 2, colour, -1)
        cv2.putText(img, key[:22], (width - right + 6, top + 18 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    return img
