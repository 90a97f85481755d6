#!/usr/bin/env python
"""Held-out natural data: DeSpike (shipped weights or --weights) against TFP, TFI and the defocused image itself.

Scenes: the DPDD val pairs (real lens defocus) and scikit-image's sample photographs with synthetic depth, each at a
bright and a 4× dimmer light level; PSNR/SSIM raw and after a gain/offset fit (despike_basicsr/evaluation/heldout.py).
Do no harm (despike_basicsr/evaluation/no_harm.py): the same sharp images in focus (bar: TFP-192) and moving across the
sensor (bar: TFP-41), and real-format recordings of moving scenes (--recordings, bar: TFP-41); the table of DeSpike's
per-image differences to each bar ends heldout.md (``--no-harm`` skips these sets).

    python scripts/evaluate_heldout.py                                   # -> results/heldout/heldout.{md,json,png}
    python scripts/evaluate_heldout.py --weights experiments/X/models/net_g_latest.pth --out results/heldout_x

A second section scores the per-pixel defocus map (DefocusMapNet, despike_basicsr/inference/defocus_map.py) against
the true σ of the photographs over synthetic depth (Gaussian and lens-like PSFs): Spearman and MAE on textured
pixels, written to defocus_map.{md,json,png} beside the image results (``--defocus-only`` runs this section alone,
``--no-defocus-map`` skips it).
"""
import argparse
import os.path as osp
import sys
import time
from typing import List, Optional

from despike_basicsr.evaluation import heldout, no_harm
from despike_basicsr.inference.reconstructor import DeSpikeReconstructor, ReconstructorError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dpdd-root', default='../shared/data/dpdd_gray768', help='DPDD layout with a val_c split')
    parser.add_argument('--no-photos', action='store_true', help='skip the scikit-image photographs')
    parser.add_argument('--weights', help='DeSpike checkpoint (default: the shipped pretrained weights)')
    parser.add_argument('--opt', help='options file for checkpoints that do not store their network_g')
    parser.add_argument('--device', help='cpu, cuda (default: CUDA when available)')
    parser.add_argument('--tile', type=int, default=0, help='tile size for large frames (0: whole frames)')
    parser.add_argument('--steps', type=int, default=192, help='stream length')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--no-harm', action='store_true', help='skip the in-focus, moving and recording sets')
    parser.add_argument('--recordings', default='../shared/data/spikezoo_reds_train',
                        help='folder of spike/<key>.dat (250x400) and gt/<key>.png clips (skipped when missing)')
    parser.add_argument('--correction-strength', type=float, default=1.0,
                        help='scale of the learned correction (DeSpikeReconstructor), default 1')
    parser.add_argument('--correction-threshold', type=float,
                        help='dead zone of the correction in grey levels (default: the weights\' own)')
    parser.add_argument('--dark-rate', type=float, default=heldout.EVAL_CAMERA['dark_rate'],
                        help='dark current of the simulated camera, spikes per step (default 0)')
    parser.add_argument('--out', default='results/heldout', help='output folder')
    parser.add_argument('--defocus-weights', help='defocus-map weights (default: the shipped defocus_map.pth)')
    parser.add_argument('--no-defocus-map', action='store_true', help='skip the defocus-map section')
    parser.add_argument('--defocus-only', action='store_true', help='run the defocus-map section alone')
    args = parser.parse_args(argv)
    if args.defocus_only:
        return evaluate_defocus_map(args)
    if args.dark_rate < 0:
        parser.error(f'--dark-rate must not be negative, got {args.dark_rate}')
    camera = dict(heldout.EVAL_CAMERA, dark_rate=args.dark_rate)
    try:
        reconstructor = DeSpikeReconstructor(args.weights, opt_path=args.opt, device=args.device, tile=args.tile,
                                             correction_strength=args.correction_strength,
                                             correction_threshold=args.correction_threshold)
    except ReconstructorError as err:
        print(f'evaluate_heldout: error: {err}', file=sys.stderr)
        return 2
    val = heldout.dpdd_val_scenes(args.dpdd_root) if args.dpdd_root else []
    photos = [] if args.no_photos else heldout.synthetic_depth_scenes(heldout.skimage_images(), seed=args.seed)
    scenes = val + photos
    if not args.no_harm:
        scenes += no_harm.in_focus_scenes(val) + no_harm.in_focus_scenes(photos)
        scenes += no_harm.moving_scenes(val + photos, args.steps, args.seed)
    start = time.time()

    def despike(spikes, gamma):  # unclipped: the exposure correction comes first
        return reconstructor.reconstruct(spikes, gamma, clip=False, exposure='fixed')

    report = heldout.evaluate(scenes, despike, reconstructor.net.reference_rate, args.steps,
                              args.seed, progress=lambda line: print(line, flush=True), camera=camera)
    harm_table = ''
    if not args.no_harm:
        clips = no_harm.recording_clips(args.recordings) if osp.isdir(args.recordings) else []
        report['rows'] += no_harm.evaluate_recordings(clips, lambda s: despike(s, None))['rows']
        report['summary'] = heldout.summarise(report['rows'])
        report['no_harm'] = no_harm.harm_rows(report['rows'])
        harm_table = ('\n## Do no harm: DeSpike minus the bar, fitted PSNR (dB)\n\n' +
                      no_harm.harm_markdown(report['no_harm']))
    network = reconstructor.network_source.replace(reconstructor.weights, display_path(reconstructor.weights))
    info = dict(weights=describe_weights(reconstructor.weights), network=network, steps=args.steps,
                seed=args.seed, levels=heldout.LIGHT_LEVELS, camera=camera,
                seconds=round(time.time() - start, 1))
    paths = heldout.write_results(report, args.out, info, extra=harm_table)
    print(heldout.markdown(report['summary']) + harm_table)
    print('wrote', ', '.join(paths.values()))
    return 0 if args.no_defocus_map else evaluate_defocus_map(args)


def display_path(path: str) -> str:
    """``path`` relative to the working folder when it lies inside it (results name no machine's folders)."""
    relative = osp.relpath(osp.abspath(path))
    return path if relative.startswith('..') else relative


def describe_weights(path: str) -> str:
    """The weights' path and, for a packaged file (``scripts/package_weights.py``), its ``meta.note``."""
    import torch
    try:
        note = (torch.load(path, map_location='cpu', weights_only=False).get('meta') or {}).get('note', '')
    except (OSError, RuntimeError, AttributeError):
        note = ''
    return display_path(path) + (f' ({note})' if note else '')


def evaluate_defocus_map(args: argparse.Namespace) -> int:
    """The defocus-map section: σ maps of held-out photographs over synthetic depth against the truth."""
    from despike_basicsr.inference.defocus_map import DefocusMapEstimator

    try:
        estimator = DefocusMapEstimator(args.defocus_weights, device=args.device, tile=args.tile)
    except ReconstructorError as err:
        print(f'evaluate_heldout: error: {err}', file=sys.stderr)
        return 2
    images = heldout.skimage_images()
    scenes = [s for family in heldout.DEFOCUS_FAMILIES
              for s in heldout.defocus_map_scenes(images, psf_family=family)]
    start = time.time()
    report = heldout.evaluate_defocus_map(scenes, estimator.estimate, seed=args.seed,
                                          progress=lambda line: print(line, flush=True))
    info = dict(weights=display_path(estimator.weights), steps=heldout.DEFOCUS_STEPS,
                max_sigma=heldout.DEFOCUS_MAX_SIGMA,
                seed=args.seed, levels=heldout.LIGHT_LEVELS, camera=heldout.EVAL_CAMERA, fpn=None,
                seconds=round(time.time() - start, 1))
    paths = heldout.write_defocus_map_results(report, args.out, info)
    print(heldout.defocus_map_markdown(report))
    print('wrote', ', '.join(paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
