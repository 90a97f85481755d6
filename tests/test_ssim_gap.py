"""The raw-SSIM gap analysis (issue 28): flat-region smoothing, the oracle substitutions and the scored report."""
import importlib.util
import os.path as osp

import numpy as np
import pytest

from despike_basicsr.evaluation import heldout, ssim_gap
from despike_basicsr.spike.reconstruct import tfp


def _textured_and_flat(size: int = 64, seed: int = 0):
    """A noisy image whose left half is flat grey and whose right half is a strong checkerboard."""
    rng = np.random.default_rng(seed)
    clean = np.full((size, size), 0.4, np.float32)
    yy, xx = np.mgrid[:size, :size]
    clean[:, size // 2:] = np.where(((yy // 4 + xx // 4) % 2)[:, size // 2:] == 0, 0.1, 0.9)
    return clean, np.clip(clean + rng.normal(0, 0.003, clean.shape).astype(np.float32), 0, 1)


def test_flat_region_smoothing_smooths_flat_regions_and_leaves_texture():
    clean, noisy = _textured_and_flat()
    out = ssim_gap.flat_region_smoothing(noisy, threshold=3.0, sigma=2.0)
    flat, texture = (slice(8, -8), slice(8, 24)), (slice(8, -8), slice(44, -8))
    assert np.abs(out[flat] - clean[flat]).std() < 0.5 * np.abs(noisy[flat] - clean[flat]).std()
    np.testing.assert_array_equal(out[texture], noisy[texture])
    # the dark condition keeps a mid-grey flat region as it was
    np.testing.assert_array_equal(ssim_gap.flat_region_smoothing(noisy, 3.0, 2.0, dark_below=32)[flat], noisy[flat])


def test_oracle_substitutions_use_the_target_where_it_is_flat():
    clean, noisy = _textured_and_flat()
    clean[:, :8] = 0.05  # a flat dark strip
    photo = np.full_like(clean, 0.5)
    variants = ssim_gap.oracle_substitutions(noisy, photo, clean)
    flat, dark = ssim_gap.target_regions(clean)
    assert dark[20, 2] and flat[20, 20] and not flat[20, 40]
    np.testing.assert_array_equal(variants['flat dark ← target (oracle)'][dark], clean[dark])
    np.testing.assert_array_equal(variants['flat ← photograph (oracle)'][flat], photo[flat])
    np.testing.assert_array_equal(variants['flat ← photograph (oracle)'][~flat], noisy[~flat])


def test_ssim_gap_scores_every_variant_on_the_heldout_streams():
    sharp = np.clip(np.random.default_rng(3).random((48, 64)), 0.05, 1).astype(np.float32)
    scene = heldout.HeldoutScene('toy', 'a', sharp, sharp)

    def plain(spikes, gamma):  # a stand-in reconstruction at the network's display scale (ρ_ref 0.5)
        return np.power(np.clip(tfp(spikes, window=spikes.shape[0]) * gamma / 0.5, 0, None), 1 / 2.2)

    report = ssim_gap.ssim_gap([scene], plain, [(2.0, 2.0, None)], steps=64)
    variants = {r['variant'] for r in report['rows']}
    assert {'DeSpike', 'photograph', 'TFP-192', 'flat smoothing T 2, σ 2'} <= variants
    assert len([v for v in variants if 'oracle' in v]) == 3
    photo = [r for r in report['rows'] if r['variant'] == 'photograph']
    assert all(r['ssim'] == pytest.approx(1.0) for r in photo)  # in focus: the photograph is the target
    assert [d['level'] for d in report['dark_spikes']] == list(heldout.LIGHT_LEVELS)
    assert 'flat smoothing T 2, σ 2' in ssim_gap.gap_markdown(report)


def _bench_script(repo_root):
    """scripts/bench_ssim_gap.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location('bench_ssim_gap', osp.join(repo_root, 'scripts', 'bench_ssim_gap.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_filters_and_a_missing_dataset_are_refused(repo_root, tmp_path, capsys):
    bench = _bench_script(repo_root)
    assert bench.parse_filters('2:1.5, 3:2:32') == [(2.0, 1.5, None), (3.0, 2.0, 32.0)]
    for bad in ('2', '2:x', '2:-1', '1:2:3:4'):
        with pytest.raises(ValueError, match=f'"{bad}"'):
            bench.parse_filters(bad)
    assert bench.main(['--filters', '0:2']) == 2
    assert bench.main(['--dpdd-root', str(tmp_path / 'none'), '--out', str(tmp_path)]) == 2
    assert 'none' in capsys.readouterr().err


def test_light_levels_are_parsed_as_mean_rates_and_bad_ones_refused(repo_root, capsys):
    bench = _bench_script(repo_root)
    assert bench.parse_rates('0.075, 0.3') == {'rate 0.075': 0.075, 'rate 0.3': 0.3}
    for bad in ('0', '1', 'x', '-0.2'):
        with pytest.raises(ValueError, match=f'"{bad}"'):
            bench.parse_rates(bad)
    with pytest.raises(ValueError, match='no rate'):
        bench.parse_rates(' , ')
    assert bench.main(['--rates', '1.8']) == 2
    assert '"1.8"' in capsys.readouterr().err


def test_ssim_gap_scores_the_levels_it_is_given():
    sharp = np.clip(np.random.default_rng(4).random((32, 48)), 0.05, 1).astype(np.float32)
    scene = heldout.HeldoutScene('toy', 'b', sharp, sharp)
    levels = {'rate 0.05': 0.05, 'rate 0.6': 0.6}
    report = ssim_gap.ssim_gap([scene], lambda spikes, gamma: np.zeros(spikes.shape[1:], np.float32), steps=64,
                               levels=levels, oracles=False)
    assert [d['level'] for d in report['dark_spikes']] == list(levels)
    tfp_ssim = {r['level']: r['ssim'] for r in report['rows'] if r['variant'] == 'TFP-192'}
    assert tfp_ssim['rate 0.6'] > tfp_ssim['rate 0.05']  # more light, less counting noise
    realised = [d['mean_rate'] for d in report['dark_spikes']]
    assert 0 < realised[0] < realised[1] <= 0.6 + 0.05  # highlights may cap the light, never raise it
    assert 'rate 0.6' in ssim_gap.gap_markdown(report)
