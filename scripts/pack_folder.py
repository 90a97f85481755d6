#!/usr/bin/env python
"""Your own images to a defocused spike LMDB: blurred/sharp pairs, sharp images with depth maps, or sharp images only.

- ``--sharp S --blurred B``: spikes from the blurred images (mode dpdd), pairs matched by sorted file order.
- ``--sharp S --depth D``: thin-lens defocus from depth maps (``.npy`` in meters, or 16-bit PNG in units of
  ``--depth-scale`` meters); give the lens (``--focal-length --f-number --focus-distance --pixel-pitch``, meters) or
  let one be fitted per image so the blur spans ``--sigma-range`` pixels.
- ``--sharp S`` alone: a uniform Gaussian blur with sigma drawn from ``--sigma-range`` (mode thinlens).

Example:
    python scripts/pack_folder.py --sharp my/sharp --depth my/depth --out datasets/mine.lmdb --steps 256
"""
import argparse
import sys
from typing import List, Optional

from despike_basicsr.data import preparation as prep

LENS_OPTIONS = ('focal_length', 'f_number', 'focus_distance', 'pixel_pitch')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--sharp', required=True, help='folder of sharp images (the ground truth)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--blurred', help='folder of blurred images, paired with --sharp by sorted order')
    source.add_argument('--depth', help='folder of depth maps, paired with --sharp by sorted order')
    parser.add_argument('--depth-scale', type=float, default=prep.DEFAULT_DEPTH_SCALE,
                        help='meters per unit of depth images (default 0.001: millimetres)')
    for name in LENS_OPTIONS:
        parser.add_argument('--' + name.replace('_', '-'), type=float, default=None, help='lens, meters (depth mode)')
    prep.add_simulation_arguments(parser, default_mode=None)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    mode = args.mode or ('dpdd' if args.blurred else 'depth' if args.depth else 'thinlens')
    if mode == 'dpdd' and not args.blurred:
        raise ValueError('mode dpdd needs --blurred')
    if mode == 'depth' and not args.depth:
        raise ValueError('mode depth needs --depth')
    lens_values = {name: getattr(args, name) for name in LENS_OPTIONS}
    given = [name for name, value in lens_values.items() if value is not None]
    if given and len(given) != len(LENS_OPTIONS):
        raise ValueError('give all of --focal-length --f-number --focus-distance --pixel-pitch, or none (then a lens '
                         'is fitted to --sigma-range)')
    config = prep.config_from_args(args, mode=mode, depth_scale=args.depth_scale, lens=lens_values if given else None)
    if config.lens is not None:
        prep.optics.ThinLens(**config.lens)  # validates the lens before any work

    sharp = prep.list_images(args.sharp)
    others = [None] * len(sharp)
    if args.blurred:
        others = [b for b, _ in prep.pair_by_sorted_order(prep.list_images(args.blurred), sharp, args.blurred,
                                                          args.sharp)]
    elif args.depth:
        others = [d for d, _ in prep.pair_by_sorted_order(prep.list_images(args.depth, prep.DEPTH_EXTENSIONS), sharp,
                                                          args.depth, args.sharp)]
    specs = []
    for i, (sharp_path, other) in enumerate(zip(sorted(sharp), others)):
        extra = {'blurred_path': other} if args.blurred else {'depth_path': other} if args.depth else {}
        specs.append(prep.SampleSpec(prep.safe_key(i, sharp_path), sharp_path=sharp_path, **extra))
    specs = specs[:args.limit]
    out = prep.prepare_lmdb(specs, args.out, config, tag='folder', overwrite=args.overwrite,
                            progress=not args.no_progress)
    print(f'wrote {len(specs)} samples to {out}')
    return 0


if __name__ == '__main__':
    sys.exit(prep.run_cli(main))
