"""The deblurring campaign's parts (issue 21): DPDD pair alignment, signed-CoC lens-like training data, the gradient
loss, the committed campaign state, the learning curve and the GPU burst's plan."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

from despike_basicsr.training import campaign, gpu_burst
from despike_basicsr.evaluation import training_curve as tc
from despike_basicsr.data.natural_spike_dataset import NaturalSpikeDataset, signed_coc_map
from despike_basicsr.data.preparation import align_sharp_to_blurred
from despike_basicsr.losses.gradient_loss import GradientL1Loss


def _texture(height=256, width=320, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fine = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 3)
    coarse = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 20)
    return 0.5 * fine + coarse + 0.1


def test_alignment_recovers_a_subpixel_shift_and_gain_through_extra_blur():
    sharp = _texture()
    shift = np.float32([[1, 0, 1.3], [0, 1, -0.7]])
    blurred = cv2.warpAffine(sharp, shift, sharp.shape[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    blurred = cv2.GaussianBlur(blurred * 1.1, (0, 0), 2.0)
    aligned, info = align_sharp_to_blurred(sharp, blurred)
    assert info['dx'] == pytest.approx(1.3, abs=0.1) and info['dy'] == pytest.approx(-0.7, abs=0.1)
    assert info['gain'] == pytest.approx(1.1, abs=0.02)
    inner = (slice(30, -30), slice(30, -30))
    before = np.abs(cv2.GaussianBlur(sharp, (0, 0), 2.0) - blurred)[inner].mean()
    after = np.abs(cv2.GaussianBlur(aligned, (0, 0), 2.0) - blurred)[inner].mean()
    assert after < 0.3 * before


def test_alignment_leaves_an_implausible_match_alone():
    sharp = _texture(seed=1)
    far = cv2.warpAffine(sharp, np.float32([[1, 0, 9.0], [0, 1, 0]]), sharp.shape[::-1], borderMode=cv2.BORDER_REFLECT)
    _, info = align_sharp_to_blurred(sharp, far)
    assert info['dx'] == 0.0 and info['dy'] == 0.0  # beyond max_shift: not trusted
    aligned, info = align_sharp_to_blurred(sharp, 3.0 * sharp)
    assert info['gain'] == 1.0  # a 3x exposure difference is not a DPDD pair's
    np.testing.assert_allclose(aligned, sharp, atol=1e-5)
    with pytest.raises(ValueError):
        align_sharp_to_blurred(sharp, sharp[:10])


def test_signed_coc_map_spans_the_requested_blur():
    rng = np.random.default_rng(0)
    depth = np.linspace(1.0, 8.0, 64, dtype=np.float32)[None, :] * np.ones((8, 1), np.float32)
    behind = signed_coc_map(depth, 2.0, 20.0, False, rng)
    assert behind.min() == pytest.approx(2.0, rel=1e-3) and behind.max() == pytest.approx(20.0, rel=1e-6)
    assert np.all(np.diff(behind[0]) > 0)
    inside = signed_coc_map(depth, 2.0, 20.0, True, np.random.default_rng(1))
    assert inside.min() < 0 < inside.max() and np.abs(inside).max() == pytest.approx(20.0, rel=1e-6)


def _folder_dataset(tmp_path, **extra):
    folder = tmp_path / 'sharp'
    folder.mkdir(exist_ok=True)
    for i in range(2):  # 8-px blocks of random grey: edges everywhere
        blocks = np.random.default_rng(i).integers(20, 235, (12, 14)).astype(np.uint8)
        cv2.imwrite(str(folder / f'{i}.png'), cv2.resize(blocks, (112, 96), interpolation=cv2.INTER_NEAREST))
    opt = {'dataroot_gt': str(folder), 'phase': 'train', 'gt_size': 48, 'temporal_len': 24,
           'coc_far_range': [6.0, 20.0], 'source_mix': {'depth': 1.0}, **extra}
    return NaturalSpikeDataset(opt)


@pytest.mark.parametrize('family', ['gaussian', 'lens'])
def test_signed_coc_training_items(tmp_path, family):
    dataset = _folder_dataset(tmp_path, psf_family=family)
    item = dataset[0]
    assert item['lq'].shape == (24, 48, 48) and item['gt'].shape == (1, 48, 48)
    assert item['rate_per_unit'] > 0


def test_signed_coc_defocus_blurs_and_families_differ(tmp_path):
    dataset = {f: _folder_dataset(tmp_path, psf_family=f) for f in ('gaussian', 'lens')}
    sharp = dataset['lens']._load(0)[0]
    box = (10, 74, 10, 74)
    out = {f: d._signed_coc_defocus(sharp, box, np.random.default_rng(3)) for f, d in dataset.items()}
    region = sharp[10:74, 10:74]
    for image in out.values():
        assert image.shape == region.shape
        assert (np.diff(image, axis=1)**2).mean() < 0.5 * (np.diff(region, axis=1)**2).mean()  # edge energy drops
    assert not np.allclose(out['gaussian'], out['lens'])


def test_dataset_rejects_bad_psf_options(tmp_path):
    with pytest.raises(ValueError, match='psf_family'):
        _folder_dataset(tmp_path, psf_family='zernike')
    with pytest.raises(ValueError, match='coc_near_range'):
        _folder_dataset(tmp_path, coc_near_range=[0.0, 8.0], coc_far_range=[6.0, 20.0])


def test_gradient_loss_prices_blur_that_a_pixel_loss_barely_sees():
    rng = np.random.default_rng(0)
    sharp = torch.from_numpy(rng.random((1, 1, 32, 32)).astype(np.float32))
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, stride=1, padding=1, count_include_pad=False)
    loss = GradientL1Loss(loss_weight=2.0)
    assert loss(sharp, sharp).item() == 0.0
    expected = 2.0 * ((blurred.diff(dim=-2) - sharp.diff(dim=-2)).abs().mean() +
                      (blurred.diff(dim=-1) - sharp.diff(dim=-1)).abs().mean())
    assert loss(blurred, sharp).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError):
        loss(sharp, sharp[..., :16])


def _fake_experiment(root, name, iteration):
    states = root / 'experiments' / name / 'training_states'
    models = root / 'experiments' / name / 'models'
    states.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    (states / f'{iteration}.state').write_bytes(f'state {iteration}'.encode())
    (models / f'net_g_{iteration}.pth').write_bytes(f'net {iteration}'.encode())


def test_campaign_snapshot_keeps_only_the_newest_state_and_restore_puts_it_back(tmp_path):
    _fake_experiment(tmp_path, 'run', 250)
    _fake_experiment(tmp_path, 'run', 500)
    assert campaign.snapshot('run', str(tmp_path)) == 500
    committed = tmp_path / campaign.STATE_ROOT / 'run'
    assert sorted(os.listdir(committed)) == ['500.state', 'net_g_500.pth']
    # a fresh checkout: nothing under experiments/
    fresh = tmp_path / 'fresh'
    (fresh / campaign.STATE_ROOT).mkdir(parents=True)
    os.rename(committed, fresh / campaign.STATE_ROOT / 'run')
    assert campaign.restore('run', str(fresh)) == 500
    assert (fresh / 'experiments/run/training_states/500.state').read_bytes() == b'state 500'
    assert (fresh / 'experiments/run/models/net_g_500.pth').read_bytes() == b'net 500'
    assert campaign.restore('run', str(fresh)) is None  # a state as new is there: left alone
    _fake_experiment(fresh, 'run', 750)
    assert campaign.restore('run', str(fresh)) is None
    assert campaign.restore('other', str(fresh)) is None


def test_campaign_snapshot_refuses_a_state_without_weights(tmp_path):
    _fake_experiment(tmp_path, 'run', 250)
    os.remove(tmp_path / 'experiments/run/models/net_g_250.pth')
    with pytest.raises(FileNotFoundError, match='net_g_250.pth'):
        campaign.snapshot('run', str(tmp_path))
    assert campaign.snapshot('empty', str(tmp_path)) is None


def _entry(iteration, hours, offset):
    images = {k: {'despike': {'psnr': 25 + offset, 'ssim': 0.8, 'psnr_fit': 26 + offset + i, 'ssim_fit': 0.8},
                  'defocused': {'psnr': 25.5, 'ssim': 0.84, 'psnr_fit': 26.0 + i, 'ssim_fit': 0.83}}
              for i, k in enumerate(['a', 'b'])}
    return {'iteration': iteration, 'cpu_hours': hours, 'images': images}


def test_learning_curve_hours_gains_table_and_plot(tmp_path):
    log = tmp_path / 'train.log'
    log.write_text('\n'.join(f'[x..][epoch:  0, iter:   {i:,}, lr:(1e-4,)] [eta: 0:01:00, time (data): 2.000 (0.01)]'
                             for i in range(25, 1025, 25)))
    seconds = tc.iteration_seconds([str(log)], print_freq=25)
    assert seconds[1000] == 50.0 and len(seconds) == 40
    entries = [_entry(0, 0.0, 0.0)]
    assert tc.cpu_hours(500, entries, seconds) == pytest.approx(20 * 50 / 3600)
    entries.append(_entry(500, 1.0, 0.5))  # hours recorded in an earlier sitting win
    assert tc.cpu_hours(1000, entries, seconds) == pytest.approx(1.0 + 20 * 50 / 3600)
    assert tc.cpu_hours(2000, entries, {}) is None
    assert tc.gains(entries[1]) == {'a': 0.5, 'b': 0.5}
    path = str(tmp_path / 'curve.json')
    tc.save_curve(path, 'run', entries[::-1])
    assert [e['iteration'] for e in tc.load_curve(path)] == [0, 500]
    table = tc.markdown('run', tc.load_curve(path))
    assert '| 500 | 1.00 |' in table and '+0.50' in table and table.rstrip().endswith('n/a |')
    for image in entries[1]['images'].values():
        image['despike'].update(ssim_defocus=0.7, ssim_rest=0.8)
    assert tc.markdown('run', entries).rstrip().endswith('| 0.700 / 0.800 | n/a | n/a |')  # no do-no-harm rows yet
    entries[1]['harm'] = [dict(condition='in focus', diff=-0.25), dict(condition='in focus', diff=0.75),
                          dict(condition='moving', diff=1.5)]
    table = tc.markdown('run', entries)
    assert '| 0.700 / 0.800 | +0.25 (-0.25) | +1.50 (+1.50) |' in table and 'Do no harm' in table
    image = tc.plot('run', entries)
    assert image.shape == (840, 760, 3) and image.min() == 0  # a second panel for the do-no-harm rows
    assert tc.plot('run', entries[:1]).shape == (420, 760, 3)
    assert tc.ascii_name('A → B') == 'A > B'
    assert json.loads(open(path).read())['name'] == 'run'


def test_learning_curve_columns_follow_the_harm_sets():
    entries = [_entry(0, 0.0, 0.0), _entry(1000, 0.1, 0.5)]
    entries[1]['harm'] = [dict(set='photos in focus', condition='in focus', diff=-3.0),
                          dict(set='photos in focus', condition='in focus', diff=1.0),
                          dict(set='dpdd-val in focus', condition='in focus', diff=2.0),
                          dict(set='dpdd-val moving', condition='moving', diff=4.0)]
    assert tc.harm_groups(entries) == ['dpdd-val in focus', 'photos in focus', 'dpdd-val moving']
    entries[1]['phase'] = 'B'
    table = tc.markdown('A → B', entries)
    assert 'photos in focus − TFP-192 (worst)' in table and 'dpdd-val moving − TFP-41 (worst)' in table
    assert '| +2.00 (+2.00) | -1.00 (-3.00) | +4.00 (+4.00) |' in table
    assert '| n/a | n/a | n/a |' in table  # iteration 0 has no harm rows
    assert 'start 0–0; B 1000–1000' in table


def test_phase_checkpoints_count_iterations_across_phases(tmp_path):
    start = tmp_path / 'start.pth'
    start.write_bytes(b'x')
    opts = []
    for name, total in (('A', 600), ('B', 200)):  # A was stopped at 300 and B trained from its 300
        models = tmp_path / 'experiments' / name / 'models'
        models.mkdir(parents=True)
        for i in range(100, min(total, 300) + 1, 100):
            (models / f'net_g_{i}.pth').write_bytes(b'x')
        (models / 'net_g_latest.pth').write_bytes(b'x')
        (tmp_path / 'experiments' / name / 'train_x.log').write_text(
            '\n'.join(f'[x..][epoch:  0, iter:   {i:,}, lr:(1e-4,)] [time (data): 1.000 (0.01)]'
                      for i in range(50, min(total, 300) + 1, 50)))
        opt = dict(name=name, logger=dict(print_freq=50), train=dict(total_iter=total),
                   path=dict(pretrain_network_g=str(start)))
        opts.append(str(tmp_path / f'{name}.yml'))
        with open(opts[-1], 'w') as f:
            yaml.safe_dump(opt, f)
    found, seconds, name = tc.phase_checkpoints(opts, every=200, experiments=str(tmp_path / 'experiments'))
    assert [(i, phase) for i, _, phase in found] == [(0, 'start'), (200, 'A'), (500, 'B')]
    assert found[2][1].endswith('B/models/net_g_200.pth') and name == 'A → B'
    assert sorted(seconds) == list(range(50, 501, 50)) and seconds[500] == 50.0


def test_gpu_burst_starts_from_the_committed_state_and_overrides_the_recipe(tmp_path, monkeypatch):
    opt = {'name': 'run', 'path': {'pretrain_network_g': str(tmp_path / 'shipped.pth'), 'param_key_g': 'params'}}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match='pretrain_network_g'):
        gpu_burst.start_weights(opt)
    (tmp_path / 'shipped.pth').write_bytes(b'x')
    assert gpu_burst.start_weights(opt) == (str(tmp_path / 'shipped.pth'), 'params')
    _fake_experiment(tmp_path, 'run', 750)
    campaign.snapshot('run', '.')
    assert gpu_burst.start_weights(opt) == (os.path.join(campaign.STATE_ROOT, 'run', 'net_g_750.pth'), 'params_ema')
    overrides = gpu_burst.burst_overrides(opt, 'w.pth', 'params_ema', 32, 12, True, 100, 2e-4)
    assert 'datasets:train:batch_size_per_gpu=32' in overrides and 'num_gpu=1' in overrides
    assert 'path:pretrain_network_g=w.pth' in overrides and 'name=run_burst' in overrides
    with pytest.raises(SystemExit):
        gpu_burst.main(['--out', str(tmp_path / 'o'), '--minutes', '9', '--cpu'])
