"""BasicSR's train/test pipelines through our entries on CPU: train, validate, save, resume, torchrun, errors."""
import os

import pytest
import torch
from conftest import free_port
from pipeline_helpers import logged_iters, run, tiny_options, train_log


@pytest.mark.slow
def test_train_validate_save_and_auto_resume(tmp_path, subprocess_env, python_exe, repo_root):
    opt = tiny_options(tmp_path, 'tiny_resume', total_iter=4)
    first = run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert first.returncode == 0, first.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'tiny_resume'
    assert (exp / 'models' / 'net_g_4.pth').is_file() and (exp / 'models' / 'net_g_latest.pth').is_file()
    assert (exp / 'training_states' / '4.state').is_file()
    assert 'Validation pairs_val' in train_log(tmp_path, 'tiny_resume')
    assert list((tmp_path / 'tb_logger' / 'tiny_resume').glob('events.out.tfevents.*')), 'no tensorboard events'

    # continue to iteration 8 from the saved state, via `python -m`
    second = run(
        [python_exe, '-m', 'despike_basicsr.train', '-opt', opt, '--auto_resume', '--force_yml', 'train:total_iter=8'],
        subprocess_env, repo_root)
    assert second.returncode == 0, second.stderr[-3000:]
    log = train_log(tmp_path, 'tiny_resume')
    assert 'Resuming training from epoch' in log and 'iter: 4.' in log
    resumed = logged_iters(log.split('Resuming training from epoch')[1])
    assert min(resumed) == 5 and max(resumed) == 8

    # an uninterrupted run of 8 iterations has the same learning rate at every resumed iteration
    straight_opt = tiny_options(tmp_path, 'tiny_straight', total_iter=8)
    straight = run([python_exe, 'despike_basicsr/train.py', '-opt', straight_opt], subprocess_env, repo_root)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = logged_iters(train_log(tmp_path, 'tiny_straight'))
    assert {it: reference[it] for it in resumed} == resumed
    assert resumed[5] == pytest.approx(0.5e-3)  # the milestone at 3 survived the restart


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path, subprocess_env, python_exe, repo_root):
    opt = tiny_options(tmp_path, 'tiny_ddp', total_iter=2)
    cmd = [
        python_exe, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
        'despike_basicsr/train.py', '-opt', opt, '--launcher', 'pytorch'
    ]
    result = run(cmd, subprocess_env, repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    log = train_log(tmp_path, 'tiny_ddp')
    assert 'World size (gpu number): 2' in log
    assert (tmp_path / 'experiments' / 'tiny_ddp' / 'models' / 'net_g_latest.pth').is_file()


@pytest.mark.slow
def test_reaches_total_iter_when_batches_do_not_divide_the_data(tmp_path, subprocess_env, python_exe, repo_root):
    # 3 samples, batch 2: BasicSR planned 2 iterations per epoch but its loader gives 1, and stopped at iteration 4
    opt = tiny_options(
        tmp_path, 'tiny_uneven', total_iter=5, num_pairs=3, **{
            'val.val_freq': 100,
            'logger.save_checkpoint_freq': 100
        })
    result = run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert max(logged_iters(train_log(tmp_path, 'tiny_uneven'))) == 5


def test_unregistered_type_lists_registered_names(tmp_path, subprocess_env, python_exe, repo_root):
    opt = tiny_options(tmp_path, 'tiny_bad_arch', total_iter=1, **{'network_g.type': 'SRVGGNetCompactt'})
    result = run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert result.returncode == 2
    assert "'SRVGGNetCompactt' is not registered" in result.stderr
    assert 'did you mean' in result.stderr and 'DeSpikeNet' in result.stderr
    assert not (tmp_path / 'experiments' / 'tiny_bad_arch').exists(), 'a failed check must not create folders'


def test_corrupt_resume_state_names_the_file(tmp_path, subprocess_env, python_exe, repo_root):
    state = tmp_path / 'broken.state'
    state.write_bytes(b'PK\x03\x04 not really a zip')
    opt = tiny_options(tmp_path, 'tiny_bad_state', total_iter=1, **{'path.resume_state': str(state)})
    result = run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert result.returncode == 2
    assert str(state) in result.stderr and 'truncated, corrupt' in result.stderr
    assert state.read_bytes() == b'PK\x03\x04 not really a zip', 'the user file must stay untouched'

    missing = tmp_path / 'nowhere.state'
    opt = tiny_options(tmp_path, 'tiny_missing_state', total_iter=1, **{'path.resume_state': str(missing)})
    result = run([python_exe, 'despike_basicsr/train.py', '-opt', opt], subprocess_env, repo_root)
    assert result.returncode == 2 and f'training state not found: {missing}' in result.stderr


def test_compat_makes_basicsr_importable_and_cpu_safe():
    import despike_basicsr
    despike_basicsr.register()
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


def test_pipelines_release_the_process_group_only_when_they_return(tmp_path):
    import despike_basicsr
    despike_basicsr.register()
    import basicsr.test
    import basicsr.train
    import torch.distributed as dist

    from despike_basicsr import compat
    assert basicsr.train.train_pipeline.__wrapped__ is not None and basicsr.test.test_pipeline.__wrapped__ is not None
    calls = []

    def pipeline(root_path: str) -> None:  # a one-rank gloo run, as basicsr's init_dist would start it
        calls.append(root_path)
        dist.init_process_group('gloo', init_method=f'file://{tmp_path / f"store{len(calls)}"}', rank=0, world_size=1)
        if root_path == 'fails':
            raise RuntimeError('stopped mid-run')

    releasing = compat._make_releasing_pipeline(pipeline)
    releasing('root')
    assert calls == ['root'] and not dist.is_initialized()
    try:
        with pytest.raises(RuntimeError, match='stopped mid-run'):
            releasing('fails')
        assert dist.is_initialized(), 'after an exception another rank may still be in a collective with this one'
    finally:
        compat.release_process_group()
    assert not dist.is_initialized()
    compat.release_process_group()  # nothing to release: no error


def test_dist_params_timeout_reaches_the_process_group(tmp_path, monkeypatch):
    import datetime

    import torch.distributed as dist

    from despike_basicsr import compat
    from despike_basicsr.training import entry
    monkeypatch.delenv(compat.DIST_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(compat.DIST_BACKEND_ENV, raising=False)
    monkeypatch.setattr('sys.argv', ['train.py'])
    opt = tiny_options(tmp_path, 'timeout', 1, **{'dist_params': {'backend': 'gloo', 'timeout': 45}})
    entry.prepare(['-opt', opt, '--launcher', 'pytorch'])
    assert os.environ[compat.DIST_TIMEOUT_ENV] == '45' and os.environ[compat.DIST_BACKEND_ENV] == 'gloo'
    started = {}
    monkeypatch.setattr(dist, 'init_process_group', lambda **kwargs: started.update(kwargs))
    compat._init_dist_pytorch('nccl')
    assert started == {'backend': 'gloo', 'timeout': datetime.timedelta(minutes=45)}
