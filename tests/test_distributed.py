"""Multi-process training through BasicSR's own machinery (torchrun, ``init_dist``, DDP, ``EnlargedSampler``).

- Gradient/update equivalence: W processes with batch b each give the same gradients and parameters as one process with
  batch W·b on the same samples (``tests/dist_workers/grad_worker.py``), for SRModel and, once registered, DeSpikeModel.
- Sampler coverage: BasicSR's ``EnlargedSampler`` splits each epoch's permutation between the ranks.
- Validation runs on rank 0 only while the other ranks wait, and the run ends.

Backend: gloo on CPU (the default, and the only one CI runs). On a machine with at least two CUDA devices,
``DESPIKE_TEST_BACKEND=nccl`` runs the equivalence test with NCCL on the GPUs (see docs/distributed.md).
"""
import collections
import os
import re
import subprocess
import sys
import time
from os import path as osp
from typing import Dict, List

import numpy as np
import pytest
import torch
from conftest import free_port
from pipeline_helpers import tiny_options

WORKERS = osp.join(osp.dirname(osp.abspath(__file__)), 'dist_workers')
WORLD_SIZE = 2
PER_RANK_BATCH = 2
TIMEOUT_S = 300


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------
def _test_backend() -> str:
    """``$DESPIKE_TEST_BACKEND`` (gloo | nccl), skipping when NCCL cannot run here."""
    backend = os.environ.get('DESPIKE_TEST_BACKEND', 'gloo').strip().lower()
    if backend not in ('gloo', 'nccl'):
        raise ValueError(f'DESPIKE_TEST_BACKEND must be gloo or nccl, got {backend!r}')
    if backend == 'nccl' and torch.cuda.device_count() < WORLD_SIZE:
        pytest.skip(f'NCCL needs {WORLD_SIZE} CUDA devices (one per process), found {torch.cuda.device_count()}')
    return backend


def _torchrun(nproc: int, script: str, args: List[str]) -> List[str]:
    return [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--master_addr=127.0.0.1',
            f'--master_port={free_port()}', script, *args]


def _run(cmd: List[str], env: Dict[str, str], cwd: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _assert_same(expected: Dict[str, torch.Tensor], found: Dict[str, torch.Tensor], what: str, atol_rel: float) -> None:
    """Every tensor of ``found`` equals ``expected`` within ``rtol=1e-6`` and ``atol = atol_rel · G``, where ``G`` is
    the largest magnitude in all of ``expected`` (the network's scale: a tensor whose true value is 0, such as the
    gradient of an attention key bias, holds only rounding noise, which ``rtol`` alone would not accept)."""
    assert sorted(found) == sorted(expected), f'{what}: parameter names differ'
    scale = max(float(t.abs().max()) for t in expected.values())
    for name, ref in expected.items():
        assert torch.allclose(found[name], ref, rtol=1e-6, atol=atol_rel * scale), (
            f'{what}: {name} differs by up to {float((found[name] - ref).abs().max()):.3e} '
            f'(its magnitude {float(ref.abs().max()):.3e}, network scale {scale:.3e})')


def _max_rel_diff(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    """The largest difference between ``a`` and ``b``, relative to the largest magnitude in ``a``."""
    scale = max(float(t.abs().max()) for t in a.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) / scale


def _despike_model_available() -> bool:
    import despike_basicsr
    despike_basicsr.register()
    from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
    return 'DeSpikeModel' in MODEL_REGISTRY and 'DeSpikeNet' in ARCH_REGISTRY


# ----------------------------------------------------------------------------------------------------------------------
# 1. gradient / update equivalence
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('kind', ['sr', 'despike'])
def test_ddp_step_equals_single_process_on_the_joined_batch(kind, tmp_path, subprocess_env, repo_root):
    if kind == 'despike' and not _despike_model_available():
        pytest.skip('DeSpikeModel / DeSpikeNet are not registered yet')
    backend = _test_backend()
    env = dict(subprocess_env, DESPIKE_DIST_BACKEND=backend)
    worker = osp.join(WORKERS, 'grad_worker.py')
    # SRVGGNetCompact runs in float64 (rounding differences about 1e-15 of the network's scale); DeSpikeNet casts its
    # input to float32 itself, where a different summation order costs up to about 5e-7 of the scale
    dtype, atol_rel = ('float64', 1e-12) if kind == 'sr' else ('float32', 1e-6)
    args = ['--kind', kind, '--out', str(tmp_path / 'out'), '--per-rank-batch', str(PER_RANK_BATCH), '--world-size',
            str(WORLD_SIZE), '--steps', '2', '--backend', backend, '--dtype', dtype]

    single = _run([sys.executable, worker, *args, '--control'], env, repo_root)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = _run(_torchrun(WORLD_SIZE, worker, args), env, repo_root)
    assert multi.returncode == 0, multi.stderr[-3000:]

    ref = torch.load(tmp_path / 'out' / 'single.pt')
    control = torch.load(tmp_path / 'out' / 'control.pt')
    ranks = [torch.load(tmp_path / 'out' / f'rank{r}.pt') for r in range(WORLD_SIZE)]
    assert not ref['dist'] and ref['ddp'] != 'DistributedDataParallel'
    for r, rec in enumerate(ranks):
        assert rec['dist'] and rec['rank'] == r and rec['world_size'] == WORLD_SIZE
        assert rec['backend'] == backend and rec['ddp'] == 'DistributedDataParallel'
        assert rec['device'].startswith('cuda' if backend == 'nccl' else 'cpu')
        _assert_same(ref['initial'], rec['initial'], f'rank {r} initial weights', atol_rel)

    for step, ref_step in enumerate(ref['steps']):
        # the update really moved the weights, and half the batch gives other gradients (the comparison can fail)
        before = ref['initial'] if step == 0 else ref['steps'][step - 1]['params']
        assert _max_rel_diff(before, ref_step['params']) > 1e-4, f'step {step} did not change the weights'
        assert _max_rel_diff(ref_step['grads'], control['steps'][step]['grads']) > 1e-3, 'control batch too similar'
        for r, rec in enumerate(ranks):
            _assert_same(ref_step['grads'], rec['steps'][step]['grads'], f'step {step} rank {r} gradients', atol_rel)
            _assert_same(ref_step['params'], rec['steps'][step]['params'], f'step {step} rank {r} parameters', atol_rel)
    # rank 0's logged loss is the all-rank average (BaseModel.reduce_loss_dict) = the full-batch mean
    for step, losses in enumerate(ranks[0]['losses']):
        assert losses and sorted(losses) == sorted(ref['losses'][step])
        for name, value in losses.items():
            assert value == pytest.approx(ref['losses'][step][name], rel=1e-6), f'step {step} {name}'


# ----------------------------------------------------------------------------------------------------------------------
# 2. sampler coverage (BasicSR's EnlargedSampler, world size 2)
# ----------------------------------------------------------------------------------------------------------------------
class _Indices(torch.utils.data.Dataset):

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def _epoch(length: int, epoch: int, world_size: int = WORLD_SIZE, ratio: int = 1) -> List[List[int]]:
    """Every rank's sample indices for one epoch."""
    from basicsr.data.data_sampler import EnlargedSampler
    out = []
    for rank in range(world_size):
        sampler = EnlargedSampler(_Indices(length), world_size, rank, ratio)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
        assert len(out[-1]) == len(sampler)
    return out


@pytest.mark.parametrize('length', [2, 10, 64])
def test_sampler_covers_a_divisible_dataset_once_per_epoch(length):
    for epoch in range(3):
        ranks = _epoch(length, epoch)
        assert [len(r) for r in ranks] == [length // WORLD_SIZE] * WORLD_SIZE
        assert not set(ranks[0]) & set(ranks[1]), f'epoch {epoch}: a sample went to both ranks'
        assert sorted(ranks[0] + ranks[1]) == list(range(length)), f'epoch {epoch}: not every sample exactly once'


def test_sampler_orders_differ_between_epochs_and_agree_between_processes():
    orders = [_epoch(64, epoch) for epoch in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert orders[a][0] != orders[b][0] and orders[a][1] != orders[b][1], f'epochs {a} and {b} repeat'
    # seeded by the epoch only: a second process (or a restart) computes the same split
    assert _epoch(64, 2) == orders[2]


@pytest.mark.parametrize('length', [1, 3, 7, 11, 65])
def test_sampler_pads_a_non_divisible_dataset_by_repeating_the_lowest_indices(length):
    total = -(-length // WORLD_SIZE) * WORLD_SIZE  # ceil to a multiple of the world size
    for epoch in range(3):
        ranks = _epoch(length, epoch)
        assert [len(r) for r in ranks] == [total // WORLD_SIZE] * WORLD_SIZE  # equal share: no rank waits
        counts = collections.Counter(ranks[0] + ranks[1])
        assert set(counts) == set(range(length)), 'every sample is still drawn'
        assert {i for i, c in counts.items() if c == 2} == set(range(total - length)), 'padding = lowest indices'
        assert max(counts.values()) <= 2


def test_sampler_with_enlarge_ratio_draws_each_sample_ceil_of_remaining_over_length_times():
    length, ratio = 5, 3
    total = -(-length * ratio // WORLD_SIZE) * WORLD_SIZE  # 16
    counts = collections.Counter(sum(_epoch(length, 0, ratio=ratio), []))
    assert [counts[i] for i in range(length)] == [-(-(total - i) // length) for i in range(length)] == [4, 3, 3, 3, 3]


def test_two_rank_batches_join_to_the_single_process_double_batch():
    """With the dataset length divisible by the world size, iteration k of a 2-process run (batch b each) trains on
    the same samples as iteration k of a 1-process run with batch 2b: BasicSR's sampler and dataloader (drop_last)
    split one permutation by position parity."""
    from basicsr.data import build_dataloader
    from basicsr.data.data_sampler import EnlargedSampler
    length, b = 12, 2

    def batches(world_size: int, rank: int, batch: int, epoch: int) -> List[List[int]]:
        sampler = EnlargedSampler(_Indices(length), world_size, rank, 1)
        sampler.set_epoch(epoch)
        loader = build_dataloader(_Indices(length), {'phase': 'train', 'batch_size_per_gpu': batch,
                                                     'num_worker_per_gpu': 0}, num_gpu=0, dist=world_size > 1,
                                  sampler=sampler)
        return [sorted(x.tolist()) for x in loader]

    for epoch in range(2):
        single = batches(1, 0, WORLD_SIZE * b, epoch)
        rank_batches = [batches(WORLD_SIZE, r, b, epoch) for r in range(WORLD_SIZE)]
        assert len(single) == len(rank_batches[0]) == length // (WORLD_SIZE * b)
        joined = [sorted(x + y) for x, y in zip(*rank_batches)]
        assert joined == single


# ----------------------------------------------------------------------------------------------------------------------
# 3. validation on rank 0 does not hang the other ranks
# ----------------------------------------------------------------------------------------------------------------------
def _validation_options(tmp_path, name: str, total_iter: int) -> str:
    """A tiny SRModel run that validates at every iteration (rank 0 only, as BasicSR does)."""
    return tiny_options(
        tmp_path, name, total_iter, **{
            'manual_seed': 3,
            'datasets.train.use_rot': False,
            'train.scheduler.milestones': [100],
            'val.val_freq': 1,
            'logger.save_checkpoint_freq': 100,
            'logger.use_tb_logger': False,
        })


@pytest.mark.slow
def test_validation_on_rank0_every_iteration_does_not_hang_the_other_rank(tmp_path, subprocess_env, repo_root):
    name, total_iter = 'val_every_iter', 3
    opt = _validation_options(tmp_path, name, total_iter)
    cmd = _torchrun(WORLD_SIZE, 'despike_basicsr/train.py', ['-opt', opt, '--launcher', 'pytorch'])
    start = time.monotonic()
    result = _run(cmd, subprocess_env, repo_root, timeout=TIMEOUT_S)  # a hang raises subprocess.TimeoutExpired
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted((tmp_path / 'experiments' / name).glob('train_*.log'))
    assert len(logs) == 1, 'only rank 0 writes the training log'
    log = logs[0].read_text()
    assert 'World size (gpu number): 2' in log
    iters = [int(m) for m in re.findall(r'iter:\s*(\d+), lr:', log)]
    assert iters == [1, 2, 3], f'trained iterations {iters}'
    # val_freq 1 over 3 iterations, plus BasicSR's validation after the last save: 4 passes, on rank 0 only
    assert log.count('Validation pairs_val') == total_iter + 1, log[-2000:]
    assert len(re.findall(r'# psnr: [\d.]+', log)) == total_iter + 1
    assert elapsed < TIMEOUT_S


@pytest.mark.slow
def test_despike_validation_on_rank0_between_steps_does_not_break_the_other_rank(tmp_path, subprocess_env, repo_root):
    if not _despike_model_available():
        pytest.skip('DeSpikeModel / DeSpikeNet are not registered yet')
    worker = osp.join(WORKERS, 'val_worker.py')
    cmd = _torchrun(WORLD_SIZE, worker, ['--kind', 'despike', '--out', str(tmp_path / 'out'), '--iters', '2',
                                         '--pg-timeout', '20'])
    try:
        result = _run(cmd, subprocess_env, repo_root, timeout=120)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f'the run hung: {error}') from error
    assert result.returncode == 0, result.stderr[-3000:]
    records = [torch.load(tmp_path / 'out' / f'rank{r}.pt') for r in range(WORLD_SIZE)]
    assert all(rec['sentinel'] == [3.0, 3.0, 3.0] for rec in records), 'the collectives no longer pair up'
    assert records[0]['validations'] == 3 and records[1]['validations'] == 0
    assert all(np.isfinite(records[0]['psnr']))


@pytest.mark.slow
def test_one_rank_nonfinite_or_stopped_makes_every_rank_skip_or_stop_together(tmp_path, subprocess_env, repo_root):
    """Rank 1 alone has a NaN target at step 1 and alone receives SIGINT before step 3: both ranks skip step 1, step
    at 2, and stop after step 3 with the same weights; rank 0 saves that iteration (``_agree_across_ranks``)."""
    if not _despike_model_available():
        pytest.skip('DeSpikeModel / DeSpikeNet are not registered yet')
    out = tmp_path / 'out'
    cmd = _torchrun(WORLD_SIZE, osp.join(WORKERS, 'stop_worker.py'), ['--out', str(out), '--pg-timeout', '20'])
    try:
        result = _run(cmd, subprocess_env, repo_root, timeout=120)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f'the run hung: {error}') from error
    assert result.returncode == 0, result.stderr[-3000:]
    records = [torch.load(out / f'rank{r}.pt') for r in range(WORLD_SIZE)]
    for rec in records:
        assert rec['stopped_at'] == 3 and rec['completed_iter'] == 3, f"rank {rec['rank']} did not stop with rank 1"
        skipped, stepped = rec['params'][0], rec['params'][1]
        assert all(torch.equal(skipped[k], rec['initial'][k]) for k in skipped), 'step 1 was not skipped everywhere'
        assert any(not torch.equal(stepped[k], skipped[k]) for k in stepped), 'step 2 did not step'
        assert all(torch.isfinite(p).all() for p in rec['params'][-1].values())
    _assert_same(records[0]['params'][-1], records[1]['params'][-1], 'weights after the stop', 0.0)
    assert (out / 'models' / 'net_g_3.pth').is_file() and (out / 'states' / '3.state').is_file()
