"""GPU readiness check: paper-setting training with and without AMP, inference latency, simulator throughput.

One table from one run, for a CUDA machine (``scripts/gpu_check.py`` is the command line over :func:`main`;
``scripts/gpu_check.sh`` wraps it):

- training: the network and losses of ``options/train_despike_dpdd.yml`` (DeSpikeNet at paper width, hierarchical MSE
  + FFT + LPIPS with a randomly initialised AlexNet, since the weights cannot be downloaded offline; EMA, gradient
  clipping, batch 2, 256² crops, ``temporal_len`` [192, 256]) on a small spike LMDB simulated here from procedural
  scenes (no DPDD needed): iterations/s and peak memory with ``train.amp`` off, bf16 and fp16 (``--compile``: also
  ``train.compile``). A setting that fails reports its error in the table instead of stopping the check;
- inference: DeSpikeNet latency (median) and peak memory at 250×400 and 1000×1000 from 192 steps, float32 and
  bf16 autocast;
- simulator: ``spike.camera.simulate`` on the device, pixel-steps/s (uint8 and packed output), against the numpy path
  on this machine's CPU.

``--device cpu --dry-run`` runs every piece at toy sizes (seconds) so the script is tested without a GPU.

Example:
    python scripts/gpu_check.py --json gpu_check.json          # CUDA
    python scripts/gpu_check.py --device cpu --dry-run         # CPU, toy sizes
"""
import argparse
import copy
import json
import os.path as osp
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

import despike_basicsr
from despike_basicsr.data import preparation as prep
from despike_basicsr.data.scenes import generate_scene
from despike_basicsr.device import synchronize
from despike_basicsr.options_file import load_options_file, read_network_options
from despike_basicsr.training.profiling import cuda_peak, make_stream
from despike_basicsr.inference.network import REPO_ROOT, build_network_from_options
from despike_basicsr.spike.camera import simulate

despike_basicsr.register()  # compat first, then the registries

#: The paper's training options (in the repository checkout).
TRAIN_OPT = osp.join(REPO_ROOT, 'options', 'train_despike_dpdd.yml')
#: (name, train.amp, train.compile) of the training rows.
TRAIN_SETTINGS = (('fp32', False, False), ('amp bf16', 'bf16', False), ('amp fp16', 'fp16', False))


class Sizes:
    """What is measured: the full check, or toy sizes for a dry run."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.steps = 256  # the paper's temporal_len max; the largest window is 192
        if dry_run:
            self.scene, self.num_scenes, self.crop, self.batch = 40, 2, 32, 1
            self.inference = [(24, 40), (40, 40)]
            self.simulator = (32, 48, 256)
        else:
            self.scene, self.num_scenes, self.crop, self.batch = 320, 8, 256, 2
            self.inference = [(250, 400), (1000, 1000)]
            self.simulator = (250, 400, 2048)


def first_line(error: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters of it), for the table."""
    text = (str(error).strip().splitlines() or [''])[0]
    return f'{type(error).__name__}: {text[:limit]}'


def reset_peak(device: torch.device) -> None:
    """Empty the CUDA cache and restart peak-memory counting (nothing on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    """Peak CUDA memory allocated since :func:`reset_peak`, in GiB; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else None


# ----------------------------------------------------------------------------------------------------------------------
# Training


def make_lmdb(folder: str, sizes: Sizes) -> str:
    """A small spike LMDB (procedural scenes, depth defocus, the sensor's FPN) in ``folder``."""
    specs = [
        prep.SampleSpec(
            f's{i}',
            loader=lambda i=i: (lambda scene: (scene[0], None, scene[1]))
            (generate_scene(sizes.scene, sizes.scene, 100 + i))) for i in range(sizes.num_scenes)
    ]
    config = prep.SimulationConfig(mode='depth', steps=sizes.steps, seed=1)
    return prep.prepare_lmdb(specs, osp.join(folder, 'gpu_check.lmdb'), config, progress=False)


def training_options(lmdb_path: str, sizes: Sizes, device: torch.device, work: str, amp: Any,
                     compile_net: bool) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The paper options with this check's data and device: (model options, train dataset options)."""
    opt = load_options_file(TRAIN_OPT)
    dataset = dict(opt['datasets']['train'], dataroot=lmdb_path, gt_size=sizes.crop, batch_size_per_gpu=sizes.batch)
    train = copy.deepcopy(opt['train'])
    if 'lpips_opt' in train:
        train['lpips_opt']['pretrained'] = False  # no downloads here; the cost does not depend on the weights
    train.update(amp=amp, compile=compile_net)
    model_opt = {
        'name': 'gpu_check',
        'model_type': opt['model_type'],
        'scale': 1,
        'num_gpu': 1 if device.type == 'cuda' else 0,
        'is_train': True,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'manual_seed': 0,
        'network_g': opt['network_g'],
        'train': train,
        'path': {
            'pretrain_network_g': None,
            'strict_load_g': True,
            'resume_state': None,
            'experiments_root': work,
            'models': osp.join(work, 'models'),
            'training_states': osp.join(work, 'states'),
            'log': work,
            'visualization': osp.join(work, 'visualization')
        },
    }
    return model_opt, dataset


def endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def measure_training(lmdb_path: str, sizes: Sizes, device: torch.device, work: str, amp: Any, compile_net: bool,
                     warmup: int, iters: int, workers: int) -> Dict[str, Any]:
    """Iterations/s (after ``warmup`` iterations) and peak memory of the paper setting with one precision."""
    from basicsr.models import build_model
    from torch.utils.data import DataLoader

    from despike_basicsr.data.spike_lmdb_dataset import SpikeLMDBDataset
    model_opt, dataset_opt = training_options(lmdb_path, sizes, device, work, amp, compile_net)
    torch.manual_seed(0)
    random.seed(0)  # the same crops and windows for every setting
    model = build_model(model_opt)
    dataset = SpikeLMDBDataset(dataset_opt)
    loader = DataLoader(
        dataset,
        batch_size=sizes.batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == 'cuda',
        persistent_workers=workers > 0)
    batches = endless(loader)
    reset_peak(device)
    for it in range(1, warmup + 1):
        model.update_learning_rate(it)
        model.feed_data(next(batches))
        model.optimize_parameters(it)
    synchronize(device)
    data_time, start = 0.0, time.perf_counter()
    for it in range(warmup + 1, warmup + iters + 1):
        fetched = time.perf_counter()
        batch = next(batches)
        data_time += time.perf_counter() - fetched
        model.update_learning_rate(it)
        model.feed_data(batch)
        model.optimize_parameters(it)
    synchronize(device)
    elapsed = time.perf_counter() - start
    losses = model.get_current_log()
    return {
        'it_per_s': iters / elapsed,
        'data_wait_fraction': data_time / elapsed,
        'peak_gib': peak_gib(device),
        'loss': float(sum(losses.values())),
        'finite': all(np.isfinite(v) for v in losses.values()),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Inference


def measure_inference(sizes: Sizes, device: torch.device, warmup: int, repeats: int) -> List[Dict[str, Any]]:
    """DeSpikeNet (paper width) latency and peak memory at each size, float32 and bf16 autocast."""
    torch.manual_seed(0)
    net = build_network_from_options(read_network_options(TRAIN_OPT), TRAIN_OPT).to(device).eval()
    rows = []
    for height, width in sizes.inference:
        spikes = make_stream(height, width, 192, device)
        for precision in ('fp32', 'bf16'):

            def run(stream: torch.Tensor, precision: str = precision) -> torch.Tensor:
                if precision == 'fp32':
                    return net(stream)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                    return net(stream)

            row = {'size': f'{height}x{width}', 'precision': precision}
            try:
                with torch.inference_mode():
                    for _ in range(warmup):
                        run(spikes)
                    times = []
                    for _ in range(repeats):
                        synchronize(device)
                        start = time.perf_counter()
                        run(spikes)
                        synchronize(device)
                        times.append(time.perf_counter() - start)
                row['latency_ms'] = 1000 * statistics.median(times)
                if device.type == 'cuda':
                    reset_peak(device)
                    row['peak_gib'] = cuda_peak(run, spikes, device) / 2**30
            except Exception as err:  # e.g. out of memory, an op without bf16 support: report, go on
                row['error'] = first_line(err)
            rows.append(row)
        del spikes
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Simulator


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn`` after one untimed call, in seconds."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def measure_simulator(sizes: Sizes, device: torch.device, repeats: int) -> List[Dict[str, Any]]:
    """Static noise-free scene: pixel-steps/s of the torch path on ``device`` and of the numpy path on the CPU."""
    height, width, steps = sizes.simulator
    image = np.random.default_rng(0).random((height, width), dtype=np.float32)
    tensor = torch.from_numpy(image).to(device)
    pixel_steps = height * width * steps
    rows = []
    for label, kwargs in (('uint8', {}), ('packed', {'packed': True})):
        cpu = best_time(lambda: simulate(image, steps, seed=1, **kwargs), torch.device('cpu'), repeats)
        ours = best_time(lambda: simulate(tensor, steps, seed=1, **kwargs), device, repeats)
        rows.append({
            'output': label,
            'device_px_steps_per_s': pixel_steps / ours,
            'numpy_cpu_px_steps_per_s': pixel_steps / cpu,
            'ratio': cpu / ours,
            'shape': f'{height}x{width}x{steps}'
        })
    return rows


# ----------------------------------------------------------------------------------------------------------------------


def print_table(result: Dict[str, Any]) -> None:
    """Everything as one table: section, what, figure, memory, note."""
    lines = [('section', 'setting', 'figure', 'peak GiB', 'note')]

    def gib(value: Optional[float]) -> str:
        return '-' if value is None else f'{value:.2f}'

    reference = next((r for r in result['training'] if r['setting'] == 'fp32' and 'it_per_s' in r), None)
    for row in result['training']:
        if 'error' in row:
            lines.append(('train', row['setting'], 'failed', '-', row['error']))
            continue
        ratio = ''
        if reference is not None and row is not reference:
            ratio = f', x{row["it_per_s"] / reference["it_per_s"]:.2f} vs fp32'
        finite = '' if row['finite'] else ', NON-FINITE LOSS'
        lines.append(('train', row['setting'], f'{row["it_per_s"]:.2f} it/s', gib(row['peak_gib']),
                      f'loss {row["loss"]:.4f}, data wait {100 * row["data_wait_fraction"]:.0f}%{ratio}{finite}'))
    for row in result['inference']:
        setting = f'DeSpikeNet {row["size"]}x192 {row["precision"]}'
        if 'error' in row:
            lines.append(('infer', setting, 'failed', '-', row['error']))
        else:
            lines.append(('infer', setting, f'{row["latency_ms"]:.1f} ms', gib(row.get('peak_gib')), 'median'))
    for row in result['simulator']:
        lines.append(
            ('simulate', f'static {row["shape"]} {row["output"]}', f'{row["device_px_steps_per_s"]:.3e} px-st/s', '-',
             f'numpy CPU {row["numpy_cpu_px_steps_per_s"]:.3e}, x{row["ratio"]:.1f}'))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    print(result['header'])
    for index, line in enumerate(lines):
        print('  '.join(cell.ljust(width) for cell, width in zip(line[:4], widths)) + '  ' + line[4])
        if index == 0:
            print('-' * (sum(widths) + 8 + 40))


def describe_device(device: torch.device) -> str:
    """The GPU's name, memory and CUDA version, or the CPU's thread count."""
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        return f'{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}'
    return f'CPU, {torch.get_num_threads()} threads'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line of ``scripts/gpu_check.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda')
    parser.add_argument('--dry-run', action='store_true', help='toy sizes, 1 warm-up and 1 timed iteration')
    parser.add_argument('--warmup', type=int, default=None, help='untimed training iterations (default 5)')
    parser.add_argument('--iters', type=int, default=None, help='timed training iterations (default 30)')
    parser.add_argument('--repeats', type=int, default=None, help='timed inference/simulator runs (default 5)')
    parser.add_argument('--workers', type=int, default=None, help='DataLoader workers (default 4; dry run 0)')
    parser.add_argument('--compile', action='store_true', help='also train with train.compile (slow to compile)')
    parser.add_argument('--skip', nargs='*', default=[], choices=('train', 'infer', 'simulate'))
    parser.add_argument('--json', help='also write the figures to this json file')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the check of the command line ``argv``; prints the table and returns the figures.

    Raises:
        SystemExit: Status 2 (after a message on stderr) when ``--device cuda`` finds no CUDA device.
    """
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        print(
            f'gpu_check: no CUDA device is visible to torch {torch.__version__} (CUDA build {torch.version.cuda}); '
            'this check needs a GPU. For the CPU dry run: --device cpu --dry-run',
            file=sys.stderr)
        raise SystemExit(2)
    device = torch.device(args.device)
    sizes = Sizes(args.dry_run)
    warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 5)
    iters = args.iters if args.iters is not None else (1 if args.dry_run else 30)
    repeats = args.repeats if args.repeats is not None else (1 if args.dry_run else 5)
    workers = args.workers if args.workers is not None else (0 if args.dry_run else 4)
    settings = list(TRAIN_SETTINGS) + ([('fp32 + compile', False, True)] if args.compile else [])
    result: Dict[str, Any] = {
        'header': (f'gpu_check on {describe_device(device)}, torch {torch.__version__}; training: '
                   f'{osp.relpath(TRAIN_OPT, REPO_ROOT)} network and losses, batch {sizes.batch}, crop {sizes.crop}, '
                   f'{warmup} warm-up + {iters} timed iterations, {workers} workers'
                   f'{" (DRY RUN: toy sizes)" if args.dry_run else ""}'),
        'training': [],
        'inference': [],
        'simulator': []
    }
    with tempfile.TemporaryDirectory(prefix='gpu_check_') as work:
        if 'train' not in args.skip:
            start = time.perf_counter()
            lmdb_path = make_lmdb(work, sizes)
            print(
                f'simulated {sizes.num_scenes} scenes of {sizes.scene}x{sizes.scene}x{sizes.steps} in '
                f'{time.perf_counter() - start:.1f} s',
                flush=True)
            for name, amp, compile_net in settings:
                row = {'setting': name}
                try:
                    row.update(
                        measure_training(lmdb_path, sizes, device, osp.join(work, name.replace(' ', '_')), amp,
                                         compile_net, warmup, iters, workers))
                except Exception as err:  # report the failing setting, measure the others
                    row['error'] = first_line(err)
                print(f'train {name}: {row}', flush=True)
                result['training'].append(row)
    if 'infer' not in args.skip:
        result['inference'] = measure_inference(sizes, device, 1, repeats)
    if 'simulate' not in args.skip:
        result['simulator'] = measure_simulator(sizes, device, repeats)
    print()
    print_table(result)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=2)
    return result
