#!/usr/bin/env python
"""Benchmark: training samples/s from SpikeLMDBDataset (uint8 items) vs the old float32 path and uint8 .npy files.

Builds a small temporary set of simulated streams (procedural scenes, the real simulator) and stores it three ways:
as a bit-packed spike LMDB with raw ground truth (today's layout), as the same LMDB with PNG ground truth (the earlier
layout), and as one uint8 (T, H, W) ``.npy`` per sample plus a PNG. It then draws training items (random 256x256
crop, a 192-frame window, flips/rotations) with 0 and 2 DataLoader workers:

- ``lmdb``: ``SpikeLMDBDataset`` as it is: crop and flip the packed bits, unpack, ``lq`` uint8, raw ground truth;
- ``lmdb-float``: the path the dataset took before (PNG ground truth decoded whole, unpack, flip the frames, ``lq``
  converted to float32), kept here as a reference;
- ``npy``: a memory-mapped uint8 ``.npy`` cropped the same way, ``lq`` uint8.

Prints samples/s, the ratios against ``lmdb-float`` and ``npy``, bytes on disk per sample, and a profile-free split of
one LMDB item. The main process uses ``--threads`` torch threads (1 by default, so 0 workers means one core; each
DataLoader worker uses one thread anyway). Both formats are read from the page cache after the first pass (warm
reads), the steady state of a training run whose data fits in memory; cold reads favour the 8x smaller LMDB further.

The measurements are :mod:`despike_basicsr.evaluation.dataset_bench`; this is the command line. Example:
    python scripts/bench_dataset.py --num-samples 6 --size 384 --steps 256 --iters 48
"""
import argparse
import sys
from typing import List, Optional

import torch

from despike_basicsr.data import preparation as prep
from despike_basicsr.evaluation import dataset_bench


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num-samples', type=int, default=6)
    parser.add_argument('--size', type=int, default=384, help='stored stream height and width')
    parser.add_argument('--steps', type=int, default=256, help='stored stream length')
    parser.add_argument('--crop', type=int, default=256, help='training crop (gt_size)')
    parser.add_argument('--window', type=int, default=192, help='training window (temporal_len max)')
    parser.add_argument('--iters', type=int, default=48, help='samples timed per measurement')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    parser.add_argument('--threads', type=int, default=1, help='torch threads of the main process')
    parser.add_argument('--batch-size', type=int, default=1, help='DataLoader batch size (collated as in training)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset_bench.run(args.num_samples, args.size, args.steps, args.crop, args.window, args.iters, args.workers,
                      args.batch_size, args.seed)
    return 0


if __name__ == '__main__':
    sys.exit(prep.run_cli(main))
