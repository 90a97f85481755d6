#!/usr/bin/env python
"""Benchmark the spike simulator and the .dat reader against plain numpy baselines run in the same process.

Prints pixel-steps per second for static noise-free, static noisy and time-varying scenes, each next to the plain
per-step numpy loop ``A += r; s = A >= θ; A -= θ*s`` on the same scene (for the noisy scene the loop draws the same
Poisson shot noise each step), with ratios; packed vs uint8 output; and ``.dat`` read MB/s against
``np.fromfile`` + ``np.unpackbits``. Targets (issue 8): static noise-free ≥ 3× the loop, noisy and time-varying ≥ 1×,
packed faster than uint8.

    python scripts/bench_simulator.py [--height 250 --width 400 --steps 2048 --repeats 3] [--device cuda]
"""
import argparse
import os
import tempfile
import time

import numpy as np

from despike_basicsr.spike.camera import DEFAULT_ELECTRONS_PER_UNIT, simulate
from despike_basicsr.spike.io import read_dat, write_dat

THRESHOLD = 2.0


def best_time(fn, repeats):
    fn()  # warm up (allocations, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def loop_static(rate, steps, noise_rng=None):
    """The plain per-step loop; with ``noise_rng`` each step adds Poisson(Q·r)/Q instead of r."""
    a = np.random.default_rng(0).random(rate.shape, dtype=np.float32) * THRESHOLD
    out = np.empty((steps, ) + rate.shape, np.uint8)
    lam = rate * DEFAULT_ELECTRONS_PER_UNIT
    for t in range(steps):
        a += rate if noise_rng is None else noise_rng.poisson(lam).astype(np.float32) / DEFAULT_ELECTRONS_PER_UNIT
        s = a >= THRESHOLD
        a -= THRESHOLD * s
        out[t] = s
    return out


def loop_varying(frames, steps):
    a = np.random.default_rng(0).random(frames.shape[1:], dtype=np.float32) * THRESHOLD
    out = np.empty((steps, ) + frames.shape[1:], np.uint8)
    for t in range(steps):
        a += frames[t]
        s = a >= THRESHOLD
        a -= THRESHOLD * s
        out[t] = s
    return out


def row(name, pixel_steps, ours, base, base_name):
    rate_ours, rate_base = pixel_steps / ours, pixel_steps / base
    print(f'{name:<28} {rate_ours:10.3e} px-steps/s   {base_name:<22} {rate_base:10.3e}   '
          f'ratio {rate_ours / rate_base:5.2f}x')
    return rate_ours / rate_base


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--height', type=int, default=250)
    p.add_argument('--width', type=int, default=400)
    p.add_argument('--steps', type=int, default=2048)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', default=None, help='also time the torch path on this device (e.g. cuda)')
    args = p.parse_args()
    h, w, steps = args.height, args.width, args.steps
    rng = np.random.default_rng(0)
    image = rng.random((h, w), dtype=np.float32)
    print(f'scene {h}x{w}, {steps} steps, θ={THRESHOLD}, best of {args.repeats}')

    ratios = {}
    base = best_time(lambda: loop_static(image, steps), args.repeats)
    ours = best_time(lambda: simulate(image, steps, seed=1), args.repeats)
    ratios['static'] = row('static noise-free (uint8)', h * w * steps, ours, base, 'per-step loop')
    packed = best_time(lambda: simulate(image, steps, seed=1, packed=True), args.repeats)
    ratios['packed'] = row('static noise-free (packed)', h * w * steps, packed, ours, 'ours, uint8 output')

    noisy_steps = max(8, steps // 8)  # Poisson draws dominate: fewer steps keep the run short
    base = best_time(lambda: loop_static(image, noisy_steps, np.random.default_rng(2)), args.repeats)
    ours = best_time(lambda: simulate(image, noisy_steps, seed=1, shot_noise=True), args.repeats)
    ratios['noisy'] = row(f'static shot noise ({noisy_steps} st)', h * w * noisy_steps, ours, base,
                          'loop + same Poisson')

    vary_steps = min(steps, 512)  # the (T, H, W) input itself takes memory
    frames = rng.random((vary_steps, h, w), dtype=np.float32)
    base = best_time(lambda: loop_varying(frames, vary_steps), args.repeats)
    ours = best_time(lambda: simulate(frames, vary_steps, seed=1), args.repeats)
    ratios['varying'] = row(f'time-varying ({vary_steps} st)', h * w * vary_steps, ours, base, 'per-step loop')
    packed_vary = best_time(lambda: simulate(frames, vary_steps, seed=1, packed=True), args.repeats)
    row('time-varying (packed)', h * w * vary_steps, packed_vary, ours, 'ours, uint8 output')

    if args.device:
        import torch
        device = torch.device(args.device)
        tensor = torch.from_numpy(image).to(device)

        def run_torch(**kw):
            out = simulate(tensor, steps, seed=1, **kw)
            if device.type == 'cuda':
                torch.cuda.synchronize()
            return out

        for label, kw in (('uint8', {}), ('packed', dict(packed=True)), ('shot noise', dict(shot_noise=True))):
            t = best_time(lambda: run_torch(**kw), args.repeats)
            print(f'torch {args.device} static {label:<12} {h * w * steps / t:10.3e} px-steps/s')

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'bench.dat')
        dat_frames = max(1, (64 << 20) // (h * w // 8))  # about 64 MB
        write_dat(path, (rng.random((dat_frames, h, w)) < 0.2).astype(np.uint8))
        size_mb = os.path.getsize(path) / 1e6

        def plain():
            raw = np.fromfile(path, dtype=np.uint8).reshape(dat_frames, -1)
            return np.unpackbits(raw, axis=1, bitorder='little').reshape(dat_frames, h, w)[:, ::-1]

        base = best_time(plain, args.repeats)
        ours = best_time(lambda: read_dat(path, h, w), args.repeats)
        print(f'{".dat read (" + f"{size_mb:.0f} MB)":<28} {size_mb / ours:10.1f} MB/s          '
              f'{"fromfile+unpackbits":<22} {size_mb / base:10.1f}   ratio {base / ours:5.2f}x')
        ours_range = best_time(lambda: read_dat(path, h, w, frames=(0, 64)), args.repeats)
        print(f'{".dat read 64 frames":<28} {64 * h * w / 8e6 / ours_range:10.1f} MB/s          (memory map: '
              'only the requested bytes)')

    checks = (ratios['static'] >= 3, ratios['noisy'] >= 1, ratios['varying'] >= 1, ratios['packed'] > 1)
    print('targets: static >= 3x {}, noisy >= 1x {}, time-varying >= 1x {}, packed faster than uint8 {}'.format(
        *('met' if ok else 'MISSED' for ok in checks)))


if __name__ == '__main__':
    main()
