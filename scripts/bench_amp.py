#!/usr/bin/env python
"""Is mixed precision worth it on this machine? One training step of each DPDD-protocol network, float32 against
autocast (despike_basicsr/evaluation/amp_bench.py), with the CPU model and oneDNN's ISA printed first.

Usage::

    python scripts/bench_amp.py                                  # every protocol network, bf16, one thread
    python scripts/bench_amp.py --rows spk2imgnet,nrknet --json amp.json
    python scripts/bench_amp.py --rows rsir --size 32 --batch 1  # a quick look

A ratio under 1 means autocast trains faster; ``bash scripts/dpdd_protocol.sh --amp bf16`` then uses it. Numbers vary
with the machine and its load: run nothing else beside it, or read the CPU-time ratio.
"""
import argparse
import json
import os.path as osp
import sys

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)  # run from a checkout without installing

import torch  # noqa: E402

from despike_basicsr.evaluation.amp_bench import AMP_DTYPES, PROTOCOL_OPTIONS, markdown_table, measure_row  # noqa: E402
from despike_basicsr.training.profiling import cpu_model, onednn_isa  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', default=','.join(PROTOCOL_OPTIONS),
                        help=f'comma-separated networks: {", ".join(PROTOCOL_OPTIONS)} (default all)')
    parser.add_argument('--amp', default='bf16', choices=sorted(AMP_DTYPES))
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds (default 1)')
    parser.add_argument('--repeats', type=int, default=2, help='timed rounds (default 2)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1, as the protocol trains)')
    parser.add_argument('--batch', type=int, help="batch size (default the options file's)")
    parser.add_argument('--size', type=int, help="crop size (default the options file's gt_size)")
    parser.add_argument('--steps', type=int, help='stream length of spike networks (default the shortest temporal_len)')
    parser.add_argument('--json', help='also write the figures here')
    args = parser.parse_args(argv)
    args.rows = [r for r in args.rows.split(',') if r]
    unknown = [r for r in args.rows if r not in PROTOCOL_OPTIONS]
    if unknown:
        parser.error(f'--rows: unknown {", ".join(unknown)} (known: {", ".join(PROTOCOL_OPTIONS)})')
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = {'cpu': cpu_model(), 'onednn_isa': onednn_isa(), 'threads': args.threads, 'torch': torch.__version__}
    print(f"CPU: {machine['cpu']}\noneDNN ISA: {machine['onednn_isa']}\nthreads: {args.threads}", flush=True)
    rows = []
    for row in args.rows:
        options = osp.join(REPO_ROOT, PROTOCOL_OPTIONS[row])
        rows.append(measure_row(options, args.amp, args.warmup, args.repeats, args.batch, args.size, args.steps))
        rows[-1]['options'] = PROTOCOL_OPTIONS[row]
        print(f"{row}: fp32 {rows[-1]['fp32_s']} s, {args.amp} {rows[-1]['amp_s']} s", flush=True)
    print('\n'.join([''] + markdown_table(rows)))
    result = {'machine': machine, 'rows': rows}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
