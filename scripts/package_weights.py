#!/usr/bin/env python
"""Package trained weights for shipping: the EMA (else plain) weights plus the network_g options that built them.

    python scripts/package_weights.py --checkpoint experiments/DeSpike_general/models/net_g_latest.pth \\
        --opt options/train_despike_general.yml --out despike_basicsr/weights/despike_general.pth

The result loads with ``DeSpikeReconstructor(weights)`` or ``despike-infer --weights`` with no options file; the
output file is written atomically and an existing one is only replaced with ``--overwrite``.
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional

from despike_basicsr.checkpoint import atomic_torch_save, load_network_weights
from despike_basicsr.inference.network import load_network, read_network_options


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', required=True, help='BasicSR net_g checkpoint')
    parser.add_argument('--opt', required=True, help='the training options file (its network_g is stored)')
    parser.add_argument('--out', required=True, help='output .pth')
    parser.add_argument('--note', default='', help='free text stored as meta.note (e.g. iterations, wall time)')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    if osp.exists(args.out) and not args.overwrite:
        print(f'package_weights: error: {args.out} exists; pass --overwrite to replace it', file=sys.stderr)
        return 2
    network_opt = read_network_options(args.opt)
    state = load_network_weights(args.checkpoint)  # params_ema when present
    payload = {'params': state, 'network_g': network_opt,
               'meta': {'source': args.checkpoint, 'options': args.opt, 'note': args.note}}
    atomic_torch_save(payload, args.out)
    load_network(args.out)  # it must load on its own
    print(f'wrote {args.out} ({osp.getsize(args.out) / 1024:.0f} KB, {sum(v.numel() for v in state.values())} values)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
