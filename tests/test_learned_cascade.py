"""Learned spike front ends in cascades (issue 22): the LMDB's defocused image, the front-end stage
(SpikeFrontEndModel, trained on it), CascadeModel with a frozen RSIR / Spk2ImgNet front end, and the whole chain
through train.py (train, save, resume) and scripts/benchmark.py on a tiny LMDB written here."""
import copy
import json
import shutil
import subprocess
from os import path as osp

import numpy as np
import pytest
import torch
import yaml
from basicsr.utils.registry import MODEL_REGISTRY
from scipy import ndimage
from torch.utils.data import DataLoader

from despike_basicsr.data.spike_lmdb import LMDBKeyError, SpikeLMDBReader, SpikeLMDBWriter
from despike_basicsr.data.spike_lmdb_dataset import SpikeLMDBDataset
from despike_basicsr.models.cascade_model import parse_front_end
from despike_basicsr.spike.camera import simulate
from despike_basicsr.spike.optics import display_to_linear, linear_to_display

HEIGHT, WIDTH, FRAMES = 20, 24, 64
TINY_FRONT_ENDS = {
    'RSIR': {'type': 'RSIR', 'sub_window': 16, 'hidden': 4, 'num_res_blocks': 1, 'attn_dim': 6, 'attn_depth': 1,
             'attn_heads': 1, 'window_size': 4},
    'Spk2ImgNet': {'type': 'Spk2ImgNet', 'num_feat': 4, 'num_res_blocks': 1, 'deform_groups': 2},
}
TINY_GKMNET = {'type': 'GKMNet', 'in_channels': 1, 'width': 4, 'num_blocks': 1}


def _scene(seed: int):
    """A smooth sharp display image, its defocused linear intensity and display image, and its spikes."""
    rng = np.random.default_rng(seed)
    sharp = ndimage.gaussian_filter(rng.random((HEIGHT, WIDTH)), 1.0)
    sharp = (sharp - sharp.min()) / (sharp.max() - sharp.min())
    blurred = ndimage.gaussian_filter(display_to_linear(sharp), 1.5) * 0.9 + 0.05
    spikes = simulate(blurred, FRAMES, threshold=2.0, eta=1.0, seed=seed)
    return sharp, linear_to_display(blurred), spikes


def write_lmdb(path: str, count: int = 3, blurred: bool = True) -> None:
    with SpikeLMDBWriter(path) as writer:
        for i in range(count):
            sharp, blurred_display, spikes = _scene(i)
            writer.add(f'scene_{i:02d}', sharp, {'threshold': 2.0, 'eta': 1.0, 'seed': i}, spikes=spikes,
                       blurred=blurred_display if blurred else None)


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    root = tmp_path_factory.mktemp('learned')
    new, old = str(root / 'new.lmdb'), str(root / 'old.lmdb')
    write_lmdb(new)
    write_lmdb(old, blurred=False)
    return {'root': root, 'new': new, 'old': old}


def _dataset(path: str, **options) -> SpikeLMDBDataset:
    opt = {'dataroot': path, 'io_backend': {'type': 'lmdb'}, 'phase': 'val', 'val_len': FRAMES}
    return SpikeLMDBDataset(dict(opt, **options))


def test_the_lmdb_stores_the_defocused_image_and_old_lmdbs_still_read(lmdbs):
    reader = SpikeLMDBReader(lmdbs['new'])
    assert reader.has_blurred() and reader.meta('scene_01')['blurred'] is True
    expected = np.round(_scene(1)[1] * 255).astype(np.uint8)
    assert np.array_equal(reader.read_blurred('scene_01'), expected)
    assert np.array_equal(reader.read_blurred('scene_01', 2, 9, 3, 7), expected[2:9, 3:7])
    old = SpikeLMDBReader(lmdbs['old'])
    assert not old.has_blurred()
    with pytest.raises(LMDBKeyError, match='stores no defocused image.*prepare it again'):
        old.read_blurred('scene_00')
    # default 'auto': returned where stored, absent from old LMDBs (their items are what they always were)
    assert torch.allclose(_dataset(lmdbs['new'])[1]['blurred'], torch.from_numpy(expected / 255.0).float()[None])
    assert 'blurred' not in _dataset(lmdbs['old'])[0]
    assert 'blurred' not in _dataset(lmdbs['new'], blurred=False)[0]
    with pytest.raises(ValueError, match='blurred is true but .*old.lmdb stores no defocused image'):
        _dataset(lmdbs['old'], blurred=True)


def test_training_crops_flip_the_defocused_image_with_the_ground_truth(lmdbs):
    import random
    dataset = _dataset(lmdbs['new'], phase='train', gt_size=8, use_flip=True, use_rot=True)
    reader = SpikeLMDBReader(lmdbs['new'])
    full_gt = reader.read_sample('scene_00')[1].astype(np.float64)
    full_blurred = reader.read_blurred('scene_00').astype(np.float64)
    for seed in range(6):
        random.seed(seed)
        item = dataset[0]
        # whatever crop and flip were drawn, the same one was applied to both: find it on the gt, check the blurred
        gt, blurred = item['gt'][0].numpy() * 255, item['blurred'][0].numpy() * 255
        found = False
        for variant_gt, variant_blurred in _variants(full_gt, full_blurred):
            for y in range(variant_gt.shape[0] - 7):
                for x in range(variant_gt.shape[1] - 7):
                    if np.allclose(variant_gt[y:y + 8, x:x + 8], gt, atol=1e-3):
                        found = found or np.allclose(variant_blurred[y:y + 8, x:x + 8], blurred, atol=1e-3)
        assert found


def _variants(a: np.ndarray, b: np.ndarray):
    for hflip in (False, True):
        for vflip in (False, True):
            for transpose in (False, True):
                x, y = a, b
                if hflip:
                    x, y = x[:, ::-1], y[:, ::-1]
                if vflip:
                    x, y = x[::-1], y[::-1]
                if transpose:
                    x, y = x.T, y.T
                yield x, y


def _train_options(name: str, model_type: str, network: dict, lmdb: str, total_iter: int = 2, **extra) -> dict:
    dataset = {'type': 'SpikeLMDBDataset', 'dataroot': lmdb, 'io_backend': {'type': 'lmdb'}}
    opt = {
        'name': name, 'model_type': model_type, 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': dict(dataset, name='tiny-train', phase='train', gt_size=16, temporal_len=[48, 64], use_flip=True,
                          use_rot=True, num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=2,
                          prefetch_mode=None),
            'val': dict(dataset, name='tiny-val', phase='val', val_len=48)},
        'network_g': network,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.9, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': total_iter,
                  'warmup_iter': -1, 'grad_clip_norm': 0.5},
        'val': {'val_freq': 2, 'save_img': False, 'metrics': {
            'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False, 'wandb': None},
        'dist_params': {'backend': 'gloo', 'port': 29500},
    }
    opt.update(extra)
    return opt


def _model(opt: dict):
    opt = dict(opt, is_train=True, dist=False, rank=0, world_size=1)
    torch.manual_seed(0)
    return MODEL_REGISTRY.get(opt['model_type'])(opt)


@pytest.mark.parametrize('arch', ['RSIR', 'Spk2ImgNet'])
def test_front_end_stage_learns_the_defocused_image(lmdbs, arch):
    opt = _train_options('stage', 'SpikeFrontEndModel', TINY_FRONT_ENDS[arch], lmdbs['new'],
                         front_end={'fpn': arch == 'RSIR'})
    opt['train']['pixel_opt'] = {'type': 'L1Loss', 'loss_weight': 1.0}
    model = _model(opt)
    batch = next(iter(DataLoader(_dataset(lmdbs['new']), batch_size=2)))
    batch['gamma'] = torch.ones(1, 1, HEIGHT, WIDTH)
    model.feed_data(batch)
    assert torch.equal(model.gt, batch['blurred'])  # the stage's target is the defocused image, not the sharp one
    before = [p.detach().clone() for p in model.net_g.parameters()]
    model.optimize_parameters(1)
    assert np.isfinite(model.log_dict['l_pix'])
    assert any(not torch.equal(p, q) for p, q in zip(model.net_g.parameters(), before))
    model.test()
    assert model.output.shape == (2, 1, HEIGHT, WIDTH)
    old_batch = next(iter(DataLoader(_dataset(lmdbs['old']), batch_size=2)))
    with pytest.raises(ValueError, match='trains on the defocused image.*prepare the LMDB again'):
        model.feed_data(old_batch)


@pytest.mark.parametrize('arch', ['RSIR', 'Spk2ImgNet'])
def test_learned_front_end_is_frozen_and_feeds_the_back_end(lmdbs, tmp_path, arch):
    torch.manual_seed(3)
    from basicsr.archs import build_network
    front = build_network(dict(TINY_FRONT_ENDS[arch])).eval()
    weights = tmp_path / 'front.pth'
    torch.save({'params': front.state_dict()}, weights)
    opt = _train_options('cascade', 'CascadeModel', TINY_GKMNET, lmdbs['new'],
                         front_end={'type': 'learned', 'network': TINY_FRONT_ENDS[arch], 'weights': str(weights)})
    opt['train']['pixel_opt'] = {'type': 'MultiScaleMSELoss', 'loss_weight': 1.0, 'scale_weights': [1, 1, 1]}
    model = _model(opt)
    frozen = {k: v.clone() for k, v in model.front_net.state_dict().items()}
    batch = next(iter(DataLoader(_dataset(lmdbs['new']), batch_size=2)))
    model.feed_data(batch)
    with torch.no_grad():
        expected = front(batch['lq']).clamp(0, 1)
    assert torch.allclose(model.lq, expected, atol=1e-6)
    for it in (1, 2):
        model.feed_data(batch)
        model.optimize_parameters(it)
    assert all(torch.equal(v, model.front_net.state_dict()[k]) for k, v in frozen.items())
    assert not any(p.requires_grad for p in model.front_net.parameters())
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in model.front_net.parameters()}


@pytest.mark.parametrize('amp', [None, 'bf16'])
def test_the_frozen_front_end_runs_in_the_training_precision(lmdbs, tmp_path, amp):
    torch.manual_seed(3)
    from basicsr.archs import build_network
    front = build_network(dict(TINY_FRONT_ENDS['Spk2ImgNet'])).eval()
    weights = tmp_path / 'front.pth'
    torch.save({'params': front.state_dict()}, weights)
    opt = _train_options('cascade', 'CascadeModel', TINY_GKMNET, lmdbs['new'],
                         front_end={'type': 'learned', 'network': TINY_FRONT_ENDS['Spk2ImgNet'],
                                    'weights': str(weights)})
    opt['train'].update(amp=amp, pixel_opt={'type': 'MultiScaleMSELoss', 'loss_weight': 1.0,
                                            'scale_weights': [1, 1, 1]})
    model = _model(opt)
    seen = []
    model.front_net.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled('cpu')))
    batch = next(iter(DataLoader(_dataset(lmdbs['new']), batch_size=2)))
    model.feed_data(batch)
    assert seen == [amp is not None] and model.lq.dtype == torch.float32
    with torch.no_grad():
        expected = front(batch['lq']).clamp(0, 1)
    difference = float((model.lq - expected).abs().max())
    assert difference < (2e-2 if amp else 1e-6)  # bf16 keeps about 3 significant digits
    if amp:
        assert difference > 0
    model.optimize_parameters(1)
    assert np.isfinite(model.log_dict['l_pix'])


def test_learned_front_end_options_are_checked(tmp_path):
    parsed = parse_front_end({'type': 'learned', 'network': {'type': 'RSIR'}, 'weights': 'w.pth'})
    assert parsed['fpn'] is False and parsed['param_key'] is None
    with pytest.raises(ValueError, match='front_end.weights must name the trained front end'):
        parse_front_end({'type': 'learned', 'network': {'type': 'RSIR'}})
    with pytest.raises(ValueError, match='front_end.network must name a registered arch'):
        parse_front_end({'type': 'learned', 'network': {'type': 'NoSuchNet'}, 'weights': 'w.pth'})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['window'\]"):
        parse_front_end({'type': 'learned', 'network': {'type': 'RSIR'}, 'weights': 'w.pth', 'window': 41})
    opt = _train_options('cascade', 'CascadeModel', TINY_GKMNET, 'unused.lmdb',
                         front_end={'type': 'learned', 'network': {'type': 'RSIR'},
                                    'weights': str(tmp_path / 'missing.pth')})
    opt['train']['pixel_opt'] = {'type': 'MultiScaleMSELoss', 'loss_weight': 1.0}
    with pytest.raises(FileNotFoundError, match='train the front-end stage first'):
        _model(opt)


def _run(args, env, cwd):
    run = subprocess.run(args, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_stage_then_cascade_train_save_resume_and_benchmark(lmdbs, tmp_path, subprocess_env, python_exe, repo_root):
    """train.py: the RSIR stage (2 iterations), then the RSIR -> GKMNet cascade (2, then resumed to 4), then the
    benchmark scores the stage alone and the cascade, at 64 and 32 frames."""
    train_py = osp.join(repo_root, 'despike_basicsr', 'train.py')
    stage = _train_options('stage_rsir', 'SpikeFrontEndModel', TINY_FRONT_ENDS['RSIR'], lmdbs['new'])
    stage['train']['pixel_opt'] = {'type': 'L1Loss', 'loss_weight': 1.0}
    (tmp_path / 'stage.yml').write_text(yaml.safe_dump(stage, sort_keys=False))
    _run([python_exe, train_py, '-opt', str(tmp_path / 'stage.yml')], subprocess_env, tmp_path)
    stage_weights = tmp_path / 'experiments' / 'stage_rsir' / 'models' / 'net_g_latest.pth'
    assert stage_weights.is_file()

    cascade = _train_options('cascade_rsir_gkmnet', 'CascadeModel', TINY_GKMNET, lmdbs['new'],
                             front_end={'type': 'learned', 'network': TINY_FRONT_ENDS['RSIR'],
                                        'weights': str(stage_weights)})
    cascade['train']['pixel_opt'] = {'type': 'MultiScaleMSELoss', 'loss_weight': 1.0, 'scale_weights': [1, 1, 1]}
    (tmp_path / 'cascade.yml').write_text(yaml.safe_dump(cascade, sort_keys=False))
    _run([python_exe, train_py, '-opt', str(tmp_path / 'cascade.yml')], subprocess_env, tmp_path)
    models = tmp_path / 'experiments' / 'cascade_rsir_gkmnet' / 'models'
    assert (models / 'net_g_2.pth').is_file()
    trained = torch.load(models / 'net_g_2.pth', weights_only=True)['params']
    # the DPDD protocol's compact state (over its size limit: half-precision weights, no Adam moments, the front end
    # kept), then a fresh clone: no experiments folder, no stage weights; restored, resumed for two more iterations
    from despike_basicsr.evaluation import protocol
    full_mb = sum(p.stat().st_size for p in (tmp_path / 'experiments' / 'cascade_rsir_gkmnet').rglob('2.state')) / 2**20
    iteration, message = protocol.snapshot_state('results', 'cascade_rsir_gkmnet', root=str(tmp_path),
                                                 limit_mb=full_mb, options='cascade.yml')
    assert iteration == 2 and 'compact' in message and 'results/front_ends/stage_rsir.pth' in message, message
    stage_original = torch.load(stage_weights, weights_only=True)['params_ema']
    shutil.rmtree(tmp_path / 'experiments' / 'cascade_rsir_gkmnet')
    stage_weights.rename(tmp_path / 'stage_aside.pth')
    assert protocol.restore_state('results', 'cascade_rsir_gkmnet', root=str(tmp_path), options='cascade.yml') == 2
    restored_stage = torch.load(stage_weights, weights_only=True)['params']
    assert all(torch.allclose(restored_stage[k], v, rtol=1e-3, atol=1e-4) for k, v in stage_original.items())
    restored = torch.load(models / 'net_g_2.pth', weights_only=True)['params']
    assert all(restored[k].dtype == v.dtype and torch.allclose(restored[k], v, rtol=1e-3, atol=1e-4)
               for k, v in trained.items())
    cascade['train']['total_iter'] = 4
    (tmp_path / 'cascade.yml').write_text(yaml.safe_dump(cascade, sort_keys=False))
    _run([python_exe, train_py, '-opt', str(tmp_path / 'cascade.yml'), '--auto_resume'], subprocess_env, tmp_path)
    assert (models / 'net_g_4.pth').is_file()
    log = sorted((tmp_path / 'experiments' / 'cascade_rsir_gkmnet').glob('train_*.log'))[-1].read_text()
    assert 'Resuming training from epoch' in log and 'iter:       3' in log.replace(',', '')
    assert 'without optimiser moments' in log and 'ramps up over iterations 3-' in log
    restarts = protocol.restarts_of(str(models / 'net_g_latest.pth'))
    assert [r['iteration'] for r in restarts] == [2] and restarts[0]['warmup_iter'] == protocol.RESTART_WARMUP_ITER

    bench = osp.join(repo_root, 'scripts', 'benchmark.py')
    for frames in (64, 32):
        out = tmp_path / f'bench{frames}'
        _run([python_exe, bench, '--lmdb', lmdbs['new'], '--out-dir', str(out), '--lpips', 'off', '--val-len',
              str(frames), '--crop', '8', '--tiles', '2', '--methods', 'tfp', f'rsir:{tmp_path / "stage.yml"}:'
              f'{stage_weights}', f'rsir_gkmnet:{tmp_path / "cascade.yml"}:{models / "net_g_latest.pth"}'],
             subprocess_env, tmp_path)
        report = json.loads((out / 'benchmark.json').read_text())
        assert report['val_len'] == frames
        assert [m['name'] for m in report['methods']] == ['tfp', 'rsir', 'rsir_gkmnet']
        assert all(np.isfinite(m['psnr']) and len(m['per_sample']) == 3 for m in report['methods'])


def test_a_restart_without_optimiser_moments_warms_the_learning_rate_up(lmdbs, tmp_path):
    """A compact state (evaluation.protocol: Adam's moments dropped) resumes into a fresh Adam whose rate ramps up
    linearly over ``restart.warmup_iter`` iterations from the scheduled one (MultiStepLR: chained, so the scaling must
    not leak into the schedule), and a state saved during the warm-up holds the scheduled rate."""
    opt = _train_options('warm', 'CascadeModel', TINY_GKMNET, lmdbs['new'], front_end={'type': 'tfp', 'window': 8})
    opt['train']['pixel_opt'] = {'type': 'MultiScaleMSELoss', 'loss_weight': 1.0}
    opt['train']['scheduler'] = {'type': 'MultiStepLR', 'milestones': [12], 'gamma': 0.5}
    opt['path'].update({'training_states': str(tmp_path / 'states'), 'models': str(tmp_path / 'models')})
    (tmp_path / 'states').mkdir()
    plain, restarted = _model(copy.deepcopy(opt)), _model(copy.deepcopy(opt))  # BasicSR pops from the options
    for it in range(1, 11):
        plain.update_learning_rate(it)
        restarted.update_learning_rate(it)
    state = {'epoch': 0, 'iter': 10, 'schedulers': [s.state_dict() for s in restarted.schedulers],
             'optimizers': [{'state': {}, 'param_groups': o.state_dict()['param_groups']}
                            for o in restarted.optimizers],
             'restart': {'optimizer': True, 'warmup_iter': 4}}
    restarted.resume_training(state)
    assert restarted.restart_warmup == (10, 4)
    for it in range(11, 17):
        plain.update_learning_rate(it)
        restarted.update_learning_rate(it)
        scheduled = plain.get_current_learning_rate()[0]
        factor = (it - 10) / 4 if it < 14 else 1.0
        assert restarted.get_current_learning_rate()[0] == pytest.approx(scheduled * factor), it
        if it == 12:  # during the warm-up: the file holds the schedule's rate, the model keeps the scaled one
            restarted.save_training_state(0, it)
            saved = torch.load(tmp_path / 'states' / '12.state', weights_only=False)
            assert saved['optimizers'][0]['param_groups'][0]['lr'] == pytest.approx(scheduled)
            assert 'restart' not in saved
    assert plain.get_current_learning_rate()[0] == pytest.approx(5e-4)  # the milestone at 12 applied once
    assert restarted.get_current_learning_rate()[0] == pytest.approx(5e-4)
