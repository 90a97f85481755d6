"""BasicSR's own train/test pipelines, driven through our entries on CPU: train, validate, save, auto-resume, torchrun.

These runs use BasicSR's ``SRModel``, ``PairedImageDataset`` and ``SRVGGNetCompact`` on a few tiny generated images, so
they test the plumbing (compat patches, entries, registries) independently of DeSpike's own model code.
"""
import os
import re
import subprocess
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import free_port


def _write_pairs(folder: str, count: int = 6, size: int = 24) -> None:
    rng = np.random.default_rng(0)
    for sub in ('gt', 'lq'):
        os.makedirs(osp.join(folder, sub), exist_ok=True)
    for i in range(count):
        gt = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        lq = cv2.GaussianBlur(gt, (5, 5), 1.0)
        cv2.imwrite(osp.join(folder, 'gt', f'{i:03d}.png'), gt)
        cv2.imwrite(osp.join(folder, 'lq', f'{i:03d}.png'), lq)


def _options(tmp_path, name: str, total_iter: int, **overrides) -> str:
    data = str(tmp_path / 'pairs')
    if not osp.isdir(data):
        _write_pairs(data)
    common = dict(type='PairedImageDataset', dataroot_gt=f'{data}/gt', dataroot_lq=f'{data}/lq', io_backend={'type': 'disk'})
    opt = {
        'name': name,
        'model_type': 'SRModel',
        'scale': 1,
        'num_gpu': 'auto',
        'manual_seed': 10,
        'datasets': {
            'train': dict(common, name='pairs', gt_size=16, use_hflip=True, use_rot=True, num_worker_per_gpu=0,
                          batch_size_per_gpu=2, dataset_enlarge_ratio=1, prefetch_mode=None),
            'val': dict(common, name='pairs_val'),
        },
        'network_g': {'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_conv': 2,
                      'upscale': 1, 'act_type': 'prelu'},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {'val_freq': 2, 'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0,
                                                                         'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': True, 'wandb': None},
        'dist_params': {'backend': 'gloo', 'port': 29500},
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


def _run(cmd, env, cwd, timeout=240) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return result


def _logged_iters(log_text: str) -> dict:
    """{iter: lr} from BasicSR's message-logger lines ``[name..][epoch:  0, iter:       3, lr:(1.000e-03,)] ...``."""
    found = {}
    for match in re.finditer(r'iter:\s*([\d,]+), lr:\(([\d.e+-]+),\)', log_text):
        found[int(match.group(1).replace(',', ''))] = float(match.group(2))
    return found


def _train_log(tmp_path, name: str) -> str:
    folder = tmp_path / 'experiments' / name
    return '\n'.join(p.read_text() for p in sorted(folder.glob('train_*.log')))


@pytest.mark.slow
def test_train_validate_save_and_auto_resume(tmp_path, subprocess_env, python_exe, repo_root):
    opt = _options(tmp_path, 'tiny_resume', total_iter=4)
    first = _run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert first.returncode == 0, first.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'tiny_resume'
    assert (exp / 'models' / 'net_g_4.pth').is_file() and (exp / 'models' / 'net_g_latest.pth').is_file()
    assert (exp / 'training_states' / '4.state').is_file()
    assert 'Validation pairs_val' in _train_log(tmp_path, 'tiny_resume')
    assert list((tmp_path / 'tb_logger' / 'tiny_resume').glob('events.out.tfevents.*')), 'no tensorboard events'

    # continue to iteration 8 from the saved state, via `python -m`
    second = _run([python_exe, '-m', 'despike_basicsr.train', '-opt', opt, '--auto_resume', '--force_yml',
                   'train:total_iter=8'], subprocess_env, repo_root)
    assert second.returncode == 0, second.stderr[-3000:]
    log = _train_log(tmp_path, 'tiny_resume')
    assert 'Resuming training from epoch' in log and 'iter: 4.' in log
    resumed = _logged_iters(log.split('Resuming training from epoch')[1])
    assert min(resumed) == 5 and max(resumed) == 8

    # an uninterrupted run of 8 iterations has the same learning rate at every resumed iteration
    straight_opt = _options(tmp_path, 'tiny_straight', total_iter=8)
    straight = _run([python_exe, 'despike_basicsr/train.py', '-opt', straight_opt], subprocess_env, repo_root)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = _logged_iters(_train_log(tmp_path, 'tiny_straight'))
    assert {it: reference[it] for it in resumed} == resumed
    assert resumed[5] == pytest.approx(0.5e-3)  # the milestone at 3 survived the restart


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path, subprocess_env, python_exe, repo_root):
    opt = _options(tmp_path, 'tiny_ddp', total_iter=2)
    cmd = [python_exe, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           'despike_basicsr/train.py', '-opt', opt, '--launcher', 'pytorch']
    result = _run(cmd, subprocess_env, repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    log = _train_log(tmp_path, 'tiny_ddp')
    assert 'World size (gpu number): 2' in log
    assert (tmp_path / 'experiments' / 'tiny_ddp' / 'models' / 'net_g_latest.pth').is_file()


def test_unregistered_type_lists_registered_names(tmp_path, subprocess_env, python_exe, repo_root):
    opt = _options(tmp_path, 'tiny_bad_arch', total_iter=1, **{'network_g.type': 'SRVGGNetCompactt'})
    result = _run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert result.returncode == 2
    assert "'SRVGGNetCompactt' is not registered" in result.stderr
    assert 'did you mean' in result.stderr and 'DeSpikeNet' in result.stderr
    assert not (tmp_path / 'experiments' / 'tiny_bad_arch').exists(), 'a failed check must not create folders'


def test_corrupt_resume_state_names_the_file(tmp_path, subprocess_env, python_exe, repo_root):
    state = tmp_path / 'broken.state'
    state.write_bytes(b'PK\x03\x04 not really a zip')
    opt = _options(tmp_path, 'tiny_bad_state', total_iter=1, **{'path.resume_state': str(state)})
    result = _run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert result.returncode == 2
    assert str(state) in result.stderr and 'truncated, corrupt' in result.stderr
    assert state.read_bytes() == b'PK\x03\x04 not really a zip', 'the user file must stay untouched'

    missing = tmp_path / 'nowhere.state'
    opt = _options(tmp_path, 'tiny_missing_state', total_iter=1, **{'path.resume_state': str(missing)})
    result = _run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert result.returncode == 2 and f'training state not found: {missing}' in result.stderr


def test_compat_makes_basicsr_importable_and_cpu_safe():
    import despike_basicsr  # noqa: F401
    import basicsr.data.degradations as degradations
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import dist_util

    from despike_basicsr import compat
    assert degradations.rgb_to_grayscale is not None
    assert dist_util._init_dist_pytorch is compat._init_dist_pytorch
    assert BaseModel.model_to_device is compat._model_to_device
    if not torch.cuda.is_available():
        assert compat.choose_dist_backend('nccl') == 'gloo'
    assert compat.choose_dist_backend('gloo') == 'gloo'
