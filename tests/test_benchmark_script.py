"""The benchmark (despike_basicsr.evaluation.benchmarking, and its command line scripts/benchmark.py) end to end on a
tiny spike LMDB written here, with checkpoints saved here."""
import json
import subprocess
import sys
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.metrics import calculate_psnr
from basicsr.utils import tensor2img
from basicsr.utils.registry import ARCH_REGISTRY
from scipy import ndimage

from despike_basicsr.evaluation import benchmarking
from despike_basicsr.checkpoint import CheckpointError
from despike_basicsr.data.spike_lmdb import SpikeLMDBWriter
from despike_basicsr.spike.camera import simulate
from despike_basicsr.spike.optics import display_to_linear
from despike_basicsr.spike.reconstruct import rate_to_display, tfp

HEIGHT, WIDTH, FRAMES = 24, 28, 64
GKMNET = {'type': 'GKMNet', 'in_channels': 1, 'width': 4, 'num_blocks': 1}
NRKNET = {'type': 'NRKNet', 'in_channels': 1, 'widths': [8, 8, 8], 'num_blocks': [1, 1, 1]}


def _write_lmdb(path: str, count: int = 3) -> None:
    with SpikeLMDBWriter(path) as writer:
        for i in range(count):
            rng = np.random.default_rng(i)
            sharp = ndimage.gaussian_filter(rng.random((HEIGHT, WIDTH)), 1.0)
            sharp = (sharp - sharp.min()) / (sharp.max() - sharp.min())
            blurred = ndimage.gaussian_filter(display_to_linear(sharp), 1.5) * 0.9 + 0.05
            spikes = simulate(blurred, FRAMES, threshold=2.0, eta=1.0, seed=i)
            writer.add(f'scene_{i:02d}', sharp, {'threshold': 2.0, 'eta': 1.0, 'seed': i}, spikes=spikes)


def _write_options(folder, name: str, network: dict) -> str:
    opt = {'name': name, 'model_type': 'CascadeModel', 'scale': 1, 'num_gpu': 0,
           'front_end': {'type': 'tfp', 'window': 41, 'eta': 1.0, 'threshold': 2.0},
           'network_g': network, 'path': {'pretrain_network_g': None, 'strict_load_g': True},
           'val': {'save_img': False, 'suffix': None}}
    path = folder / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def _random_net(network: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    options = dict(network)
    return ARCH_REGISTRY.get(options.pop('type'))(**options).eval()


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('bench')
    lmdb_path = str(root / 'tiny_test.lmdb')
    _write_lmdb(lmdb_path)
    gkm, nrk = _random_net(GKMNET, 1), _random_net(NRKNET, 2)
    torch.save({'params': gkm.state_dict()}, root / 'gkm.pth')  # BasicSR's layout
    torch.save(nrk.state_dict(), root / 'nrk.pth')  # a plain state dict
    return {'root': root, 'lmdb': lmdb_path, 'gkm': gkm, 'nrk': nrk,
            'gkm_opt': _write_options(root, 'gkm', GKMNET), 'nrk_opt': _write_options(root, 'nrk', NRKNET)}


def _tfp_display(spikes: np.ndarray) -> torch.Tensor:
    """The TFP image of a stored stream's centre frame."""
    return rate_to_display(tfp(torch.from_numpy(spikes).float()[None], window=41), eta=1.0, threshold=2.0)[:, None]


def test_end_to_end_table_json_and_picture(workspace):
    out_dir = str(workspace['root'] / 'results')
    root = workspace['root']
    report = benchmarking.run_benchmark(
        ['tfp', 'tfi', f"gkmnet_tfp:{workspace['gkm_opt']}:{root / 'gkm.pth'}",
         f"nrknet_tfp:{workspace['nrk_opt']}:{root / 'nrk.pth'}"],
        workspace['lmdb'], out_dir=out_dir, device='cpu', lpips_mode='off', grid_samples=2, crop=16, zoom=2)
    with open(osp.join(out_dir, 'benchmark.json'), encoding='utf-8') as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    methods = {m['name']: m for m in saved['methods']}
    assert list(methods) == ['tfp', 'tfi', 'gkmnet_tfp', 'nrknet_tfp']
    assert saved['num_samples'] == 3

    # Every number is recomputed here from the stored streams through the same reconstruction and metric.
    from despike_basicsr.data.spike_lmdb import SpikeLMDBReader
    reader = SpikeLMDBReader(workspace['lmdb'])
    expected = {'tfp': [], 'gkmnet_tfp': [], 'nrknet_tfp': []}
    expected_fit = {name: [] for name in expected}
    for key in sorted(reader.keys):
        spikes, gt = reader.read_sample(key)
        image = _tfp_display(spikes)
        with torch.no_grad():
            outputs = {'tfp': image, 'gkmnet_tfp': workspace['gkm'](image)[-1],
                       'nrknet_tfp': workspace['nrk'](image)[-1]}
        for name, output in outputs.items():
            expected[name].append(calculate_psnr(tensor2img([output]), gt, crop_border=0))
            x, target = output[0, 0].double().numpy(), gt.astype(np.float64) / 255.0
            gain, offset = np.polyfit(x.ravel(), target.ravel(), 1)  # least squares a·x + b
            fitted = np.clip(np.round(np.clip(gain * x + offset, 0, 1) * 255), 0, 255).astype(np.uint8)
            expected_fit[name].append(calculate_psnr(fitted, gt, crop_border=0))
    for name, values in expected.items():
        assert methods[name]['psnr'] == pytest.approx(np.mean(values), abs=1e-6), name
        assert methods[name]['psnr_fit'] == pytest.approx(np.mean(expected_fit[name]), abs=0.02), name
        assert methods[name]['psnr_fit'] > methods[name]['psnr'], name  # the best gain/offset can only lower the error
        per_sample = methods[name]['per_sample']
        assert list(per_sample) == sorted(reader.keys)
        assert [v['psnr'] for v in per_sample.values()] == pytest.approx(values, abs=1e-6), name
    assert methods['tfi']['psnr'] != methods['tfp']['psnr']

    gkm_params = sum(p.numel() for p in workspace['gkm'].parameters())
    assert methods['gkmnet_tfp']['params'] == gkm_params and methods['tfp']['params'] == 0
    for method in methods.values():
        assert 0 < method['ssim'] <= 1 and method['latency_ms_per_frame'] > 0
        assert method['lpips'] == 'n/a' and 'disabled' in method['lpips_note']

    table = open(osp.join(out_dir, 'benchmark.md'), encoding='utf-8').read()
    gkm = methods['gkmnet_tfp']
    assert f"| gkmnet_tfp | {gkm['psnr']:.2f} | {gkm['ssim']:.3f} | {gkm['psnr_fit']:.2f} |" in table
    per_image = table[table.index('## Per image'):]
    assert '| Image | tfp | tfi | gkmnet_tfp | nrknet_tfp |' in per_image
    score = methods['nrknet_tfp']['per_sample']['scene_01']
    assert f"| scene_01 | {methods['tfp']['per_sample']['scene_01']['psnr']:.2f} / " in per_image
    assert per_image.split('| scene_01 |')[1].splitlines()[0].endswith(f"{score['psnr']:.2f} / {score['ssim']:.3f} |")
    picture = cv2.imread(osp.join(out_dir, 'benchmark.png'), cv2.IMREAD_GRAYSCALE)
    tile = 16 * 2
    assert picture.shape == (22 + 2 * tile + 4, 5 * tile + 4 * 4)  # header + 2 rows; 4 methods + ground truth


def test_classical_fpn_rows_use_the_lmdb_calibration(tmp_path):
    """``tfp+fpn`` multiplies the rates by the LMDB's gamma (and gains over plain TFP on a sensor with FPN)."""
    from despike_basicsr.spike.fpn import FPNCalibration, save_fpn
    gain = np.random.default_rng(7).uniform(0.8, 1.2, (HEIGHT, WIDTH))
    lmdb_path = str(tmp_path / 'fpn.lmdb')
    with SpikeLMDBWriter(lmdb_path) as writer:
        streams = {}
        for i in range(2):
            sharp = ndimage.gaussian_filter(np.random.default_rng(i).random((HEIGHT, WIDTH)), 1.0)
            sharp = (sharp - sharp.min()) / (sharp.max() - sharp.min())
            spikes = simulate(display_to_linear(sharp) * 0.9 + 0.05, FRAMES, threshold=2.0, eta=1.0, gain=gain, seed=i)
            streams[f'scene_{i:02d}'] = (spikes, sharp)
            writer.add(f'scene_{i:02d}', sharp, {'threshold': 2.0, 'eta': 1.0, 'seed': i}, spikes=spikes)
        gamma = (1.0 / gain).astype(np.float32)
        calibration = FPNCalibration(response=(gain / 2).astype(np.float32), gamma=gamma, dark=np.zeros_like(gamma),
                                     bad=np.zeros(gamma.shape, bool), ref=0.5)
        save_fpn(writer.staging_path('fpn.npz'), calibration)
    report = benchmarking.run_benchmark(['tfp', 'tfp+fpn'], lmdb_path, out_dir=str(tmp_path / 'out'),
                                        lpips_mode='off', grid_samples=1, crop=8, zoom=1)
    plain, corrected = report['methods']
    assert (plain['name'], corrected['name']) == ('tfp', 'tfp_fpn')
    for key, (spikes, sharp) in streams.items():
        rate = tfp(torch.from_numpy(spikes).float()[None], window=41) * torch.from_numpy(gamma)
        expected = calculate_psnr(tensor2img([rate_to_display(rate, eta=1.0, threshold=2.0)[:, None]]),
                                  tensor2img([torch.from_numpy(sharp).float()[None, None]]), crop_border=0)
        assert corrected['per_sample'][key]['psnr'] == pytest.approx(expected, abs=1e-6)
    assert corrected['psnr'] > plain['psnr']
    with pytest.raises(ValueError, match='needs the LMDB to carry its FPN calibration fpn.npz'):
        benchmarking.run_benchmark(['tfp+fpn'], _tiny_lmdb(tmp_path), out_dir=str(tmp_path / 'out2'), lpips_mode='off')


def test_defocused_photographs_are_scored_against_the_ground_truth(tmp_path):
    """``defocused:ROOT`` scores the DPDD-layout photographs a prepare_dpdd.py LMDB was simulated from."""
    from despike_basicsr.data import preparation as prep
    root = tmp_path / 'DPDD'
    names = {}
    for i in range(2):
        (root / 'val_c' / 'source').mkdir(parents=True, exist_ok=True)
        (root / 'val_c' / 'target').mkdir(parents=True, exist_ok=True)
        sharp = ndimage.gaussian_filter(np.random.default_rng(i).random((HEIGHT, WIDTH)), 1.0)
        sharp = np.round(255 * (sharp - sharp.min()) / (sharp.max() - sharp.min())).astype(np.uint8)
        blurred = np.round(ndimage.gaussian_filter(sharp.astype(float), 2.0) * 0.8 + 20).astype(np.uint8)
        cv2.imwrite(str(root / 'val_c' / 'source' / f'1P0A{i:04d}.png'), blurred)
        cv2.imwrite(str(root / 'val_c' / 'target' / f'1P0A{i:04d}.png'), sharp)
        names[f'1P0A{i:04d}'] = blurred
    config = prep.SimulationConfig(mode='dpdd', steps=192, seed=1)
    lmdb_path = prep.prepare_lmdb([prep.SampleSpec(key=f'{i:04d}_{name}', sharp_path=str(root / 'val_c' / 'target' /
                                                   f'{name}.png'), blurred_path=str(root / 'val_c' / 'source' /
                                                   f'{name}.png')) for i, name in enumerate(names)],
                                  str(tmp_path / 'dpdd.lmdb'), config, tag='val', progress=False)
    report = benchmarking.run_benchmark([f'defocused:{root}', 'tfp'], lmdb_path, out_dir=str(tmp_path / 'out'),
                                        lpips_mode='off', grid_samples=1, crop=8, zoom=1)
    defocused = report['methods'][0]
    assert defocused['name'] == 'defocused' and defocused['kind'] == 'defocused' and defocused['params'] == 0
    from despike_basicsr.data.spike_lmdb import SpikeLMDBReader
    reader = SpikeLMDBReader(lmdb_path)
    for key in reader.keys:
        _, gt = reader.read_sample(key)
        expected = calculate_psnr(names[key.split('_', 1)[1]], gt, crop_border=0)  # the photograph as it is on disk
        assert defocused['per_sample'][key]['psnr'] == pytest.approx(expected, abs=0.05)
    assert defocused['psnr'] > report['methods'][1]['psnr']  # 192 noisy frames hold less than the photograph

    with pytest.raises(FileNotFoundError, match=r'sample 0000_1P0A0000: its photograph 1P0A0000\.png is in none of'):
        benchmarking.run_benchmark([f"defocused:{tmp_path / 'elsewhere'}"], lmdb_path, out_dir=str(tmp_path / 'o2'),
                                   lpips_mode='off')
    cv2.imwrite(str(root / 'val_c' / 'source' / '1P0A0001.png'), np.zeros((HEIGHT, WIDTH + 4), np.uint8))
    with pytest.raises(ValueError, match=rf"'defocused', sample 0001_1P0A0001: the image is {WIDTH + 4}x{HEIGHT} but "
                                         rf"the ground truth is {WIDTH}x{HEIGHT}"):
        benchmarking.run_benchmark([f'defocused:{root}'], lmdb_path, out_dir=str(tmp_path / 'o4'), lpips_mode='off')
    with pytest.raises(ValueError, match=r"needs an LMDB made by scripts/prepare_dpdd.py .* mode None"):
        benchmarking.run_benchmark([f'defocused:{root}'], _tiny_lmdb(tmp_path), out_dir=str(tmp_path / 'o3'),
                                   lpips_mode='off')


def _tiny_lmdb(folder) -> str:
    path = str(folder / 'plain.lmdb')
    _write_lmdb(path, count=1)
    return path


def test_weights_default_to_the_options_path_and_missing_ones_are_named(workspace, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'weights file .*missing\.pth does not exist'):
        benchmarking.run_benchmark([f"gkm:{workspace['gkm_opt']}:{tmp_path / 'missing.pth'}"], workspace['lmdb'],
                                   out_dir=str(tmp_path), lpips_mode='off')
    with pytest.raises(ValueError, match=r"no weights given and .*gkm\.yml has no path\.pretrain_network_g"):
        benchmarking.run_benchmark([f"gkm:{workspace['gkm_opt']}"], workspace['lmdb'], out_dir=str(tmp_path),
                                   lpips_mode='off')


def test_command_line_writes_the_same_outputs(workspace, tmp_path, repo_root, subprocess_env):
    """scripts/benchmark.py: the flags reach run_benchmark, the table is printed, the command is recorded."""
    argv = ['--lmdb', workspace['lmdb'], '--out-dir', str(tmp_path / 'out'), '--device', 'cpu', '--lpips', 'off',
            '--grid-samples', '1', '--crop', '8', '--zoom', '1', '--tfp-window', '21', '--methods', 'tfp', 'tfi']
    done = subprocess.run([sys.executable, osp.join(repo_root, 'scripts', 'benchmark.py')] + argv,
                          capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((tmp_path / 'out' / 'benchmark.json').read_text())
    assert saved['command'] == 'python scripts/benchmark.py ' + ' '.join(argv)
    assert [m['name'] for m in saved['methods']] == ['tfp', 'tfi'] and saved['val_len'] == 192
    assert '[benchmark] tfi: PSNR' in done.stdout and '| Method | PSNR (dB) |' in done.stdout
    assert (tmp_path / 'out' / 'benchmark.md').read_text() in done.stdout
    assert cv2.imread(str(tmp_path / 'out' / 'benchmark.png'), cv2.IMREAD_GRAYSCALE).shape == (22 + 8, 3 * 8 + 2 * 4)


def test_method_specs_and_checkpoint_layouts(tmp_path):
    assert benchmarking.parse_method('TFP').kind == 'tfp'
    method = benchmarking.parse_method('despike:options/test_despike_demo.yml:exp/net_g_latest.pth')
    assert (method.name, method.kind, method.options, method.weights) == (
        'despike', 'model', 'options/test_despike_demo.yml', 'exp/net_g_latest.pth')
    long_tfp = benchmarking.parse_method('tfp:191')
    assert (long_tfp.name, long_tfp.kind, long_tfp.window) == ('tfp191', 'tfp', 191)
    with pytest.raises(ValueError, match=r"method 'rsir': expected 'tfp', 'tfp:WINDOW', 'tfi' \(each optionally"):
        benchmarking.parse_method('rsir')
    corrected = benchmarking.parse_method('tfp:191+fpn')
    assert (corrected.name, corrected.kind, corrected.window, corrected.fpn) == ('tfp191_fpn', 'tfp', 191, True)
    assert benchmarking.parse_method('TFI+fpn').name == 'tfi_fpn' and not long_tfp.fpn
    photo = benchmarking.parse_method('defocused:../shared/data/dpdd_gray768')
    assert (photo.name, photo.kind, photo.options) == ('defocused', 'defocused', '../shared/data/dpdd_gray768')
    for bad in ('despike:options/test_despike_demo.yml+fpn', 'tfp:x+fpn', 'tfp+gamma', 'defocused', 'defocused+fpn'):
        with pytest.raises(ValueError, match='expected'):
            benchmarking.parse_method(bad)

    state = {'w': torch.ones(2)}
    torch.save({'params': {'w': torch.zeros(2)}, 'params_ema': state}, tmp_path / 'both.pth')
    assert torch.equal(benchmarking.load_state_dict(str(tmp_path / 'both.pth'))['w'], torch.ones(2))
    assert torch.equal(benchmarking.load_state_dict(str(tmp_path / 'both.pth'), 'params')['w'], torch.zeros(2))
    torch.save({'module.w': torch.ones(2)}, tmp_path / 'ddp.pth')
    assert list(benchmarking.load_state_dict(str(tmp_path / 'ddp.pth'))) == ['w']
    torch.save({'params': 3}, tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError, match='bad.pth: expected a state dict of tensors'):
        benchmarking.load_state_dict(str(tmp_path / 'bad.pth'))


# ----------------------------------------------------------------------------------------------------------------------
# Differences that mean something: tile PSNRs, paired differences and their intervals (issue 22)


def test_tile_psnrs_on_known_images():
    gt = np.zeros((5, 4), np.uint8)  # 5 rows: the last one does not divide into 2 tiles and is left out
    result = gt.copy()
    result[:2, :2] = 1  # top-left tile: MSE 1
    result[2:4, 2:] = 255  # bottom-right tile: MSE 255²
    values = benchmarking.tile_psnrs(result, gt, 2)
    assert values == pytest.approx([10 * np.log10(255.0**2), benchmarking.TILE_PSNR_CAP, benchmarking.TILE_PSNR_CAP,
                                    0.0])
    assert benchmarking.tile_psnrs(result, gt, 1) == pytest.approx(
        [10 * np.log10(255.0**2 / np.mean((result.astype(float) - gt)**2))])
    with pytest.raises(ValueError, match='cannot split a 5x4 image into 6x6 tiles'):
        benchmarking.tile_psnrs(result, gt, 6)


def test_paired_difference_stats_on_known_numbers():
    reference = {k: [20.0] for k in 'abcd'}
    one_tile = benchmarking.paired_difference_stats({'a': [21.0], 'b': [22.0], 'c': [23.0], 'd': [24.0]}, reference)
    # differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), t(0.975, 3) = 3.182446305
    assert one_tile['mean'] == pytest.approx(2.5) and one_tile['sd'] == pytest.approx((5 / 3)**0.5)
    half = 3.182446305 * (5 / 3)**0.5 / 2
    assert one_tile['t_interval'] == pytest.approx([2.5 - half, 2.5 + half], abs=1e-6)
    assert one_tile['per_image'] == pytest.approx({'a': 1.0, 'b': 2.0, 'c': 3.0, 'd': 4.0})
    assert one_tile['verdict'] == 'higher' and one_tile['tiles'] == 4  # one tile per image: the t-interval decides

    # tiles all 0.5 dB lower: every bootstrap resample has mean -0.5
    constant = benchmarking.paired_difference_stats({k: [19.5, 29.5] for k in 'ab'}, {k: [20.0, 30.0] for k in 'ab'})
    assert constant['tile_mean'] == pytest.approx(-0.5)
    assert constant['bootstrap_interval'] == pytest.approx([-0.5, -0.5])
    assert constant['verdict'] == 'lower' and constant['tiles'] == 4

    # one image better, one worse by the same amount: within noise, however many tiles
    noise = benchmarking.paired_difference_stats({'a': [21.0] * 8, 'b': [19.0] * 8}, {'a': [20.0] * 8, 'b': [20.0] * 8})
    assert noise['mean'] == pytest.approx(0.0) and noise['verdict'] == 'within noise'
    low, high = noise['bootstrap_interval']
    assert low < 0 < high and low == pytest.approx(-1.0) and high == pytest.approx(1.0)
    # the images are resampled first: 8 identical tiles per image do not shrink the interval of 2 images
    assert benchmarking.paired_difference_stats({'a': [21.0] * 8, 'b': [19.0] * 8},
                                                {'a': [20.0] * 8, 'b': [20.0] * 8}, seed=0) == noise

    # whole-image scores override the tile means for the per-image differences
    given = benchmarking.paired_difference_stats({'a': [21.0], 'b': [21.0]}, {'a': [20.0], 'b': [20.0]},
                                                 {'a': 30.0, 'b': 31.0}, {'a': 29.0, 'b': 29.0})
    assert given['per_image'] == pytest.approx({'a': 1.0, 'b': 2.0})
    with pytest.raises(ValueError, match='same, non-empty images on both sides'):
        benchmarking.paired_difference_stats({'a': [1.0]}, {'b': [1.0]})
    with pytest.raises(ValueError, match='image a: 2 tile scores against 1'):
        benchmarking.paired_difference_stats({'a': [1.0, 2.0]}, {'a': [1.0]})


def test_a_difference_is_real_only_where_both_intervals_exclude_zero_on_one_side():
    reference = {k: [20.0, 20.0] for k in 'abcd'}
    tiles_up = {k: [21.0, 21.0] for k in 'abcd'}  # every tile +1 dB: the bootstrap interval is [+1, +1]
    # but the whole images disagree (+3, -2, +1, +2 dB): the t-interval over the images contains 0
    spread = benchmarking.paired_difference_stats(tiles_up, reference, {'a': 23.0, 'b': 18.0, 'c': 21.0, 'd': 22.0},
                                                  {k: 20.0 for k in 'abcd'})
    assert spread['bootstrap_interval'] == pytest.approx([1.0, 1.0])
    assert spread['t_interval'][0] < 0 < spread['t_interval'][1]
    assert spread['verdict'] == 'within noise'
    # the other way round: the images agree (+1 each), the tiles of each image straddle 0
    straddle = benchmarking.paired_difference_stats({k: [25.0, 17.0] for k in 'abcd'}, reference,
                                                    {k: 21.0 for k in 'abcd'}, {k: 20.0 for k in 'abcd'})
    assert straddle['t_interval'] == pytest.approx([1.0, 1.0])
    assert straddle['bootstrap_interval'][0] < 0 < straddle['bootstrap_interval'][1]
    assert straddle['verdict'] == 'within noise'
    # both exclude 0, on opposite sides: no verdict either
    assert benchmarking.verdict_of([0.5, 1.5], [-1.0, -0.2]) == 'within noise'
    assert benchmarking.verdict_of([0.5, 1.5], [0.1, 0.9]) == 'higher'
    assert benchmarking.verdict_of([-1.5, -0.5], [-0.9, -0.1]) == 'lower'
    assert benchmarking.verdict_of([float('nan'), float('nan')], [0.1, 0.9]) == 'within noise'  # one image
    one_image = benchmarking.paired_difference_stats({'a': [22.0, 23.0]}, {'a': [20.0, 20.0]})
    assert one_image['bootstrap_interval'][0] > 0 and one_image['verdict'] == 'within noise'
    table = benchmarking.differences_table({'reference': 'despike', 'tiles_per_side': 2,
                                            'differences': {'tfp': spread}})
    assert table[2].endswith('The verdict: "higher" / "lower": the t-interval over the images and the bootstrap '
                             'interval over their tiles both exclude 0, on the same side; otherwise "within noise" '
                             '(also with one image, which has no t-interval).')


def test_benchmark_reports_paired_differences_to_the_reference(workspace, tmp_path):
    root = workspace['root']
    report = benchmarking.run_benchmark(
        ['tfp', 'tfi', f"gkm:{workspace['gkm_opt']}:{root / 'gkm.pth'}"], workspace['lmdb'],
        out_dir=str(tmp_path), lpips_mode='off', grid_samples=1, crop=8, tiles=2, reference='tfp', stem='rows')
    assert (tmp_path / 'rows.json').is_file() and (tmp_path / 'rows.md').is_file() and (tmp_path / 'rows.png').is_file()
    methods = {m['name']: m for m in report['methods']}
    assert all(len(s['tile_psnr']) == 4 for s in methods['tfi']['per_sample'].values())
    assert set(report['differences']) == {'tfi', 'gkm'}
    tfi = report['differences']['tfi']
    for key, diff in tfi['per_image'].items():
        scores = [methods[name]['per_sample'][key]['psnr'] for name in ('tfi', 'tfp')]
        assert diff == pytest.approx(scores[0] - scores[1])
    assert tfi['tiles'] == 12 and tfi['verdict'] in ('higher', 'lower', 'within noise')
    text = (tmp_path / 'rows.md').read_text()
    assert '## Paired differences to tfp' in text and 'Within noise of tfp:' in text
    # no method named like the reference: nothing is compared
    assert benchmarking.run_benchmark(['tfp'], workspace['lmdb'], out_dir=str(tmp_path), lpips_mode='off',
                                      tiles=2)['differences'] == {}


def test_short_streams_a_network_cannot_read_are_listed_not_fatal(workspace, tmp_path):
    """--val-len 6, shorter than the 8 steps DeSpikeNet reads at least: the row says why, the others are scored;
    --val-len 32, shorter than its smallest window (48), is read with every window clipped to the stream."""
    network = {'type': 'DeSpikeNet', 'num_feat': 4, 'windows': [48, 64], 'num_kernels': 2, 'kernel_size': 5,
               'num_scales': 2, 'num_blocks': 1, 'num_heads': 1}
    opt = {'name': 'small_despike', 'model_type': 'DeSpikeModel', 'scale': 1, 'num_gpu': 0, 'network_g': network,
           'path': {'pretrain_network_g': None, 'strict_load_g': True}, 'val': {'save_img': False}}
    (tmp_path / 'despike.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    torch.save({'params': _random_net(network, 0).state_dict()}, tmp_path / 'despike.pth')
    spec = f"despike:{tmp_path / 'despike.yml'}:{tmp_path / 'despike.pth'}"
    report = benchmarking.run_benchmark(['tfp', spec], workspace['lmdb'], out_dir=str(tmp_path / 'short'),
                                        lpips_mode='off', val_len=6, tiles=2)
    despike = report['methods'][1]
    assert 'at least 8 time steps, got 6' in despike['unavailable'] and despike['per_sample'] == {}
    assert despike['psnr'] is None  # valid JSON: no NaN
    assert report['methods'][0]['psnr'] > 0 and report['differences'] == {}
    assert 'despike: not scored on these streams' in (tmp_path / 'short' / 'benchmark.md').read_text()
    for val_len in (32, 64):
        long = benchmarking.run_benchmark(['tfp', spec], workspace['lmdb'], out_dir=str(tmp_path / f'long{val_len}'),
                                          lpips_mode='off', val_len=val_len, tiles=2)
        assert 'unavailable' not in long['methods'][1] and set(long['differences']) == {'tfp'}
