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
