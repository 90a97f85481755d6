"""scripts/dpdd_protocol.sh: the whole DPDD protocol in one command (issues 22 and 29), checked with --dry-run in a copy
of the options (no data, no training): both levels, training without the scoring holdout and scoring every row on the
16-image scoring LMDB, the front-end stages before the cascades that load them, the issue's order, DeSpike and all
eight cascades in each table (assembled from row files), the five ablations, the short windows, and every options file
it names exists; then its control flow with a stand-in python: each row trained and scored once, its row file
written, nothing trained again."""
import json
import os
import re
import shutil
import subprocess
import sys
from os import path as osp

import pytest
import torch

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
                         cwd=str(root), env=env, capture_output=True, text=True, timeout=900)
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
    # the order at the bright level: DeSpike, the ablations and the RSIR cascades, then TFP/TFI, Spk2ImgNet
    assert bright.index('train_despike_wo_physical_kernels.yml') < bright.index('train_rsir_nrknet.yml') < \
        bright.index('train_gkmnet_tfp.yml') < bright.index('train_spk2imgnet.yml')
    prepared = re.findall(r'prepare_dpdd\.py .*--split (\S+) --out (\S+) .*--eta (\S+)', stdout)
    assert sorted(prepared) == sorted([(split, f'datasets/{data}/{split}.lmdb', eta)
                                       for data, eta in (('dpdd_cpu', '1.0'), ('dpdd_cpu_low', '0.18'))
                                       for split in ('val', 'train', 'scoring')])
    assert all('--scoring-holdout exclude' in line for line in stdout.splitlines() if '--split train' in line)


def test_every_row_is_scored_on_the_scoring_set_and_the_tables_are_assembled_from_rows(dry_run):
    _, stdout = dry_run
    runs = {(out, length): names for out, length, names in _benchmarks(stdout)}
    assert all('/scoring.lmdb' in line for line in stdout.splitlines() if 'scripts/benchmark.py' in line)
    assert all('--reference despike' in line for line in stdout.splitlines() if 'scripts/benchmark.py' in line)
    tables = {}
    for line in stdout.splitlines():
        if 'evaluation.protocol assemble' in line:
            results = re.search(r'--results (\S+)', line).group(1)
            name = re.search(r'--name (\S+)', line).group(1)
            tables[(results, name)] = [r.split('=')[0] for r in line.split('--rows ', 1)[1].split()]
    for results in ('results/dpdd', 'results/dpdd_low'):
        rows = {out.rsplit('/', 1)[1] for out, length in runs if out.startswith(f'{results}/rows/.work/')}
        assert {'defocused', 'tfp', 'tfi', 'despike', 'rsir', 'spk2imgnet'} | set(CASCADES) <= rows
        assert {'defocused', 'tfp', 'tfi', 'despike', 'rsir', 'spk2imgnet'} | set(CASCADES) <= set(
            tables[(results, 'benchmark')])
        for frames in (64, 32):  # each row on short streams too, when it is scored
            short = {out.rsplit('/', 1)[1] for out, length in runs
                     if out.startswith(f'{results}/short_{frames}/rows/.work/') and length == frames}
            assert {'tfp', 'tfi', 'despike'} | set(CASCADES) <= short
            assert {'tfp', 'tfi', 'despike'} | set(CASCADES) <= set(tables[(f'{results}/short_{frames}', 'benchmark')])
    assert tables[('results/dpdd', 'ablations')] == ['despike'] + ABLATIONS
    assert ('results/dpdd_low', 'ablations') not in tables


def test_rows_restricts_training_to_the_named_rows_and_rejects_unknown_ones(dry_run):
    root, _ = dry_run
    env = dict(os.environ, DESPIKE_VENV=sys.prefix)
    script = str(root / 'scripts' / 'dpdd_protocol.sh')
    chosen = ['despike', 'tfp_gkmnet', 'tfi_nrknet']
    run = subprocess.run(['bash', script, '--dry-run', '--level', 'low', '--rows', ','.join(chosen)], cwd=str(root),
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    trained = [osp.basename(p) for p in re.findall(r'train\.py -opt (\S+) --auto_resume', run.stdout)]
    assert trained == ['train_despike.yml', 'train_gkmnet_tfp.yml', 'train_nrknet_tfi.yml']
    # the table still lists every row (untrained ones as not started)
    table = [line for line in run.stdout.splitlines()
             if 'assemble --results results/dpdd_low ' in line and '--name benchmark' in line]
    assert len(table) == 1 and 'spk2imgnet_nrknet=' in table[0]
    bad = subprocess.run(['bash', script, '--dry-run', '--level', 'low', '--rows', 'despike,despike_wo_fpn'],
                         cwd=str(root), env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and 'no row despike_wo_fpn at the low level' in bad.stderr


def test_amp_trains_in_mixed_precision_through_basicsr_force_yml(dry_run):
    root, stdout = dry_run
    assert '--force_yml' not in stdout  # full precision unless asked
    env = dict(os.environ, DESPIKE_VENV=sys.prefix)
    script = str(root / 'scripts' / 'dpdd_protocol.sh')
    run = subprocess.run(['bash', script, '--dry-run', '--level', 'low', '--rows', 'spk2imgnet', '--amp', 'bf16'],
                         cwd=str(root), env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    trained = [line for line in run.stdout.splitlines() if 'train.py -opt' in line]
    assert len(trained) == 1 and trained[0].endswith('--auto_resume --force_yml train:amp=bf16')
    bad = subprocess.run(['bash', script, '--dry-run', '--amp', 'fp8'], cwd=str(root), env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and '--amp must be bf16 or fp16, got fp8' in bad.stderr


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
    echo "train $3 ${*:5}" >> calls.log
    # as BasicSR does: a folder it does not resume from (no training states) is archived, whatever is in it
    if [ -d "experiments/$name" ] && [ -z "$(ls -A "experiments/$name/training_states" 2>/dev/null)" ]; then
      mv "experiments/$name" "experiments/${name}_archived_$$"
    fi
    mkdir -p "experiments/$name/models"
    if [ -n "${SHIM_TRAIN_SECONDS:-}" ]; then  # a training that saved a checkpoint (an hour ago) and runs on
      mkdir -p "experiments/$name/training_states"
      "$real" -c "import sys, torch; torch.save({'iter': 100}, sys.argv[1]); torch.save({'params': {}}, sys.argv[2])" \
        "experiments/$name/training_states/100.state" "experiments/$name/models/net_g_100.pth"
      touch -d '1 hour ago' "experiments/$name/training_states/100.state" "experiments/$name/models/net_g_100.pth"
      sleep "$SHIM_TRAIN_SECONDS"
    fi
    exec "$real" -c "import sys, torch; torch.save({'params_ema': {'w': torch.full((2,), 0.1)}}, sys.argv[1])" \
      "experiments/$name/models/net_g_latest.pth" ;;
  -m) exec "$real" "$@" ;;
  scripts/benchmark.py)
    echo "benchmark $*" >> calls.log
    exec "$real" -c "import json, os, sys
args = sys.argv[1:]
out = args[args.index('--out-dir') + 1]
names = [m.split(':')[0] for m in args[args.index('--methods') + 1:] if not m.startswith('--')]
os.makedirs(out, exist_ok=True)
tiles = {f'{i:04d}_x': {'psnr': 20.0 + i, 'ssim': 0.5, 'psnr_fit': 21.0, 'tile_psnr': [20.0 + i] * 4}
         for i in range(16)}
json.dump({'lmdb': args[args.index('--lmdb') + 1], 'num_samples': 16, 'methods': [
    {'name': n, 'psnr': 25.0, 'ssim': 0.5, 'per_sample': tiles} for n in names]},
    open(os.path.join(out, 'benchmark.json'), 'w'))" "$@" ;;
  *) echo "unexpected call: $*" >&2; exit 3 ;;
esac
'''


def test_a_real_run_trains_and_scores_each_row_once_and_never_again(repo_root, tmp_path):
    """The script's own control flow, with a stand-in python: order, row files, time table, no second training."""
    (tmp_path / 'scripts').mkdir()
    shutil.copy(osp.join(repo_root, 'scripts', 'dpdd_protocol.sh'), tmp_path / 'scripts')
    shutil.copytree(osp.join(repo_root, 'options', 'dpdd_cpu'), tmp_path / 'options' / 'dpdd_cpu')
    # weights of the earlier protocol (trained on all 60 pairs): set aside and trained again
    (tmp_path / 'experiments' / 'DPDDcpu_DeSpike' / 'models').mkdir(parents=True)
    (tmp_path / 'experiments' / 'DPDDcpu_DeSpike' / 'models' / 'net_g_latest.pth').write_bytes(b'old')
    venv = tmp_path / 'venv' / 'bin'
    venv.mkdir(parents=True)
    (venv / 'python').write_text(SHIM.replace('REAL_PYTHON', sys.executable))
    (venv / 'python').chmod(0o755)
    env = dict(os.environ, DESPIKE_VENV=str(tmp_path / 'venv'), OMP_NUM_THREADS='1',
               PYTHONPATH=repo_root + os.pathsep + os.environ.get('PYTHONPATH', ''))
    command = ['bash', str(tmp_path / 'scripts' / 'dpdd_protocol.sh'), '--level', 'bright']
    first = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert (tmp_path / 'experiments' / 'DPDDcpu_DeSpike_before_holdout' / 'models' / 'net_g_latest.pth').is_file()
    calls = (tmp_path / 'calls.log').read_text().splitlines()
    trained = [c.split()[1] for c in calls if c.startswith('train ')]
    # DeSpike, 5 ablations, 2 stages, 8 cascades, the small DeSpike, TFP -> NRKNet with FPN; the stages first
    assert len(trained) == 18 == len(set(trained))
    assert trained.index('options/dpdd_cpu/train_rsir.yml') < trained.index('options/dpdd_cpu/train_rsir_gkmnet.yml')
    prepared = [c.split()[1] for c in calls if c.startswith('prepare ')]
    assert prepared == ['datasets/dpdd_cpu/val.lmdb', 'datasets/dpdd_cpu/train.lmdb', 'datasets/dpdd_cpu/scoring.lmdb']
    # classical rows, trained rows, and TFP, TFI and every trained row at 64 and 32 steps
    assert sum(c.startswith('benchmark ') for c in calls) == 6 + 18 + 2 * (2 + 18)
    rows = sorted(p.name for p in (tmp_path / 'results' / 'dpdd' / 'rows').glob('*.json'))
    assert len(rows) == 24 and 'despike.json' in rows and 'spk2imgnet_nrknet.json' in rows
    record = json.loads((tmp_path / 'results' / 'dpdd' / 'rows' / 'tfp_nrknet.json').read_text())
    assert record['training']['wall_s'] >= 0 and record['weights_bytes'] > 0 and len(record['per_sample']) == 16
    table = json.loads((tmp_path / 'results' / 'dpdd' / 'benchmark.json').read_text())
    assert all(e['status'] == 'scored' for e in table['rows'])
    assert all(e['difference']['verdict'] == 'within noise' for e in table['rows'] if e['row'] != 'despike')
    assert (tmp_path / 'results' / 'dpdd' / 'ablations.md').is_file()
    times = (tmp_path / 'results' / 'dpdd' / 'training_times.md').read_text().splitlines()
    steps = [line.split(' | ')[1] for line in times if line.startswith('| ') and '---' not in line][1:]
    assert steps.count('train') == 18 and steps.count('evaluate') == 64
    short = json.loads((tmp_path / 'results' / 'dpdd' / 'short_32' / 'benchmark.json').read_text())
    assert len(short['rows']) == 2 + 18 and all(e['status'] == 'scored' for e in short['rows'])
    assert json.loads((tmp_path / 'results/dpdd/short_64/rows/despike.json').read_text())['training']['wall_s'] >= 0

    (tmp_path / 'calls.log').unlink()
    (tmp_path / 'results' / 'dpdd' / 'rows' / 'despike.json').unlink()  # a row trained but not yet scored
    # ... by a run killed after BasicSR archived the folder it started afresh (the marker inside went with it)
    (tmp_path / 'experiments' / 'DPDDcpu_DeSpike' / 'trained_without_scoring_holdout').unlink()
    again = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    calls = (tmp_path / 'calls.log').read_text().splitlines()
    assert not [c for c in calls if c.startswith('train ')]  # its finished training is kept, not trained again
    assert (tmp_path / 'experiments' / 'DPDDcpu_DeSpike' / 'models' / 'net_g_latest.pth').is_file()
    assert [c for c in calls if c.startswith('benchmark ')] and (tmp_path / 'results/dpdd/rows/despike.json').is_file()

    # the two front-end stages are kept (half precision) for the cascades of a fresh clone
    kept = tmp_path / 'results' / 'dpdd' / 'front_ends'
    assert sorted(p.name for p in kept.iterdir()) == ['DPDDcpu_RSIR.pth', 'DPDDcpu_Spk2ImgNet.pth']
    assert torch.load(kept / 'DPDDcpu_RSIR.pth', weights_only=True)['params']['w'].dtype == torch.float16

    (tmp_path / 'calls.log').unlink()
    shutil.rmtree(tmp_path / 'experiments')  # a fresh checkout: the committed row files are enough
    second = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    calls = (tmp_path / 'calls.log').read_text().splitlines() if (tmp_path / 'calls.log').exists() else []
    assert not [c for c in calls if not c.startswith('prepare ')]  # nothing trained or scored again

    # a fresh checkout where a cascade is not finished: its front end comes back from front_ends/, then it trains
    (tmp_path / 'results' / 'dpdd' / 'rows' / 'rsir_nrknet.json').unlink()
    shutil.rmtree(tmp_path / 'experiments')
    third = subprocess.run(command + ['--amp', 'bf16'], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                           timeout=900)
    assert third.returncode == 0, third.stderr[-2000:]
    calls = (tmp_path / 'calls.log').read_text().splitlines()
    assert [c for c in calls if c.startswith('train ')] == [
        'train options/dpdd_cpu/train_rsir_nrknet.yml --force_yml train:amp=bf16']
    times = (tmp_path / 'results' / 'dpdd' / 'training_times.md').read_text().splitlines()
    assert [line for line in times if '(amp bf16)' in line] == [times[-2]]  # the training line; its scoring follows
    front = torch.load(tmp_path / 'experiments' / 'DPDDcpu_RSIR' / 'models' / 'net_g_latest.pth', weights_only=True)
    assert front['params']['w'].dtype == torch.float32 and torch.allclose(front['params']['w'], torch.tensor(0.1),
                                                                          atol=1e-3)


def _shim_run(repo_root, tmp_path, *args, **env_extra):
    if not (tmp_path / 'scripts').exists():
        (tmp_path / 'scripts').mkdir()
        shutil.copy(osp.join(repo_root, 'scripts', 'dpdd_protocol.sh'), tmp_path / 'scripts')
        shutil.copytree(osp.join(repo_root, 'options', 'dpdd_cpu'), tmp_path / 'options' / 'dpdd_cpu')
        venv = tmp_path / 'venv' / 'bin'
        venv.mkdir(parents=True)
        (venv / 'python').write_text(SHIM.replace('REAL_PYTHON', sys.executable))
        (venv / 'python').chmod(0o755)
    env = dict(os.environ, DESPIKE_VENV=str(tmp_path / 'venv'), OMP_NUM_THREADS='1',
               PYTHONPATH=repo_root + os.pathsep + os.environ.get('PYTHONPATH', ''), **env_extra)
    run = subprocess.run(['bash', str(tmp_path / 'scripts' / 'dpdd_protocol.sh'), '--level', 'bright', *args],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run


def test_snapshot_every_keeps_a_running_trainings_checkpoint_in_results(repo_root, tmp_path):
    """A sitting cut off mid-training (experiments/ is not kept) still has the last checkpoint under results/."""
    _shim_run(repo_root, tmp_path, '--rows', 'despike', '--snapshot-every', '1', SHIM_TRAIN_SECONDS='6')
    log = (tmp_path / 'experiments' / 'bright_despike.snapshots.log').read_text()
    assert 'DPDDcpu_DeSpike: iteration 100 saved to' in log and 'is already in' in log  # copied once, then kept
    # the row finished and was scored: its state went with the scoring, as without the watcher
    assert not (tmp_path / 'results' / 'dpdd' / 'state' / 'DPDDcpu_DeSpike').exists()
    (tmp_path / 'results' / 'dpdd' / 'rows' / 'tfp_gkmnet.json').unlink(missing_ok=True)
    _shim_run(repo_root, tmp_path, '--rows', 'tfp_gkmnet', '--snapshot-every', '0', SHIM_TRAIN_SECONDS='2')
    assert not (tmp_path / 'experiments' / 'bright_tfp_gkmnet.snapshots.log').exists()


def test_short_windows_trains_a_scored_row_again_for_its_64_and_32_step_scores(repo_root, tmp_path):
    """A row scored before short windows were scored with each row (its weights gone with experiments/): listed as
    such, and --short-windows trains it again and scores it at 64 and 32 steps without touching its row file."""
    _shim_run(repo_root, tmp_path, '--rows', 'despike')
    results = tmp_path / 'results' / 'dpdd'
    full = (results / 'rows' / 'despike.json').read_text()
    for frames in (64, 32):
        (results / f'short_{frames}' / 'rows' / 'despike.json').unlink()
    shutil.rmtree(tmp_path / 'experiments')  # a fresh clone
    (tmp_path / 'calls.log').unlink()
    _shim_run(repo_root, tmp_path, '--skip-train')  # without the flag: the short table says why
    assert not [c for c in (tmp_path / 'calls.log').read_text().splitlines() if c.startswith('train ')]
    short = json.loads((results / 'short_64' / 'benchmark.json').read_text())
    despike = next(e for e in short['rows'] if e['row'] == 'despike')
    assert despike['status'] == 'not scored' and 'weights not kept' in despike['reason']
    (tmp_path / 'calls.log').unlink()
    _shim_run(repo_root, tmp_path, '--short-windows', '--rows', 'despike', '--snapshot-every', '0')
    calls = (tmp_path / 'calls.log').read_text().splitlines()
    assert [c for c in calls if c.startswith('train ')] == ['train options/dpdd_cpu/train_despike.yml ']
    assert sum(c.startswith('benchmark ') and '--val-len' in c for c in calls) == 2
    assert (results / 'rows' / 'despike.json').read_text() == full
    times = (results / 'training_times.md').read_text().splitlines()
    again = [line for line in times if line.startswith('| despike (again) | train |')]
    assert len(again) == 1
    record = json.loads((results / 'short_32' / 'rows' / 'despike.json').read_text())
    assert record['training']['wall_s'] == float(again[0].split(' | ')[3])  # the second training's time, not the sum
    short = json.loads((results / 'short_32' / 'benchmark.json').read_text())
    assert next(e for e in short['rows'] if e['row'] == 'despike')['status'] == 'scored'
