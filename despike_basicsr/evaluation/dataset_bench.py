"""Training samples/s from SpikeLMDBDataset (uint8 items) against the old float32 path and uint8 ``.npy`` files.

:func:`run` builds a small temporary set of simulated streams (procedural scenes, the real simulator) and stores it
three ways: as a bit-packed spike LMDB with raw ground truth (today's layout), as the same LMDB with PNG ground truth
(the earlier layout), and as one uint8 (T, H, W) ``.npy`` per sample plus a PNG. It then draws training items (a random
crop, a window of frames, flips/rotations) with each number of DataLoader workers:

- ``lmdb``: ``SpikeLMDBDataset`` as it is: crop and flip the packed bits, unpack, ``lq`` uint8, raw ground truth;
- ``lmdb-float``: the path the dataset took before (PNG ground truth decoded whole, unpack, flip the frames, ``lq``
  converted to float32), kept here as a reference (:class:`LegacyFloatLMDBDataset`);
- ``npy``: a memory-mapped uint8 ``.npy`` cropped the same way, ``lq`` uint8 (:class:`NpyCropDataset`).

It reports samples/s, the ratios against ``lmdb-float`` and ``npy``, bytes on disk per sample, and a profile-free
split of one LMDB item (:func:`item_split`). Both formats are read from the page cache after the first pass (warm
reads), the steady state of a training run whose data fits in memory; cold reads favour the 8x smaller LMDB further.
``scripts/bench_dataset.py`` is the command line.
"""
import os
import os.path as osp
import random
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from despike_basicsr.data import preparation as prep
from despike_basicsr.data.scenes import generate_scene
from despike_basicsr.data.spike_lmdb import SpikeLMDBWriter
from despike_basicsr.data.spike_lmdb_dataset import (SpikeLMDBDataset, apply_augmentation, draw_augmentation, make_item,
                                                     random_crop_box, train_window)
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


class LegacyFloatLMDBDataset(SpikeLMDBDataset):
    """SpikeLMDBDataset's training item as it was built before uint8 items (kept to measure the difference).

    Unpacks the crop first, flips/rotates the unpacked frames, decodes the (PNG) ground truth whole, and hands out
    ``lq`` as float32.
    """

    def __getitem__(self, index: int) -> Dict:
        key = self.keys[index]
        meta = self.reader.meta(key)
        length, height, width = meta['T'], meta['H'], meta['W']
        lq_len = random.randint(*self.temporal_len)
        t0, t1 = train_window(length, int(meta.get('center', length // 2)), self.temporal_len[1], self.temporal_shift)
        y0, y1, x0, x1 = random_crop_box(height, width, self.gt_size, key)
        spikes, gt = self.reader.read_sample(key, t0, t1, y0, y1, x0, x1)
        flips = draw_augmentation(self.use_flip, self.use_rot)
        spikes, gt = apply_augmentation(spikes, *flips), apply_augmentation(gt, *flips)
        item = make_item(spikes, gt.astype(np.float32) / 255.0, key, lq_len)
        item['lq'] = item['lq'].float()
        return item


def disk_bytes(paths: List[str]) -> int:
    """Bytes the files occupy on disk (allocated blocks, so a sparse LMDB map is not over-counted)."""
    return sum(os.stat(p).st_blocks * 512 for p in paths)


def samples_per_second(dataset: Dataset, workers: int, iters: int, batch_size: int = 1) -> float:
    """Items per second through a DataLoader (default collate) after a short warm-up."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0)
    batches = iter(loader)
    for _ in range(min(2, len(loader))):  # warm-up: worker start-up, page cache, LMDB open
        next(batches)
    start, count = time.perf_counter(), 0
    while count < iters:
        for _ in batches:
            count += batch_size
            if count >= iters:
                break
        else:
            batches = iter(loader)
    return count / (time.perf_counter() - start)


def mean_ms(fn: Callable[[], object], iters: int) -> float:
    """Mean wall time of ``fn()`` in milliseconds (one untimed warm-up call first)."""
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters * 1e3


def item_split(dataset: SpikeLMDBDataset, iters: int) -> Dict[str, float]:
    """Milliseconds of the parts of one LMDB training item: read (crop packed bits + gt), flip packed, unpack."""
    key, window = dataset.keys[0], dataset.temporal_len[1]
    crop = dataset.gt_size
    packed, _ = dataset.reader.read_packed(key, 0, window, 0, crop, 0, crop)
    flips = (True, True, True)
    flipped = packed._replace(planes=apply_augmentation(packed.planes, *flips))
    read = lambda: dataset.reader.read_packed(key, 0, window, 0, crop, 0, crop)  # noqa: E731
    return {
        'read packed crop + raw gt': mean_ms(read, iters),
        'flip/transpose packed': mean_ms(lambda: apply_augmentation(packed.planes, *flips), iters),
        'unpack': mean_ms(flipped.unpack, iters),
        'old: flip/transpose unpacked': mean_ms(lambda: apply_augmentation(packed.unpack(), *flips), iters),
        'old: lq to float32': mean_ms(lambda: torch.from_numpy(packed.unpack()).float(), iters),
    }


def run(num_samples: int = 6, size: int = 384, steps: int = 256, crop: int = 256, window: int = 192, iters: int = 48,
        workers: Sequence[int] = (0, 2), batch_size: int = 1, seed: int = 0,
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Build the three stores under a temporary folder (removed afterwards) and measure them; ``log`` gets the
    progress lines. Returns ``{'rates': {(format, workers): samples/s}, 'bytes_per_sample': {'lmdb', 'npy'},
    'item_ms': {part: ms}}``.

    Raises:
        ValueError: ``crop`` / ``window`` exceed the stored ``size`` / ``steps``.
    """
    if crop > size or window > steps:
        raise ValueError(f'crop {crop} / window {window} exceed the stored {size} px / {steps} steps')
    random.seed(seed)
    work = tempfile.mkdtemp(prefix='bench_dataset_')
    try:
        lmdb_path, png_path, npy_dir = (osp.join(work, n) for n in ('bench.lmdb', 'bench_png.lmdb', 'npy'))
        os.makedirs(npy_dir)
        config = prep.SimulationConfig(mode='thinlens', steps=steps, sigma_range=(2.0, 2.0), seed=seed)
        keys = []
        start = time.perf_counter()
        with SpikeLMDBWriter(lmdb_path) as writer, SpikeLMDBWriter(png_path, gt_format='png') as png_writer:
            for index in range(num_samples):
                key = f'{index:04d}'
                intensity, _ = generate_scene(size, size, prep.sample_seed(seed, 'bench', index))
                blurred, params = prep.defocus(intensity, config, np.random.default_rng(index))
                packed = prep.simulate_packed(blurred, config, seed=index)
                gt = prep.to_display_uint8(intensity)
                writer.add(key, gt, params, packed=packed, length=steps)
                png_writer.add(key, gt, params, packed=packed, length=steps)
                np.save(osp.join(npy_dir, f'{key}.npy'), unpack_time(packed, steps))
                cv2.imwrite(osp.join(npy_dir, f'{key}.png'), gt)
                keys.append(key)
        log(f'built {num_samples} samples of {size}x{size}x{steps} in {time.perf_counter() - start:.1f} s under '
            f'{work}; torch threads in the main process: {torch.get_num_threads()}')

        lmdb_bytes = disk_bytes([osp.join(lmdb_path, n) for n in os.listdir(lmdb_path)]) / num_samples
        npy_bytes = disk_bytes([osp.join(npy_dir, n) for n in os.listdir(npy_dir)]) / num_samples
        temporal_len = [window // 2, window]
        train_opt = {'phase': 'train', 'gt_size': crop, 'temporal_len': temporal_len, 'use_flip': True, 'use_rot': True}
        datasets = {
            'lmdb': SpikeLMDBDataset(dict(train_opt, dataroot=lmdb_path)),
            'lmdb-float': LegacyFloatLMDBDataset(dict(train_opt, dataroot=png_path)),
            'npy': NpyCropDataset(npy_dir, keys, crop, temporal_len),
        }
        log(f'training item: lq {window}x{crop}x{crop} (uint8; lmdb-float: float32), gt 1x{crop}x{crop} float32, '
            f'batch size {batch_size}')
        log(f'{"format":<11} {"workers":>7} {"samples/s":>10}')
        rates = {}
        for count in workers:
            for name, dataset in datasets.items():
                rates[name, count] = samples_per_second(dataset, count, iters, batch_size)
                log(f'{name:<11} {count:>7} {rates[name, count]:>10.1f}')
        for count in workers:
            lmdb_rate = rates['lmdb', count]
            log(f'{count} workers: lmdb/lmdb-float {lmdb_rate / rates["lmdb-float", count]:.2f}x, '
                f'lmdb/npy {lmdb_rate / rates["npy", count]:.2f}x')
        log(f'bytes on disk per sample: lmdb {lmdb_bytes / 1e6:.2f} MB, npy {npy_bytes / 1e6:.2f} MB, '
            f'ratio npy/lmdb {npy_bytes / lmdb_bytes:.2f}')
        split = item_split(datasets['lmdb'], iters)
        log('one lmdb item, ms: ' + ', '.join(f'{part} {ms:.2f}' for part, ms in split.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {'rates': rates, 'bytes_per_sample': {'lmdb': lmdb_bytes, 'npy': npy_bytes}, 'item_ms': split}
