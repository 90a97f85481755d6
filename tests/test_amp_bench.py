"""scripts/bench_amp.py and evaluation/amp_bench.py: the protocol's networks trained one step in float32 and under
bf16 autocast, at a toy size (the figures themselves are the benchmark's, not asserted)."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from despike_basicsr.evaluation import amp_bench
from despike_basicsr.options_file import OptionsError


def test_every_protocol_row_names_an_options_file_with_a_network_and_a_training_batch(repo_root):
    for row, options in amp_bench.PROTOCOL_OPTIONS.items():
        batch = amp_bench.protocol_batch(f'{repo_root}/{options}', size=8, steps=16)
        frame_input = row in ('gkmnet', 'nrknet')
        assert batch['input'].shape == ((4, 1, 8, 8) if frame_input else (4, 16, 8, 8))
        assert batch['input'].dtype == (torch.float32 if frame_input else torch.uint8)
        assert batch['target'].shape == (4, 1, 8, 8)


def test_protocol_batch_names_the_file_without_a_training_set(tmp_path):
    options = tmp_path / 'test_only.yml'
    options.write_text('network_g: {type: RSIR}\ndatasets: {val: {name: v}}\n')
    with pytest.raises(OptionsError, match='test_only.yml: no datasets.train'):
        amp_bench.protocol_batch(str(options))


class _Probe(nn.Module):
    """A convolution whose multi-scale output ends with the image, as NRKNet's does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return [x, self.conv(x)]


def test_gradient_agreement_is_exact_in_one_precision_and_sees_bf16_rounding():
    torch.manual_seed(0)
    net = _Probe()
    batch = {'input': torch.rand(2, 1, 12, 12), 'target': torch.rand(2, 1, 12, 12)}
    same = amp_bench.gradient_agreement(net, batch, None)
    assert same == {'grad_cosine': pytest.approx(1.0, abs=1e-12), 'grad_norm_ratio': pytest.approx(1.0, abs=1e-12),
                    'output_max_diff_over_std': 0.0}
    rounded = amp_bench.gradient_agreement(net, batch, torch.bfloat16)
    assert 0 < rounded['output_max_diff_over_std'] < 0.2  # bf16 keeps 8 bits of mantissa
    assert 0.99 < rounded['grad_cosine'] <= 1 + 1e-9 and rounded['grad_cosine'] != same['grad_cosine']


def test_bench_amp_times_both_precisions_and_reports_the_machine(repo_root, subprocess_env, tmp_path):
    out = tmp_path / 'amp.json'
    argv = ['--rows', 'rsir,gkmnet', '--size', '16', '--batch', '1', '--steps', '32', '--repeats', '2', '--warmup',
            '0', '--json', str(out)]
    done = subprocess.run([sys.executable, 'scripts/bench_amp.py'] + argv, cwd=repo_root, env=subprocess_env,
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['machine']['onednn_isa'] and 'oneDNN ISA: ' in done.stdout
    rows = {r['network']: r for r in result['rows']}
    assert set(rows) == {'RSIR', 'GKMNet'} and rows['RSIR']['input_shape'] == [1, 32, 16, 16]
    for row in rows.values():
        assert len(row['fp32_s']) == len(row['amp_s']) == 2 and min(row['fp32_s'] + row['amp_s']) > 0
        ratios = sorted(a / f for a, f in zip(row['amp_s'], row['fp32_s']))
        assert row['ratio_range'] == pytest.approx(ratios) and row['ratio'] == pytest.approx(sum(ratios) / 2)
        assert 0.99 < row['grad_cosine'] <= 1 + 1e-9 and row['params'] > 1000
    assert '| RSIR (train_rsir.yml) |' in done.stdout and 'bf16 / fp32' in done.stdout


def test_bench_amp_rejects_an_unknown_row(repo_root, subprocess_env):
    done = subprocess.run([sys.executable, 'scripts/bench_amp.py', '--rows', 'rsir,unet'], cwd=repo_root,
                          env=subprocess_env, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and '--rows: unknown unet' in done.stderr
