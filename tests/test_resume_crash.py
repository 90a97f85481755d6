"""A training run killed with SIGKILL resumes exactly where it stopped; a kill during a save loses nothing saved."""
import os
import signal
import subprocess
import time

import pytest
import torch
from pipeline_helpers import run, tiny_options, train_log

from despike_basicsr import compat
from despike_basicsr.checkpoint import atomic_torch_save, safe_torch_load


def _options(tmp_path, name):
    # 8 pairs, batch 2: 4 iterations per epoch, states every 3 iterations, so most states fall mid-epoch
    return tiny_options(
        tmp_path,
        name,
        total_iter=30,
        image_size=48,
        **{
            'datasets.train.gt_size': 40,
            'network_g.num_feat': 24,
            'network_g.num_conv': 6,
            'logger.save_checkpoint_freq': 3,
            'logger.use_tb_logger': False,
            'val.val_freq': 1000,
            'train.scheduler.milestones': [10, 20],
        })


@pytest.mark.slow
def test_sigkill_then_auto_resume_matches_uninterrupted_run(tmp_path, subprocess_env, python_exe, repo_root):
    straight = run([python_exe, 'despike_basicsr/train.py', '-opt',
                    _options(tmp_path, 'straight')], subprocess_env, repo_root)
    assert straight.returncode == 0, straight.stderr[-3000:]

    opt = _options(tmp_path, 'killed')
    states = tmp_path / 'experiments' / 'killed' / 'training_states'
    proc = subprocess.Popen([python_exe, 'despike_basicsr/train.py', '-opt', opt],
                            env=subprocess_env,
                            cwd=repo_root,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not list(states.glob('*.state')):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    models = tmp_path / 'experiments' / 'killed' / 'models'
    assert not (models / 'net_g_latest.pth').exists(), 'the run finished before it could be killed'
    latest = compat.find_latest_state(str(states))
    assert latest is not None
    killed_at = int(os.path.basename(latest).split('.')[0])

    resumed = run([python_exe, 'despike_basicsr/train.py', '-opt', opt, '--auto_resume'], subprocess_env, repo_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'iter: {killed_at}.' in train_log(tmp_path, 'killed')

    # same optimizer state, learning rate, data order and crops: the final weights agree to the bit
    reference = torch.load(tmp_path / 'experiments' / 'straight' / 'models' / 'net_g_30.pth', weights_only=True)
    continued = torch.load(models / 'net_g_30.pth', weights_only=True)
    for key, value in reference['params'].items():
        assert torch.equal(value, continued['params'][key]), key
    final_state = torch.load(states / '30.state', weights_only=False)
    reference_state = torch.load(
        tmp_path / 'experiments' / 'straight' / 'training_states' / '30.state', weights_only=False)
    assert final_state['schedulers'][0]['_last_lr'] == reference_state['schedulers'][0]['_last_lr']
    exp_avg = final_state['optimizers'][0]['state'][0]['exp_avg']
    assert torch.equal(exp_avg, reference_state['optimizers'][0]['state'][0]['exp_avg'])


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'net_g_latest.pth'
    atomic_torch_save({'params': {'w': torch.ones(3)}}, str(path))
    before = path.read_bytes()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04partial')
        raise KeyboardInterrupt('simulated kill mid-write')

    monkeypatch.setattr(torch, 'save', dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({'params': {'w': torch.zeros(3)}}, str(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['net_g_latest.pth'], 'no temporary file is left behind'


def test_latest_state_ignores_temporary_files(tmp_path):
    for name in ('3.state', '12.state', '15.state.tmp-123', 'notes.txt'):
        (tmp_path / name).write_bytes(b'x')
    assert compat.find_latest_state(str(tmp_path)) == str(tmp_path / '12.state')
    assert compat.find_latest_state(str(tmp_path / 'missing')) is None


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    import random

    import numpy as np
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = compat.capture_rng_state()
    atomic_torch_save({'rng': state}, str(tmp_path / 's.state'))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    compat.restore_rng_state(safe_torch_load(str(tmp_path / 's.state'))['rng'])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resumed_sampler_learns_where_the_saved_run_stopped_from_the_state_file(tmp_path):
    """The dataloader patch reads the ``path.resume_state`` file (no state shared between patches): in the saved
    epoch the sampler skips the batches already consumed, restores the generators, and later epochs are whole."""
    compat.apply()
    sampler_class = compat._resumable_sampler_class()
    dataset = list(range(10))
    reference = sampler_class(dataset, num_replicas=1, rank=0)
    reference.set_epoch(1)
    whole_epoch = list(reference)
    torch.manual_seed(5)
    atomic_torch_save({'epoch': 1, 'iter': 7, 'rng': compat.capture_rng_state()}, str(tmp_path / '7.state'))
    expected_draw = torch.rand(1).item()
    opt = {'path': {'resume_state': str(tmp_path / '7.state')}, 'datasets': {'train': {'batch_size_per_gpu': 2}},
           'num_gpu': 0, 'dist': False}

    resumed = sampler_class(dataset, num_replicas=1, rank=0)
    compat._resume_sampler(opt, resumed)
    resumed.set_epoch(1)
    torch.manual_seed(9)
    # 5 batches of 2 per epoch; iteration 7 of epoch 1 means 2 batches (4 samples) of that epoch were consumed
    assert list(resumed) == whole_epoch[4:]
    assert torch.rand(1).item() == expected_draw
    resumed.set_epoch(2)
    assert len(list(resumed)) == 10

    fresh = sampler_class(dataset, num_replicas=1, rank=0)
    compat._resume_sampler({'path': {}}, fresh)  # not a resumed run
    fresh.set_epoch(1)
    assert list(fresh) == whole_epoch
