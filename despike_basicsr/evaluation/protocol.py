"""The DPDD protocol's table, accumulated row by row across sittings (issue 29).

Each finished row of ``scripts/dpdd_protocol.sh`` is scored once on the scoring LMDB (the 4 val pairs and the 12
train pairs of ``preparation.scoring_holdout``) and written to ``<results>/rows/<row>.json``: its per-image and
per-tile scores, its weights' size and the wall and CPU seconds of its training (all runs of it, from
``training_times.md``). The file is committed, and a row with a file is never trained or scored again. The table
``<results>/benchmark.{json,md}`` is assembled from those files: rows without one are "still training" (with the
newest iteration in ``experiments/<name>/training_states/`` or in the committed state against ``total_iter``) or "not
started". A training that cannot finish in one sitting leaves its small state (weights, optimizer, iteration: the
``training.campaign`` pair) in ``<results>/state/<name>/``, which the next sitting restores. Where that pair is over
``STATE_LIMIT_MB`` (NRKNet's 6 M parameters: 92 MB with Adam's moments and the EMA) the state is kept compact
(:func:`compact_state`): ``net_g``'s parameters in half precision, the iteration, scheduler and random states, the
optimiser's settings without its moments. The trained front-end stages (RSIR, Spk2ImgNet) are kept in half precision
in ``<results>/front_ends/`` once scored (:func:`keep_front_end`), and put back where a cascade's options look for them
when they are missing (:func:`restore_state`), so that a fresh clone can start or resume every cascade. A run resumed
from a compact state restarts Adam and the EMA, with a ``RESTART_WARMUP_ITER`` linear warm-up
(``SpikeSRModel.resume_training``); ``experiments/<name>/restarts.json`` records it and the row's table entry says so.

    python -m despike_basicsr.evaluation.protocol write-row --results results/dpdd --row despike \\
        --benchmark results/dpdd/rows/.work/despike/benchmark.json --weights experiments/X/models/net_g_latest.pth
    python -m despike_basicsr.evaluation.protocol assemble --results results/dpdd --rows despike=options/... tfp
    python -m despike_basicsr.evaluation.protocol snapshot --results results/dpdd --name X --options options/...yml
    python -m despike_basicsr.evaluation.protocol keep-front-end --results results/dpdd --weights experiments/...pth
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from despike_basicsr.training import campaign

#: Written into experiments/<name>/ by scripts/dpdd_protocol.sh before a training on the train LMDB without the
#: scoring holdout; weights in a folder without it were trained before (on all 60 pairs) and count for nothing here.
MARKER = 'trained_without_scoring_holdout'

#: A committed training state above this size is kept compact (half-precision weights, no optimiser moments).
STATE_LIMIT_MB = 30.0

#: Iterations of linear learning-rate warm-up after resuming from a compact state (Adam restarts without moments).
RESTART_WARMUP_ITER = 100

#: Where ``restore`` records the compact restarts of a training: ``experiments/<name>/restarts.json``.
RESTARTS_FILE = 'restarts.json'

#: Where a level keeps the trained front-end stages its cascades load (half precision): ``<results>/front_ends/``.
FRONT_ENDS_DIR = 'front_ends'

#: The earlier 4-image protocol's method names (results/dpdd/val4/benchmark.json) under this protocol's row names.
LEGACY_NAMES = {
    'tfp_gkmnet': 'gkmnet_tfp', 'tfp_nrknet': 'nrknet_tfp', 'tfi_gkmnet': 'gkmnet_tfi', 'tfi_nrknet': 'nrknet_tfi',
    'tfp_nrknet_fpn': 'nrknet_tfp_fpn',
}


def rows_dir(results: str) -> str:
    """``<results>/rows``: one JSON file per finished row."""
    return osp.join(results, 'rows')


def state_dir(results: str, name: str) -> str:
    """``<results>/state/<name>``: the committed state of an unfinished training."""
    return osp.join(results, 'state', name)


def training_seconds(times_md: str, row: str) -> Dict[str, Any]:
    """Sum of the wall and CPU seconds of every ``train`` line of ``row`` in a ``training_times.md`` table (every run
    of a training that took several sittings), and the precisions those runs trained in, in order.

    A run's precision is the ``(amp bf16)`` / ``(amp fp16)`` its options cell carries (``dpdd_protocol.sh --amp``),
    else ``fp32``.

    Returns:
        ``{'wall_s', 'cpu_s', 'precisions'}``: seconds ``None`` and no precisions where the table has no line.
    """
    wall = cpu = 0.0
    found = False
    precisions: List[str] = []
    if osp.isfile(times_md):
        with open(times_md) as handle:
            for line in handle:
                cells = [c.strip() for c in line.strip().strip('|').split('|')]
                if len(cells) >= 5 and cells[0] == row and cells[1] == 'train':
                    wall, cpu, found = wall + float(cells[3]), cpu + float(cells[4]), True
                    amp = re.search(r'\(amp (\w+)\)', cells[2])
                    precision = amp.group(1) if amp else 'fp32'
                    if precision not in precisions:
                        precisions.append(precision)
    return {'wall_s': wall if found else None, 'cpu_s': cpu if found else None, 'precisions': precisions}


def write_row(results: str, row: str, benchmark_json: str, method: Optional[str] = None,
              weights: Optional[str] = None, times_md: Optional[str] = None, times_row: Optional[str] = None) -> str:
    """Write ``<results>/rows/<row>.json`` from a benchmark report holding the row's scores.

    Args:
        results: The level's results folder.
        row: The row name.
        benchmark_json: A ``scripts/benchmark.py`` report (``benchmark.json``) that scored the row.
        method: The method's name in the report; default its only (or first) method.
        weights: The trained weights file (its size is recorded), if any.
        times_md: The level's ``training_times.md`` (default ``<results>/training_times.md``).
        times_row: The row's label in that table, where it is not ``row`` (a row trained again for its short-window
            scores: ``dpdd_protocol.sh --short-windows``).

    Returns:
        The path written.

    A method the report lists as unavailable (a network that refuses streams this short: ``benchmark.py`` records its
    message) gets a row file too, with ``unavailable`` and no scores, so that it is not tried again.

    Raises:
        ValueError: The report lacks the method, or the method could not be scored for another reason.
    """
    with open(benchmark_json) as handle:
        report = json.load(handle)
    methods = report.get('methods', [])
    entry = next((m for m in methods if method is None or m['name'] == method), None)
    if entry is None or not (entry.get('per_sample') or entry.get('unavailable')):
        raise ValueError(f'{benchmark_json} holds no scores of {method or "any method"}')
    record = {k: v for k, v in entry.items() if not k.startswith('_')}
    record.update({
        'row': row,
        'lmdb': report.get('lmdb'),
        'num_samples': report.get('num_samples'),
        'val_len': report.get('val_len'),
        'device_name': report.get('device_name'),
        'command': report.get('command'),
        'tiles_per_side': entry.get('tiles_per_side', report.get('tiles_per_side')),
        'weights_bytes': osp.getsize(weights) if weights and osp.isfile(weights) else None,
        'training': training_seconds(times_md or osp.join(results, 'training_times.md'), times_row or row),
        'restarts': restarts_of(weights),
    })
    os.makedirs(rows_dir(results), exist_ok=True)
    path = osp.join(rows_dir(results), f'{row}.json')
    tmp = path + '.tmp'
    with open(tmp, 'w') as handle:
        json.dump(record, handle, indent=1)
    os.replace(tmp, path)
    return path


def _half(params: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.half() if v.is_floating_point() else v for k, v in params.items()}


def _float(params: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.float() if v.is_floating_point() else v for k, v in params.items()}


def _front_end_weights(options: Optional[str], root: str) -> Optional[str]:
    """The ``front_end.weights`` path of a cascade's options (relative to ``root``), or None."""
    if not options:
        return None
    import yaml

    with open(osp.join(root, options)) as handle:
        front_end = (yaml.safe_load(handle) or {}).get('front_end') or {}
    return front_end.get('weights') if front_end.get('type') == 'learned' else None


def compact_state(state: Dict[str, Any], net: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The compact form of a BasicSR training state and its ``net_g_<iter>.pth``.

    Returns:
        ``(state, net)``: the state with every optimiser's moments dropped (its settings and parameter groups kept, so
        BasicSR's ``resume_training`` loads it into a fresh Adam) and ``restart: {optimizer, ema, warmup_iter,
        precision}``; the network's ``params`` (not the EMA, which restarts from them) in half precision.
    """
    if not isinstance(state, dict) or 'optimizers' not in state or 'iter' not in state:
        raise ValueError(f'not a BasicSR training state (no optimizers / iter): keys {sorted(state)[:8]}')
    small = {k: v for k, v in state.items() if k != 'optimizers'}
    small['optimizers'] = [{'state': {}, 'param_groups': o['param_groups']} for o in state['optimizers']]
    small['restart'] = {'optimizer': True, 'ema': True, 'warmup_iter': RESTART_WARMUP_ITER, 'precision': 'float16'}
    return small, {'params': _half(net['params'] if 'params' in net else net)}


def _save(obj: Any, path: str) -> None:
    """``checkpoint.atomic_torch_save`` into a folder made if missing."""
    from despike_basicsr.checkpoint import atomic_torch_save  # torch: only where it is needed

    os.makedirs(osp.dirname(path), exist_ok=True)
    atomic_torch_save(obj, path)


def front_end_copy(results: str, weights: str) -> str:
    """``<results>/front_ends/<experiment>.pth`` for a front end's ``experiments/<experiment>/models/*.pth`` (any
    other path: its file name)."""
    parts = osp.normpath(weights).split(os.sep)
    stem = parts[-3] if len(parts) >= 3 and parts[-2] == 'models' else osp.splitext(parts[-1])[0]
    return osp.join(results, FRONT_ENDS_DIR, f'{stem}.pth')


def keep_front_end(results: str, weights: str, root: str = '.') -> Tuple[str, bool]:
    """Keep a trained front end (``params_ema``, else ``params``) in half precision in ``<results>/front_ends/``.

    Returns:
        ``(path, written)``: an existing copy is never replaced (``written`` False).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
    """
    import torch

    target = osp.join(root, front_end_copy(results, weights))
    if osp.isfile(target):
        return target, False
    source = osp.join(root, weights)
    if not osp.isfile(source):
        raise FileNotFoundError(f'the front end {weights} is missing: train its stage first')
    loaded = torch.load(source, map_location='cpu', weights_only=True)
    key = next((k for k in ('params_ema', 'params') if k in loaded), None)
    _save({'params': _half(loaded[key] if key else loaded), 'source': weights}, target)
    return target, True


def restore_front_end(results: str, options: Optional[str], root: str = '.') -> Optional[str]:
    """Put the kept front end back where ``options`` (a cascade's) look for it, in single precision, if missing.

    Returns:
        The path written, or None (no learned front end, or its weights are there: never replaced).

    Raises:
        FileNotFoundError: Neither the weights nor a kept copy exist.
    """
    import torch

    front = _front_end_weights(options, root)
    if front is None or osp.isfile(osp.join(root, front)):
        return None
    kept = osp.join(root, front_end_copy(results, front))
    if not osp.isfile(kept):
        raise FileNotFoundError(f'the front end {front} named by {options} is missing and {kept} does not hold it: '
                                'train its stage first')
    _save({'params': _float(torch.load(kept, map_location='cpu', weights_only=True)['params'])}, osp.join(root, front))
    return front


def snapshot_state(results: str, name: str, root: str = '.', limit_mb: float = STATE_LIMIT_MB,
                   options: Optional[str] = None, settled_s: float = 0.0) -> Tuple[Optional[int], str]:
    """Copy the newest state and weights of ``experiments/<name>`` to ``<results>/state/<name>`` (to commit).

    The pair is copied as it is when it fits ``limit_mb``, else in the compact form (:func:`compact_state`); the
    frozen front end of a cascade whose ``options`` name one is kept too (:func:`keep_front_end`).

    Args:
        settled_s: for a snapshot taken while the training runs (``dpdd_protocol.sh --snapshot-every``): a pair
            written less than this many seconds ago may still be being written, and a pair already in
            ``<results>/state/<name>`` is not copied again; both leave everything as it is.

    Returns:
        ``(iteration or None, message)``; a state over ``limit_mb`` even when compact is not kept (the message says
        so: the training then resumes only where its experiments/ folder is).
    """
    import torch

    states = osp.join(root, 'experiments', name, 'training_states')
    newest = campaign.newest_state(states)
    if newest is None:
        return None, f'{name}: no training state yet'
    iteration, state_path = newest
    net_path = osp.join(root, 'experiments', name, 'models', f'net_g_{iteration}.pth')
    target = osp.join(root, state_dir(results, name))
    keep = (f'{iteration}.state', f'net_g_{iteration}.pth')
    if settled_s > 0:
        if all(osp.isfile(osp.join(target, f)) for f in keep):
            return iteration, f'{name}: iteration {iteration} is already in {target}'
        newest_write = max(osp.getmtime(p) for p in (state_path, net_path) if osp.exists(p))
        if time.time() - newest_write < settled_s:
            return None, f'{name}: iteration {iteration} was written under {settled_s:.0f} s ago: left for later'
    size_mb = (osp.getsize(state_path) + osp.getsize(net_path)) / 2**20
    if size_mb <= limit_mb:
        campaign._copy_pair(iteration, state_path, net_path, target, target)
        how = f'{size_mb:.1f} MB'
    else:
        try:
            small_state, small_net = compact_state(torch.load(state_path, map_location='cpu', weights_only=False),
                                                   torch.load(net_path, map_location='cpu', weights_only=True))
        except ValueError as err:
            raise ValueError(f'{state_path}: {err}') from err
        front = _front_end_weights(options, root)
        if front is not None:
            keep_front_end(results, front, root)
        staging = osp.join(target, '.compact')
        shutil.rmtree(staging, ignore_errors=True)
        _save(small_state, osp.join(staging, keep[0]))
        _save(small_net, osp.join(staging, keep[1]))
        small_mb = sum(osp.getsize(osp.join(staging, f)) for f in keep) / 2**20
        if small_mb > limit_mb:
            shutil.rmtree(staging)
            return None, (f'{name}: iteration {iteration} state is {size_mb:.0f} MB, {small_mb:.0f} MB compact, over '
                          f'{limit_mb:.0f} MB: not committed (it resumes only from experiments/)')
        for f in keep:
            os.replace(osp.join(staging, f), osp.join(target, f))
        shutil.rmtree(staging)
        how = (f'compact: {small_mb:.1f} MB of {size_mb:.0f} MB; half-precision weights, optimiser moments dropped'
               + (f'; front end in {front_end_copy(results, front)}' if front else ''))
    for old in glob.glob(osp.join(target, '*')):
        if osp.basename(old) not in keep:
            os.remove(old)
    return iteration, f'{name}: iteration {iteration} saved to {target} ({how})'


def drop_state(results: str, name: str, root: str = '.') -> Optional[str]:
    """Remove ``<results>/state/<name>`` once its row is scored (a finished row is never trained again); returns the
    folder removed, or ``None`` when there was none. Its front end, if any, stays in ``<results>/front_ends``."""
    folder = osp.join(root, state_dir(results, name))
    if not osp.isdir(folder):
        return None
    shutil.rmtree(folder)
    return folder


def restore_state(results: str, name: str, root: str = '.', options: Optional[str] = None) -> Optional[int]:
    """Put ``<results>/state/<name>`` where ``--auto_resume`` finds it unless experiments/ has a state as new.

    A compact state is written back in single precision; its restart is appended to
    ``experiments/<name>/restarts.json``. First, a cascade's missing front end is put back (:func:`restore_front_end`).
    """
    import torch

    restore_front_end(results, options, root)
    committed = campaign.newest_state(osp.join(root, state_dir(results, name)))
    if committed is None:
        return None
    iteration, state_path = committed
    states = osp.join(root, 'experiments', name, 'training_states')
    models = osp.join(root, 'experiments', name, 'models')
    existing = campaign.newest_state(states)
    if existing is not None and existing[0] >= iteration:
        return None
    net_path = osp.join(osp.dirname(state_path), f'net_g_{iteration}.pth')
    state = torch.load(state_path, map_location='cpu', weights_only=False)
    restart = state.get('restart')
    if not restart:
        campaign._copy_pair(iteration, state_path, net_path, states, models)
        return iteration
    net = torch.load(net_path, map_location='cpu', weights_only=True)
    _save({'params': _float(net['params'])}, osp.join(models, f'net_g_{iteration}.pth'))
    _save(state, osp.join(states, f'{iteration}.state'))
    log = osp.join(root, 'experiments', name, RESTARTS_FILE)
    done = []
    if osp.isfile(log):
        with open(log) as handle:
            done = json.load(handle)
    done.append({'iteration': iteration, **restart})
    with open(log, 'w') as handle:
        json.dump(done, handle, indent=1)
    return iteration


def restarts_of(weights: Optional[str]) -> List[Dict[str, Any]]:
    """The compact restarts recorded beside ``experiments/<name>/models/<weights>`` (empty when none)."""
    if not weights:
        return []
    path = osp.join(osp.dirname(osp.dirname(weights)), RESTARTS_FILE)
    if not osp.isfile(path):
        return []
    with open(path) as handle:
        return json.load(handle)


def restart_note(restarts: Sequence[Dict[str, Any]]) -> str:
    """``resumed from a half-precision state at iteration 600 (Adam and EMA restarted, 100-iteration warm-up)``, or
    '' when the training never restarted."""
    if not restarts:
        return ''
    at = ', '.join(str(r['iteration']) for r in restarts)
    return (f'resumed from a half-precision state at iteration {at} (Adam and EMA restarted, '
            f'{restarts[-1].get("warmup_iter")}-iteration warm-up)')


def _options(path: str) -> Tuple[str, Optional[int]]:
    import yaml

    with open(path) as handle:
        opt = yaml.safe_load(handle)
    return opt['name'], (opt.get('train') or {}).get('total_iter')


def row_status(results: str, row: str, options: Optional[str], root: str = '.',
               full_results: Optional[str] = None) -> Dict[str, Any]:
    """``{'status': 'scored' | 'still training' | 'trained, not scored' | 'not started' | 'not scored', ...}``.

    ``full_results``: for a short-window table (``<level>/short_<frames>``), the level's folder: a row without a
    short-window file is ``not scored`` with the reason (its full-length row scored without it, or not yet).
    """
    path = osp.join(root, rows_dir(results), f'{row}.json')
    if osp.isfile(path):
        with open(path) as handle:
            record = json.load(handle)
        if record.get('unavailable'):
            return {'status': 'not scored', 'reason': record['unavailable']}
        return {'status': 'scored', 'record': record}
    if full_results is not None:
        if osp.isfile(osp.join(root, rows_dir(full_results), f'{row}.json')):
            return {'status': 'not scored', 'reason': 'scored at full length before stop 43, weights not kept '
                    '(--short-windows trains it again)'}
        return {'status': 'not scored', 'reason': 'not trained yet'}
    if not options:
        return {'status': 'not scored'}
    name, total = _options(osp.join(root, options))
    ours = osp.isfile(osp.join(root, 'experiments', name, MARKER))
    if ours and osp.isfile(osp.join(root, 'experiments', name, 'models', 'net_g_latest.pth')):
        return {'status': 'trained, not scored', 'experiment': name}
    found = [campaign.newest_state(osp.join(root, state_dir(results, name)))]
    if ours:
        found.append(campaign.newest_state(osp.join(root, 'experiments', name, 'training_states')))
    iterations = [f[0] for f in found if f is not None]
    if iterations:
        compact = found[0] is not None and _is_compact(found[0][1])  # the committed state
        return {'status': 'still training', 'experiment': name, 'iteration': max(iterations), 'total_iter': total,
                'compact_state': compact}
    return {'status': 'not started', 'experiment': name, 'total_iter': total}


def _is_compact(state_path: str) -> bool:
    """Whether a committed training state is the compact form (it carries ``restart``)."""
    import torch

    try:
        state = torch.load(state_path, map_location='cpu', weights_only=False)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(f'{state_path} is not a readable training state ({type(err).__name__}: {err}); restore '
                         'it from git or delete the folder to train that row again') from err
    return isinstance(state, dict) and bool(state.get('restart'))


def reading(row: str, stats: Dict[str, Any], reference: str) -> str:
    """One sentence: ahead of, behind or within noise of the reference, with both intervals."""
    t_low, t_high = stats['t_interval']
    b_low, b_high = stats['bootstrap_interval']
    numbers = (f'{stats["mean"]:+.2f} dB over {stats["images"]} images (t-interval [{t_low:+.2f}, {t_high:+.2f}], '
               f'tile bootstrap [{b_low:+.2f}, {b_high:+.2f}])')
    if stats['verdict'] == 'higher':
        return f'{row} is ahead of {reference}: {numbers}, both intervals above 0.'
    if stats['verdict'] == 'lower':
        return f'{row} is behind {reference}: {numbers}, both intervals below 0.'
    return f'{row} is within noise of {reference}: {numbers}, an interval holds 0.'


def _legacy(path: Optional[str]) -> Dict[str, Dict[str, Any]]:
    if not path or not osp.isfile(path):
        return {}
    with open(path) as handle:
        report = json.load(handle)
    return {m['name']: m for m in report.get('methods', []) if m.get('psnr') is not None}


def assemble(results: str, rows: Sequence[Tuple[str, Optional[str]]], reference: str = 'despike',
             legacy: Optional[str] = None, root: str = '.', seed: int = 0,
             full_results: Optional[str] = None) -> Dict[str, Any]:
    """The table from the row files: every row's status, scores, cost and paired difference to ``reference``.

    Args:
        results: The level's results folder (``rows/`` and ``state/`` below it).
        rows: ``(row, options file or None)`` in table order; ``None`` for rows that need no training.
        reference: The row every other one is compared with, image by image and tile by tile.
        legacy: An earlier report (the 4-image protocol) whose scores are listed beside, marked as such.
        root: Repository root.
        seed: Bootstrap seed.
        full_results: For a short-window table: the level's folder (:func:`row_status`).

    Returns:
        ``{'results', 'reference', 'scoring_set', 'rows': [...]}``.
    """
    from despike_basicsr.evaluation.benchmarking import paired_difference_stats  # torch: only where it is needed

    statuses = [(row, row_status(results, row, options, root, full_results)) for row, options in rows]
    ref = next((s['record'] for r, s in statuses if r == reference and s['status'] == 'scored'), None)
    old = _legacy(legacy and osp.join(root, legacy))
    table = []
    times_md = osp.join(root, results, 'training_times.md')
    for row, status in statuses:
        entry = {'row': row, **{k: v for k, v in status.items() if k != 'record'}}
        record = status.get('record')
        if status['status'] == 'still training':
            entry['training'] = training_seconds(times_md, row)  # so far
        if record:
            entry.update({k: record.get(k) for k in ('psnr', 'psnr_fit', 'ssim', 'lpips', 'params', 'weights_bytes',
                                                     'training', 'num_samples', 'latency_ms_per_frame', 'restarts',
                                                     'val_len')})
            entry['per_image'] = {k: v['psnr'] for k, v in record['per_sample'].items()}
            if ref is not None and row != reference:
                keys = list(ref['per_sample'])
                if sorted(keys) == sorted(record['per_sample']):
                    stats = paired_difference_stats(
                        {k: record['per_sample'][k]['tile_psnr'] for k in keys},
                        {k: ref['per_sample'][k]['tile_psnr'] for k in keys},
                        {k: record['per_sample'][k]['psnr'] for k in keys},
                        {k: ref['per_sample'][k]['psnr'] for k in keys}, seed=seed)
                    entry['difference'] = stats
                    entry['reading'] = reading(row, stats, reference)
                else:
                    entry['reading'] = f'{row} was scored on other images than {reference}: no paired difference.'
        previous = old.get(LEGACY_NAMES.get(row, row)) or old.get(row)
        if previous is not None:
            entry['earlier_4_images'] = {'psnr': previous['psnr'], 'ssim': previous['ssim'],
                                         'images': len(previous.get('per_sample', {}))}
        table.append(entry)
    return {'results': results, 'reference': reference, 'legacy': legacy, 'full_results': full_results,
            'scoring_set': 'the 4 DPDD val pairs and the 12 train pairs of preparation.scoring_holdout (every 5th)',
            'rows': table}


def _fmt(value: Any, digits: int = 2) -> str:
    return f'{value:.{digits}f}' if isinstance(value, (int, float)) and value is not None else '–'


def markdown(report: Dict[str, Any]) -> str:
    """The assembled table as markdown: scores, cost, status and each row's reading."""
    lines = [f'# DPDD protocol table ({report["results"]}), assembled from {report["results"]}/rows/', '',
             f'Scored on {report["scoring_set"]}; no protocol row trains on them. Reference for the paired '
             f'differences: `{report["reference"]}`. The "4 images" columns are the earlier protocol '
             f'(`{report.get("legacy") or "none"}`: the 4 val pairs only, trained on all 60 train pairs): not '
             'comparable with the 16-image columns.', '',
             '| row | status | PSNR (dB) | SSIM | LPIPS | PSNR fit | parameters | weights (MB) | train wall / CPU (s) '
             '| Δ PSNR to reference | 4 images: PSNR / SSIM |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for e in report['rows']:
        status = e['status']
        if status == 'still training':
            compact = '; committed in half precision' if e.get('compact_state') else ''
            status = f'still training ({e["iteration"]} / {e.get("total_iter") or "?"} iterations{compact})'
        elif status == 'scored':
            status = f'scored ({e.get("num_samples")} images' + (
                f', {e["val_len"]}-step streams)' if e.get('val_len') and report.get('full_results') else ')')
        elif e.get('reason'):
            status = f'not scored: {e["reason"]}'
        training = e.get('training') or {}
        cost = (f'{_fmt(training.get("wall_s"), 0)} / {_fmt(training.get("cpu_s"), 0)}'
                if training.get('wall_s') is not None else '–')
        if set(training.get('precisions') or ['fp32']) != {'fp32'}:  # trained (partly) under autocast
            cost += f' ({" then ".join(training["precisions"])})'
        size = _fmt(e['weights_bytes'] / 2**20, 1) if e.get('weights_bytes') else '–'
        diff = e.get('difference')
        delta = f'{diff["mean"]:+.2f} ({diff["verdict"]})' if diff else '–'
        old = e.get('earlier_4_images')
        earlier = f'{old["psnr"]:.2f} / {old["ssim"]:.3f}' if old else '–'
        lpips = e.get('lpips') if isinstance(e.get('lpips'), (int, float)) else None
        lines.append(f'| {e["row"]} | {status} | {_fmt(e.get("psnr"))} | {_fmt(e.get("ssim"), 3)} | '
                     f'{_fmt(lpips, 3)} | {_fmt(e.get("psnr_fit"))} | {e.get("params") if "params" in e else "–"} | '
                     f'{size} | {cost} | {delta} | {earlier} |')
    readings = [e['reading'] + (f' Trained {restart_note(e["restarts"])}.' if e.get('restarts') else '')
                for e in report['rows'] if e.get('reading')]
    if readings:
        lines += ['', '## Readings', ''] + [f'- {r}' for r in readings]
    return '\n'.join(lines) + '\n'


def write_table(report: Dict[str, Any], out_dir: str, stem: str = 'benchmark') -> List[str]:
    """Write ``OUT/STEM.json`` and ``OUT/STEM.md``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [osp.join(out_dir, f'{stem}.json'), osp.join(out_dir, f'{stem}.md')]
    with open(paths[0], 'w') as handle:
        json.dump(report, handle, indent=1)
    with open(paths[1], 'w') as handle:
        handle.write(markdown(report))
    return paths


def _row_pairs(items: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    return [(item.split('=', 1)[0], item.split('=', 1)[1] if '=' in item else None) for item in items]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``write-row``, ``assemble``, ``snapshot``, ``restore``, ``drop-state``, ``keep-front-end``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='action', required=True)
    row = sub.add_parser('write-row', help='write <results>/rows/<row>.json from a benchmark report')
    row.add_argument('--results', required=True)
    row.add_argument('--row', required=True)
    row.add_argument('--benchmark', required=True, help='benchmark.json that scored the row')
    row.add_argument('--method', default=None, help='its name there (default: the only method)')
    row.add_argument('--weights', default=None)
    row.add_argument('--times', default=None, help="training_times.md (default <results>/training_times.md)")
    row.add_argument('--times-row', default=None, help="the row's label there (default: --row)")
    table = sub.add_parser('assemble', help='assemble <results>/<name>.{json,md} from the row files')
    table.add_argument('--results', required=True)
    table.add_argument('--rows', nargs='+', required=True, help='ROW=OPTIONS.yml, or ROW for rows without training')
    table.add_argument('--reference', default='despike')
    table.add_argument('--legacy', default=None, help='earlier report listed beside (marked as such)')
    table.add_argument('--name', default='benchmark')
    table.add_argument('--full-results', default=None,
                       help="a short-window table's level folder: says why a row has no short-window scores")
    for action in ('snapshot', 'restore', 'drop-state'):
        state = sub.add_parser(action, help=f'{action} the small state of an unfinished training')
        state.add_argument('--results', required=True)
        state.add_argument('--name', required=True, help="the experiment name (the options file's `name`)")
        state.add_argument('--options', default=None, help="the training's options (a cascade's front end is kept)")
        if action == 'snapshot':
            state.add_argument('--settled', type=float, default=0.0, metavar='SECONDS',
                               help='while the training runs: skip a state written less than SECONDS ago or already '
                               'saved')
    front = sub.add_parser('keep-front-end', help='keep a trained front-end stage in <results>/front_ends/')
    front.add_argument('--results', required=True)
    front.add_argument('--weights', required=True, help='experiments/<stage>/models/net_g_latest.pth')
    args = parser.parse_args(argv)
    if args.action == 'write-row':
        path = write_row(args.results, args.row, args.benchmark, args.method, args.weights, args.times, args.times_row)
        print(f'[protocol] wrote {path}')
    elif args.action == 'assemble':
        report = assemble(args.results, _row_pairs(args.rows), args.reference, args.legacy,
                          full_results=args.full_results)
        print('[protocol] wrote ' + ', '.join(write_table(report, args.results, args.name)))
    elif args.action == 'snapshot':
        print(f'[protocol] {snapshot_state(args.results, args.name, options=args.options, settled_s=args.settled)[1]}')
    elif args.action == 'drop-state':
        dropped = drop_state(args.results, args.name)
        print(f'[protocol] {args.name}: ' + (f'{dropped} removed (the row is scored)' if dropped else 'no state'))
    elif args.action == 'keep-front-end':
        path, written = keep_front_end(args.results, args.weights)
        print(f'[protocol] {args.weights}: ' + (f'kept in {path}' if written else f'{path} already holds it'))
    else:
        iteration = restore_state(args.results, args.name, options=args.options)
        print(f'[protocol] {args.name}: ' + (f'restored iteration {iteration}' if iteration else 'nothing restored'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
