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
                     '| despike | evaluate | x | 7 | 7 | 1 |\n'
                     '| partial | train | p.yml | 30 | 20 | 1 |\n| partial | train | p.yml (amp bf16) | 10 | 9 | 1 |\n')
    weights = tmp_path / 'w.pth'
    weights.write_bytes(b'0' * 2048)
    protocol.write_row(results, 'despike', _report(tmp_path / 'a' / 'benchmark.json', 'despike', 0.0),
                       weights=str(weights))
    protocol.write_row(results, 'ahead', _report(tmp_path / 'b' / 'benchmark.json', 'x', 0.8, seed=1))
    protocol.write_row(results, 'same', _report(tmp_path / 'c' / 'benchmark.json', 'x', 0.0, seed=2))
    protocol.write_row(results, 'four', _report(tmp_path / 'd' / 'benchmark.json', 'x', 0.0, images=4))
    record = json.loads(open(os.path.join(results, 'rows', 'despike.json')).read())
    assert record['training'] == {'wall_s': 150.5, 'cpu_s': 130.0, 'precisions': ['fp32']}
    assert record['weights_bytes'] == 2048
    assert record['num_samples'] == 16 and '_images' not in record and len(record['per_sample']) == 16

    # a partial training (committed state at iteration 400) and one not started
    state = tmp_path / 'results' / 'dpdd' / 'state' / 'Partial'
    state.mkdir(parents=True)
    torch.save({'iter': 400}, state / '400.state')
    torch.save({'params': {}}, state / 'net_g_400.pth')
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
    assert by_row['partial']['training'] == {'wall_s': 40.0, 'cpu_s': 29.0, 'precisions': ['fp32', 'bf16']}
    assert '| 40 / 29 (fp32 then bf16) |' in table and '150 / 130 |' in table  # float32 alone is not marked
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
    with pytest.raises(ValueError, match='200.state|400.state: not a BasicSR training state'):
        protocol.snapshot_state('results/dpdd', 'Run', root=str(tmp_path), limit_mb=1e-6)  # cannot be made compact
    # a fresh checkout: the committed state goes back where --auto_resume finds it, not over a newer one
    import shutil
    shutil.rmtree(tmp_path / 'experiments')
    assert protocol.restore_state('results/dpdd', 'Run', root=str(tmp_path)) == 400
    assert (exp / 'training_states' / '400.state').is_file() and (exp / 'models' / 'net_g_400.pth').is_file()
    assert protocol.restore_state('results/dpdd', 'Run', root=str(tmp_path)) is None
    assert protocol.snapshot_state('results/dpdd', 'None', root=str(tmp_path))[0] is None
    # once the row is scored its state goes; the training it came from stays
    assert protocol.drop_state('results/dpdd', 'Run', root=str(tmp_path)) == str(saved)
    assert not saved.exists() and (exp / 'models' / 'net_g_400.pth').is_file()
    assert protocol.drop_state('results/dpdd', 'Run', root=str(tmp_path)) is None


def _experiment(root, name, iteration, width=4096):
    """A BasicSR-like experiment: a linear layer trained one Adam step (moments in the state), params and EMA."""
    torch.manual_seed(0)
    net = torch.nn.Linear(width, 8)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    net(torch.ones(1, width)).sum().backward()
    optimizer.step()
    exp = root / 'experiments' / name
    (exp / 'training_states').mkdir(parents=True)
    (exp / 'models').mkdir()
    torch.save({'epoch': 0, 'iter': iteration, 'optimizers': [optimizer.state_dict()],
                'schedulers': [scheduler.state_dict()], 'rng': {'numpy': np.random.get_state()}},
               exp / 'training_states' / f'{iteration}.state')
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save({'params': params, 'params_ema': params}, exp / 'models' / f'net_g_{iteration}.pth')
    return params


def test_a_state_over_the_limit_is_kept_compact_and_restored_on_a_fresh_clone(tmp_path):
    """Over the size limit: half-precision params, no Adam moments, a restart record, the cascade's front end kept (in
    front_ends/);
    a fresh clone gets all of it back (front end included, never over a file that is there), the table says so."""
    params = _experiment(tmp_path, 'Big', 600)
    front = tmp_path / 'experiments' / 'Stage' / 'models' / 'net_g_latest.pth'
    front.parent.mkdir(parents=True)
    front_params = {'conv.weight': torch.randn(4, 4)}
    torch.save({'params_ema': front_params, 'params': {'conv.weight': torch.zeros(4, 4)}}, front)
    options = tmp_path / 'options' / 'big.yml'
    options.parent.mkdir()
    options.write_text(yaml.safe_dump({'name': 'Big', 'train': {'total_iter': 1200}, 'front_end': {
        'type': 'learned', 'network': {'type': 'RSIR'}, 'weights': 'experiments/Stage/models/net_g_latest.pth'}}))
    full = sum(f.stat().st_size for f in (tmp_path / 'experiments' / 'Big').rglob('*')) / 2**20
    limit = full * 0.6
    iteration, message = protocol.snapshot_state('results/dpdd', 'Big', root=str(tmp_path), limit_mb=limit,
                                                 options='options/big.yml')
    saved = tmp_path / 'results' / 'dpdd' / 'state' / 'Big'
    assert iteration == 600 and 'compact' in message and 'front end in results/dpdd/front_ends/Stage.pth' in message
    assert sorted(os.listdir(saved)) == ['600.state', 'net_g_600.pth']
    assert sum(f.stat().st_size for f in saved.iterdir()) / 2**20 < limit
    state = torch.load(saved / '600.state', weights_only=False)
    assert state['optimizers'][0]['state'] == {} and state['optimizers'][0]['param_groups'][0]['lr'] == 1e-3
    assert state['restart'] == {'optimizer': True, 'ema': True, 'warmup_iter': protocol.RESTART_WARMUP_ITER,
                                'precision': 'float16'}
    assert state['iter'] == 600 and 'rng' in state and 'schedulers' in state
    net = torch.load(saved / 'net_g_600.pth', weights_only=True)
    assert set(net) == {'params'} and net['params']['weight'].dtype == torch.float16
    kept = tmp_path / 'results' / 'dpdd' / 'front_ends' / 'Stage.pth'
    assert torch.load(kept, weights_only=True)['params']['conv.weight'].dtype == torch.float16
    report = protocol.assemble('results/dpdd', [('big', 'options/big.yml')], root=str(tmp_path))
    assert report['rows'][0]['compact_state'] is True
    assert 'still training (600 / 1200 iterations; committed in half precision)' in protocol.markdown(report)

    # a fresh clone: the compact state comes back in single precision, the front end where the options want it
    import shutil
    shutil.rmtree(tmp_path / 'experiments')
    assert protocol.restore_state('results/dpdd', 'Big', root=str(tmp_path), options='options/big.yml') == 600
    exp = tmp_path / 'experiments' / 'Big'
    restored = torch.load(exp / 'models' / 'net_g_600.pth', weights_only=True)['params']
    assert restored['weight'].dtype == torch.float32
    assert torch.allclose(restored['weight'], params['weight'], rtol=1e-3, atol=1e-6)
    assert not torch.equal(restored['weight'], params['weight'])  # it went through half precision
    assert torch.load(exp / 'training_states' / '600.state', weights_only=False)['restart']['optimizer'] is True
    assert torch.allclose(torch.load(front, weights_only=True)['params']['conv.weight'], front_params['conv.weight'],
                          rtol=1e-3, atol=1e-3)
    assert [r['iteration'] for r in protocol.restarts_of(str(exp / 'models' / 'net_g_latest.pth'))] == [600]
    # an existing front end is never replaced
    torch.save({'params': {'conv.weight': torch.ones(4, 4)}}, front)
    shutil.rmtree(exp)
    protocol.restore_state('results/dpdd', 'Big', root=str(tmp_path), options='options/big.yml')
    assert torch.equal(torch.load(front, weights_only=True)['params']['conv.weight'], torch.ones(4, 4))

    # the finished row says how it was trained
    report_path = _report(tmp_path / 'a' / 'benchmark.json', 'big', 0.0)
    protocol.write_row('results/dpdd_rows', 'despike', _report(tmp_path / 'r' / 'benchmark.json', 'despike', 0.0))
    protocol.write_row('results/dpdd_rows', 'big', report_path, weights=str(exp / 'models' / 'net_g_latest.pth'))
    table = protocol.markdown(protocol.assemble('results/dpdd_rows', [('despike', None), ('big', None)]))
    assert 'Trained resumed from a half-precision state at iteration 600 (Adam and EMA restarted, 100' in table


def test_compact_snapshot_needs_the_front_end_and_a_damaged_state_is_named(tmp_path):
    _experiment(tmp_path, 'Big', 200)
    options = tmp_path / 'big.yml'
    options.write_text(yaml.safe_dump({'name': 'Big', 'front_end': {'type': 'learned', 'weights': 'missing.pth'}}))
    with pytest.raises(FileNotFoundError, match='front end missing.pth is missing: train its stage first'):
        protocol.snapshot_state('results', 'Big', root=str(tmp_path), limit_mb=0.01, options='big.yml')
    with pytest.raises(FileNotFoundError, match='named by big.yml is missing and .*front_ends/missing.pth does not'):
        protocol.restore_state('results', 'Big', root=str(tmp_path), options='big.yml')
    assert not (tmp_path / 'results' / 'state' / 'Big' / '200.state').exists()
    iteration, message = protocol.snapshot_state('results', 'Big', root=str(tmp_path), limit_mb=1e-6)
    assert iteration is None and 'compact, over 0 MB: not committed' in message
    assert not (tmp_path / 'results' / 'state' / 'Big' / '200.state').exists()
    state = tmp_path / 'results' / 'state' / 'Damaged'
    state.mkdir(parents=True)
    (state / '400.state').write_bytes(b'not a state')
    (tmp_path / 'options').mkdir()
    (tmp_path / 'options' / 'd.yml').write_text(yaml.safe_dump({'name': 'Damaged', 'train': {'total_iter': 9}}))
    with pytest.raises(ValueError, match='400.state is not a readable training state'):
        protocol.assemble('results', [('d', 'options/d.yml')], root=str(tmp_path))


def test_snapshot_while_training_waits_for_a_settled_state_and_skips_one_already_saved(tmp_path):
    exp = tmp_path / 'experiments' / 'Run'
    (exp / 'training_states').mkdir(parents=True)
    (exp / 'models').mkdir()
    torch.save({'iter': 200}, exp / 'training_states' / '200.state')
    torch.save({'params': torch.zeros(10)}, exp / 'models' / 'net_g_200.pth')
    iteration, message = protocol.snapshot_state('results', 'Run', root=str(tmp_path), settled_s=3600)
    assert iteration is None and 'left for later' in message  # just written: perhaps not complete yet
    saved = tmp_path / 'results' / 'state' / 'Run'
    assert not saved.exists()
    old = os.path.getmtime(exp / 'models' / 'net_g_200.pth') - 7200
    for path in (exp / 'training_states' / '200.state', exp / 'models' / 'net_g_200.pth'):
        os.utime(path, (old, old))
    assert protocol.snapshot_state('results', 'Run', root=str(tmp_path), settled_s=3600)[0] == 200
    assert sorted(os.listdir(saved)) == ['200.state', 'net_g_200.pth']
    before = os.path.getmtime(saved / '200.state')
    iteration, message = protocol.snapshot_state('results', 'Run', root=str(tmp_path), settled_s=3600)
    assert iteration == 200 and 'already in' in message and os.path.getmtime(saved / '200.state') == before
    # the command line the protocol script's watcher calls
    assert protocol.main(['snapshot', '--results', str(tmp_path / 'r2'), '--name', 'nothing', '--settled', '60']) == 0


def test_short_window_table_says_why_a_row_has_no_scores(tmp_path):
    """results/<level>/short_<frames>/: rows scored there, a network that refuses short streams kept as such, and a
    row without a file explained by its full-length row (scored before, weights gone; or not trained yet)."""
    full, short = 'results/dpdd', 'results/dpdd/short_32'
    for row, offset in (('despike', 0.0), ('tfp', -2.0)):
        path = _report(tmp_path / 'b' / row / 'benchmark.json', row, offset)
        report = json.loads(open(path).read())
        report['val_len'] = 32
        open(path, 'w').write(json.dumps(report))
        protocol.write_row(str(tmp_path / short), row, path)
    refused = tmp_path / 'b' / 'spk2imgnet.json'
    refused.write_text(json.dumps({'lmdb': 's.lmdb', 'num_samples': 16, 'methods': [
        {'name': 'spk2imgnet', 'unavailable': 'needs 41 frames, got 32'}]}))
    protocol.write_row(str(tmp_path / short), 'spk2imgnet', str(refused))
    protocol.write_row(str(tmp_path / full), 'tfp_gkmnet', _report(tmp_path / 'b' / 'full.json', 'tfp_gkmnet', 0.1))
    report = protocol.assemble(short, [(r, None) for r in ('despike', 'tfp', 'spk2imgnet', 'tfp_gkmnet', 'rsir')],
                               root=str(tmp_path), full_results=full)
    rows = {e['row']: e for e in report['rows']}
    assert rows['tfp']['status'] == 'scored' and rows['tfp']['difference']['verdict'] == 'lower'
    assert rows['spk2imgnet'] == {'row': 'spk2imgnet', 'status': 'not scored', 'reason': 'needs 41 frames, got 32'}
    assert 'weights not kept' in rows['tfp_gkmnet']['reason'] and rows['rsir']['reason'] == 'not trained yet'
    text = protocol.markdown(report)
    assert '| tfp | scored (16 images, 32-step streams) |' in text and 'not scored: needs 41 frames, got 32' in text
    with pytest.raises(ValueError, match='holds no scores'):  # neither scores nor a reason: an error, as before
        refused.write_text(json.dumps({'methods': [{'name': 'spk2imgnet'}]}))
        protocol.write_row(str(tmp_path / short), 'spk2imgnet', str(refused))
