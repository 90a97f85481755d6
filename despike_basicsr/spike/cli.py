"""Command-line tools: ``despike-simulate``, ``despike-reconstruct`` and ``despike-calibrate-fpn``.

Every error a user can cause (missing file, wrong size, bad option) is reported as one line on stderr with exit
code 2, never as a traceback (:func:`despike_basicsr.errors.run_cli`; the flags go straight into the physics
functions, which check values with ``ValueError``, so these commands count that as a user error too).
"""
import argparse
import os
import sys
from typing import List, Optional

import numpy as np

from despike_basicsr.errors import DespikeUserError, run_cli

from .camera import sample_fpn, simulate
from .fpn import SCENE_MIN_STEPS, SCENE_REFERENCE_SIZE, calibrate_fpn, estimate_fpn_from_scene, save_fpn
from .io import load_spikes, write_dat, write_npz
from .images import DEFAULT_DEPTH_SCALE, read_depth, read_linear_intensity
from .optics import ThinLens, gaussian_blur, render_depth_defocus
from .reconstruct import classical_display


class CommandError(DespikeUserError):
    """A user error to report as one line (exit code 2)."""


def _check_output(path: str, overwrite: bool, extensions) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext not in extensions:
        raise CommandError(f'{path}: output extension must be one of {", ".join(extensions)}, found {ext!r}')
    if os.path.exists(path) and not overwrite:
        raise CommandError(f'{path}: exists; pass --overwrite to replace it')
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f'{path}: output folder {folder} does not exist')


def build_simulate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='despike-simulate',
        description='Simulate a (defocused) spike-camera stream from a sharp image and write it as .dat or .npz.')
    p.add_argument('image', help='sharp image (display-referred, 8/16-bit; colour: linearised per channel, then '
                   'Rec. 709 luminance)')
    p.add_argument('--out', required=True, help='output stream, .dat or .npz')
    p.add_argument('--steps', type=int, default=400, help='number of steps T (default 400)')
    p.add_argument('--threshold', type=float, default=2.0, help='firing threshold θ (default 2)')
    p.add_argument('--eta', type=float, default=1.0, help='photo-electric conversion η (default 1)')
    p.add_argument('--gain-std', type=float, default=0.0, help='per-pixel gain spread (FPN), e.g. 0.058')
    p.add_argument('--dark-rate', type=float, default=0.0, help='mean dark increment per step (default 0)')
    p.add_argument('--shot-noise', type=float, default=0.0, metavar='E',
                   help='Poisson shot noise with E photo-electrons per unit potential (0 = off)')
    p.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    p.add_argument('--gamma', type=float, default=2.2, help='display gamma of the image (default 2.2)')
    blur = p.add_argument_group('defocus (either --sigma, or --depth with lens parameters)')
    blur.add_argument('--sigma', type=float, default=None, help='uniform Gaussian blur σ in pixels')
    blur.add_argument('--depth', default=None, help='depth map, .npy in metres or an image times --depth-scale')
    blur.add_argument('--depth-scale', type=float, default=DEFAULT_DEPTH_SCALE,
                      help=f'metres per unit of a depth image (default {DEFAULT_DEPTH_SCALE}: millimetres; '
                      '.npy maps are metres)')
    blur.add_argument('--focal-length-mm', type=float, default=None, help='focal length in mm')
    blur.add_argument('--f-number', type=float, default=None, help='f-number N')
    blur.add_argument('--focus-m', type=float, default=None, help='focus distance in metres')
    blur.add_argument('--pixel-pitch-um', type=float, default=20.0, help='pixel pitch in µm (default 20)')
    blur.add_argument('--layers', type=int, default=16, help='depth layers for rendering (default 16)')
    p.add_argument('--head', action='store_true', help='.dat: write the 16-column head of raw camera output')
    p.add_argument('--no-flipud', dest='flipud', action='store_false', help='.dat: store rows upright')
    p.add_argument('--layout', default='spk', choices=('spk', 'arr_0', 'seq'), help='.npz layout (default spk)')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    return p


def _defocus(args, linear: np.ndarray) -> np.ndarray:
    lens_args = (args.focal_length_mm, args.f_number, args.focus_m)
    if args.depth is not None and args.sigma is not None:
        raise CommandError('give either --sigma or --depth, not both')
    if args.depth is None:
        if any(v is not None for v in lens_args):
            raise CommandError('lens parameters need --depth')
        return linear if not args.sigma else gaussian_blur(linear, args.sigma)
    if any(v is None for v in lens_args):
        raise CommandError('--depth needs --focal-length-mm, --f-number and --focus-m')
    depth = read_depth(args.depth, args.depth_scale)
    if depth.shape != linear.shape:
        raise CommandError(f'{args.depth}: depth map is {depth.shape}, the image is {linear.shape}')
    lens = ThinLens(focal_length=args.focal_length_mm * 1e-3, f_number=args.f_number, focus_distance=args.focus_m,
                    pixel_pitch=args.pixel_pitch_um * 1e-6)
    return render_depth_defocus(linear, depth, lens, num_layers=args.layers)


def simulate_main(argv: Optional[List[str]] = None) -> int:
    """``despike-simulate``: image [+ depth map and lens, or --sigma] → spike stream (.dat/.npz)."""
    args = build_simulate_parser().parse_args(argv)

    def work() -> int:
        _check_output(args.out, args.overwrite, ('.dat', '.npz'))
        linear = read_linear_intensity(args.image, args.gamma)
        blurred = np.clip(_defocus(args, linear), 0.0, 1.0).astype(np.float32)
        gain = dark = None
        if args.gain_std > 0 or args.dark_rate > 0:
            gain, dark = sample_fpn(blurred.shape, gain_std=args.gain_std, dark_rate=args.dark_rate,
                                    seed=args.seed + 1)
        spikes = simulate(blurred, args.steps, threshold=args.threshold, eta=args.eta, gain=gain, dark=dark,
                          shot_noise=args.shot_noise if args.shot_noise > 0 else False, seed=args.seed,
                          progress=args.progress and args.steps * blurred.size >= 5e7)
        if args.out.lower().endswith('.dat'):
            write_dat(args.out, spikes, flipud=args.flipud, head=args.head)
        else:
            write_npz(args.out, spikes, layout=args.layout)
        print(f'wrote {args.out}: {spikes.shape[0]} frames of {spikes.shape[1]}x{spikes.shape[2]}, '
              f'mean firing rate {spikes.mean():.4f}')
        return 0

    return run_cli('despike-simulate', work, also=(ValueError, ))


def _add_reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument('--height', type=int, default=None, help='.dat frame height (default 250)')
    p.add_argument('--width', type=int, default=None, help='.dat frame width (default 400)')
    p.add_argument('--flipud', dest='flipud', action='store_true', default=True,
                   help='.dat rows stored flipped (default)')
    p.add_argument('--no-flipud', dest='flipud', action='store_false', help='.dat rows stored upright')
    p.add_argument('--head', action='store_true', help='.dat rows carry the 16-column head')
    p.add_argument('--key', default=None, help='.npz key (spk, arr_0 or seq; default: the first present)')


def reconstruct_main(argv: Optional[List[str]] = None) -> int:
    """``despike-reconstruct``: a .dat/.npz stream → a TFP or TFI image (PNG)."""
    p = argparse.ArgumentParser(prog='despike-reconstruct',
                                description='Reconstruct an image from a spike stream with TFP or TFI.')
    p.add_argument('--method', required=True, choices=('tfp', 'tfi'))
    p.add_argument('--input', required=True, help='spike stream, .dat or .npz')
    p.add_argument('--out', required=True, help='output image (.png, .tif)')
    _add_reader_options(p)
    p.add_argument('--center', type=int, default=None, help='target frame (default T // 2)')
    p.add_argument('--window', type=int, default=41, help='TFP window in frames (default 41)')
    p.add_argument('--threshold', type=float, default=2.0, help='θ used to rescale the rate (default 2)')
    p.add_argument('--eta', type=float, default=1.0, help='η used to rescale the rate (default 1)')
    p.add_argument('--gamma', type=float, default=2.2, help='display gamma (default 2.2)')
    p.add_argument('--bit-depth', type=int, default=8, choices=(8, 16), help='PNG bit depth (default 8)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    args = p.parse_args(argv)

    def work() -> int:
        import cv2
        _check_output(args.out, args.overwrite, ('.png', '.tif', '.tiff'))
        spikes = load_spikes(args.input, height=args.height, width=args.width, flipud=args.flipud, head=args.head,
                             key=args.key)
        display = classical_display(spikes, args.method, args.center, args.window, eta=args.eta,
                                    threshold=args.threshold, gamma=args.gamma)
        peak = 255 if args.bit_depth == 8 else 65535
        image = np.round(display * peak).astype(np.uint8 if args.bit_depth == 8 else np.uint16)
        if not cv2.imwrite(args.out, image):
            raise CommandError(f'{args.out}: OpenCV could not write the image')
        print(f'wrote {args.out}: {args.method.upper()} of {spikes.shape[0]} frames, {image.shape[0]}x{image.shape[1]}')
        return 0

    return run_cli('despike-reconstruct', work, also=(ValueError, ))


def calibrate_fpn_main(argv: Optional[List[str]] = None) -> int:
    """``despike-calibrate-fpn``: uniform-field (and dark) recordings, or ordinary recordings of a moving scene
    (``--from-scene``), → an FPN calibration .npz."""
    p = argparse.ArgumentParser(prog='despike-calibrate-fpn',
                                description='Estimate per-pixel response, FPN correction γ and hot/dead pixels, from '
                                'uniform-field recordings (--uniform) or from ordinary recordings of a moving scene '
                                '(--from-scene).')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--uniform', nargs='+', metavar='REC', help='recordings of a uniform light field')
    source.add_argument('--from-scene', nargs='+', metavar='REC',
                        help='ordinary recordings in which the scene moves across the sensor (no flat field needed; '
                        'a still scene gives γ = 1 and says so)')
    p.add_argument('--dark', nargs='+', default=None, metavar='REC', help='recordings with the lens capped')
    p.add_argument('--min-steps', type=int, default=SCENE_MIN_STEPS,
                   help=f'--from-scene: fewest steps accepted (default {SCENE_MIN_STEPS})')
    p.add_argument('--reference-size', type=int, default=SCENE_REFERENCE_SIZE,
                   help=f'--from-scene: neighbourhood (px) of the local reference (default {SCENE_REFERENCE_SIZE})')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    p.add_argument('--out', required=True, help='output calibration .npz')
    _add_reader_options(p)
    p.add_argument('--reference', default='median',
                   help="reference response: median (default), mean, or a pixel 'ROW,COL'")
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    args = p.parse_args(argv)

    def work() -> int:
        _check_output(args.out, args.overwrite, ('.npz', ))
        reference = args.reference
        if reference not in ('median', 'mean'):
            try:
                row, col = (int(v) for v in reference.split(','))
            except ValueError:
                raise CommandError(f"--reference must be median, mean or ROW,COL, got {reference!r}") from None
            reference = (row, col)
        load_kwargs = dict(height=args.height, width=args.width, flipud=args.flipud, head=args.head, key=args.key)
        if args.from_scene:
            calib = estimate_fpn_from_scene(args.from_scene, args.dark, reference_size=args.reference_size,
                                            min_steps=args.min_steps, progress=args.progress, **load_kwargs)
            save_fpn(args.out, calib)
            spread = float(np.std(np.log(calib.gamma[calib.confidence > 0]))) if np.any(calib.confidence > 0) else 0.0
            print(f'wrote {args.out}: {calib.gamma.shape[0]}x{calib.gamma.shape[1]} pixels, γ spread {spread:.2%}, '
                  f'{int(calib.bad.sum())} hot/dead pixels; {calib.note}')
            return 0
        calib = calibrate_fpn(args.uniform, args.dark, reference=reference, **load_kwargs)
        save_fpn(args.out, calib)
        good = ~calib.bad
        spread = float(np.std(calib.response[good]) / np.mean(calib.response[good]))
        print(f'wrote {args.out}: {calib.gamma.shape[0]}x{calib.gamma.shape[1]} pixels, response spread {spread:.2%}, '
              f'{int(calib.bad.sum())} hot/dead pixels, reference response {calib.ref:.4f} spikes/step')
        return 0

    return run_cli('despike-calibrate-fpn', work, also=(ValueError, ))


if __name__ == '__main__':  # pragma: no cover
    print('use the console scripts despike-simulate, despike-reconstruct, despike-calibrate-fpn', file=sys.stderr)
    sys.exit(2)
