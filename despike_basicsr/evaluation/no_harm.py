"""Do no harm: DeSpike where nothing needs deblurring, scored against the plain reconstruction that wins there.

Three conditions beside the defocused scenes of :mod:`.heldout`:

- **in focus**: the sharp photographs themselves through the camera (no blur, nothing moves). The best plain
  reconstruction is the longest average, TFP-192; a learned reconstruction earns its place only at or above it.
- **moving**: the sharp photographs moving across the sensor during the window (a camera pan with roll and zoom and an
  independently moving layer, :mod:`despike_basicsr.data.motion`, fixed per scene by a seed). A long average smears;
  the plain bar is TFP-41.
- **recordings**: real-format spike clips of moving scenes with ground truth (``spikezoo_reds_train``: Spk2ImgNet's
  simulation of REDS video, Spike-Zoo's ``.dat`` layout). Their ground truth is linear in the firing rate (measured:
  TFP-41 scores 23.6 dB fitted as a rate, 21.6 through a display gamma), so every method is compared as linear
  intensity: TFP as its rate, DeSpike's display output through the inverse gamma; PSNR/SSIM after a gain/offset fit.

``scripts/evaluate_heldout.py`` runs them with the defocused sets; :func:`harm_rows` gives DeSpike's per-image
difference to each condition's bar.
"""
import hashlib
import os
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from despike_basicsr.data.motion import MAX_MARGIN, MotionPath, MovingScene, draw_motion, motion_ranges
from despike_basicsr.data.preparation import dpdd_pairs, scoring_holdout
from despike_basicsr.evaluation.heldout import (DISPLAY_GAMMA, SKIMAGE_SCENES, HeldoutScene, dpdd_val_scenes, evaluate,
                                                photo_linear, scores, skimage_images)
from despike_basicsr.spike.io import read_dat
from despike_basicsr.spike.reconstruct import tfp

#: The plain reconstruction each condition's DeSpike must match or beat (``defocused``: the photograph itself).
BARS = {'defocused': 'defocused', 'in focus': 'tfp192', 'moving': 'tfp41'}
#: Motion of the held-out moving scenes: a visible pan (5-50 px over a 192-step window) and always a moving layer.
EVAL_MOTION = {'speed_range': (0.03, 0.25), 'layer_probability': (1.0, ), 'layer_speed_range': (0.05, 0.3)}
#: Side of the square crop of a moving scene (the margin of :data:`~despike_basicsr.data.motion.MAX_MARGIN` around it
#: is rendered too).
MOVING_SIZE = 256
#: scikit-image photographs the selection set adds in focus and moving (none is a held-out photograph): coins, the
#: moon, a clock, cells, stained tissue and a retina, fine textures and high-contrast detail DPDD's scenes lack (coins
#: and the clock are too small for the moving crop: in focus only).
SELECTION_TEXTURES = ('coins', 'moon', 'clock', 'cell', 'immunohistochemistry', 'retina')
#: The TFP windows compared on real-format recordings.
RECORDING_WINDOWS = (17, 25, 41)


def condition_of(set_name: str) -> str:
    """``'in focus'``, ``'moving'`` or ``'defocused'`` from a scene set's name."""
    for condition in ('in focus', 'moving'):
        if set_name.endswith(condition):
            return condition
    return 'defocused'


def in_focus_scenes(scenes: Sequence[HeldoutScene]) -> List[HeldoutScene]:
    """The sharp image of every scene, seen in focus (``blurred`` = ``sharp``), as set ``'<set> in focus'``."""
    return [HeldoutScene(f'{s.set_name.split("+")[0]} in focus', s.key, s.sharp, s.sharp) for s in scenes]


def photo_scenes(images: Dict[str, np.ndarray], max_side: int = 512, set_name: str = 'photos') -> List[HeldoutScene]:
    """Display-referred photographs (``heldout.skimage_images``) as in-focus linear scenes."""
    scenes = []
    for key, image in sorted(images.items()):
        linear = photo_linear(image, max_side).astype(np.float32)
        scenes.append(HeldoutScene(f'{set_name} in focus', key, linear, linear))
    return scenes


def moving_scenes(scenes: Sequence[HeldoutScene], steps: int = 192, seed: int = 0,
                  size: int = MOVING_SIZE) -> List[HeldoutScene]:
    """The sharp image of every scene moving across the sensor (one fixed :class:`MotionPath` per scene and seed).

    The crop is the ``size``-pixel square at the image's centre; images too small for it and its motion margin are
    skipped.
    """
    ranges = motion_ranges(EVAL_MOTION)
    moving = []
    for index, scene in enumerate(scenes):
        height, width = scene.sharp.shape
        canvas = size + 2 * MAX_MARGIN
        if height < canvas or width < canvas:
            continue
        y0, x0 = (height - canvas) // 2, (width - canvas) // 2
        region = scene.sharp[y0:y0 + canvas, x0:x0 + canvas]
        path = draw_motion(np.random.default_rng([seed, index, 7]), ranges, size, steps - steps // 2)
        motion = MovingScene(region, region, size, path, steps // 2)
        moving.append(HeldoutScene(f'{scene.set_name.split("+")[0]} moving', scene.key, motion.target(),
                                   motion.reference(), motion))
    return moving


def describe_motion(path: MotionPath, steps: int = 192) -> str:
    """How far a scene moves over the window, in words (for the tables)."""
    pan = float(np.hypot(*path.velocity)) * steps
    layer = float(np.hypot(*path.layer_velocity)) * steps if path.layer else 0.0
    return f'pan {pan:.0f} px, layer {layer:.0f} px over {steps} steps'


def harm_rows(rows: Sequence[Dict[str, Any]], metric: str = 'psnr_fit') -> List[Dict[str, Any]]:
    """DeSpike's difference to its condition's bar (:data:`BARS`), per image and light level.

    Returns:
        ``[{set, condition, key, level, bar, despike, bar_value, diff}]`` for every scene DeSpike was scored on.
    """
    index = {(r['set'], r['key'], r['level'], r['method']): r for r in rows}
    out = []
    for (set_name, key, level, method), row in index.items():
        if method != 'despike':
            continue
        condition = condition_of(set_name)
        bar = index.get((set_name, key, level, BARS[condition]))
        if bar is None:
            continue
        out.append(dict(set=set_name, condition=condition, key=key, level=level, bar=BARS[condition],
                        despike=row[metric], bar_value=bar[metric], diff=row[metric] - bar[metric]))
    return out


def harm_markdown(harm: Sequence[Dict[str, Any]], metric: str = 'fit PSNR') -> str:
    """A table per (set, level): DeSpike against its bar, mean, worst image and every image's difference."""
    lines = [f'| set | level | bar | DeSpike {metric} | bar {metric} | mean diff | worst image | per image |',
             '| --- | --- | --- | ---: | ---: | ---: | ---: | --- |']
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in harm:
        groups.setdefault((row['set'], row['level']), []).append(row)
    for (set_name, level), members in groups.items():
        diffs = [m['diff'] for m in members]
        worst = min(members, key=lambda m: m['diff'])
        per_image = ', '.join(f"{m['key']} {m['diff']:+.2f}" for m in members)
        lines.append(f"| {set_name} | {level} | {members[0]['bar']} | {np.mean([m['despike'] for m in members]):.2f} | "
                     f"{np.mean([m['bar_value'] for m in members]):.2f} | {np.mean(diffs):+.2f} | "
                     f"{worst['diff']:+.2f} ({worst['key']}) | {per_image} |")
    return '\n'.join(lines) + '\n'


def selection_scenes(dpdd_root: str, count: int = 6, seed: int = 0,
                     textures: Sequence[str] = ()) -> List[HeldoutScene]:
    """Scenes to choose an inference setting on without touching the reported held-out sets.

    The first ``count`` DPDD train pairs of the scoring holdout (:func:`~despike_basicsr.data.preparation.
    scoring_holdout`; no campaign trains on them, ``exclude_scoring_holdout``), defocused (set ``'dpdd-selection'``),
    in focus and moving, the same three conditions the held-out evaluation reports; then, in focus and moving (set
    ``'textures'``), the scikit-image photographs named in ``textures`` (e.g. :data:`SELECTION_TEXTURES`, none of
    them a held-out photograph): textures DPDD's six scenes lack, where an over-eager correction shows first.
    """
    pairs = scoring_holdout(dpdd_pairs(dpdd_root, 'train'))[:count]
    defocused = dpdd_val_scenes(dpdd_root, 'train', 'dpdd-selection', pairs)
    overlap = set(textures) & set(SKIMAGE_SCENES)
    if overlap:
        raise ValueError(f'selection textures {sorted(overlap)} are held-out photographs: choose others')
    photos = photo_scenes(skimage_images(textures), set_name='textures') if textures else []
    still = [HeldoutScene('textures', s.key, s.sharp, s.sharp) for s in photos]
    return (defocused + in_focus_scenes(defocused) + photos + moving_scenes(defocused, seed=seed)
            + moving_scenes(still, seed=seed))


def corrected(mix: np.ndarray, full: np.ndarray, strength: float = 1.0, threshold: float = 0.0) -> np.ndarray:
    """DeSpike's output at correction strength α and dead zone τ from the outputs at (α, τ) = (0, 0) and (1, 0).

    ``Rec = mix + S_τ(α·(full − mix))`` with :func:`~despike_basicsr.archs.despike_arch.correction_dead_zone` and τ
    in 8-bit grey levels: exactly what the network gives at (α, τ), since the dead zone is positively homogeneous and
    so commutes with the display scale.
    """
    correction = strength * (full - mix)
    if threshold:
        correction = np.sign(correction) * np.maximum(np.abs(correction) - threshold / 255.0, 0.0)
    return mix + correction


def correction_strength_sweep(scenes: Sequence[HeldoutScene],
                              reconstruct_pair: Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]],
                              strengths: Sequence[float], reference_rate: float = 0.5, steps: int = 192,
                              seed: int = 0, progress: Optional[Callable[[str], None]] = None,
                              thresholds: Sequence[float] = (0.0, )) -> Dict[str, Any]:
    """DeSpike at several correction strengths α and dead zones τ on the same streams, against each condition's bar.

    Two network runs per stream, the window mix (α = 0) and the trained output without dead zone (α = 1, τ = 0),
    give every (α, τ) (:func:`corrected`).

    Args:
        scenes: Held-out scenes (defocused, in focus and moving sets).
        reconstruct_pair: ``f(spikes, gamma) -> (mix, full)``, unclipped display images at α = 0 and at α = 1, τ = 0.
        strengths: The α to score.
        reference_rate, steps, seed: As :func:`.heldout.evaluate` (same streams for every setting).
        progress: Called with a line per finished setting.
        thresholds: The τ (8-bit grey levels) to score with every α.

    Returns:
        ``{'settings': [[α, τ], ...], 'harm': {'α/τ': harm_rows fitted PSNR}, 'harm_ssim': {'α/τ': raw SSIM}}``.
    """
    cache: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}

    def despike_at(alpha: float, tau: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def despike(spikes: np.ndarray, gamma: np.ndarray) -> np.ndarray:
            key = hashlib.sha1(np.ascontiguousarray(spikes).tobytes() + np.asarray(gamma).tobytes()).hexdigest()
            if key not in cache:
                cache[key] = reconstruct_pair(spikes, gamma)
            return corrected(*cache[key], alpha, tau)

        return despike

    # α = 0 has no correction for a dead zone to act on: it is scored once, with the first τ
    settings = [[float(a), float(t)] for i, t in enumerate(thresholds) for a in strengths if a or not i]
    harm, harm_ssim = {}, {}
    for alpha, tau in settings:
        report = evaluate(scenes, despike_at(alpha, tau), reference_rate, steps, seed, keep_images=0)
        harm[setting_key(alpha, tau)] = harm_rows(report['rows'])
        harm_ssim[setting_key(alpha, tau)] = harm_rows(report['rows'], 'ssim')
        if progress is not None:
            progress(f'correction strength {alpha:g}, dead zone {tau:g} scored')
    return {'settings': settings, 'harm': harm, 'harm_ssim': harm_ssim}


def setting_key(strength: float, threshold: float) -> str:
    """``'α/τ'``, the key of one setting in a sweep's results."""
    return f'{strength:g}/{threshold:g}'


def sweep_markdown(sweep: Dict[str, Any]) -> str:
    """One row per (α, τ): DeSpike minus the bar per condition and level, fitted PSNR mean (worst image); raw SSIM
    minus the photograph's on the defocused sets."""
    def cell(rows: List[Dict[str, Any]], fmt: str = '{:+.2f}') -> str:
        if not rows:
            return '–'
        diffs = [r['diff'] for r in rows]
        return (fmt + ' (' + fmt + ')').format(float(np.mean(diffs)), float(np.min(diffs)))

    columns = [(c, lv) for c in ('in focus', 'moving', 'defocused') for lv in ('bright', 'dim')]
    head = ' | '.join(f'{c} {lv}' for c, lv in columns)
    lines = [f'| α | τ | {head} | defocused raw SSIM − photo, bright | dim |',
             '| ---: | ---: |' + ' ---: |' * (len(columns) + 2)]
    for alpha, tau in sweep['settings']:
        harm, ssim = sweep['harm'][setting_key(alpha, tau)], sweep['harm_ssim'][setting_key(alpha, tau)]
        cells = [cell([r for r in harm if r['condition'] == c and r['level'] == lv]) for c, lv in columns]
        cells += [cell([r for r in ssim if r['condition'] == 'defocused' and r['level'] == lv], '{:+.3f}')
                  for lv in ('bright', 'dim')]
        lines.append(f'| {alpha:g} | {tau:g} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def recording_clips(root: str) -> List[Dict[str, str]]:
    """``[{key, spikes, gt}]`` for every ``spike/<key>.dat`` under ``root`` with a ``gt/<key>.png``."""
    clips = []
    spike_dir, gt_dir = osp.join(root, 'spike'), osp.join(root, 'gt')
    if not osp.isdir(spike_dir):
        raise FileNotFoundError(f'{spike_dir} does not exist; expected {root}/spike/<key>.dat and {root}/gt/<key>.png')
    for name in sorted(n for n in os.listdir(spike_dir) if n.endswith('.dat')):
        key = osp.splitext(name)[0]
        gt = osp.join(gt_dir, key + '.png')
        if osp.isfile(gt):
            clips.append(dict(key=key, spikes=osp.join(spike_dir, name), gt=gt))
    return clips


def evaluate_recordings(clips: Sequence[Dict[str, str]],
                        despike: Optional[Callable[[np.ndarray], np.ndarray]],
                        height: int = 250,
                        width: int = 400,
                        windows: Sequence[int] = RECORDING_WINDOWS) -> Dict[str, Any]:
    """Score TFP at ``windows`` and DeSpike on real-format clips against their ground truth (linear, fitted).

    Args:
        clips: From :func:`recording_clips`.
        despike: ``f(spikes (T, H, W) uint8) -> (H, W)`` display image of the frame at ``T // 2`` (unclipped), or None.
        height, width: Frame size of the ``.dat`` files.
        windows: TFP windows.

    Returns:
        ``{'rows': [{set, key, level, method, psnr_fit, ssim_fit, ...}]}`` with set ``'recordings moving'``.
    """
    rows = []
    for clip in clips:
        spikes = read_dat(clip['spikes'], height, width)
        truth = cv2.imread(clip['gt'], cv2.IMREAD_GRAYSCALE)
        if truth is None:
            raise ValueError(f'{clip["gt"]}: not a readable image')
        truth = truth.astype(np.float32) / 255.0
        centre = spikes.shape[0] // 2
        outputs = {f'tfp{w}': tfp(spikes, center=centre, window=w) for w in windows}
        if despike is not None:
            outputs['despike'] = np.maximum(despike(spikes), 0.0)**DISPLAY_GAMMA
        for method, image in outputs.items():
            rows.append(dict(set='recordings moving', key=clip['key'], level='as recorded', method=method,
                             **scores(image, truth)))
    return {'rows': rows}
