"""despike_basicsr.evaluation.protocol (issue 29): row files, the table assembled from them (scored, still training,
not started, the earlier 4-image scores beside), paired differences to DeSpike with a reading, and the small state of
an unfinished training saved and restored."""
import json
import os

import numpy as np
import pytest
import torch
import yaml

from despike_basicsr.evaluation import protocol


def _report(path, name, offset, images=16, seed=0):
    """A benchmark.json with one method: per image a PSNR and 16 tile PSNRs (``offset`` dB over a common base)."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(99).uniform(20, 30, (images, 16))
    per_sample = {}
    for i in range(images):
        tiles = base[i] + offset + rng.normal(0, 0.05, 16)
        per_sample[f'{i:04d}_img'] = {'psnr': float(tiles.mean()), 'ssim': 0.8, 'psnr_fit': float(tiles.mean()) + 1,
                                      'tile_psnr': tiles.tolist()}
    method = {'name': name, 'kind': 'model', 'psnr': float(np.mean([v['psnr'] for v in per_sample.values()])),
              'psnr_fit': 0.0, 'ssim': 0.8, 'lpips': 'n/a', 'params': 1000, 'per_sample': per_sample,
              'tiles_per_side': 4, '_images': {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({'lmdb': 'scoring.lmdb', 'num_samples': images, 'val_len': 192, 'methods': [method]}))
    return str(path)


def _options(root, name, total_iter=1200):
    path = root / 'options' / f'{name}.yml'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({'name': name, 'train': {'total_iter': total_iter}}))
    return f'options/{name}.yml'


def test_rows_accumulate_into_a_table_with_status_differences_and_readings(tmp_path):
    results = str(tmp_path / 'results' / 'dpdd')
    times = tmp_path / 'results' / 'dpdd' / 'training_times.md'
    times.parent.mkdir(parents=True)
    times.write_text('| row | step | options / output | wall (s) | CPU (s) | threads |\n'
                     '| --- | --- | --- | ---: | ---: | --- |\n'
                     '| despike | train | o.yml | 100.5 | 90.0 | 1 |\n| despike | train | o.yml | 50 | 40 | 1 |\n'
                     '| despike | evaluate | x | 7 | 7 | 1 |\n')
    weights = tmp_path / 'w.pth'
    weights.write_bytes(b'0' * 2048)
    protocol.write_row(results, 'despike', _report(tmp_path / 'a' / 'benchmark.json', 'despike', 0.0),
                       weights=str(weights))
    protocol.write_row(results, 'ahead', _report(tmp_path / 'b' / 'benchmark.json', 'x', 0.8, seed=1))
    protocol.write_row(results, 'same', _report(tmp_path / 'c' / 'benchmark.json', 'x', 0.0, seed=2))
    protocol.write_row(results, 'four', _report(tmp_path / 'd' / 'benchmark.json', 'x', 0.0, images=4))
    record = json.loads(open(os.path.join(results, 'rows', 'despike.json')).read())
    assert record['training'] == {'wall_s': 150.5, 'cpu_s': 130.0} and record['weights_bytes'] == 2048
    assert record['num_samples'] == 16 and '_images' not in record and len(record['per_sample']) == 16

    # a partial training (committed state at iteration 400) and one not started
    state = tmp_path / 'results' / 'dpdd' / 'state' / 'Partial'
    state.mkdir(parents=True)
    (state / '400.state').write_bytes(b's')
    (state / 'net_g_400.pth').write_bytes(b'w')
    # weights of an earlier protocol (no marker): they count for nothing
    (tmp_path / 'experiments' / 'Old' / 'models').mkdir(parents=True)
    (tmp_path / 'experiments' / 'Old' / 'models' / 'net_g_latest.pth').write_bytes(b'w')
    legacy = tmp_path / 'val4.json'
    legacy.write_text(json.dumps({'methods': [{'name': 'nrknet_tfp', 'psnr': 25.28, 'ssim': 0.812,
                                               'per_sample': {str(i): {} for i in range(4)}}]}))
    rows = [('despike', None), ('ahead', None), ('same', None), ('four', None),
            ('partial', _options(tmp_path, 'Partial')), ('tfp_nrknet', _options(tmp_path, 'Old')),
            ('tfp', None)]
    report = protocol.assemble('results/dpdd', rows, legacy='val4.json', root=str(tmp_path))
    by_row = {e['row']: e for e in report['rows']}
    assert by_row['despike']['status'] == 'scored' and 'difference' not in by_row['despike']
    assert by_row['ahead']['difference']['verdict'] == 'higher'
    assert by_row['ahead']['reading'].startswith('ahead is ahead of despike: +0.')
    assert 'dB over 16 images' in by_row['ahead']['reading']
    assert by_row['same']['difference']['verdict'] == 'within noise'
    assert 'within noise of despike' in by_row['same']['reading']
    assert 'other images' in by_row['four']['reading'] and 'difference' not in by_row['four']
    assert by_row['partial']['status'] == 'still training' and by_row['partial']['iteration'] == 400
    assert by_row['partial']['total_iter'] == 1200
    assert by_row['tfp_nrknet']['status'] == 'not started'
    assert by_row['tfp_nrknet']['earlier_4_images'] == {'psnr': 25.28, 'ssim': 0.812, 'images': 4}
    assert by_row['tfp']['status'] == 'not scored'
    paths = protocol.write_table(report, str(tmp_path / 'results' / 'dpdd'))
    table = open(paths[1]).read()
    assert '| partial | still training (400 / 1200 iterations) |' in table
    assert '| despike | scored (16 images) | ' in table and '150 / 130' in table
    assert '| tfp_nrknet | not started |' in table and '25.28 / 0.812 |' in table
    assert json.loads(open(paths[0]).read())['rows'][0]['row'] == 'despike'


def test_unknown_row_in_the_benchmark_report_is_an_error(tmp_path):
    path = _report(tmp_path / 'benchmark.json', 'despike', 0.0)
    with pytest.raises(ValueError, match='holds no scores of other'):
        protocol.write_row(str(tmp_path / 'r'), 'x', path, method='other')


def test_state_snapshot_and_restore_and_size_limit(tmp_path):
    exp = tmp_path / 'experiments' / 'Run'
    (exp / 'training_states').mkdir(parents=True)
    (exp / 'models').mkdir()
    for it in (200, 400):
        torch.save({'iter': it}, exp / 'training_states' / f'{it}.state')
        torch.save({'params': torch.zeros(10)}, exp / 'models' / f'net_g_{it}.pth')
    iteration, message = protocol.snapshot_state('results/dpdd', 'Run', root=str(tmp_path))
    saved = tmp_path / 'results' / 'dpdd' / 'state' / 'Run'
    assert iteration == 400 and sorted(os.listdir(saved)) == ['400.state', 'net_g_400.pth'] and 'saved' in message
    assert protocol.snapshot_state('results/dpdd', 'Run', root=str(tmp_path), limit_mb=1e-6)[0] is None
    # a fresh checkout: the committed state goes back where --auto_resume finds it, not over a newer one
    import shutil
    shutil.rmtree(tmp_path / 'experiments')
    assert protocol.restore_state('results/dpdd', 'Run', root=str(tmp_path)) == 400
    assert (exp / 'training_states' / '400.state').is_file() and (exp / 'models' / 'net_g_400.pth').is_file()
    assert protocol.restore_state('results/dpdd', 'Run', root=str(tmp_path)) is None
    assert protocol.snapshot_state('results/dpdd', 'None', root=str(tmp_path))[0] is None
