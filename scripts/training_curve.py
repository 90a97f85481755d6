#!/usr/bin/env python
"""Score a campaign's checkpoints on DPDD val and write its learning curve
(despike_basicsr/evaluation/training_curve.py).

    python scripts/training_curve.py                      # options/train_despike_deblur.yml's experiment
    python scripts/training_curve.py --every 1000 --opt options/train_despike_deblur.yml
    python scripts/training_curve.py --every 1000 --photos --out results/training/no_harm_phases \\
        --opt options/train_despike_noise_aware.yml --opt options/train_despike_gated.yml \\
        --opt options/train_despike_harm.yml --opt options/train_despike_harm_strong.yml

Checkpoints already in results/training/curve.json are not scored again; the json, curve.md and curve.png are
written to --out (default results/training). One thread is enough and leaves the training its core.
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

import cv2

from despike_basicsr.evaluation import training_curve as tc


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--opt', action='append',
                        help='the campaign\'s options file (default options/train_despike_deblur.yml); repeat it for '
                        'phases trained one after the other, in order')
    parser.add_argument('--dpdd-root', default='../shared/data/dpdd_gray768', help='DPDD layout with val_c/')
    parser.add_argument('--every', type=int, default=500, help='score checkpoints at multiples of this iteration')
    parser.add_argument('--out', default='results/training', help='folder of curve.json / .md / .png')
    parser.add_argument('--no-harm', action='store_true',
                        help='skip the in-focus and moving columns (DPDD val sharp images, against TFP-192 / TFP-41)')
    parser.add_argument('--photos', action='store_true',
                        help='add the scikit-image photographs in focus (evaluate_heldout.py\'s set) to the columns')
    args = parser.parse_args(argv)
    found, seconds, name = tc.phase_checkpoints(args.opt or ['options/train_despike_deblur.yml'], args.every)
    json_path = osp.join(args.out, 'curve.json')
    entries = tc.load_curve(json_path)
    done = {e['iteration'] for e in entries}

    from despike_basicsr.evaluation import heldout, no_harm
    scenes = heldout.dpdd_val_scenes(args.dpdd_root)
    harm_scenes = [] if args.no_harm else no_harm.in_focus_scenes(scenes) + no_harm.moving_scenes(scenes)
    if args.photos and not args.no_harm:
        harm_scenes += no_harm.in_focus_scenes(heldout.synthetic_depth_scenes(heldout.skimage_images(), seed=0))
    for iteration, path, phase in found:
        if iteration in done:
            continue
        hours = 0.0 if iteration == 0 else tc.cpu_hours(iteration, entries, seconds)
        harm: List[dict] = []
        entry = {'iteration': iteration, 'cpu_hours': hours,
                 'images': tc.score_checkpoint(path, scenes, harm_scenes=harm_scenes, harm=harm)}
        if harm:
            entry['harm'] = harm
        if len(args.opt or []) > 1:
            entry['phase'] = phase
        entries.append(entry)
        tc.save_curve(json_path, name, entries)
        print(f'[curve] {name} iteration {iteration}: fit PSNR {tc.mean_of(entry, "despike", "psnr_fit"):.2f} dB, '
              f'gains {", ".join(f"{k} {v:+.2f}" for k, v in tc.gains(entry).items())}', flush=True)
    entries = sorted(entries, key=lambda e: e['iteration'])
    with open(osp.join(args.out, 'curve.md'), 'w', encoding='utf-8') as f:
        f.write(tc.markdown(name, entries))
    if entries:
        cv2.imwrite(osp.join(args.out, 'curve.png'), tc.plot(name, entries))
    print(f'[curve] {len(entries)} checkpoints in {json_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
