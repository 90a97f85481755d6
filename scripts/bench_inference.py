#!/usr/bin/env python
"""Inference cost of one 250×400 reconstruction from 192 spike steps: DeSpike against a TFP→NRKNet cascade.

Both methods run in the same invocation on the same simulated stream and device:

- DeSpike: the ``network_g`` of ``--opt`` (default options/test_despike_dpdd.yml), input the uint8 stream as it is
  (the network counts spikes in integers and converts only the counts);
- cascade: TFP (41-frame window, through ``rate_to_display``) feeding ``NRKNet(in_channels=1)`` (published widths
  64/128/256), its finest output.

Reported per method: parameters, FLOPs of one forward (``torch.utils.flop_counter.FlopCounterMode``: convolutions and
matrix products; FFTs, pooling and element-wise ops are not counted), median latency over ``--repeats`` runs after
``--warmup`` runs, and peak memory of one reconstruction. The two methods take turns (DeSpike, cascade, then cascade,
DeSpike, ...), so a change in the machine's load falls on both; the latency ratio is the median of the per-round
ratios (with their range), which is the figure to compare on a shared machine. Peak memory:

- CPU: each method runs in its own subprocess, which reads its peak resident set size; a baseline
  subprocess that only imports, builds the network and loads the input is subtracted, leaving the inference's own
  peak (the stream is simulated once by the parent and handed over as ``.npy``, so the simulator's temporary arrays
  do not mask it). The peak is ``VmHWM`` from ``/proc/self/status`` on Linux: ``getrusage(RUSAGE_SELF).ru_maxrss``
  would be wrong there, because Linux carries the parent's high-water mark into a forked-and-exec'd child (both
  subprocesses would report the parent's ~1 GB); elsewhere ``ru_maxrss`` is used;
- CUDA: ``torch.cuda.max_memory_allocated`` during the forward minus what was allocated before it (weights + input).

Usage::

    python scripts/bench_inference.py                   # CPU (or --device cuda)
    python scripts/bench_inference.py --json bench.json # also write the figures as json

Also printed: the CPU model and the instruction set oneDNN dispatches to (its ``ONEDNN_VERBOSE`` ISA line, from a
small subprocess; ``ONEDNN_MAX_CPU_ISA`` in the environment caps it for both), the kernel-bank implementations DeSpike
measured and chose for each shape (``despike_blocks.bank_plans``), and, where the ``onnx`` extra is installed and the
device is the CPU, a row for the same DeSpike exported to ONNX (``despike-export``) run by onnxruntime with the
same thread count, taking turns with the other two (``--no-onnx`` leaves it out).

Also timed (``--train-repeats``, 0 leaves it out): one training step of each network at the paper's training setting
(batch 2, 256×256 crops, ``--steps`` frames: forward, L1 loss on the final image against a random target, backward,
Adam step), the two methods taking turns; and, beside every wall-clock ratio, the ratio of CPU time of this process
(``time.process_time``), which on a loaded machine leaves out the time spent waiting for a core. The DeSpike step is
the network's (the model's hierarchical and FFT losses add a little); the cascade's trains NRKNet on the TFP image.

Untrained weights: cost does not depend on the values (the kernel bank flushes the denormal corners of its Gaussian
initialisation, which on some CPUs cost 6–8× in the convolution). Numbers vary with the machine and its load; see
docs/performance.md for figures measured here, one row per instruction set.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import warnings
from typing import Callable, Dict, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

import despike_basicsr  # noqa: E402
from despike_basicsr.archs import despike_blocks  # noqa: E402
from despike_basicsr.training.profiling import (cpu_model, cuda_peak, flops, interleaved_latency,  # noqa: E402
                                                make_stream, onednn_isa, peak_rss_bytes)
from despike_basicsr.inference.network import (DEFAULT_OPT, build_network_from_options,  # noqa: E402
                                               read_network_options)
from despike_basicsr.spike import rate_to_display, tfp  # noqa: E402

despike_basicsr.register()  # compat first, then the registries

METHODS = ('despike', 'cascade')
LABELS = {'despike': 'DeSpike', 'cascade': 'TFP->NRKNet', 'onnxruntime': 'DeSpike (ORT)'}
TFP_WINDOW = 41


def build_onnx(args: argparse.Namespace, workdir: str) -> Callable:
    """The untrained DeSpike of ``--opt`` (same seed as :func:`build`) exported to ONNX, as an onnxruntime run."""
    import numpy as np
    from despike_basicsr.archs import despike_blocks
    from despike_basicsr.inference.export import DEFAULT_BANK_IMPL, SpikesToImage, onnx_session
    net, _ = build('despike', args, torch.device('cpu'))
    spikes = torch.zeros(1, args.steps, args.height, args.width, dtype=torch.uint8)
    gamma = torch.ones(1, 1, args.height, args.width)
    path = osp.join(workdir, 'despike.onnx')
    despike_blocks.set_bank_implementation(DEFAULT_BANK_IMPL)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(SpikesToImage(net), (spikes, gamma), path, input_names=['spikes', 'gamma'],
                              output_names=['image'], opset_version=17, dynamo=False)
    finally:
        despike_blocks.set_bank_implementation(None)
    session = onnx_session(path, threads=args.threads)
    gamma_np = np.ones((1, 1, args.height, args.width), np.float32)

    def run(stream: torch.Tensor) -> np.ndarray:
        return session.run(['image'], {'spikes': stream.numpy(), 'gamma': gamma_np})[0]

    return run


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def build(method: str, args: argparse.Namespace, device: torch.device) -> Tuple[torch.nn.Module, Callable]:
    """The network of ``method`` (eval mode, on ``device``, untrained) and a function stream -> image."""
    torch.manual_seed(0)
    if method == 'despike':
        net = build_network_from_options(read_network_options(args.opt), args.opt).to(device).eval()

        def run(spikes: torch.Tensor) -> torch.Tensor:
            return net(spikes)
    else:
        net = build_network_from_options({'type': 'NRKNet', 'in_channels': 1}, 'the cascade').to(device).eval()

        def run(spikes: torch.Tensor) -> torch.Tensor:
            frame = rate_to_display(tfp(spikes, window=TFP_WINDOW))[:, None]  # (B, 1, H, W) display image
            return net(frame)[-1]

    return net, run


def build_train_steps(args: argparse.Namespace, device: torch.device) -> Tuple[Dict[str, Callable], tuple]:
    """One training step (forward, L1 loss, backward, Adam) of each method's network, and the batch it takes.

    The batch: ``--train-batch`` uint8 streams of ``--steps`` frames on ``--train-size``² crops (256 = the paper's
    training crops; smaller frames than that use the frame's size), with a random target image.
    """
    size = args.train_size or (256 if min(args.height, args.width) >= 128 else min(args.height, args.width))
    generator = torch.Generator().manual_seed(1)
    spikes = (torch.rand(args.train_batch, args.steps, size, size, generator=generator) < 0.3).to(torch.uint8)
    target = torch.rand(args.train_batch, 1, size, size, generator=generator)
    spikes, target = spikes.to(device), target.to(device)
    steps = {}
    for method in METHODS:
        net, run = build(method, args, device)
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

        def step(batch: tuple, net=net, run=run, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.l1_loss(run(batch[0]), batch[1])
            loss.backward()
            optimizer.step()

        steps[method] = step
    return steps, (spikes, target)


def worker(args: argparse.Namespace) -> None:
    """Subprocess body for CPU peak memory: build (and, unless --worker-baseline, run once); print ru_maxrss."""
    device = torch.device('cpu')
    torch.set_num_threads(args.threads)
    _, run = build(args.worker, args, device)
    spikes = torch.from_numpy(np.load(args.worker_input))
    if not args.worker_baseline:
        with torch.inference_mode():
            run(spikes)
    print(json.dumps({'maxrss_bytes': peak_rss_bytes()}))


def cpu_peak(method: str, args: argparse.Namespace, stream_path: str) -> int:
    """Peak resident memory of one reconstruction: run subprocess minus baseline subprocess, in bytes."""
    results = {}
    for baseline in (True, False):
        cmd = [
            sys.executable,
            osp.abspath(__file__), '--worker', method, '--opt', args.opt, '--worker-input', stream_path, '--threads',
            str(args.threads)
        ]
        if baseline:
            cmd.append('--worker-baseline')
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f'memory worker for {method} failed:\n{done.stderr}')
        results[baseline] = json.loads(done.stdout.strip().splitlines()[-1])['maxrss_bytes']
    return results[False] - results[True]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--opt',
        default=DEFAULT_OPT,
        help='options file whose network_g is DeSpike (default options/test_despike_dpdd.yml)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--height', type=int, default=250)
    parser.add_argument('--width', type=int, default=400)
    parser.add_argument('--steps', type=int, default=192)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(), help='CPU threads (default: torch)')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    parser.add_argument('--train-repeats', type=int, default=3, help='timed training steps per method (0: none)')
    parser.add_argument('--train-batch', type=int, default=2, help='training step batch size (default 2)')
    parser.add_argument(
        '--train-size', type=int, help='training crop side (default 256, or the frame size if under 128)')
    parser.add_argument('--no-onnx', action='store_true', help='leave out the onnxruntime row')
    parser.add_argument('--json', help='also write the figures to this json file')
    parser.add_argument('--worker', choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument('--worker-baseline', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--worker-input', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> Dict[str, dict]:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device available')
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    spikes = make_stream(args.height, args.width, args.steps, device)
    workdir = tempfile.TemporaryDirectory(prefix='bench_inference_')
    stream_path = osp.join(workdir.name, 'stream.npy')
    np.save(stream_path, spikes.cpu().numpy())

    built = {method: build(method, args, device) for method in METHODS}
    runs = {method: run for method, (_, run) in built.items()}
    with_onnx = device.type == 'cpu' and not args.no_onnx and onnx_available()
    if with_onnx:
        runs['onnxruntime'] = build_onnx(args, workdir.name)
    cpu_times: Dict[str, list] = {}
    times = interleaved_latency(runs, spikes, device, args.warmup, args.repeats, cpu_times=cpu_times)
    plans = sorted({(key[2], name) for key, name in despike_blocks.bank_plans().items()})
    figures = {}
    for method, (net, run) in built.items():
        entry = {
            'params': sum(p.numel() for p in net.parameters()),
            'flops': flops(run, spikes),
            'latency_ms_median': 1000 * statistics.median(times[method]),
            'latency_ms_all': [1000 * t for t in times[method]],
        }
        if not args.no_memory:
            entry['peak_memory_bytes'] = cuda_peak(run, spikes, device) if device.type == 'cuda' else cpu_peak(
                method, args, stream_path)
        figures[method] = entry
    del built
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    paired = [a / b for a, b in zip(times['despike'], times['cascade'])]
    cpu_paired = [a / b for a, b in zip(cpu_times['despike'], cpu_times['cascade'])]
    train = None
    if args.train_repeats > 0:
        steps, batch = build_train_steps(args, device)
        train_cpu: Dict[str, list] = {}
        train_times = interleaved_latency(steps, batch, device, 1, args.train_repeats, cpu_times=train_cpu,
                                          inference=False)
        del steps
        train = {
            'batch': args.train_batch,
            'size': list(batch[0].shape[-2:]),
            'steps': args.steps,
            'ms_median': {k: 1000 * statistics.median(v) for k, v in train_times.items()},
            'ms_all': {k: [1000 * t for t in v] for k, v in train_times.items()},
            'cpu_ms_median': {k: 1000 * statistics.median(v) for k, v in train_cpu.items()},
            'ratio_paired': statistics.median(a / b for a, b in zip(train_times['despike'], train_times['cascade'])),
            'cpu_ratio_paired': statistics.median(a / b for a, b in zip(train_cpu['despike'], train_cpu['cascade'])),
        }

    workdir.cleanup()
    gpu = f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else f' ({args.threads} threads)'
    cpu, isa = cpu_model(), onednn_isa()
    print(f'One {args.height}x{args.width} reconstruction from {args.steps} steps on {args.device}{gpu}, '
          f'torch {torch.__version__}; median of {args.repeats} interleaved runs after {args.warmup} warm-up run(s)')
    cap = os.environ.get('ONEDNN_MAX_CPU_ISA')
    print(f'CPU: {cpu}; oneDNN ISA: {isa}' + (f' (ONEDNN_MAX_CPU_ISA={cap})' if cap else ''))
    if plans:
        print('Kernel bank, measured per shape (C x h x w): ' +
              ', '.join(f'{"x".join(map(str, shape[1:]))} {name}' for shape, name in plans))
    else:
        print('Kernel bank: fixed implementation (nothing measured)')
    header = f'{"method":<14}{"params (M)":>12}{"GFLOPs":>10}{"latency (ms)":>14}{"peak mem (MB)":>15}'
    print(header)
    print('-' * len(header))
    for method, entry in figures.items():
        mem = entry.get('peak_memory_bytes')
        mem_text = f'{mem / 2**20:>15.1f}' if mem is not None else f'{"-":>15}'
        print(f'{LABELS[method]:<14}{entry["params"] / 1e6:>12.3f}{entry["flops"] / 1e9:>10.2f}'
              f'{entry["latency_ms_median"]:>14.1f}{mem_text}')
    ratios = {
        key: figures['despike'][key] / figures['cascade'][key]
        for key in ('params', 'flops', 'latency_ms_median', 'peak_memory_bytes') if figures['cascade'].get(key)
    }
    ratios['latency_paired'] = statistics.median(paired)
    if with_onnx:
        ort_ms = 1000 * statistics.median(times['onnxruntime'])
        figures['onnxruntime'] = {
            'latency_ms_median': ort_ms,
            'latency_ms_all': [1e3 * t for t in times['onnxruntime']]}
        print(f'{LABELS["onnxruntime"]:<14}{"":>12}{"":>10}{ort_ms:>14.1f}{"-":>15}')
        ort_paired = [a / b for a, b in zip(times['onnxruntime'], times['cascade'])]
        ratios['onnxruntime_latency_paired'] = statistics.median(ort_paired)
    print('DeSpike / cascade: ' + ', '.join(f'{k} x{v:.2f}' for k, v in ratios.items()
                                            if not k.startswith('onnxruntime')))
    print(f'Latency ratio, median of {len(paired)} paired rounds: x{ratios["latency_paired"]:.2f} '
          f'(range x{min(paired):.2f}-x{max(paired):.2f})')
    ratios['cpu_time_paired'] = statistics.median(cpu_paired)
    print(f'CPU-time ratio (process time per call, median of {len(cpu_paired)} paired rounds): '
          f'x{ratios["cpu_time_paired"]:.2f} (range x{min(cpu_paired):.2f}-x{max(cpu_paired):.2f}); CPU ms '
          f'{1e3 * statistics.median(cpu_times["despike"]):.0f} vs {1e3 * statistics.median(cpu_times["cascade"]):.0f}')
    if train is not None:
        ms, cpu_ms = train['ms_median'], train['cpu_ms_median']
        print(f'Training step (forward + L1 + backward + Adam), batch {train["batch"]}, '
              f'{train["size"][0]}x{train["size"][1]} crops, {args.steps} steps, median of {args.train_repeats} '
              f'interleaved: {LABELS["despike"]} {ms["despike"]:.0f} ms, {LABELS["cascade"]} {ms["cascade"]:.0f} ms, '
              f'paired ratio x{train["ratio_paired"]:.2f}; CPU time {cpu_ms["despike"]:.0f} vs '
              f'{cpu_ms["cascade"]:.0f} ms, x{train["cpu_ratio_paired"]:.2f}')
    if with_onnx:
        print(f'DeSpike (onnxruntime) / cascade, paired: x{ratios["onnxruntime_latency_paired"]:.2f} '
              f'(range x{min(ort_paired):.2f}-x{max(ort_paired):.2f})')
    result = {
        'cpu': cpu,
        'onednn_isa': isa,
        'bank_plans': [[list(shape), name] for shape, name in plans],
        'device': args.device + gpu,
        'torch': torch.__version__,
        'size': [args.height, args.width],
        'steps': args.steps,
        'opt': args.opt,
        'figures': figures,
        'ratio_despike_over_cascade': ratios,
        'training_step': train
    }
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
