"""``despike-infer``: reconstruct sharp frames from a real (or simulated) spike-camera recording.

Example::

    despike-infer --weights experiments/DeSpike_DPDD/models/net_g_latest.pth --input rec.dat \\
        --fpn camera_fpn.npz --sliding 200 --video --report --out results/rec

Reads the recording one window at a time (``.dat`` files are memory-mapped, so a long recording never sits in memory),
runs the network on overlapping tiles of each frame (bounded memory for 1000×1000 sensors), and writes

- ``DIR/despike/<stem>_t<centre>.png`` for every centre time (``--format png16|npy|tiff``: other extensions),
  auto-exposed by default (``--exposure``, :mod:`despike_basicsr.inference.display`),
- with ``--video``: ``DIR/<stem>_despike.mp4`` (one video frame per centre time),
- with ``--report``: ``DIR/tfp/``, ``DIR/tfi/`` (classical reconstructions of the same window), ``DIR/side_by_side/``
  (TFP | TFI | DeSpike) and ``DIR/report.md`` + ``DIR/report.json`` with NIQE and RMS contrast of each method.

This module is the command line only: the network, its options and the tiled reconstruction are
:class:`~despike_basicsr.inference.reconstructor.DeSpikeReconstructor`'s, the recording reader is
:class:`~despike_basicsr.spike.io.RecordingReader` and the report is :mod:`despike_basicsr.inference.recording_report`.

Which network: ``--opt X.yml`` (its ``network_g``) wins; without it a ``network_g`` dict stored in the checkpoint is
used, then the options file in the checkpoint's BasicSR experiment folder, and last the repository's
``options/test_despike_dpdd.yml`` (:func:`~despike_basicsr.inference.network.resolve_network_options`). See
docs/inference.md.

Errors (missing or corrupt files, wrong frame size, a checkpoint of another architecture, existing outputs) print one
line ``despike-infer: error: <file>: <what was expected and what was found>`` and exit with status 2.
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from despike_basicsr.errors import DespikeUserError, DespikeUserWarning, run_cli
from despike_basicsr.inference.defocus_map import DEFOCUS_WEIGHTS, DefocusMapEstimator, write_defocus_map
from despike_basicsr.inference.display import FORMATS, expose, output_path, parse_exposure, write_image
from despike_basicsr.inference.network import DEFAULT_OPT, PRETRAINED_WEIGHTS
from despike_basicsr.inference.reconstructor import DeSpikeReconstructor
from despike_basicsr.inference.recording_report import (REPORT_FILES, REPORT_FOLDERS, report_centre, to_uint8,
                                                        write_report)
from despike_basicsr.inference.tiling import count_tiles
from despike_basicsr.spike.fpn import SceneFPNError, estimate_fpn_for_recording, load_fpn
from despike_basicsr.spike.io import DEFAULT_HEIGHT, DEFAULT_WIDTH, RecordingReader

PROG = 'despike-infer'
DEFAULT_WINDOW = 192  # the paper's longest integration window, for networks that do not say what they need


class InferError(DespikeUserError):
    """A user-facing failure: the message names the file, what was expected and what was found."""


# ----------------------------------------------------------------------------------------------------------- centres
def window_for_centre(centre: int, frames: int, window_len: int) -> Tuple[int, int]:
    """Frames ``[start, stop)`` fed to the network for target frame ``centre``.

    The network reconstructs the middle frame ``start + (stop - start) // 2`` of what it is given, so the window is
    ``[centre - N//2, centre - N//2 + N)`` and, where that leaves the recording, shrinks symmetrically around the
    centre.
    """
    start = centre - window_len // 2
    if start >= 0 and start + window_len <= frames:
        return start, start + window_len
    half = min(window_len // 2, centre, frames - centre)
    return centre - half, centre + half


def valid_centre_range(frames: int, min_len: int) -> Tuple[int, int]:
    """Inclusive range of centres whose (possibly shrunk) window still holds ``min_len`` frames."""
    half = (min_len + 1) // 2
    return half, frames - half


def choose_centres(args: argparse.Namespace, frames: int, window_len: int, min_len: int, path: str) -> List[int]:
    """Centre times from ``--center``, ``--centers``, ``--sliding`` (default: the middle frame), validated."""
    lo, hi = valid_centre_range(frames, min_len)
    if hi < lo:
        raise InferError(f'{path}: {frames} frames, but the network needs at least {min_len} (its shortest stream)')
    if args.sliding is not None:
        if args.sliding < 1:
            raise InferError(f'--sliding must be a positive stride in frames, got {args.sliding}')
        # full-length windows only, so every video frame sees the same amount of data; short recordings fall back
        first, last = window_len // 2, frames - (window_len - window_len // 2)
        if last < first:
            first, last = lo, hi
        return list(range(first, last + 1, args.sliding))
    if args.centers is not None:
        try:
            centres = [int(v) for v in args.centers.split(',') if v.strip()]
        except ValueError as err:
            raise InferError(f'--centers expects comma-separated frame indices, got {args.centers!r}') from err
        if not centres:
            raise InferError('--centers is empty')
    elif args.center is not None:
        centres = [args.center]
    else:
        centres = [frames // 2]
    for c in centres:
        if not lo <= c <= hi:
            raise InferError(f'{path}: centre {c} is out of range: with {frames} frames and a shortest stream of '
                             f'{min_len}, centres must lie in {lo}..{hi}')
    return centres


# -------------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Reconstruct sharp frames from a spike-camera recording (.dat or .npz) with a trained DeSpike '
        'network; optionally an MP4 and a no-reference quality report (NIQE, RMS contrast) against TFP and TFI.')
    parser.add_argument(
        '--weights',
        help='trained weights (.pth, BasicSR layout; default: the pretrained DeSpike shipped with the package, '
        'docs/pretrained.md)')
    parser.add_argument(
        '--opt',
        help='options file whose network_g built the weights (default: network_g stored in '
        'the checkpoint, else the options file in its experiment folder, else options/test_despike_dpdd.yml)')
    parser.add_argument(
        '--param-key',
        help="checkpoint key of the weights (default: 'params_ema', else 'params', "
        'else a bare state dict)')
    parser.add_argument('--input', required=True, help='recording: .dat (headerless bits) or .npz (spk/arr_0/seq)')
    parser.add_argument('--height', type=int, help=f'.dat frame height (default {DEFAULT_HEIGHT}); checked for .npz')
    parser.add_argument('--width', type=int, help=f'.dat frame width (default {DEFAULT_WIDTH}); checked for .npz')
    parser.add_argument(
        '--flipud',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='.dat rows are stored upside down (default: flip them back)')
    parser.add_argument('--head', action='store_true', help='.dat rows carry the 16-column head of raw camera output')
    parser.add_argument('--key', help='.npz key (default: spk, arr_0 or seq, whichever is present)')
    parser.add_argument('--fpn', help='FPN calibration .npz from despike-calibrate-fpn, a bare γ map .npy (H, W), or '
                        '"auto": estimated from this recording (a moving scene, thousands of steps; docs/inference.md)')
    when = parser.add_mutually_exclusive_group()
    when.add_argument('--center', type=int, help='reconstruct this frame (default: the middle of the recording)')
    when.add_argument('--centers', help='comma-separated frames, e.g. 200,400,600')
    when.add_argument('--sliding', type=int, metavar='STRIDE', help='every STRIDE frames over the whole recording')
    parser.add_argument(
        '--window-len',
        type=int,
        help='frames fed to the network per reconstruction (default: the '
        'longest window the network reads, 192 for the paper setting)')
    parser.add_argument(
        '--exposure',
        default='auto',
        help="display exposure: 'auto' (default: the frame's median at mid-grey, highlights rolled off instead of "
        "clipped), 'fixed' (the reference camera's scale, clipped at 1) or a linear gain on that scale, e.g. 0.5")
    parser.add_argument(
        '--format',
        choices=tuple(FORMATS),
        default='png8',
        help='png8 (default), png16 (16-bit), npy or tiff (float32 display values before roll-off and clipping)')
    parser.add_argument(
        '--defocus-map',
        nargs='?',
        const=DEFOCUS_WEIGHTS,
        metavar='WEIGHTS',
        help='also write DIR/defocus/<stem>_t<centre>.npy (float32 defocus σ in pixels per pixel) and a colour-mapped '
        '.png, from the shipped defocus-map network or WEIGHTS (docs/inference.md, "Defocus map")')
    parser.add_argument('--video', action='store_true', help='also write DIR/<stem>_despike.mp4 (mp4v)')
    parser.add_argument('--fps', type=float, default=25.0, help='frame rate of the MP4 (default 25)')
    parser.add_argument('--tile', type=int, default=256, help='tile size in pixels, 0 = whole frame (default 256)')
    parser.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles (default 32)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), help='default: cuda when available, else cpu')
    parser.add_argument('--correction-strength', type=float, default=1.0, metavar='ALPHA',
                        help='scale of the learned correction on the plain reconstructions, 0-2 (default 1; 0 keeps '
                        'sharp, well-lit scenes exactly as a long-window average shows them but leaves defocus)')
    parser.add_argument('--correction-threshold', type=float, default=None, metavar='GREY',
                        help='drop corrections smaller than this many 8-bit grey levels (default: the weights\' own, '
                        '4 for the shipped ones; 0 applies every correction)')
    parser.add_argument(
        '--report',
        action='store_true',
        help='TFP/TFI/side-by-side PNGs and a NIQE + RMS contrast '
        'table (report.md, report.json)')
    parser.add_argument('--tfp-window', type=int, default=41, help='TFP window in frames for --report (default 41)')
    parser.add_argument('--eta', type=float, default=1.0, help='photo-electric rate η for TFP/TFI display (default 1)')
    parser.add_argument(
        '--threshold',
        type=float,
        default=2.0,
        help='firing threshold θ for TFP/TFI display '
        '(default 2, the simulator\'s)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs in --out')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def planned_outputs(out_dir: str, stem: str, centres: Sequence[int], video: bool, report: bool,
                    fmt: str = 'png8') -> List[str]:
    """Every file this run will write (checked against existing files before any work)."""
    names = [output_path(osp.join('despike', f'{stem}_t{c:06d}'), fmt) for c in centres]
    if report:
        for sub in REPORT_FOLDERS:
            names += [osp.join(sub, f'{stem}_t{c:06d}.png') for c in centres]
        names += list(REPORT_FILES)
    if video:
        names.append(f'{stem}_despike.mp4')
    return [osp.join(out_dir, n) for n in names]


def defocus_outputs(out_dir: str, stem: str, centres: Sequence[int]) -> List[str]:
    """The ``--defocus-map`` files: ``DIR/defocus/<stem>_t<centre>.npy`` and ``.png`` per centre."""
    return [osp.join(out_dir, 'defocus', f'{stem}_t{c:06d}{ext}') for c in centres for ext in ('.npy', '.png')]


def write_defocus_centre(out_dir: str, stem: str, centre: int, rec: RecordingReader, estimator: DefocusMapEstimator,
                         gamma: Optional[torch.Tensor]) -> None:
    """The defocus map of one centre time, from a window of the frames the estimator reads (its own length)."""
    start, stop = window_for_centre(centre, rec.frames, estimator.frames_needed)
    window = torch.from_numpy(np.ascontiguousarray(rec.read(start, stop)))[None]
    write_defocus_map(osp.join(out_dir, 'defocus', f'{stem}_t{centre:06d}'), estimator.estimate_window(window, gamma))


def check_out_folder(out: str) -> None:
    """``--out`` must be a folder or a path where one can be made: an existing file there (or above it) is refused."""
    path = osp.abspath(out)
    while not osp.exists(path) and osp.dirname(path) != path:
        path = osp.dirname(path)
    if not osp.isdir(path):
        where = out if path == osp.abspath(out) else f'{out} (at {path})'
        raise InferError(f'{where}: is a file, not a folder; --out names the folder the images are written to')


def check_window_len(window_len: Optional[int]) -> None:
    """``--window-len``, when given, is a positive number of frames."""
    if window_len is not None and window_len < 1:
        raise InferError(f'--window-len must be a positive number of frames, got {window_len}')


def fit_window_len(window_len: int, given: bool, frames: int, path: str) -> int:
    """The window, at most the recording: a ``--window-len`` longer than the recording is clamped to it, said once
    (a :class:`~despike_basicsr.errors.DespikeUserWarning`); the network's own default shrinks silently, as near the
    ends of every recording (:func:`window_for_centre`)."""
    if window_len <= frames:
        return window_len
    if given:
        warnings.warn(DespikeUserWarning(f'--window-len {window_len} is longer than {path} ({frames} frames): '
                                         f'using {frames} frames'), stacklevel=2)
    return frames


def load_reconstructor(args: argparse.Namespace) -> DeSpikeReconstructor:
    """The network of ``--weights`` (default: the shipped one) as :class:`DeSpikeReconstructor` builds it, after the
    flags are checked; the network's options come from ``--opt``, else
    :func:`~despike_basicsr.inference.network.resolve_network_options` down to :data:`DEFAULT_OPT`."""
    if args.tile < 0 or args.tile_overlap < 0:
        raise InferError(f'--tile and --tile-overlap must be >= 0, got {args.tile} and {args.tile_overlap}')
    if args.tile and args.tile_overlap >= args.tile:
        raise InferError(f'--tile-overlap ({args.tile_overlap}) must be smaller than --tile ({args.tile})')
    if args.weights is None:
        args.weights = PRETRAINED_WEIGHTS
        if not osp.isfile(args.weights):
            raise InferError(f'{args.weights}: the pretrained weights are missing from this installation; pass '
                             '--weights')
    if not osp.isfile(args.weights):
        raise InferError(f'{args.weights}: no such weights file (--weights)')
    if args.opt is not None and not osp.isfile(args.opt):
        raise InferError(f'{args.opt}: no such options file (--opt)')
    return DeSpikeReconstructor(args.weights, opt_path=args.opt, param_key=args.param_key, device=args.device,
                                tile=args.tile, tile_overlap=args.tile_overlap, fallback_opt_path=DEFAULT_OPT,
                                correction_strength=args.correction_strength,
                                correction_threshold=args.correction_threshold)


def run(args: argparse.Namespace) -> dict:
    """Run the reconstruction described by parsed arguments; returns a summary dict (used by tests and scripts)."""
    try:
        exposure = parse_exposure(args.exposure)
    except ValueError as err:
        raise InferError(f'--exposure: {err}') from None
    check_window_len(args.window_len)
    check_out_folder(args.out)
    reconstructor = load_reconstructor(args)
    min_len = reconstructor.min_stream_len
    window_len = args.window_len
    if window_len is None:
        window_len = int(getattr(reconstructor.net, 'frames_needed', DEFAULT_WINDOW))
    if window_len < min_len:
        raise InferError(f'--window-len {window_len} is shorter than the network\'s shortest stream ({min_len})')

    if not osp.isfile(args.input):
        raise InferError(f'{args.input}: no such recording (--input)')
    rec = RecordingReader(args.input, args.height, args.width, args.flipud, args.head, args.key)
    window_len = fit_window_len(window_len, args.window_len is not None, rec.frames, args.input)
    centres = choose_centres(args, rec.frames, window_len, min_len, args.input)
    gamma = None
    if args.fpn == 'auto':
        try:
            calibration = estimate_fpn_for_recording(rec, progress=not args.quiet)
        except SceneFPNError as err:
            raise InferError(f'--fpn auto: {err}') from None
        print(f'{PROG}: --fpn auto: {calibration.note}', file=sys.stderr)
        gamma = torch.from_numpy(calibration.gamma.astype(np.float32))[None, None]
    elif args.fpn:
        gamma = torch.from_numpy(load_fpn(args.fpn, (rec.height, rec.width)))[None, None]

    stem = osp.splitext(osp.basename(args.input))[0]
    outputs = planned_outputs(args.out, stem, centres, args.video, args.report, args.format)
    outputs += defocus_outputs(args.out, stem, centres) if args.defocus_map else []
    existing = [p for p in outputs if osp.exists(p)]
    if existing and not args.overwrite:
        raise InferError(f'{existing[0]}: output exists ({len(existing)} of this run\'s {len(outputs)} files are '
                         'already in --out); pass --overwrite to replace them')
    estimator = None
    if args.defocus_map:
        if not osp.isfile(args.defocus_map):
            raise InferError(f'{args.defocus_map}: no such defocus-map weights file (--defocus-map)')
        estimator = DefocusMapEstimator(args.defocus_map, reconstructor.device, args.tile, args.tile_overlap)
    for sub in ('despike', ) + (REPORT_FOLDERS if args.report else ()):
        os.makedirs(osp.join(args.out, sub), exist_ok=True)

    writer = None
    if args.video:
        video_path = osp.join(args.out, f'{stem}_despike.mp4')
        # MPEG-4 part 2 decoders drop an odd last row/column: frames are padded to even sizes (edge replicated)
        video_size = (rec.width + rec.width % 2, rec.height + rec.height % 2)
        writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*'mp4v'), args.fps, video_size)
        if not writer.isOpened():
            raise InferError(f'{video_path}: OpenCV cannot open an mp4v video writer here')

    tiles = count_tiles(rec.height, rec.width, args.tile, args.tile_overlap)
    bar = tqdm(total=len(centres) * tiles, unit='tile', desc=PROG, disable=args.quiet, file=sys.stderr)
    rows = []
    try:
        for centre in centres:
            start, stop = window_for_centre(centre, rec.frames, window_len)
            window = rec.read(start, stop)
            image = reconstructor.reconstruct_window(torch.from_numpy(np.ascontiguousarray(window))[None], gamma,
                                                     bar.update)
            shown, kept, _ = expose(image[0, 0].float().cpu().numpy(), exposure)
            despike_u8 = to_uint8(shown)
            name = f'{stem}_t{centre:06d}.png'
            try:
                path = output_path(osp.join(args.out, 'despike', f'{stem}_t{centre:06d}'), args.format)
                write_image(path, shown, kept, args.format)
            except OSError as err:
                raise InferError(str(err)) from None
            if estimator is not None:
                write_defocus_centre(args.out, stem, centre, rec, estimator, gamma)
            if writer is not None:
                frame = np.pad(despike_u8, ((0, rec.height % 2), (0, rec.width % 2)), mode='edge')
                writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
            if args.report:
                fpn_gamma = None if gamma is None else gamma[0, 0].numpy()  # γ = R_ref / R
                measures = report_centre(args.out, name, window, centre - start, despike_u8, args.tfp_window,
                                         args.eta, args.threshold, fpn_gamma, exposure)
                rows.append(dict(centre=centre, window=[start, stop], **measures))
    finally:
        bar.close()
        if writer is not None:
            writer.release()

    info = dict(
        input=args.input,
        weights=args.weights,
        network=reconstructor.network_opt.get('type'),
        network_source=reconstructor.network_source,
        height=rec.height,
        width=rec.width,
        frames=rec.frames,
        window_len=window_len,
        tfp_window=args.tfp_window,
        fpn=args.fpn,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        exposure=exposure,
        format=args.format,
        centres=centres)
    if estimator is not None:
        info['defocus_map'] = estimator.weights
    if args.report:
        info = write_report(args.out, info, rows)
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry ``despike-infer``; returns the exit status (0, or 2 on bad input)."""
    args = build_parser().parse_args(argv)

    def work() -> int:
        run(args)
        return 0

    return run_cli(PROG, work)


if __name__ == '__main__':
    sys.exit(main())
