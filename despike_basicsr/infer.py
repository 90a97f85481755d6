"""``despike-infer``: reconstruct sharp frames from a real (or simulated) spike-camera recording.

Example::

    despike-infer --weights experiments/DeSpike_DPDD/models/net_g_latest.pth --input rec.dat \\
        --fpn camera_fpn.npz --sliding 200 --video --report --out results/rec

Reads the recording one window at a time (``.dat`` files are memory-mapped, so a long recording never sits in memory),
runs the network on overlapping tiles of each frame (bounded memory for 1000×1000 sensors), and writes

- ``DIR/despike/<stem>_t<centre>.png`` for every centre time,
- with ``--video``: ``DIR/<stem>_despike.mp4`` (one video frame per centre time),
- with ``--report``: ``DIR/tfp/``, ``DIR/tfi/`` (classical reconstructions of the same window), ``DIR/side_by_side/``
  (TFP | TFI | DeSpike) and ``DIR/report.md`` + ``DIR/report.json`` with NIQE and RMS contrast of each method.

Which network: ``--opt X.yml`` (its ``network_g``) wins; without it a ``network_g`` dict stored in the checkpoint is
used; otherwise the repository's ``options/test_despike_dpdd.yml``. See docs/inference.md.

Errors (missing or corrupt files, wrong frame size, a checkpoint of another architecture, existing outputs) print one
line ``despike-infer: error: <file>: <what was expected and what was found>`` and exit with status 2.
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from despike_basicsr.checkpoint import check_fits, safe_torch_load, state_dict_from_checkpoint
from despike_basicsr.errors import DespikeUserError, run_cli
from despike_basicsr.metrics.noref_metric import NIQE_BLOCK, calculate_niqe_gray, calculate_rms_contrast
from despike_basicsr.options import OptionsError, read_network_options
from despike_basicsr.reconstructor import PRETRAINED_WEIGHTS, reconstruct_tiled, select_device
from despike_basicsr.spike.fpn import load_fpn
from despike_basicsr.spike.io import DEFAULT_HEIGHT, DEFAULT_WIDTH, frame_bytes, load_spikes
from despike_basicsr.spike.reconstruct import classical_display
from despike_basicsr.tiling import count_tiles

PROG = 'despike-infer'
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_OPT = osp.join(REPO_ROOT, 'options', 'test_despike_dpdd.yml')
DEFAULT_WINDOW = 192  # the paper's longest integration window, for networks that do not say what they need
METHODS = ('tfp', 'tfi', 'despike')
METHOD_LABELS = {'tfp': 'TFP', 'tfi': 'TFI', 'despike': 'DeSpike'}


class InferError(DespikeUserError):
    """A user-facing failure: the message names the file, what was expected and what was found."""


# ----------------------------------------------------------------------------------------------------------- network
def resolve_network_options(opt_path: Optional[str], checkpoint: object, weights_path: str) -> Tuple[dict, str]:
    """Pick ``network_g``: ``--opt`` file, else a ``network_g`` dict in the checkpoint, else the default options file.

    Returns:
        ``(network_g, source)`` where ``source`` says where it came from (for messages and the report).
    """
    if opt_path is None and isinstance(checkpoint, dict) and isinstance(checkpoint.get('network_g'), dict):
        return dict(checkpoint['network_g']), f'network_g stored in {weights_path}'
    if opt_path is None:
        opt_path = DEFAULT_OPT
        if not osp.isfile(opt_path):
            raise InferError(f'{opt_path}: default options file missing and {weights_path} stores no network_g; '
                             'pass --opt with the options file the weights were trained with')
    if not osp.isfile(opt_path):
        raise InferError(f'{opt_path}: no such options file (--opt)')
    try:
        return read_network_options(opt_path), opt_path
    except OptionsError as err:
        raise InferError(str(err)) from None


def build_and_load(network_opt: dict, source: str, state: Dict[str, torch.Tensor], weights_path: str,
                   device: torch.device) -> torch.nn.Module:
    """Build the registered network of ``network_opt`` and load ``state`` strictly (after a readable check)."""
    import despike_basicsr
    despike_basicsr.register()  # compat before basicsr loads; fills BasicSR's registries
    from basicsr.archs import build_network
    try:
        net = build_network(dict(network_opt))
    except (KeyError, TypeError, ValueError) as err:
        raise InferError(f'{source}: cannot build network_g {network_opt.get("type")!r} ({type(err).__name__}: '
                         f'{err})') from err
    check_fits(net, state, weights_path, source)
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


# --------------------------------------------------------------------------------------------------------- recording
class Recording:
    """A spike recording read window by window: ``.dat`` through memory-mapped frame ranges, ``.npz`` once.

    (``.npz`` members are zip entries, possibly compressed, so they cannot be memory-mapped.)
    """

    def __init__(self, path: str, height: Optional[int], width: Optional[int], flipud: bool, head: bool,
                 key: Optional[str]) -> None:
        self.path = path
        ext = osp.splitext(path)[1].lower()
        if not osp.isfile(path):
            raise InferError(f'{path}: no such recording (--input)')
        self._array = None
        self._kwargs = dict(height=height, width=width, flipud=flipud, head=head, key=key)
        if ext == '.dat':
            self.height = height or DEFAULT_HEIGHT
            self.width = width or DEFAULT_WIDTH
            load_spikes(path, frames=(0, 1), **self._kwargs)  # validates the size against the frame shape
            self.frames = osp.getsize(path) // frame_bytes(self.height, self.width, head)
        elif ext == '.npz':
            self._array = load_spikes(path, **self._kwargs)
            self.frames, self.height, self.width = self._array.shape
        else:
            raise InferError(f'{path}: unknown recording extension {ext!r}: expected .dat or .npz')

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as (T, H, W) uint8 0/1."""
        if self._array is not None:
            return self._array[start:stop]
        return load_spikes(self.path, frames=(start, stop), **self._kwargs)


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
        raise InferError(f'{path}: {frames} frames, but the network needs at least {min_len} (its smallest window)')
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
            raise InferError(f'{path}: centre {c} is out of range: with {frames} frames and a smallest window of '
                             f'{min_len}, centres must lie in {lo}..{hi}')
    return centres


# ------------------------------------------------------------------------------------------------------------ images
def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float image → uint8 (rounded, clipped), as BasicSR's tensor2img does."""
    return (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def side_by_side(images: Sequence[np.ndarray], labels: Sequence[str], gap: int = 4, band: int = 22) -> np.ndarray:
    """Grayscale uint8 panels left to right with a white gap and a label band on top."""
    height = images[0].shape[0]
    panels = []
    for i, (img, label) in enumerate(zip(images, labels)):
        top = np.full((band, img.shape[1]), 255, np.uint8)
        cv2.putText(top, label, (4, band - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
        panels.append(np.vstack([top, img]))
        if i < len(images) - 1:
            panels.append(np.full((height + band, gap), 255, np.uint8))
    return np.hstack(panels)


def write_png(path: str, img: np.ndarray) -> None:
    if not cv2.imwrite(path, img):
        raise InferError(f'{path}: could not write the image')


# ------------------------------------------------------------------------------------------------------------ report
def measure(img_u8: np.ndarray) -> Dict[str, Optional[float]]:
    """NIQE (None when the frame holds fewer than two 96×96 blocks or is flat) and RMS contrast of one uint8 image."""
    try:
        niqe = calculate_niqe_gray(img_u8)
    except ValueError:
        niqe = None
    if niqe is not None and not math.isfinite(niqe):
        niqe = None
    return {'niqe': niqe, 'rms_contrast': calculate_rms_contrast(img_u8)}


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _fmt(value: Optional[float], digits: int) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}'


def write_report(out_dir: str, info: dict, rows: List[dict]) -> dict:
    """Write ``report.json`` and ``report.md`` (summary over centres, then one row per centre); returns the json."""
    summary = {
        m: {
            'niqe': _mean([r[m]['niqe'] for r in rows]),
            'rms_contrast': _mean([r[m]['rms_contrast'] for r in rows]),
            'niqe_count': sum(r[m]['niqe'] is not None for r in rows),
        }
        for m in METHODS
    }
    report = dict(info, summary=summary, per_centre=rows)
    with open(osp.join(out_dir, 'report.json'), 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)

    lines = [
        f'# No-reference quality: {osp.basename(info["input"])}',
        '',
        f'{info["height"]}x{info["width"]}, {info["frames"]} frames; {len(rows)} centre time(s); network window '
        f'{info["window_len"]} frames; TFP window {info["tfp_window"]}; FPN correction: {info["fpn"] or "none"}.',
        f'NIQE: BasicSR\'s, lower is better ({NIQE_BLOCK}x{NIQE_BLOCK} blocks; n/a below two blocks or on flat '
        'images). RMS contrast: standard deviation of intensities in [0, 1]. Measured on the written 8-bit PNGs.',
        '',
        '| method | NIQE (lower is better) | RMS contrast |',
        '|---|---|---|',
    ]
    for m in METHODS:
        lines.append(f'| {METHOD_LABELS[m]} | {_fmt(summary[m]["niqe"], 3)} | {_fmt(summary[m]["rms_contrast"], 4)} |')
    niqe_columns = ' | '.join(f'{METHOD_LABELS[m]} NIQE' for m in METHODS)
    contrast_columns = ' | '.join(f'{METHOD_LABELS[m]} contrast' for m in METHODS)
    lines += ['', '## Per centre time', '', f'| centre | {niqe_columns} | {contrast_columns} |']
    lines.append('|---' * (1 + 2 * len(METHODS)) + '|')
    for r in rows:
        lines.append(f'| {r["centre"]} | ' + ' | '.join(_fmt(r[m]['niqe'], 3) for m in METHODS) + ' | ' +
                     ' | '.join(_fmt(r[m]['rms_contrast'], 4) for m in METHODS) + ' |')
    with open(osp.join(out_dir, 'report.md'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    return report


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
        'the checkpoint, else options/test_despike_dpdd.yml)')
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
    parser.add_argument('--fpn', help='FPN calibration .npz from despike-calibrate-fpn, or a bare γ map .npy (H, W)')
    when = parser.add_mutually_exclusive_group()
    when.add_argument('--center', type=int, help='reconstruct this frame (default: the middle of the recording)')
    when.add_argument('--centers', help='comma-separated frames, e.g. 200,400,600')
    when.add_argument('--sliding', type=int, metavar='STRIDE', help='every STRIDE frames over the whole recording')
    parser.add_argument(
        '--window-len',
        type=int,
        help='frames fed to the network per reconstruction (default: the '
        'longest window the network reads, 192 for the paper setting)')
    parser.add_argument('--video', action='store_true', help='also write DIR/<stem>_despike.mp4 (mp4v)')
    parser.add_argument('--fps', type=float, default=25.0, help='frame rate of the MP4 (default 25)')
    parser.add_argument('--tile', type=int, default=256, help='tile size in pixels, 0 = whole frame (default 256)')
    parser.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles (default 32)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), help='default: cuda when available, else cpu')
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


def planned_outputs(out_dir: str, stem: str, centres: Sequence[int], video: bool, report: bool) -> List[str]:
    """Every file this run will write (checked against existing files before any work)."""
    names = [osp.join('despike', f'{stem}_t{c:06d}.png') for c in centres]
    if report:
        for sub in ('tfp', 'tfi', 'side_by_side'):
            names += [osp.join(sub, f'{stem}_t{c:06d}.png') for c in centres]
        names += ['report.md', 'report.json']
    if video:
        names.append(f'{stem}_despike.mp4')
    return [osp.join(out_dir, n) for n in names]


def run(args: argparse.Namespace) -> dict:
    """Run the reconstruction described by parsed arguments; returns a summary dict (used by tests and scripts)."""
    if args.tile < 0 or args.tile_overlap < 0:
        raise InferError(f'--tile and --tile-overlap must be >= 0, got {args.tile} and {args.tile_overlap}')
    if args.tile and args.tile_overlap >= args.tile:
        raise InferError(f'--tile-overlap ({args.tile_overlap}) must be smaller than --tile ({args.tile})')
    device = select_device(args.device)

    if args.weights is None:
        args.weights = PRETRAINED_WEIGHTS
        if not osp.isfile(args.weights):
            raise InferError(f'{args.weights}: the pretrained weights are missing from this installation; pass '
                             '--weights')
    if not osp.isfile(args.weights):
        raise InferError(f'{args.weights}: no such weights file (--weights)')
    checkpoint = safe_torch_load(args.weights, what='weights file (--weights)')
    state = state_dict_from_checkpoint(checkpoint, args.weights, args.param_key, require_key=args.param_key is not None)
    network_opt, source = resolve_network_options(args.opt, checkpoint, args.weights)
    net = build_and_load(network_opt, source, state, args.weights, device)
    min_len = int(getattr(net, 'min_stream_len', 1))
    window_len = args.window_len or int(getattr(net, 'frames_needed', DEFAULT_WINDOW))
    if window_len < min_len:
        raise InferError(f'--window-len {window_len} is shorter than the network\'s smallest window ({min_len})')

    rec = Recording(args.input, args.height, args.width, args.flipud, args.head, args.key)
    centres = choose_centres(args, rec.frames, window_len, min_len, args.input)
    gamma = None
    if args.fpn:
        gamma = torch.from_numpy(load_fpn(args.fpn, (rec.height, rec.width)))[None, None]

    stem = osp.splitext(osp.basename(args.input))[0]
    outputs = planned_outputs(args.out, stem, centres, args.video, args.report)
    existing = [p for p in outputs if osp.exists(p)]
    if existing and not args.overwrite:
        raise InferError(f'{existing[0]}: output exists ({len(existing)} of this run\'s {len(outputs)} files are '
                         'already in --out); pass --overwrite to replace them')
    subdirs = ['despike'] + (['tfp', 'tfi', 'side_by_side'] if args.report else [])
    for sub in subdirs:
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
            spikes = torch.from_numpy(np.ascontiguousarray(window))[None]
            with torch.inference_mode():
                image = reconstruct_tiled(net, spikes, gamma, args.tile, args.tile_overlap, device, bar.update)
            despike_u8 = to_uint8(image[0, 0].cpu().numpy())
            name = f'{stem}_t{centre:06d}.png'
            write_png(osp.join(args.out, 'despike', name), despike_u8)
            if writer is not None:
                frame = np.pad(despike_u8, ((0, rec.height % 2), (0, rec.width % 2)), mode='edge')
                writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
            if args.report:
                images = {'despike': despike_u8}
                local = centre - start
                fpn_gamma = None if gamma is None else gamma[0, 0].numpy()  # γ = R_ref / R
                for m in ('tfp', 'tfi'):
                    images[m] = to_uint8(classical_display(window, m, center=local, window=args.tfp_window,
                                                           eta=args.eta, threshold=args.threshold, fpn_gamma=fpn_gamma))
                    write_png(osp.join(args.out, m, name), images[m])
                write_png(
                    osp.join(args.out, 'side_by_side', name),
                    side_by_side([images[m] for m in METHODS], [METHOD_LABELS[m] for m in METHODS]))
                rows.append(dict(centre=centre, window=[start, stop], **{m: measure(images[m]) for m in METHODS}))
    finally:
        bar.close()
        if writer is not None:
            writer.release()

    info = dict(
        input=args.input,
        weights=args.weights,
        network=network_opt.get('type'),
        network_source=source,
        height=rec.height,
        width=rec.width,
        frames=rec.frames,
        window_len=window_len,
        tfp_window=args.tfp_window,
        fpn=args.fpn,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        centres=centres)
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
