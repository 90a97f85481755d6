#!/usr/bin/env python
"""The built-in demo data set: procedural scenes, thin-lens defocus from their depth, spikes; no downloads.

Writes ``OUT/demo_train.lmdb`` and ``OUT/demo_val.lmdb`` (each with the simulated sensor's ``fpn.npz``). Scenes hold
textures, edges, text-like strokes and shapes at depths from 0.8 to 6 m; one fixed thin lens, focused in front of the
nearest object, blurs them with a Gaussian sigma from about 1 px (near) to 4 px (far), so deblurring matters
everywhere. The defaults take well under a minute on a 2-core CPU.

Example:
    python scripts/make_demo_dataset.py --out datasets/demo
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

from despike_basicsr.data import preparation as prep
from despike_basicsr.data.scenes import SceneConfig, generate_scene


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', default='datasets/demo', help='output folder for demo_train.lmdb and demo_val.lmdb')
    parser.add_argument('--num-train', type=int, default=48, help='training scenes')
    parser.add_argument('--num-val', type=int, default=8, help='validation scenes')
    parser.add_argument('--size', type=int, default=128, help='scene height and width in pixels')
    parser.add_argument('--steps', type=int, default=256, help='stream length T (>= 192 for the largest window)')
    parser.add_argument('--seed', type=int, default=0, help='seed of scenes, sensor and noise')
    parser.add_argument('--sigma-range', type=float, nargs=2, metavar=('A', 'B'), default=(1.0, 4.0),
                        help='Gaussian sigma in pixels at the nearest and the farthest depth')
    parser.add_argument('--gain-std', type=float, default=0.058, help='per-pixel gain spread of the sensor')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_train < 1 or args.num_val < 1:
        raise ValueError(f'--num-train and --num-val must be at least 1, got {args.num_train}, {args.num_val}')
    outputs = {split: osp.join(args.out, f'demo_{split}.lmdb') for split in ('train', 'val')}
    for path in outputs.values():  # check both before writing either
        if osp.exists(path) and not args.overwrite:
            raise FileExistsError(f'{path} already exists; pass --overwrite to replace it')
    scene_config = SceneConfig()
    lens = prep.fit_thin_lens(*scene_config.depth_range, *args.sigma_range)
    config = prep.SimulationConfig(mode='depth', steps=args.steps, gain_std=args.gain_std, seed=args.seed,
                                   lens=prep.lens_params(lens), extra={'source': 'procedural'})
    for split, count in (('train', args.num_train), ('val', args.num_val)):
        specs = []
        for index in range(count):
            scene_seed = prep.sample_seed(args.seed, f'scene-{split}', index)

            def load(scene_seed: int = scene_seed):
                intensity, depth = generate_scene(args.size, args.size, scene_seed, scene_config)
                return intensity, None, depth

            specs.append(prep.SampleSpec(f'{split}_{index:04d}', loader=load))
        prep.prepare_lmdb(specs, outputs[split], config, tag=split, overwrite=args.overwrite,
                          progress=not args.no_progress)
        print(f'wrote {count} {args.size}x{args.size}x{args.steps} samples to {outputs[split]}')
    return 0


if __name__ == '__main__':
    sys.exit(prep.run_cli(main))
