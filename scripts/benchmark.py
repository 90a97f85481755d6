#!/usr/bin/env python
"""Benchmark methods on one spike test LMDB: one data path, one metric code path, one table and one picture.

Every method reads the same samples through the registered ``SpikeLMDBDataset`` and is scored with BasicSR's
``calculate_psnr`` / ``calculate_ssim`` (and LPIPS when its weights are on this machine) on the same uint8 images that
BasicSR's validation uses. Writes ``OUT/benchmark.md``, ``OUT/benchmark.json`` and ``OUT/benchmark.png`` (the same
crops across methods).

Methods (``--methods``, any number):
    tfp, tfi                      classical reconstructions alone (TFP window ``--tfp-window``); ``tfp:WINDOW``
                                  for another window; ``+fpn`` multiplies the rates by the LMDB's FPN factor
    defocused:DPDD_ROOT           the defocused photographs a prepare_dpdd.py LMDB was simulated from (no deblurring)
    NAME:OPTIONS.yml[:WEIGHTS]    a trained BasicSR model (DeSpikeModel, CascadeModel, ...) built from its test options
                                  file; WEIGHTS defaults to the file's ``path.pretrain_network_g``

Example:
    python scripts/benchmark.py --lmdb datasets/demo/demo_val.lmdb --out-dir results --device cpu --methods tfp tfi \\
        despike:options/test_despike_demo.yml:experiments/DeSpike_demo/models/net_g_latest.pth \\
        gkmnet_tfp:options/test_gkmnet_tfp_demo.yml nrknet_tfp:options/test_nrknet_tfp_demo.yml

Every method is also compared with ``--reference`` (default ``despike``): per-image paired PSNR differences, their
spread and t-interval, and a bootstrap interval over ``--tiles`` x ``--tiles`` tiles per image, with a verdict (within
noise or not) per method. ``--val-len 64`` / ``32`` scores short streams (the robustness test); a network that needs
more frames is listed as not scored, with its message. ``--name`` changes the output file stem.
"""
import argparse
import sys
from typing import Any, Dict, Optional, Sequence

from despike_basicsr.evaluation import benchmarking  # the evaluation core; this file is the command line
from despike_basicsr.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--methods', nargs='+', required=True,
                        help="'tfp', 'tfp:WINDOW', 'tfi' (optionally +fpn), 'defocused:DPDD_ROOT' or "
                        "NAME:OPTIONS.yml[:WEIGHTS]")
    parser.add_argument('--lmdb', required=True, help='test spike LMDB (a .lmdb folder)')
    parser.add_argument('--out-dir', default='results', help='where benchmark.md/.json/.png go')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--val-len', type=int, default=192, help='frames per evaluated window (centred on the target)')
    parser.add_argument('--tfp-window', type=int, default=41, help='TFP window of the classical tfp method')
    parser.add_argument('--lpips', default='auto', choices=['auto', 'off'], help='auto: LPIPS when weights exist')
    parser.add_argument('--lpips-backbone', default=None, help='AlexNet weights file for LPIPS')
    parser.add_argument('--grid-samples', type=int, default=3, help='samples (rows) in the picture')
    parser.add_argument('--crop', type=int, default=96, help='side of the centre crop shown in the picture')
    parser.add_argument('--zoom', type=int, default=2, help='nearest-neighbour zoom of the picture crops')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tiles', type=int, default=4,
                        help='per-image PSNR also on a TILES x TILES grid of non-overlapping tiles (the paired '
                        'differences\' bootstrap resamples them)')
    parser.add_argument('--reference', default='despike',
                        help='method every other one is compared with, image by image and tile by tile')
    parser.add_argument('--name', default='benchmark', help='output file stem: OUT/NAME.md, .json, .png')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Parse the command line, run :func:`despike_basicsr.evaluation.benchmarking.run_benchmark`, print the table."""
    args = build_parser().parse_args(argv)
    report = benchmarking.run_benchmark(
        args.methods,
        args.lmdb,
        out_dir=args.out_dir,
        device=args.device,
        val_len=args.val_len,
        tfp_window=args.tfp_window,
        lpips_mode=args.lpips,
        lpips_backbone=args.lpips_backbone,
        grid_samples=args.grid_samples,
        crop=args.crop,
        zoom=args.zoom,
        seed=args.seed,
        tiles=args.tiles,
        reference=args.reference,
        stem=args.name,
        command='python scripts/benchmark.py ' + ' '.join(sys.argv[1:] if argv is None else argv))
    print(benchmarking.markdown_table(report))
    return report


def cli() -> int:
    """Command-line entry: a user error (missing options or weights file, ...) is one line and exit status 2."""

    def work() -> int:
        main()
        return 0

    return run_cli('benchmark', work)


if __name__ == '__main__':
    sys.exit(cli())
