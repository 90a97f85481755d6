"""Moving photographs on a simulated sensor with structured FPN: the bench of the scene-based FPN estimate.

A natural photograph (linear light) slides across the sensor along a smooth random trajectory (a velocity random walk,
sub-pixel positions, one position per block of steps, reflected at the edges of the photograph), seen by a camera with
a white gain spread plus a column pattern (:func:`~.camera.sample_fpn`). :func:`run_scene_fpn_bench` streams each
recording into :class:`~.fpn.SceneStatistics` (a 20,000-step recording is kept time-packed, never unpacked whole),
estimates γ (registration-based where the pan registers, and constant statistics alone for comparison), and scores
it against the truth; then a still, in-focus frame of the same sensor is reconstructed with
the true, the estimated and no γ (TFP-192, and optionally a learned reconstruction passed in as a callable, so this
module stays numpy-only). ``scripts/bench_fpn_scene.py`` is the command line.
"""
import os
import os.path as osp
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .camera import light_for_mean_rate, sample_fpn, simulate
from .fpn import SceneStatistics, estimate_fpn_from_stats
from .images import display_to_linear_luminance, read_linear_intensity
from .io import unpack_time
from .optics import linear_to_display
from .reconstruct import tfp

#: scikit-image's bundled photographs the bench moves across the sensor.
BENCH_SCENES = ('camera', 'astronaut', 'coffee', 'chelsea', 'rocket')
#: Mean firing rates per step of the two light levels.
BENCH_LEVELS = {'bright': 0.3, 'dim': 0.075}
#: The bench camera: θ, η and shot noise as the held-out evaluation's camera; white 5 % gain spread, 2 % columns.
BENCH_CAMERA = {'threshold': 2.0, 'eta': 1.0, 'electrons': 500.0, 'gain_std': 0.05, 'column_std': 0.02}
DISPLAY_GAMMA = 2.2
#: A learned reconstruction: ``f(spikes (T, H, W) uint8, gamma (H, W) float32) -> (H, W)`` display image, unclipped.
Reconstruct = Callable[[np.ndarray, np.ndarray], np.ndarray]


def skimage_scene(name: str) -> np.ndarray:
    """scikit-image sample photograph ``name`` as linear luminance, float32 in [0, 1]."""
    from skimage import data

    image = np.asarray(getattr(data, name)())
    display = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    return display_to_linear_luminance(display)


def dpdd_scenes(root: str, count: int = 2) -> Dict[str, np.ndarray]:
    """The first ``count`` sharp (``target``) DPDD validation photographs under ``root`` (``val_c/target``), or none."""
    folder = osp.join(root, 'val_c', 'target')
    if not osp.isdir(folder) or count <= 0:
        return {}
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(('.png', '.jpg', '.jpeg', '.tif', '.tiff')))
    return {'dpdd-' + osp.splitext(n)[0]: read_linear_intensity(osp.join(folder, n)) for n in names[:count]}


def fit_source(linear: np.ndarray, shape: Tuple[int, int], margin: int) -> np.ndarray:
    """The photograph shrunk (area) and centre-cropped to ``(H + 2·margin, W + 2·margin)``: the region the sensor
    can see as it moves up to ``margin`` px either way."""
    import cv2

    height, width = shape[0] + 2 * margin, shape[1] + 2 * margin
    scale = max(height / linear.shape[0], width / linear.shape[1])
    size = (max(width, int(np.ceil(linear.shape[1] * scale))), max(height, int(np.ceil(linear.shape[0] * scale))))
    resized = cv2.resize(linear.astype(np.float32), size, interpolation=cv2.INTER_AREA if scale < 1 else
                         cv2.INTER_LINEAR)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def random_trajectory(blocks: int, block: int, margin: float, speed: float, seed: int,
                      correlation_steps: float = 800.0) -> np.ndarray:
    """Sub-pixel sensor offsets ``(blocks, 2)`` (dy, dx): a velocity random walk reflected at ±``margin``.

    ``v_k = a·v_{k−1} + sqrt(1 − a²)·speed·ξ_k`` per axis (stationary spread ``speed`` px per step, correlation time
    ``correlation_steps``), ``p_k = p_{k−1} + block·v_k``: pans that turn and change speed smoothly.
    """
    rng = np.random.default_rng(seed)
    a = float(np.exp(-block / correlation_steps))
    velocity = rng.normal(0.0, speed, size=2)
    position = rng.uniform(-margin, margin, size=2)
    path = np.empty((blocks, 2))
    for k in range(blocks):
        path[k] = position
        velocity = a * velocity + np.sqrt(1.0 - a * a) * speed * rng.normal(size=2)
        position = position + block * velocity
        for axis in range(2):  # reflect at the edges of the photograph
            if abs(position[axis]) > margin:
                position[axis] = np.sign(position[axis]) * (2 * margin - abs(position[axis]))
                velocity[axis] = -velocity[axis]
    return path


class MovingScene:
    """Intensity callable for :func:`~.camera.simulate`: ``source`` seen through a sensor window moving along
    ``path`` (one offset per ``block`` steps, bilinear sub-pixel sampling with ``cv2.warpAffine``).

    Args:
        source: ``(H + 2·margin, W + 2·margin)`` linear light (already multiplied by the light level).
        shape: Sensor ``(H, W)``.
        path: ``(blocks, 2)`` offsets (dy, dx) from the centre, within ±margin.
        block: Steps per position.
    """

    def __init__(self, source: np.ndarray, shape: Tuple[int, int], path: np.ndarray, block: int) -> None:
        self.source = source.astype(np.float32)
        self.shape = tuple(shape)
        self.path = path
        self.block = int(block)
        self.centre = ((source.shape[0] - shape[0]) / 2.0, (source.shape[1] - shape[1]) / 2.0)
        self._cache: Dict[int, np.ndarray] = {}

    def frame(self, index: int) -> np.ndarray:
        """The sensor's view at position ``index``."""
        import cv2

        if index not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            dy, dx = self.path[min(index, len(self.path) - 1)]
            matrix = np.array([[1.0, 0.0, self.centre[1] + dx], [0.0, 1.0, self.centre[0] + dy]], np.float32)
            self._cache[index] = cv2.warpAffine(self.source, matrix, (self.shape[1], self.shape[0]),
                                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                                borderMode=cv2.BORDER_REFLECT)
        return self._cache[index]

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        return np.stack([self.frame(int(t) // self.block) for t in np.asarray(steps)])


def bench_sensor(shape: Tuple[int, int], gain_std: float = 0.05, column_std: float = 0.02,
                 seed: int = 1) -> np.ndarray:
    """The bench camera's gain map: white spread ``gain_std`` times a column pattern of spread ``column_std``."""
    gain, _ = sample_fpn(shape, gain_std=gain_std, seed=seed, column_std=column_std)
    return gain


def true_correction(gain: np.ndarray) -> np.ndarray:
    """The correction a perfect flat field gives:  ``γ* = median(g) / g``."""
    return (np.median(gain) / gain).astype(np.float32)


def gamma_relative_error(gamma: np.ndarray, gain: np.ndarray) -> float:
    """Relative RMS error of γ, scale removed:  ``sqrt(mean((q / median q − 1)²))``,  ``q = γ / γ*``."""
    ratio = np.asarray(gamma, np.float64) / true_correction(gain)
    ratio = ratio / np.median(ratio)
    return float(np.sqrt(np.mean((ratio - 1.0)**2)))


def psnr_uint8(image: np.ndarray, target: np.ndarray) -> float:
    """PSNR (dB) of two [0, 1] images rounded to uint8, as BasicSR scores them."""
    a = np.round(np.clip(image, 0.0, 1.0) * 255.0)
    b = np.round(np.clip(target, 0.0, 1.0) * 255.0)
    mse = float(np.mean((a - b)**2))
    return float('inf') if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def simulate_moving(source: np.ndarray, shape: Tuple[int, int], steps: int, mean_rate: float, gain: np.ndarray,
                    camera: Dict[str, float], seed: int, margin: int, speed: float = 0.1,
                    block: int = 16) -> np.ndarray:
    """A time-packed recording ``(ceil(T/8), H, W)`` of ``source`` moving across the sensor at ``mean_rate``."""
    light = light_for_mean_rate(source, mean_rate, camera['threshold'], camera['eta'])
    path = random_trajectory((steps + block - 1) // block, block, margin, speed, seed)
    scene = MovingScene(source * np.float32(light), shape, path, block)
    return simulate(scene, steps, threshold=camera['threshold'], eta=camera['eta'], gain=gain,
                    shot_noise=camera['electrons'] or False, seed=seed, packed=True)


def feed(stats: SceneStatistics, packed: np.ndarray, length: int, steps: int, chunk: int = 1024) -> None:
    """Stream the first ``steps`` frames of a packed recording of ``length`` frames into ``stats``, then close it."""
    for t0 in range(0, steps, chunk):
        stats.add(unpack_time(packed, length, t0, min(steps, t0 + chunk)))
    stats.end_recording()


def still_frame_scores(linear: np.ndarray, gain: np.ndarray, gammas: Dict[str, np.ndarray], mean_rate: float,
                       camera: Dict[str, float], seed: int, steps: int = 192,
                       despike: Optional[Reconstruct] = None,
                       reference_rate: float = 0.5) -> Dict[str, Dict[str, float]]:
    """PSNR of TFP-``steps`` (and ``despike``) on a still, in-focus frame of the same sensor, per γ in ``gammas``.

    The truth is the photograph's display image; rates are brought back to it by the known light level (as the
    held-out evaluation does), so the scores differ only by the FPN correction.
    """
    light = light_for_mean_rate(linear, mean_rate, camera['threshold'], camera['eta'])
    rate_per_unit = camera['eta'] * light / camera['threshold']
    spikes = simulate((linear * light).astype(np.float32), steps, threshold=camera['threshold'], eta=camera['eta'],
                      gain=gain, shot_noise=camera['electrons'] or False, seed=seed)
    target = linear_to_display(linear, DISPLAY_GAMMA)
    rate = tfp(spikes, window=steps)
    scores: Dict[str, Dict[str, float]] = {}
    for name, gamma in gammas.items():
        entry = {'tfp': psnr_uint8(linear_to_display(rate * gamma / rate_per_unit, DISPLAY_GAMMA), target)}
        if despike is not None:
            exposure = (rate_per_unit / reference_rate)**(-1.0 / DISPLAY_GAMMA)
            entry['despike'] = psnr_uint8(np.clip(despike(spikes, gamma) * exposure, 0.0, 1.0), target)
        scores[name] = entry
    return scores


def run_scene_fpn_bench(scenes: Dict[str, np.ndarray],
                        shape: Tuple[int, int] = (128, 192),
                        lengths: Sequence[int] = (2000, 20000),
                        levels: Dict[str, float] = BENCH_LEVELS,
                        camera: Dict[str, float] = BENCH_CAMERA,
                        margin: int = 48,
                        speed: float = 0.1,
                        seed: int = 0,
                        despike: Optional[Reconstruct] = None,
                        reference_rate: float = 0.5,
                        estimate_kwargs: Optional[Dict[str, Any]] = None,
                        progress: Optional[Callable[[str], Any]] = None) -> Dict[str, Any]:
    """Estimate γ from each moving scene at each light level and length; score it and its effect on a still frame.

    Every recording is simulated once at the longest length; shorter settings use its first steps. One sensor
    (gain map) serves every recording, as one camera would.

    Returns:
        ``{'rows': [...], 'summary': [...], 'examples': {...}, 'gain': g, 'static': {...}}``: a row per (scene,
        level, steps) with the relative RMS error of γ (``error``), of the constant-statistics estimate alone
        (``error_constant``) and of γ = 1 (``error_none``), the estimator used, the registered and moving fractions,
        median confidence and the still frame's PSNRs; the summary averages per (level, steps); ``examples`` keeps
        the first scene's γ maps; ``static`` is :func:`static_check` of the first scene.
    """
    lengths = sorted(int(n) for n in lengths)
    gain = bench_sensor(shape, camera['gain_std'], camera['column_std'], seed=seed + 1)
    truth = true_correction(gain)
    ones = np.ones(shape, np.float32)
    kwargs = dict(estimate_kwargs or {})
    rows: List[Dict[str, Any]] = []
    examples: Dict[str, Any] = {'truth': truth}
    for index, (name, linear) in enumerate(scenes.items()):
        source = fit_source(linear, shape, margin)
        still = fit_source(linear, shape, 0)
        for level_index, (level, rate) in enumerate(levels.items()):
            start = time.time()
            rec_seed = seed * 1000 + index * 10 + level_index
            packed = simulate_moving(source, shape, lengths[-1], rate, gain, camera, rec_seed, margin, speed)
            base = still_frame_scores(still, gain, {'true': truth, 'none': ones}, rate, camera, rec_seed + 500,
                                      despike=despike, reference_rate=reference_rate)
            for steps in lengths:
                stats = SceneStatistics(shape, steps)
                feed(stats, packed, lengths[-1], steps)
                calib = estimate_fpn_from_stats(stats, **kwargs)
                constant = estimate_fpn_from_stats(stats, **dict(kwargs, registration=False))
                scores = still_frame_scores(still, gain, {'estimated': calib.gamma}, rate, camera, rec_seed + 500,
                                            despike=despike, reference_rate=reference_rate)
                row = dict(scene=name, level=level, mean_rate=rate, steps=steps,
                           error=gamma_relative_error(calib.gamma, gain), error_none=gamma_relative_error(ones, gain),
                           error_constant=gamma_relative_error(constant.gamma, gain),
                           estimator=calib.info['estimator'],
                           registered_fraction=calib.info.get('registered_fraction', 0.0),
                           moving_fraction=calib.info['moving_fraction'],
                           median_confidence=calib.info['median_confidence'],
                           texture_correlation=calib.info['texture_correlation'], static=calib.info['static'])
                for which, entry in dict(base, **scores).items():
                    for method, value in entry.items():
                        row[f'{method}_{which}'] = value
                rows.append(row)
                if index == 0:
                    examples[(level, steps)] = dict(gamma=calib.gamma, confidence=calib.confidence)
            if progress is not None:
                progress(f'{name} {level}: {time.time() - start:.1f} s')
    return {'rows': rows, 'summary': summarise(rows), 'examples': examples, 'gain': gain,
            'static': static_check(next(iter(scenes.values())), shape, gain, camera, seed, **kwargs)}


def static_check(linear: np.ndarray, shape: Tuple[int, int], gain: np.ndarray, camera: Dict[str, float], seed: int,
                 steps: int = 2000, mean_rate: float = 0.3, **estimate_kwargs) -> Dict[str, Any]:
    """The estimate from a still recording of ``linear`` (the camera on a tripod): its γ error, confidence and note."""
    still = fit_source(linear, shape, 0)
    light = light_for_mean_rate(still, mean_rate, camera['threshold'], camera['eta'])
    packed = simulate((still * light).astype(np.float32), steps, threshold=camera['threshold'], eta=camera['eta'],
                      gain=gain, shot_noise=camera['electrons'] or False, seed=seed + 900, packed=True)
    stats = SceneStatistics(shape, steps)
    feed(stats, packed, steps, steps)
    calib = estimate_fpn_from_stats(stats, **estimate_kwargs)
    return dict(steps=steps, error=gamma_relative_error(calib.gamma, gain),
                error_none=gamma_relative_error(np.ones(shape), gain), static=calib.info['static'],
                estimator=calib.info['estimator'], max_confidence=float(calib.confidence.max()), note=calib.note)


def summarise(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Means per (level, steps) over scenes, plus the worst scene's γ error."""
    summary = []
    keys = sorted({(r['level'], r['steps']) for r in rows}, key=lambda k: (k[0] != 'bright', k[1]))
    for level, steps in keys:
        members = [r for r in rows if r['level'] == level and r['steps'] == steps]
        entry: Dict[str, Any] = dict(level=level, steps=steps, scenes=len(members),
                                     error_max=max(r['error'] for r in members))
        for key in members[0]:
            if isinstance(members[0][key], float) and key not in ('mean_rate', ):
                entry[key] = float(np.mean([r[key] for r in members]))
        summary.append(entry)
    return summary


def markdown(report: Dict[str, Any], info: Dict[str, Any]) -> str:
    """The bench's tables: γ error per setting, then the still frame's PSNR with true / estimated / no γ."""
    summary = report['summary']
    electrons = f"{info['camera']['electrons']:.0f} e-/unit" if info['camera']['electrons'] else 'none'
    lines = [
        '# Scene-based FPN estimate (`scripts/bench_fpn_scene.py`)', '',
        f"Sensor {info['shape'][0]}x{info['shape'][1]}, white gain spread {info['camera']['gain_std']:.0%} times a "
        f"column pattern of {info['camera']['column_std']:.0%}; θ = {info['camera']['threshold']}, shot noise: "
        f"{electrons}. Scenes: {', '.join(info['scenes'])}, moving along smooth random "
        f"pans (±{info['margin']} px, {info['speed']} px/step spread, one position per 16 steps). "
        f"{info['seconds']:.0f} s on this machine.", '',
        '| light | steps | γ error, estimated (mean / worst) | γ error, constant statistics only | γ error, γ = 1 | '
        'frames registered | median confidence |',
        '|---|---:|---:|---:|---:|---:|---:|'
    ]
    for s in summary:
        lines.append(f"| {s['level']} | {s['steps']} | {s['error']:.2%} / {s['error_max']:.2%} | "
                     f"{s['error_constant']:.2%} | {s['error_none']:.2%} | {s['registered_fraction']:.0%} | "
                     f"{s['median_confidence']:.2f} |")
    methods = [m for m in ('tfp', 'despike') if any(f'{m}_true' in s for s in summary)]
    lines += ['', 'PSNR (dB) of a still, in-focus frame of the same sensor (the scene\'s photograph, 192 steps), '
              'reconstructed with the true γ, the γ estimated from that setting\'s moving recording, and none:', '']
    labels = [{'tfp': 'TFP-192', 'despike': 'DeSpike'}[m] for m in methods]
    header = '| light | steps | ' + ' | '.join(f'{label} true / estimated / none' for label in labels) + ' |'
    lines += [header, '|---|---:|' + '---:|' * len(methods)]
    for s in summary:
        cells = [f"{s[m + '_true']:.2f} / {s[m + '_estimated']:.2f} / {s[m + '_none']:.2f}" for m in methods]
        lines.append(f"| {s['level']} | {s['steps']} | " + ' | '.join(cells) + ' |')
    lines += ['', 'Per scene:', '', '| scene | light | steps | estimator | γ error | constant statistics | γ = 1 | '
              'registered | ' + ' | '.join(f'{m} est − true (dB)' for m in methods) + ' |',
              '|---|---|---:|---|---:|---:|---:|---:|' + '---:|' * len(methods)]
    for r in report['rows']:
        cells = [f"{r[m + '_estimated'] - r[m + '_true']:+.2f}" for m in methods]
        lines.append(f"| {r['scene']} | {r['level']} | {r['steps']} | {r['estimator']} | {r['error']:.2%} | "
                     f"{r['error_constant']:.2%} | {r['error_none']:.2%} | {r['registered_fraction']:.0%} | "
                     + ' | '.join(cells) + ' |')
    static = report.get('static')
    if static:
        lines += ['', f"Still recording ({static['steps']} steps of the first scene, bright, camera on a tripod): "
                  f"γ error {static['error']:.2%} (γ = 1: {static['error_none']:.2%}), static: {static['static']}, "
                  f"largest confidence {static['max_confidence']:.2f}; note: \"{static['note']}\""]
    return '\n'.join(lines) + '\n'


def gamma_picture(truth: np.ndarray, estimate: np.ndarray, confidence: Optional[np.ndarray] = None,
                  spread: float = 0.15) -> np.ndarray:
    """Grey panels side by side: true γ, estimated γ, their ratio (all on ±``spread`` around 1) and the confidence."""
    def grey(x: np.ndarray, low: float, high: float) -> np.ndarray:
        return (np.clip((x - low) / (high - low), 0.0, 1.0) * 255).round().astype(np.uint8)

    ratio = estimate / truth
    panels = [grey(truth / np.median(truth), 1 - spread, 1 + spread),
              grey(estimate / np.median(estimate), 1 - spread, 1 + spread),
              grey(ratio / np.median(ratio), 1 - spread, 1 + spread)]
    if confidence is not None:
        panels.append(grey(confidence, 0.0, 1.0))
    gap = np.full((truth.shape[0], 4), 255, np.uint8)
    out = [panels[0]]
    for panel in panels[1:]:
        out += [gap, panel]
    return np.concatenate(out, axis=1)
