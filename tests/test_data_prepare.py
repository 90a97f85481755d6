"""Data preparation: DPDD layout / own folders / demo -> spike LMDB, reproducibility, atomicity and clear errors."""
import importlib.util
import os
import subprocess

import cv2
import numpy as np
import pytest

from despike_basicsr.data import preparation as prep
from despike_basicsr.data.scenes import generate_scene
from despike_basicsr.data.spike_lmdb import SpikeLMDBReader
from despike_basicsr.spike.fpn import load_fpn
from despike_basicsr.spike.reconstruct import tfp

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts')
# DPDD's blurred and sharp files carry different names; only their sorted order pairs them.
SOURCE_NAMES = ['1P0A1001.png', '1P0A1004.png', '1P0A1010.png']
TARGET_NAMES = ['a_0007.png', 'a_0012.png', 'a_0020.png']


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rgb_scene(seed, height=40, width=56):
    """A linear RGB scene with a tint per channel, so luminance weighting matters."""
    intensity, depth = generate_scene(height, width, seed)
    tint = np.array([0.6, 1.0, 0.8], np.float32)[np.random.default_rng(seed).permutation(3)]
    return np.clip(intensity[:, :, None] * tint, 0, 1), depth


def _write16(path, linear_rgb):
    display = np.power(linear_rgb, 1 / 2.2)
    cv2.imwrite(str(path), cv2.cvtColor((display * 65535).round().astype(np.uint16), cv2.COLOR_RGB2BGR))


@pytest.fixture()
def dpdd_root(tmp_path):
    root = tmp_path / 'DPDD'
    for split, count in (('train', 3), ('test', 2)):
        (root / f'{split}_c' / 'source').mkdir(parents=True)
        (root / f'{split}_c' / 'target').mkdir(parents=True)
        for i in range(count):
            sharp, _ = _rgb_scene(10 * i + len(split))
            blurred = np.stack([cv2.GaussianBlur(sharp[:, :, c], (0, 0), 2.0) for c in range(3)], axis=2)
            _write16(root / f'{split}_c' / 'source' / SOURCE_NAMES[i], blurred)
            _write16(root / f'{split}_c' / 'target' / TARGET_NAMES[i], sharp)
    return root


def _expected_display_gray(path):
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535
    luminance = np.power(bgr[:, :, ::-1], 2.2) @ np.array([0.2126, 0.7152, 0.0722])
    return np.power(luminance, 1 / 2.2) * 255


def test_dpdd_layout_to_lmdb(dpdd_root, tmp_path):
    out = tmp_path / 'dpdd_train.lmdb'
    code = _script('prepare_dpdd').main(['--dpdd-root', str(dpdd_root), '--split', 'train', '--out', str(out),
                                         '--steps', '200', '--seed', '3', '--no-progress'])
    assert code == 0
    reader = SpikeLMDBReader(str(out))
    assert len(reader) == 3
    for i, key in enumerate(reader.keys):
        meta = reader.meta(key)
        assert (meta['T'], meta['H'], meta['W']) == (200, 40, 56)
        assert meta['blurred_file'] == SOURCE_NAMES[i] and meta['sharp_file'] == TARGET_NAMES[i]
        assert meta['threshold'] == 2.0 and meta['eta'] == 1.0 and meta['gain_std'] == 0.058
        assert meta['mode'] == 'dpdd' and meta['dataset_seed'] == 3 and isinstance(meta['seed'], int)
        spikes, gt = reader.read_sample(key)
        # Ground truth: display-referred grayscale (linear Rec. 709 luminance, then gamma) of the sharp target.
        expected = _expected_display_gray(dpdd_root / 'train_c' / 'target' / TARGET_NAMES[i])
        assert np.abs(gt.astype(np.float64) - expected).max() <= 1.0
        # Spikes: the firing rate follows the linear luminance of the *blurred* source, rate = eta * I / theta.
        blurred_linear = np.power(_expected_display_gray(dpdd_root / 'train_c' / 'source' / SOURCE_NAMES[i]) / 255,
                                  2.2)
        rate = tfp(spikes, window=200)
        assert np.abs(rate * 2.0 - blurred_linear).mean() < 0.03
        sharp_linear = np.power(expected / 255, 2.2)
        assert np.abs(rate * 2.0 - blurred_linear).mean() < np.abs(rate * 2.0 - sharp_linear).mean()
        # The defocused photograph, processed as the ground truth is: a learned front end's training target.
        assert meta['blurred'] is True
        expected_blurred = _expected_display_gray(dpdd_root / 'train_c' / 'source' / SOURCE_NAMES[i])
        assert np.abs(reader.read_blurred(key).astype(np.float64) - expected_blurred).max() <= 1.0
    gamma = load_fpn(str(out / 'fpn.npz'), shape=(40, 56))
    gain, _ = prep.camera.sample_fpn((40, 56), 0.058, seed=prep.sensor_seed(3))
    np.testing.assert_allclose(gamma, np.median(gain) / gain, rtol=1e-4)


def test_same_seed_same_bytes_other_seed_differs(dpdd_root, tmp_path):
    main = _script('prepare_dpdd').main
    for name, seed in (('a', 1), ('b', 1), ('c', 2)):
        assert main(['--dpdd-root', str(dpdd_root), '--split', 'test', '--out', str(tmp_path / f'{name}.lmdb'),
                     '--steps', '64', '--seed', str(seed), '--no-progress']) == 0
    streams = {name: SpikeLMDBReader(str(tmp_path / f'{name}.lmdb')).read_sample('0000_a_0007')[0] for name in 'abc'}
    np.testing.assert_array_equal(streams['a'], streams['b'])
    assert (streams['a'] != streams['c']).mean() > 0.01


def test_thinlens_mode_and_scale(dpdd_root, tmp_path):
    out = tmp_path / 'thin.lmdb'
    assert _script('prepare_dpdd').main([
        '--dpdd-root', str(dpdd_root), '--split', 'train', '--out', str(out), '--steps', '16', '--mode', 'thinlens',
        '--sigma-range', '1.5', '2.5', '--scale', '0.5', '--gain-std', '0', '--shot-noise', '--no-progress'
    ]) == 0
    reader = SpikeLMDBReader(str(out))
    sigmas = [reader.meta(key)['sigma'] for key in reader.keys]
    assert all(1.5 <= s <= 2.5 for s in sigmas) and len(set(sigmas)) == 3
    assert reader.shape(reader.keys[0]) == (16, 20, 28)
    assert reader.meta(reader.keys[0])['fpn'] == 'none' and reader.meta(reader.keys[0])['shot_noise'] is True
    assert not (out / 'fpn.npz').exists()


def test_refuses_to_overwrite(dpdd_root, tmp_path, capsys):
    main = _script('prepare_dpdd').main
    args = ['--dpdd-root', str(dpdd_root), '--split', 'test', '--out', str(tmp_path / 'x.lmdb'), '--steps', '8',
            '--no-progress']
    assert main(args) == 0
    before = (tmp_path / 'x.lmdb' / 'data.mdb').read_bytes()
    assert prep.run_cli(main, args + ['--seed', '5']) == 2
    assert 'x.lmdb already exists; pass overwrite=True (--overwrite)' in capsys.readouterr().err
    assert (tmp_path / 'x.lmdb' / 'data.mdb').read_bytes() == before
    assert main(args + ['--seed', '5', '--overwrite']) == 0
    assert (tmp_path / 'x.lmdb' / 'data.mdb').read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ['DPDD', 'x.lmdb']


@pytest.mark.parametrize('error', [RuntimeError, KeyboardInterrupt])
def test_interrupted_preparation_leaves_no_partial_lmdb(dpdd_root, tmp_path, monkeypatch, error):
    real = prep.simulate_packed
    calls = []

    def failing_simulate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise error('injected failure in the middle of the preparation')
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, 'simulate_packed', failing_simulate)
    out = tmp_path / 'out' / 'partial.lmdb'
    with pytest.raises(error, match='injected'):
        _script('prepare_dpdd').main(['--dpdd-root', str(dpdd_root), '--split', 'train', '--out', str(out),
                                      '--steps', '8', '--no-progress'])
    assert len(calls) == 2
    assert os.listdir(tmp_path / 'out') == []


def test_unreadable_image_names_the_file(dpdd_root, tmp_path, capsys):
    broken = dpdd_root / 'train_c' / 'target' / TARGET_NAMES[1]
    broken.write_bytes(b'this is not a png')
    args = ['--dpdd-root', str(dpdd_root), '--split', 'train', '--out', str(tmp_path / 'y.lmdb'), '--steps', '8']
    code = prep.run_cli(_script('prepare_dpdd').main, args + ['--no-progress'])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f'prepare_dpdd: error: cannot read image {broken}: not an image format OpenCV can decode'
    assert not (tmp_path / 'y.lmdb').exists()


def test_mismatched_pair_counts(dpdd_root, tmp_path, capsys):
    os.remove(dpdd_root / 'train_c' / 'source' / SOURCE_NAMES[2])
    args = ['--dpdd-root', str(dpdd_root), '--split', 'train', '--out', str(tmp_path / 'y.lmdb'), '--no-progress']
    code = prep.run_cli(_script('prepare_dpdd').main, args)
    err = capsys.readouterr().err
    assert code == 2
    assert f'{dpdd_root}/train_c/source has 2 images but {dpdd_root}/train_c/target has 3' in err
    assert 'counts must agree' in err


def test_script_prints_one_line_error_without_traceback(tmp_path, subprocess_env, python_exe):
    result = subprocess.run([python_exe, os.path.join(SCRIPTS, 'prepare_dpdd.py'), '--dpdd-root',
                             str(tmp_path / 'nowhere'), '--split', 'val', '--out', str(tmp_path / 'z.lmdb')],
                            capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    missing = tmp_path / 'nowhere' / 'val_c' / 'source'
    assert result.stderr.strip().splitlines() == [
        f'prepare_dpdd: error: {missing} does not exist; expected the DPDD layout {{root}}/val_c/{{source,target}}'
    ]


def test_pack_folder_sharp_with_depth(tmp_path):
    (tmp_path / 'sharp').mkdir()
    (tmp_path / 'depth').mkdir()
    for i in range(2):
        intensity, depth = generate_scene(36, 44, 100 + i)
        cv2.imwrite(str(tmp_path / 'sharp' / f'view {i}.png'), (np.power(intensity, 1 / 2.2) * 255).astype(np.uint8))
        cv2.imwrite(str(tmp_path / 'depth' / f'd{i}.png'), (depth * 1000).astype(np.uint16))  # millimetres
    out = tmp_path / 'mine.lmdb'
    assert _script('pack_folder').main(['--sharp', str(tmp_path / 'sharp'), '--depth', str(tmp_path / 'depth'),
                                        '--out', str(out), '--steps', '24', '--sigma-range', '0.5', '3',
                                        '--fpn', 'per-sample', '--no-progress']) == 0
    reader = SpikeLMDBReader(str(out))
    assert reader.keys == ['0000_view_0', '0001_view_1']
    meta = reader.meta(reader.keys[0])
    assert meta['mode'] == 'depth' and meta['fpn'] == 'per-sample' and meta['depth_file'] == 'd0.png'
    assert set(meta['lens']) == {'focal_length', 'f_number', 'focus_distance', 'pixel_pitch'}
    assert 0.4 <= meta['sigma_min'] < meta['sigma_max'] <= 3.1


def test_pack_folder_blurred_pairs_and_lens_errors(tmp_path, capsys):
    for folder in ('sharp', 'blurred'):
        (tmp_path / folder).mkdir()
    for i in range(2):
        intensity, _ = generate_scene(24, 24, i)
        cv2.imwrite(str(tmp_path / 'sharp' / f's{i}.png'), (intensity * 255).astype(np.uint8))
        cv2.imwrite(str(tmp_path / 'blurred' / f'b{i}.png'), (intensity * 255).astype(np.uint8))
    main = _script('pack_folder').main
    assert main(['--sharp', str(tmp_path / 'sharp'), '--blurred', str(tmp_path / 'blurred'), '--out',
                 str(tmp_path / 'p.lmdb'), '--steps', '8', '--no-progress']) == 0
    assert SpikeLMDBReader(str(tmp_path / 'p.lmdb')).meta('0001_s1')['blurred_file'] == 'b1.png'
    code = prep.run_cli(main, ['--sharp', str(tmp_path / 'sharp'), '--mode', 'depth', '--depth',
                               str(tmp_path / 'blurred'), '--focal-length', '0.05', '--out', str(tmp_path / 'q.lmdb')])
    assert code == 2
    assert 'give all of --focal-length --f-number --focus-distance --pixel-pitch' in capsys.readouterr().err


def test_depth_map_with_zeros_is_refused(tmp_path):
    path = tmp_path / 'depth.npy'
    np.save(path, np.zeros((4, 4), np.float32))
    with pytest.raises(prep.ImageReadError, match=r'depth map .*depth.npy has 16 pixels that are not positive'):
        prep.read_depth(str(path))


def test_fit_thin_lens_hits_the_requested_blur():
    lens = prep.fit_thin_lens(0.8, 6.0, 1.0, 4.0)
    np.testing.assert_allclose(lens.sigma_px(np.array([0.8, 6.0])), [1.0, 4.0], atol=1e-6)
    assert lens.focus_distance < 0.8
    with pytest.raises(ValueError, match='need 0 < depth_near < depth_far'):
        prep.fit_thin_lens(2.0, 1.0, 1.0, 4.0)


def test_demo_dataset_is_small_and_blurred_enough(tmp_path):
    main = _script('make_demo_dataset').main
    assert main(['--out', str(tmp_path), '--num-train', '3', '--num-val', '2', '--size', '48', '--steps', '64',
                 '--no-progress']) == 0
    train, val = SpikeLMDBReader(str(tmp_path / 'demo_train.lmdb')), SpikeLMDBReader(str(tmp_path / 'demo_val.lmdb'))
    assert (len(train), len(val)) == (3, 2)
    for reader in (train, val):
        for key in reader.keys:
            meta = reader.meta(key)
            assert (meta['T'], meta['H'], meta['W']) == (64, 48, 48)
            assert 0.99 <= meta['sigma_min'] and meta['sigma_max'] <= 4.01 and meta['sigma_max'] > 2.0
    # one camera for both splits: identical FPN files
    np.testing.assert_array_equal(load_fpn(str(tmp_path / 'demo_train.lmdb' / 'fpn.npz')),
                                  load_fpn(str(tmp_path / 'demo_val.lmdb' / 'fpn.npz')))
    with pytest.raises(FileExistsError, match='demo_train.lmdb already exists'):
        main(['--out', str(tmp_path), '--num-train', '1', '--num-val', '1', '--size', '16', '--steps', '8'])


def test_protocol_scoring_holdout_train_without_it_and_scoring_set_of_val_plus_it(tmp_path):
    """The protocol's split (issue 29): the training LMDB leaves every 5th train pair out (same keys and streams as the
    full LMDB for the others); the scoring LMDB holds the val pairs and exactly those held-out pairs."""
    from pipeline_helpers import write_dpdd_tree

    root = tmp_path / 'dpdd'
    write_dpdd_tree(root, 24, 32, count=10, seed=5)  # 10 train pairs (holdout: p4 and p9), 10 val pairs
    train_pairs = prep.dpdd_pairs(str(root), 'train')
    held = prep.scoring_holdout(train_pairs)
    assert [os.path.basename(s) for _, s in held] == ['p4.png', 'p9.png']
    main = _script('prepare_dpdd').main
    common = ['--dpdd-root', str(root), '--steps', '16', '--seed', '0', '--no-progress']
    lmdbs = {}
    for name, extra in (('full', ['--split', 'train']), ('train', ['--split', 'train', '--scoring-holdout', 'exclude']),
                        ('only', ['--split', 'train', '--scoring-holdout', 'only']),
                        ('scoring', ['--split', 'scoring'])):
        assert main(common + extra + ['--out', str(tmp_path / f'{name}.lmdb')]) == 0
        lmdbs[name] = SpikeLMDBReader(str(tmp_path / f'{name}.lmdb'))
    sharp = {name: [reader.meta(k)['sharp_file'] for k in reader.keys] for name, reader in lmdbs.items()}
    assert len(sharp['full']) == 10 and len(sharp['train']) == 8 and sharp['only'] == ['p4.png', 'p9.png']
    assert not set(sharp['train']) & set(sharp['only']) and set(sharp['train']) | set(sharp['only']) == set(
        sharp['full'])
    for key in lmdbs['train'].keys:  # the kept samples are the full LMDB's, byte for byte
        np.testing.assert_array_equal(lmdbs['train'].read_sample(key)[0], lmdbs['full'].read_sample(key)[0])
    scoring = lmdbs['scoring']
    assert len(scoring) == 12
    assert len(set(scoring.keys)) == 12
    assert sharp['scoring'] == [f'p{i}.png' for i in range(10)] + ['p4.png', 'p9.png']
    assert all(scoring.meta(k)['T'] == 16 for k in scoring.keys)
    with pytest.raises(ValueError, match='mode must be one of'):
        prep.select_scoring_holdout(train_pairs, 'some')
    with pytest.raises(ValueError, match='--split scoring is the scoring set itself'):
        main(common + ['--split', 'scoring', '--scoring-holdout', 'only', '--out', str(tmp_path / 'x.lmdb')])
