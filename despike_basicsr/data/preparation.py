"""Turning images into defocused spike streams: the shared code behind the preparation scripts and the datasets.

Intensity and gamma (see docs/data.md):

- Image files are display-referred (sRGB-like). A pixel value v in [0, 1] (8-bit / 255, 16-bit / 65535) is linearised
  per channel with the plain power law ``v ** 2.2`` (``spike.optics.display_to_linear``), and the single-channel
  linear intensity is the Rec. 709 luminance ``0.2126 R + 0.7152 G + 0.0722 B`` of the linear channels: a monochrome
  sensor integrates linear light. The readers (images, depth maps) are in ``despike_basicsr.spike.images``, shared
  with ``despike-simulate``.
- Spikes are simulated from the linear intensity of the blurred image; blur, downscaling and depth compositing happen
  in linear light too, because that is where optics add up photons.
- The ground truth is the display-referred grayscale of the sharp image, ``linear_to_display(luminance)``, stored as
  uint8 (8-bit training, as BasicSR's PSNR/SSIM expect).

Pairs are matched by sorted file name order (DPDD's blurred and sharp files have different names), and counts must
agree. Every sample gets its own seed derived from the data set seed, a tag (e.g. the split) and its index, so a
preparation is reproducible and independent of processing order.
"""
import math
import os
import os.path as osp
import re
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from despike_basicsr.data.spike_lmdb import SpikeLMDBWriter
from despike_basicsr.errors import DespikeUserError
from despike_basicsr.errors import run_cli as run_with_user_errors
from despike_basicsr.spike import camera, optics
# The image and depth readers live in spike/images.py (shared with the command line); imported here for the callers.
from despike_basicsr.spike.images import (DEFAULT_DEPTH_SCALE, DEPTH_EXTENSIONS, IMAGE_EXTENSIONS,  # noqa: F401
                                          LUMINANCE_WEIGHTS, ImageReadError, display_to_linear_luminance, read_depth,
                                          read_image, read_linear_intensity)

MODES = ('dpdd', 'thinlens', 'depth')
FPN_MODES = ('sensor', 'per-sample', 'none')
#: Uniform linear intensity at which the saved sensor FPN's response is evaluated (a calibration at mid-grey light).
FPN_REFERENCE_INTENSITY = 0.5


class PairingError(DespikeUserError, ValueError):
    """Source and target folders whose images cannot be paired."""


# ----------------------------------------------------------------------------------------------------------------------
# Reading images


def list_images(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Image files of a folder (not recursive), sorted by file name.

    Raises:
        FileNotFoundError: If the folder does not exist.
        PairingError: If it holds no image file.
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'image folder {folder} does not exist')
    files = sorted(name for name in os.listdir(folder) if name.lower().endswith(tuple(extensions)))
    if not files:
        raise PairingError(f'no image files ({", ".join(extensions)}) in {folder}')
    return [osp.join(folder, name) for name in files]


def pair_by_sorted_order(sources: Sequence[str], targets: Sequence[str], source_dir: str = 'source',
                         target_dir: str = 'target') -> List[Tuple[str, str]]:
    """Pair two file lists by sorted order (file names may differ, as in DPDD).

    Raises:
        PairingError: If the counts differ.
    """
    if len(sources) != len(targets):
        raise PairingError(f'{source_dir} has {len(sources)} images but {target_dir} has {len(targets)}; pairs are '
                           'matched by sorted file order, so the counts must agree')
    return list(zip(sorted(sources), sorted(targets)))


def dpdd_pairs(root: str, split: str) -> List[Tuple[str, str]]:
    """(blurred, sharp) file pairs of a DPDD split: ``{root}/{split}_c/source`` and ``{root}/{split}_c/target``.

    Raises:
        FileNotFoundError: If the split folders are missing.
        PairingError: If the folders are empty or hold different numbers of images.
    """
    if split not in ('train', 'val', 'test'):
        raise ValueError(f'DPDD split must be train, val or test, got {split!r}')
    source_dir = osp.join(root, f'{split}_c', 'source')
    target_dir = osp.join(root, f'{split}_c', 'target')
    for folder in (source_dir, target_dir):
        if not osp.isdir(folder):
            raise FileNotFoundError(f'{folder} does not exist; expected the DPDD layout '
                                    f'{{root}}/{split}_c/{{source,target}}')
    return pair_by_sorted_order(list_images(source_dir), list_images(target_dir), source_dir, target_dir)


def resize(image: np.ndarray, scale: float, nearest: bool = False) -> np.ndarray:
    """Rescale by ``scale``: area averaging when shrinking (light adds up), nearest for depth maps."""
    if scale == 1.0:
        return image
    if scale <= 0:
        raise ValueError(f'scale must be positive, got {scale}')
    height, width = image.shape[:2]
    size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
    if nearest:
        method = cv2.INTER_NEAREST
    else:
        method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=method)


# ----------------------------------------------------------------------------------------------------------------------
# Optics helpers


def _inverse_coc_to_sigma(sigma: float) -> float:
    """Smallest CoC diameter in pixels whose Gaussian σ (``optics.coc_to_sigma``) reaches ``sigma`` (bisection)."""
    lo, hi = 0.0, 1.0
    while float(optics.coc_to_sigma(hi)) < sigma:
        hi *= 2.0
        if hi > 1e6:
            raise ValueError(f'no circle of confusion gives sigma={sigma}')
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(optics.coc_to_sigma(mid)) < sigma:
            lo = mid
        else:
            hi = mid
    return hi


def fit_thin_lens(depth_near: float, depth_far: float, sigma_near: float, sigma_far: float,
                  focal_length: float = 0.05, f_number: float = 2.0) -> optics.ThinLens:
    """A thin lens focused in front of the scene whose blur grows from ``sigma_near`` to ``sigma_far`` pixels.

    With the focus distance d_f closer than every scene point, c(d) = K (1 − d_f/d) grows with depth. Matching the
    CoC diameters c_near, c_far (inverted from the σ rule) at the two depths gives
    ``d_f = (1 − ρ) / (1/d_near − ρ/d_far)`` with ρ = c_near / c_far, and the pixel pitch sets K.

    Args:
        depth_near: Nearest depth in meters.
        depth_far: Farthest depth in meters.
        sigma_near: Gaussian σ in pixels wanted at ``depth_near`` (the smallest blur).
        sigma_far: Gaussian σ in pixels wanted at ``depth_far`` (the largest blur).
        focal_length: Focal length in meters.
        f_number: Aperture f-number.

    Raises:
        ValueError: If the depths or σ values are not increasing, or the geometry is impossible.
    """
    if not 0 < depth_near < depth_far:
        raise ValueError(f'need 0 < depth_near < depth_far, got {depth_near}, {depth_far}')
    if not 0 <= sigma_near < sigma_far:
        raise ValueError(f'need 0 <= sigma_near < sigma_far, got {sigma_near}, {sigma_far}')
    coc_near, coc_far = _inverse_coc_to_sigma(sigma_near), _inverse_coc_to_sigma(sigma_far)
    ratio = coc_near / coc_far
    focus = (1.0 - ratio) / (1.0 / depth_near - ratio / depth_far)
    if focus <= focal_length * 1.01:
        raise ValueError(f'depths {depth_near}-{depth_far} m are too close for a {focal_length} m lens')
    aperture = focal_length / f_number
    coc_far_m = aperture * focal_length * (depth_far - focus) / (depth_far * (focus - focal_length))
    pitch = coc_far_m / coc_far
    return optics.ThinLens(focal_length=focal_length, f_number=f_number, focus_distance=float(focus),
                           pixel_pitch=float(pitch))


def lens_params(lens: optics.ThinLens) -> Dict[str, float]:
    """A lens as plain JSON numbers (stored with every sample)."""
    return {name: float(getattr(lens, name)) for name in ('focal_length', 'f_number', 'focus_distance', 'pixel_pitch')}


# ----------------------------------------------------------------------------------------------------------------------
# Simulation


@dataclass
class SimulationConfig:
    """Everything that decides how an image becomes a spike stream (stored with every sample).

    Attributes:
        mode: ``dpdd`` (spikes from the given blurred image), ``thinlens`` (uniform Gaussian blur of the sharp image,
            σ drawn from ``sigma_range``) or ``depth`` (depth-varying thin-lens defocus of the sharp image).
        steps: Stream length T.
        threshold: Firing threshold θ.
        eta: Photoelectric conversion η.
        gain_std: Standard deviation of the per-pixel gain (fixed pattern noise); 0 disables it.
        dark_rate: Mean per-step dark-current input.
        dark_std: Per-pixel spread of the dark current.
        shot_noise: Add Poisson shot noise.
        fpn: ``sensor`` (one pattern for the whole data set, saved as ``fpn.npz`` in the LMDB), ``per-sample`` (a new
            pattern per sample) or ``none``.
        sigma_range: Gaussian σ range in pixels (``thinlens``: sampled per image; ``depth`` without a lens: the blur
            span the lens is fitted to).
        lens: Explicit thin lens for ``depth`` mode (``focal_length``, ``f_number``, ``focus_distance``,
            ``pixel_pitch`` in meters); ``None`` fits one per image to ``sigma_range``.
        scale: Resize factor applied to every image before blurring and simulating.
        gamma: Display gamma of the image files.
        depth_scale: Meters per unit of depth maps stored as images.
        seed: Data set seed.
    """

    mode: str = 'dpdd'
    steps: int = 256
    threshold: float = 2.0
    eta: float = 1.0
    gain_std: float = 0.058
    dark_rate: float = 0.0
    dark_std: float = 0.0
    shot_noise: bool = False
    fpn: str = 'sensor'
    sigma_range: Tuple[float, float] = (1.0, 4.0)
    lens: Optional[Dict[str, float]] = None
    scale: float = 1.0
    gamma: float = 2.2
    depth_scale: float = DEFAULT_DEPTH_SCALE
    seed: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        if self.fpn not in FPN_MODES:
            raise ValueError(f'fpn must be one of {FPN_MODES}, got {self.fpn!r}')
        if self.steps < 1:
            raise ValueError(f'steps must be at least 1, got {self.steps}')
        if self.threshold <= 0 or self.eta <= 0:
            raise ValueError(f'threshold and eta must be positive, got {self.threshold}, {self.eta}')
        if self.gain_std < 0 or self.dark_std < 0 or self.dark_rate < 0:
            raise ValueError('gain_std, dark_rate and dark_std must not be negative')
        lo, hi = self.sigma_range
        if not 0 <= lo <= hi:
            raise ValueError(f'sigma_range must satisfy 0 <= a <= b, got {self.sigma_range}')
        if self.scale <= 0:
            raise ValueError(f'scale must be positive, got {self.scale}')

    @property
    def has_fpn(self) -> bool:
        return self.fpn != 'none' and (self.gain_std > 0 or self.dark_rate > 0 or self.dark_std > 0)


def sample_seed(seed: int, tag: str, index: int) -> int:
    """A per-sample seed from the data set seed, a tag (e.g. the split) and the sample index (order independent)."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(tag.encode()), int(index)]).generate_state(1)
    return int(state[0])


def sensor_seed(seed: int) -> int:
    """Seed of the data set's simulated sensor FPN: the same for every split prepared with the same seed."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(b'sensor-fpn')]).generate_state(1)[0])


def defocus(sharp: np.ndarray, config: SimulationConfig, rng: np.random.Generator,
            blurred: Optional[np.ndarray] = None, depth: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Dict]:
    """The blurred linear intensity the camera sees, and the blur parameters to store.

    Args:
        sharp: Sharp linear intensity (H, W).
        config: Mode and blur settings.
        rng: Random source for σ (``thinlens``).
        blurred: Blurred linear intensity (``dpdd`` mode).
        depth: Depth map in meters (``depth`` mode).

    Returns:
        ``(blurred_intensity, params)``.
    """
    if config.mode == 'dpdd':
        if blurred is None:
            raise ValueError('mode dpdd needs a blurred image')
        return blurred, {'blur': 'dpdd'}
    if config.mode == 'thinlens':
        sigma = float(rng.uniform(*config.sigma_range))
        return optics.gaussian_blur(sharp, sigma).astype(np.float32), {'blur': 'gaussian', 'sigma': sigma}
    if depth is None:
        raise ValueError('mode depth needs a depth map')
    if config.lens is not None:
        lens = optics.ThinLens(**config.lens)
    else:
        near, far = np.percentile(depth, [2.0, 98.0])
        if far <= near * 1.001:  # flat scene: a uniform blur in the middle of the range
            far = near * 1.5
        lens = fit_thin_lens(float(near), float(far), *config.sigma_range)
    sigma_map = lens.sigma_px(depth)
    params = {'blur': 'thinlens', 'lens': lens_params(lens), 'sigma_min': float(np.min(sigma_map)),
              'sigma_max': float(np.max(sigma_map))}
    return optics.render_depth_defocus(sharp, depth, lens).astype(np.float32), params


def simulate_packed(intensity: np.ndarray, config: SimulationConfig, seed: int, gain: Optional[np.ndarray] = None,
                    dark: Optional[np.ndarray] = None) -> np.ndarray:
    """Time-packed spikes ``(ceil(T/8), H, W)`` of a static linear intensity (integrate-and-fire)."""
    return camera.simulate(np.clip(intensity, 0.0, 1.0).astype(np.float32), config.steps, threshold=config.threshold,
                           eta=config.eta, gain=gain, dark=dark, shot_noise=config.shot_noise, seed=seed, packed=True)


def to_display_uint8(linear: np.ndarray, gamma: float = 2.2) -> np.ndarray:
    """Display-referred uint8 grayscale of a linear intensity (the stored ground truth)."""
    display = optics.linear_to_display(np.clip(linear, 0.0, 1.0), gamma)
    return np.clip(np.round(display * 255.0), 0, 255).astype(np.uint8)


def sensor_fpn_calibration(gain: np.ndarray, dark: np.ndarray, config: SimulationConfig):
    """The FPN calibration a uniform-light recording of the simulated sensor would give (saved as ``fpn.npz``).

    Response at linear intensity I_ref, dark rate removed: ``R = η·g·I_ref / θ`` spikes per step; the dark firing
    rate is ``dark / θ``; ``γ = R_ref / R`` with ``R_ref = median(R)`` (``spike.fpn.fpn_correction``).
    """
    from despike_basicsr.spike import fpn as spike_fpn  # only needed when writing an FPN file

    response = (config.eta * np.maximum(gain, 1e-3) * FPN_REFERENCE_INTENSITY / config.threshold).astype(np.float32)
    reference = float(np.median(response))
    return spike_fpn.FPNCalibration(response=response,
                                    gamma=spike_fpn.fpn_correction(response, reference).astype(np.float32),
                                    dark=(dark / config.threshold).astype(np.float32), bad=np.zeros(gain.shape, bool),
                                    ref=reference)


@dataclass
class SampleSpec:
    """One sample to prepare: a key plus either files or a loader returning arrays.

    Attributes:
        key: LMDB key.
        sharp_path: Sharp image file.
        blurred_path: Blurred image file (``dpdd`` mode).
        depth_path: Depth map file (``depth`` mode).
        loader: Alternative to files: returns ``(sharp_linear, blurred_linear or None, depth or None)``.
        index: The sample's index in its split, mixed into its seed; default its place in the prepared list (a
            subset of a split, :func:`select_scoring_holdout`, keeps the full split's streams by giving it).
    """

    key: str
    sharp_path: Optional[str] = None
    blurred_path: Optional[str] = None
    depth_path: Optional[str] = None
    loader: Optional[Callable[[], Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]]] = None
    index: Optional[int] = None

    def load(self, config: SimulationConfig) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """Read (and rescale) the inputs as linear intensity / meters."""
        if self.loader is not None:
            sharp, blurred, depth = self.loader()
        else:
            sharp = read_linear_intensity(self.sharp_path, config.gamma)
            blurred = read_linear_intensity(self.blurred_path, config.gamma) if self.blurred_path else None
            depth = read_depth(self.depth_path, config.depth_scale) if self.depth_path else None
        for name, other in (('blurred image', blurred), ('depth map', depth)):
            if other is not None and other.shape != sharp.shape:
                source = self.blurred_path if name == 'blurred image' else self.depth_path
                raise PairingError(f'sample {self.key}: {name} {source or ""} is {other.shape[1]}x{other.shape[0]} '
                                   f'but the sharp image {self.sharp_path or ""} is {sharp.shape[1]}x{sharp.shape[0]}')
        sharp = resize(sharp, config.scale)
        blurred = resize(blurred, config.scale) if blurred is not None else None
        depth = resize(depth, config.scale, nearest=True) if depth is not None else None
        return sharp, blurred, depth

    def provenance(self) -> Dict[str, str]:
        """File names stored with the sample, so a stream can be traced back to its source."""
        names = {'sharp_file': self.sharp_path, 'blurred_file': self.blurred_path, 'depth_file': self.depth_path}
        return {name: osp.basename(path) for name, path in names.items() if path}


def safe_key(index: int, name: str) -> str:
    """An LMDB key from an index and a file name: ``0007_IMG_1234``."""
    # No dots: BasicSR takes the image name as the part before the first extension dot.
    stem = re.sub(r'[^A-Za-z0-9_\-]', '_', osp.splitext(osp.basename(name))[0])
    return f'{index:04d}_{stem}'


def prepare_lmdb(samples: Iterable[SampleSpec],
                 out: str,
                 config: SimulationConfig,
                 tag: str = 'train',
                 overwrite: bool = False,
                 progress: bool = True,
                 total: Optional[int] = None) -> str:
    """Simulate every sample and write the spike LMDB (atomically; nothing is left behind on failure).

    Args:
        samples: What to prepare.
        out: Output ``.lmdb`` folder.
        config: Simulation settings.
        tag: Mixed into the per-sample seeds (use the split name) so splits get independent noise.
        overwrite: Replace an existing ``out``.
        progress: Show a tqdm progress bar.
        total: Number of samples, for the progress bar when ``samples`` has no length.

    Returns:
        The output path.
    """
    config.validate()
    samples = list(samples)
    with SpikeLMDBWriter(out, overwrite=overwrite) as writer:
        sensor: Optional[Tuple[np.ndarray, np.ndarray]] = None
        bar = tqdm(samples, total=total or len(samples), desc=f'{osp.basename(out)}', unit='sample',
                   disable=not progress)
        for index, spec in enumerate(bar):
            seed = sample_seed(config.seed, tag, index if spec.index is None else spec.index)
            rng = np.random.default_rng(seed)
            sharp, blurred, depth = spec.load(config)
            intensity, blur_params = defocus(sharp, config, rng, blurred=blurred, depth=depth)
            gain = dark = None
            if config.has_fpn:
                if config.fpn == 'sensor':
                    if sensor is None:
                        sensor = camera.sample_fpn(sharp.shape, config.gain_std, config.dark_rate, config.dark_std,
                                                   seed=sensor_seed(config.seed))
                    elif sensor[0].shape != sharp.shape:
                        raise ValueError(f'sample {spec.key} is {sharp.shape[1]}x{sharp.shape[0]} but the first sample '
                                         f'was {sensor[0].shape[1]}x{sensor[0].shape[0]}; one simulated sensor (fpn '
                                         'sensor) needs equal image sizes: use --fpn per-sample or --fpn none')
                    gain, dark = sensor
                else:
                    gain, dark = camera.sample_fpn(sharp.shape, config.gain_std, config.dark_rate, config.dark_std,
                                                   seed=seed + 1)
            packed = simulate_packed(intensity, config, seed, gain, dark)
            params = sample_params(config, seed, blur_params, spec.provenance())
            # the defocused image the camera saw, display-referred like the ground truth: the target of a learned
            # spike front end's own training stage (SpikeFrontEndModel)
            writer.add(spec.key, to_display_uint8(sharp, config.gamma), params, packed=packed, length=config.steps,
                       blurred=to_display_uint8(intensity, config.gamma))
        if config.has_fpn and config.fpn == 'sensor' and sensor is not None:
            from despike_basicsr.spike import fpn as spike_fpn
            spike_fpn.save_fpn(writer.staging_path('fpn.npz'), sensor_fpn_calibration(*sensor, config))
    return writer.path


def sample_params(config: SimulationConfig, seed: int, blur_params: Dict[str, Any],
                  provenance: Dict[str, str]) -> Dict[str, Any]:
    """Parameters stored per sample: θ, η, FPN settings, noise, seed, blur (σ or lens) and source files."""
    settings = asdict(config)
    stored = ('mode', 'steps', 'threshold', 'eta', 'gain_std', 'dark_rate', 'dark_std', 'shot_noise', 'scale', 'gamma')
    params = {name: settings[name] for name in stored}
    params.update(fpn=config.fpn if config.has_fpn else 'none', seed=seed, dataset_seed=config.seed)
    if config.has_fpn:
        params['fpn_seed'] = sensor_seed(config.seed) if config.fpn == 'sensor' else seed + 1
    params.update(blur_params)
    params.update(provenance)
    params.update(config.extra)
    return params


# ----------------------------------------------------------------------------------------------------------------------
# Command-line helpers shared by scripts/prepare_dpdd.py, scripts/pack_folder.py and scripts/make_demo_dataset.py


def add_simulation_arguments(parser, default_mode: Optional[str] = 'dpdd', modes: Sequence[str] = MODES) -> None:
    """Add the simulation options every preparation script shares (``--steps``, ``--threshold``, ...)."""
    defaults = SimulationConfig()
    parser.add_argument('--out', required=True, help='output folder, ending with .lmdb')
    parser.add_argument('--mode', choices=modes, default=default_mode,
                        help='dpdd: spikes from the blurred image; thinlens: Gaussian blur of the sharp image with '
                        'sigma from --sigma-range; depth: thin-lens defocus from depth maps')
    parser.add_argument('--steps', type=int, default=defaults.steps, help='stream length T (default %(default)s)')
    parser.add_argument('--seed', type=int, default=defaults.seed, help='data set seed (default %(default)s)')
    parser.add_argument('--threshold', type=float, default=defaults.threshold, help='firing threshold theta')
    parser.add_argument('--eta', type=float, default=defaults.eta, help='photoelectric conversion eta')
    parser.add_argument('--gain-std', type=float, default=defaults.gain_std,
                        help='per-pixel gain spread (FPN); 0 disables it (default %(default)s)')
    parser.add_argument('--dark-rate', type=float, default=defaults.dark_rate, help='mean dark input per step')
    parser.add_argument('--dark-std', type=float, default=defaults.dark_std, help='per-pixel dark input spread')
    parser.add_argument('--fpn', choices=FPN_MODES, default=defaults.fpn,
                        help='sensor: one simulated sensor for the whole set, saved as <out>/fpn.npz (default); '
                        'per-sample: a new pattern per sample; none')
    parser.add_argument('--shot-noise', action='store_true', help='add Poisson shot noise')
    parser.add_argument('--sigma-range', type=float, nargs=2, metavar=('A', 'B'), default=defaults.sigma_range,
                        help='Gaussian sigma range in pixels (thinlens: drawn per image; depth without a lens: the '
                        'blur span a lens is fitted to) (default %(default)s)')
    parser.add_argument('--scale', type=float, default=defaults.scale,
                        help='resize factor applied before blurring/simulating, e.g. 0.25 (default %(default)s)')
    parser.add_argument('--gamma', type=float, default=defaults.gamma, help='display gamma of the image files')
    parser.add_argument('--limit', type=int, default=None, help='only the first N samples (quick tries)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def config_from_args(args, **overrides: Any) -> SimulationConfig:
    """A validated :class:`SimulationConfig` from parsed :func:`add_simulation_arguments` options."""
    config = SimulationConfig(mode=args.mode, steps=args.steps, threshold=args.threshold, eta=args.eta,
                              gain_std=args.gain_std, dark_rate=args.dark_rate, dark_std=args.dark_std,
                              shot_noise=args.shot_noise, fpn=args.fpn, sigma_range=tuple(args.sigma_range),
                              scale=args.scale, gamma=args.gamma, seed=args.seed)
    for name, value in overrides.items():
        setattr(config, name, value)
    config.validate()
    return config


def run_cli(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None) -> int:
    """Run a data-preparation script's ``main`` through :func:`despike_basicsr.errors.run_cli`: bad input ends with one
    line ``SCRIPT: error: ...`` on stderr (SCRIPT: the file name of ``main``'s script, without ``.py``) and exit
    status 2. The preparation code checks its arguments with ``ValueError``/``KeyError``, which count as user errors
    here; Ctrl-C ends with status 130."""
    import inspect
    import sys

    prog = osp.splitext(osp.basename(inspect.getsourcefile(main) or sys.argv[0]))[0]
    try:
        return run_with_user_errors(prog, lambda: main(argv), also=(ValueError, KeyError))
    except KeyboardInterrupt:
        print('interrupted: no output was written', file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------------------------------------
# DPDD pair alignment


def align_sharp_to_blurred(sharp: np.ndarray,
                           blurred: np.ndarray,
                           smoothing: float = 4.0,
                           max_shift: float = 4.0,
                           exposure_smoothing: float = 8.0) -> Tuple[np.ndarray, Dict[str, float]]:
    """Bring a sharp photograph onto its defocused twin's position and exposure (DPDD pairs disagree on both).

    The sub-pixel shift t comes from ECC maximisation (cv2.findTransformECC, translation only: invariant to gain and
    offset, sub-pixel accurate where phase correlation of smooth images is not) on band-passed images (a Gaussian of
    ``smoothing`` px minus one of ``exposure_smoothing`` px, so that neither the defocus nor slow shading steers it).
    The exposure is one linear gain, least squares through the origin on both images smoothed by
    ``exposure_smoothing`` px:  ``a = Σ B_e·S_e / Σ S_e²``  (defocus moves light around, it does not change the low
    frequencies, and a gain is what an exposure difference is; an affine fit's offset crushes the blacks once shown
    through the display gamma). The sharp image is returned as ``a·S(x − t)``. A shift beyond ``max_shift`` px or a
    gain outside [0.5, 2] is not trusted and left out (reported as 0 / 1).

    Measured on the 4 DPDD val and 20 train pairs (display values smoothed by 4 px, photograph against target): the
    gain raises the mean PSNR from 31.14 to 33.86 dB; the shifts (median about 0.2 px) change it by under 0.1 dB.

    Args:
        sharp: (H, W) linear sharp image.
        blurred: (H, W) linear defocused image of the same scene.
        smoothing: σ in pixels of the band-pass's fine end (shift).
        max_shift: Largest shift accepted.
        exposure_smoothing: σ in pixels of the smoothing before the gain is fitted (and the band-pass's coarse end).

    Returns:
        ``(aligned sharp (H, W) float32 ≥ 0, {'dy', 'dx', 'gain'})``.
    """
    if sharp.shape != blurred.shape:
        raise ValueError(f'align_sharp_to_blurred: shapes differ, {sharp.shape} and {blurred.shape}')

    def band_pass(image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float32)
        return cv2.GaussianBlur(image, (0, 0), smoothing) - cv2.GaussianBlur(image, (0, 0), exposure_smoothing)

    s, b = band_pass(sharp), band_pass(blurred)
    warp = np.eye(2, 3, dtype=np.float32)
    try:  # finds t with b(x) ≈ s(x − t)
        _, warp = cv2.findTransformECC(s, b, warp, cv2.MOTION_TRANSLATION,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6), None, 1)
        dx, dy = float(warp[0, 2]), float(warp[1, 2])
    except cv2.error:  # no convergence (a flat image): keep the geometry
        dx = dy = 0.0
    if math.hypot(dx, dy) > max_shift:
        dx = dy = 0.0
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    shifted = cv2.warpAffine(sharp.astype(np.float32), shift, s.shape[::-1], flags=cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REFLECT)
    s_low = cv2.GaussianBlur(shifted, (0, 0), exposure_smoothing).astype(np.float64)
    b_low = cv2.GaussianBlur(blurred.astype(np.float32), (0, 0), exposure_smoothing).astype(np.float64)
    denominator = float((s_low * s_low).sum())
    gain = float((s_low * b_low).sum()) / denominator if denominator > 0 else 1.0
    if not 0.5 <= gain <= 2.0:
        gain = 1.0
    aligned = np.clip(gain * shifted, 0.0, None).astype(np.float32)
    return aligned, {'dy': float(dy), 'dx': float(dx), 'gain': float(gain)}


def smooth_gain_field(sharp: np.ndarray, blurred: np.ndarray, smoothing: float = 24.0, order: int = 2) -> np.ndarray:
    """The smooth photometric difference between a pair's photographs: ``G(x, y) = exp(Σ_{i+j≤n} c_ij·xⁱ·yʲ)``.

    DPDD's two photographs are taken one after the other at different apertures, so vignetting and exposure differ
    smoothly over the frame. Defocus moves light only by a few pixels, so after a Gaussian of ``smoothing`` px (well
    above the largest circle of confusion) the ratio of the two images is their photometric difference alone; its
    logarithm is fitted by a polynomial of degree ``order`` in the normalised coordinates (weighted by the smoothed
    brightness, so that dark regions, where the ratio is noise, count less). ``G·sharp`` is then photometrically the
    photograph that made the spikes, and a network trained on it cannot learn to re-expose or re-shade.

    Args:
        sharp: (H, W) linear sharp image.
        blurred: (H, W) linear defocused image of the same scene.
        smoothing: σ in pixels of the smoothing before the ratio.
        order: Degree of the polynomial (0: one global gain).

    Returns:
        (H, W) float32 gain field G (clipped to [0.5, 2]).
    """
    if sharp.shape != blurred.shape:
        raise ValueError(f'smooth_gain_field: shapes differ, {sharp.shape} and {blurred.shape}')
    if order < 0:
        raise ValueError(f'smooth_gain_field: order must be >= 0, got {order}')
    s = cv2.GaussianBlur(sharp.astype(np.float32), (0, 0), smoothing)
    b = cv2.GaussianBlur(blurred.astype(np.float32), (0, 0), smoothing)
    height, width = sharp.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    yy, xx = 2.0 * yy / max(height - 1, 1) - 1.0, 2.0 * xx / max(width - 1, 1) - 1.0
    step = max(1, int(smoothing // 2))  # the smoothed images are smooth: a coarse grid of samples is enough
    sample = (slice(None, None, step), slice(None, None, step))
    floor = 1e-3 * max(float(s.max()), 1e-6)
    valid = (s[sample] > floor) & (b[sample] > floor)
    if not valid.any():
        return np.ones_like(sharp, dtype=np.float32)
    log_ratio = np.log(np.maximum(b[sample], floor) / np.maximum(s[sample], floor))[valid]
    weight = np.sqrt(s[sample][valid])
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    design = np.stack([xx[sample][valid]**i * yy[sample][valid]**j for i, j in terms], axis=1)
    coef, *_ = np.linalg.lstsq(design * weight[:, None], log_ratio * weight, rcond=None)
    field = np.exp(sum(c * xx**i * yy**j for c, (i, j) in zip(coef, terms)))
    return np.clip(field, 0.5, 2.0).astype(np.float32)


def scoring_holdout(pairs: Sequence[Tuple[str, str]], every: int = 5) -> List[Tuple[str, str]]:
    """The pairs set aside for scoring only: every ``every``-th pair in sorted order, starting with the ``every``-th.

    Fixed before any result was seen (12 of DPDD's 60 train pairs here), the same for every training that excludes
    them (``exclude_scoring_holdout``) and every evaluation that scores them.
    """
    return list(sorted(pairs)[every - 1::every])


#: ``--scoring-holdout`` of scripts/prepare_dpdd.py: every pair, the pairs without the scoring holdout, or only it.
SCORING_HOLDOUT_MODES = ('all', 'exclude', 'only')


def select_scoring_holdout(pairs: Sequence[Tuple[str, str]], mode: str = 'all') -> List[Tuple[int, Tuple[str, str]]]:
    """``(index, pair)`` of the pairs a mode keeps, ``index`` the pair's place in ``pairs`` (so a sample keeps its key
    and its stream seed whichever mode built the LMDB).

    Args:
        pairs: The split's pairs, in their sorted order (:func:`dpdd_pairs`).
        mode: ``'all'``; ``'exclude'``: without :func:`scoring_holdout` (what the protocol trains on); ``'only'``: just
            the holdout.

    Raises:
        ValueError: An unknown mode.
    """
    if mode not in SCORING_HOLDOUT_MODES:
        raise ValueError(f'scoring holdout mode must be one of {", ".join(SCORING_HOLDOUT_MODES)}, got {mode!r}')
    held = set(scoring_holdout(pairs))
    return [(i, pair) for i, pair in enumerate(pairs)
            if mode == 'all' or (pair in held) == (mode == 'only')]


def protocol_scoring_pairs(root: str) -> List[Tuple[str, str]]:
    """The DPDD protocol's scoring set: every val pair, then the train split's :func:`scoring_holdout` (4 + 12 pairs
    for DPDD), in that order."""
    return list(dpdd_pairs(root, 'val')) + scoring_holdout(dpdd_pairs(root, 'train'))
