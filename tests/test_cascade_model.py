"""CascadeModel: TFP/TFI front end + deblurring back end, trained and validated on a tiny synthetic spike batch."""
import copy
import subprocess
from os import path as osp

import numpy as np
import pytest
import torch
import yaml
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from despike_basicsr.data.spike_lmdb import SpikeLMDBWriter
from despike_basicsr.models.cascade_model import parse_front_end
from despike_basicsr.models.spike_base import crop_center_frames
from despike_basicsr.spike.camera import simulate
from despike_basicsr.spike.optics import display_to_linear
from despike_basicsr.spike.reconstruct import rate_to_display, tfi, tfp

SIZE = (20, 24)
SMALL_NETS = {
    'GKMNet': {'type': 'GKMNet', 'in_channels': 1, 'width': 4, 'num_blocks': 1},
    'NRKNet': {'type': 'NRKNet', 'in_channels': 1, 'widths': [8, 8, 8], 'num_blocks': [1, 1, 1]},
}


def _sample(seed: int, frames: int = 48) -> dict:
    """A defocused smooth scene simulated as spikes, with its sharp display image as ground truth."""
    rng = np.random.default_rng(seed)
    sharp = ndimage.gaussian_filter(rng.random(SIZE), 1.0)
    sharp = (sharp - sharp.min()) / (sharp.max() - sharp.min())
    blurred_linear = ndimage.gaussian_filter(display_to_linear(sharp), 1.5) * 0.9 + 0.05
    spikes = simulate(blurred_linear, frames, threshold=2.0, eta=1.0, seed=seed)
    return {'lq': torch.from_numpy(spikes.astype(np.uint8)), 'gt': torch.from_numpy(sharp).float()[None],
            'lq_path': f'sample_{seed}', 'gt_path': f'sample_{seed}', 'lq_len': frames}


class TinySpikeSet(Dataset):

    def __init__(self, count: int) -> None:
        self.opt = {'name': 'tiny'}
        self.samples = [_sample(seed) for seed in range(count)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def _options(network: dict, front_end: dict = None, fft: bool = False, ema: float = 0) -> dict:
    train = {
        'ema_decay': ema,
        'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
        'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
        'total_iter': 3,
        'warmup_iter': -1,
        'grad_clip_norm': 0.5,
        'pixel_opt': {'type': 'MultiScaleMSELoss', 'loss_weight': 1.0, 'scale_weights': [0.25, 0.5, 1.0]},
    }
    if fft:
        train['fft_opt'] = {'type': 'FFTLoss', 'loss_weight': 0.1, 'reduction': 'mean'}
    return {
        'name': 'cascade_test', 'model_type': 'CascadeModel', 'scale': 1, 'num_gpu': 0, 'is_train': True,
        'dist': False, 'rank': 0, 'world_size': 1, 'manual_seed': 0,
        'front_end': front_end or {'type': 'tfp', 'window': 41, 'eta': 1.0, 'threshold': 2.0},
        'network_g': copy.deepcopy(network),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': train,
        'val': {'val_freq': 1, 'save_img': False, 'suffix': None, 'metrics': {
            'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
            'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False}}},
    }


def _model(network: dict, **kwargs):
    torch.manual_seed(0)
    return MODEL_REGISTRY.get('CascadeModel')(_options(network, **kwargs))


def _batch(count: int = 2) -> dict:
    return next(iter(DataLoader(TinySpikeSet(count), batch_size=count)))


@pytest.mark.parametrize('arch', ['GKMNet', 'NRKNet'])
def test_trains_a_few_iterations_and_validates(arch):
    model = _model(SMALL_NETS[arch])
    before = {n: p.detach().clone() for n, p in model.net_g.named_parameters()}
    batch = _batch()
    for it in range(1, 4):
        model.feed_data(batch)
        model.optimize_parameters(it)
        assert set(model.log_dict) == {'l_pix'} and np.isfinite(model.log_dict['l_pix'])
    changed = [n for n, p in model.net_g.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)

    loader = DataLoader(TinySpikeSet(2), batch_size=1)
    model.nondist_validation(loader, 3, None, save_img=False)
    expected_psnr, expected_ssim = [], []
    for data in loader:
        model.feed_data(data)
        model.test()
        assert model.output.shape == (1, 1) + SIZE
        result, gt = tensor2img([model.output.cpu()]), tensor2img([model.gt.cpu()])
        expected_psnr.append(calculate_psnr(result, gt, crop_border=0))
        expected_ssim.append(calculate_ssim(result, gt, crop_border=0))
    assert model.metric_results['psnr'] == pytest.approx(np.mean(expected_psnr), rel=1e-6)
    assert model.metric_results['ssim'] == pytest.approx(np.mean(expected_ssim), rel=1e-6)
    assert model.net_g.training  # test() restores training mode


@pytest.mark.parametrize('kind', ['tfp', 'tfi'])
def test_front_end_is_the_classical_reconstruction(kind):
    front_end = {'type': kind, 'window': 9, 'eta': 1.0, 'threshold': 2.0}
    model = _model(SMALL_NETS['GKMNet'], front_end=front_end)
    batch = _batch()
    model.feed_data(batch)
    assert batch['lq'].dtype == torch.uint8  # the datasets' contract
    rate = tfp(batch['lq'].float(), window=9) if kind == 'tfp' else tfi(batch['lq'].float())
    assert torch.allclose(model.lq, rate_to_display(rate, eta=1.0, threshold=2.0)[:, None])
    assert model.lq.shape == (2, 1) + SIZE
    assert float((model.lq - model.gt).abs().mean()) < 0.3  # the front end already resembles the scene


def test_front_end_fpn_applies_the_batch_gamma_only_when_asked():
    batch = _batch()
    gamma = torch.from_numpy(np.random.default_rng(3).uniform(0.8, 1.25, (1, 1) + SIZE).astype(np.float32))
    rate = tfp(batch['lq'].float(), window=9)
    plain = _model(SMALL_NETS['GKMNet'], front_end={'type': 'tfp', 'window': 9})
    plain.feed_data(dict(batch, gamma=gamma))  # the published cascades: gamma is ignored
    assert torch.allclose(plain.lq, rate_to_display(rate, eta=1.0, threshold=2.0)[:, None])
    compensated = _model(SMALL_NETS['GKMNet'], front_end={'type': 'tfp', 'window': 9, 'fpn': True})
    compensated.feed_data(dict(batch, gamma=gamma))
    assert torch.allclose(compensated.lq, rate_to_display(rate * gamma[:, 0], eta=1.0, threshold=2.0)[:, None])
    assert not torch.allclose(compensated.lq, plain.lq)
    with pytest.raises(ValueError, match='front_end.fpn is true but the batch has no FPN gamma'):
        compensated.feed_data(batch)


def test_feed_data_crops_the_centre_of_the_shortest_stream():
    spikes = torch.zeros(2, 12, 4, 5)
    spikes[:, [0, 1, 10, 11]] = 1  # only outside the centre 8 frames [2, 10)
    spikes[:, 5] = 1  # one spike in 8 frames inside
    cropped = crop_center_frames(spikes, torch.tensor([8, 10]))
    assert torch.equal(cropped, spikes[:, 2:10])
    model = _model(SMALL_NETS['GKMNet'], front_end={'type': 'tfp', 'window': 41})
    model.feed_data({'lq': spikes, 'gt': torch.zeros(2, 1, 4, 5), 'lq_len': torch.tensor([8, 10])})
    expected = rate_to_display(torch.full((2, 1, 4, 5), 1 / 8), eta=1.0, threshold=2.0)
    assert torch.allclose(model.lq, expected)
    with pytest.raises(ValueError, match=r'lq_len must lie in \[1, 12\].*found 13'):
        crop_center_frames(spikes, [13, 14])
    with pytest.raises(ValueError, match=r'lq spikes shaped \(B, T, H, W\), found \(12, 4, 5\)'):
        model.feed_data({'lq': spikes[0]})


def test_front_end_options_are_checked():
    assert parse_front_end({'type': 'TFI'}) == {'type': 'tfi', 'window': 41, 'eta': 1.0, 'threshold': 2.0,
                                                'gamma': 2.2, 'fpn': False}
    with pytest.raises(ValueError, match="front_end.fpn must be true or false, found 'yes'"):
        parse_front_end({'type': 'tfp', 'fpn': 'yes'})
    with pytest.raises(ValueError, match=r"front_end.type must be one of \('tfp', 'tfi', 'learned'\), found 'rsir'"):
        parse_front_end({'type': 'rsir'})  # a learned front end is {type: learned, network: {type: RSIR}, ...}
    with pytest.raises(ValueError, match=r'front_end.window must be a positive integer \(frames\), found 0'):
        parse_front_end({'type': 'tfp', 'window': 0})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['windows'\]"):
        parse_front_end({'type': 'tfp', 'windows': 41})
    with pytest.raises(ValueError, match="needs a 'front_end' option"):
        MODEL_REGISTRY.get('CascadeModel')(dict(_options(SMALL_NETS['GKMNet']), front_end=None))


def test_fft_loss_is_logged_when_configured():
    if 'FFTLoss' not in LOSS_REGISTRY:
        pytest.skip('FFTLoss (losses/fft_loss.py, DeSpike issue) is not in this tree yet')
    model = _model(SMALL_NETS['NRKNet'], fft=True, ema=0.9)
    model.feed_data(_batch())
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_fft'}
    assert model.log_dict['l_fft'] > 0
    model.test()  # the EMA copy serves test()
    assert model.output.shape == (2, 1) + SIZE


def _write_tiny_lmdb(path: str, count: int) -> None:
    with SpikeLMDBWriter(path) as writer:
        for seed in range(count):
            sample = _sample(seed, frames=64)
            writer.add(f'scene_{seed:02d}', sample['gt'][0].numpy(), {'threshold': 2.0, 'eta': 1.0, 'seed': seed},
                       spikes=sample['lq'].numpy().astype(np.uint8))


@pytest.mark.slow
def test_train_and_test_entries_run_a_cascade_on_a_spike_lmdb(tmp_path, subprocess_env, python_exe, repo_root):
    """The real pipeline: SpikeLMDBDataset -> CascadeModel, 2 iterations, validation, checkpoint, then test.py."""
    lmdb_path = str(tmp_path / 'tiny.lmdb')
    _write_tiny_lmdb(lmdb_path, 3)
    dataset = {'type': 'SpikeLMDBDataset', 'dataroot': lmdb_path, 'io_backend': {'type': 'lmdb'}}
    opt = _options(SMALL_NETS['NRKNet'], fft=True)
    for key in ('is_train', 'dist', 'rank', 'world_size'):
        opt.pop(key)
    opt.update(name='cascade_e2e', num_gpu=0, datasets={
        'train': dict(dataset, name='tiny-train', phase='train', gt_size=16, temporal_len=[48, 64], use_flip=True,
                      use_rot=True, num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=2,
                      prefetch_mode=None),
        'val': dict(dataset, name='tiny-val', phase='val', val_len=48)})
    opt['train']['total_iter'] = 2
    opt['val']['val_freq'] = 2
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False, 'wandb': None}
    opt['dist_params'] = {'backend': 'gloo', 'port': 29500}
    train_opt = tmp_path / 'train.yml'
    train_opt.write_text(yaml.safe_dump(opt, sort_keys=False))
    run = subprocess.run([python_exe, osp.join(repo_root, 'despike_basicsr', 'train.py'), '-opt', str(train_opt)],
                         env=subprocess_env, cwd=str(tmp_path), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = open(next((tmp_path / 'experiments' / 'cascade_e2e').glob('train_*.log'))).read()
    assert 'l_pix' in log and 'l_fft' in log and '# psnr' in log and '# ssim' in log
    weights = tmp_path / 'experiments' / 'cascade_e2e' / 'models' / 'net_g_latest.pth'
    assert weights.is_file()

    test = {k: v for k, v in opt.items() if k not in ('train', 'logger')}
    test.update(name='cascade_e2e_test', datasets={'test': dict(dataset, name='tiny-test', phase='test', val_len=48)},
                path={'pretrain_network_g': str(weights), 'strict_load_g': True})
    test['val'] = dict(opt['val'], save_img=True)
    test_opt = tmp_path / 'test.yml'
    test_opt.write_text(yaml.safe_dump(test, sort_keys=False))
    run = subprocess.run([python_exe, osp.join(repo_root, 'despike_basicsr', 'test.py'), '-opt', str(test_opt)],
                         env=subprocess_env, cwd=str(tmp_path), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    saved = list((tmp_path / 'results' / 'cascade_e2e_test' / 'visualization' / 'tiny-test').glob('*.png'))
    assert len(saved) == 3
