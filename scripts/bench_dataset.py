#!/usr/bin/env python
"""Benchmark: training samples/s from SpikeLMDBDataset vs the same crops read from uint8 .npy files.

Builds a small temporary set of simulated streams (procedural scenes, the real simulator), stores it once as a
bit-packed spike LMDB and once as one uint8 (T, H, W) ``.npy`` per sample (plus a PNG ground truth), then draws
training items (random 256x256 crop, a 192-frame window, flips/rotations, float tensors as the model gets them) with
0 and 2 DataLoader workers. Prints samples/s, bytes on disk per sample, and the LMDB/npy ratios. Both formats are read
from the page cache after the first pass (warm reads), which is the steady state of a training run whose data fits in
memory; cold disk reads favour the 8x smaller LMDB further.

Example:
    python scripts/bench_dataset.py --num-samples 6 --size 384 --steps 256 --iters 24
"""
import argparse
import os
import os.path as osp
import random
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional

import cv2
import numpy as np
from torch.utils.data import DataLoader, Dataset

from despike_basicsr.data import preparation as prep
from despike_basicsr.data.scenes import generate_scene
from despike_basicsr.data.spike_lmdb import SpikeLMDBWriter
from despike_basicsr.data.spike_lmdb_dataset import (SpikeLMDBDataset, apply_augmentation, draw_augmentation,
                                                     make_item, random_crop_box, train_window)
from despike_basicsr.spike.io import unpack_time


class NpyCropDataset(Dataset):
    """The uint8 .npy baseline: memory-maps ``<key>.npy`` (T, H, W) and crops exactly as SpikeLMDBDataset does."""

    def __init__(self, folder: str, keys: List[str], gt_size: int, temporal_len: List[int]) -> None:
        self.folder, self.keys, self.gt_size, self.temporal_len = folder, keys, gt_size, temporal_len

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Dict:
        key = self.keys[index]
        stream = np.load(osp.join(self.folder, f'{key}.npy'), mmap_mode='r')
        gt = cv2.imread(osp.join(self.folder, f'{key}.png'), cv2.IMREAD_UNCHANGED)
        length, height, width = stream.shape
        lq_len = random.randint(*self.temporal_len)
        t0, t1 = train_window(length, length // 2, self.temporal_len[1], True)
        y0, y1, x0, x1 = random_crop_box(height, width, self.gt_size, key)
        spikes = np.ascontiguousarray(stream[t0:t1, y0:y1, x0:x1])
        flips = draw_augmentation(True, True)
        spikes, crop = apply_augmentation(spikes, *flips), apply_augmentation(gt[y0:y1, x0:x1], *flips)
        return make_item(spikes, crop.astype(np.float32) / 255.0, key, lq_len)


def disk_bytes(paths: List[str]) -> int:
    """Bytes the files occupy on disk (allocated blocks, so a sparse LMDB map is not over-counted)."""
    return sum(os.stat(p).st_blocks * 512 for p in paths)


def samples_per_second(dataset: Dataset, workers: int, iters: int) -> float:
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    batches = iter(loader)
    for _ in range(min(2, len(dataset))):  # warm-up: worker start-up, page cache, LMDB open
        next(batches)
    start, count = time.perf_counter(), 0
    while count < iters:
        for _ in batches:
            count += 1
            if count >= iters:
                break
        else:
            batches = iter(loader)
    return count / (time.perf_counter() - start)


def reads_per_second(dataset: Dataset, iters: int) -> float:
    """Crops read per second: the storage part alone (LMDB: crop packed bytes + unpack; npy: crop the memory map)."""
    crop, window = 256 if dataset.gt_size is None else dataset.gt_size, dataset.temporal_len[1]
    start = time.perf_counter()
    for i in range(iters):
        key = dataset.keys[i % len(dataset.keys)]
        if isinstance(dataset, SpikeLMDBDataset):
            dataset.reader.read_sample(key, 0, window, 0, crop, 0, crop)
        else:
            stream = np.load(osp.join(dataset.folder, f'{key}.npy'), mmap_mode='r')
            np.ascontiguousarray(stream[0:window, 0:crop, 0:crop])
    return iters / (time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num-samples', type=int, default=6)
    parser.add_argument('--size', type=int, default=384, help='stored stream height and width')
    parser.add_argument('--steps', type=int, default=256, help='stored stream length')
    parser.add_argument('--crop', type=int, default=256, help='training crop (gt_size)')
    parser.add_argument('--window', type=int, default=192, help='training window (temporal_len max)')
    parser.add_argument('--iters', type=int, default=24, help='samples timed per measurement')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.crop > args.size or args.window > args.steps:
        raise ValueError(f'crop {args.crop} / window {args.window} exceed the stored {args.size} px / '
                         f'{args.steps} steps')

    random.seed(args.seed)
    work = tempfile.mkdtemp(prefix='bench_dataset_')
    try:
        lmdb_path, npy_dir = osp.join(work, 'bench.lmdb'), osp.join(work, 'npy')
        os.makedirs(npy_dir)
        config = prep.SimulationConfig(mode='thinlens', steps=args.steps, sigma_range=(2.0, 2.0), seed=args.seed)
        keys = []
        start = time.perf_counter()
        with SpikeLMDBWriter(lmdb_path) as writer:
            for index in range(args.num_samples):
                key = f'{index:04d}'
                intensity, _ = generate_scene(args.size, args.size, prep.sample_seed(args.seed, 'bench', index))
                blurred, params = prep.defocus(intensity, config, np.random.default_rng(index))
                packed = prep.simulate_packed(blurred, config, seed=index)
                gt = prep.to_display_uint8(intensity)
                writer.add(key, gt, params, packed=packed, length=args.steps)
                np.save(osp.join(npy_dir, f'{key}.npy'), unpack_time(packed, args.steps))
                cv2.imwrite(osp.join(npy_dir, f'{key}.png'), gt)
                keys.append(key)
        print(f'built {args.num_samples} samples of {args.size}x{args.size}x{args.steps} in '
              f'{time.perf_counter() - start:.1f} s under {work}')

        lmdb_bytes = disk_bytes([osp.join(lmdb_path, n) for n in os.listdir(lmdb_path)]) / args.num_samples
        npy_bytes = disk_bytes([osp.join(npy_dir, n) for n in os.listdir(npy_dir)]) / args.num_samples
        temporal_len = [args.window // 2, args.window]
        lmdb_set = SpikeLMDBDataset({'dataroot': lmdb_path, 'phase': 'train', 'gt_size': args.crop,
                                     'temporal_len': temporal_len, 'use_flip': True, 'use_rot': True})
        npy_set = NpyCropDataset(npy_dir, keys, args.crop, temporal_len)
        print(f'training item: lq {args.window}x{args.crop}x{args.crop} float32, gt 1x{args.crop}x{args.crop}')
        print(f'{"format":<8} {"workers":>7} {"samples/s":>10}')
        rates = {}
        for workers in args.workers:
            for name, dataset in (('lmdb', lmdb_set), ('npy', npy_set)):
                rates[name, workers] = samples_per_second(dataset, workers, args.iters)
                print(f'{name:<8} {workers:>7} {rates[name, workers]:>10.1f}')
        raw = {name: reads_per_second(dataset, args.iters) for name, dataset in (('lmdb', lmdb_set), ('npy', npy_set))}
        print(f'crop read only (no augmentation, no float conversion), reads/s: lmdb {raw["lmdb"]:.1f}, '
              f'npy {raw["npy"]:.1f}, ratio lmdb/npy {raw["lmdb"] / raw["npy"]:.2f}')
        for workers in args.workers:
            print(f'speed ratio lmdb/npy, {workers} workers: {rates["lmdb", workers] / rates["npy", workers]:.2f}')
        print(f'bytes on disk per sample: lmdb {lmdb_bytes / 1e6:.2f} MB, npy {npy_bytes / 1e6:.2f} MB, '
              f'ratio npy/lmdb {npy_bytes / lmdb_bytes:.2f}')
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(prep.run_cli(main))
