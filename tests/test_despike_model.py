"""DeSpikeModel on a tiny synthetic data set: cropping of variable-length batches, the loss terms, EMA, validation."""
import copy
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from basicsr.models import build_model
from basicsr.utils.registry import MODEL_REGISTRY
from torch.utils.data import DataLoader, Dataset

from despike_basicsr.models.despike_model import DeSpikeModel
from despike_basicsr.models.spike_base import crop_center_frames

SIZE = 32  # LPIPS's AlexNet needs at least 31 pixels
MAX_LEN = 40


class TinySpikeDataset(Dataset):
    """Items shaped like SpikeLMDBDataset's: ``lq_len`` frames centred on frame ``MAX_LEN // 2`` of ``MAX_LEN``."""

    def __init__(self, count: int, lengths=(24, 40), with_gamma: bool = True, seed: int = 0) -> None:
        self.opt = {'name': 'tiny', 'phase': 'val'}
        generator = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing='ij')
        self.items = []
        for index in range(count):
            sharp = (0.2 + 0.6 * ((xx * (3 + index) + yy * 2) % 1 > 0.5).float())[None]
            length = lengths[index % len(lengths)]
            stream = torch.zeros(MAX_LEN, SIZE, SIZE, dtype=torch.uint8)  # the datasets' contract: uint8 0/1 spikes
            start = MAX_LEN // 2 - length // 2
            stream[start:start + length] = (torch.rand(length, SIZE, SIZE, generator=generator) < sharp * 0.5)
            item = {
                'lq': stream,
                'gt': sharp,
                'lq_path': f'tiny_{index:02d}',
                'gt_path': f'tiny_{index:02d}',
                'lq_len': length
            }
            if with_gamma:
                item['gamma'] = 1 + 0.05 * torch.randn(1, SIZE, SIZE, generator=generator)
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def model_options(tmp_path, **train_overrides) -> dict:
    train = {
        'ema_decay': 0,
        'optim_g': {
            'type': 'Adam',
            'lr': 1e-3,
            'betas': [0.9, 0.99]
        },
        'scheduler': {
            'type': 'MultiStepLR',
            'milestones': [1000],
            'gamma': 0.5
        },
        'total_iter': 10,
        'warmup_iter': -1,
        'pixel_opt': {
            'type': 'HierarchicalMSELoss',
            'loss_weight': 1.0,
            'temporal_weights': [0.5, 1.0]
        },
        'fft_opt': {
            'type': 'FFTLoss',
            'loss_weight': 0.2,
            'norm': 'ortho'
        },
        'lpips_opt': {
            'type': 'LPIPSLoss',
            'loss_weight': 0.2,
            'pretrained': False
        },
    }
    train.update(train_overrides)
    train = {k: v for k, v in train.items() if v is not None}
    return {
        'name': 'despike_tiny',
        'model_type': 'DeSpikeModel',
        'scale': 1,
        'num_gpu': 0,
        'is_train': True,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'manual_seed': 0,
        'network_g': {
            'type': 'DeSpikeNet',
            'num_feat': 8,
            'windows': [16, 24],
            'num_kernels': 3,
            'kernel_size': 5,
            'num_blocks': 1,
            'num_heads': 2
        },
        'path': {
            'pretrain_network_g': None,
            'strict_load_g': True,
            'resume_state': None,
            'experiments_root': str(tmp_path),
            'models': str(tmp_path / 'models'),
            'training_states': str(tmp_path / 'training_states'),
            'log': str(tmp_path),
            'visualization': str(tmp_path / 'visualization')
        },
        'train': train,
        'val': {
            'val_freq': 1,
            'save_img': True,
            'suffix': None,
            'metrics': {
                'psnr': {
                    'type': 'calculate_psnr',
                    'crop_border': 0,
                    'test_y_channel': False
                },
                'ssim': {
                    'type': 'calculate_ssim',
                    'crop_border': 0,
                    'test_y_channel': False
                },
                'lpips': {
                    'type': 'calculate_lpips',
                    'crop_border': 0,
                    'pretrained': False,
                    'better': 'lower'
                }
            }
        },
    }


def make_model(tmp_path, **train_overrides) -> DeSpikeModel:
    torch.manual_seed(0)
    return build_model(model_options(tmp_path, **train_overrides))


def train_batch(seed: int = 0) -> dict:
    return next(iter(DataLoader(TinySpikeDataset(2, seed=seed), batch_size=2, shuffle=False)))


def test_model_is_registered():
    assert MODEL_REGISTRY.get('DeSpikeModel') is DeSpikeModel


def test_crop_keeps_the_centre_min_length_frames():
    lq = torch.arange(10.0)[None, :, None, None].expand(2, 10, 1, 1)
    cropped = crop_center_frames(lq, torch.tensor([6, 4]))
    assert cropped[0, :, 0, 0].tolist() == [3.0, 4.0, 5.0, 6.0]  # frame 10 // 2 = 5 lands at 4 // 2 = 2
    assert crop_center_frames(lq, torch.tensor([10, 10])) is lq
    assert crop_center_frames(lq, None) is lq
    with pytest.raises(ValueError, match=r'lq_len must lie in \[1, 10\].*found 0'):
        crop_center_frames(lq, torch.tensor([0, 3]))


def test_feed_data_crops_the_batch_and_keeps_gamma(tmp_path):
    model = make_model(tmp_path)
    batch = train_batch()
    model.feed_data(batch)
    assert model.lq.shape == (2, 24, SIZE, SIZE)  # min(lq_len) = 24 of 40 frames
    torch.testing.assert_close(model.lq, batch['lq'][:, 8:32])
    assert model.lq[0].sum() > 0 and model.gamma.shape == (2, 1, SIZE, SIZE)
    model.feed_data({k: v for k, v in batch.items() if k != 'gamma'})
    assert model.gamma is None


def test_uint8_spikes_train_and_test_as_their_float_copy(tmp_path):
    batch = train_batch()
    assert batch['lq'].dtype == torch.uint8
    results = []
    for spikes in (batch['lq'], batch['lq'].float()):
        model = make_model(tmp_path, lpips_opt=None)
        model.feed_data(dict(batch, lq=spikes))
        model.optimize_parameters(1)
        model.test()
        results.append((model.get_current_log(), model.output))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1])


def test_optimize_parameters_logs_each_term_and_learns(tmp_path):
    model = make_model(tmp_path)
    batch = train_batch()
    before = copy.deepcopy(model.net_g.state_dict())
    totals = []
    for step in range(1, 9):
        model.feed_data(batch)
        model.optimize_parameters(step)
        logged = model.get_current_log()
        assert set(logged) == {'l_grid', 'l_fft', 'l_lpips'}
        assert all(np.isfinite(v) and v >= 0 for v in logged.values())
        totals.append(sum(logged.values()))
    assert totals[-1] < totals[0]
    after = model.net_g.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert 'bank.weight' in changed and len(changed) > len(before) // 2


def test_trainable_option_freezes_all_but_the_matching_parameters(tmp_path):
    model = make_model(tmp_path, trainable=[r'levels\.\d+\.head\.'])
    batch = train_batch()
    before = copy.deepcopy(model.net_g.state_dict())
    for step in range(1, 4):
        model.feed_data(batch)
        model.optimize_parameters(step)
    after = model.net_g.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    heads = {k for k in before if '.head.' in k and k.startswith('levels.')}
    assert changed and changed <= heads  # only heads moved
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert optimised == {id(p) for n, p in model.net_g.named_parameters() if '.head.' in n}
    with pytest.raises(ValueError, match='matches none'):
        make_model(tmp_path, trainable=['no_such_layer'])
    with pytest.raises(ValueError, match='list of regular expressions'):
        make_model(tmp_path, trainable='levels')


def test_no_harm_penalty_charges_only_the_error_a_correction_adds():
    from despike_basicsr.models.despike_model import no_harm_penalty
    target = torch.zeros(2, 1, 4, 4)
    plain = torch.full((2, 1, 4, 4), 0.1)
    assert float(no_harm_penalty(plain, plain, target)) == 0.0
    assert float(no_harm_penalty(torch.full_like(plain, 0.05), plain, target)) == 0.0  # better everywhere: free
    worse = plain.clone()
    worse[0, 0, 0, 0] = 0.3  # one pixel of sample 0 made worse: (0.09 − 0.01) / 16 over 0.01, halved by the batch
    assert abs(float(no_harm_penalty(worse, plain, target, eps=0.0)) - 0.08 / 16 / 0.01 / 2) < 1e-5
    clean = torch.full((2, 1, 4, 4), 0.01)  # the same excess on a 10x cleaner sample costs 100x more
    worse_clean = clean.clone()
    worse_clean[0, 0, 0, 0] = clean[0, 0, 0, 0] + (0.09 - 0.01)**0.5
    ratio = float(no_harm_penalty(worse_clean, clean, target, eps=0.0) / no_harm_penalty(worse, plain, target, eps=0.0))
    assert 90 < ratio < 110


def test_harm_loss_trains_a_network_with_a_window_mix_and_needs_one(tmp_path):
    options = model_options(tmp_path, harm_weight=0.5)
    options['network_g'].update(base_windows=[8, 24], delta_gate=True)
    torch.manual_seed(0)
    model = build_model(options)
    model.feed_data(train_batch())
    model.optimize_parameters(1)
    logged = model.get_current_log()
    assert 'l_harm' in logged and np.isfinite(logged['l_harm']) and logged['l_harm'] >= 0
    assert model.get_bare_model(model.net_g).correction_strength == 1.0  # restored after the mix
    with pytest.raises(ValueError, match='needs base_windows'):
        make_model(tmp_path, harm_weight=0.5)


def test_loss_terms_are_optional_and_weighted(tmp_path):
    model = make_model(tmp_path, fft_opt=None, lpips_opt=None)
    model.feed_data(train_batch())
    model.optimize_parameters(1)
    assert set(model.get_current_log()) == {'l_grid'}
    model = make_model(tmp_path, pixel_opt=None, fft_opt=None, lpips_opt=None,
                       ssim_opt={'type': 'SSIMLoss', 'loss_weight': 0.5})  # the SSIM term alone trains too
    model.feed_data(train_batch())
    model.optimize_parameters(1)
    logged = model.get_current_log()
    assert set(logged) == {'l_ssim'} and 0 < logged['l_ssim'] <= 0.5 * 2
    model = make_model(tmp_path, pixel_opt=None, fft_opt=None, lpips_opt=None,
                       tone_opt={'type': 'LowFrequencyToneLoss', 'loss_weight': 1.0})  # the tone term counts as a loss
    model.feed_data(train_batch())
    model.optimize_parameters(1)
    assert set(model.get_current_log()) == {'l_tone'}
    with pytest.raises(ValueError, match='needs at least one loss'):
        make_model(tmp_path, pixel_opt=None, fft_opt=None, lpips_opt=None)
    with pytest.raises(ValueError, match=r"train.fft_scales must be one of \('final', 'all'\), got 'coarse'"):
        make_model(tmp_path, fft_scales='coarse')


def test_fft_on_all_scales_sums_over_the_last_row(tmp_path):
    model = make_model(tmp_path, pixel_opt=None, lpips_opt=None, fft_scales='all')
    model.feed_data(train_batch())
    with torch.no_grad():
        _, grid = model.net_g(model.lq, model.gamma, return_intermediates=True)
        model.output = grid[-1][-1]
        total = model._aux_loss(model.cri_fft, 'all', grid)
        final_only = model._aux_loss(model.cri_fft, 'final', grid)
    assert len(grid[-1]) == 3 and total > final_only > 0


def test_ema_is_updated_and_used_for_testing(tmp_path):
    model = make_model(tmp_path, ema_decay=0.5, lpips_opt=None)
    model.feed_data(train_batch())
    model.optimize_parameters(1)
    net, ema = model.net_g.state_dict(), model.net_g_ema.state_dict()
    assert not torch.equal(net['bank.weight'], ema['bank.weight'])
    model.test()
    with torch.no_grad():
        expected = model.net_g_ema(model.lq, model.gamma)
    torch.testing.assert_close(model.output, expected)
    assert model.net_g.training and not model.net_g_ema.training


def test_validation_computes_metrics_and_saves_single_channel_images(tmp_path):
    model = make_model(tmp_path, lpips_opt=None)
    loader = DataLoader(TinySpikeDataset(3, lengths=(40, 30, 24), seed=1), batch_size=1, shuffle=False)
    model.validation(loader, current_iter=7, tb_logger=None, save_img=True)
    results = model.metric_results
    assert set(results) == {'psnr', 'ssim', 'lpips'}
    assert all(np.isfinite(v) for v in results.values())
    assert 0 < results['psnr'] < 100 and -1 <= results['ssim'] <= 1 and results['lpips'] >= 0
    for index in range(3):
        path = osp.join(tmp_path, 'visualization', f'tiny_{index:02d}', f'tiny_{index:02d}_7.png')
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (SIZE, SIZE) and image.dtype == np.uint8
    assert model.net_g.training  # validation restores train mode


def test_validation_psnr_matches_a_direct_computation(tmp_path):
    from basicsr.metrics import calculate_psnr
    from basicsr.utils import tensor2img
    model = make_model(tmp_path, lpips_opt=None)
    dataset = TinySpikeDataset(1, lengths=(40, ), seed=2)
    model.validation(DataLoader(dataset, batch_size=1), current_iter=1, tb_logger=None, save_img=False)
    item = dataset[0]
    with torch.no_grad():
        output = model.net_g.eval()(item['lq'][None], item['gamma'][None])
    expected = calculate_psnr(tensor2img(output), tensor2img(item['gt'][None]), crop_border=0)
    assert model.metric_results['psnr'] == pytest.approx(expected, rel=1e-6)


def test_tone_loss_uses_the_items_photometric_flags(tmp_path):
    model = make_model(tmp_path, tone_opt={'type': 'LowFrequencyToneLoss', 'loss_weight': 1.0})
    batch = train_batch()
    model.feed_data(dict(batch, photometric=torch.tensor([0.0, 0.0])))
    model.optimize_parameters(1)
    assert model.get_current_log()['l_tone'] == 0.0  # two real pairs: nothing to price
    model.feed_data(dict(batch, photometric=torch.tensor([1.0, 0.0])))
    model.optimize_parameters(2)
    assert model.get_current_log()['l_tone'] > 0
