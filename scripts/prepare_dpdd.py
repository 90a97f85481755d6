#!/usr/bin/env python
"""DPDD (or a DPDD-layout folder) to a defocused spike LMDB.

Reads ``{ROOT}/{split}_c/source`` (blurred) and ``{ROOT}/{split}_c/target`` (sharp), 16-bit PNGs paired by sorted
file order, and writes ``OUT.lmdb`` (docs/data.md). Mode ``dpdd`` simulates spikes from the real blurred image; mode
``thinlens`` blurs the sharp image with a Gaussian whose sigma is drawn from ``--sigma-range``. Beside the spikes and
the sharp ground truth, every sample stores the defocused image the camera saw (``<key>/blurred``, processed as the
ground truth is): the target of a learned spike front end's own training stage (docs/baselines.md).

Example:
    python scripts/prepare_dpdd.py --dpdd-root datasets/DPDD --split train --out datasets/dpdd_train.lmdb \\
        --steps 256 --scale 0.25 --seed 0
"""
import argparse
import sys
from typing import List, Optional

from despike_basicsr.data import preparation as prep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--dpdd-root', required=True, help='folder holding {train,val,test}_c/{source,target}')
    parser.add_argument('--split', choices=('train', 'val', 'test', 'scoring'), required=True,
                        help='scoring: the val pairs and the train split\'s scoring holdout (the protocol\'s 16)')
    parser.add_argument('--scoring-holdout', choices=prep.SCORING_HOLDOUT_MODES, default='all',
                        help='of the split\'s pairs: all, exclude (leave every 5th out: the protocol\'s training '
                        'set) or only (just those)')
    prep.add_simulation_arguments(parser, default_mode='dpdd', modes=('dpdd', 'thinlens'))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    config = prep.config_from_args(args)
    if args.split == 'scoring':
        if args.scoring_holdout != 'all':
            raise ValueError('--split scoring is the scoring set itself; --scoring-holdout applies to train/val/test')
        chosen = list(enumerate(prep.protocol_scoring_pairs(args.dpdd_root)))
    else:
        chosen = prep.select_scoring_holdout(prep.dpdd_pairs(args.dpdd_root, args.split), args.scoring_holdout)
    specs = [
        prep.SampleSpec(prep.safe_key(i, sharp), sharp_path=sharp, blurred_path=blurred, index=i)
        for i, (blurred, sharp) in chosen[:args.limit]
    ]
    out = prep.prepare_lmdb(specs, args.out, config, tag=args.split, overwrite=args.overwrite,
                            progress=not args.no_progress)
    print(f'wrote {len(specs)} samples to {out}')
    return 0


if __name__ == '__main__':
    sys.exit(prep.run_cli(main))
