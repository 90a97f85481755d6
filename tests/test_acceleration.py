"""GPU switches of the shared spike model base (train.amp / compile / channels_last) and the non-finite step guard.

Everything runs on the CPU with tiny networks: each switch must run and match the plain float32 run within a
tolerance that fits its precision, and must really be in effect (autocast dtype, memory format, compiled module).
"""
import copy
import hashlib
import logging
import math
import os
import subprocess
import sys
import textwrap
from os import path as osp

import numpy as np
import pytest
import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
from torch import nn
from torch.utils.data import DataLoader, Dataset

from despike_basicsr.data.spike_lmdb import SpikeLMDBWriter
from despike_basicsr.models.spike_base import (NonFiniteTrainingError, check_compile_works, parse_amp, parse_compile,
                                               raised_by_torch_compile)
from despike_basicsr.options_file import OptionsError
from despike_basicsr.training.options import check_options

SIZE = 16
FRAMES = 24


class TinyAccelNet(nn.Module):
    """Two convolutions and a residual: small enough to compile on a CPU in seconds."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


if 'TinyAccelNet' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register(TinyAccelNet)


class TinySet(Dataset):
    """Items as the spike datasets give them: uint8 spikes centred on the target frame, float ground truth."""

    def __init__(self, count: int = 2, seed: int = 0) -> None:
        self.opt = {'name': 'tiny'}
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for index in range(count):
            sharp = torch.rand(1, SIZE, SIZE, generator=generator) * 0.6 + 0.2
            spikes = (torch.rand(FRAMES, SIZE, SIZE, generator=generator) < sharp * 0.5).to(torch.uint8)
            self.items.append({
                'lq': spikes,
                'gt': sharp,
                'lq_path': f't{index}',
                'gt_path': f't{index}',
                'lq_len': FRAMES
            })

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def _options(network=None, **train):
    options = {
        'name': 'accel',
        'model_type': 'CascadeModel',
        'scale': 1,
        'num_gpu': 0,
        'is_train': True,
        'dist': False,
        'rank': 0,
        'world_size': 1,
        'manual_seed': 0,
        'front_end': {
            'type': 'tfp',
            'window': FRAMES,
            'eta': 1.0,
            'threshold': 2.0
        },
        'network_g': network or {
            'type': 'NRKNet',
            'in_channels': 1,
            'widths': [8, 8, 8],
            'num_blocks': [1, 1, 1]
        },
        'path': {
            'pretrain_network_g': None,
            'strict_load_g': True,
            'resume_state': None
        },
        'train': {
            'ema_decay': 0,
            'optim_g': {
                'type': 'Adam',
                'lr': 1e-3,
                'betas': [0.9, 0.99]
            },
            'scheduler': {
                'type': 'MultiStepLR',
                'milestones': [100],
                'gamma': 0.5
            },
            'total_iter': 10,
            'warmup_iter': -1,
            'grad_clip_norm': 0.5,
            'pixel_opt': {
                'type': 'MultiScaleMSELoss',
                'loss_weight': 1.0,
                'scale_weights': [0.25, 0.5, 1.0]
            },
        },
    }
    if network is not None and network['type'] == 'TinyAccelNet':
        options['train']['pixel_opt'] = {'type': 'MSELoss', 'loss_weight': 1.0}
    options['train'].update(train)
    return options


def _model(network=None, **train):
    torch.manual_seed(0)
    return MODEL_REGISTRY.get('CascadeModel')(_options(network, **train))


def _batch(seed: int = 0) -> dict:
    return next(iter(DataLoader(TinySet(seed=seed), batch_size=2)))


def _train(model, steps: int = 3, batch=None):
    batch = batch or _batch()
    for it in range(1, steps + 1):
        model.update_learning_rate(it)
        model.feed_data(batch)
        model.optimize_parameters(it)
    model.test()
    return dict(model.log_dict), model.output.detach().float().clone()


def _params(model):
    return {name: p.detach().clone() for name, p in model.get_bare_model(model.net_g).named_parameters()}


def _conv_output_dtypes(model):
    """Record the dtype of every Conv2d output during the next calls (proves autocast is in effect)."""
    dtypes = []
    for module in model.get_bare_model(model.net_g).modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda mod, inputs, output: dtypes.append(output.dtype))
    return dtypes


# ----------------------------------------------------------------------------------------------------------------------
# The switches


def test_switches_are_off_by_default():
    model = _model()
    assert model.amp_dtype is None and model.compile_mode is None and not model.channels_last
    assert model.grad_scaler is None and model.max_nonfinite_steps == 5
    dtypes = _conv_output_dtypes(model)
    _train(model, steps=1)
    assert set(dtypes) == {torch.float32}


@pytest.mark.parametrize('amp, dtype, tolerance', [('bf16', torch.bfloat16, 3e-2), ('fp16', torch.float16, 5e-3)])
def test_amp_runs_in_its_precision_and_matches_float32(amp, dtype, tolerance):
    reference_log, reference_output = _train(_model())
    model = _model(amp=amp)
    assert model.amp_dtype == dtype and (model.grad_scaler is not None) == (amp == 'fp16')
    dtypes = _conv_output_dtypes(model)
    log, output = _train(model)
    assert dtype in dtypes  # the training forward ran under autocast...
    assert model.output.dtype == torch.float32  # ...and test() does not
    assert log['l_pix'] == pytest.approx(reference_log['l_pix'], rel=tolerance)
    assert float((output - reference_output).abs().max()) < tolerance
    if amp == 'fp16':
        assert model.grad_scaler.get_scale() == 65536.0  # no overflow, no skipped step
        assert model.nonfinite_streak == 0


def test_channels_last_converts_the_network_and_matches():
    reference_log, reference_output = _train(_model(ema_decay=0.5))
    model = _model(channels_last=True, ema_decay=0.5)
    convs = [m for m in model.get_bare_model(model.net_g).modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    ema_convs = [m for m in model.net_g_ema.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in ema_convs)
    log, output = _train(model)  # test() runs the EMA copy
    assert convs[0].weight.is_contiguous(memory_format=torch.channels_last)  # the optimiser kept the format
    assert log['l_pix'] == pytest.approx(reference_log['l_pix'], rel=1e-4)
    torch.testing.assert_close(output, reference_output, atol=1e-5, rtol=1e-4)


def test_autocast_without_the_subclass_using_it_is_an_error():

    class Forgetful(MODEL_REGISTRY.get('CascadeModel')):

        def optimize_parameters(self, current_iter):
            self.optimizer_g.zero_grad()
            self.apply_losses({'l_pix': self.cri_pix(self.net_g(self.lq), self.gt)})

    torch.manual_seed(0)
    model = Forgetful(_options(amp='bf16'))
    model.feed_data(_batch())
    with pytest.raises(ValueError, match=r'train.amp is on but Forgetful.optimize_parameters does not run its forward'):
        model.optimize_parameters(1)


def test_switch_values_are_checked():
    assert parse_amp(False) is None and parse_amp('off') is None and parse_amp('BF16') == torch.bfloat16
    assert parse_compile(True) == 'default' and parse_compile(False) is None
    with pytest.raises(ValueError, match=r"train.amp must be 'bf16', 'fp16' or false, got True"):
        _model(amp=True)
    with pytest.raises(ValueError, match=r'train.compile must be true, false or one of'):
        parse_compile('fastest')
    with pytest.raises(ValueError, match=r'train.max_nonfinite_steps must be an integer >= 1, got 0'):
        _model(max_nonfinite_steps=0)
    options = _options(amp='fp32')
    for key in ('is_train', 'dist', 'rank', 'world_size'):
        options.pop(key)
    with pytest.raises(OptionsError, match=r"<options>: train.amp must be 'bf16', 'fp16' or false, got 'fp32'"):
        check_options(options)
    options['train'].update(amp='bf16', channels_last='yes')
    with pytest.raises(OptionsError, match=r"train.channels_last must be true or false, found 'yes'"):
        check_options(options)
    options['train'].update(channels_last=True, compile=True, max_nonfinite_steps=3)
    check_options(options)


def test_compile_failures_are_explained(monkeypatch):

    def broken_compile(*args, **kwargs):
        raise RuntimeError('no C++ compiler found')

    monkeypatch.setattr(torch, 'compile', broken_compile)
    with pytest.raises(
            RuntimeError,
            match=r'train.compile is on but torch.compile does not work on this machine '
            r'\(cpu\): RuntimeError: no C\+\+ compiler found. Set train.compile: false'):
        check_compile_works(torch.device('cpu'))
    # an error raised from inside torch.compile's machinery is told apart from an ordinary one
    namespace = {}
    exec(
        compile('def fail():\n    raise AssertionError("expected size 2==2, stride 1==120")\n',
                '/venv/site-packages/torch/_inductor/runtime/runtime_utils.py', 'exec'), namespace)
    for function, expected in ((namespace['fail'], True), (lambda: 1 / 0, False)):
        try:
            function()
        except Exception as err:  # noqa: PIE786
            assert raised_by_torch_compile(err) is expected


@pytest.mark.slow
def test_compile_runs_and_matches_eager():
    network = {'type': 'TinyAccelNet', 'width': 4}
    reference_log, reference_output = _train(_model(network), steps=2)
    model = _model(network, compile=True)
    bare = model.get_bare_model(model.net_g)
    assert bare._compiled_call_impl is not None  # nn.Module.compile, in place
    assert sorted(bare.state_dict()) == ['conv1.bias', 'conv1.weight', 'conv2.bias', 'conv2.weight']
    log, output = _train(model, steps=2)
    assert log['l_pix'] == pytest.approx(reference_log['l_pix'], rel=1e-4)
    torch.testing.assert_close(output, reference_output, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# The non-finite guard


def _nan_batch():
    batch = _batch()
    return dict(batch, gt=torch.full_like(batch['gt'], math.nan))


def test_a_nan_loss_skips_the_step_and_names_the_iteration(caplog):
    model = _model(max_nonfinite_steps=3)
    _train(model, steps=1)
    before = _params(model)
    adam_steps = [float(s['step']) for s in model.optimizer_g.state.values()]
    with caplog.at_level(logging.WARNING):
        model.update_learning_rate(7)
        model.feed_data(_nan_batch())
        model.optimize_parameters(7)
    after = _params(model)
    assert all(torch.equal(before[name], after[name]) for name in before)  # weights unchanged...
    assert [float(s['step']) for s in model.optimizer_g.state.values()] == adam_steps  # ...and Adam did not step
    assert all(p.grad is None for p in model.net_g.parameters())
    assert model.nonfinite_streak == 1
    assert 'iter 7: non-finite loss or gradient (l_pix=nan' in caplog.text
    assert 'optimiser step skipped (1 in a row, limit 3)' in caplog.text
    # a good step resets the count
    model.update_learning_rate(8)
    model.feed_data(_batch())
    model.optimize_parameters(8)
    assert model.nonfinite_streak == 0
    assert any(not torch.equal(before[name], p) for name, p in _params(model).items())


def test_a_nonfinite_gradient_with_a_finite_loss_is_skipped_too(caplog):
    model = _model(grad_clip_norm=None)
    first = next(model.net_g.parameters())
    first.register_hook(lambda grad: torch.full_like(grad, math.inf))
    before = _params(model)
    with caplog.at_level(logging.WARNING):
        model.feed_data(_batch())
        model.optimize_parameters(1)
    assert math.isfinite(model.log_dict['l_pix'])
    assert all(torch.equal(before[name], p) for name, p in _params(model).items())
    assert 'gradient norm inf' in caplog.text and model.nonfinite_streak == 1


def test_consecutive_skips_stop_training_with_the_iteration():
    model = _model(max_nonfinite_steps=2)
    batch = _nan_batch()
    model.update_learning_rate(4)
    model.feed_data(batch)
    model.optimize_parameters(4)
    model.update_learning_rate(5)
    model.feed_data(batch)
    with pytest.raises(
            NonFiniteTrainingError,
            match=r'training stopped at iter 5: 2 consecutive optimiser steps had '
            r'a non-finite loss or gradient \(train.max_nonfinite_steps = 2\)'):
        model.optimize_parameters(5)


def test_an_fp16_overflow_is_the_scalers_business(caplog):
    model = _model(amp='fp16', max_nonfinite_steps=1)
    # the scaled gradients overflow in the fp16 parts of the backward pass; the loss itself is fine
    model.grad_scaler = torch.amp.GradScaler('cpu', init_scale=2.0**120)
    before = _params(model)
    with caplog.at_level(logging.INFO):
        model.update_learning_rate(1)
        model.feed_data(_batch())
        model.optimize_parameters(1)  # max_nonfinite_steps = 1: a counted skip would raise here
    assert all(torch.equal(before[name], p) for name, p in _params(model).items())
    assert model.nonfinite_streak == 0 and model.grad_scaler.get_scale() == 2.0**119
    assert 'iter 1: fp16 gradient overflow, step skipped' in caplog.text
    model.grad_scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    _train(model, steps=1)
    assert any(not torch.equal(before[name], p) for name, p in _params(model).items())


def test_despike_model_skips_a_nan_step(tmp_path):
    from test_despike_model import make_model, train_batch
    model = make_model(tmp_path, lpips_opt=None, fft_opt=None)
    before = copy.deepcopy(model.net_g.state_dict())
    batch = train_batch()
    model.feed_data(dict(batch, gt=torch.full_like(batch['gt'], math.nan)))
    model.optimize_parameters(1)
    after = model.net_g.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.nonfinite_streak == 1


# ----------------------------------------------------------------------------------------------------------------------
# A real training run

NAN_RUNNER = '''
import hashlib, os, sys
import despike_basicsr
despike_basicsr.register()
from basicsr.utils.registry import LOSS_REGISTRY

FIRST_NAN_CALL, MODELS, SNAPSHOT = int(sys.argv[1]), sys.argv[2], sys.argv[3]
loss_class = LOSS_REGISTRY.get('MultiScaleMSELoss')
original = loss_class.forward
calls = []


def forward(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == FIRST_NAN_CALL:  # the checkpoints on disk now are the last good ones: record their bytes
        with open(SNAPSHOT, 'w') as f:
            for name in sorted(os.listdir(MODELS)):
                f.write(name + ' ' + hashlib.sha256(open(os.path.join(MODELS, name), 'rb').read()).hexdigest() + '\\n')
    loss = original(self, *args, **kwargs)
    return loss * float('nan') if len(calls) >= FIRST_NAN_CALL else loss


loss_class.forward = forward
from despike_basicsr.train import main  # noqa: E402
main(sys.argv[4:])
'''


def _write_lmdb(path: str, count: int = 3) -> None:
    rng = np.random.default_rng(0)
    with SpikeLMDBWriter(path) as writer:
        for index in range(count):
            gt = (rng.random((SIZE, SIZE)) * 200 + 20).astype(np.uint8)
            spikes = (rng.random((32, SIZE, SIZE)) < gt / 512.0).astype(np.uint8)
            writer.add(f's{index}', gt, {'threshold': 2.0, 'eta': 1.0, 'seed': index}, spikes=spikes)


def _digests(folder) -> str:
    return ''.join(f'{name} {hashlib.sha256(open(osp.join(folder, name), "rb").read()).hexdigest()}\n'
                   for name in sorted(os.listdir(folder)))


@pytest.mark.slow
def test_training_stops_after_nan_steps_and_keeps_the_last_checkpoint(tmp_path, subprocess_env):
    """NaN losses from iteration 3 on: iteration 3 is skipped with a warning, iteration 4 stops the run (exit code 3,
    the message names it) before its checkpoint; the checkpoint of iteration 2 is byte for byte what it was before the
    first NaN."""
    lmdb_path = str(tmp_path / 'tiny.lmdb')
    _write_lmdb(lmdb_path)
    dataset = {'type': 'SpikeLMDBDataset', 'dataroot': lmdb_path, 'io_backend': {'type': 'lmdb'}}
    opt = _options(max_nonfinite_steps=2)
    for key in ('is_train', 'dist', 'rank', 'world_size'):
        opt.pop(key)
    opt.update(
        name='nan_run',
        datasets={
            'train':
            dict(
                dataset,
                name='tiny-train',
                phase='train',
                gt_size=SIZE,
                temporal_len=[FRAMES, 32],
                num_worker_per_gpu=0,
                batch_size_per_gpu=2,
                dataset_enlarge_ratio=4,
                prefetch_mode=None)
        })
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False, 'wandb': None}
    options = tmp_path / 'nan.yml'
    options.write_text(yaml.safe_dump(opt, sort_keys=False))
    runner = tmp_path / 'nan_runner.py'
    runner.write_text(textwrap.dedent(NAN_RUNNER))
    models = tmp_path / 'experiments' / 'nan_run' / 'models'
    snapshot = tmp_path / 'snapshot.txt'
    run = subprocess.run(
        [sys.executable, str(runner), '3',
         str(models), str(snapshot), '-opt',
         str(options)],
        env=subprocess_env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300)
    assert run.returncode == 3, run.stdout[-3000:] + run.stderr[-3000:]
    assert 'despike-train: error: training stopped at iter 4: 2 consecutive optimiser steps' in run.stderr
    log = '\n'.join(p.read_text() for p in (tmp_path / 'experiments' / 'nan_run').glob('train_*.log'))
    for iteration, count in ((3, 1), (4, 2)):
        assert f'iter {iteration}: non-finite loss or gradient (l_pix=nan' in log
        assert f'optimiser step skipped ({count} in a row, limit 2)' in log
    assert 'training stopped at iter 4' in log and 'iter:       4' not in log  # stopped before iter 4's log line
    assert sorted(os.listdir(models)) == ['net_g_2.pth']  # nothing saved at iter 4...
    assert _digests(models) == snapshot.read_text()  # ...and iter 2's file is byte for byte as before the first NaN
    assert sorted(os.listdir(tmp_path / 'experiments' / 'nan_run' / 'training_states')) == ['2.state']


def test_setup_ema_builds_the_average_as_basicsr_does(tmp_path):
    """``SpikeSRModel.setup_ema``: off at ema_decay 0; else a copy of net_g in eval mode, or the checkpoint's
    params_ema when a pretrained network is given."""
    tiny = {'type': 'TinyAccelNet', 'width': 4}
    model = _model(tiny, ema_decay=0)
    model.setup_ema()
    assert model.ema_decay == 0 and not hasattr(model, 'net_g_ema')

    model = _model(tiny, ema_decay=0.9)
    del model.net_g_ema
    with torch.no_grad():
        for p in model.net_g.parameters():
            p.add_(1.0)
    model.setup_ema()
    assert model.ema_decay == 0.9 and not model.net_g_ema.training
    expected = model.get_bare_model(model.net_g).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.net_g_ema.state_dict().items())

    ema_state = {k: torch.full_like(v, 0.25) for k, v in expected.items()}
    torch.save({'params': expected, 'params_ema': ema_state}, tmp_path / 'pre.pth')
    model.opt['path']['pretrain_network_g'] = str(tmp_path / 'pre.pth')
    model.setup_ema()
    assert all(torch.equal(v, ema_state[k]) for k, v in model.net_g_ema.state_dict().items())
