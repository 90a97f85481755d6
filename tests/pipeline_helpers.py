"""Tiny BasicSR training runs for pipeline tests: generated image pairs, an options file, log parsing.

The runs use BasicSR's own ``SRModel``, ``PairedImageDataset`` and ``SRVGGNetCompact``, so they exercise the plumbing
(compat patches, entries, registries) independently of DeSpike's model code.
"""
import os
import re
import subprocess
from os import path as osp

import cv2
import numpy as np
import yaml


def write_pairs(folder: str, count: int = 8, size: int = 24) -> None:
    rng = np.random.default_rng(0)
    for sub in ('gt', 'lq'):
        os.makedirs(osp.join(folder, sub), exist_ok=True)
    for i in range(count):
        gt = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        lq = cv2.GaussianBlur(gt, (5, 5), 1.0)
        cv2.imwrite(osp.join(folder, 'gt', f'{i:03d}.png'), gt)
        cv2.imwrite(osp.join(folder, 'lq', f'{i:03d}.png'), lq)


def write_dpdd_tree(root, height: int, width: int, count: int, seed: int) -> None:
    """A DPDD-layout folder ``{train,val}_c/{source,target}`` of ``count`` generated scenes per split; the source is the
    target blurred by a Gaussian of σ 2 px (display values)."""
    import cv2
    import numpy as np

    from despike_basicsr.data.scenes import generate_scene
    for split in ('train', 'val'):
        for folder in ('source', 'target'):
            (root / f'{split}_c' / folder).mkdir(parents=True)
        for i in range(count):
            intensity, _ = generate_scene(height, width, seed + i + (10 if split == 'val' else 0))
            display = (np.power(intensity, 1 / 2.2) * 255).round().astype(np.uint8)
            cv2.imwrite(str(root / f'{split}_c' / 'target' / f'p{i}.png'), display)
            cv2.imwrite(str(root / f'{split}_c' / 'source' / f'p{i}.png'), cv2.GaussianBlur(display, (0, 0), 2.0))


def tiny_options(tmp_path, name: str, total_iter: int, image_size: int = 24, num_pairs: int = 8, **overrides) -> str:
    """Options for a tiny SRModel run on generated pairs; ``overrides`` maps dotted keys (``'train.total_iter'``)."""
    data = str(tmp_path / f'pairs{image_size}x{num_pairs}')
    if not osp.isdir(data):
        write_pairs(data, count=num_pairs, size=image_size)
    common = dict(
        type='PairedImageDataset', dataroot_gt=f'{data}/gt', dataroot_lq=f'{data}/lq', io_backend={'type': 'disk'})
    opt = {
        'name': name,
        'model_type': 'SRModel',
        'scale': 1,
        'num_gpu': 'auto',
        'manual_seed': 10,
        'datasets': {
            'train':
            dict(
                common,
                name='pairs',
                gt_size=16,
                use_hflip=True,
                use_rot=True,
                num_worker_per_gpu=0,
                batch_size_per_gpu=2,
                dataset_enlarge_ratio=1,
                prefetch_mode=None),
            'val':
            dict(common, name='pairs_val'),
        },
        'network_g': {
            'type': 'SRVGGNetCompact',
            'num_in_ch': 3,
            'num_out_ch': 3,
            'num_feat': 8,
            'num_conv': 2,
            'upscale': 1,
            'act_type': 'prelu'
        },
        'path': {
            'pretrain_network_g': None,
            'strict_load_g': True,
            'resume_state': None
        },
        'train': {
            'optim_g': {
                'type': 'Adam',
                'lr': 1e-3,
                'betas': [0.9, 0.99]
            },
            'scheduler': {
                'type': 'MultiStepLR',
                'milestones': [3],
                'gamma': 0.5
            },
            'total_iter': total_iter,
            'warmup_iter': -1,
            'pixel_opt': {
                'type': 'L1Loss',
                'loss_weight': 1.0,
                'reduction': 'mean'
            },
        },
        'val': {
            'val_freq': 2,
            'save_img': False,
            'metrics': {
                'psnr': {
                    'type': 'calculate_psnr',
                    'crop_border': 0,
                    'test_y_channel': False
                }
            }
        },
        'logger': {
            'print_freq': 1,
            'save_checkpoint_freq': 2,
            'use_tb_logger': True,
            'wandb': None
        },
        'dist_params': {
            'backend': 'gloo',
            'port': 29500
        },
    }
    for dotted, value in overrides.items():
        node = opt
        *parents, leaf = dotted.split('.')
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def run(cmd, env, cwd, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def logged_iters(log_text: str) -> dict:
    """{iter: lr} from BasicSR's message-logger lines ``[name..][epoch:  0, iter:       3, lr:(1.000e-03,)] ...``."""
    found = {}
    for match in re.finditer(r'iter:\s*([\d,]+), lr:\(([\d.e+-]+),\)', log_text):
        found[int(match.group(1).replace(',', ''))] = float(match.group(2))
    return found


def train_log(tmp_path, name: str) -> str:
    folder = tmp_path / 'experiments' / name
    return '\n'.join(p.read_text() for p in sorted(folder.glob('train_*.log')))
