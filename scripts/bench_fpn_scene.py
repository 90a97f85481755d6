"""Scene-based FPN estimate on simulated moving photographs: γ error against the truth, and its effect on TFP-192 and
DeSpike of a still frame of the same sensor. The logic is :mod:`despike_basicsr.spike.fpn_scene`.

    python scripts/bench_fpn_scene.py                       # writes results/fpn/scene_fpn.{json,md}
    python scripts/bench_fpn_scene.py --no-despike --scenes camera --lengths 2000
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from typing import List, Optional

import numpy as np

from despike_basicsr.spike import fpn_scene

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_despike(weights: str, device: str):
    """``(f(spikes, gamma) -> display image, reference rate)`` of the shipped network, unclipped, fixed exposure."""
    try:
        from despike_basicsr.inference.reconstructor import DeSpikeReconstructor
    except ImportError:  # before the inference/ package existed
        from despike_basicsr.inference import DeSpikeReconstructor
    reconstructor = DeSpikeReconstructor(weights, device=device)

    def despike(spikes: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        return reconstructor.reconstruct(spikes, gamma, clip=False, exposure='fixed')

    return despike, float(reconstructor.net.reference_rate)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--scenes', default=','.join(fpn_scene.BENCH_SCENES),
                   help=f'scikit-image photographs, comma separated (any of {", ".join(fpn_scene.BENCH_SCENES)})')
    p.add_argument('--dpdd-root', default='/work/shared/data/dpdd_gray768',
                   help='add its first --dpdd-count sharp val photographs when the folder exists')
    p.add_argument('--dpdd-count', type=int, default=2)
    p.add_argument('--height', type=int, default=128)
    p.add_argument('--width', type=int, default=192)
    p.add_argument('--lengths', default='2000,20000')
    p.add_argument('--margin', type=int, default=48, help='how far (px) the photograph moves either way')
    p.add_argument('--speed', type=float, default=0.1, help='spread of the pan speed, px per step')
    p.add_argument('--electrons', type=float, default=500.0,
                   help='shot noise, photo-electrons per unit potential (default 500, the evaluation camera; '
                   '0: none, 5x faster)')
    p.add_argument('--reference-size', type=int, default=None, help='estimator neighbourhood (default: the package)')
    p.add_argument('--weights', default=osp.join(ROOT, 'despike_basicsr', 'weights', 'despike_general.pth'))
    p.add_argument('--no-despike', action='store_true', help='TFP only (no torch)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=osp.join(ROOT, 'results', 'fpn'))
    p.add_argument('--picture', default=osp.join(ROOT, 'docs', 'images', 'fpn_scene_gamma.png'),
                   help='γ maps of the first scene, bright, longest recording ("" for none)')
    args = p.parse_args(argv)

    scenes = {name: fpn_scene.skimage_scene(name) for name in args.scenes.split(',') if name}
    scenes.update(fpn_scene.dpdd_scenes(args.dpdd_root, args.dpdd_count))
    camera = dict(fpn_scene.BENCH_CAMERA, electrons=args.electrons)
    despike, reference_rate = (None, 0.5) if args.no_despike else load_despike(args.weights, args.device)
    kwargs = {} if args.reference_size is None else {'reference_size': args.reference_size}
    start = time.time()
    shape = (args.height, args.width)
    report = fpn_scene.run_scene_fpn_bench(scenes, shape, [int(n) for n in args.lengths.split(',')],
                                           camera=camera, margin=args.margin, speed=args.speed, seed=args.seed,
                                           despike=despike, reference_rate=reference_rate, estimate_kwargs=kwargs,
                                           progress=lambda line: print(line, flush=True))
    info = dict(shape=list(shape), camera=camera, scenes=list(scenes), margin=args.margin, speed=args.speed,
                seed=args.seed, seconds=round(time.time() - start, 1), despike=None if args.no_despike else
                osp.relpath(args.weights, ROOT), command='python scripts/bench_fpn_scene.py ' + ' '.join(
                    sys.argv[1:] if argv is None else argv))
    table = fpn_scene.markdown(report, info)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'scene_fpn.md'), 'w') as f:
        f.write(table + f"\nCommand: `{info['command'].strip()}`\n")
    with open(osp.join(args.out, 'scene_fpn.json'), 'w') as f:
        json.dump(dict(info=info, summary=report['summary'], rows=report['rows'], static=report['static']), f,
                  indent=1)
    if args.picture:
        import cv2
        lengths = sorted(int(n) for n in args.lengths.split(','))
        example = report['examples'].get((next(iter(fpn_scene.BENCH_LEVELS)), lengths[-1]))
        if example is not None:
            image = fpn_scene.gamma_picture(report['examples']['truth'], example['gamma'], example['confidence'])
            cv2.imwrite(args.picture, image)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
