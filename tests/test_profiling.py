"""Measuring tools of the benchmarks: interleaved latency and scripts/bench_inference.py at a toy size."""
import importlib.util
import json
import subprocess
import sys

import torch

from despike_basicsr.training.profiling import interleaved_latency


def test_methods_take_turns_and_every_round_is_timed():
    calls = []
    runs = {name: (lambda spikes, name=name: calls.append(name)) for name in ('a', 'b', 'c')}
    times = interleaved_latency(runs, torch.zeros(1), torch.device('cpu'), warmup=1, repeats=3)
    assert calls == ['a', 'b', 'c'] + ['a', 'b', 'c', 'c', 'b', 'a', 'a', 'b', 'c']
    assert set(times) == {'a', 'b', 'c'}
    assert all(len(t) == 3 and all(s >= 0 for s in t) for t in times.values())


def test_bench_inference_reports_both_methods_and_the_paired_ratio(tmp_path, repo_root, subprocess_env):
    out = tmp_path / 'bench.json'
    argv = ['--height', '16', '--width', '24', '--repeats', '2', '--threads', '1', '--no-memory', '--json', str(out)]
    done = subprocess.run([sys.executable, 'scripts/bench_inference.py'] + argv,
                          cwd=repo_root,
                          env=subprocess_env,
                          capture_output=True,
                          text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    with_onnx = importlib.util.find_spec('onnxruntime') and importlib.util.find_spec('onnx')
    onnx_row = {'onnxruntime'} if with_onnx else set()
    assert set(result['figures']) == {'despike', 'cascade'} | onnx_row
    assert all(len(f['latency_ms_all']) == 2 for f in result['figures'].values())
    assert 'CPU: ' in done.stdout and 'oneDNN ISA: ' in done.stdout and result['onednn_isa']
    ratios = result['ratio_despike_over_cascade']
    assert ratios['latency_paired'] > 0 and ratios['params'] < 0.1
    assert 'median of 2 paired rounds' in done.stdout
