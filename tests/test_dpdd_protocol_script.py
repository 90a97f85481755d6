"""scripts/dpdd_protocol.sh: the whole DPDD protocol in one command (issue 22), checked with --dry-run in a copy of the
options (no data, no training): both levels, the front-end stages before the cascades that load them, DeSpike and all
eight cascades in each table, the five ablations, the short windows, and every options file it names exists."""
import os
import re
import shutil
import subprocess
import sys
from os import path as osp

import pytest

CASCADES = [f'{front}_{back}' for front in ('tfp', 'tfi', 'rsir', 'spk2imgnet') for back in ('gkmnet', 'nrknet')]
ABLATIONS = [f'despike_wo_{part}' for part in ('multi_temporal', 'multi_scale', 'fpn', 'fusion', 'physical_kernels')]


@pytest.fixture(scope='module')
def dry_run(repo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp('protocol')
    (root / 'scripts').mkdir()
    shutil.copy(osp.join(repo_root, 'scripts', 'dpdd_protocol.sh'), root / 'scripts')
    for folder in ('dpdd_cpu', 'dpdd_low'):
        shutil.copytree(osp.join(repo_root, 'options', folder), root / 'options' / folder)
    env = dict(os.environ, DESPIKE_VENV=sys.prefix)
    run = subprocess.run(['bash', str(root / 'scripts' / 'dpdd_protocol.sh'), '--dry-run', '--level', 'all'],
                         cwd=str(root), env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return root, run.stdout


def _benchmarks(stdout: str):
    """Each benchmark command as (out-dir, val-len, [method names])."""
    found = []
    for line in stdout.splitlines():
        if 'scripts/benchmark.py' not in line:
            continue
        out = re.search(r'--out-dir (\S+)', line).group(1) + ('/ablations' if '--name ablations' in line else '')
        length = re.search(r'--val-len (\d+)', line)
        methods = line.split('--methods ', 1)[1].split()
        found.append((out, int(length.group(1)) if length else 192, [m.split(':')[0] for m in methods]))
    return found


def test_every_level_trains_stages_first_and_every_options_file_exists(dry_run):
    root, stdout = dry_run
    trained = re.findall(r'train\.py -opt (\S+) --auto_resume', stdout)
    assert all((root / path).is_file() for path in trained)
    for level in ('dpdd_cpu', 'dpdd_low'):
        order = [osp.basename(p) for p in trained if f'/{level}/' in p]
        for stage in ('rsir', 'spk2imgnet'):
            assert order.index(f'train_{stage}.yml') < min(order.index(f'train_{stage}_{b}.yml')
                                                           for b in ('gkmnet', 'nrknet'))
    bright = [osp.basename(p) for p in trained if '/dpdd_cpu/' in p]
    assert {f'train_{a}.yml' for a in ABLATIONS} <= set(bright)
    assert len(trained) == len(set(trained))
    prepared = re.findall(r'prepare_dpdd\.py .*--out (\S+) .*--eta (\S+)', stdout)
    assert sorted(prepared) == sorted([('datasets/dpdd_cpu/val.lmdb', '1.0'), ('datasets/dpdd_cpu/train.lmdb', '1.0'),
                                       ('datasets/dpdd_cpu_low/val.lmdb', '0.18'),
                                       ('datasets/dpdd_cpu_low/train.lmdb', '0.18')])


def test_tables_hold_despike_all_eight_cascades_ablations_and_short_windows(dry_run):
    _, stdout = dry_run
    runs = {(out, length): names for out, length, names in _benchmarks(stdout)}
    for results in ('results/dpdd', 'results/dpdd_low'):
        names = runs[(results, 192)]
        assert {'defocused', 'tfp', 'tfi', 'despike', 'rsir', 'spk2imgnet'} | set(CASCADES) <= set(names)
        for frames in (64, 32):
            assert {'despike'} | set(CASCADES) <= set(runs[(f'{results}/short_{frames}', frames)])
    assert runs[('results/dpdd/ablations', 192)] == ['despike'] + ABLATIONS
    assert ('results/dpdd_low/ablations', 192) not in runs
    assert all('--reference despike' in line for line in stdout.splitlines() if 'scripts/benchmark.py' in line)


SHIM = r'''#!/usr/bin/env bash
# Stands in for the venv's python: option names and the LMDB check run for real; data preparation writes a
# one-sample LMDB; training writes the weights file; every call is logged.
real=REAL_PYTHON
case "$1" in
  -c) exec "$real" "$@" ;;
  scripts/prepare_dpdd.py)
    out=$(echo "$@" | sed -E 's/.*--out ([^ ]+).*/\1/')
    echo "prepare $out" >> calls.log
    exec "$real" -c "import numpy as np, sys, shutil, os
from despike_basicsr.data.spike_lmdb import SpikeLMDBWriter
shutil.rmtree(sys.argv[1], ignore_errors=True)
with SpikeLMDBWriter(sys.argv[1]) as w:
    w.add('s', np.zeros((4, 4), np.uint8), {}, spikes=np.zeros((8, 4, 4), np.uint8), blurred=np.zeros((4, 4)))" \
      "$out" ;;
  despike_basicsr/train.py)
    name=$("$real" -c "import yaml, sys; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$3")
    echo "train $3" >> calls.log
    mkdir -p "experiments/$name/models" && touch "experiments/$name/models/net_g_latest.pth" ;;
  scripts/benchmark.py) echo "benchmark $*" >> calls.log ;;
  *) echo "unexpected call: $*" >&2; exit 3 ;;
esac
'''


def test_a_real_run_trains_once_records_times_and_reuses_what_is_trained(repo_root, tmp_path):
    """The script's own control flow, with a stand-in python: order, time table, resumption, no second training."""
    (tmp_path / 'scripts').mkdir()
    shutil.copy(osp.join(repo_root, 'scripts', 'dpdd_protocol.sh'), tmp_path / 'scripts')
    shutil.copytree(osp.join(repo_root, 'options', 'dpdd_cpu'), tmp_path / 'options' / 'dpdd_cpu')
    venv = tmp_path / 'venv' / 'bin'
    venv.mkdir(parents=True)
    (venv / 'python').write_text(SHIM.replace('REAL_PYTHON', sys.executable))
    (venv / 'python').chmod(0o755)
    env = dict(os.environ, DESPIKE_VENV=str(tmp_path / 'venv'), OMP_NUM_THREADS='1',
               PYTHONPATH=repo_root + os.pathsep + os.environ.get('PYTHONPATH', ''))
    command = ['bash', str(tmp_path / 'scripts' / 'dpdd_protocol.sh'), '--level', 'bright']
    first = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    calls = (tmp_path / 'calls.log').read_text().splitlines()
    trained = [c.split()[1] for c in calls if c.startswith('train ')]
    # 2 stages, DeSpike, 8 cascades, the small DeSpike, TFP -> NRKNet with FPN, 5 ablations; the stages first
    assert len(trained) == 18 == len(set(trained))
    assert trained[:2] == ['options/dpdd_cpu/train_rsir.yml', 'options/dpdd_cpu/train_spk2imgnet.yml']
    prepared = [c.split()[1] for c in calls if c.startswith('prepare ')]
    assert prepared == ['datasets/dpdd_cpu/val.lmdb', 'datasets/dpdd_cpu/train.lmdb']
    assert sum(c.startswith('benchmark ') for c in calls) == 4  # table, ablations, 64 and 32 steps
    times = (tmp_path / 'results' / 'dpdd' / 'training_times.md').read_text().splitlines()
    rows = [line.split(' | ') for line in times if line.startswith('| ') and '---' not in line][1:]
    assert len(rows) == 22 and all(float(r[3]) >= 0 and float(r[4]) >= 0 and r[5] == '1 |' for r in rows)
    assert [r[1] for r in rows].count('train') == 18 and [r[1] for r in rows].count('evaluate') == 4

    (tmp_path / 'calls.log').unlink()
    second = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    calls = (tmp_path / 'calls.log').read_text().splitlines()
    assert all(c.startswith('benchmark ') for c in calls) and len(calls) == 4  # nothing trained or prepared again
