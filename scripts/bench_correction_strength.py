#!/usr/bin/env python
"""DeSpike's correction strength α and dead zone τ (``despike-infer --correction-strength/--correction-threshold``)
against the do-no-harm bars.

``Rec = window mix + S_τ(α·g·Δ)``: α = 0 is the per-pixel mix of plain reconstructions (in focus at least TFP-192 by
construction, defocus left as it is), α = 1, τ = 0 the network as trained; τ drops corrections under τ grey levels.
On the held-out sets of ``scripts/evaluate_heldout.py`` (DPDD val and the scikit-image photographs: defocused, in
focus, moving; bright and dim) every (α, τ) is scored from two network runs per stream
(despike_basicsr/evaluation/no_harm.py).

    python scripts/bench_correction_strength.py                  # -> results/heldout/correction_strength.{md,json}
    python scripts/bench_correction_strength.py --strengths 1 --thresholds 0,2,4,6
    python scripts/bench_correction_strength.py --selection 6 --strengths 1 --thresholds 0,1,2,3,4,6  # choose on
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from typing import List, Optional

from despike_basicsr.evaluation import heldout, no_harm
from despike_basicsr.inference.reconstructor import DeSpikeReconstructor, ReconstructorError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dpdd-root', default='../shared/data/dpdd_gray768', help='DPDD layout with a val_c split')
    parser.add_argument('--weights', help='DeSpike checkpoint (default: the shipped pretrained weights)')
    parser.add_argument('--strengths', default='0,0.25,0.5,0.75,1', help='comma-separated α in [0, 2]')
    parser.add_argument('--thresholds', default='0', help='comma-separated dead zones τ (grey levels), with every α')
    parser.add_argument('--device', help='cpu, cuda (default: CUDA when available)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--selection', type=int, default=0, metavar='N',
                        help='score N DPDD train pairs of the scoring holdout (defocused, in focus, moving) instead of '
                        'the held-out sets, to choose a setting on; writes correction_selection.{md,json}')
    parser.add_argument('--textures', action='store_true',
                        help='with --selection: add no_harm.SELECTION_TEXTURES (scikit-image photographs that are not '
                        'held out) in focus and moving')
    parser.add_argument('--out', default='results/heldout', help='output folder')
    args = parser.parse_args(argv)
    try:
        strengths = [float(a) for a in args.strengths.split(',') if a.strip()]
        thresholds = [float(t) for t in args.thresholds.split(',') if t.strip()]
        reconstructor = DeSpikeReconstructor(args.weights, device=args.device)
        for alpha in strengths + [0.0]:
            reconstructor.set_correction_strength(alpha)  # checks every α and τ before the long run
        for tau in thresholds + [0.0]:
            reconstructor.set_correction_threshold(tau)  # the pair below is without dead zone
    except (ValueError, ReconstructorError) as err:
        print(f'bench_correction_strength: error: {err}', file=sys.stderr)
        return 2

    def reconstruct_pair(spikes, gamma):
        pair = []
        for alpha in (0.0, 1.0):
            reconstructor.set_correction_strength(alpha)
            pair.append(reconstructor.reconstruct(spikes, gamma, clip=False, exposure='fixed'))
        return tuple(pair)

    if args.selection:
        scenes = no_harm.selection_scenes(args.dpdd_root, args.selection, args.seed,
                                          no_harm.SELECTION_TEXTURES if args.textures else ())
    else:
        val = heldout.dpdd_val_scenes(args.dpdd_root) if osp.isdir(args.dpdd_root) else []
        photos = heldout.synthetic_depth_scenes(heldout.skimage_images(), seed=args.seed)
        scenes = val + photos + no_harm.in_focus_scenes(val) + no_harm.in_focus_scenes(photos)
        scenes += no_harm.moving_scenes(val + photos, 192, args.seed)
    stem = 'correction_selection' if args.selection else 'correction_strength'
    start = time.time()
    sweep = no_harm.correction_strength_sweep(scenes, reconstruct_pair, strengths, reconstructor.net.reference_rate,
                                              seed=args.seed, progress=lambda line: print(line, flush=True),
                                              thresholds=thresholds)
    table = no_harm.sweep_markdown(sweep)
    command = 'python scripts/bench_correction_strength.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, stem + '.md'), 'w') as f:
        f.write('# DeSpike correction strength α and dead zone τ against the do-no-harm bars\n\n'
                f'Weights: `{osp.relpath(reconstructor.weights)}`. Fitted PSNR of DeSpike minus its bar (in focus: '
                'TFP-192; moving: TFP-41; defocused: the photograph), mean (worst image), dB; the last two columns '
                f'raw SSIM minus the photograph\'s. {len(scenes)} scenes ('
                + (f'selection set: {args.selection} DPDD train pairs of the scoring holdout'
                   + (f' and {len(no_harm.SELECTION_TEXTURES)} scikit-image textures (' + ', '.join(
                       no_harm.SELECTION_TEXTURES) + ') in focus and moving' if args.textures else '')
                   + ', not the reported held-out sets' if args.selection
                   else 'the held-out sets of scripts/evaluate_heldout.py')
                + f'), {time.time() - start:.0f} s.\n\n'
                f'{table}\nCommand: `{command.strip()}`\n')
    with open(osp.join(args.out, stem + '.json'), 'w') as f:
        json.dump(dict(weights=osp.relpath(reconstructor.weights), command=command.strip(),
                       settings=sweep['settings'], harm=sweep['harm'], harm_ssim=sweep['harm_ssim']), f, indent=1)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
