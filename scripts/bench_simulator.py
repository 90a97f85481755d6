#!/usr/bin/env python
"""Benchmark the spike simulator and the .dat reader against plain numpy baselines run in the same process.

Prints pixel-steps per second for static noise-free, static noisy and time-varying scenes, each next to the plain
per-step numpy loop ``A += r; s = A >= θ; A -= θ*s`` on the same scene (for the noisy scene the loop draws the same
Poisson shot noise each step), with ratios; packed vs uint8 output; and ``.dat`` read MB/s against
``np.fromfile`` + ``np.unpackbits``. Targets (issue 8): static noise-free ≥ 3× the loop, noisy and time-varying ≥ 1×,
packed faster than uint8. The measurements are :mod:`despike_basicsr.evaluation.simulator_bench`; this is the command
line.

    python scripts/bench_simulator.py [--height 250 --width 400 --steps 2048 --repeats 3] [--device cuda]
"""
import argparse

from despike_basicsr.evaluation import simulator_bench


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--height', type=int, default=250)
    p.add_argument('--width', type=int, default=400)
    p.add_argument('--steps', type=int, default=2048)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', default=None, help='also time the torch path on this device (e.g. cuda)')
    args = p.parse_args(argv)
    result = simulator_bench.run(args.height, args.width, args.steps, args.repeats, args.device)
    print('\n'.join(simulator_bench.report_lines(result)))


if __name__ == '__main__':
    main()
