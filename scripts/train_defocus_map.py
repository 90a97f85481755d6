#!/usr/bin/env python
"""Train DefocusMapNet (per-pixel defocus σ) on simulated defocus of sharp photographs; the defaults are the recipe.

    OMP_NUM_THREADS=1 python scripts/train_defocus_map.py          # -> despike_basicsr/weights/defocus_map.pth

1. A pool of ``--samples`` training draws: a crop of a sharp DPDD *train* target (``--data``), contrast lowered at
   random, layered defocus over a random depth map (Gaussian PSFs, or a random lens with ``--lens-probability``) with
   its true σ per pixel (despike_basicsr/data/defocus_map_data.py), seen by a random camera at a random light level
   (``NaturalSpikeDataset``'s sensor ranges, a 192- or 256-step stream, the FPN correction given half of the time);
   the network's window rates of each stream are kept, not the spikes.
2. ``--iters`` Adam steps on random flips/rotations of batches of the pool: L1 between the predicted and true σ,
   weighted 1 on textured pixels (where blur is observable) and ``--flat-weight`` elsewhere; cosine learning rate.
3. Every ``--val-every`` steps, Spearman/MAE on textured pixels of draws from the DPDD *val* targets (never trained on).

The pool is cached in ``--out`` (``pool.pt``, reused when the pool settings match). The shipped file stores the
network's options (``network_g``), so ``DeSpikeReconstructor.defocus_map`` and ``despike-infer --defocus-map`` load it
with nothing else.
"""
import argparse
import os
import os.path as osp
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from despike_basicsr.archs.defocus_map_arch import DefocusMapNet
from despike_basicsr.checkpoint import atomic_torch_save
from despike_basicsr.data import defocus_map_data as dmd
from despike_basicsr.data.natural_spike_dataset import DEFAULT_RANGES, draw_sensor
from despike_basicsr.spike.camera import simulate_sensor
from despike_basicsr.data.preparation import list_images, read_linear_intensity
from despike_basicsr.evaluation.heldout import defocus_map_scores, to_display

NETWORK_G = {'type': 'DefocusMapNet', 'num_feat': 16, 'windows': [64, 128, 256], 'scales': [1.0, 2.0, 4.0]}
SCENE_RANGES = {'coc_near': (0.0, 3.0), 'coc_far': (4.0, 22.0), 'focus_inside': 0.4}
SENSOR_RANGES = dict(DEFAULT_RANGES, rate_range=(0.03, 0.6), dark_rate_range=(0.0, 0.003))
MARGIN = 16  # px rendered around every crop (the largest CoC radius is 11)


def make_sample(net: DefocusMapNet, sharp_images: List[np.ndarray], crop: int, seed: int,
                lens_probability: float) -> Dict[str, torch.Tensor]:
    """One draw: window rates (float16), true σ (float16) and the texture mask of a ``crop``² scene."""
    rng = np.random.default_rng(seed)
    image = sharp_images[int(rng.integers(len(sharp_images)))]
    region = dmd.lower_contrast(dmd.random_crop(image, crop + 2 * MARGIN, rng), rng)
    blurred, sigma = dmd.draw_training_scene(region, rng, SCENE_RANGES, lens_probability)
    inner = (slice(MARGIN, MARGIN + crop), ) * 2
    blurred, sigma, sharp = blurred[inner], sigma[inner], region[inner]
    sensor = draw_sensor(rng, SENSOR_RANGES)
    steps = 256 if rng.random() < 0.7 else 192
    spikes, gain, _ = simulate_sensor(np.clip(blurred, 0.0, None), sensor, steps, seed % 2**31)
    gamma = torch.from_numpy(1.0 / np.maximum(gain, 1e-3))[None, None] if rng.random() < 0.5 else None
    with torch.no_grad():
        rates = net.rates(torch.from_numpy(spikes)[None], gamma)[0]
    return {'rates': rates.half(), 'sigma': torch.from_numpy(sigma).half()[None],
            'mask': torch.from_numpy(dmd.texture_mask(to_display(sharp)))[None]}


def make_pool(net: DefocusMapNet, images: List[np.ndarray], count: int, crop: int, seed: int,
              lens_probability: float, label: str) -> Dict[str, torch.Tensor]:
    samples, start = [], time.time()
    for i in range(count):
        samples.append(make_sample(net, images, crop, seed * 1000003 + i, lens_probability))
        if (i + 1) % 200 == 0:
            print(f'{label}: {i + 1}/{count} draws, {time.time() - start:.0f} s', flush=True)
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def augment(batch: List[torch.Tensor], generator: torch.Generator) -> List[torch.Tensor]:
    """The same random flip and rotation of every tensor of a batch."""
    k = int(torch.randint(4, (1, ), generator=generator))
    flip = bool(torch.randint(2, (1, ), generator=generator))
    out = []
    for x in batch:
        x = torch.rot90(x, k, dims=(-2, -1))
        out.append(torch.flip(x, dims=(-1, )) if flip else x)
    return out


def validate(net: DefocusMapNet, pool: Dict[str, torch.Tensor]) -> Dict[str, float]:
    net.eval()
    scores = []
    with torch.no_grad():
        for i in range(pool['rates'].shape[0]):
            pred = net.predict(pool['rates'][i:i + 1].float())[0, 0].numpy()
            mask = pool['mask'][i, 0].numpy()
            if mask.sum() > 50:
                scores.append(defocus_map_scores(pred, pool['sigma'][i, 0].float().numpy(), mask))
    net.train()
    return {k: float(np.nanmean([s[k] for s in scores])) for k in ('spearman', 'mae')}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', default='../shared/data/dpdd_gray768/train_c/target', help='sharp training images')
    parser.add_argument('--val-data', default='../shared/data/dpdd_gray768/val_c/target',
                        help='sharp validation images')
    parser.add_argument('--samples', type=int, default=1600, help='training draws in the pool')
    parser.add_argument('--val-samples', type=int, default=32)
    parser.add_argument('--crop', type=int, default=96)
    parser.add_argument('--lens-probability', type=float, default=0.3, help='share of draws with lens-like PSFs')
    parser.add_argument('--iters', type=int, default=3000)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--flat-weight', type=float, default=0.1, help='loss weight of untextured pixels')
    parser.add_argument('--val-every', type=int, default=250)
    parser.add_argument('--seed', type=int, default=2026)
    parser.add_argument('--out', default='experiments/defocus_map', help='pool cache, checkpoints, log')
    parser.add_argument('--weights-out', default='despike_basicsr/weights/defocus_map.pth')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    net = DefocusMapNet(**{k: v for k, v in NETWORK_G.items() if k != 'type'})

    settings = dict(data=args.data, samples=args.samples, crop=args.crop, lens=args.lens_probability, seed=args.seed,
                    val=args.val_data, val_samples=args.val_samples, scenes=SCENE_RANGES, network=NETWORK_G)
    cache = osp.join(args.out, 'pool.pt')
    cached: Dict[str, Any] = torch.load(cache, weights_only=False) if osp.isfile(cache) else {}
    if cached.get('settings') == repr(settings):
        pool, val_pool = cached['pool'], cached['val_pool']
        print(f'pool: reused {cache}')
    else:
        images = [read_linear_intensity(p) for p in list_images(args.data)]
        val_images = [read_linear_intensity(p) for p in list_images(args.val_data)]
        pool = make_pool(net, images, args.samples, args.crop, args.seed, args.lens_probability, 'pool')
        val_pool = make_pool(net, val_images, args.val_samples, args.crop, args.seed + 1, args.lens_probability, 'val')
        torch.save({'settings': repr(settings), 'pool': pool, 'val_pool': val_pool}, cache)
    print(f'pool ready: {pool["rates"].shape[0]} draws, {time.time() - start:.0f} s', flush=True)

    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.iters, eta_min=args.lr * 0.01)
    generator = torch.Generator().manual_seed(args.seed)
    log = open(osp.join(args.out, 'train.log'), 'a', encoding='utf-8')
    running = 0.0
    for it in range(1, args.iters + 1):
        index = torch.randint(pool['rates'].shape[0], (args.batch, ), generator=generator)
        rates, sigma, mask = augment([pool['rates'][index].float(), pool['sigma'][index].float(),
                                      pool['mask'][index].float()], generator)
        weight = mask + args.flat_weight * (1.0 - mask)
        loss = ((net.predict(rates) - sigma).abs() * weight).sum() / weight.sum()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        running += loss.item()
        if it % 50 == 0 or it == args.iters:
            line = f'iter {it} loss {running / 50:.4f} lr {schedule.get_last_lr()[0]:.2e} {time.time() - start:.0f} s'
            if it % args.val_every == 0 or it == args.iters:
                val = validate(net, val_pool)
                line += f" | val spearman {val['spearman']:.3f} mae {val['mae']:.3f}"
                atomic_torch_save({'params': net.state_dict(), 'network_g': dict(NETWORK_G), 'iter': it},
                                  osp.join(args.out, 'net_latest.pth'))
            print(line, flush=True)
            log.write(line + '\n')
            log.flush()
            running = 0.0
    wall = time.time() - start
    note = f'{args.iters} iterations, {wall / 60:.1f} min wall on one CPU thread, seed {args.seed}'
    payload = {'params': net.state_dict(), 'network_g': dict(NETWORK_G),
               'meta': {'source': 'scripts/train_defocus_map.py', 'args': vars(args), 'note': note}}
    atomic_torch_save(payload, args.weights_out)
    print(f'wrote {args.weights_out} ({osp.getsize(args.weights_out) / 1024:.0f} KB); {note}')
    log.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
