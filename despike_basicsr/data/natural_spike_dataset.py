"""NaturalSpikeDataset: defocused spike streams from natural photographs, with a new camera at every draw.

Training for data nobody tuned for: every draw picks a crop of a natural photograph and either its real lens-defocused
twin (DPDD ``source``) or a thin-lens rendering of its sharp version over a random depth map (spatially varying blur),
then simulates a spike camera whose light level, threshold θ, conversion η, fixed-pattern gain spread, dark current and
shot noise are all drawn from ranges that cover real cameras (docs/data.md lists the defaults). Evaluation items are
deterministic per (``seed``, index) at one fixed light level and sensor.

Every item also carries ``rate_per_unit`` = η·L/θ, the spikes per step that a unit linear intensity fires at the
drawn light L; the model uses it to compare the reconstruction with the ground truth at the right display scale
(docs/despike.md, "Exposure"); and ``photometric``, 1.0 when the target is the very picture that fired the spikes (in
focus or synthetically defocused) and 0.0 for a real DPDD pair, whose two photographs differ in exposure and
vignetting: ``train.tone_opt`` (LowFrequencyToneLoss) weighs only the first.
"""
import math
import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from despike_basicsr.data.motion import MAX_MARGIN, MovingScene, draw_motion, motion_ranges
from despike_basicsr.data.preparation import (align_sharp_to_blurred, dpdd_pairs, fit_thin_lens, list_images,
                                              read_linear_intensity, sample_seed, scoring_holdout, smooth_gain_field,
                                              to_display_uint8)
from despike_basicsr.data.scenes import synthetic_depth_map
from despike_basicsr.data.spike_lmdb_dataset import apply_augmentation, draw_augmentation, make_item, random_crop_box
from despike_basicsr.spike import lens_psf, optics
from despike_basicsr.spike.camera import simulate_sensor

#: Default sensor ranges (training draws); every one is an option of the same name.
DEFAULT_RANGES: Dict[str, Tuple[float, float]] = {
    'rate_range': (0.02, 0.6),  # mean firing rate per step (log-uniform): dim indoor to bright outdoor
    'threshold_range': (1.0, 4.0),  # θ
    'eta_range': (0.5, 1.0),  # η
    'gain_std_range': (0.0, 0.08),  # fixed-pattern gain spread (real cameras: about 0.05-0.06)
    'dark_rate_range': (0.0, 0.005),  # dark-current spikes per step
    'electrons_range': (200.0, 2000.0),  # photo-electrons per unit potential (log-uniform; fewer = more shot noise)
    'sigma_far_range': (1.5, 5.0),  # blur σ (px) at the far end of a synthetic depth map
    'sigma_near_range': (0.0, 1.0),  # blur σ (px) at the near end
    'max_rate_range': (0.95, 0.95),  # rate the brightest 0.5 % may reach (above 1: saturated highlights)
}
#: The one sensor of evaluation items (and of ``phase: val``): a first-generation camera at a mid light level.
DEFAULT_EVAL_SENSOR: Dict[str, float] = {
    'mean_rate': 0.15, 'threshold': 2.0, 'eta': 1.0, 'gain_std': 0.05, 'dark_rate': 0.0, 'electrons': 500.0
}
SOURCES = ('dpdd', 'depth', 'sharp')
#: Defaults of the signed-CoC synthetic defocus (used once ``coc_far_range`` is given): CoC diameters in pixels.
DEFAULT_COC_RANGES: Dict[str, Tuple[float, float]] = {
    'coc_near_range': (0.0, 3.0),  # |CoC| at the near end (or at the focus plane when it lies inside the scene)
    'coc_far_range': (6.0, 26.0),  # largest |CoC| in the crop
}


def _uniform(rng: np.random.Generator, bounds: Sequence[float], log: bool = False) -> float:
    lo, hi = float(bounds[0]), float(bounds[1])
    if log and lo > 0:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def draw_sensor(rng: np.random.Generator, ranges: Dict[str, Sequence[float]]) -> Dict[str, float]:
    """One random camera and light level from ``ranges`` (keys of :data:`DEFAULT_RANGES`)."""
    return {
        'mean_rate': _uniform(rng, ranges['rate_range'], log=True),
        'threshold': _uniform(rng, ranges['threshold_range']),
        'eta': _uniform(rng, ranges['eta_range']),
        'gain_std': _uniform(rng, ranges['gain_std_range']),
        'dark_rate': _uniform(rng, ranges['dark_rate_range']),
        'electrons': _uniform(rng, ranges['electrons_range'], log=True),
        'max_rate': _uniform(rng, ranges['max_rate_range']),
    }


def signed_coc_map(depth: np.ndarray, coc_near: float, coc_far: float, focus_inside: bool,
                   rng: np.random.Generator) -> np.ndarray:
    """Signed thin-lens CoC diameters (px) over a depth map:  ``c(d) = K·(1 − d_f / d)``  (negative in front of d_f).

    With the focus plane in front of the scene (``focus_inside`` false) d_f and K make |c| run from ``coc_near`` at the
    nearest depth to ``coc_far`` at the farthest (:func:`~despike_basicsr.data.preparation.fit_thin_lens`'s
    geometry); with it inside, d_f is drawn log-uniformly over the depths and K scales the largest |c| to
    ``coc_far``.
    """
    d = depth.astype(np.float64)
    near, far = float(d.min()), float(d.max()) * 1.0001
    if focus_inside:
        focus = float(math.exp(rng.uniform(math.log(near), math.log(far))))
    else:
        ratio = coc_near / coc_far
        focus = (1.0 - ratio) / (1.0 / near - ratio / far)
    shape = 1.0 - focus / d
    return shape * (coc_far / max(float(np.abs(shape).max()), 1e-9))


@DATASET_REGISTRY.register()
class NaturalSpikeDataset(data.Dataset):
    """Spike streams simulated at every draw from natural photographs, over ranges of cameras and light levels.

    Sources (one or both):
        dpdd_root (str) + split (str): DPDD layout ``{root}/{split}_c/{source,target}`` (real defocus, sharp).
        dataroot_gt (str): a folder of sharp natural images (used with synthetic depth only).

    Options:
        source_mix (dict): Probability of each source per draw, ``{dpdd: p, depth: q, sharp: 1 − p − q}`` (default
            0.5/0.5/0; ``dpdd`` falls back to ``depth`` where no blurred twin exists). ``dpdd``: spikes from the real
            defocused photograph; ``depth``: thin-lens layered defocus of the sharp photograph over
            :func:`synthetic_depth_map`, the lens fitted per draw to blur from ``sigma_near_range`` to
            ``sigma_far_range``; ``sharp``: the sharp photograph itself, in focus (the ground truth is exactly the
            scene that made the spikes).
        rate_range, threshold_range, eta_range, gain_std_range, dark_rate_range, electrons_range, sigma_far_range,
            sigma_near_range: Ranges of the training draws (:data:`DEFAULT_RANGES`).
        eval_sensor (dict): The fixed sensor of evaluation items (:data:`DEFAULT_EVAL_SENSOR`).
        gamma_probability (float): Share of training items given the perfect FPN correction γ = 1/g; the others get
            γ = 1 (no calibration), so the network learns both cases. Evaluation items: γ = 1/g when ≥ 0.5.
        display_gamma (float): Gamma of the image files (default 2.2).
        phase, gt_size, temporal_len (int or [min, max]: steps simulated), val_len, use_flip, use_rot, seed: as
            :class:`~despike_basicsr.data.simulated_spike_dataset.SimulatedSpikeDataset`.
        cache_images (bool): Keep the decoded images in memory (per worker; default true).
        align_pairs (bool): Bring each DPDD sharp image onto its defocused twin's sub-pixel position, gain and offset
            (:func:`~despike_basicsr.data.preparation.align_sharp_to_blurred`) before it is used as ground truth, so
            the network is not taught to shift or re-expose (default false).
        psf_family (str): ``gaussian`` or ``lens`` (:func:`~despike_basicsr.spike.lens_psf.draw_lens_psf`: round or
            bladed irises, bright or soft rims, cat's eyes), for the signed-CoC synthetic defocus.
        coc_near_range, coc_far_range: Setting ``coc_far_range`` switches the ``depth`` source to signed-CoC defocus
            (:data:`DEFAULT_COC_RANGES`, CoC diameters in pixels) with ``psf_family`` PSFs; with probability
            ``focus_inside_probability`` (default 0.3) the focus plane lies inside the scene, so the near side blurs
            too.
            Without it the legacy thin-lens Gaussian σ ranges apply.
        gain_field (bool): With ``dpdd`` pairs, multiply the sharp target by the smooth photometric difference between
            the two photographs (:func:`~despike_basicsr.data.preparation.smooth_gain_field`, after ``align_pairs``'
            shift), so a real pair teaches lens blur and nothing else (default false).
        exclude_scoring_holdout (bool): Leave out the DPDD pairs set aside for scoring
            (:func:`~despike_basicsr.data.preparation.scoring_holdout`; default false).
        motion_probability (float): Share of training draws that move (:mod:`despike_basicsr.data.motion`: camera
            pan, roll and zoom, an independently moving layer); the ground truth is the sharp scene at the centre
            step (default 0).
        motion (dict): Ranges of the motion (:data:`~despike_basicsr.data.motion.DEFAULT_MOTION`).
        max_rate_range: Rate the brightest 0.5 % of a draw may reach (above 1, highlights saturate).
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt
        self.train = opt.get('phase', 'train') == 'train'
        self.pairs = self._find_sources(opt)
        self.ranges = {name: tuple(opt.get(name, default)) for name, default in DEFAULT_RANGES.items()}
        for name, (lo, hi) in self.ranges.items():
            if not 0 <= lo <= hi:
                raise ValueError(f'NaturalSpikeDataset: {name} must be [min, max] with 0 <= min <= max, got {[lo, hi]}')
        if not 0 < self.ranges['rate_range'][0] and self.ranges['rate_range'][1] < 1:
            raise ValueError(f'NaturalSpikeDataset: rate_range must lie in (0, 1), got {self.ranges["rate_range"]}')
        self.eval_sensor = {**DEFAULT_EVAL_SENSOR, **(opt.get('eval_sensor') or {})}
        mix = dict(opt.get('source_mix') or {'dpdd': 0.5, 'depth': 0.5})
        unknown = set(mix) - set(SOURCES)
        if unknown or sum(mix.values()) <= 0:
            raise ValueError(f'NaturalSpikeDataset: source_mix takes {SOURCES} with positive weights, got {mix}')
        self.p_dpdd = float(mix.get('dpdd', 0.0)) / float(sum(mix.values()))
        self.gamma_probability = float(opt.get('gamma_probability', 0.5))
        self.display_gamma = float(opt.get('display_gamma', 2.2))
        self.seed = int(opt.get('seed', 0))
        lengths = opt.get('temporal_len', opt.get('val_len', 192))
        self.steps = int(max(lengths)) if isinstance(lengths, (list, tuple)) else int(lengths)
        self.val_len = int(opt.get('val_len') or self.steps)
        self.gt_size: Optional[int] = opt.get('gt_size') if self.train else None
        self.use_flip = bool(opt.get('use_flip', opt.get('use_hflip', False)))
        self.use_rot = bool(opt.get('use_rot', False))
        self.cache: Optional[Dict[int, Tuple]] = {} if opt.get('cache_images', True) else None
        self.align_pairs = bool(opt.get('align_pairs', False))
        self.psf_family = str(opt.get('psf_family', 'gaussian'))
        if self.psf_family not in lens_psf.PSF_FAMILIES:
            raise ValueError(f'NaturalSpikeDataset: psf_family must be one of {lens_psf.PSF_FAMILIES}, '
                             f'got {self.psf_family!r}')
        self.signed_coc = 'coc_far_range' in opt
        self.coc_ranges = {name: tuple(opt.get(name, default)) for name, default in DEFAULT_COC_RANGES.items()}
        if self.signed_coc and not 0 <= self.coc_ranges['coc_near_range'][1] < self.coc_ranges['coc_far_range'][0]:
            raise ValueError(f'NaturalSpikeDataset: need 0 <= coc_near_range < coc_far_range, got {self.coc_ranges}')
        self.focus_inside_probability = float(opt.get('focus_inside_probability', 0.3))
        self.p_sharp = float(mix.get('sharp', 0.0)) / float(sum(mix.values()))
        self.gain_field = bool(opt.get('gain_field', False))
        self.motion_probability = float(opt.get('motion_probability', 0.0))
        if not 0.0 <= self.motion_probability <= 1.0:
            raise ValueError(
                f'NaturalSpikeDataset: motion_probability must lie in [0, 1], got {self.motion_probability}')
        self.motion_ranges = motion_ranges(opt.get('motion'))

    @staticmethod
    def _find_sources(opt: Dict[str, Any]) -> List[Tuple[Optional[str], str]]:
        """``(blurred or None, sharp)`` file pairs."""
        pairs: List[Tuple[Optional[str], str]] = []
        if opt.get('dpdd_root'):
            split = opt.get('split') or ('train' if opt.get('phase', 'train') == 'train' else 'val')
            found = list(dpdd_pairs(opt['dpdd_root'], split))
            held = set(scoring_holdout(found)) if opt.get('exclude_scoring_holdout', False) else set()
            pairs += [pair for pair in found if pair not in held]
        if opt.get('dataroot_gt'):
            pairs += [(None, sharp) for sharp in list_images(opt['dataroot_gt'])]
        if not pairs:
            raise KeyError('NaturalSpikeDataset needs option "dpdd_root" (DPDD layout) and/or "dataroot_gt" (a folder '
                           'of sharp images)')
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        blurred_path, sharp_path = self.pairs[index]
        sharp = read_linear_intensity(sharp_path, self.display_gamma)
        blurred = read_linear_intensity(blurred_path, self.display_gamma) if blurred_path else None
        if blurred is not None and blurred.shape != sharp.shape:
            raise ValueError(f'{blurred_path} is {blurred.shape} but its sharp twin {sharp_path} is {sharp.shape}')
        if blurred is not None and self.align_pairs:
            sharp, _ = align_sharp_to_blurred(sharp, blurred)
        if blurred is not None and self.gain_field:
            sharp = sharp * smooth_gain_field(sharp, blurred)
        loaded = (sharp, blurred)
        if self.cache is not None:
            self.cache[index] = loaded
        return loaded

    @staticmethod
    def _render_with_margin(sharp: np.ndarray, box: Tuple[int, int, int, int], margin: int,
                            render: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``render`` of ``box`` grown by ``margin`` pixels (within the image), cropped back: no border effects."""
        y0, y1, x0, x1 = box
        height, width = sharp.shape
        ey0, ey1, ex0, ex1 = max(y0 - margin, 0), min(y1 + margin, height), max(x0 - margin, 0), min(x1 + margin, width)
        return render(sharp[ey0:ey1, ex0:ex1])[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]

    def _synthetic_defocus(self, sharp: np.ndarray, box: Tuple[int, int, int, int],
                           rng: np.random.Generator) -> np.ndarray:
        """Thin-lens layered defocus of ``box`` over a random depth map (a margin avoids border effects)."""
        sigma_near = _uniform(rng, self.ranges['sigma_near_range'])
        sigma_far = max(_uniform(rng, self.ranges['sigma_far_range']), sigma_near + 0.25)

        def render(region: np.ndarray) -> np.ndarray:
            depth = synthetic_depth_map(*region.shape, rng)
            lens = fit_thin_lens(float(depth.min()), float(depth.max()) * 1.0001, sigma_near, sigma_far)
            return optics.render_depth_defocus(region, depth, lens, num_layers=12)

        return self._render_with_margin(sharp, box, int(math.ceil(3 * sigma_far)) + 2, render)

    def _signed_coc_defocus(self, sharp: np.ndarray, box: Tuple[int, int, int, int],
                            rng: np.random.Generator) -> np.ndarray:
        """Layered defocus of ``box`` with :attr:`psf_family` PSFs over a random depth map and thin-lens CoC map."""
        coc_near = _uniform(rng, self.coc_ranges['coc_near_range'])
        coc_far = _uniform(rng, self.coc_ranges['coc_far_range'])
        height, width = sharp.shape
        field = ((box[0] + box[1]) / height - 1.0, (box[2] + box[3]) / width - 1.0)  # box centre, in [-1, 1]

        def render(region: np.ndarray) -> np.ndarray:
            depth = synthetic_depth_map(*region.shape, rng)
            signed = signed_coc_map(depth, coc_near, coc_far, rng.random() < self.focus_inside_probability, rng)
            psf = lens_psf.draw_lens_psf(rng, field).kernel if self.psf_family == 'lens' else \
                lens_psf.gaussian_psf_for_coc
            return lens_psf.render_layered_defocus(region, signed, psf, num_layers=12)

        return self._render_with_margin(sharp, box, int(math.ceil(0.5 * coc_far)) + 4, render)

    def _draw_source(self, has_twin: bool, rng: np.random.Generator) -> str:
        """Which picture the camera sees: ``dpdd`` (the real defocused twin), ``depth`` (synthetic defocus) or
        ``sharp`` (in focus); evaluation items always see the twin when there is one."""
        if not self.train:
            return 'dpdd' if has_twin else 'depth'
        draw = rng.random()
        if draw < self.p_sharp:
            return 'sharp'
        if draw < self.p_sharp + self.p_dpdd and has_twin:
            return 'dpdd'
        return 'depth'

    def _scene(self, source: str, sharp: np.ndarray, blurred: Optional[np.ndarray], box: Tuple[int, int, int, int],
               rng: np.random.Generator) -> np.ndarray:
        """The linear picture the camera sees over ``box``."""
        if source == 'dpdd':
            return blurred[box[0]:box[1], box[2]:box[3]]
        if source == 'sharp':
            return sharp[box[0]:box[1], box[2]:box[3]]
        if self.signed_coc:
            return self._signed_coc_defocus(sharp, box, rng)
        return self._synthetic_defocus(sharp, box, rng)

    def _moving_box(self, height: int, width: int, key: str) -> Tuple[int, int, int, int]:
        """A crop grown by :data:`~despike_basicsr.data.motion.MAX_MARGIN` on every side, inside the picture."""
        size = self.gt_size + 2 * MAX_MARGIN
        if height < size or width < size:
            raise ValueError(f'sample {key!r} is {height}x{width} (HxW): a moving crop needs {size} px '
                             f'(gt_size {self.gt_size} + 2 x {MAX_MARGIN})')
        return random_crop_box(height, width, size, key)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        seed = random.getrandbits(32) if self.train else sample_seed(self.seed, 'natural-eval', index)
        rng = np.random.default_rng(seed)
        sharp, blurred = self._load(index)
        height, width = sharp.shape
        key = f'{index:04d}'
        source = self._draw_source(blurred is not None, rng)
        moving = self.train and self.gt_size is not None and rng.random() < self.motion_probability
        steps = self.steps if self.train else self.val_len
        if moving:
            box = self._moving_box(height, width, key)
        else:
            box = random_crop_box(height, width, self.gt_size, key) if self.train else (0, height, 0, width)
        intensity = np.clip(self._scene(source, sharp, blurred, box, rng), 0.0, None)
        gt_linear = sharp[box[0]:box[1], box[2]:box[3]]
        flips = draw_augmentation(self.use_flip, self.use_rot) if self.train else (False, False, False)
        intensity, gt_linear = apply_augmentation(intensity, *flips), apply_augmentation(gt_linear, *flips)
        sensor = draw_sensor(rng, self.ranges) if self.train else self.eval_sensor
        if moving:
            path = draw_motion(rng, self.motion_ranges, self.gt_size, steps - steps // 2)
            scene = MovingScene(intensity, gt_linear, self.gt_size, path, steps // 2)
            gt_linear = scene.target()
            spikes, gain, rate_per_unit = simulate_sensor(scene.as_intensity(), sensor, steps, seed,
                                                          reference=scene.reference())
        else:
            spikes, gain, rate_per_unit = simulate_sensor(intensity, sensor, steps, seed)
        gt = to_display_uint8(gt_linear, self.display_gamma).astype(np.float32) / 255.0
        with_gamma = (rng.random() < self.gamma_probability) if self.train else self.gamma_probability >= 0.5
        gamma = 1.0 / np.maximum(gain, 1e-3) if with_gamma else np.ones_like(gain)
        item = make_item(spikes, gt, key, steps, gamma)
        item['rate_per_unit'] = float(rate_per_unit)
        item['photometric'] = float(source != 'dpdd')  # the target is the scene that fired (tone_opt's weight)
        return item
