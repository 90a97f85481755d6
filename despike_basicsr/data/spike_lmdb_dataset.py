"""SpikeLMDBDataset: defocused spike streams and sharp ground truth from a bit-packed spike LMDB.

Returned items follow docs/architecture.md ("Datasets"): ``{'lq': uint8 (T, H, W) of 0/1, 'gt': float32 (1, H, W)
in [0, 1], 'lq_path': key, 'gt_path': key, 'lq_len': int}`` plus ``'gamma'`` (1, H, W) when an FPN file is given and
``'blurred'`` float32 (1, H, W), the defocused image the camera saw, when the LMDB stores it (option ``blurred``).
The spikes stay uint8 up to the network, which integrates them as float (a 192x256x256 item is 12.6 MB instead of
50 MB: 4x less to build, to pass between DataLoader workers, to collate and to copy to the GPU).

A training item is read as packed bits and raw ground truth for its crop only (``SpikeLMDBReader.read_packed``),
flipped/rotated while still packed, and unpacked last.

Randomness comes from Python's ``random`` module, which BasicSR seeds per process and per dataloader worker
(``set_random_seed`` and ``worker_init_fn``), as BasicSR's own datasets do.
"""
import os.path as osp
import random
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from despike_basicsr.data.spike_lmdb import SpikeLMDBReader
from despike_basicsr.spike.fpn import load_fpn

DEFAULT_VAL_LEN = 192


def parse_temporal_len(opt: Dict[str, Any], default: int) -> Tuple[int, int]:
    """``temporal_len: [min, max]`` (or one int) from the options, validated.

    Raises:
        ValueError: If the range is not ``1 <= min <= max``.
    """
    value = opt.get('temporal_len', default)
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if not 1 <= int(low) <= int(high):
        raise ValueError(f'temporal_len must be [min, max] with 1 <= min <= max, got {value!r}')
    return int(low), int(high)


def eval_window(length: int, center: int, val_len: int) -> Tuple[int, int]:
    """Frames ``[start, stop)`` of the evaluation window: ``val_len`` frames centred on ``center``, inside the stream.

    The target frame sits at index ``(stop - start) // 2`` of the window whenever the stream allows it.
    """
    window = min(val_len, length)
    start = min(max(center - window // 2, 0), length - window)
    return start, start + window


def train_window(length: int, center: int, window: int, shift: bool) -> Tuple[int, int]:
    """Frames of a training window of ``window`` frames: anywhere in the stream (static scene) or centred."""
    if shift:
        start = random.randint(0, length - window)
    else:
        start = min(max(center - window // 2, 0), length - window)
    return start, start + window


def random_crop_box(height: int, width: int, size: Optional[int], key: str) -> Tuple[int, int, int, int]:
    """A random ``size`` x ``size`` box ``(y0, y1, x0, x1)``; the whole frame when ``size`` is None.

    Raises:
        ValueError: If the frame is smaller than the crop.
    """
    if size is None:
        return 0, height, 0, width
    if height < size or width < size:
        raise ValueError(f'sample {key!r} is {height}x{width} (HxW), smaller than gt_size={size}')
    y0, x0 = random.randint(0, height - size), random.randint(0, width - size)
    return y0, y0 + size, x0, x0 + size


def draw_augmentation(use_flip: bool, use_rot: bool) -> Tuple[bool, bool, bool]:
    """Random (hflip, vflip, transpose) as BasicSR's ``augment``: vflip+transpose make the 90° rotations."""
    hflip = use_flip and random.random() < 0.5
    vflip = use_rot and random.random() < 0.5
    transpose = use_rot and random.random() < 0.5
    return hflip, vflip, transpose


def apply_augmentation(array: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    """Flip/rotate the last two (spatial) axes; identical for (T, H, W) spikes and (H, W) images."""
    if hflip:
        array = array[..., :, ::-1]
    if vflip:
        array = array[..., ::-1, :]
    if transpose:
        array = np.swapaxes(array, -1, -2)
    return np.ascontiguousarray(array)


def make_item(spikes: np.ndarray,
              gt: np.ndarray,
              key: str,
              lq_len: int,
              gamma: Optional[np.ndarray] = None,
              blurred: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The dict every spike dataset returns (docs/architecture.md).

    Args:
        spikes: ``(T, H, W)`` stream of 0/1 (any dtype; uint8 is used without a copy).
        gt: ``(H, W)`` ground truth in [0, 1].
        key: Sample name (``lq_path`` and ``gt_path``).
        lq_len: Length drawn for this sample (see ``SpikeLMDBDataset``).
        gamma: ``(H, W)`` FPN factor, or None.
        blurred: ``(H, W)`` defocused image in [0, 1] (the target of a learned front end's own stage), or None.

    Returns:
        ``{'lq': uint8 (T, H, W), 'gt': float32 (1, H, W), 'lq_path', 'gt_path', 'lq_len'}`` and ``'gamma'`` /
        ``'blurred'`` float32 (1, H, W) when given.
    """
    item = {
        'lq': torch.from_numpy(np.ascontiguousarray(spikes, dtype=np.uint8)),
        'gt': torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32)[None]),
        'lq_path': key,
        'gt_path': key,
        'lq_len': int(lq_len),
    }
    if gamma is not None:
        item['gamma'] = torch.from_numpy(np.ascontiguousarray(gamma, dtype=np.float32)[None])
    if blurred is not None:
        item['blurred'] = torch.from_numpy(np.ascontiguousarray(blurred, dtype=np.float32)[None])
    return item


def check_backend(opt: Dict[str, Any], name: str) -> None:
    backend = dict(opt.get('io_backend') or {'type': 'lmdb'})
    if backend.get('type', 'lmdb') != 'lmdb':
        raise ValueError(f'{name}: io_backend type must be "lmdb", got {backend.get("type")!r}')


@DATASET_REGISTRY.register()
class SpikeLMDBDataset(data.Dataset):
    """Defocused spike streams with sharp ground truth, read from a spike LMDB (see docs/data.md).

    Options:
        dataroot (str): The ``.lmdb`` folder (from scripts/prepare_dpdd.py, make_demo_dataset.py or pack_folder.py).
        io_backend (dict): ``{type: lmdb}`` (the only backend).
        phase (str): ``train`` for random crops and augmentation; anything else evaluates whole frames.
        gt_size (int): Train: spatial crop size (``None``: whole frames).
        temporal_len ([int, int]): Train: range of stream lengths; every item holds ``max`` frames and ``lq_len``
            is the length drawn for it (the model keeps the centre ``min(lq_len)`` frames of a batch). Default: the
            shortest stored stream.
        temporal_shift (bool): Train: place the window anywhere in the stream (default true; the scenes are static,
            so every window shows the ground truth, with a new spike phase) or centred on the target frame.
        val_len (int): Eval: window length centred on the target frame, clipped to the stream (default 192).
        use_flip (bool): Train: random horizontal flips. ``use_hflip`` is accepted as BasicSR's spelling.
        use_rot (bool): Train: random vertical flips and transposes (the 90° rotations).
        fpn (str | bool): FPN calibration ``.npz`` whose ``gamma`` is returned as ``'gamma'`` (1, H, W), cropped and
            augmented like the frames; ``true`` means ``<dataroot>/fpn.npz`` (written by the preparation scripts).
        blurred (str | bool): Return ``'blurred'`` (1, H, W), the defocused image the camera saw (display-referred
            like ``gt``, cropped and augmented like it): ``auto`` (default) when the LMDB stores it for every sample
            (preparations since it exists), ``true`` to require it (an LMDB without it fails here, naming the fix),
            ``false`` never. A learned spike front end trains on it as its target (``SpikeFrontEndModel``).
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt
        if not opt.get('dataroot'):
            raise KeyError('SpikeLMDBDataset needs option "dataroot" (the .lmdb folder)')
        check_backend(opt, 'SpikeLMDBDataset')
        self.reader = SpikeLMDBReader(opt['dataroot'])
        self.keys: List[str] = list(self.reader.keys)
        self.train = opt.get('phase', 'train') == 'train'
        self.gt_size: Optional[int] = opt.get('gt_size') if self.train else None
        shortest = min(self.reader.shape(key)[0] for key in self.keys)
        self.temporal_len = parse_temporal_len(opt, shortest)
        self.temporal_shift = bool(opt.get('temporal_shift', True))
        self.val_len = int(opt.get('val_len') or DEFAULT_VAL_LEN)
        self.use_flip = bool(opt.get('use_flip', opt.get('use_hflip', False)))
        self.use_rot = bool(opt.get('use_rot', False))
        if self.train and self.temporal_len[1] > shortest:
            key = next(k for k in self.keys if self.reader.shape(k)[0] == shortest)
            raise ValueError(f'temporal_len max {self.temporal_len[1]} exceeds the {shortest} frames of sample {key!r} '
                             f'in {self.reader.path}')
        self.gamma = self._load_gamma(opt.get('fpn'))
        self.blurred = self._parse_blurred(opt.get('blurred', 'auto'))

    def _parse_blurred(self, value: Any) -> bool:
        if value not in ('auto', True, False, None):
            raise ValueError(f"SpikeLMDBDataset: blurred must be auto, true or false, got {value!r}")
        stored = self.reader.has_blurred()
        if value is True and not stored:
            raise ValueError(f'SpikeLMDBDataset: blurred is true but {self.reader.path} stores no defocused image '
                             '(<key>/blurred); it was prepared before that record existed: prepare it again with '
                             'scripts/prepare_dpdd.py (or pack_folder.py / make_demo_dataset.py)')
        return stored if value == 'auto' else bool(value)

    def _load_gamma(self, fpn: Any) -> Optional[np.ndarray]:
        if fpn in (None, False, '', 'none'):
            return None
        path = osp.join(self.reader.path, 'fpn.npz') if fpn is True else str(fpn)
        return load_fpn(path)

    def __len__(self) -> int:
        return len(self.keys)

    def _check_gamma_shape(self, key: str, height: int, width: int) -> None:
        if self.gamma is not None and self.gamma.shape != (height, width):
            raise ValueError(f'FPN gamma {self.opt.get("fpn")} is {self.gamma.shape[0]}x{self.gamma.shape[1]} but '
                             f'sample {key!r} of {self.reader.path} is {height}x{width}')

    def __getitem__(self, index: int) -> Dict[str, Any]:
        key = self.keys[index]
        meta = self.reader.meta(key)
        length, height, width = meta['T'], meta['H'], meta['W']
        center = int(meta.get('center', length // 2))
        self._check_gamma_shape(key, height, width)
        if self.train:
            lq_len = random.randint(*self.temporal_len)
            t0, t1 = train_window(length, center, self.temporal_len[1], self.temporal_shift)
            y0, y1, x0, x1 = random_crop_box(height, width, self.gt_size, key)
        else:
            t0, t1 = eval_window(length, center, self.val_len)
            lq_len = t1 - t0
            y0, y1, x0, x1 = 0, height, 0, width
        window, gt = self.reader.read_packed(key, t0, t1, y0, y1, x0, x1)
        gamma = self.gamma[y0:y1, x0:x1] if self.gamma is not None else None
        blurred = self.reader.read_blurred(key, y0, y1, x0, x1) if self.blurred else None
        if self.train:
            # Flips and transposes act on space only, so they commute with unpacking time: do them on 8x fewer bytes.
            flips = draw_augmentation(self.use_flip, self.use_rot)
            window = window._replace(planes=apply_augmentation(window.planes, *flips))
            gt = apply_augmentation(gt, *flips)
            gamma = apply_augmentation(gamma, *flips) if gamma is not None else None
            blurred = apply_augmentation(blurred, *flips) if blurred is not None else None
        return make_item(window.unpack(), gt.astype(np.float32) / 255.0, key, lq_len, gamma,
                         blurred.astype(np.float32) / 255.0 if blurred is not None else None)
