"""scripts/gpu_check.sh / gpu_check.py (despike_basicsr.evaluation.gpu_check): refuses clearly without CUDA; every
piece runs as a CPU dry run."""
import json
import os
import subprocess
from os import path as osp

import pytest
import torch

from despike_basicsr.evaluation import gpu_check

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_refuses_without_a_cuda_device(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(SystemExit) as stop:
        gpu_check.main(['--device', 'cuda'])
    assert stop.value.code == 2
    assert 'gpu_check: no CUDA device is visible to torch' in capsys.readouterr().err


@pytest.mark.slow
def test_cpu_dry_run_prints_one_table_with_every_piece(tmp_path, subprocess_env):
    subprocess_env['GPU_CHECK_OUT'] = str(tmp_path)
    run = subprocess.run(
        ['bash', osp.join(REPO_ROOT, 'scripts', 'gpu_check.sh'), '--device', 'cpu', '--dry-run'],
        env=subprocess_env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table = run.stdout[run.stdout.index('gpu_check on CPU'):]
    assert 'DRY RUN' in table
    for line in ('train     fp32 ', 'infer     DeSpikeNet 24x40x192 fp32', 'infer     DeSpikeNet 40x40x192 bf16',
                 'simulate  static 32x48x256 uint8', 'simulate  static 32x48x256 packed'):
        assert line in table, line
    [json_path] = [n for n in os.listdir(tmp_path) if n.endswith('.json')]
    assert osp.isfile(tmp_path / json_path.replace('.json', '.txt'))
    result = json.loads((tmp_path / json_path).read_text())
    training = {row['setting']: row for row in result['training']}
    assert training['fp32']['it_per_s'] > 0 and training['fp32']['finite']
    for setting in ('amp bf16', 'amp fp16'):
        row = training[setting]  # both models run their forward and loss in self.autocast()
        assert 'it_per_s' in row and row['finite'], row
    assert all('latency_ms' in row for row in result['inference']), result['inference']
    assert all(row['device_px_steps_per_s'] > 0 for row in result['simulator'])
