"""SimulatedSpikeDataset: defocused spike streams simulated on the fly from image pairs.

Every time a training sample is drawn it gets a new crop, a new blur (thin-lens mode), a new FPN pattern, new noise
and a new spike phase, so the network never sees the same stream twice. Evaluation items are deterministic (seeded by
``seed`` and the index). Images are read and converted as in :mod:`despike_basicsr.data.preparation` (linear
luminance for the simulation, display-referred uint8-quantised grayscale for the ground truth), so items match those
of :class:`~despike_basicsr.data.spike_lmdb_dataset.SpikeLMDBDataset` prepared with the same settings.
"""
import math
import random
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from despike_basicsr.data.preparation import (DEPTH_EXTENSIONS, SampleSpec, SimulationConfig, dpdd_pairs,
                                              fit_thin_lens, list_images, pair_by_sorted_order, safe_key, sample_seed,
                                              to_display_uint8)
from despike_basicsr.data.spike_lmdb_dataset import (DEFAULT_VAL_LEN, apply_augmentation, draw_augmentation, make_item,
                                                     parse_temporal_len, random_crop_box)
from despike_basicsr.spike import camera, optics

#: Options copied into :class:`SimulationConfig` when present.
_SIMULATION_OPTIONS = ('threshold', 'eta', 'gain_std', 'dark_rate', 'dark_std', 'shot_noise', 'scale', 'gamma',
                       'depth_scale', 'seed')


def _expanded_box(box: Tuple[int, int, int, int], margin: int, height: int,
                  width: int) -> Tuple[Tuple[int, int, int, int], Tuple[slice, slice]]:
    """The crop box grown by ``margin`` (clipped to the image) and the slices that cut the original box back out."""
    y0, y1, x0, x1 = box
    ey0, ey1, ex0, ex1 = max(y0 - margin, 0), min(y1 + margin, height), max(x0 - margin, 0), min(x1 + margin, width)
    return (ey0, ey1, ex0, ex1), (slice(y0 - ey0, y1 - ey0), slice(x0 - ex0, x1 - ex0))


@DATASET_REGISTRY.register()
class SimulatedSpikeDataset(data.Dataset):
    """Spike streams simulated from sharp[/blurred or depth] image pairs at every draw (see docs/data.md).

    Sources (one of):
        dpdd_root (str) + split (str): DPDD layout ``{root}/{split}_c/{source,target}`` (blurred, sharp).
        dataroot_gt (str): folder of sharp images, with optionally ``dataroot_lq`` (blurred images, paired by sorted
            order) or ``dataroot_depth`` (depth maps: ``.npy`` meters or 16-bit PNG times ``depth_scale``).

    Options:
        mode (str): ``dpdd`` (spikes from the blurred image), ``thinlens`` (Gaussian blur of the sharp image with σ
            drawn from ``sigma_range`` per draw) or ``depth`` (thin-lens defocus from the depth map; ``lens`` or a
            lens fitted per image to ``sigma_range``). Default: inferred from the sources.
        threshold, eta, gain_std, dark_rate, dark_std, shot_noise, sigma_range, lens, scale, gamma, depth_scale:
            simulation settings as :class:`~despike_basicsr.data.preparation.SimulationConfig`.
        seed (int): Seed of the evaluation items (training draws use BasicSR's per-worker seeding).
        phase, gt_size, temporal_len, val_len, use_flip, use_rot: as ``SpikeLMDBDataset``.
        return_gamma (bool): Also return ``'gamma'`` (1, H, W) = 1 / gain of the drawn FPN pattern (the correction a
            perfect calibration against the nominal gain would give).
        cache_images (bool): Keep the decoded (rescaled) images in memory (per worker).
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt
        self.train = opt.get('phase', 'train') == 'train'
        self.specs = self._find_sources(opt)
        inferred = 'dpdd' if self.specs[0].blurred_path else 'depth' if self.specs[0].depth_path else 'thinlens'
        settings = {name: opt[name] for name in _SIMULATION_OPTIONS if name in opt}
        self.config = SimulationConfig(mode=opt.get('mode') or inferred, fpn='per-sample',
                                       sigma_range=tuple(opt.get('sigma_range', (1.0, 4.0))), lens=opt.get('lens'),
                                       **settings)
        self.config.validate()
        if self.config.mode == 'dpdd' and not self.specs[0].blurred_path:
            raise ValueError('SimulatedSpikeDataset: mode dpdd needs blurred images (dataroot_lq or dpdd_root)')
        if self.config.mode == 'depth' and not self.specs[0].depth_path:
            raise ValueError('SimulatedSpikeDataset: mode depth needs depth maps (dataroot_depth)')
        self.val_len = int(opt.get('val_len') or DEFAULT_VAL_LEN)
        self.temporal_len = parse_temporal_len(opt, self.val_len)
        self.gt_size: Optional[int] = opt.get('gt_size') if self.train else None
        self.use_flip = bool(opt.get('use_flip', opt.get('use_hflip', False)))
        self.use_rot = bool(opt.get('use_rot', False))
        self.return_gamma = bool(opt.get('return_gamma', False))
        self.cache: Optional[Dict[int, Tuple]] = {} if opt.get('cache_images') else None

    @staticmethod
    def _find_sources(opt: Dict[str, Any]) -> List[SampleSpec]:
        if opt.get('dpdd_root'):
            split = opt.get('split') or ('train' if opt.get('phase', 'train') == 'train' else 'val')
            pairs = dpdd_pairs(opt['dpdd_root'], split)
            return [SampleSpec(safe_key(i, sharp), sharp_path=sharp, blurred_path=blurred)
                    for i, (blurred, sharp) in enumerate(pairs)]
        if not opt.get('dataroot_gt'):
            raise KeyError('SimulatedSpikeDataset needs option "dataroot_gt" (sharp images) or "dpdd_root"')
        sharp_files = list_images(opt['dataroot_gt'])
        blurred_files: List[Optional[str]] = [None] * len(sharp_files)
        depth_files: List[Optional[str]] = [None] * len(sharp_files)
        if opt.get('dataroot_lq'):
            pairs = pair_by_sorted_order(list_images(opt['dataroot_lq']), sharp_files, opt['dataroot_lq'],
                                         opt['dataroot_gt'])
            blurred_files = [blurred for blurred, _ in pairs]
        if opt.get('dataroot_depth'):
            pairs = pair_by_sorted_order(list_images(opt['dataroot_depth'], DEPTH_EXTENSIONS), sharp_files,
                                         opt['dataroot_depth'], opt['dataroot_gt'])
            depth_files = [depth for depth, _ in pairs]
        return [SampleSpec(safe_key(i, sharp), sharp_path=sharp, blurred_path=blurred, depth_path=depth)
                for i, (sharp, blurred, depth) in enumerate(zip(sharp_files, blurred_files, depth_files))]

    def __len__(self) -> int:
        return len(self.specs)

    def _load(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], Any]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        sharp, blurred, depth = self.specs[index].load(self.config)
        lens = None
        if self.config.mode == 'depth':
            if self.config.lens is not None:
                lens = optics.ThinLens(**self.config.lens)
            else:  # fitted on the whole image, so every crop of it sees the same camera
                near, far = np.percentile(depth, [2.0, 98.0])
                lens = fit_thin_lens(float(near), float(max(far, near * 1.5)), *self.config.sigma_range)
        loaded = (sharp, blurred, depth, lens)
        if self.cache is not None:
            self.cache[index] = loaded
        return loaded

    def _blurred_crop(self, index: int, box: Tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
        """Blurred linear intensity of ``box``; blurs a margin around it so the crop does not see an image border."""
        sharp, blurred, depth, lens = self._load(index)
        y0, y1, x0, x1 = box
        if self.config.mode == 'dpdd':
            return blurred[y0:y1, x0:x1]
        if self.config.mode == 'thinlens':
            sigma = float(rng.uniform(*self.config.sigma_range))
            (ey0, ey1, ex0, ex1), inner = _expanded_box(box, int(math.ceil(4 * sigma)) + 2, *sharp.shape)
            return optics.gaussian_blur(sharp[ey0:ey1, ex0:ex1], sigma)[inner]
        sigma_max = float(np.max(lens.sigma_px(np.array([depth.min(), depth.max()]))))
        (ey0, ey1, ex0, ex1), inner = _expanded_box(box, int(math.ceil(4 * sigma_max)) + 2, *sharp.shape)
        return optics.render_depth_defocus(sharp[ey0:ey1, ex0:ex1], depth[ey0:ey1, ex0:ex1], lens)[inner]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        spec = self.specs[index]
        # Training draws come from BasicSR's seeded `random`; evaluation items are fixed by (seed, index).
        seed = random.getrandbits(32) if self.train else sample_seed(self.config.seed, 'eval', index)
        rng = np.random.default_rng(seed)
        sharp = self._load(index)[0]
        height, width = sharp.shape
        box = random_crop_box(height, width, self.gt_size, spec.key) if self.train else (0, height, 0, width)
        intensity = self._blurred_crop(index, box, rng)
        gt = to_display_uint8(sharp[box[0]:box[1], box[2]:box[3]], self.config.gamma)
        if self.train:
            flips = draw_augmentation(self.use_flip, self.use_rot)
            intensity, gt = apply_augmentation(intensity, *flips), apply_augmentation(gt, *flips)
            steps, lq_len = self.temporal_len[1], random.randint(*self.temporal_len)
        else:
            steps = lq_len = self.val_len
        gain = dark = None
        if self.config.has_fpn:
            gain, dark = camera.sample_fpn(intensity.shape, self.config.gain_std, self.config.dark_rate,
                                           self.config.dark_std, seed=seed + 1)
        spikes = camera.simulate(np.clip(intensity, 0.0, 1.0).astype(np.float32), steps,
                                 threshold=self.config.threshold, eta=self.config.eta, gain=gain, dark=dark,
                                 shot_noise=self.config.shot_noise, seed=seed)
        gamma = None
        if self.return_gamma:
            gamma = 1.0 / np.maximum(gain, 1e-3) if gain is not None else np.ones(intensity.shape, np.float32)
        return make_item(spikes, gt.astype(np.float32) / 255.0, spec.key, lq_len, gamma)
