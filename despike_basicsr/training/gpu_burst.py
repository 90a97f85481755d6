"""A fixed-wall-time training burst on a borrowed GPU: continue a campaign from its best weights at GPU batch size.

    python -m despike_basicsr.training.gpu_burst --out /tmp/burst --minutes 7   # scripts/gpu_train_burst.sh wraps this

The campaign's recipe (``--opt``, default options/train_despike_ssim_heavy_harm.yml, the shipped do-no-harm phase 12)
runs through BasicSR's own trainer with a larger batch, as many data workers as the machine's cores allow (the spike
simulation is CPU work), no validation, a constant learning rate after a short warm-up and a checkpoint every
``--save-every`` iterations. It starts from the campaign's committed state
(``results/training/state/<name>/net_g_*.pth``, EMA weights), else from the weights the options name; with
``--widen k``, from a network k times wider that computes the same function (``<out>/start_wide<k>.pth``). After
``--minutes`` the trainer is stopped, and the newest checkpoint is copied to ``<out>/net_g_burst.pth`` with
``<out>/burst.json`` (iterations, batch, device, seconds) and the log. Evaluate it on the CPU with ``python
scripts/training_curve.py``'s scorer or ``scripts/evaluate_heldout.py --weights``, and ship it only if it is better.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time
from typing import List, Optional, Tuple

import yaml

from despike_basicsr.training.campaign import STATE_ROOT, newest_numbered, newest_state

#: Cores the burst leaves to the trainer process itself.
_RESERVED_CORES = 2


def start_weights(opt: dict, root: str = '.') -> Tuple[str, str]:
    """``(path, param_key)`` the burst starts from: the campaign's committed state, else the options' weights."""
    committed = newest_state(osp.join(root, STATE_ROOT, opt['name']))
    if committed is not None:
        net = osp.normpath(osp.join(osp.dirname(committed[1]), f'net_g_{committed[0]}.pth'))
        if osp.isfile(net):
            return net, 'params_ema'
    path = (opt.get('path') or {}).get('pretrain_network_g')
    if not path or not osp.isfile(path):
        raise FileNotFoundError(f'no committed state in {osp.join(STATE_ROOT, opt["name"])} and the options name no '
                                f'existing pretrain_network_g ({path!r})')
    return path, (opt.get('path') or {}).get('param_key_g', 'params')


def burst_overrides(opt: dict, weights: str, param_key: str, batch: int, workers: int, use_gpu: bool,
                    save_every: int, lr: float) -> List[str]:
    """BasicSR ``--force_yml`` entries that turn the campaign's recipe into a burst."""
    return [
        f'name={opt["name"]}_burst',
        f'num_gpu={1 if use_gpu else 0}',
        f'datasets:train:batch_size_per_gpu={batch}',
        f'datasets:train:num_worker_per_gpu={workers}',
        f'path:pretrain_network_g={weights}',
        f'path:param_key_g={param_key}',
        'path:resume_state=~',
        f'train:optim_g:lr={lr}',
        'train:scheduler:periods=[1000000]',
        'train:total_iter=1000000',
        'train:warmup_iter=20',
        'val:val_freq=1000000000',
        f'logger:save_checkpoint_freq={save_every}',
        'logger:print_freq=10',
    ]


def widened_start(weights: str, param_key: str, factor: int, out: str) -> Tuple[str, str, List[str]]:
    """The start weights made ``factor`` times wider (:mod:`despike_basicsr.training.widen`), written once to ``out``.

    Returns:
        ``(path, param_key, overrides)``: the wide checkpoint, its key and the ``network_g:num_feat`` override.
    """
    from despike_basicsr.training.widen import widen_checkpoint  # noqa: PLC0415 (loads torch and the archs)

    path = osp.join(out, f'start_wide{factor}.pth')
    if osp.isfile(path):  # deterministic given the seed: a rerun into the same folder reuses it
        import torch
        wide_opt = torch.load(path, map_location='cpu', weights_only=True)['network_g']
    else:
        wide_opt = widen_checkpoint(weights, path, factor, param_key=param_key)
    return path, 'params_ema', [f'network_g:num_feat={wide_opt["num_feat"]}']


def newest_checkpoint(models: str) -> Optional[Tuple[int, str]]:
    """``(iteration, path)`` of the newest ``net_g_<iter>.pth`` in ``models``."""
    return newest_numbered(models, r'net_g_(\d+)\.pth')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--opt', default='options/train_despike_ssim_heavy_harm.yml',
                        help='the campaign\'s options file')
    parser.add_argument('--out', required=True, help='folder for net_g_burst.pth, burst.json and the log')
    parser.add_argument('--minutes', type=float, default=7.0, help='wall time of the training (at most 8)')
    parser.add_argument('--batch', type=int, help='batch size (default 32 on a GPU, 2 on a CPU)')
    parser.add_argument('--workers', type=int, help='data workers (default: cores - 2)')
    parser.add_argument('--save-every', type=int, default=100, help='checkpoint every N iterations')
    parser.add_argument('--lr', type=float, default=2e-4, help='constant learning rate after the warm-up')
    parser.add_argument('--cpu', action='store_true', help='run on the CPU (a smoke test of the burst itself)')
    parser.add_argument('--widen', type=int, default=1,
                        help='train a network this many times wider that starts as the start weights (default 1)')
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 8:
        parser.error(f'--minutes must lie in (0, 8], got {args.minutes}')
    import torch
    use_gpu = torch.cuda.is_available() and not args.cpu
    if not use_gpu and not args.cpu:
        parser.error('no CUDA device: pass --cpu to run the burst on the CPU anyway')
    with open(args.opt, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    weights, param_key = start_weights(opt)
    os.makedirs(args.out, exist_ok=True)
    width_overrides: List[str] = []
    if args.widen > 1:
        weights, param_key, width_overrides = widened_start(weights, param_key, args.widen, args.out)
    batch = args.batch or (32 if use_gpu else 2)
    workers = args.workers if args.workers is not None else max((os.cpu_count() or 1) - _RESERVED_CORES, 1)
    overrides = burst_overrides(opt, weights, param_key, batch, workers, use_gpu, args.save_every,
                                args.lr) + width_overrides
    experiment = osp.join('experiments', f'{opt["name"]}_burst')
    if osp.isdir(experiment):
        shutil.rmtree(experiment)  # a burst always starts from the committed weights, never from an older burst
    log_path = osp.join(args.out, 'burst.log')
    command = [sys.executable, '-m', 'despike_basicsr.train', '-opt', args.opt, '--force_yml'] + overrides
    started = time.time()
    with open(log_path, 'w', encoding='utf-8') as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=args.minutes * 60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    seconds = time.time() - started
    newest = newest_checkpoint(osp.join(experiment, 'models'))
    if newest is None:
        print(f'[burst] no checkpoint was written in {seconds:.0f} s; see {log_path}', file=sys.stderr)
        return 1
    iteration, path = newest
    shutil.copyfile(path, osp.join(args.out, 'net_g_burst.pth'))
    summary = {'iterations': iteration, 'batch': batch, 'workers': workers, 'seconds': round(seconds, 1),
               'device': torch.cuda.get_device_name(0) if use_gpu else 'cpu', 'start_weights': weights,
               'options': args.opt, 'overrides': overrides}
    with open(osp.join(args.out, 'burst.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=1)
    print(f'[burst] {iteration} iterations of batch {batch} in {seconds:.0f} s on {summary["device"]}; '
          f'{osp.join(args.out, "net_g_burst.pth")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
