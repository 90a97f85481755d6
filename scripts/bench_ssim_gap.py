"""Where DeSpike's raw SSIM on DPDD val falls short of the photograph's: oracle substitutions and flat-region smoothing.

despike_basicsr/evaluation/ssim_gap.py explains the rows. On DPDD val (the bar's set) by default; with ``--selection N``
on the selection set instead (N DPDD train pairs of the scoring holdout defocused and in focus, and the selection
textures in focus), where a post-filter would have to be chosen.

    python scripts/bench_ssim_gap.py                                   # -> results/heldout/ssim_gap.{md,json}
    python scripts/bench_ssim_gap.py --selection 6 --no-oracles        # -> results/heldout/ssim_gap_selection.*
    python scripts/bench_ssim_gap.py --filters '' --rates 0.0375,0.075,0.15,0.3,0.5,0.7
                                                                       # -> results/heldout/ssim_gap_light.*

``--rates`` replaces the bright and dim levels (mean spike rates 0.3 and 0.075 per step) by others: does more light
close the gap?
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Tuple

from despike_basicsr.evaluation import heldout, no_harm, ssim_gap
from despike_basicsr.inference.reconstructor import DeSpikeReconstructor, ReconstructorError


def parse_filters(text: str) -> List[Tuple[float, float, Optional[float]]]:
    """``'T:σ[:D],...'`` → ``[(T, σ, D or None), ...]``."""
    filters = []
    for item in (part.strip() for part in text.split(',') if part.strip()):
        try:
            fields = [float(f) for f in item.split(':')]
        except ValueError:
            fields = []
        if len(fields) not in (2, 3) or min(fields) <= 0:
            raise ValueError(f'--filters: "{item}" is not T:σ or T:σ:D with positive numbers')
        filters.append((fields[0], fields[1], fields[2] if len(fields) == 3 else None))
    return filters


def parse_rates(text: str) -> Dict[str, float]:
    """``'0.075,0.3'`` → ``{'rate 0.075': 0.075, 'rate 0.3': 0.3}``: light levels as mean spike rates per step."""
    levels = {}
    for item in (part.strip() for part in text.split(',') if part.strip()):
        try:
            rate = float(item)
        except ValueError:
            rate = float('nan')
        if not 0 < rate < 1:
            raise ValueError(f'--rates: "{item}" is not a mean spike rate per step in (0, 1)')
        levels[f'rate {rate:g}'] = rate
    if not levels:
        raise ValueError('--rates: no rate given')
    return levels


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dpdd-root', default='../shared/data/dpdd_gray768', help='DPDD layout with a val_c split')
    parser.add_argument('--weights', help='DeSpike checkpoint (default: the shipped pretrained weights)')
    parser.add_argument('--filters', default='1.5:2,2:2,3:2,2:1,2:2:32',
                        help='flat-region smoothing settings T:σ[:D] (grey levels, pixels, grey levels), '
                        'comma-separated')
    parser.add_argument('--no-oracles', action='store_true', help='score the filters only')
    parser.add_argument('--selection', type=int, default=0, metavar='N',
                        help='score N selection DPDD pairs (defocused, in focus) and the selection textures instead')
    parser.add_argument('--rates', help='light levels as mean spike rates per step, comma-separated (default the '
                        f'bright and dim levels, {heldout.LIGHT_LEVELS})')
    parser.add_argument('--device', help='cpu, cuda (default: CUDA when available)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='results/heldout', help='output folder')
    args = parser.parse_args(argv)
    try:
        filters = parse_filters(args.filters)
        levels = parse_rates(args.rates) if args.rates else heldout.LIGHT_LEVELS
        if args.selection:
            scenes = [s for s in no_harm.selection_scenes(args.dpdd_root, args.selection, args.seed,
                                                          no_harm.SELECTION_TEXTURES) if s.motion is None]
        else:
            scenes = heldout.dpdd_val_scenes(args.dpdd_root)
        reconstructor = DeSpikeReconstructor(args.weights, device=args.device)
    except (OSError, ValueError, ReconstructorError) as err:
        print(f'bench_ssim_gap: error: {err}', file=sys.stderr)
        return 2
    start = time.time()

    def despike(spikes, gamma):
        return reconstructor.reconstruct(spikes, gamma, clip=False, exposure='fixed')

    report = ssim_gap.ssim_gap(scenes, despike, filters, reconstructor.net.reference_rate, seed=args.seed,
                               levels=levels, oracles=not args.no_oracles,
                               progress=lambda line: print(line, flush=True))
    table = ssim_gap.gap_markdown(report)
    command = 'python scripts/bench_ssim_gap.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    stem = ('ssim_gap_selection' if args.selection else 'ssim_gap') + ('_light' if args.rates else '')
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, stem + '.md'), 'w') as f:
        f.write('# Where DeSpike\'s raw SSIM falls short of the photograph\'s\n\n'
                f'Weights: `{osp.relpath(reconstructor.weights)}`. {len(scenes)} scenes, '
                + ('the selection set' if args.selection else 'DPDD val defocused')
                + (f', light levels as mean spike rates per step {list(levels.values())}' if args.rates else '')
                + f', {time.time() - start:.0f} s. Raw SSIM / fitted PSNR, mean (worst image\'s fitted PSNR); rows '
                'marked oracle use the ground truth and are not methods (despike_basicsr/evaluation/ssim_gap.py).\n\n'
                f'{table}\nCommand: `{command.strip()}`\n')
    with open(osp.join(args.out, stem + '.json'), 'w') as f:
        json.dump(dict(weights=osp.relpath(reconstructor.weights), command=command.strip(), **report), f, indent=1)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
