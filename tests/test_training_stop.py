"""A stop signal saves the last optimiser step's state, and the resumed run ends where an uninterrupted one does."""
import os
import re
import signal
import subprocess
import time
import weakref
from os import path as osp

import pytest
import torch
import yaml
from test_cascade_model import SMALL_NETS, _batch, _model, _options, _write_tiny_lmdb

from despike_basicsr import compat
from despike_basicsr.models import spike_base


@pytest.fixture()
def stop_handler(monkeypatch):
    """The stop handler installed for one test; Python's own SIGINT/SIGTERM handling afterwards."""
    previous = {signum: signal.getsignal(signum) for signum in spike_base.STOP_SIGNALS}
    monkeypatch.setattr(spike_base, '_live_models', weakref.WeakSet())  # models of other tests do not count
    monkeypatch.setattr(compat, '_training_epoch', None)  # nor the epoch of a training an earlier test ran here
    spike_base.install_stop_handler()
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    spike_base._stop_requests = 0  # no stop pending for the tests after this one


def test_first_signal_stops_after_the_step_and_saves_it(stop_handler, tmp_path):
    model = _model(SMALL_NETS['GKMNet'])
    saved = []
    model.save = lambda epoch, current_iter: saved.append((epoch, current_iter))
    model.feed_data(_batch())
    model.update_learning_rate(1)
    model.optimize_parameters(1)
    assert saved == [] and model.completed_iter == 1
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the handler only asks
    assert spike_base.stop_requested()
    weights = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.update_learning_rate(2)
    with pytest.raises(spike_base.TrainingStopped, match='saved at iteration 2'):
        model.optimize_parameters(2)
    assert saved == [(0, 2)]
    assert any(not torch.equal(weights[k], v) for k, v in model.net_g.state_dict().items()), 'step 2 ran first'
    assert spike_base.save_stopped_models() == [], 'the same iteration is not saved twice'
    with pytest.raises(KeyboardInterrupt):  # asked again: at once
        os.kill(os.getpid(), signal.SIGINT)


def test_signal_without_a_training_spike_model_interrupts_at_once(stop_handler):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)


def _train_options(tmp_path, name: str, total_iter: int) -> str:
    lmdb_path = str(tmp_path / 'tiny.lmdb')
    if not osp.isdir(lmdb_path):
        _write_tiny_lmdb(lmdb_path, 3)
    dataset = {'type': 'SpikeLMDBDataset', 'dataroot': lmdb_path, 'io_backend': {'type': 'lmdb'}}
    opt = _options(SMALL_NETS['NRKNet'])
    for key in ('is_train', 'dist', 'rank', 'world_size'):
        opt.pop(key)
    opt.update(name=name, num_gpu=0, datasets={
        'train': dict(dataset, name='tiny-train', phase='train', gt_size=16, temporal_len=[48, 64], use_flip=True,
                      use_rot=True, num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=2,
                      prefetch_mode=None)})
    opt.pop('val')
    opt['train']['total_iter'] = total_iter
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': 1000, 'use_tb_logger': False, 'wandb': None}
    path = tmp_path / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def _train(options: str, *extra: str) -> list:
    return [osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'despike_basicsr', 'train.py'), '-opt', options,
            *extra]


@pytest.mark.slow
def test_sigint_saves_the_last_step_and_auto_resume_matches_an_uninterrupted_run(tmp_path, subprocess_env,
                                                                                 python_exe):
    total = 40
    straight = subprocess.run([python_exe, *_train(_train_options(tmp_path, 'straight', total))],
                              env=subprocess_env, cwd=str(tmp_path), capture_output=True, text=True, timeout=400)
    assert straight.returncode == 0, straight.stderr[-3000:]

    options = _train_options(tmp_path, 'stopped', total)
    folder = tmp_path / 'experiments' / 'stopped'
    proc = subprocess.Popen([python_exe, *_train(options)], env=subprocess_env,
                            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # stop once a few iterations are logged
        logs = list(folder.glob('train_*.log'))
        if logs and re.search(r'iter:\s+5,', logs[0].read_text()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, stderr[-3000:]
    saved = re.search(r'saved at iteration (\d+)', stderr)
    assert saved, stderr[-3000:]
    stopped_at = int(saved.group(1))
    assert 5 <= stopped_at < total
    assert (folder / 'training_states' / f'{stopped_at}.state').is_file()
    assert (folder / 'models' / f'net_g_{stopped_at}.pth').is_file()
    assert not (folder / 'models' / 'net_g_latest.pth').exists()

    resumed = subprocess.run([python_exe, *_train(options, '--auto_resume')],
                             env=subprocess_env, cwd=str(tmp_path), capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = torch.load(tmp_path / 'experiments' / 'straight' / 'models' / 'net_g_latest.pth', weights_only=True)
    continued = torch.load(folder / 'models' / 'net_g_latest.pth', weights_only=True)
    for key, value in reference['params'].items():  # same steps, data order and crops: the same weights
        assert torch.equal(value, continued['params'][key]), key
